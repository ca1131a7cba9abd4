#!/usr/bin/env bash
# Pretrain jepa_jax on a Cloud TPU VM slice. See launch/README.md for a walk-through.
#
#   launch/tpu_pod.sh [--dry-run] COMMAND [options]
#
# Commands (each acts on the slice --name in --zone):
#   create   create the slice (on-demand; --spot for spot VMs; --queued for a queued resource)
#   setup    copy this checkout (git archive of HEAD) to every worker, make a venv, install
#            jepa_jax and jax[tpu] (run again after changing the code)
#   train    start `python -m jepa_jax.main` on all workers in the background (nohup); the run
#            resumes from the latest checkpoint in --workdir by itself
#   logs     stream worker 0's log (only process 0 logs)
#   status   the slice's state (READY, PREEMPTED, ...) and the queued resource's, if any
#   watch    loop: whenever the slice is gone or PREEMPTED, delete it, create it again, setup and
#            train (which resumes from the latest checkpoint); for spot and queued slices
#   delete   delete the slice (and its queued resource)
#   up       create + setup + train
#
# Options (environment variable in brackets):
#   --name NAME            slice name [TPU_NAME] (default: jepa-jax)
#   --zone ZONE            [TPU_ZONE] (default: us-central2-b)
#   --project PROJECT      [TPU_PROJECT] (default: gcloud's configured project)
#   --accelerator TYPE     e.g. v4-64, v5p-128, v5litepod-256 [TPU_ACCELERATOR] (default: v4-64)
#   --version VERSION      TPU software version [TPU_VERSION] (default by generation:
#                          v4 tpu-ubuntu2204-base, v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5,
#                          v6e v2-alpha-tpuv6e)
#   --config FILE          experiment config, relative to the repository (default: configs/vitl16.py)
#   --workdir gs://...     checkpoints, logs, TensorBoard (required for train/up/watch) [WORKDIR]
#   --override K=V         a config override passed as --config.K=V (repeatable)
#   --spot                 spot VMs (preemptible; use with watch)
#   --queued               create through a queued resource (waits for capacity)
#   --poll SECONDS         watch's polling interval (default: 300)
#   --dry-run              print the commands instead of running them (no gcloud needed)
set -euo pipefail

NAME="${TPU_NAME:-jepa-jax}"
ZONE="${TPU_ZONE:-us-central2-b}"
PROJECT="${TPU_PROJECT:-}"
ACCELERATOR="${TPU_ACCELERATOR:-v4-64}"
VERSION="${TPU_VERSION:-}"
CONFIG="configs/vitl16.py"
WORKDIR="${WORKDIR:-}"
OVERRIDES=()
SPOT=0
QUEUED=0
POLL=300
DRY_RUN=0
COMMAND=""
REMOTE_DIR="jepa_jax"  # on each worker, relative to $HOME
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "tpu_pod.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --name) NAME="$2"; shift ;;
    --zone) ZONE="$2"; shift ;;
    --project) PROJECT="$2"; shift ;;
    --accelerator) ACCELERATOR="$2"; shift ;;
    --version) VERSION="$2"; shift ;;
    --config) CONFIG="$2"; shift ;;
    --workdir) WORKDIR="$2"; shift ;;
    --override) OVERRIDES+=("--config.$2"); shift ;;
    --spot) SPOT=1 ;;
    --queued) QUEUED=1 ;;
    --poll) POLL="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    create|setup|train|logs|status|watch|delete|up)
      [ -z "$COMMAND" ] || die "one command at a time (got $COMMAND and $1)"
      COMMAND="$1" ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
[ -n "$COMMAND" ] || { usage; die "no command given"; }
if [ -z "$VERSION" ]; then
  case "$ACCELERATOR" in
    v4-*) VERSION=tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    *) die "no default software version for --accelerator=$ACCELERATOR; pass --version" ;;
  esac
fi

# Prints the command, then runs it unless --dry-run.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if [ "$DRY_RUN" -eq 0 ]; then "$@"; fi
}

GCLOUD=(gcloud compute tpus)
LOCATION=(--zone="$ZONE")
if [ -n "$PROJECT" ]; then LOCATION+=(--project="$PROJECT"); fi

need_workdir() {
  [ -n "$WORKDIR" ] || die "--workdir is required for '$COMMAND' (a gs:// bucket path every worker can write)"
  case "$WORKDIR" in
    gs://*) ;;
    *) die "--workdir=$WORKDIR: a multi-host run needs storage shared by all workers; use gs://BUCKET/PATH" ;;
  esac
}

on_workers() {  # on_workers WORKER COMMAND_STRING
  run "${GCLOUD[@]}" tpu-vm ssh "$NAME" "${LOCATION[@]}" --worker="$1" --command="$2"
}

