#!/usr/bin/env bash
# Runs every test: unit tests, and the end-to-end suite on both backends.
# Unless TESSERA_TEST_DATABASE_URL names a PostgreSQL server already, starts a
# throwaway cluster (initdb into a temp folder, loopback only, TLS on with a
# certificate made here, deleted on exit). Installs the outside clients the
# tests drive (scripts/outside) into target/ on first use. Extra arguments
# go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${TESSERA_TEST_DATABASE_URL:-}" ]; then
  . scripts/lib/throwaway-pg.sh
  # Durability off: this cluster is thrown away, and the tests restart
  # Tessera, not PostgreSQL.
  start_throwaway_pg fsync=off synchronous_commit=off full_page_writes=off
  export TESSERA_TEST_DATABASE_URL="$PG_URL"
  export TESSERA_TEST_PG_CA="$PG_CA"
  echo "throwaway PostgreSQL on 127.0.0.1:$PG_PORT (TLS, CA $TESSERA_TEST_PG_CA)"
fi

# The outside clients (PyJWKClient, jose, a Prometheus parser, grpcurl) the
# end-to-end tests drive; installed once into target/.
. scripts/lib/outside-tools.sh
install_outside_tools

# Every test binary runs even after one fails; one summary line at the end.
log=$(mktemp)
set +e
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ {
       for (i = 2; i <= NF; i++) {
         if ($i ~ /^passed;/) passed += $(i - 1)
         if ($i ~ /^failed;/) failed += $(i - 1)
         if ($i ~ /^ignored;/) ignored += $(i - 1)
       }
     }
     END { printf "tests: %d passed, %d failed, %d ignored\n", passed, failed, ignored }' "$log"
rm -f "$log"
[ "$status" = 0 ] || echo "cargo test exited with status $status (a failure above, or a build error)"
exit "$status"
