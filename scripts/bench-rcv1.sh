#!/bin/bash
# Sparse logistic regression on the RCV1-like set against liblinear and scikit-learn's SGD:
#   bash scripts/bench-rcv1.sh [ROUNDS]
# 50,000 rows of `lambdaml data synth rcv1 --seed 1` (47,236 features): the first 45,000 to
# train, the last 5,000 to test. lambdaml trains `examples/rcv1-sparse-lr.toml` with 1 and 4
# workers, and the same with `--model sparse_svm` (held-out accuracy of its model.bin on the
# test rows); liblinear is scikit-learn's LogisticRegression(solver="liblinear", C=1), the
# `liblinear -s 0` of the original figure, and LinearSVC(loss="hinge", C=1), `liblinear -s
# 3`, for the SVM; SGD is SGDClassifier(log_loss) for 5 epochs. Times are wall seconds including parsing the
# file (lambdaml: the whole `train`; scikit-learn: load_svmlight_file + fit). The runs
# alternate ROUNDS times; medians are printed at the end.
set -euo pipefail
rounds=${1:-3}
source "$(dirname "$0")/sklearn-setup.sh"
"$LAMBDAML_BIN" data synth rcv1 --rows 50000 --seed 1 --out rcv1.svm >/dev/null
head -45000 rcv1.svm > train.svm
tail -5000 rcv1.svm > test.svm
cat > score.py <<'PY'
import sys
import numpy as np
from sklearn.datasets import load_svmlight_file
raw = open(sys.argv[1], "rb").read()[24:]  # the codec's 24-byte header, then f32 LE
p = np.frombuffer(raw, dtype="<f4")
X, y = load_svmlight_file("test.svm", n_features=47236)
pred = np.where(X @ p[:-1] + p[-1] > 0, 1, -1)
print(f"{(pred == np.where(y > 0, 1, -1)).mean():.4f}")
PY
cat > sk.py <<'PY'
import sys, time
from sklearn.datasets import load_svmlight_file
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.svm import LinearSVC
t = time.perf_counter()
X, y = load_svmlight_file("train.svm", n_features=47236)
Xt, yt = load_svmlight_file("test.svm", n_features=47236)
# liblinear takes 32-bit sparse indices only.
for m in (X, Xt):
    m.indices, m.indptr = m.indices.astype("int32"), m.indptr.astype("int32")
clf = {
    "liblinear": lambda: LogisticRegression(solver="liblinear", C=1.0),
    "liblinear-svm": lambda: LinearSVC(loss="hinge", C=1.0),
    "sgd": lambda: SGDClassifier(loss="log_loss", max_iter=5, tol=None, random_state=1),
}[sys.argv[1]]()
clf.fit(X, y)
print(f"{sys.argv[1]} {time.perf_counter() - t:.3f} {clf.score(Xt, yt):.4f}")
PY
for i in $(seq "$rounds"); do
    for model in lr svm; do
        for w in 1 4; do
            rm -rf runs
            t=$(date +%s.%N)
            "$LAMBDAML_BIN" train --quiet --config "$root/examples/rcv1-sparse-lr.toml" \
                --model sparse_$model --data train.svm --features 47236 --workers $w >/dev/null
            wall=$(echo "$(date +%s.%N) - $t" | bc)
            acc=$("$venv/bin/python" score.py "$(find runs -name model.bin | head -1)")
            echo "lambdaml-$model-$w $wall $acc"
        done
    done
    for name in liblinear liblinear-svm sgd; do
        OMP_NUM_THREADS=1 "$venv/bin/python" sk.py $name
    done
done | tee results.txt
echo "medians (wall s, test accuracy):"
for name in lambdaml-lr-1 lambdaml-lr-4 liblinear lambdaml-svm-1 lambdaml-svm-4 liblinear-svm sgd; do
    echo "  $name $(grep "^$name " results.txt | awk '{print $2}' | median)" \
        "$(grep "^$name " results.txt | awk '{print $3}' | median)"
done
