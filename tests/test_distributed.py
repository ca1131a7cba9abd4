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
