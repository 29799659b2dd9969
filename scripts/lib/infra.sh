# Shared infrastructure for scripts/test.sh, scripts/demo.sh and scripts/bench.sh.
# Source it, then call: outbox_init; ensure_tansu; start_postgres; start_broker
# shellcheck shell=bash

OUTBOX_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

log() { printf '[outbox] %s\n' "$*" >&2; }

mask_url() { sed -E 's#(://[^:/@]+):[^@]*@#\1:***@#' <<<"$1"; }

outbox_init() {
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/outbox-target}"
    export PATH="$HOME/.cargo/bin:$PATH"
    OUTBOX_WORK="$(mktemp -d -t outbox.XXXXXX)"
    chmod 755 "$OUTBOX_WORK"
    export OUTBOX_WORK
    OUTBOX_PIDS=()
    OUTBOX_PGDATA=""
    trap outbox_cleanup EXIT
    trap 'exit 130' INT TERM
}

outbox_cleanup() {
    local status=$?
    for pid in "${OUTBOX_PIDS[@]:-}"; do
        [[ -n "$pid" ]] && kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
    done
    if [[ -n "$OUTBOX_PGDATA" ]]; then
        as_postgres "$PG_BIN/pg_ctl" -D "$OUTBOX_PGDATA" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$OUTBOX_WORK"
    exit "$status"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_for_port() { # port timeout_seconds
    local deadline=$((SECONDS + $2))
    until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
        (( SECONDS < deadline )) || return 1
        sleep 0.2
    done
}

ensure_tansu() {
    if ! command -v tansu >/dev/null 2>&1; then
        log "installing the Tansu broker (cargo install tansu --locked --features dynostore); this takes about 16 minutes once per machine"
        # Its own target dir, so it never contends with the project's build lock.
        CARGO_TARGET_DIR="$HOME/.cache/tansu-target" cargo install tansu --locked --features dynostore >&2
    fi
    TANSU_BIN="$(command -v tansu)"
    export TANSU_BIN
}

as_postgres() {
    if [[ "$(id -u)" == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start_postgres() {
    PG_BIN=/usr/lib/postgresql/15/bin
    if [[ -n "${DATABASE_URL:-}" ]]; then
        log "using DATABASE_URL=$(mask_url "$DATABASE_URL")"
        return
    fi
    if command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432 -U postgres; then
        export DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
        log "using the machine's Postgres at 127.0.0.1:5432"
        return
    fi
    if [[ ! -x "$PG_BIN/initdb" ]]; then
        log "installing PostgreSQL 15 (Debian package postgresql-15)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2 && apt-get install -y -qq postgresql-15 >&2
    fi
    id postgres >/dev/null 2>&1 || useradd --system --home "$OUTBOX_WORK" postgres
    local port; port="$(free_port)"
    OUTBOX_PGDATA="$OUTBOX_WORK/pgdata"
    mkdir -p "$OUTBOX_PGDATA" && chown postgres "$OUTBOX_PGDATA"
    as_postgres "$PG_BIN/initdb" -D "$OUTBOX_PGDATA" -U postgres --auth=trust >/dev/null
    as_postgres "$PG_BIN/pg_ctl" -D "$OUTBOX_PGDATA" -w -l "$OUTBOX_PGDATA/server.log" \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $OUTBOX_PGDATA -c max_connections=300" start >/dev/null
    export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
    log "started a throwaway Postgres 15 on 127.0.0.1:$port"
}

start_broker() {
    if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
        log "using KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS"
        return
    fi
    local port; port="$(free_port)"
    setsid "$TANSU_BIN" broker --storage-engine memory://tansu/ \
        --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
        >"$OUTBOX_WORK/tansu.log" 2>&1 &
    OUTBOX_PIDS+=("$!")
    if ! wait_for_port "$port" 60; then
        log "the Tansu broker did not start; its log:"
        tail -n 40 "$OUTBOX_WORK/tansu.log" >&2
        return 1
    fi
    export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$port"
    log "started a Tansu broker on $KAFKA_BOOTSTRAP_SERVERS"
}
