#!/usr/bin/env bash
# Build (once per machine) and install MinkowskiEngine 0.5.4, CPU-only, into a virtualenv.
#
#   bash scripts/install_minkowski.sh [PYTHON]        (default: .venv/bin/python)
#
# The wheel is cached under ${M2S_CACHE:-$HOME/.cache/m2s}/wheels/, keyed by the ME, torch and
# Python versions, so the 10-15 minute compile happens once per machine.
# MinkowskiEngine is optional: m2s falls back to its pure-PyTorch backend. So when the build or
# the import check fails this script prints a loud WARNING and exits 0, letting `make setup` go on.
#
# Environment:
#   M2S_CACHE          cache root (default $HOME/.cache/m2s)
#   M2S_ME_SDIST       path to a local MinkowskiEngine-0.5.4.tar.gz (offline machines)
#   M2S_ME_FORCE=1     rebuild even if a cached wheel exists
#   MAX_JOBS           parallel compile jobs (default: number of cores)
set -uo pipefail

# Everything runs inside main so bash parses the whole file before executing any of it
# (editing or checking out this file during the long build cannot derail a running install).
main() {

ME_VERSION=0.5.4
# Pinned sdist: pip cannot `download` it (its setup.py needs torch and BLAS flags just to emit
# metadata), so fetch the file itself and check its hash.
SDIST_URL="https://files.pythonhosted.org/packages/21/5c/c543c4bc5fbe73ac3e38465b3da4f24a61f7a4ac5baec867e582e94aa551/MinkowskiEngine-0.5.4.tar.gz"
SDIST_SHA256="b1879c00d0b0b1d30ba622cce239886a7e3c78ee9da1064cdfe2f64c2ab15f94"

PY_ARG="${1:-.venv/bin/python}"
CACHE_ROOT="${M2S_CACHE:-$HOME/.cache/m2s}"

say() { echo "[install_minkowski] $*"; }

warn_and_exit() {
    # Loud on purpose: a silent fallback would hide that parity tests and benchmarks get skipped.
    {
        echo
        echo "######################################################################"
        echo "# WARNING: MinkowskiEngine ${ME_VERSION} is NOT installed."
        echo "# Reason: $*"
        [ -n "${LOG:-}" ] && echo "# Build log: ${LOG}"
        echo "# m2s will use its pure-PyTorch sparse backend (backend=torch);"
        echo "# tests marked 'minkowski' will be skipped."
        echo "######################################################################"
        echo
    } >&2
    exit 0
}

if [ ! -x "$PY_ARG" ]; then
    warn_and_exit "python interpreter '$PY_ARG' not found or not executable"
fi
# Absolute path without resolving symlinks (resolving would escape the virtualenv).
PY="$(cd "$(dirname "$PY_ARG")" && pwd)/$(basename "$PY_ARG")"
VENV_BIN="$(dirname "$PY")"

# The import check used before and after installing: ME 0.5.4 does `from collections import
# Sequence`, removed in Python 3.10, so alias the names first (m2s.sparse does the same).
me_works() {
    "$PY" - <<'EOF' >/dev/null 2>&1
import collections, collections.abc
for _n in ("Sequence", "Mapping", "MutableMapping", "Iterable", "Callable"):
    if not hasattr(collections, _n):
        setattr(collections, _n, getattr(collections.abc, _n))
import torch
import MinkowskiEngine as ME
assert ME.__version__ == "0.5.4", ME.__version__
coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.int32)
x = ME.SparseTensor(torch.ones(3, 2), coordinates=coords)
conv = ME.MinkowskiConvolution(2, 3, kernel_size=3, dimension=3)
y = conv(x)
y.F.sum().backward()
assert y.F.shape == (3, 3)
EOF
}

if [ "${M2S_ME_FORCE:-0}" != "1" ] && me_works; then
    say "MinkowskiEngine ${ME_VERSION} already installed and working in $PY"
    exit 0
fi

TORCH_VERSION="$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null)" \
    || warn_and_exit "torch is not importable from $PY (install torch first)"
PY_TAG="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
ARCH="$(uname -m)"
KEY="me${ME_VERSION}-torch${TORCH_VERSION//+/_}-${PY_TAG}-${ARCH}-cpu"
WHEEL_DIR="${CACHE_ROOT}/wheels/${KEY}"
LOG_DIR="${CACHE_ROOT}/logs"
mkdir -p "$WHEEL_DIR" "$LOG_DIR" || warn_and_exit "cannot create cache directory ${CACHE_ROOT}"
LOG="${LOG_DIR}/minkowski-${KEY}-$(date +%Y%m%d-%H%M%S).log"

install_wheel() {
    # --no-deps: ME lists torch/numpy as requirements; never let pip swap the venv's torch.
    "$PY" -m pip install --no-deps --force-reinstall "$1" >>"$LOG" 2>&1
}

