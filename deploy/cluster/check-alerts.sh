#!/usr/bin/env bash
# Checks deploy/cluster/alerts.yml:
#
#   deploy/cluster/check-alerts.sh
#
# 1. promtool check rules alerts.yml (syntax, PromQL, templates);
# 2. promtool test rules alerts.test.yml: series fed in, each alert must fire when and with
#    the labels and annotations expected, and none on a healthy cluster;
# 3. the rules' metrics are Prism's: a one-node cluster (PRISM_SERVER, default
#    target/debug/prism-server, --cluster --bootstrap on 127.0.0.1:27331 HTTP and 27332 QUIC)
#    with a one-shard collection must export every metric the rules use, with the `group`
#    label where they match on it, and raft_state 2 (leader) for both of its groups. Skipped
#    with a note when there is no binary.
# promtool: the one on PATH, else Debian's `prometheus` package, downloaded (not installed:
# no service is set up) and unpacked into target/deploy-tools/prom.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
tools="$repo/target/deploy-tools"
fail() {
  printf 'FAIL: %s\n' "$*" >&2
  exit 1
}

if command -v promtool >/dev/null; then
  promtool=$(command -v promtool)
else
  promtool="$tools/prom/usr/bin/promtool"
  if [[ ! -x "$promtool" ]]; then
    echo "==> promtool: downloading Debian's prometheus package into $tools"
    mkdir -p "$tools"
    (cd "$tools" && apt-get download prometheus 2>&1 >/dev/null | grep -v unsandboxed >&2 || true; ls "$tools"/prometheus_*.deb >/dev/null 2>&1) ||
      fail "cannot download the prometheus package (apt-get update first?)"
    dpkg-deb -x "$(ls -t "$tools"/prometheus_*.deb | head -1)" "$tools/prom"
  fi
fi
echo "==> $("$promtool" --version 2>&1 | head -1)"

cd "$here"
echo "==> promtool check rules alerts.yml"
"$promtool" check rules alerts.yml || fail "alerts.yml does not pass promtool check rules"
echo "==> promtool test rules alerts.test.yml"
"$promtool" test rules alerts.test.yml || fail "an alert did not fire (or fired) as alerts.test.yml expects"

binary="${PRISM_SERVER:-target/debug/prism-server}"
[[ "$binary" == /* ]] || binary="$repo/$binary"
if [[ ! -x "$binary" ]]; then
  echo "note: no prism-server at $binary: the metric names were not compared with a real node"
  echo "PASS: alerts.yml (rules and unit tests)"
  exit 0
fi

echo "==> the rules' metrics on a real one-node cluster ($binary)"
work=$(mktemp -d)
pid=
cleanup() {
  [[ -n "$pid" ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
if (exec 3<>/dev/tcp/127.0.0.1/27331) 2>/dev/null; then fail "port 27331 is already in use"; fi
TLS_DIR="$work/tls" "$repo/scripts/generate-certs.sh" >/dev/null
cat >"$work/prism.toml" <<EOF
[cluster.tls]
enabled = true
cert_path = "$work/tls/node-cert.pem"
key_path = "$work/tls/node-key.pem"
ca_cert_path = "$work/tls/ca-cert.pem"
EOF
"$binary" --config "$work/prism.toml" --host 127.0.0.1 --port 27331 --data-dir "$work/data" \
  --cluster --raft-addr 127.0.0.1:27332 --node-id alerts-check --bootstrap >"$work/log" 2>&1 &
pid=$!
deadline=$(($(date +%s) + 30))
until curl -fsS -o /dev/null --max-time 2 http://127.0.0.1:27331/health 2>/dev/null &&
  curl -fsS --max-time 2 -X PUT http://127.0.0.1:27331/collections/alerts -H 'content-type: application/json' \
    -d '{"fields": {"t": {"type": "text"}}, "shards": 1}' -o /dev/null 2>/dev/null; do
  kill -0 "$pid" 2>/dev/null || { tail -20 "$work/log" >&2; fail "prism-server exited"; }
  (($(date +%s) < deadline)) || { tail -20 "$work/log" >&2; fail "the node did not start within 30s"; }
  sleep 0.5
done
deadline=$(($(date +%s) + 20))
while :; do
  metrics=$(curl -fsS --max-time 5 http://127.0.0.1:27331/metrics || true)
  grep -q '^raft_state{group="alerts/0@1"} 2$' <<<"$metrics" &&
    grep -q '^raft_state{group="metadata"} 2$' <<<"$metrics" && break
  (($(date +%s) < deadline)) || fail "/metrics does not show raft_state 2 for groups metadata and alerts/0@1: $(grep '^raft_state' <<<"$metrics")"
  sleep 0.5
done
# Every metric name in an expression, but for Prometheus's own `up`.
names=$(grep -v '^\s*#' alerts.yml | grep -oE '[a-z_]+\{job="prism"' | cut -d'{' -f1 | sort -u | grep -vx up)
for name in $names; do
  if [[ "$name" == prism_node_state ]]; then
    grep -qE "^$name [0-9.]+$" <<<"$metrics" || fail "/metrics has no $name"
  else
    grep -qE "^$name\{group=\"[^\"]+\"\} [0-9.e+-]+$" <<<"$metrics" || fail "/metrics has no $name with a group label"
  fi
done
echo "ok: /metrics exports $(tr '\n' ' ' <<<"$names")as the rules use them"
echo "PASS: alerts.yml (rules, unit tests, metric names)"
