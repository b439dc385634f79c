#!/usr/bin/env bash
# Wheels for the accelerator machine, which has no network (see bench/device_suite.py).
#
#   bash bench/wheels.sh            # fills .whl/ (git-ignored) for CPython 3.12 on x86-64 Linux
#
# Its image already has jax (CUDA), flax, optax, orbax-checkpoint, torch, transformers, scipy, einops,
# torchdiffeq, h5py; what sa-jax and the suite's references need beside that is listed here, each
# with --no-deps so nothing the image has is replaced. On the machine, before the suite:
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site python3 bench/device_suite.py --out "$OUT/suite.json"
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
mkdir -p "$DEST"
PY=${PYTHON:-python3}
# sa-jax's own dependencies missing there, then the references the suite compares against.
PACKAGES=(
  grain array-record dm-tree portpicker soundfile cffi pycparser soxr librosa audioread pooch platformdirs
  decorator tensorboardX importlib-metadata
  "diffusers==0.42.1" "stable-audio-tools==0.0.19" "k-diffusion==0.1.1.post1" torchsde trampoline einops-exts
)
for pkg in "${PACKAGES[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$DEST" "$pkg"
done
du -sh "$DEST"
