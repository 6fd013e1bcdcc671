#!/usr/bin/env bash
# What checkpointing every K rounds costs an undisturbed job: alternates --checkpoint-every
# 1, 10 and 50 (the default's cap) on each channel and prints the median wall time and the
# channel requests of each, from the runs' summary.json.
# Usage: bash scripts/bench-checkpoint.sh [REPEATS]   (starts the test services itself;
# LAMBDAML_BIN=path uses that binary instead of a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS=${1:-3}
source scripts/bench-setup.sh
for channel in "$LAMBDAML_TEST_MEMCACHED" "$LAMBDAML_TEST_S3/bench-checkpoint"; do
    case $channel in s3*) args=(--epochs 4 --batch-size 250) ;; *) args=(--epochs 8 --batch-size 20) ;; esac
    for k in 1 10 50; do : > "k$k.txt"; done
    for _ in $(seq "$REPEATS"); do
        for k in 1 10 50; do
            "$L" train --quiet --json --data h.svm --workers 4 --runs-dir runs --channel "$channel" \
                --checkpoint-every "$k" "${args[@]}" |
                python3 -c "import json,sys; s=json.load(sys.stdin); r=s['requests']; print(s['wall_seconds'], r['puts']+r['gets']+r['deletes']+r['lists'])" >> "k$k.txt"
        done
    done
    for k in 1 10 50; do
        printf '%s %s --checkpoint-every %s: %s s, %s requests (medians of %s)\n' "${channel%%\?*}" \
            "${args[*]}" "$k" "$(cut -d' ' -f1 k$k.txt | median)" "$(cut -d' ' -f2 k$k.txt | median)" "$REPEATS"
    done
done
