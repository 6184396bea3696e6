#!/usr/bin/env bash
# Installs etcd for the etcd reference benchmark (bench/etcd/etcd_bench.py)
# from Debian's packages (etcd-server, plus etcd-client for etcdctl), unless an
# `etcd` binary is already on PATH. Idempotent.
#
# Prints the etcd binary's path on stdout (all else goes to stderr), so
#   ETCD="$(bench/etcd/setup.sh)"
# works in scripts.
set -uo pipefail

log() { printf '[etcd-setup] %s\n' "$*" >&2; }

if path="$(command -v etcd)"; then
    log "etcd already installed: $path"
    echo "$path"
    exit 0
fi

sudo=()
[ "$(id -u)" -ne 0 ] && sudo=(sudo -n)
export DEBIAN_FRONTEND=noninteractive
# On a machine with systemd the package also starts a system etcd on the
# default ports; the benchmark picks free ports of its own, so that is harmless.
pkgs=(etcd-server etcd-client)
log "installing Debian packages: ${pkgs[*]}"
if ! "${sudo[@]}" apt-get install -y -q --no-install-recommends "${pkgs[@]}" >&2; then
    # The package lists may be missing or stale on a fresh machine.
    "${sudo[@]}" apt-get update -q >&2 || true
    if ! "${sudo[@]}" apt-get install -y -q --no-install-recommends "${pkgs[@]}" >&2; then
        log "apt-get could not install ${pkgs[*]}"
        exit 1
    fi
fi

if ! path="$(command -v etcd)"; then
    log "etcd-server installed but no etcd binary on PATH"
    exit 1
fi
log "installed $("$path" --version 2>/dev/null | head -1)"
echo "$path"
