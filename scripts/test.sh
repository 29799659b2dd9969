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
# The fault tests run examples/relay_worker as separate processes; `cargo
# test` compiles examples but does not place them at target/debug/examples/.
log "cargo build --workspace --examples (target dir $CARGO_TARGET_DIR)"
cargo build --workspace --examples
log "cargo test --workspace --all-targets"
# Fault and delivery scenarios append their tallies here (tests/fixtures).
export OUTBOX_TALLY_FILE="$OUTBOX_WORK/tallies.txt"
if [[ $# -gt 0 ]]; then
    cargo test --workspace "$@"
else
    cargo test --workspace --all-targets
    cargo test --workspace --doc
    # Trace-context capture behind the `opentelemetry` feature.
    cargo test -p outbox-runtime --features opentelemetry --lib
fi
if [[ -s "$OUTBOX_TALLY_FILE" ]]; then
    log "scenario tallies (committed, delivered, duplicates, order violations):"
    sort "$OUTBOX_TALLY_FILE" >&2
fi
