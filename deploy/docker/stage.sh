#!/usr/bin/env bash
# Stages a prebuilt prism-server for the FROM-scratch image (deploy/docker/Dockerfile):
#
#   deploy/docker/stage.sh [BINARY] [AS]
#
# BINARY (default target/release/prism-server) is the binary to package; AS (default: BINARY
# when it is a relative path, else target/release/prism-server) is where it goes under
# .stage/, i.e. the Dockerfile's BINARY build argument. Writes deploy/docker/.stage/:
#   <AS>                      a copy of the binary, debug info stripped (STRIP=0 keeps it)
#   rootfs/<lib paths>        every shared library `ldd` lists, at the same absolute path
#   rootfs/<loader path>      the dynamic loader (the binary's PT_INTERP)
#   rootfs/etc/nsswitch.conf  hosts: files dns  (peer names resolve via Docker's DNS)
#   rootfs/data, rootfs/tmp   empty, writable in the container
# The previous .stage/ is replaced, so reruns are safe.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
binary="${1:-target/release/prism-server}"
if [[ -n "${2:-}" ]]; then
  as="$2"
elif [[ "$binary" != /* ]]; then
  as="$binary"
else
  as="target/release/prism-server"
fi
[[ "$binary" == /* ]] || binary="$repo/$binary"
[[ -x "$binary" ]] || { echo "error: no executable at $binary; build it first (cargo build -p prism-server --release)" >&2; exit 1; }
command -v ldd >/dev/null || { echo "error: ldd is required (apt-get install libc-bin)" >&2; exit 1; }

stage="$here/.stage"
rm -rf "$stage"
mkdir -p "$stage/rootfs/etc" "$stage/rootfs/data" "$stage/rootfs/tmp" "$(dirname "$stage/$as")"
chmod 1777 "$stage/rootfs/tmp"

cp "$binary" "$stage/$as"
if [[ "${STRIP:-1}" != 0 ]] && command -v strip >/dev/null; then
  strip --strip-debug "$stage/$as"
fi

# ldd lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)",
# "linux-vdso.so.1 (0x...)" (in the kernel; nothing to copy). A "not found" is fatal.
if ldd "$binary" | grep -q "not found"; then
  ldd "$binary" >&2
  echo "error: $binary needs libraries that are not installed" >&2
  exit 1
fi
libs=$(ldd "$binary" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | sort -u)
[[ -n "$libs" ]] || { echo "error: ldd found no libraries: is $binary statically linked or not an ELF file?" >&2; exit 1; }
for lib in $libs; do
  mkdir -p "$stage/rootfs$(dirname "$lib")"
  cp -L "$lib" "$stage/rootfs$lib"   # -L: the file, not the symlink
done
# The loader named in the ELF header (PT_INTERP) must be there under exactly that name.
interp=$(readelf -l "$binary" 2>/dev/null | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p' || true)
if [[ -n "$interp" && ! -e "$stage/rootfs$interp" ]]; then
  mkdir -p "$stage/rootfs$(dirname "$interp")"
  cp -L "$interp" "$stage/rootfs$interp"
fi

printf 'hosts: files dns\n' > "$stage/rootfs/etc/nsswitch.conf"

echo "staged $(basename "$binary") as .stage/$as ($(du -h "$stage/$as" | cut -f1)) with:"
(cd "$stage/rootfs" && find . -type f -name '*.so*' | sed 's|^\.||' | sort | sed 's/^/  /')