WHEEL="$(ls "$WHEEL_DIR"/[Mm]inkowski[Ee]ngine-*.whl 2>/dev/null | head -n1 || true)"
if [ "${M2S_ME_FORCE:-0}" != "1" ] && [ -n "$WHEEL" ]; then
    say "using cached wheel $WHEEL"
    if install_wheel "$WHEEL" && me_works; then
        say "MinkowskiEngine ${ME_VERSION} installed from cache"
        exit 0
    fi
    say "cached wheel does not work here; rebuilding"
    rm -f "$WHEEL"
fi

say "building MinkowskiEngine ${ME_VERSION} (CPU-only) for torch ${TORCH_VERSION}, ${PY_TAG}; this takes ~4 min on an idle 2-core machine, up to 15 when busy"
say "log: $LOG"
START=$(date +%s)

# BLAS headers: ME's CPU kernels call cblas. Only touch apt when the header is missing.
if [ -z "$(find /usr/include /usr/local/include -name cblas.h -print -quit 2>/dev/null)" ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        say "installing libopenblas-dev with apt-get"
        { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y libopenblas-dev; } >>"$LOG" 2>&1 \
            || warn_and_exit "apt-get install libopenblas-dev failed"
    else
        warn_and_exit "OpenBLAS headers (cblas.h) missing; install libopenblas-dev (needs root/apt)"
    fi
fi
command -v g++ >/dev/null 2>&1 || warn_and_exit "no C++ compiler (g++) found"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/m2s-me-build.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

SDIST="$TMP/MinkowskiEngine-${ME_VERSION}.tar.gz"
if [ -n "${M2S_ME_SDIST:-}" ]; then
    cp "$M2S_ME_SDIST" "$SDIST" || warn_and_exit "cannot read M2S_ME_SDIST=$M2S_ME_SDIST"
else
    "$PY" - "$SDIST_URL" "$SDIST" >>"$LOG" 2>&1 <<'EOF' || warn_and_exit "could not download $SDIST_URL"
import sys, urllib.request
urllib.request.urlretrieve(sys.argv[1], sys.argv[2])
EOF
fi
echo "${SDIST_SHA256}  ${SDIST}" | sha256sum -c - >>"$LOG" 2>&1 \
    || warn_and_exit "sha256 mismatch for the MinkowskiEngine sdist"
tar -xzf "$SDIST" -C "$TMP" || warn_and_exit "cannot unpack the sdist"
SRC="$TMP/MinkowskiEngine-${ME_VERSION}"

# ninja lets torch's BuildExtension compile sources in parallel; without it the build is serial.
if ! command -v ninja >/dev/null 2>&1 && ! [ -x "$VENV_BIN/ninja" ]; then
    say "installing ninja into the venv for a parallel build"
    "$PY" -m pip install ninja >>"$LOG" 2>&1 || say "ninja unavailable; building serially"
fi
# bdist_wheel lives in setuptools>=70.1 or the `wheel` package.
"$PY" -c 'import setuptools.command.bdist_wheel' 2>/dev/null || "$PY" -c 'import wheel' 2>/dev/null \
    || "$PY" -m pip install wheel >>"$LOG" 2>&1 || warn_and_exit "cannot install the 'wheel' package"

# setup.py runs `rm -rf build` and `pip uninstall MinkowskiEngine -y` in its cwd/PATH: we build in
# the temp copy, with the venv's bin first on PATH so that `pip` is the venv's own.
# --blas=openblas skips setup.py's numpy.distutils BLAS probe (broken with numpy 2 / new setuptools).
(
    cd "$SRC" && \
    PATH="$VENV_BIN:$PATH" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    "$PY" setup.py bdist_wheel --cpu_only --blas=openblas
) >>"$LOG" 2>&1 || warn_and_exit "the MinkowskiEngine build failed (see the log)"

BUILT="$(ls "$SRC"/dist/[Mm]inkowski[Ee]ngine-*.whl 2>/dev/null | head -n1 || true)"
[ -n "$BUILT" ] || warn_and_exit "the build produced no wheel"
cp "$BUILT" "$WHEEL_DIR/" || warn_and_exit "cannot write to $WHEEL_DIR"
WHEEL="$WHEEL_DIR/$(basename "$BUILT")"
END=$(date +%s)
say "built $(basename "$WHEEL") in $((END - START)) s; cached in $WHEEL_DIR"

install_wheel "$WHEEL" || warn_and_exit "pip could not install $WHEEL"
if ! me_works; then
    "$PY" -m pip uninstall -y MinkowskiEngine >>"$LOG" 2>&1
    rm -f "$WHEEL"
    warn_and_exit "MinkowskiEngine built but fails its import/convolution check (see the log)"
fi
say "MinkowskiEngine ${ME_VERSION} installed and verified in $PY"
}

main "$@"
