"""Multi-process start-up: ``jax.distributed.initialize`` when running on more than one process.

Detection, in order: ``--coordinator_address`` / ``--num_processes`` / ``--process_id``; the
``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` variables; a SLURM step
with several tasks; a Cloud TPU VM with several workers (``TPU_WORKER_HOSTNAMES``, or
``MEGASCALE_COORDINATOR_ADDRESS``), where JAX finds the coordinator itself. One process: nothing.
Local devices are passed explicitly when known (``--local_device_ids`` / ``JAX_LOCAL_DEVICE_IDS``,
or all ``SLURM_GPUS_ON_NODE`` GPUs for a one-task-per-node step): under SLURM JAX otherwise gives
each process only GPU ``SLURM_LOCALID``, one of eight for ``launch/slurm_gpu.sh --procs=per-node``.
"""
import logging
import os

from absl import flags

from jepa_jax.errors import ConfigError

log = logging.getLogger(__name__)


def define_flags():
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
  flags.DEFINE_integer("num_processes", None, "Total number of processes.")
  flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
  flags.DEFINE_list("local_device_ids", None, "GPUs this process drives (default: all visible; "
                    "under SLURM with one task per GPU, JAX picks SLURM_LOCALID).")


def _local_device_ids(local_device_ids, env):
  ids = local_device_ids if local_device_ids is not None else env.get("JAX_LOCAL_DEVICE_IDS")
  if isinstance(ids, str):
    ids = [s for s in ids.split(",") if s.strip()]
  if ids:
    return [int(i) for i in ids]
  tasks_here = env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_STEP_TASKS_PER_NODE", "")
  gpus = env.get("SLURM_GPUS_ON_NODE")
  if "SLURM_NTASKS" in env and tasks_here.split("(")[0] == "1" and gpus and int(gpus) > 1:
    return list(range(int(gpus)))
  return None


def detect(coordinator_address=None, num_processes=None, process_id=None, environ=None,
           local_device_ids=None):
  """The ``jax.distributed.initialize`` kwargs for this process, or None for a single process."""
  env = os.environ if environ is None else environ
  kwargs = _detect(coordinator_address, num_processes, process_id, env)
  if kwargs is not None:
    ids = _local_device_ids(local_device_ids, env)
    if ids is not None:
      kwargs["local_device_ids"] = ids
  return kwargs


def _detect(coordinator_address, num_processes, process_id, env):
  address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
  count = num_processes if num_processes is not None else env.get("JAX_NUM_PROCESSES")
  pid = process_id if process_id is not None else env.get("JAX_PROCESS_ID")
  if address or count is not None:
    if not (address and count is not None and pid is not None):
      raise ConfigError("multi-process run: give all of coordinator_address, num_processes and "
                        "process_id (flags or JAX_* variables)")
    if int(count) <= 1:
      return None
    return {"coordinator_address": address, "num_processes": int(count), "process_id": int(pid)}
  if int(env.get("SLURM_NTASKS", "1")) > 1:
    return {}  # JAX's SLURM cluster detection fills everything in
  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
  if len(hosts) > 1 or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return {}  # JAX's Cloud TPU detection
  return None


def initialize(kwargs) -> bool:
  if kwargs is None:
    return False
  import jax
  # Cross-process collectives of the CPU client (tests, CPU clusters); no effect on TPU/GPU.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
  log.info("jax.distributed: process %d of %d, %d local / %d global devices",
           jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def initialize_from_flags() -> bool:
  f = flags.FLAGS
  return initialize(detect(f.coordinator_address, f.num_processes, f.process_id,
                           local_device_ids=f.local_device_ids))
