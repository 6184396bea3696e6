#!/usr/bin/env bash
# API fuzzing: schemathesis against a live prism-server, from the server's own
# GET /openapi.json. It fails on any 5xx, any answer the document does not describe (status,
# content type, body schema), schema-invalid input that is accepted, an undocumented method
# that is not a 405, and a server that dies or logs a panic.
#
#   tests/api-fuzz/run.sh [EXAMPLES_PER_OPERATION]   default and CI: 50; the longer run: 500
#   PRISM_FUZZ_SEED=N tests/api-fuzz/run.sh           replays a run with the seed it printed
#
# The server is a federation of one node, so the /cluster routes run too. Two passes: the first
# draws every path parameter at random (so mostly 400s and 404s, and DELETE /collections/{name});
# the second names the collection `fuzz`, made here with documents, and the pipeline
# `normalize`, so that requests reach the engine.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
examples="${1:-50}"

# schemathesis and the validator live in a virtualenv of their own (target/api-fuzz-venv), so
# that a system Python that refuses pip installs (PEP 668) is left alone.
venv="$root/target/api-fuzz-venv"
if ! "$venv/bin/python" -c 'import schemathesis, openapi_spec_validator' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
fi

# The binary of the last workspace build; rebuilt when a source file is newer.
bin="$root/target/debug/prism-server"
if [ ! -x "$bin" ] || [ -n "$(find "$root/crates" -name '*.rs' -newer "$bin" -print -quit)" ]; then
  (cd "$root" && cargo build -p prism-server)
fi
seed=()
if [ -n "${PRISM_FUZZ_SEED:-}" ]; then seed=(--seed "$PRISM_FUZZ_SEED"); fi

work="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"
mkdir -p "$work/conf/pipelines"
cat > "$work/conf/pipelines/normalize.yaml" <<'YAML'
name: normalize
description: Lower-cases the title, strips HTML from the body, stamps the time
processors:
  - lowercase:
      field: title
  - html_strip:
      field: body
  - set:
      field: indexed_at
      value: "{{_now}}"
YAML
# A federation of this one node, so that the /cluster routes answer rather than 404: mutual
# TLS with a CA and a node certificate made here.
tls="$work/tls"
mkdir -p "$tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=prism-fuzz-ca -keyout "$tls/ca-key.pem" -out "$tls/ca-cert.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
  -keyout "$tls/node-key.pem" -out "$tls/node.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n' > "$tls/ext"
openssl x509 -req -in "$tls/node.csr" -CA "$tls/ca-cert.pem" -CAkey "$tls/ca-key.pem" \
  -CAcreateserial -days 2 -extfile "$tls/ext" -out "$tls/node-cert.pem" 2>/dev/null
quic="$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cat > "$work/prism.toml" <<TOML
[server]
bind_addr = "127.0.0.1:$port"
max_body_bytes = 1048576

[cluster]
enabled = true
node_id = "fuzz-1"
bind_addr = "127.0.0.1:$quic"
seed_nodes = []

[cluster.tls]
enabled = true
cert_path = "$tls/node-cert.pem"
key_path = "$tls/node-key.pem"
ca_cert_path = "$tls/ca-cert.pem"
TOML
"$bin" --config "$work/prism.toml" --data-dir "$work/data" >"$work/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  curl -fs "$base/health" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "$base/health" >/dev/null || { echo "prism-server did not start:"; cat "$work/server.log"; exit 1; }

# The collection the targeted pass names; made again before each pass, as the first one may
# delete it (schemathesis learns names from the answers of GET /collections).
seed_fuzz() {
  curl -s -o /dev/null -X DELETE "$base/collections/fuzz"
  curl -fs -X PUT "$base/collections/fuzz" -H 'content-type: application/json' -d '{
    "fields": {"title": {"type": "text"}, "body": {"type": "text"}, "tag": {"type": "keyword"},
               "indexed_at": {"type": "keyword"}, "n": {"type": "i64"},
               "v": {"type": "vector", "dimension": 4, "distance": "cosine"}}}' >/dev/null
  curl -fs -X POST "$base/collections/fuzz/documents?refresh=true" -H 'content-type: application/json' -d '{
    "documents": [
      {"id": "a", "fields": {"title": "Alpha beta", "body": "<p>one</p>", "tag": "x", "n": 1, "v": [1, 0, 0, 0]}},
      {"id": "b", "fields": {"title": "Beta gamma", "body": "two", "tag": "y", "n": 2, "v": [0, 1, 0, 0]}},
      {"id": "c", "fields": {"title": "Gamma delta", "body": "three", "tag": "x", "n": 3, "v": [0, 0, 1, 1]}}]}' >/dev/null
}

curl -fs "$base/openapi.json" > "$work/openapi.json"
"$venv/bin/python" -m openapi_spec_validator "$work/openapi.json"

status=0
cd "$here"
export SCHEMATHESIS_HOOKS=hooks
for config in schemathesis.toml targeted.toml; do
  seed_fuzz
  echo "== schemathesis, $config, $examples examples per operation"
  # One worker: with two, hypothesis sometimes fails inside itself (a KeyError in its lambda
  # source cache), which is reported as an error of the run.
  "$venv/bin/st" --config-file "$here/$config" run "$base/openapi.json" \
    --max-examples "$examples" --workers 1 --no-color "${seed[@]}" \
    --report junit --report-junit-path "$work/junit-$config.xml" || status=1
done

if ! kill -0 "$pid" 2>/dev/null; then
  echo "prism-server died during the run:"; tail -50 "$work/server.log"; exit 1
fi
if grep -q "panicked" "$work/server.log"; then
  echo "prism-server logged a panic:"; grep -B2 -A8 "panicked" "$work/server.log" | head -60; status=1
fi
exit "$status"
