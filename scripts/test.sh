#!/usr/bin/env bash
# Runs every test: unit tests, and the end-to-end suite on both backends.
# Unless TESSERA_TEST_DATABASE_URL names a PostgreSQL server already, starts a
# throwaway cluster (initdb into a temp folder, loopback only, deleted on
# exit). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${TESSERA_TEST_DATABASE_URL:-}" ]; then
  if ! command -v initdb >/dev/null; then
    pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$pgbin" ] || { echo "PostgreSQL server binaries (initdb, pg_ctl) are needed: apt-get install postgresql" >&2; exit 1; }
    PATH="$pgbin:$PATH"
  fi
  # PostgreSQL refuses to run as root; run it as the postgres user then.
  as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
  pgdir=$(mktemp -d /tmp/tessera-pg.XXXXXX)
  [ "$(id -u)" = 0 ] && chown postgres "$pgdir"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  as_pg initdb -D "$pgdir/data" -U postgres -A trust --no-sync >/dev/null
  # Durability settings off: this cluster is thrown away, and the tests
  # restart Tessera, not PostgreSQL.
  as_pg pg_ctl -D "$pgdir/data" -l "$pgdir/log" -w -o \
    "-p $port -k $pgdir -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start >/dev/null
  trap 'as_pg pg_ctl -D "$pgdir/data" -m immediate stop >/dev/null 2>&1; rm -rf "$pgdir"' EXIT
  export TESSERA_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
  echo "throwaway PostgreSQL on 127.0.0.1:$port"
fi

cargo test --workspace "$@"
