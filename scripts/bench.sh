#!/usr/bin/env bash
# Runs the benchmarks (outbox-bench) against Postgres and a broker, started
# like the test suite's. Arguments go to the benchmark, e.g. `--quick` or a
# scenario name. Not part of scripts/test.sh.
#
# Each scenario gets a fresh Tansu broker (unless KAFKA_BOOTSTRAP_SERVERS is
# set): Tansu's in-memory storage slows down as it fills, so a scenario run
# after others would measure the broker's history, not the outbox. Parts of
# a scenario measured one after another (the latency paths, each drain) get
# a fresh broker each too; relay_vs_raw_produce alternates its relay and raw
# rounds on one broker, so both see the same history.
set -euo pipefail
source "$(dirname "$0")/lib/infra.sh"

SCENARIOS=(relay_vs_raw_produce publish_overhead bulk_publish end_to_end_latency
           backlog_independence relay_scaling)

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

user_broker="${KAFKA_BOOTSTRAP_SERVERS:-}"
# Parts of a scenario that must not inherit each other's messages (the
# latency paths, each drain) start a fresh Tansu of their own through this;
# a broker of the user's is used as it is.
[[ -n "$user_broker" ]] || export OUTBOX_BENCH_TANSU="$TANSU_BIN"
output="$OUTBOX_WORK/bench.out"
status=0
for scenario in "${wanted[@]}"; do
    [[ -n "$user_broker" ]] || start_broker
    "$CARGO_TARGET_DIR/release/outbox-bench" "$scenario" "${flags[@]}" | tee -a "$output" || status=1
    [[ -n "$user_broker" ]] || stop_broker
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
