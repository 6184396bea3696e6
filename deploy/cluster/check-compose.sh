#!/usr/bin/env bash
# Checks deploy/cluster/docker-compose.yml end to end (spec 002, cluster mode):
#
#   deploy/cluster/check-compose.sh
#
# 1. stages a prebuilt prism-server for the FROM-scratch image (deploy/docker/stage.sh; no
#    cargo: PRISM_SERVER, default target/debug/prism-server, must exist);
# 2. generates the cluster certificates into deploy/cluster/tls;
# 3. builds the image and starts prism1 (--bootstrap), prism2 and prism3 (--peers);
# 4. waits until /cluster/status on every node lists 3 nodes, a leader and healthy;
# 5. creates a 3-shard collection through prism1 (replication defaults to 3 copies);
# 6. writes one document through every node, then reads every document back through every
#    node (reads are eventual: a node reads its own copy, so each read may retry briefly);
# 7. always tears down: docker-compose down -v (volumes too) and the image (KEEP_IMAGES=1
#    keeps it), and removes the certificates.
# Exits non-zero naming the failed step. Needs docker, docker-compose (or the compose plugin),
# curl, jq, openssl, ldd. Nothing is pulled. Settings: PRISM_SERVER, READY_TIMEOUT (s, 90),
# WRITE_TIMEOUT (s, 30), READ_TIMEOUT (s, 15), COMPOSE_PROJECT_NAME (prism-raft-check).
set -euo pipefail

started=$(date +%s)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$here"

