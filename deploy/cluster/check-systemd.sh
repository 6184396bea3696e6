#!/usr/bin/env bash
# Checks deploy/cluster/prism.service:
#
#   deploy/cluster/check-systemd.sh
#
# 1. systemd-analyze verify (apt-get install systemd) in a scratch root (--root) holding the
#    distribution's units, the unit under /etc/systemd/system and a stub
#    /usr/local/bin/prism-server, so nothing is installed on this machine. verify exits 0 on
#    an unknown key or a bad value (it only prints a warning), so any output fails the check;
# 2. every --flag of ExecStart and every PRISM_* variable the unit sets is one that
#    prism-server --help lists (PRISM_SERVER, default target/debug/prism-server; skipped
#    with a note when there is none).
# The unit is not started: this container has no systemd as PID 1.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
unit="$here/prism.service"
fail() {
  printf 'FAIL: %s\n' "$*" >&2
  exit 1
}
command -v systemd-analyze >/dev/null || fail "systemd-analyze is required (apt-get install systemd)"

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd" "$root/usr/local/bin"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
printf '#!/bin/sh\n' >"$root/usr/local/bin/prism-server"
chmod +x "$root/usr/local/bin/prism-server"
cp "$unit" "$root/etc/systemd/system/prism.service"

echo "==> systemd-analyze verify prism.service ($(systemd-analyze --version | head -1))"
if ! out=$(systemd-analyze verify --root="$root" prism.service 2>&1) || [[ -n "$out" ]]; then
  printf '%s\n' "$out" >&2
  fail "systemd-analyze verify reports problems in $unit"
fi
echo "ok: no warning"

binary="${PRISM_SERVER:-target/debug/prism-server}"
[[ "$binary" == /* ]] || binary="$repo/$binary"
if [[ -x "$binary" ]]; then
  echo "==> the unit's flags and variables against $binary --help"
  help=$("$binary" --help)
  exec_start=$(sed -n '/^ExecStart=/,/[^\\]$/p' "$unit")
  for f in $(grep -o -- '--[a-z-]*' <<<"$exec_start" | sort -u); do
    grep -q -- "$f " <<<"$help" || grep -q -- "$f$" <<<"$help" || fail "ExecStart's $f is not a prism-server flag"
  done
  for v in $(grep -o 'PRISM_[A-Z_]*' "$unit" | sort -u); do
    grep -q "env: $v=" <<<"$help" || fail "$v is not a variable prism-server reads"
  done
  grep -q '^User=prism$' "$unit" || fail "the unit does not run as User=prism"
  echo "ok: $(grep -o -- '--[a-z-]*' <<<"$exec_start" | sort -u | tr '\n' ' ')and $(grep -o 'PRISM_[A-Z_]*' "$unit" | sort -u | tr '\n' ' ')are prism-server's"
else
  echo "note: no prism-server at $binary: the flags were not compared with --help"
fi
echo "PASS: $unit"
