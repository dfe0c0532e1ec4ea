#!/usr/bin/env bash
# Makes certificates for trying Tessera's TLS and mutual TLS locally:
#   scripts/dev-certs.sh DIR [CLIENT_NAME]
# DIR/ca.crt              a CA (trust it: grpcurl -cacert, TESSERA_TLS_CLIENT_CA)
# DIR/server.crt, .key    for localhost and 127.0.0.1 (TESSERA_TLS_CERT, _KEY)
# DIR/client.crt, .key    naming CLIENT_NAME in its subjectAltName: a URI
#                         (spiffe://...) or a DNS name; default
#                         spiffe://example.org/billing
# For development only: the CA key stays in DIR.
set -euo pipefail
dir=${1:?usage: scripts/dev-certs.sh DIR [CLIENT_NAME]}
name=${2:-spiffe://example.org/billing}
case "$name" in *://*) san="URI:$name" ;; *) san="DNS:$name" ;; esac
mkdir -p "$dir"
cd "$dir"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
openssl req -x509 "${ec[@]}" -days 30 -subj /CN=tessera-dev-ca -keyout ca.key -out ca.crt 2>/dev/null
leaf() {
  openssl req "${ec[@]}" -subj "/CN=$1" -keyout "$1.key" -out "$1.csr" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=%s\n' "$2" "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
    -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  rm "$1.csr" "$1.ext"
  chmod 600 "$1.key"
}
leaf server "DNS:localhost,IP:127.0.0.1" serverAuth
leaf client "$san" clientAuth
chmod 600 ca.key
echo "made $dir/ca.crt, $dir/server.{crt,key}, $dir/client.{crt,key} (client: $name)"
