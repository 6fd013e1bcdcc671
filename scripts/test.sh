#!/usr/bin/env bash
# The whole test suite: unit tests, the channel conformance suite against every backend, and
# integration tests that start real `lambdaml` driver and worker processes. Installs (once)
# and starts the servers it needs; nothing has to be running beforehand.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
cargo test --locked --all-targets
cargo test --locked --doc
