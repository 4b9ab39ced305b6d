#!/usr/bin/env bash
# Download the wheels `make gpu-check` needs on the lent GPU machine, which has no network.
#
#   bash scripts/gpu_wheels.sh [DIR]        # DIR defaults to .whl (gitignored: carry it, never commit it)
#
# That machine's image (see docs/gpu.md) is Python 3.12 with torch 2.11+cu130, numpy, h5py,
# typer, rich, pyyaml, scipy, safetensors, matplotlib, pytest, pybind11, ninja, requests, sympy
# and portalocker already installed. Missing there, and so fetched here, for CPython 3.12 on
# manylinux x86-64 (one version of each, pinned):
#   - pydantic and its runtime dependencies (m2s imports pydantic everywhere);
#   - spconv and cumm for CUDA 12.6 (the newest CUDA build on PyPI; the machine's 580 driver runs
#     CUDA 12 code) with the pure-Python packages they import: pccm, ccimport, fire, termcolor, lark.
# The two CUDA wheels are ~95 MiB as PyPI ships them (deflate), more than the 64 MiB a device call
# may carry; re-packed uncompressed and then xz-compressed they are ~40 MiB, so every wheel over
# 4 MiB is stored as NAME.whl.xz. benchmarks/gpu_check.py --wheels DIR decompresses those and
# installs DIR/requirements.txt with `pip install --no-index --find-links`.
set -euo pipefail

DIR=${1:-.whl}
PYTHON=${PYTHON:-python3}
PY_VERSION=${GPU_PY_VERSION:-3.12}
SPCONV_CUDA=${SPCONV_CUDA:-cu126}
LIMIT_MIB=${LIMIT_MIB:-60}  # the device call carries 64 MiB in all, the repository included

# Pinned versions: pydantic's as in the CI virtualenv; spconv 2.3.8 as `make setup` installs.
TOP=(
  "spconv-${SPCONV_CUDA}==2.3.8"
  "pydantic==2.14.4"
)
WHEELS=(
  "${TOP[@]}"
  "cumm-${SPCONV_CUDA}==0.7.11"
  "pccm==0.4.16"
  "ccimport==0.4.4"
  "fire==0.7.1"
  "termcolor==3.3.0"
  "lark==1.3.1"
  "pydantic-core==2.50.5"
  "annotated-types==0.8.0"
  "typing-inspection==0.4.5"
  "typing-extensions==4.16.0"  # pydantic 2.14 needs >= 4.16; the image's may be older
)

mkdir -p "$DIR"
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
"$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  "${PLATFORMS[@]}" -d "$DIR" "${WHEELS[@]}"

printf '%s\n' "# Installed by benchmarks/gpu_check.py --wheels (pip install --no-index --find-links)." "${TOP[@]}" \
  > "$DIR/requirements.txt"

# Large wheels: stored (uncompressed) zip, then xz. A wheel's RECORD hashes the files, not their
# compression, so the decompressed file is still a valid wheel.
"$PYTHON" - "$DIR" <<'EOF'
import lzma, os, shutil, subprocess, sys, tempfile, zipfile
from pathlib import Path

folder = Path(sys.argv[1])
for whl in sorted(folder.glob("*.whl")):
    if whl.stat().st_size <= 4 * 2**20:
        continue
    out = whl.with_name(whl.name + ".xz")
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        stored = Path(tmp) / whl.name
        with zipfile.ZipFile(whl) as src, zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as dst:
            for info in src.infolist():
                data = src.read(info)  # before the compression type on `info` changes
                info.compress_type = zipfile.ZIP_STORED
                dst.writestr(info, data)
        part = Path(tmp) / out.name
        if shutil.which("xz"):
            with open(part, "wb") as fh:
                subprocess.run(["xz", "-6", "-T0", "-c", str(stored)], stdout=fh, check=True)
        else:
            with open(stored, "rb") as src_fh, lzma.open(part, "wb", preset=6) as dst_fh:
                shutil.copyfileobj(src_fh, dst_fh, 2**24)
        os.replace(part, out)
    whl.unlink()
    print(f"{whl.name}: {whl.name}.xz")
EOF

total=$(du -cb "$DIR" | tail -1 | cut -f1)
ls -l "$DIR"
echo "total: $((total / 1048576)) MiB in $DIR"
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "error: $DIR is over ${LIMIT_MIB} MiB; a device call carries 64 MiB in all" >&2
  exit 1
fi
