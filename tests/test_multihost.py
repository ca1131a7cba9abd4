"""Multi-host on one machine: 2 processes x 2 CPU devices under jax.distributed run the trainer
end to end (per-process data shards, global batch assembly, sharded step, collective checkpoint
save and restore) and agree with a single process fed the same global batch."""
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from jepa_jax import checkpoint, data
from jepa_jax.pretrain import experiment

from test_trainer import losses, tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 4


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("synthetic_mh")
  data.ensure_synthetic(str(out), 12, 0)
  return str(out)


@pytest.fixture(scope="module")
def two_process_run(synthetic_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("mh") / "run"
  port = free_port()
  procs = []
  for pid in range(2):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(pid))
    procs.append(subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "multihost_worker.py"), str(workdir), synthetic_dir,
         str(STEPS)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  reports = []
  for proc in procs:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    reports.append(json.loads(next(l for l in out.splitlines() if l.startswith("REPORT "))[7:]))
  return workdir, reports


@pytest.mark.slow
def test_processes_agree_and_checkpoint_is_collective(two_process_run):
  workdir, reports = two_process_run
  assert [r["process"] for r in reports] == [0, 1]
  assert all(r["processes"] == 2 and r["devices"] == 4 and r["step"] == STEPS for r in reports)
  # Replicated values are identical on both processes after a collective restore.
  assert reports[0]["target_checksum"] == reports[1]["target_checksum"]
  assert reports[0]["online_checksum"] == reports[1]["online_checksum"]
  # Each process checkpoints its own data shard position, and its own data-failure account.
  assert reports[0]["data_state"] is not None
  ckpt = workdir / "checkpoints" / str(STEPS) / checkpoint.DATA_FAILURES
  assert sorted(p.name for p in ckpt.glob("*.json")) == ["process_0-of-2.json", "process_1-of-2.json"]
  tried = [data.failures.FailureTracker.from_state(r["data_failures"]).tried for r in reports]
  assert tried[0] and tried[1] and not tried[0] & tried[1]  # disjoint shards, none replaced
  # Only process 0 writes logs and summaries.
  assert len(losses(workdir)) == STEPS
  # The multi-process checkpoint restores in a single process.
  params, step = checkpoint.load_params(str(workdir))
  assert step == STEPS
  total = sum(float(np.asarray(x, np.float64).sum()) for x in jax.tree_util.tree_leaves(params["target"]))
  assert total == pytest.approx(reports[0]["target_checksum"], rel=1e-9)


@pytest.mark.slow
def test_losses_match_single_process_with_same_global_batch(two_process_run, synthetic_dir,
                                                            num_devices):
  if num_devices < 4:
    pytest.skip("needs 4 (simulated) devices")
  workdir, _ = two_process_run
  config = tiny_config(synthetic_dir, steps=STEPS, batch_size=8)
  exp = experiment.build(config, devices=jax.devices()[:4])
  state = exp.init_state(jax.random.PRNGKey(config.seed))
  # The global batch of the 2-process run: process p's local batch fills rows [4p, 4p + 4).
  shards = [iter(data.make_pretrain_dataset(config.data, batch_size=4, seed=config.seed,
                                            shard_index=p, shard_count=2)) for p in range(2)]
  expected = {}
  for step in range(1, STEPS + 1):
    local = [next(it) for it in shards]
    assert not set(local[0]["index"]) & set(local[1]["index"]), "process shards overlap"
    batch = {"video": np.concatenate([b["video"] for b in local])}
    state, metrics = exp.train_step(state, exp.shard_batch(batch),
                                    jax.random.PRNGKey(config.seed + 1))
    expected[step] = float(metrics["loss"])
  got = losses(workdir)
  for step, value in expected.items():
    assert got[step] == pytest.approx(value, rel=1e-5), (step, got, expected)
