#!/usr/bin/env bash
# Runs the benchmarks (outbox-bench) against Postgres and a broker, started
# like the test suite's. Arguments go to the benchmark, e.g. `--quick` or a
# scenario name. Not part of scripts/test.sh.
set -euo pipefail
source "$(dirname "$0")/lib/infra.sh"

outbox_init
ensure_tansu
start_postgres
start_broker
cd "$OUTBOX_ROOT"
cargo build --release -q -p outbox-bench
cargo build --release -q -p outbox --example relay_worker
"$CARGO_TARGET_DIR/release/outbox-bench" "$@"
