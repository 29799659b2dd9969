#!/usr/bin/env bash
# Runs the whole test suite against a real Postgres and a real Kafka-protocol
# broker, installing and starting what is missing. Extra arguments go to
# `cargo test` (e.g. `scripts/test.sh --test relay_delivery`).
set -euo pipefail
source "$(dirname "$0")/lib/infra.sh"

outbox_init
log "no history in tracked files"
bash "$(dirname "$0")/lib/history_words.sh"
ensure_tansu
start_postgres
start_broker
cd "$OUTBOX_ROOT"
# Every feature the suite exercises: the CLI and its metrics endpoint, the
# relay's database side driven alone, the test kit. `opentelemetry` is
# tested on its own below: it changes where publishes take their trace
# context from.
FEATURES="outbox/cli,outbox/http,outbox/bench-hooks,outbox/testing"
# The fault tests run examples/relay_worker as separate processes; `cargo
# test` compiles examples but does not place them at target/debug/examples/.
log "cargo build --workspace --examples (target dir $CARGO_TARGET_DIR)"
cargo build --workspace --examples --features "$FEATURES"
log "cargo test --workspace --all-targets"
# Fault and delivery scenarios append their tallies here (tests/fixtures).
export OUTBOX_TALLY_FILE="$OUTBOX_WORK/tallies.txt"
if [[ $# -gt 0 ]]; then
    cargo test --workspace --features "$FEATURES" "$@"
else
    cargo test --workspace --all-targets --features "$FEATURES"
    cargo test --workspace --doc --features "$FEATURES"
    # Trace-context capture behind the `opentelemetry` feature.
    cargo test -p outbox-runtime --features opentelemetry --lib
fi
if [[ -s "$OUTBOX_TALLY_FILE" ]]; then
    log "scenario tallies (committed, delivered, duplicates, order violations):"
    sort "$OUTBOX_TALLY_FILE" >&2
fi
