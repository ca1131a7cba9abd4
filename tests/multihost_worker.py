"""One process of the multi-process test (tests/test_multihost.py); not a test module itself.

Runs the real trainer under ``jax.distributed`` (CPU devices, gloo collectives), then restores the
final checkpoint collectively onto the multi-process mesh and prints, as JSON, checksums of the
local copies of replicated parameters so the test can compare processes.
"""
import json
import os
import sys


def main():
  workdir, synthetic_dir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
  sys.path.insert(0, os.path.dirname(__file__))
  from jepa_jax import distributed
  distributed.initialize(distributed.detect())
  import jax
  import numpy as np
  from jepa_jax import checkpoint
  from jepa_jax.pretrain import experiment, trainer  # noqa: PLC0415
  from test_trainer import tiny_config

  config = tiny_config(synthetic_dir, steps=steps, batch_size=8)
  config.checkpoint.every = 2
  trainer.train(config, workdir)

  exp = experiment.build(config)
  manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), read_only=True)
  step = manager.latest_step()
  state, data_state = checkpoint.restore_train_state(
      manager, step, exp.sharded_abstract_state)
  local = lambda x: float(np.asarray(x.addressable_shards[0].data, np.float64).sum())
  report = {
      "process": jax.process_index(), "processes": jax.process_count(),
      "devices": jax.device_count(), "step": step, "data_state": data_state,
      "data_failures": checkpoint.read_per_process(manager, step, checkpoint.DATA_FAILURES)[0],
      "target_checksum": sum(local(x) for x in jax.tree_util.tree_leaves(state.target_params)),
      "online_checksum": sum(local(x) for x in jax.tree_util.tree_leaves(state.params)),
  }
  print("REPORT " + json.dumps(report), flush=True)


if __name__ == "__main__":
  main()