create() {
  local spot=()
  if [ "$SPOT" -eq 1 ]; then spot=(--spot); fi
  if [ "$QUEUED" -eq 1 ]; then
    run "${GCLOUD[@]}" queued-resources create "$NAME-qr" "${LOCATION[@]}" --node-id="$NAME" \
      --accelerator-type="$ACCELERATOR" --runtime-version="$VERSION" "${spot[@]}"
    # A queued resource becomes ACTIVE when its slice is READY; wait for that before setup.
    if [ "$DRY_RUN" -eq 0 ]; then
      local state
      while state="$(queued_state)" && [ "$state" != "ACTIVE" ]; do
        case "$state" in
          FAILED|SUSPENDED) die "queued resource $NAME-qr is $state; see gcloud compute tpus queued-resources describe $NAME-qr" ;;
        esac
        echo "waiting for queued resource $NAME-qr ($state)..."; sleep 60
      done
    fi
  else
    run "${GCLOUD[@]}" tpu-vm create "$NAME" "${LOCATION[@]}" \
      --accelerator-type="$ACCELERATOR" --version="$VERSION" "${spot[@]}"
  fi
}

setup() {
  # The exact committed code, not whatever the workers' network can reach.
  local archive
  archive="$(mktemp -d)/jepa_jax.tar.gz"
  run git -C "$REPO_ROOT" archive --format=tar.gz -o "$archive" HEAD
  run "${GCLOUD[@]}" tpu-vm scp "$archive" "$NAME:jepa_jax.tar.gz" "${LOCATION[@]}" --worker=all
  on_workers all "set -e; rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR && tar -xzf ~/jepa_jax.tar.gz -C ~/$REMOTE_DIR && cd ~/$REMOTE_DIR && python3 -m venv ~/jepa_venv && ~/jepa_venv/bin/pip install -q --upgrade pip && ~/jepa_venv/bin/pip install -q -e . 'jax[tpu]' gcsfs"
}

train_command() {
  local overrides=""
  if [ "${#OVERRIDES[@]}" -gt 0 ]; then overrides="$(printf ' %q' "${OVERRIDES[@]}")"; fi
  # Every worker runs the same command; jax.distributed finds its peers from the TPU metadata.
  # TPU_STDERR_LOG_LEVEL quiets libtpu; the log lands in ~/jepa_train.log on each worker.
  printf '%s' "cd ~/$REMOTE_DIR && TPU_STDERR_LOG_LEVEL=2 nohup ~/jepa_venv/bin/python -m jepa_jax.main --config=$(printf '%q' "$CONFIG")$overrides --workdir=$(printf '%q' "$WORKDIR") > ~/jepa_train.log 2>&1 < /dev/null &"
}

train() {
  need_workdir
  on_workers all "$(train_command)"
  echo "started; stream the log with: launch/tpu_pod.sh logs --name $NAME --zone $ZONE"
}

node_state() {
  "${GCLOUD[@]}" tpu-vm describe "$NAME" "${LOCATION[@]}" --format='value(state)' 2>/dev/null || echo "NOT_FOUND"
}

queued_state() {
  "${GCLOUD[@]}" queued-resources describe "$NAME-qr" "${LOCATION[@]}" --format='value(state.state)' 2>/dev/null || echo "NOT_FOUND"
}

delete() {
  if [ "$QUEUED" -eq 1 ]; then
    run "${GCLOUD[@]}" queued-resources delete "$NAME-qr" "${LOCATION[@]}" --force --quiet
  else
    run "${GCLOUD[@]}" tpu-vm delete "$NAME" "${LOCATION[@]}" --quiet
  fi
}

recover() {  # a preempted or vanished slice: start over; the run resumes from its checkpoint
  delete || true
  create
  setup
  train
}

watch() {
  need_workdir
  if [ "$DRY_RUN" -eq 1 ]; then
    echo "# every ${POLL}s: if the slice is not READY (PREEMPTED, TERMINATED, NOT_FOUND):"
    recover
    return
  fi
  while true; do
    local state
    state="$(node_state)"
    case "$state" in
      READY|CREATING|STARTING|RESTARTING|REPAIRING) ;;
      *) echo "$(date -u +%FT%TZ) slice $NAME is $state: recreating and resuming"; recover ;;
    esac
    sleep "$POLL"
  done
}

case "$COMMAND" in
  create) create ;;
  setup) setup ;;
  train) train ;;
  logs) on_workers 0 "tail -n 100 -F ~/jepa_train.log" ;;
  status)
    if [ "$DRY_RUN" -eq 1 ]; then
      run "${GCLOUD[@]}" tpu-vm describe "$NAME" "${LOCATION[@]}" --format='value(state)'
    else
      echo "slice $NAME: $(node_state)"
      if [ "$QUEUED" -eq 1 ]; then echo "queued resource $NAME-qr: $(queued_state)"; fi
    fi ;;
  watch) watch ;;
  delete) delete ;;
  up) need_workdir; create; setup; train ;;
esac
