# Sourced by the fault-tolerance bench scripts (from the repository root): the lambdaml
# binary in $L (a release build, or $LAMBDAML_BIN), the test services started, a scratch
# directory as the working directory (removed on exit) holding h.svm, 20,000 HIGGS-like
# rows, and `median` (of numbers on stdin).
if [ -z "${LAMBDAML_BIN:-}" ]; then
    cargo build --release --quiet
    LAMBDAML_BIN=$PWD/target/release/lambdaml
fi
L=$LAMBDAML_BIN
source scripts/services.sh >/dev/null
set +e
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
"$L" data synth higgs --rows 20000 --seed 4 --out h.svm >/dev/null
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
