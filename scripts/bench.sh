#!/usr/bin/env bash
# Runs the benchmarks (outbox-bench) against Postgres and a broker, started
# like the test suite's. Arguments go to the benchmark, e.g. `--quick` or a
# scenario name. Not part of scripts/test.sh.
#
# Unless KAFKA_BOOTSTRAP_SERVERS is set, the benchmark starts a fresh Tansu
# broker for every part it measures (a scenario, each latency path, each
# drain; outbox-bench/src/broker.rs): Tansu's in-memory storage slows down
# as it fills, so a part run after others would measure the broker's
# history, not the outbox.
set -euo pipefail
source "$(dirname "$0")/lib/infra.sh"

SCENARIOS=(relay_vs_raw_produce publish_overhead bulk_publish end_to_end_latency
           backlog_independence relay_scaling relay_mechanisms
           consumer_throughput consumer_recovery)

outbox_init
ensure_tansu
start_postgres
cd "$OUTBOX_ROOT"
cargo build --release -q -p outbox-bench
cargo build --release -q -p outbox --example relay_worker

flags=()
wanted=()
for arg in "$@"; do
    case "$arg" in
        -*) flags+=("$arg") ;;
        all) ;;
        *) wanted+=("$arg") ;;
    esac
done
[[ ${#wanted[@]} -gt 0 ]] || wanted=("${SCENARIOS[@]}")

if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
    log "using KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS for every scenario"
else
    export OUTBOX_BENCH_TANSU="$TANSU_BIN"
fi
output="$OUTBOX_WORK/bench.out"
status=0
for scenario in "${wanted[@]}"; do
    "$CARGO_TARGET_DIR/release/outbox-bench" "$scenario" "${flags[@]}" | tee -a "$output" || status=1
done

if [[ ${#wanted[@]} -gt 1 ]]; then
    echo
    echo "All scenarios:"
    echo
    echo "| figure | value | target | met |"
    echo "|---|---:|---|---|"
    grep -E '^\| [a-z_]+\.' "$output" || true
fi
exit "$status"
