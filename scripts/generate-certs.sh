#!/usr/bin/env bash
# Generates a cluster CA and one node certificate signed by it, for Prism's mutual-TLS QUIC
# transport. Every hostname or IP address that appears in an advertise_addr or seed_nodes
# entry must be listed: QUIC checks the server name against the certificate.
#
#   scripts/generate-certs.sh prism-node1 prism-node2 prism-node3
#   TLS_DIR=/etc/prism/tls scripts/generate-certs.sh node-a.example.com 10.0.0.5
#   scripts/generate-certs.sh --node node-a node-a.example.com
#
# Writes $TLS_DIR (default ./conf/tls): ca-cert.pem, ca-key.pem, node-cert.pem, node-key.pem.
# localhost and 127.0.0.1 are always included. An existing CA in $TLS_DIR is reused, so
# certificates for more nodes can be issued later from the same CA.
#
# With --node NAME the certificate is issued to node NAME (a subjectAltName URI
# prism-node:NAME) and written as NAME-cert.pem and NAME-key.pem: a peer presenting it can
# only call itself NAME (its --node-id). Without it, the certificate binds no node name.
set -euo pipefail

NODE=""
if [[ "${1:-}" == "--node" ]]; then
  NODE="${2:?--node needs a name}"
  shift 2
fi

TLS_DIR="${TLS_DIR:-./conf/tls}"
DAYS="${DAYS:-365}"
command -v openssl >/dev/null || { echo "error: openssl is required (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$TLS_DIR"

if [[ ! -f "$TLS_DIR/ca-cert.pem" || ! -f "$TLS_DIR/ca-key.pem" ]]; then
  openssl req -x509 -newkey rsa:2048 -nodes \
    -keyout "$TLS_DIR/ca-key.pem" -out "$TLS_DIR/ca-cert.pem" \
    -days "$DAYS" -subj "/CN=prism-cluster-ca" 2>/dev/null
  echo "created CA $TLS_DIR/ca-cert.pem"
fi

CERT="$TLS_DIR/node-cert.pem"; KEY="$TLS_DIR/node-key.pem"
if [[ -n "$NODE" ]]; then
  CERT="$TLS_DIR/$NODE-cert.pem"; KEY="$TLS_DIR/$NODE-key.pem"
fi
openssl genrsa -out "$KEY" 2048 2>/dev/null

san="$TLS_DIR/san.cnf"
{
  echo "[req]"
  echo "distinguished_name = req_dn"
  echo "req_extensions = v3_req"
  echo "prompt = no"
  echo "[req_dn]"
  echo "CN = prism-cluster"
  echo "[v3_req]"
  echo "subjectAltName = @alt_names"
  echo "[alt_names]"
  dns=1; ip=1
  for name in "$@" localhost 127.0.0.1; do
    if [[ "$name" =~ ^[0-9.]+$ || "$name" == *:* ]]; then
      echo "IP.$ip = $name"; ip=$((ip + 1))
    else
      echo "DNS.$dns = $name"; dns=$((dns + 1))
    fi
  done
  if [[ -n "$NODE" ]]; then echo "URI.1 = prism-node:$NODE"; fi
} > "$san"

openssl req -new -key "$KEY" -out "$TLS_DIR/node.csr" -config "$san"
openssl x509 -req -in "$TLS_DIR/node.csr" \
  -CA "$TLS_DIR/ca-cert.pem" -CAkey "$TLS_DIR/ca-key.pem" -CAcreateserial \
  -out "$CERT" -days "$DAYS" -extensions v3_req -extfile "$san" 2>/dev/null
rm -f "$TLS_DIR/node.csr" "$TLS_DIR/ca-cert.srl" "$san"
chmod 600 "$TLS_DIR/ca-key.pem" "$KEY"
echo "wrote $CERT for: $* localhost 127.0.0.1${NODE:+ (node $NODE)}"
