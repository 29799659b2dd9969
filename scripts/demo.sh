#!/usr/bin/env bash
# The File Service demo: starts Postgres and a broker, runs the service with
# its in-process relay, uploads and removes files over HTTP, and prints the
# events as a Kafka consumer receives them.
set -euo pipefail
source "$(dirname "$0")/lib/infra.sh"

outbox_init
ensure_tansu
start_postgres
start_broker
cd "$OUTBOX_ROOT"

DEMO_DB="outbox_demo"
psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $DEMO_DB WITH (FORCE)" -c "CREATE DATABASE $DEMO_DB" >/dev/null
DEMO_URL="$(sed -E "s#/[^/?]*(\?|$)#/$DEMO_DB\1#" <<<"${DATABASE_URL%/}")"

log "building the demo"
cargo build -q --example file_service --example tail_events
PORT="$(free_port)"
ADDR="127.0.0.1:$PORT"
DATABASE_URL="$DEMO_URL" FILE_SERVICE_ADDR="$ADDR" RUST_LOG="${RUST_LOG:-info,rdkafka=warn}" \
    OUTBOX_POLL_INTERVAL_SECONDS=1 \
    setsid "$CARGO_TARGET_DIR/debug/examples/file_service" >"$OUTBOX_WORK/file_service.log" 2>&1 &
OUTBOX_PIDS+=("$!")
deadline=$((SECONDS + 60))
until curl -fsS "http://$ADDR/health" >/dev/null 2>&1; do
    if (( SECONDS > deadline )); then
        log "the file service did not become healthy; its log:"; tail -n 40 "$OUTBOX_WORK/file_service.log" >&2; exit 1
    fi
    sleep 0.3
done
log "file service up on http://$ADDR"

post() { curl -sS -o /dev/stderr -w '%{http_code}' -X POST "http://$ADDR/batches/batch-42/files" -H 'content-type: application/json' -d "$1"; }
echo "== POST essay-1.txt" >&2
FIRST_JSON="$(curl -sS -X POST "http://$ADDR/batches/batch-42/files" -H 'content-type: application/json' \
    -d '{"file_name":"essay-1.txt","content":"The outbox pattern keeps the database and the broker in agreement."}')"
echo "$FIRST_JSON" >&2
FIRST_ID="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["file_upload_id"])' "$FIRST_JSON")"
echo "== POST essay-2.txt" >&2
code="$(post '{"file_name":"essay-2.txt","content":"A second essay, equally thoughtful."}')"; echo " -> HTTP $code" >&2
echo "== POST empty.txt (fails validation)" >&2
code="$(post '{"file_name":"empty.txt","content":""}')"; echo " -> HTTP $code" >&2
[[ "$code" == 422 ]] || { log "expected 422 for the empty upload, got $code"; exit 1; }
echo "== DELETE essay-1.txt" >&2
code="$(curl -sS -o /dev/null -w '%{http_code}' -X DELETE "http://$ADDR/batches/batch-42/files/$FIRST_ID")"; echo " -> HTTP $code" >&2
[[ "$code" == 204 ]] || { log "expected 204 for the removal, got $code"; exit 1; }

log "events as a Kafka consumer receives them:"
"$CARGO_TARGET_DIR/debug/examples/tail_events" --bootstrap "$KAFKA_BOOTSTRAP_SERVERS" --count 6 --timeout-secs 60
log "demo complete: 6 events committed with their rows and delivered"
