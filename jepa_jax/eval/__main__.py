"""Frozen evaluation: ``python -m jepa_jax.eval --config=configs/eval/k400.py --workdir=DIR``.

Any config field can be overridden on the command line, e.g.
``--config.checkpoint=workdir/demo --config.checkpoint_key=online --config.epochs=5`` (lists and
``None`` fields as described in ``jepa_jax.cli``; relative paths are taken from the working
directory).
Writes ``DIR/results.json``, TensorBoard summaries under ``DIR/tb/`` and the trained probes under
``DIR/probes/<run>`` (``checkpoint.save_probe``'s layout). ``--config.train=False
--config.probe_checkpoint=PROBE_DIR`` evaluates a saved probe instead, without training. Several processes: as for pretraining (``jepa_jax.distributed`` flags).
"""
import os

from absl import app, flags
from ml_collections import config_flags

from jepa_jax import cli
from jepa_jax import distributed
from jepa_jax.eval import config as eval_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "Eval config file (configs/eval/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where results.json, probes and summaries go.")
distributed.define_flags()


def main(argv):
  del argv
  config, workdir, _, _ = cli.start_program(_CONFIG, _WORKDIR, eval_config.resolve_paths,
                                            "results.json and the probes")
  from jepa_jax.eval import results as results_lib  # noqa: PLC0415 - after jax.distributed
  from jepa_jax.eval import run  # noqa: PLC0415
  results = cli.run_or_fail(lambda: run.evaluate(config, workdir), workdir)
  acc = results["accuracy"]
  print(f"{results['task']}: top-1 {acc['top1']:.2f} +- {acc['top1_std']:.2f}  "
        f"top-5 {acc['top5']:.2f}  ({results['num_val_examples']} val examples; "
        f"{os.path.join(workdir, 'results.json')})")
  if "pretrained_vs_random" in results:
    print(results_lib.versus_line(results["pretrained_vs_random"]))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=cli.parse_flags)
