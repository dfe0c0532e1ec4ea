# Sourced by scripts/test.sh. Installs the outside clients the end-to-end
# tests drive (scripts/outside: PyJWT, prometheus_client and grpcurl in a
# Python venv; jose for Node) into target/outside-tools, again only when the
# pinned versions change, and exports TESSERA_OUTSIDE_TOOLS for the tests.
# Needs python3 (with venv) and node/npm; fails, loudly, without them.

install_outside_tools() {
  local src=scripts/outside dir=target/outside-tools
  local want
  want=$(cat "$src/requirements.txt" "$src/package.json" "$src/package-lock.json" | sha256sum)
  if [ "$(cat "$dir/.installed" 2>/dev/null)" != "$want" ]; then
    echo "installing the outside clients (PyJWT, prometheus_client, grpcurl, jose) into $dir"
    rm -rf "$dir"
    mkdir -p "$dir/node"
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install --quiet --disable-pip-version-check -r "$src/requirements.txt"
    cp "$src/package.json" "$src/package-lock.json" "$dir/node/"
    (cd "$dir/node" && npm ci --silent --no-audit --no-fund)
    echo "$want" > "$dir/.installed"
  fi
  TESSERA_OUTSIDE_TOOLS=$(cd "$dir" && pwd)
  export TESSERA_OUTSIDE_TOOLS
}
