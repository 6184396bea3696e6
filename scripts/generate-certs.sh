#!/usr/bin/env bash
# Generates a cluster CA and one node certificate signed by it, for Prism's mutual-TLS QUIC
# transport. Every hostname or IP address that appears in an advertise_addr or seed_nodes
# entry must be listed: QUIC checks the server name against the certificate.
#
#   scripts/generate-certs.sh prism-node1 prism-node2 prism-node3
#   TLS_DIR=/etc/prism/tls scripts/generate-certs.sh node-a.example.com 10.0.0.5
#
# Writes $TLS_DIR (default ./conf/tls): ca-cert.pem, ca-key.pem, node-cert.pem, node-key.pem.
# localhost and 127.0.0.1 are always included. An existing CA in $TLS_DIR is reused, so
# certificates for more nodes can be issued later from the same CA.
set -euo pipefail

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

openssl genrsa -out "$TLS_DIR/node-key.pem" 2048 2>/dev/null

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
} > "$san"

openssl req -new -key "$TLS_DIR/node-key.pem" -out "$TLS_DIR/node.csr" -config "$san"
openssl x509 -req -in "$TLS_DIR/node.csr" \
  -CA "$TLS_DIR/ca-cert.pem" -CAkey "$TLS_DIR/ca-key.pem" -CAcreateserial \
  -out "$TLS_DIR/node-cert.pem" -days "$DAYS" -extensions v3_req -extfile "$san" 2>/dev/null
rm -f "$TLS_DIR/node.csr" "$TLS_DIR/ca-cert.srl" "$san"
chmod 600 "$TLS_DIR/ca-key.pem" "$TLS_DIR/node-key.pem"
echo "wrote $TLS_DIR/node-cert.pem for: $* localhost 127.0.0.1"
