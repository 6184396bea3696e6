#!/usr/bin/env bash
# The clustering user guide's Docker Compose example and quick start, end to end, in one
# command (from anywhere in the repository):
#
#   deploy/docker/quickstart.sh
#
# 1. builds prism-server (debug; PROFILE=release for release), or reuses the binary already at
#    target/<profile>/prism-server (REBUILD=1 runs cargo anyway);
# 2. stages it with its shared libraries for the FROM-scratch image (stage.sh);
# 3. generates the cluster certificates into deploy/docker/conf/tls;
# 4. starts the 3 nodes with docker-compose up --build -d (project prism-cluster);
# 5. waits for /health on localhost:3081-3083;
# 6. runs quick-start steps 3 and 4 (index doc1 on node 1, federated search from node 3 must
#    find it), a federated index through node 3 that a federated search from node 1 must
#    find, and checks that /cluster/health reports 3 alive nodes;
# 7. always tears the cluster down: docker-compose down -v, also removing the images it built
#    (KEEP_IMAGES=1 keeps them).
#
# Exits non-zero with a message naming the failed check. Needs docker with docker-compose (or
# the compose plugin), cargo, curl, openssl, ldd. Nothing is pulled: the image is FROM scratch.
# Other settings: CARGO_TARGET_DIR, HEALTH_TIMEOUT (seconds, default 90),
# SEARCH_TIMEOUT (seconds, default 20), COMPOSE_PROJECT_NAME (default prism-cluster).
set -euo pipefail

started=$(date +%s)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$here"

export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-prism-cluster}"
PROFILE="${PROFILE:-debug}"
HEALTH_TIMEOUT="${HEALTH_TIMEOUT:-90}"
SEARCH_TIMEOUT="${SEARCH_TIMEOUT:-20}"
HTTP_PORTS=(3081 3082 3083)
QUIC_PORTS=(9081 9082 9083)

step() { printf '\n==> %s\n' "$*"; }
fail() {
  printf '\nFAIL: %s\n' "$*" >&2
  exit 1
}
elapsed() { echo "$(($(date +%s) - started))s"; }

for tool in docker curl openssl ldd; do
  command -v "$tool" >/dev/null || fail "$tool is required"
done
if command -v docker-compose >/dev/null; then
  compose=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  fail "docker-compose (or the docker compose plugin) is required"
fi

case "$PROFILE" in
  debug | dev) profile_dir=debug cargo_profile=() ;;
  release) profile_dir=release cargo_profile=(--release) ;;
  *) fail "PROFILE must be debug or release, not '$PROFILE'" ;;