export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-prism-raft-check}"
READY_TIMEOUT="${READY_TIMEOUT:-90}"
WRITE_TIMEOUT="${WRITE_TIMEOUT:-30}"
READ_TIMEOUT="${READ_TIMEOUT:-15}"
binary="${PRISM_SERVER:-target/debug/prism-server}"
[[ "$binary" == /* ]] || binary="$repo/$binary"
NODES=(prism1 prism2 prism3)
PORTS=(27311 27312 27313)
COLLECTION=checkdocs

step() { printf '\n==> [%ss] %s\n' "$(($(date +%s) - started))" "$*"; }
fail() {
  printf '\nFAIL: %s\n' "$*" >&2
  exit 1
}

for tool in docker curl jq openssl ldd; do
  command -v "$tool" >/dev/null || fail "$tool is required"
done
if command -v docker-compose >/dev/null; then
  compose=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  fail "docker-compose (or the docker compose plugin) is required"
fi
[[ -x "$binary" ]] || fail "no prism-server at $binary: build it (cargo build -p prism-server) or set PRISM_SERVER"
# The staged binary's path under deploy/docker/.stage: the Dockerfile's BINARY argument.
case "$binary" in
  "$repo"/*) export PRISM_BINARY="${binary#"$repo"/}" ;;
  *) export PRISM_BINARY="target/debug/prism-server" ;;
esac

# Leftovers of an interrupted run of this project, then the host ports it publishes.
"${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
for p in "${PORTS[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    fail "port $p is already in use; docker-compose.yml publishes 27311-27313"
  fi
done

teardown() {
  local rc=$?
  trap - EXIT INT TERM
  if ((rc != 0)); then
    echo
    echo "---- last log lines of each node ----"
    "${compose[@]}" logs --no-color --tail=40 2>&1 || true
  fi
  step "tearing down: ${compose[*]} down -v"
  "${compose[@]}" down -v --remove-orphans || echo "warning: ${compose[*]} down failed" >&2
  if [[ "${KEEP_IMAGES:-0}" != 1 ]]; then
    docker image rm prism:cluster-local >/dev/null 2>&1 || true
  fi
  rm -rf "$here/tls"
  if ((rc == 0)); then
    printf '\nPASS: 3-node cluster-mode compose: formed, collection created, every node wrote and read every document (%ss)\n' "$(($(date +%s) - started))"
  else
    printf '\nFAILED after %ss (exit %s)\n' "$(($(date +%s) - started))" "$rc" >&2
  fi
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

step "staging $binary for the FROM-scratch image (deploy/docker/stage.sh)"
"$repo/deploy/docker/stage.sh" "$binary" "$PRISM_BINARY"

step "certificates for prism1 prism2 prism3 (deploy/cluster/tls)"
rm -rf "$here/tls"
TLS_DIR="$here/tls" "$repo/scripts/generate-certs.sh" "${NODES[@]}"

step "building the image and starting the cluster"
"${compose[@]}" build
"${compose[@]}" up -d --no-build

# http METHOD URL [BODY]: sets $code and $body; never fails the script by itself.
http() {
  local out
  out=$(mktemp)
  if code=$(curl -sS -o "$out" -w '%{http_code}' --max-time 10 -X "$1" "$2" \
    -H 'content-type: application/json' ${3:+-d "$3"} 2>/dev/null); then
    body=$(cat "$out")
  else
    code=000 body="(no answer)"
  fi
  rm -f "$out"
}

# Fails as soon as a node's container stopped or restarted.
nodes_running() {
  local n id state
  for n in "${NODES[@]}"; do
    id=$("${compose[@]}" ps -q "$n" 2>/dev/null || true)
    state=$(docker inspect -f '{{.State.Status}} (restarts: {{.RestartCount}})' "$id" 2>/dev/null || echo missing)
    [[ "$state" == "running (restarts: 0)" || "$state" == "created (restarts: 0)" ]] || fail "$n is $state (its log is below)"
  done
}

step "waiting for /cluster/status on every node: 3 nodes, a leader, healthy (at most ${READY_TIMEOUT}s)"
deadline=$(($(date +%s) + READY_TIMEOUT))
for i in 0 1 2; do
  url="http://127.0.0.1:${PORTS[i]}/cluster/status"
  while :; do
    nodes_running
    http GET "$url"
    if [[ "$code" == 200 ]] && jq -e '(.nodes | length) == 3 and .leader != null and .healthy == true
        and all(.nodes[]; .state == "leader" or .state == "follower")' <<<"$body" >/dev/null 2>&1; then
      break
    fi
    (($(date +%s) < deadline)) || fail "${NODES[i]}: $url did not show 3 settled nodes with a leader within ${READY_TIMEOUT}s; last answer ($code): $body"
    sleep 1
  done
  echo "${NODES[i]}: $(jq -c '{leader, term, healthy, nodes: [.nodes[] | "\(.id)=\(.state)"]}' <<<"$body")"
done

step "creating collection $COLLECTION (3 shards) through prism1"
schema='{"fields": {"title": {"type": "text"}, "via": {"type": "keyword"}}, "shards": 3}'
http PUT "http://127.0.0.1:${PORTS[0]}/collections/$COLLECTION" "$schema"
[[ "$code" == 201 ]] || fail "PUT /collections/$COLLECTION through prism1 answered $code: $body"
jq -c '{name, shards, replication_factor}' <<<"$body" 2>/dev/null || echo "$body"

step "writing one document through every node (at most ${WRITE_TIMEOUT}s each; a 503 while shard leaders are elected is retried)"
for i in 0 1 2; do
  id="doc-via-${NODES[i]}"
  doc="{\"documents\": [{\"id\": \"$id\", \"fields\": {\"title\": \"written through ${NODES[i]}\", \"via\": \"${NODES[i]}\"}}]}"
  deadline=$(($(date +%s) + WRITE_TIMEOUT))
  tries=0
  while :; do
    tries=$((tries + 1))
    http POST "http://127.0.0.1:${PORTS[i]}/collections/$COLLECTION/documents" "$doc"
    if [[ "$code" == 201 ]] && jq -e '.successful_docs == 1' <<<"$body" >/dev/null 2>&1; then
      break
    fi
    (($(date +%s) < deadline)) || fail "writing $id through ${NODES[i]} did not succeed within ${WRITE_TIMEOUT}s; last answer ($code): $body"
    sleep 1
  done
  echo "${NODES[i]}: wrote $id (attempt $tries): $(jq -c '{successful_docs, consistency_token}' <<<"$body")"
done

step "reading every document back through every node (at most ${READ_TIMEOUT}s each)"
for i in 0 1 2; do
  for j in 0 1 2; do
    id="doc-via-${NODES[j]}"
    deadline=$(($(date +%s) + READ_TIMEOUT))
    while :; do
      http GET "http://127.0.0.1:${PORTS[i]}/collections/$COLLECTION/documents/$id"
      if [[ "$code" == 200 ]] && jq -e --arg id "$id" --arg via "${NODES[j]}" \
        '.id == $id and .fields.via == $via' <<<"$body" >/dev/null 2>&1; then
        break
      fi
      (($(date +%s) < deadline)) || fail "GET $id through ${NODES[i]} did not return it within ${READ_TIMEOUT}s; last answer ($code): $body"
      sleep 0.5
    done
    echo "${NODES[i]}: read $id"
  done
done
