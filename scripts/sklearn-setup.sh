# Sourced by the scripts that measure lambdaml against scikit-learn (bench-vs-sklearn.sh,
# bench-rcv1.sh): $root (the repository), $LAMBDAML_BIN (a release build unless given),
# $venv (a virtual environment with scikit-learn, made once under .services/), a scratch
# directory as the working directory (removed on exit), and `median` (of numbers on stdin).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${LAMBDAML_BIN:-}" ]; then
    (cd "$root" && cargo build --release --quiet)
    LAMBDAML_BIN=$root/target/release/lambdaml
fi
venv=$root/.services/sklearn-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q scikit-learn
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