esac
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
[[ "$target_dir" == /* ]] || target_dir="$repo/$target_dir"
binary="$target_dir/$profile_dir/prism-server"
# The path the staged binary gets under deploy/docker/.stage/: the Dockerfile's BINARY argument.
export PRISM_BINARY="target/$profile_dir/prism-server"

# Before anything slow: leftovers of an interrupted earlier run of this project (its containers
# would hold the ports), then the host ports the cluster publishes.
"${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
port_in_use() { # proto port
  if command -v ss >/dev/null; then
    [[ -n "$(ss -Hln"$1" "sport = :$2" 2>/dev/null)" ]]
  elif [[ "$1" == t ]]; then
    (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null
  else
    return 1
  fi
}
busy=()
for p in "${HTTP_PORTS[@]}"; do port_in_use t "$p" && busy+=("$p/tcp"); done
for p in "${QUIC_PORTS[@]}"; do port_in_use u "$p" && busy+=("$p/udp"); done
((${#busy[@]} == 0)) || fail "port(s) ${busy[*]} already in use on this machine; the cluster publishes 3081-3083/tcp and 9081-9083/udp (see docker-compose.yml). Stop what uses them and rerun."

# --- 1. build --------------------------------------------------------------------------------
step "[1/7] prism-server ($PROFILE)"
if [[ -x "$binary" && "${REBUILD:-0}" != 1 ]]; then
  echo "reusing $binary (built $(date -r "$binary" '+%Y-%m-%d %H:%M:%S'); REBUILD=1 rebuilds)"
  newer=$(find "$repo/crates" -name '*.rs' -newer "$binary" -print -quit 2>/dev/null || true)
  [[ -z "$newer" ]] || echo "warning: sources changed since it was built (e.g. ${newer#"$repo"/}); REBUILD=1 to include them"
else
  (cd "$repo" && cargo build -p prism-server --features cluster "${cargo_profile[@]}")
  [[ -x "$binary" ]] || fail "cargo build succeeded but $binary does not exist"
fi

# --- 2. stage binary and libraries --------------------------------------------------------------
step "[2/7] staging the binary and its shared libraries into deploy/docker/.stage"
"$here/stage.sh" "$binary" "$PRISM_BINARY"

# --- 3. certificates -------------------------------------------------------------------------
step "[3/7] TLS certificates (deploy/docker/conf/tls)"
TLS_DIR="$here/conf/tls" "$repo/scripts/generate-certs.sh" prism-node1 prism-node2 prism-node3 localhost

# --- 4. start the cluster ----------------------------------------------------------------------
step "[4/7] starting the cluster: ${compose[*]} up --build -d"
teardown() {
  local rc=$?
  trap - EXIT INT TERM
  if ((rc != 0)); then
    echo
    echo "---- last log lines of each node ----"
    "${compose[@]}" logs --no-color --tail=30 2>&1 || true
  fi
  step "[7/7] tearing down: ${compose[*]} down -v"
  local rmi=(--rmi local)
  [[ "${KEEP_IMAGES:-0}" == 1 ]] && rmi=()
  "${compose[@]}" down -v --remove-orphans "${rmi[@]}" || echo "warning: docker-compose down failed" >&2
  if ((rc == 0)); then
    printf '\nPASS: 3-node cluster quick start works (total %s)\n' "$(elapsed)"
  else
    printf '\nFAILED after %s (exit %s)\n' "$(elapsed)" "$rc" >&2
  fi
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

"${compose[@]}" up --build -d

# --- 5. wait for the nodes ---------------------------------------------------------------------
step "[5/7] waiting for /health on localhost:3081-3083 (at most ${HEALTH_TIMEOUT}s)"
deadline=$(($(date +%s) + HEALTH_TIMEOUT))
for n in 1 2 3; do
  port=${HTTP_PORTS[n - 1]}
  until curl -fsS -o /dev/null --max-time 2 "http://localhost:$port/health" 2>/dev/null; do
    state=$(docker inspect -f '{{.State.Status}}' "$("${compose[@]}" ps -q "prism-node$n")" 2>/dev/null || echo missing)
    [[ "$state" == running || "$state" == created ]] || fail "prism-node$n is $state (its log is printed below)"
    (($(date +%s) < deadline)) || fail "prism-node$n did not answer http://localhost:$port/health within ${HEALTH_TIMEOUT}s"
    sleep 1
  done
  echo "prism-node$n healthy: $(curl -sS --max-time 2 "http://localhost:$port/health")"
done

# --- 6. the quick start ------------------------------------------------------------------------
# post URL BODY: prints the response body; returns non-zero (reason on stderr) unless 2xx.
post() {
  local out code
  out=$(mktemp)
  if ! code=$(curl -sS -o "$out" -w '%{http_code}' --max-time 30 -X POST "$1" \
    -H 'Content-Type: application/json' -d "$2"); then
    rm -f "$out"
    echo "POST $1: no answer" >&2
    return 1
  fi
  cat "$out"
  rm -f "$out"
  [[ "$code" == 2* ]] || {
    echo " (HTTP $code from POST $1)" >&2
    return 1
  }
}

# search_until URL BODY ID: repeats a federated search until its results contain ID from
# every shard (writes become searchable at the next refresh, every second by default).
search_until() {
  local until=$(($(date +%s) + SEARCH_TIMEOUT)) answer
  while :; do
    answer=$(post "$1" "$2") || true
    if [[ "$answer" == *"\"id\":\"$3\""* && "$answer" == *'"failed":0'* ]]; then
      echo "$answer"
      return 0
    fi
    (($(date +%s) < until)) || fail "federated search POST $1 $2 did not find $3 from all shards within ${SEARCH_TIMEOUT}s; last answer: $answer"
    sleep 1
  done
}

step "[6/7] quick start step 3: index documents on node 1"
echo "\$ curl -X POST http://localhost:3081/collections/docs/documents -d '{\"documents\": [{\"id\": \"doc1\", \"fields\": {\"title\": \"hello world\"}}]}'"
answer=$(post http://localhost:3081/collections/docs/documents \
  '{"documents": [
    {"id": "doc1", "fields": {"title": "hello world"}}
  ]}') || fail "indexing doc1 on node 1 failed: $answer"
echo "$answer"

step "[6/7] quick start step 4: federated search from node 3 (finds docs from node 1)"
echo "\$ curl -X POST http://localhost:3083/cluster/collections/docs/search -d '{\"query\": \"hello\"}'"
search_until http://localhost:3083/cluster/collections/docs/search '{"query": "hello"}' doc1
echo "ok: node 3's federated search found doc1, indexed on node 1, with no failed shard"

step "[6/7] federated index through node 3, federated search from node 1"
body='{"documents": [{"id": "doc2", "fields": {"title": "federated greetings", "body": "routed by id hash"}}]}'
echo "\$ curl -X POST http://localhost:3083/cluster/collections/docs/documents -d '$body'"
answer=$(post http://localhost:3083/cluster/collections/docs/documents "$body") ||
  fail "the federated index through node 3 failed: $answer"
echo "$answer"
[[ "$answer" == *'"successful_docs":1'* ]] || fail "the federated index through node 3 did not index doc2: $answer"
echo "\$ curl -X POST http://localhost:3081/cluster/collections/docs/search -d '{\"query\": \"greetings\"}'"
search_until http://localhost:3081/cluster/collections/docs/search '{"query": "greetings"}' doc2
for n in 1 2 3; do
  if curl -fsS -o /dev/null --max-time 5 "http://localhost:${HTTP_PORTS[n - 1]}/collections/docs/documents/doc2" 2>/dev/null; then
    echo "doc2 was routed to prism-node$n"
  fi
done
echo "ok: node 1's federated search found doc2, indexed through node 3"

step "[6/7] cluster health: 3 alive nodes"
for n in 1 2 3; do
  port=${HTTP_PORTS[n - 1]}
  until=$(($(date +%s) + HEALTH_TIMEOUT))
  while :; do
    answer=$(curl -sS --max-time 5 "http://localhost:$port/cluster/health" || true)
    alive=$(grep -o '"state":"alive"' <<<"$answer" | wc -l || true)
    ((alive == 3)) && break
    (($(date +%s) < until)) || fail "prism-node$n's /cluster/health shows $alive alive nodes, not 3: $answer"
    sleep 1
  done
  echo "prism-node$n: $answer"
done
echo "ok: every node sees 3 alive nodes"
