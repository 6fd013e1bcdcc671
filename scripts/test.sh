#!/usr/bin/env bash
# The whole test suite: unit tests, the channel conformance suite, and integration tests
# that start real `lambdaml` driver and worker processes. Needs only a Rust toolchain: the
# channels tested today (dir:, mem:) need no server.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked --all-targets
cargo test --locked --doc
