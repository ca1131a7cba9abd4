"""The online probe's curve of a pretraining run, from its ``metrics.jsonl``, as a PNG and a table.

    python -m jepa_jax.pretrain.probe_curve --workdir workdir/demo --out workdir/demo_probe.png

Plots every ``probe/<label>/<kind>`` accuracy the trainer's probe monitor logged
(``jepa_jax.pretrain.probe_monitor``) against the step, with chance (1 / classes, ``--classes``; read from
the synthetic set's class names for its labels) as a dashed line, and prints the numbers.
"""
import argparse
import json
import os
import sys
from typing import Optional

from jepa_jax.data import synthetic
from jepa_jax.errors import ConfigError, InputNotFoundError

PREFIX = "probe/"


def read_curves(metrics_path: str) -> dict:
  """``{"<label>/<kind>": [(step, accuracy), ...]}`` in step order, plus the monitor's share of
  the wall time at its last row under ``"time_share"`` (None without)."""
  curves, share = {}, None
  with open(metrics_path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        continue
      for key, value in row.items():
        if key == "probe/time_share":
          share = value
        elif key.startswith(PREFIX) and key.count("/") == 2 and value is not None:
          curves.setdefault(key[len(PREFIX):], []).append((int(row["step"]), float(value)))
  out = {k: sorted(v) for k, v in sorted(curves.items())}
  out["time_share"] = share
  return out


def chance(label: str, classes: Optional[int]) -> Optional[float]:
  if classes:
    return 100.0 / classes
  names = synthetic.CLASS_NAMES.get(label) or (synthetic.MOTION_CLASS_NAMES if label == "motion"
                                                else None)
  return 100.0 / len(names) if names else None


def plot(curves: dict, out: str, title: str, classes: Optional[int] = None) -> None:
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  fig, ax = plt.subplots(figsize=(5.2, 3.0), dpi=100)
  labels = set()
  for key, points in curves.items():
    if key == "time_share":
      continue
    steps, acc = zip(*points)
    ax.plot(steps, acc, marker="o", markersize=3, label=key)
    labels.add(key.split("/")[0])
  for label in sorted(labels):
    c = chance(label, classes)
    if c is not None:
      ax.axhline(c, color="grey", linestyle="--", linewidth=1)
      ax.annotate(f"chance ({label})", (ax.get_xlim()[0], c), xytext=(4, 3),
                  textcoords="offset points", fontsize=7, color="grey")
  ax.set_xlabel("pretraining step")
  ax.set_ylabel("probe top-1 (%)")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out)
  plt.close(fig)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="a pretraining workdir (its metrics.jsonl)")
  p.add_argument("--out", required=True, help="the PNG to write")
  p.add_argument("--classes", type=int, default=None,
                 help="number of classes, for the chance line (default: the synthetic label's)")
  args = p.parse_args(argv)
  from jepa_jax import cli  # noqa: PLC0415 - the plotting path imports no CLI stack
  _, status = cli.run_or_report(lambda: plot_run(args))
  return status


def plot_run(args) -> None:
  path = os.path.join(args.workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise InputNotFoundError(f"{path} does not exist; give a pretraining workdir")
  curves = read_curves(path)
  share = curves["time_share"]
  if len(curves) == 1:
    raise ConfigError(f"{path} has no probe/* rows: pretrain with config.monitor_probe.every > 0 "
                      "(configs/demo.py sets it)")
  title = f"online probe, {os.path.basename(os.path.normpath(args.workdir))}"
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  plot(curves, args.out, title, args.classes)
  for key, points in curves.items():
    if key != "time_share":
      print(f"{key}: " + ", ".join(f"{s}: {a:.1f}" for s, a in points))
  if share is not None:
    print(f"probe monitor: {100 * share:.1f}% of the run's wall time")
  print(f"-> {args.out}")


if __name__ == "__main__":
  sys.exit(main())
