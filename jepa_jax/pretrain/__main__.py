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
from jepa_jax.pretrain import defaults

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and TensorBoard summaries.")
distributed.define_flags()

EXIT_PREEMPTED = cli.EXIT_PREEMPTED


def main(argv):
  del argv

  def build(config):
    from jepa_jax.pretrain import config as config_lib, experiment  # noqa: PLC0415
    exp = experiment.build(config)  # validates the config, once
    config_lib.check_init_from(config)
    return exp

  config, workdir, log_path, exp = cli.start_program(
      _CONFIG, _WORKDIR, defaults.resolve_paths, "checkpoints and logs", validate=build,
      workdir_field="workdir")
  from jepa_jax.pretrain import trainer  # noqa: PLC0415
  logging.info("Logging to %s", log_path)
  metrics = cli.run_or_fail(lambda: trainer.train(config, workdir, exp), workdir)
  cli.exit_if_preempted(metrics)


def run():
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
