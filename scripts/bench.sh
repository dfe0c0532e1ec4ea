#!/usr/bin/env bash
# The load benchmark (bench/src/bin/load.rs): builds release, starts a
# throwaway PostgreSQL with default durability (unless
# TESSERA_BENCH_DATABASE_URL names one) and runs every section. Arguments go
# to the benchmark: --only introspect,refresh  --seconds 3  --rounds 3
# --concurrency 64  --connections 4. Run it when the machine is quiet.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p tessera-server -p tessera-bench --bins
if [ -z "${TESSERA_BENCH_DATABASE_URL:-}" ]; then
  . scripts/lib/throwaway-pg.sh
  start_throwaway_pg shared_buffers=256MB
  export TESSERA_BENCH_DATABASE_URL="$PG_URL"
fi
target/release/load "$@"
