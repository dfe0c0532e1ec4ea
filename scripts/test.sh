#!/usr/bin/env bash
# Runs every test: unit tests, and the end-to-end suite on both backends.
# Unless TESSERA_TEST_DATABASE_URL names a PostgreSQL server already, starts a
# throwaway cluster (initdb into a temp folder, loopback only, TLS on with a
# certificate made here, deleted on exit). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${TESSERA_TEST_DATABASE_URL:-}" ]; then
  if ! command -v initdb >/dev/null; then
    pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$pgbin" ] || { echo "PostgreSQL server binaries (initdb, pg_ctl) are needed: apt-get install postgresql" >&2; exit 1; }
    PATH="$pgbin:$PATH"
  fi
  command -v openssl >/dev/null || { echo "openssl is needed to make the test cluster's certificate: apt-get install openssl" >&2; exit 1; }
  # PostgreSQL refuses to run as root; run it as the postgres user then.
  as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
  pgdir=$(mktemp -d /tmp/tessera-pg.XXXXXX)
  trap 'as_pg pg_ctl -D "$pgdir/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$pgdir"' EXIT

  # A CA and a server certificate for localhost and 127.0.0.1, so the
  # tests can connect with sslmode=verify-full.
  (
    cd "$pgdir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
      -subj /CN=tessera-test-ca -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -subj /CN=localhost -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > san.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
      -extfile san.ext -out server.crt 2>/dev/null
    chmod 600 server.key
  )
  [ "$(id -u)" = 0 ] && chown -R postgres "$pgdir"
  chmod 755 "$pgdir"
  as_pg initdb -D "$pgdir/data" -U postgres -A trust --no-sync >/dev/null
  # Durability settings off: this cluster is thrown away, and the tests
  # restart Tessera, not PostgreSQL. A free port: try until one starts.
  started=""
  for _ in $(seq 1 20); do
    port=$(( 20000 + RANDOM % 30000 ))
    if as_pg pg_ctl -D "$pgdir/data" -l "$pgdir/log" -w -o \
      "-p $port -k $pgdir -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c ssl=on -c ssl_cert_file=$pgdir/server.crt -c ssl_key_file=$pgdir/server.key" \
      start >/dev/null 2>&1; then
      started=1
      break
    fi
  done
  [ -n "$started" ] || { echo "could not start the test PostgreSQL (see $pgdir/log)" >&2; cat "$pgdir/log" >&2; exit 1; }
  export TESSERA_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
  export TESSERA_TEST_PG_CA="$pgdir/ca.crt"
  echo "throwaway PostgreSQL on 127.0.0.1:$port (TLS, CA $TESSERA_TEST_PG_CA)"
fi

cargo test --workspace "$@"
