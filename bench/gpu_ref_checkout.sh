#!/usr/bin/env bash
# A copy of facebookresearch/jepa's tree in .ref/jepa (git-ignored; the run tool's `carry` takes it
# to the GPU machine) for bench/reference_step.py, with its commit in .ref/jepa/REF_COMMIT (the
# copy has no .git).
#
#   bash bench/gpu_ref_checkout.sh GIT_DIR [REV]   # GIT_DIR: a clone's .git or a bare repository
set -euo pipefail
git_dir=${1:?usage: bench/gpu_ref_checkout.sh GIT_DIR [REV] (a clone of facebookresearch/jepa)}
rev=${2:-HEAD}
cd "$(dirname "$0")/.."
commit=$(git --git-dir="$git_dir" rev-parse --verify "$rev^{commit}")
git --git-dir="$git_dir" cat-file -e "$commit:app/vjepa/utils.py" 2>/dev/null || {
  echo "$git_dir at $commit has no app/vjepa/utils.py: not facebookresearch/jepa" >&2; exit 1; }
rm -rf .ref/jepa
mkdir -p .ref/jepa
git --git-dir="$git_dir" archive "$commit" | tar -x -C .ref/jepa
echo "$commit" >.ref/jepa/REF_COMMIT
echo ".ref/jepa: $commit, $(du -sb .ref/jepa | cut -f1) B"
