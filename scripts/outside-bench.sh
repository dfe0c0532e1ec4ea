#!/usr/bin/env bash
# A second opinion on the Introspect figures from a load generator nobody on
# the project wrote (scripts/outside/load.py: grpcio, gRPC's C core): builds
# the release `tessera`, installs grpcio into target/outside-bench, starts a
# server on SQLite in a temp folder with a client allowed to introspect, and
# drives Health/Check, Introspect (tokens seen before, and every token new)
# and Issue in interleaved windows. Arguments go to load.py: --seconds 3
# --rounds 5. Run it when the machine is quiet. TESSERA_BIN=path runs that
# `tessera` binary instead of building one (to compare two builds).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if [ -n "${TESSERA_BIN:-}" ]; then
  tessera=$(realpath "$TESSERA_BIN")
else
  cargo build --release --bin tessera
  tessera="$root/target/release/tessera"
fi

venv=target/outside-bench
want=$(sha256sum < scripts/outside/bench-requirements.txt)
if [ "$(cat "$venv/.installed" 2>/dev/null)" != "$want" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/outside/bench-requirements.txt
  echo "$want" > "$venv/.installed"
fi

data=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cd "$data"
RUST_LOG=warn TESSERA_LISTEN_ADDR="127.0.0.1:$port" "$tessera" serve 2> serve.log &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 50); do
  RUST_LOG=warn "$tessera" health --addr "127.0.0.1:$port" > /dev/null 2>&1 && break
  sleep 0.1
done
RUST_LOG=warn "$tessera" health --addr "127.0.0.1:$port" > /dev/null
RUST_LOG=warn "$tessera" client add bench --scope tessera:introspect > /dev/null
secret=$(RUST_LOG=warn "$tessera" client rotate-secret bench --overlap 0s | tail -n 1)
"$root/$venv/bin/python" "$root/scripts/outside/load.py" \
  --addr "127.0.0.1:$port" --pid "$server" --client bench --secret "$secret" "$@"
