#!/usr/bin/env bash
# Checks deploy/cluster/k8s/prism.yaml without a Kubernetes cluster:
#
#   deploy/cluster/check-k8s.sh            # RUN=0 skips step 3 (the docker run)
#
# 1. schema: kubernetes-validate (PyPI; its schemas ship in the package, so it works offline)
#    in strict mode, rejecting unknown fields, against Kubernetes 1.37 and 1.29; installed into
#    a venv at target/deploy-tools/venv on first use;
# 2. structure (k8s/check_manifest.py): the objects fit together as cluster mode needs (headless
#    Service, UDP Raft port, /health probes, one config file per pod of which only prism-0's
#    bootstraps, advertise addresses and --peers on the headless names);
# 3. a run of the StatefulSet's pods in docker, as the kubelet would start them: the manifest's
#    image (deploy/docker/Dockerfile around PRISM_SERVER, default target/debug/prism-server),
#    its args with $(POD_NAME) expanded, its ConfigMap files and a TLS secret mounted where the
#    manifest mounts them, the pod's user 10001 with the group-readable key (fsGroup +
#    defaultMode 0440), a read-only root and /tmp as emptyDir, each pod reachable as
#    <pod>.prism like the headless Service makes it. Then: /health answers 200 on every pod,
#    /cluster/status lists 3 nodes led by a healthy leader with the headless addresses, a
#    document written through prism-2 reads back through prism-0, and prism-0 restarted (its
#    file still says bootstrap = true) rejoins the same cluster instead of founding one.
#    Always torn down. Host ports 27321-27323. No cargo, nothing pulled.
set -euo pipefail

started=$(date +%s)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
manifest="$here/k8s/prism.yaml"
tools="$repo/target/deploy-tools"
venv="$tools/venv"

step() { printf '\n==> [%ss] %s\n' "$(($(date +%s) - started))" "$*"; }
fail() {
  printf '\nFAIL: %s\n' "$*" >&2
  exit 1
}

