#!/usr/bin/env bash
# Start (or reuse) a throwaway PostgreSQL server on 127.0.0.1 for the review-store tests.
#
# Usage in CI:   eval "$(bash scripts/ci_postgres.sh)"
# Prints one line on stdout, `export TEST_POSTGRES_URL=...`; everything else goes to stderr.
# Installs Debian's `postgresql` package when no server binaries are present (needs root), then runs a
# private cluster in $CI_PG_DIR (default /tmp/covid-ci-postgres) on port $CI_PG_PORT (default 54329),
# leaving any system cluster alone. A second run finds the server running and only re-checks the role
# and database. Durability is switched off (fsync=off): the data is disposable.
# Stop it with: pg_ctl -D /tmp/covid-ci-postgres stop   (as the postgres user when run as root)
set -euo pipefail

PORT="${CI_PG_PORT:-54329}"
DATA_DIR="${CI_PG_DIR:-/tmp/covid-ci-postgres}"
SOCKET_DIR="${DATA_DIR}-socket"
ROLE="covid_ci"
PASSWORD="covid_ci"
DATABASE="covid_reviews_test"

log() { echo "ci_postgres: $*" >&2; }

postgres_bin_dir() {
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [ -n "$dir" ] && [ -x "$dir/pg_ctl" ]; then echo "$dir"; return; fi
    if command -v pg_ctl >/dev/null 2>&1; then dirname "$(command -v pg_ctl)"; fi
}

BIN="$(postgres_bin_dir)"
if [ -z "$BIN" ]; then
    if [ "$(id -u)" != 0 ]; then
        log "no PostgreSQL server binaries found and not root: install the 'postgresql' package"
        exit 1
    fi
    log "installing postgresql with apt-get"
    started=$SECONDS
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends postgresql >&2
    log "apt-get install took $((SECONDS - started)) s"
    BIN="$(postgres_bin_dir)"
    [ -n "$BIN" ] || { log "postgresql installed but no pg_ctl found"; exit 1; }
fi

# The server refuses to run as root: as root, run it as the `postgres` user the package created.
if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    as_server() { runuser -u postgres -- "$@"; }
else
    as_server() { "$@"; }
fi

mkdir -p "$DATA_DIR" "$SOCKET_DIR"
if [ "$(id -u)" = 0 ]; then chown postgres: "$DATA_DIR" "$SOCKET_DIR"; fi
chmod 700 "$DATA_DIR"

if [ ! -s "$DATA_DIR/PG_VERSION" ]; then
    log "initialising a cluster in $DATA_DIR"
    as_server "$BIN/initdb" -D "$DATA_DIR" -U postgres -E UTF8 --no-locale --no-sync \
        --auth-local=trust --auth-host=scram-sha-256 >&2
fi

if as_server "$BIN/pg_ctl" -D "$DATA_DIR" status >/dev/null 2>&1; then
    log "server already running in $DATA_DIR"
else
    log "starting the server on 127.0.0.1:$PORT"
    as_server "$BIN/pg_ctl" -D "$DATA_DIR" -l "$DATA_DIR/server.log" -w -t 60 \
        -o "-p $PORT -k $SOCKET_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >&2 || { log "server failed to start; its log:"; tail -n 20 "$DATA_DIR/server.log" >&2; exit 1; }
fi

psql_admin() { as_server "$BIN/psql" -h "$SOCKET_DIR" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA "$@"; }

if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != 1 ]; then
    psql_admin -c "CREATE ROLE $ROLE LOGIN PASSWORD '$PASSWORD'" >&2
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'")" != 1 ]; then
    psql_admin -c "CREATE DATABASE $DATABASE OWNER $ROLE" >&2
fi
log "ready: database $DATABASE, role $ROLE"

echo "export TEST_POSTGRES_URL=postgresql+psycopg://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DATABASE"
