#!/usr/bin/env bash
# The prepared one-GPU run (issue 23): install the wheels carried in .whl/, then bench/gpu_suite.py,
# which writes $OUT/gpu_suite.json and $OUT/gpu_suite.log and stops itself within 7.5 minutes.
#
#   on the lent GPU machine (BENCHMARKS.md "GPU suite" gives the run tool's call):
#     bash bench/gpu_suite.sh
#   here, on a CPU, every code path on tiny shapes:
#     GPU_SUITE_DRY_RUN=1 OUT=/tmp/gpu_suite bash bench/gpu_suite.sh
#
# Before the GPU call, here: bash bench/gpu_wheels.sh (.whl/) and
# bash bench/gpu_ref_checkout.sh <bare git dir of facebookresearch/jepa> (.ref/jepa).
set -uo pipefail
# The time guard counts from here, so the install is inside the budget.
GPU_SUITE_T0=${GPU_SUITE_T0:-$(date +%s)}
export GPU_SUITE_T0
cd "$(dirname "$0")/.." || exit 1
: "${OUT:?set OUT to the folder for gpu_suite.json (the run tool sets it on the GPU machine)}"
mkdir -p "$OUT"
PY=${GPU_SUITE_PYTHON:-python3}
SITE=${GPU_SUITE_SITE:-/tmp/site}
log=$OUT/gpu_suite.log
: >"$log"

shopt -s nullglob
wheels=(.whl/*.whl)
if [ "${GPU_SUITE_DRY_RUN:-0}" = 1 ]; then
  GPU_SUITE_WHEELS="not installed (dry run)"
elif [ ${#wheels[@]} -eq 0 ]; then
  GPU_SUITE_WHEELS="none carried"
elif "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "${wheels[@]}" >>"$log" 2>&1; then
  GPU_SUITE_WHEELS="installed: ${wheels[*]##*/}"
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
else
  # The cases still run: the JSON then records which import failed.
  GPU_SUITE_WHEELS="install failed (see gpu_suite.log): ${wheels[*]##*/}"
fi
export GPU_SUITE_WHEELS
echo "[gpu_suite] wheels: $GPU_SUITE_WHEELS"

exec "$PY" bench/gpu_suite.py --out="$OUT" "$@"
