#!/bin/bash
# One worker of `lambdaml train` against scikit-learn's SGDClassifier on the same HIGGS-like
# file (200,000 x 28, LR, 5 epochs, one core), alternating the two ROUNDS times:
#   bash scripts/bench-vs-sklearn.sh [ROUNDS]
# Prints, per run: lambdaml's whole wall time (driver, split, worker start, parse, training)
# and its parts from metrics.jsonl, and scikit-learn's parse and fit times; then medians.
# Accuracy is on held-out rows: lambdaml holds out 10% (val_ratio), scikit-learn is fitted
# on the first 90% of the file and scored on the rest (the rows are i.i.d.).
set -euo pipefail
rounds=${1:-5}
source "$(dirname "$0")/sklearn-setup.sh"
"$LAMBDAML_BIN" data synth higgs --rows 200000 --seed 1 --out h.svm >/dev/null
cat > sk.py <<'PY'
import sys, time
from sklearn.datasets import load_svmlight_file
from sklearn.linear_model import SGDClassifier
t = time.perf_counter()
X, y = load_svmlight_file("h.svm", n_features=28)
parse = time.perf_counter() - t
X = X.toarray()
n = int(len(y) * 0.9)
clf = SGDClassifier(loss="log_loss", max_iter=5, tol=None, random_state=1)
t = time.perf_counter()
clf.fit(X[:n], y[:n])
fit = time.perf_counter() - t
print(f"sklearn parse_s {parse:.3f} fit_s {fit:.3f} accuracy {clf.score(X[n:], y[n:]):.4f}")
PY
for i in $(seq "$rounds"); do
    rm -rf runs
    t=$(date +%s.%N)
    OMP_NUM_THREADS=1 "$LAMBDAML_BIN" train --quiet --data h.svm --workers 1 --epochs 5 \
        --batch-size 1000 --model lr >/dev/null
    wall=$(echo "$(date +%s.%N) - $t" | bc)
    m=$(find runs -name metrics.jsonl | head -1)
    python3 - "$m" "$wall" <<'PY'
import json, sys
r = [json.loads(l) for l in open(sys.argv[1])]
c = sum(x["compute_s"] for x in r)
print(f"lambdaml wall_s {float(sys.argv[2]):.3f} load_s {r[0]['load_s']:.3f} "
      f"compute_s {c:.3f} rows_per_s {5 * 200000 / c / 1e6:.1f}M accuracy {r[-1]['val_accuracy']:.4f}")
PY
    OMP_NUM_THREADS=1 "$venv/bin/python" sk.py
done | tee results.txt
echo "median lambdaml wall_s $(grep '^lambdaml' results.txt | awk '{print $3}' | median)," \
    "scikit-learn fit_s $(grep '^sklearn' results.txt | awk '{print $5}' | median)," \
    "scikit-learn parse_s $(grep '^sklearn' results.txt | awk '{print $3}' | median)"
