#!/usr/bin/env bash
# CNN training-step time, lambdaml (burn-flex) against PyTorch on the CPU, alternating the
# tools cell by cell (the machine is shared: alternation keeps the ratio fair). `lambdaml-burn`
# is the same binary with flex's and Burn's own convolution and gradients (LAMBDAML_CONV=burn)
# instead of the patched ones in vendor/burn-flex, to measure the patch. LAMBDAML_BIN_A, when
# set, adds a third binary (an earlier build) to the alternation, as `lambdaml-a`.
#   LAMBDAML_BIN=target/release/lambdaml TORCH_PYTHON=/path/to/venv/bin/python \
#       bash scripts/bench-cnn.sh [ROUNDS] [THREADS]
# PyTorch: `python3 -m venv V && V/bin/pip install torch` (the CPU wheel is enough).
set -euo pipefail
cd "$(dirname "$0")/.."
L=${LAMBDAML_BIN:-target/release/lambdaml}
P=${TORCH_PYTHON:-python3}
ROUNDS=${1:-2}
THREADS=${2:-1}
for round in $(seq 1 "$ROUNDS"); do
    for m in resnet20 mobilenet resnet18; do
        for b in 32 128; do
            echo "round $round lambdaml $("$L" bench cnn --model $m --batch $b --steps 3 --threads "$THREADS")"
            echo "round $round lambdaml-burn $(LAMBDAML_CONV=burn "$L" bench cnn --model $m --batch $b --steps 3 --threads "$THREADS")"
            if [ -n "${LAMBDAML_BIN_A:-}" ]; then
                echo "round $round lambdaml-a $("$LAMBDAML_BIN_A" bench cnn --model $m --batch $b --steps 3 --threads "$THREADS")"
            fi
            echo "round $round torch $("$P" -W ignore scripts/bench-cnn-torch.py --model $m --batch $b --steps 3 --threads "$THREADS" 2>/dev/null)"
        done
    done
done
