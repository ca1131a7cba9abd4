"""Pretrain V-JEPA: ``python -m jepa_jax.main --config=configs/vith16.py --workdir=DIR``.

Any config field can be overridden on the command line (``--config.batch_size=1024``). Restarting
the same command resumes from the latest checkpoint in ``DIR``. On several processes (Cloud TPU pod
slices, SLURM, or explicit ``--coordinator_address/--num_processes/--process_id``)
``jax.distributed`` is initialised first; see ``launch/README.md``.

Exit status: 0 when the run is complete; ``EXIT_PREEMPTED`` (75, EX_TEMPFAIL) when SIGTERM or a
preemption notice stopped it after saving a checkpoint, so a launcher knows to requeue; 1 on a
config error or a non-finite loss.
"""
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from jepa_jax import distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and TensorBoard summaries.")
distributed.define_flags()

EXIT_PREEMPTED = 75


def main(argv):
  del argv
  distributed.initialize_from_flags()
  from jepa_jax import experiment, trainer  # after jax.distributed: they touch the backend
  config = _CONFIG.value
  try:
    experiment.validate(config)
  except experiment.ConfigError as e:
    sys.exit(f"Config error: {e}")
  workdir = _WORKDIR.value or config.get("workdir")
  if not workdir:
    sys.exit("Config error: --workdir is required (where checkpoints and logs go)")
  try:
    metrics = trainer.train(config, os.path.expanduser(workdir))
  except trainer.NonFiniteLossError as e:
    sys.exit(f"Stopped: {e}")
  if "preempted_at_step" in metrics:
    logging.warning("Preempted at step %d; the checkpoint is saved: run the same command to "
                    "resume", metrics["preempted_at_step"])
    sys.exit(EXIT_PREEMPTED)


class _QuietLibraries(logging.Filter):
  """Drop orbax's per-save INFO chatter so progress lines stay readable (warnings still pass)."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


def run():
  from absl import logging as absl_logging
  absl_logging.get_absl_handler().addFilter(_QuietLibraries())
  logging.getLogger("absl").setLevel(logging.INFO)
  flags.mark_flags_as_required(["config"])
  app.run(main)


if __name__ == "__main__":
  run()
