#!/usr/bin/env bash
# Pretrain jepa_jax on several GPU nodes with SLURM. See launch/README.md for a walk-through.
#
#   launch/slurm_gpu.sh [--dry-run] --workdir DIR [options]
#
# Run on a login node: submits itself with sbatch. Inside the allocation it starts one process per
# GPU (default) or one per node with `srun`, each running `python -m jepa_jax.main`; the processes
# find each other through jax.distributed (coordinator = the first node of the job step).
#
# Options:
#   --nodes N              nodes (default: 2)
#   --gpus-per-node G      GPUs per node (default: 8)
#   --procs per-gpu|per-node
#                          one process per GPU (JAX gives each the GPU SLURM_LOCALID), or one per
#                          node driving all G GPUs (JAX_LOCAL_DEVICE_IDS=0..G-1) (default: per-gpu)
#   --cpus-per-gpu C       CPU cores per GPU for decoding video (default: 12)
#   --partition P, --account A, --qos Q, --time HH:MM:SS   passed to sbatch when given
#   --config FILE          experiment config (default: configs/vitl16.py)
#   --workdir DIR          checkpoints/logs, on a file system every node sees (required)
#   --override K=V         a config override passed as --config.K=V (repeatable)
#   --python PATH          the interpreter with jepa_jax installed (default: python3 on PATH)
#   --port PORT            coordinator port (default: 12000 + SLURM_JOB_ID % 20000)
#   --dry-run              print the sbatch command, and the srun command the job would run
#
# Preemption and time limits: the job asks SLURM for SIGTERM 120 s before its end (--signal) and
# is --requeue-able. On SIGTERM every process saves a checkpoint at the next step and exits with
# status 75; the batch script then requeues the job, which resumes from that checkpoint.
set -euo pipefail

NODES=2
GPUS_PER_NODE=8
PROCS=per-gpu
CPUS_PER_GPU=12
PARTITION=""
ACCOUNT=""
QOS=""
TIME=""
CONFIG="configs/vitl16.py"
WORKDIR=""
OVERRIDES=()
PYTHON="python3"
PORT=""
DRY_RUN=0
EXIT_PREEMPTED=75  # jepa_jax.main.EXIT_PREEMPTED
SCRIPT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
REPO_ROOT="$(cd "$(dirname "$SCRIPT")/.." && pwd)"
ARGS=()  # what the job re-runs this script with: the options, less --dry-run
for arg in "$@"; do [ "$arg" = --dry-run ] || ARGS+=("$arg"); done

usage() { sed -n '2,/^set -euo/p' "$SCRIPT" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "slurm_gpu.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --nodes) NODES="$2"; shift ;;
    --gpus-per-node) GPUS_PER_NODE="$2"; shift ;;
    --procs) PROCS="$2"; shift ;;
    --cpus-per-gpu) CPUS_PER_GPU="$2"; shift ;;
    --partition) PARTITION="$2"; shift ;;
    --account) ACCOUNT="$2"; shift ;;
    --qos) QOS="$2"; shift ;;
    --time) TIME="$2"; shift ;;
    --config) CONFIG="$2"; shift ;;
    --workdir) WORKDIR="$2"; shift ;;
    --override) OVERRIDES+=("--config.$2"); shift ;;
    --python) PYTHON="$2"; shift ;;
    --port) PORT="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
[ -n "$WORKDIR" ] || die "--workdir is required (a directory on storage every node can read and write)"
case "$PROCS" in
  per-gpu) TASKS_PER_NODE="$GPUS_PER_NODE"; CPUS_PER_TASK="$CPUS_PER_GPU" ;;
  per-node) TASKS_PER_NODE=1; CPUS_PER_TASK=$((CPUS_PER_GPU * GPUS_PER_NODE)) ;;
  *) die "--procs must be per-gpu or per-node, got '$PROCS'" ;;
esac

show() { printf '+'; printf ' %q' "$@"; printf '\n'; }

submit() {
  local cmd=(sbatch --job-name=jepa_jax --nodes="$NODES" --ntasks-per-node="$TASKS_PER_NODE"
             --gpus-per-node="$GPUS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK" --exclusive
             --requeue --signal=TERM@120 --open-mode=append
             --output="$WORKDIR/slurm-%j.out")
  if [ -n "$PARTITION" ]; then cmd+=(--partition="$PARTITION"); fi
  if [ -n "$ACCOUNT" ]; then cmd+=(--account="$ACCOUNT"); fi
  if [ -n "$QOS" ]; then cmd+=(--qos="$QOS"); fi
  if [ -n "$TIME" ]; then cmd+=(--time="$TIME"); fi
  cmd+=("$SCRIPT" "${ARGS[@]}")
  show "${cmd[@]}"
  if [ "$DRY_RUN" -eq 0 ]; then
    mkdir -p "$WORKDIR"
    "${cmd[@]}"
  fi
}

# The command one task runs. Single-quoted variables are expanded by each task's shell, where
# srun has set SLURM_PROCID.
task_command() {
  local coordinator="$1"
  local env=(JAX_COORDINATOR_ADDRESS="$coordinator" JAX_NUM_PROCESSES="$((NODES * TASKS_PER_NODE))")
  if [ "$PROCS" = per-node ]; then
    env+=(JAX_LOCAL_DEVICE_IDS="$(seq -s, 0 $((GPUS_PER_NODE - 1)))")
  fi
  # Keep XLA from grabbing 75% of GPU memory in each of several processes per node before the
  # first step; the train step's own buffers are what should fill the GPU.
  env+=(XLA_PYTHON_CLIENT_PREALLOCATE=false)
  printf '%s' "cd $(printf '%q' "$REPO_ROOT") && JAX_PROCESS_ID=\$SLURM_PROCID$(printf ' %q' "${env[@]}") exec $(printf '%q' "$PYTHON") -m jepa_jax.main --config=$(printf '%q' "$CONFIG")$(if [ "${#OVERRIDES[@]}" -gt 0 ]; then printf ' %q' "${OVERRIDES[@]}"; fi) --workdir=$(printf '%q' "$WORKDIR")"
}

in_job() {
  local first_node port
  if [ "$DRY_RUN" -eq 1 ] && [ -z "${SLURM_JOB_NODELIST:-}" ]; then
    first_node="NODE0"; port="${PORT:-12000}"
  else
    # Not `| head -n 1`: under pipefail, scontrol dying of SIGPIPE on a long node list would
    # end the script.
    local hosts
    hosts="$(scontrol show hostnames "$SLURM_JOB_NODELIST")"
    first_node="${hosts%%$'\n'*}"
    port="${PORT:-$((12000 + SLURM_JOB_ID % 20000))}"
  fi
  local cmd=(srun --kill-on-bad-exit=1 --nodes="$NODES" --ntasks-per-node="$TASKS_PER_NODE"
             --cpus-per-task="$CPUS_PER_TASK" bash -c "$(task_command "$first_node:$port")")
  show "${cmd[@]}"
  if [ "$DRY_RUN" -eq 1 ]; then return; fi
  local rc=0
  "${cmd[@]}" || rc=$?
  if [ "$rc" -eq "$EXIT_PREEMPTED" ]; then
    echo "preempted: checkpoint saved; requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  exit "$rc"
}

if [ -n "${SLURM_JOB_ID:-}" ] || [ "$DRY_RUN" -eq 1 ]; then
  if [ -z "${SLURM_JOB_ID:-}" ]; then submit; echo "# inside the job:"; fi
  in_job
else
  submit
fi
