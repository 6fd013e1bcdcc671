#!/usr/bin/env bash
# What killing one worker costs a job: alternates, on each channel, an undisturbed run, a
# run whose worker 1 is SIGKILLed (its supervisor, the platform, reports it) and a run whose
# worker 1 and supervisor are SIGKILLed (found by its missing heartbeats), and prints the
# median wall time of each and of the recovery's parts, from the runs' summary.json.
# Usage: bash scripts/bench-recovery.sh [REPEATS]   (starts the test services itself;
# LAMBDAML_BIN=path uses that binary instead of a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS=${1:-3}
source scripts/bench-setup.sh
run() { # CHANNEL FAULT ARGS...: prints the summary's wall seconds and recovery
    local channel=$1 fault=$2; shift 2
    rm -rf runs
    "$L" train --quiet --json --data h.svm --workers 4 --runs-dir runs --channel "$channel" "$@" > out.json &
    local driver=$!
    if [ "$fault" != none ]; then
        until grep -qs "epoch done" runs/*/logs/worker-1.log 2>/dev/null \
            && [ "$(grep -c 'epoch done' runs/*/logs/worker-1.log)" -ge 2 ]; do sleep 0.05; done
        local sup kid
        sup=$(pgrep -f "supervise.*$PWD/runs/.*/worker-1.log" | head -1)
        kid=$(cat "/proc/$sup/task/$sup/children")
        if [ "$fault" = worker ]; then kill -9 $kid; else kill -9 "$sup" $kid; fi
    fi
    wait "$driver"
    python3 -c "
import json; s = json.load(open('out.json')); r = (s.get('recoveries') or [{}])[0]
print(s['wall_seconds'], r.get('silent_s', 0), r.get('back_after_s', 0))"
}
for channel in "$LAMBDAML_TEST_MEMCACHED" "$LAMBDAML_TEST_REDIS" "dir:$work/ch" "$LAMBDAML_TEST_S3/bench-recovery"; do
    case $channel in s3*) args=(--epochs 8 --batch-size 250) ;; *) args=(--epochs 8 --batch-size 20) ;; esac
    : > none.txt; : > worker.txt; : > silent.txt
    for _ in $(seq "$REPEATS"); do
        for fault in none worker silent; do run "$channel" $fault "${args[@]}" >> $fault.txt; done
    done
    printf '%s %s: undisturbed %s s | worker killed %s s (found after %s s) | worker and supervisor killed %s s (found after %s s of silence)\n' \
        "${channel%%\?*}" "${args[*]}" \
        "$(cut -d' ' -f1 none.txt | median)" \
        "$(cut -d' ' -f1 worker.txt | median)" "$(cut -d' ' -f2 worker.txt | median)" \
        "$(cut -d' ' -f1 silent.txt | median)" "$(cut -d' ' -f2 silent.txt | median)"
done
