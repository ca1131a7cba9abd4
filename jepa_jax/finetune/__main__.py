"""Fine-tune end to end: ``python -m jepa_jax.finetune --config=configs/finetune/demo.py
--workdir=DIR``.

Any config field can be overridden on the command line (``--config.checkpoint=workdir/demo
--config.epochs=5``). Restarting the same command resumes from the latest checkpoint in ``DIR``.
Writes ``DIR/results.json``, ``DIR/metrics.jsonl``, TensorBoard summaries and checkpoints.
SIGTERM saves a checkpoint and exits with status 75, as pretraining does.
"""
import os

from absl import app, flags
from ml_collections import config_flags

from jepa_jax import cli
from jepa_jax import distributed
from jepa_jax.finetune import config as ft_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "Fine-tuning config (configs/finetune/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and results.json.")
distributed.define_flags()


def main(argv):
  del argv
  config, workdir, _, _ = cli.start_program(_CONFIG, _WORKDIR, ft_config.resolve_paths,
                                            "checkpoints and results.json")
  from jepa_jax.finetune import run  # noqa: PLC0415 - after jax.distributed
  results = cli.run_or_fail(lambda: run.finetune(config, workdir), workdir)
  cli.exit_if_preempted(results)
  acc = results["accuracy"]
  print(f"{results['task']}: top-1 {acc['top1']:.2f}  top-5 {acc['top5']:.2f}  "
        f"({results['num_val_examples']} val videos, {results['test_segments']}x"
        f"{results['test_views']} views; {os.path.join(workdir, 'results.json')})")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=cli.parse_flags)
