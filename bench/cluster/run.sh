#!/usr/bin/env bash
# etcd against Prism in one run on the same machine: bench/etcd/etcd_bench.py, then
# bench/cluster/cluster_bench.py, with the same client settings. Prints one JSON object on
# stdout, {"etcd": ..., "prism": ..., "comparison": ...}, and keeps the three as
# $OUT/etcd.json, $OUT/prism.json and $OUT/cluster.json (default OUT: target/bench/cluster).
#
#   bench/cluster/run.sh                                  # 5 kills, 16 clients, 10 s runs
#   bench/cluster/run.sh --kills 2 --clients 4 --seconds 3
#   bench/cluster/run.sh --prism-bin target/debug/prism-server --only failover
#
# Flags: --prism-bin PATH (default target/release/prism-server if built, else
# target/debug/prism-server), --etcd PATH (default: etcd on PATH, installed by
# bench/etcd/setup.sh when missing), --out DIR; passed to both benches: --kills N, --clients N,
# --seconds S, --put-timeout S, --settle S, --keep-dir; --only failover|throughput|search|idle
# (search and idle are Prism's alone: etcd is skipped for them).
#
# comparison: failover median Prism/etcd (below 1: Prism fails over faster), the RF 3 / RF 1
# throughput ratio of each (how much replication costs each), and Prism/etcd puts/s and server
# CPU per put. Throughput figures of a debug build are meaningless; the field "build" says
# which one ran.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

usage() { sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit "${1:-0}"; }

prism_bin=""
etcd=""
only=""
out="target/bench/cluster"
common=()
while (($#)); do
  case "$1" in
    --prism-bin) prism_bin="${2:?--prism-bin needs a path}"; shift 2 ;;
    --etcd) etcd="${2:?--etcd needs a path}"; shift 2 ;;
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    --only)
      only="${2:?--only needs a value}"; shift 2 ;;
    --kills|--clients|--seconds|--put-timeout|--settle)
      common+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    --keep-dir) common+=("$1"); shift ;;
    -h|--help) usage 0 ;;
    *) echo "unknown flag: $1" >&2; usage 2 ;;
  esac
done

if [[ -z "$prism_bin" ]]; then
  if [[ -x target/release/prism-server ]]; then
    prism_bin=target/release/prism-server
  else
    prism_bin=target/debug/prism-server
  fi
fi
if [[ ! -x "$prism_bin" ]]; then
  echo "no prism-server at $prism_bin: cargo build --release -p prism-server, or --prism-bin PATH" >&2
  exit 1
fi
if [[ -z "$etcd" ]]; then
  etcd="$(bench/etcd/setup.sh)" || { echo "no etcd: bench/etcd/setup.sh failed" >&2; exit 1; }
fi

mkdir -p "$out"
rm -f "$out/etcd.json" "$out/prism.json" "$out/cluster.json"
started=$(date +%s)
failed=0
# etcd has a counterpart for failover and throughput only; search and idle are Prism's alone.
case "$only" in
  "") etcd_only=(); prism_only=() ;;
  failover|throughput) etcd_only=(--only "$only"); prism_only=(--only "$only") ;;
  search|idle) etcd_only=(skip); prism_only=(--only "$only") ;;
  *) echo "--only takes failover, throughput, search or idle" >&2; exit 2 ;;
esac
if [[ "${etcd_only[*]:-}" != skip ]]; then
  echo "[run] etcd bench ($etcd)" >&2
  python3 bench/etcd/etcd_bench.py --etcd "$etcd" "${common[@]}" "${etcd_only[@]}" > "$out/etcd.json" \
    || { echo "[run] etcd bench failed" >&2; failed=1; }
fi
echo "[run] prism bench ($prism_bin)" >&2
python3 bench/cluster/cluster_bench.py --prism-bin "$prism_bin" "${common[@]}" "${prism_only[@]}" \
  > "$out/prism.json" || { echo "[run] prism bench failed" >&2; failed=1; }

python3 - "$out" "$(( $(date +%s) - started ))" <<'EOF'
import json, os, sys

out, took = sys.argv[1], int(sys.argv[2])

def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def get(d, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d

def ratio(a, b):
    return round(a / b, 2) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None

etcd, prism = load("etcd.json"), load("prism.json")
comparison = {
    "prism_build": get(prism, "build"),
    "failover_median_s": {"etcd": get(etcd, "failover", "median_s"),
                          "prism": get(prism, "failover", "median_s")},
    "failover_median_prism_over_etcd": ratio(get(prism, "failover", "median_s"),
                                             get(etcd, "failover", "median_s")),
    "ratio_rf3_rf1": {"etcd": get(etcd, "throughput", "ratio_rf3_rf1"),
                      "prism": get(prism, "throughput", "ratio_rf3_rf1")},
    "ratio_rf3_rf1_prism_over_etcd": ratio(get(prism, "throughput", "ratio_rf3_rf1"),
                                           get(etcd, "throughput", "ratio_rf3_rf1")),
}
for rf in ("rf1", "rf3"):
    comparison[f"puts_per_s_{rf}_prism_over_etcd"] = ratio(
        get(prism, "throughput", rf, "puts_per_s"), get(etcd, "throughput", rf, "puts_per_s"))
    comparison[f"server_cpu_per_put_{rf}_prism_over_etcd"] = ratio(
        get(prism, "throughput", rf, "server_cpu_us_per_put"),
        get(etcd, "throughput", rf, "server_cpu_us_per_put"))
comparison["search_p50_cluster_over_single"] = get(prism, "search", "ratio_p50_cluster_single")
comparison["search_cpu_cluster_over_single"] = get(prism, "search", "ratio_cpu_cluster_single")
comparison["idle_300_groups"] = {k: {f: v.get(f) for f in ("cpu_percent", "rss_mib", "threads")}
                                 for k, v in (get(prism, "idle", "nodes") or {}).items()}
comparison["seconds"] = took
result = {"etcd": etcd, "prism": prism, "comparison": comparison}
with open(os.path.join(out, "cluster.json"), "w") as f:
    json.dump(result, f, indent=2)
print(json.dumps(result, indent=2))
c = comparison
print(f"[run] failover median: etcd {c['failover_median_s']['etcd']} s, prism "
      f"{c['failover_median_s']['prism']} s (prism/etcd {c['failover_median_prism_over_etcd']}); "
      f"rf3/rf1: etcd {c['ratio_rf3_rf1']['etcd']}, prism {c['ratio_rf3_rf1']['prism']}"
      f"{'' if c['prism_build'] == 'release' else ' (prism ' + str(c['prism_build']) + ' build: throughput meaningless)'}",
      file=sys.stderr)
EOF
exit "$failed"
