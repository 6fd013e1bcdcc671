#!/bin/bash
# Cold start, warm overhead and one job on the Lambda platform (local Lambda) vs local.
# usage: bash scripts/bench-lambda.sh BIN   (a lambdaml built with `cargo lambda build --profile lambda --no-default-features`)
set -u
B=$1
W=$(mktemp -d); cd $W
export AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local AWS_REGION=us-east-1
start_emu() {
  $B lambda emulate --function bench --concurrency 8 --timeout 900 --memory 2048 --addr 127.0.0.1:0 --log-dir $W/logs > $W/emu.out 2>/dev/null &
  EMU=$!
  while ! grep -q listening $W/emu.out 2>/dev/null; do sleep 0.05; done
  export AWS_ENDPOINT_URL_LAMBDA=http://$(sed -n 's/listening on //p' $W/emu.out)
}
echo "== ping: first (cold) and 20 warm round trips, 5 fresh local Lambdas"
for i in 1 2 3 4 5; do
  start_emu
  $B lambda ping --function bench --count 21 --json | python3 -c "
import json,sys,statistics
r=[json.loads(l) for l in sys.stdin]
print('cold %.1f ms  warm median %.2f ms  (served %s..%s)'%(r[0]['round_trip_ms'], statistics.median(x['round_trip_ms'] for x in r[1:]), r[0]['served'], r[-1]['served']))"
  kill $EMU; wait $EMU 2>/dev/null; rm -f $W/emu.out
done
echo "== job: 4 workers, 200k x 28 HIGGS-like, 10 epochs, memcached; local vs lambda alternated"
$B data synth higgs --rows 200000 --seed 1 --out $W/h.svm >/dev/null
MC_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
memcached -u root -l 127.0.0.1 -p $MC_PORT -m 256 -U 0 & MC=$!
sleep 0.3
start_emu
for i in 1 2 3; do
  for p in local lambda:bench; do
    /usr/bin/time -f "$p wall %e s" $B train --quiet --json --data $W/h.svm --workers 4 --epochs 10 --channel memcached://127.0.0.1:$MC_PORT --platform $p --runs-dir $W/runs --invocation-timeout 900 --memory-mb 2048 2>&1 >$W/s.json | tail -1
    python3 -c "import json; s=json.load(open('$W/s.json')); print('   summary wall_s', s.get('wall_seconds', s.get('time',{}).get('wall_s')), 'digest', s['param_digests'][0])"
  done
done
kill $EMU $MC
