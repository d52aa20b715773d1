#!/usr/bin/env bash
# Download into wheels/ (git-ignored) the Python packages that scripts/gpu-check.sh installs on the
# GPU machine: Python 3.12 with torch, transformers, pyarrow, opencv, pillow, fsspec,
# huggingface-hub, safetensors, matplotlib and pytest, but no diffusers, spandrel, ray or s3fs, and
# no network. Only pure-Python wheels are needed; ray is never carried (its wheel is larger than
# the 64 MiB that can travel) and neither tests/gpu nor `python -m bench gpu` imports it.
#
#   scripts/prepare-gpu-wheels.sh [DEST]      (or: make gpu-wheels)
#
# Versions come from constraints.txt where it pins them, else from DEFAULT_PINS below.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=${1:-wheels}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
# What the GPU machine lacks that the GPU tests and `bench gpu --quick` import. A GPU workload
# that needs another package adds it here (pure Python, or a cp312 manylinux x86_64 wheel).
PACKAGES=(diffusers spandrel)
declare -A DEFAULT_PINS=([diffusers]=0.42.1 [spandrel]=0.4.2)
MAX_MIB=40 # the working tree and the carried wheels travel together, 64 MiB at most

specs=()
for name in "${PACKAGES[@]}"; do
  pinned=$(grep -i "^${name}==" constraints.txt 2>/dev/null | head -1 || true)
  specs+=("${pinned:-${name}==${DEFAULT_PINS[$name]}}")
done

mkdir -p "$DEST"
rm -f "$DEST"/*.whl # one version of each: two would stop the install there
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DEST" "${specs[@]}"

total=0
for f in "$DEST"/*.whl; do
  size=$(stat -c %s "$f")
  total=$((total + size))
  awk -v b="$size" -v n="$(basename "$f")" 'BEGIN { printf "%8.1f MiB  %s\n", b / 1048576, n }'
done
awk -v b="$total" -v d="$DEST" -v s="${specs[*]}" \
  'BEGIN { printf "%8.1f MiB  total in %s (%s)\n", b / 1048576, d, s }'
if [ "$total" -gt $((MAX_MIB * 1048576)) ]; then
  echo "error: the wheels take more than ${MAX_MIB} MiB; with the working tree they must stay" \
    "under the 64 MiB that travels to the GPU machine. Drop a package from PACKAGES." >&2
  exit 1
fi
