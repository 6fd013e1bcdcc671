#!/usr/bin/env bash
# Sourced by scripts/test.sh. Installs (once) and starts, on free loopback ports, the servers
# the channel tests talk to, exports their addresses, and stops them when the shell exits:
#   memcached, redis-server   Debian packages
#   moto (S3)                 PyPI `moto[server]`, in .services/venv
#   dynalite (DynamoDB)       npm `dynalite`, in .services/node (real limits: 400 KB items,
#                             25-item batches, 1 MB pages)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SERVICES_DIR="$ROOT/.services"
LOG_DIR="$SERVICES_DIR/logs"
mkdir -p "$LOG_DIR"

need_debian_package() { # COMMAND PACKAGE
    command -v "$1" >/dev/null && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "services: '$1' is missing; install the Debian package '$2' (apt-get install $2)" >&2
        return 1
    fi
    echo "services: installing $2" >&2
    if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq >/dev/null; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    # Debian starts the packaged daemon on its default port: the tests use their own.
    service "$2" stop >/dev/null 2>&1 || true
}
need_debian_package memcached memcached
need_debian_package redis-server redis-server
# Real images for the CNN tests: Fashion-MNIST (IDX files, 60,000 + 10,000 28x28 images).
FASHION_MNIST=/usr/share/datasets/fashion-mnist
if [ ! -f "$FASHION_MNIST/train-images-idx3-ubyte.gz" ] && [ "$(id -u)" = 0 ]; then
    echo "services: installing dataset-fashion-mnist" >&2
    if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq >/dev/null; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
export LAMBDAML_TEST_FASHION_MNIST="$FASHION_MNIST"
if [ ! -x "$SERVICES_DIR/venv/bin/moto_server" ]; then
    echo "services: installing moto[server] (PyPI)" >&2
    python3 -m venv "$SERVICES_DIR/venv"
    "$SERVICES_DIR/venv/bin/pip" install -q 'moto[server]'
fi
if [ ! -d "$SERVICES_DIR/node/node_modules/dynalite" ]; then
    echo "services: installing dynalite (npm)" >&2
    npm install --prefix "$SERVICES_DIR/node" --silent --no-audit --no-fund dynalite >/dev/null
fi

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_for_port() { # PORT NAME
    for _ in $(seq 1 150); do
        if python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "services: $2 did not start on port $1 (see $LOG_DIR/$2.log)" >&2
    return 1
}

SERVICE_PIDS=()
stop_services() { [ ${#SERVICE_PIDS[@]} -eq 0 ] || kill "${SERVICE_PIDS[@]}" 2>/dev/null || true; }
trap stop_services EXIT

# `-u` is required when running as root (CI does); it is ignored otherwise.
MEMCACHED_PORT=$(free_port)
memcached -u "$(id -un)" -l 127.0.0.1 -p "$MEMCACHED_PORT" -U 0 -m 1024 -c 4096 \
    >"$LOG_DIR/memcached.log" 2>&1 &
SERVICE_PIDS+=($!)
# A second one with 64 KB items, so that models must be chunked (slab_chunk_max must be
# below a small item size, in bytes).
MEMCACHED_SMALL_PORT=$(free_port)
memcached -u "$(id -un)" -l 127.0.0.1 -p "$MEMCACHED_SMALL_PORT" -U 0 -m 256 -c 4096 -I 64k \
    -o slab_chunk_max=32768 >"$LOG_DIR/memcached-small.log" 2>&1 &
SERVICE_PIDS+=($!)
REDIS_PORT=$(free_port)
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    >"$LOG_DIR/redis.log" 2>&1 &
SERVICE_PIDS+=($!)
S3_PORT=$(free_port)
"$SERVICES_DIR/venv/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$LOG_DIR/moto.log" 2>&1 &
SERVICE_PIDS+=($!)
DYNAMODB_PORT=$(free_port)
node "$SERVICES_DIR/node/node_modules/dynalite/cli.js" --host 127.0.0.1 --port "$DYNAMODB_PORT" \
    --createTableMs 0 --deleteTableMs 0 --updateTableMs 0 >"$LOG_DIR/dynalite.log" 2>&1 &
SERVICE_PIDS+=($!)

wait_for_port "$MEMCACHED_PORT" memcached
wait_for_port "$MEMCACHED_SMALL_PORT" memcached-small
wait_for_port "$REDIS_PORT" redis
wait_for_port "$S3_PORT" moto
wait_for_port "$DYNAMODB_PORT" dynalite

export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
export AWS_ENDPOINT_URL_S3="http://127.0.0.1:$S3_PORT"
export AWS_ENDPOINT_URL_DYNAMODB="http://127.0.0.1:$DYNAMODB_PORT"
export LAMBDAML_TEST_MEMCACHED="memcached://127.0.0.1:$MEMCACHED_PORT"
export LAMBDAML_TEST_MEMCACHED_SMALL="memcached://127.0.0.1:$MEMCACHED_SMALL_PORT?item_size=65536"
export LAMBDAML_TEST_REDIS="redis://127.0.0.1:$REDIS_PORT"
export LAMBDAML_TEST_S3="s3://lambdaml-test"
export LAMBDAML_TEST_DYNAMODB="dynamodb://lambdaml-test"
# The tests' bucket (path-style PUT creates it on moto).
python3 -c "import urllib.request as u; u.urlopen(u.Request('$AWS_ENDPOINT_URL_S3/lambdaml-test', method='PUT'))"
echo "services: memcached :$MEMCACHED_PORT (and :$MEMCACHED_SMALL_PORT with 64 KB items), redis :$REDIS_PORT, moto (S3) :$S3_PORT, dynalite (DynamoDB) :$DYNAMODB_PORT" >&2
