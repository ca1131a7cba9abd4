"""Frozen evaluation: ``python -m jepa_jax.eval --config=configs/eval/k400.py --workdir=DIR``.

Any config field can be overridden on the command line, e.g.
``--config.checkpoint=/runs/vitl16 --config.checkpoint_key=online --config.epochs=5``.
Writes ``DIR/results.json``, TensorBoard summaries under ``DIR/tb/`` and the trained probes under
``DIR/probes/``. Several processes: as for pretraining (``jepa_jax.distributed`` flags).
"""
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from jepa_jax import distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "Eval config file (configs/eval/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where results.json, probes and summaries go.")
distributed.define_flags()


def main(argv):
  del argv
  distributed.initialize_from_flags()
  from jepa_jax import checkpoint as ckpt_lib  # after jax.distributed: they touch the backend
  from jepa_jax.eval import run
  config = _CONFIG.value
  workdir = _WORKDIR.value
  if not workdir:
    sys.exit("Config error: --workdir is required (where results.json and the probes go)")
  try:
    results = run.evaluate(config, os.path.expanduser(workdir))
  except (ValueError, ckpt_lib.CheckpointError, FileNotFoundError) as e:
    sys.exit(f"Error: {e}")
  acc = results["accuracy"]
  print(f"{results['task']}: top-1 {acc['top1']:.2f} +- {acc['top1_std']:.2f}  "
        f"top-5 {acc['top5']:.2f}  ({results['num_val_examples']} val examples; "
        f"{os.path.join(workdir, 'results.json')})")


if __name__ == "__main__":
  logging.getLogger("absl").setLevel(logging.INFO)
  flags.mark_flags_as_required(["config"])
  app.run(main)
