"""How a process decides whether and how to call jax.distributed.initialize."""
import pytest

from jepa_jax import distributed


def test_single_process_initialises_nothing():
  assert distributed.detect(environ={}) is None
  assert distributed.detect(environ={"SLURM_NTASKS": "1"}) is None
  assert distributed.detect(environ={"TPU_WORKER_HOSTNAMES": "w0"}) is None


def test_explicit_flags_and_variables():
  assert distributed.detect("h:1234", 4, 2, environ={}) == {
      "coordinator_address": "h:1234", "num_processes": 4, "process_id": 2}
  env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
  assert distributed.detect(environ=env) == {"coordinator_address": "h:1", "num_processes": 2,
                                             "process_id": 1}
  assert distributed.detect("h:1", 1, 0, environ={}) is None  # one process: nothing to do
  with pytest.raises(ValueError, match="process_id"):
    distributed.detect("h:1", 2, None, environ={})


def test_cluster_auto_detection():
  assert distributed.detect(environ={"SLURM_NTASKS": "16"}) == {}
  assert distributed.detect(environ={"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}) == {}
  assert distributed.detect(environ={"MEGASCALE_COORDINATOR_ADDRESS": "c:8080"}) == {}


def test_local_device_ids_from_flag_variable_or_one_slurm_task_per_node():
  env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}
  assert "local_device_ids" not in distributed.detect(environ=env)
  assert distributed.detect(environ={**env, "JAX_LOCAL_DEVICE_IDS": "0,1,2,3"})[
      "local_device_ids"] == [0, 1, 2, 3]
  assert distributed.detect(environ=env, local_device_ids=["2", "3"])["local_device_ids"] == [2, 3]
  # One task per node with 8 GPUs: all 8, not JAX's SLURM default of [SLURM_LOCALID].
  slurm = {"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "1", "SLURM_GPUS_ON_NODE": "8"}
  assert distributed.detect(environ=slurm) == {"local_device_ids": list(range(8))}
  slurm_step = {"SLURM_NTASKS": "4", "SLURM_STEP_TASKS_PER_NODE": "1(x4)",
                "SLURM_GPUS_ON_NODE": "8"}
  assert distributed.detect(environ=slurm_step) == {"local_device_ids": list(range(8))}
  # One task per GPU: leave it to JAX (device SLURM_LOCALID).
  per_gpu = {"SLURM_NTASKS": "32", "SLURM_NTASKS_PER_NODE": "8", "SLURM_GPUS_ON_NODE": "8"}
  assert distributed.detect(environ=per_gpu) == {}