step "validator: kubernetes-validate in $venv"
if [[ ! -x "$venv/bin/kubernetes-validate" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate pyyaml || fail "cannot install kubernetes-validate from PyPI"
fi
"$venv/bin/kubernetes-validate" --version

step "1/3 schema (strict: unknown fields are errors)"
for version in 1.37.0 1.29.0; do
  "$venv/bin/kubernetes-validate" --strict -k "$version" "$manifest" ||
    fail "$manifest does not validate against Kubernetes $version"
done

step "2/3 structure (k8s/check_manifest.py)"
pods_json=$(mktemp)
"$venv/bin/python" "$here/k8s/check_manifest.py" "$manifest" --pods "$pods_json" || fail "structure check failed"

if [[ "${RUN:-1}" == 0 ]]; then
  rm -f "$pods_json"
  printf '\nPASS: schema and structure (RUN=0: the docker run was skipped) (%ss)\n' "$(($(date +%s) - started))"
  exit 0
fi

# --- 3. the pods in docker ----------------------------------------------------------------
for tool in docker curl jq openssl ldd; do
  command -v "$tool" >/dev/null || fail "$tool is required for the run (RUN=0 skips it)"
done
binary="${PRISM_SERVER:-target/debug/prism-server}"
[[ "$binary" == /* ]] || binary="$repo/$binary"
[[ -x "$binary" ]] || fail "no prism-server at $binary: build it or set PRISM_SERVER (RUN=0 skips the run)"
staged="target/debug/prism-server"
[[ "$binary" == "$repo"/* ]] && staged="${binary#"$repo"/}"

image=$(jq -r .image "$pods_json")
http_port=$(jq -r .http_port "$pods_json")
mapfile -t pods < <(jq -r '.pods[].name' "$pods_json")
net=prism-k8s-check
work="$tools/k8s-run"
HOST_PORTS=(27321 27322 27323)
for p in "${HOST_PORTS[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then fail "port $p is already in use"; fi
done

teardown() {
  local rc=$?
  trap - EXIT INT TERM
  if ((rc != 0)); then
    for pod in "${pods[@]}"; do
      echo "---- last log lines of $pod ----"
      docker logs --tail 25 "prism-k8s-$pod" 2>&1 || true
    done
  fi
  step "tearing down"
  for pod in "${pods[@]}"; do docker rm -f "prism-k8s-$pod" >/dev/null 2>&1 || true; done
  docker network rm "$net" >/dev/null 2>&1 || true
  [[ "${KEEP_IMAGES:-0}" == 1 ]] || docker image rm "$image" >/dev/null 2>&1 || true
  rm -rf "$work" "$pods_json"
  if ((rc == 0)); then
    printf '\nPASS: schema, structure, and the 3 pods formed one cluster as the manifest starts them (%ss)\n' "$(($(date +%s) - started))"
  else
    printf '\nFAILED after %ss (exit %s)\n' "$(($(date +%s) - started))" "$rc" >&2
  fi
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM
for pod in "${pods[@]}"; do docker rm -f "prism-k8s-$pod" >/dev/null 2>&1 || true; done
docker network rm "$net" >/dev/null 2>&1 || true

step "3/3 image $image from deploy/docker/Dockerfile around $binary"
"$repo/deploy/docker/stage.sh" "$binary" "$staged" >/dev/null
docker build -q -t "$image" --build-arg BINARY="$staged" "$repo/deploy/docker" >/dev/null

step "3/3 secret prism-tls (certificate for ${pods[*]/%/.prism}) and the pods' volumes"
rm -rf "$work"
mkdir -p "$work/tls"
mapfile -t sans < <(jq -r '.pods[].advertise | sub(":[0-9]+$"; "")' "$pods_json")
TLS_DIR="$work/tls" "$repo/scripts/generate-certs.sh" "${sans[@]}" >/dev/null
rm -f "$work/tls/ca-key.pem"
# As mounted from the Secret: defaultMode 0440, group fsGroup (10001).
chgrp 10001 "$work/tls"/*.pem
chmod 0440 "$work/tls"/*.pem
docker network create "$net" >/dev/null

config_dir=$(jq -r '.pods[0].config_path | sub("/[^/]+$"; "")' "$pods_json")
for i in "${!pods[@]}"; do
  pod=${pods[i]}
  mkdir -p "$work/$pod/config" "$work/$pod/data"
  jq -r ".pods[$i].config" "$pods_json" >"$work/$pod/config/$pod.toml"
  chown 10001:10001 "$work/$pod/data" # fsGroup's effect on the PVC
  mapfile -t args < <(jq -r ".pods[$i].args[]" "$pods_json")
  docker run -d --name "prism-k8s-$pod" --hostname "$pod" \
    --network "$net" --network-alias "$pod.prism" \
    --user 10001:10001 --read-only --tmpfs /tmp \
    -e POD_NAME="$pod" \
    -v "$work/$pod/config:$config_dir:ro" \
    -v "$work/tls:/etc/prism/tls:ro" \
    -v "$work/$pod/data:/var/lib/prism" \
    -p "127.0.0.1:${HOST_PORTS[i]}:$http_port" \
    "$image" "${args[@]}" >/dev/null
  echo "$pod: prism-server ${args[*]}"
done

# get URL: sets $code and $body.
get() {
  local out
  out=$(mktemp)
  code=$(curl -sS -o "$out" -w '%{http_code}' --max-time 5 "$@" 2>/dev/null) || code=000
  body=$(cat "$out")
  rm -f "$out"
}
running() {
  local pod state
  for pod in "${pods[@]}"; do
    state=$(docker inspect -f '{{.State.Status}}' "prism-k8s-$pod" 2>/dev/null || echo missing)
    [[ "$state" == running ]] || fail "pod $pod is $state"
  done
}
# wait_formed: every pod's /health is 200 (the probes) and its /cluster/status lists every pod,
# settled, with a leader, healthy, at the headless addresses.
wait_formed() {
  local deadline=$(($(date +%s) + 90)) i want
  want=$(jq -c '[.pods[] | {id: .name, address: .advertise}] | sort' "$pods_json")
  for i in "${!pods[@]}"; do
    while :; do
      running
      get "http://127.0.0.1:${HOST_PORTS[i]}/health"
      if [[ "$code" == 200 ]]; then
        get "http://127.0.0.1:${HOST_PORTS[i]}/cluster/status"
        if [[ "$code" == 200 ]] && jq -e --argjson want "$want" '.leader != null and .healthy == true
            and ([.nodes[] | {id, address}] | sort) == $want
            and all(.nodes[]; .state == "leader" or .state == "follower")' <<<"$body" >/dev/null 2>&1; then
          break
        fi
      fi
      (($(date +%s) < deadline)) || fail "${pods[i]}: no settled 3-node cluster within 90s; last answer ($code): $body"
      sleep 1
    done
    echo "${pods[i]}: /health 200; $(jq -c '{leader, term, nodes: [.nodes[] | "\(.id)@\(.address)=\(.state)"]}' <<<"$body")"
  done
}

step "3/3 waiting for the pods to form one cluster"
wait_formed

step "3/3 a collection through ${pods[1]}, a write through ${pods[2]}, a read through ${pods[0]}"
curl -fsS -o /dev/null --max-time 10 -X PUT "http://127.0.0.1:${HOST_PORTS[1]}/collections/k8scheck" \
  -H 'content-type: application/json' \
  -d '{"fields": {"title": {"type": "text"}}, "shards": 3}' || fail "PUT /collections/k8scheck through ${pods[1]} failed"
deadline=$(($(date +%s) + 30))
until curl -fsS -o /dev/null --max-time 10 -X POST "http://127.0.0.1:${HOST_PORTS[2]}/collections/k8scheck/documents" \
  -H 'content-type: application/json' -d '{"documents": [{"id": "k1", "fields": {"title": "via the last pod"}}]}' 2>/dev/null; do
  (($(date +%s) < deadline)) || fail "writing through ${pods[2]} did not succeed within 30s"
  sleep 1
done
read_back() {
  local deadline=$(($(date +%s) + 20))
  while :; do
    get "http://127.0.0.1:${HOST_PORTS[0]}/collections/k8scheck/documents/k1"
    [[ "$code" == 200 ]] && jq -e '.id == "k1"' <<<"$body" >/dev/null 2>&1 && break
    (($(date +%s) < deadline)) || fail "k1 not readable through ${pods[0]}: ($code) $body"
    sleep 0.5
  done
  echo "${pods[0]}: read k1: $body"
}
read_back

step "3/3 restarting ${pods[0]} (its config still says bootstrap = true): it must rejoin, not found a new cluster"
get "http://127.0.0.1:${HOST_PORTS[1]}/cluster/status"
term_before=$(jq .term <<<"$body")
docker restart "prism-k8s-${pods[0]}" >/dev/null
wait_formed
get "http://127.0.0.1:${HOST_PORTS[0]}/cluster/status"
jq -e --argjson t "$term_before" '.term >= $t' <<<"$body" >/dev/null || fail "${pods[0]} came back with term $(jq .term <<<"$body") < $term_before: a new cluster?"
read_back
