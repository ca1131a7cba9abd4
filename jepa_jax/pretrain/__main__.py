"""Pretrain V-JEPA: ``python -m jepa_jax.main --config=configs/vith16.py --workdir=DIR`` (the same
as ``python -m jepa_jax.pretrain``).

Any config field can be overridden (``--config.batch_size=1024``; syntax in ``jepa_jax.cli``).
Restarting the same command resumes from the latest readable checkpoint in ``DIR``. On several
processes (pod slices, SLURM, or ``--coordinator_address/--num_processes/--process_id``)
``jax.distributed`` is initialised first (``launch/README.md``). Exit status: 0 when the run is
complete; ``EXIT_PREEMPTED`` (75, EX_TEMPFAIL) after a preemption saved a checkpoint, so a launcher
requeues; 1 on an error the user can fix, in one line on stderr, the traceback in ``DIR/log.txt``.
"""
import logging

from absl import app, flags
from ml_collections import config_flags

from jepa_jax import cli
from jepa_jax import distributed
from jepa_jax import paths
from jepa_jax.pretrain import defaults

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and TensorBoard summaries.")
distributed.define_flags()

EXIT_PREEMPTED = cli.EXIT_PREEMPTED


def main(argv):
  del argv
  cli.setup_logging()  # here: absl.app.run installs its own handler before calling main
  distributed.initialize_from_flags()
  import jax  # noqa: PLC0415 - after jax.distributed
  from jepa_jax.pretrain import config as config_lib, experiment, trainer  # noqa: PLC0415
  config = _CONFIG.value
  defaults.resolve_paths(config)

  def build():
    exp = experiment.build(config)  # validates the config, once
    config_lib.check_init_from(config)
    return exp

  exp = cli.run_or_fail(build)
  workdir = paths.resolve(_WORKDIR.value or config.get("workdir"))
  log_path = cli.start_workdir(workdir, "checkpoints and logs", jax.process_index())
  logging.info("Logging to %s", log_path)
  metrics = cli.run_or_fail(lambda: trainer.train(config, workdir, exp), workdir)
  cli.exit_if_preempted(metrics)


def run():
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
