# Sourced by test.sh and bench.sh: `start_throwaway_pg [postgres -c options...]`
# starts a PostgreSQL cluster in a temp folder (loopback only, TLS on with a
# CA and server certificate made here, deleted on exit) and exports
# PG_URL (postgres://postgres@127.0.0.1:PORT/postgres) and PG_CA.

start_throwaway_pg() {
  if ! command -v initdb >/dev/null; then
    local pgbin
    pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$pgbin" ] || { echo "PostgreSQL server binaries (initdb, pg_ctl) are needed: apt-get install postgresql" >&2; exit 1; }
    PATH="$pgbin:$PATH"
  fi
  command -v openssl >/dev/null || { echo "openssl is needed to make the cluster's certificate: apt-get install openssl" >&2; exit 1; }
  pgdir=$(mktemp -d /tmp/tessera-pg.XXXXXX)
  trap 'as_pg pg_ctl -D "$pgdir/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$pgdir"' EXIT

  # A CA and a server certificate for localhost and 127.0.0.1, so clients
  # can connect with sslmode=verify-full.
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
  if [ "$(id -u)" = 0 ]; then chown -R postgres "$pgdir"; fi
  chmod 755 "$pgdir"
  as_pg initdb -D "$pgdir/data" -U postgres -A trust --no-sync >/dev/null
  local options="-k $pgdir -c listen_addresses=127.0.0.1 -c max_connections=400 -c ssl=on -c ssl_cert_file=$pgdir/server.crt -c ssl_key_file=$pgdir/server.key"
  local extra
  for extra in "$@"; do options="$options -c $extra"; done
  # A free port: try until one starts.
  local started="" port
  for _ in $(seq 1 20); do
    port=$(( 20000 + RANDOM % 30000 ))
    if as_pg pg_ctl -D "$pgdir/data" -l "$pgdir/log" -w -o "-p $port $options" start >/dev/null 2>&1; then
      started=1
      break
    fi
  done
  [ -n "$started" ] || { echo "could not start a throwaway PostgreSQL (see $pgdir/log)" >&2; cat "$pgdir/log" >&2; exit 1; }
  export PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
  export PG_CA="$pgdir/ca.crt"
  export PG_PORT="$port"
}

# PostgreSQL refuses to run as root; run it as the postgres user then.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
