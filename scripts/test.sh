#!/usr/bin/env bash
# Runs the whole test suite against a real Postgres and a real Kafka-protocol
# broker, installing and starting what is missing. Extra arguments go to
# `cargo test` (e.g. `scripts/test.sh --test relay_delivery`).
set -euo pipefail
source "$(dirname "$0")/lib/infra.sh"

outbox_init
ensure_tansu
start_postgres
start_broker
cd "$OUTBOX_ROOT"
log "cargo test --workspace --all-targets (target dir $CARGO_TARGET_DIR)"
if [[ $# -gt 0 ]]; then
    cargo test --workspace "$@"
else
    # Examples are built too: the fault tests run examples/relay_worker as processes.
    cargo test --workspace --all-targets
    cargo test --workspace --doc
fi
