#!/usr/bin/env bash
# Wheels for what bench/gpu_suite.sh needs and the GPU machine's image lacks, into .whl/
# (git-ignored; the run tool's `carry` takes it there). Run here, where pip reaches a registry.
#
# The image has jax/jaxlib 0.11.2 with the CUDA 13 plugin, flax, optax, absl-py, PyYAML, numpy,
# einops, torch (/work/.library/device/KINDS.md's package list). The benchmark path imports
# jepa_jax.{config,defaults,experiment,flops,masks,models,...} and, for the reference,
# facebookresearch/jepa's models and collator (torch, PyYAML, numpy): of all that only
# ml_collections is missing (it needs absl-py and PyYAML, both there). grain, PyAV, orbax, clu
# and TensorFlow are not imported on that path (tests/test_bench.py checks it).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(ml_collections==1.1.0)
LIMIT=$((64 * 1024 * 1024))  # what one run call carries: working tree + carried paths

rm -rf .whl
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl "${WHEELS[@]}"

bytes() { du -sb "$@" 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
whl=$(bytes .whl)
ref=$(bytes .ref)
# What travels besides the carried folders: tracked files and untracked ones git does not ignore.
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null \
  | awk '$2 == "total" {s += $1} END {print s + 0}')
total=$((whl + ref + tree))
ls -l .whl
echo "wheels ${whl} B, .ref ${ref} B, working tree ${tree} B: ${total} of ${LIMIT} B"
if [ "$total" -gt "$LIMIT" ]; then
  echo "over the 64 MiB a run call carries: drop wheels from WHEELS or files from the tree" >&2
  exit 1
fi
