"""results.json: the runs of a low-shot fraction summarised over seeds, the pretrained encoder
against the random-init baseline, and the file written once (process 0)."""
import json
import os

import jax
import numpy as np

from jepa_jax import paths
from jepa_jax.eval import lowshot


def summarize_runs(runs: list[dict], fraction: float) -> dict:
  top1 = lowshot.mean_std([r["top1"] for r in runs])
  top5 = lowshot.mean_std([r["top5"] for r in runs])
  return dict(fraction=fraction, num_train=int(np.mean([r["num_train"] for r in runs])),
              top1=top1[0], top1_std=top1[1], top5=top5[0], top5_std=top5[1],
              seeds=[r["seed"] for r in runs], runs=runs)

def versus_random(main: dict, baseline: dict) -> dict:
  """The pretrained encoder's top-1 against the random baseline's: the margin and the seeds'
  spread (the larger of the two sample stds), and whether the margin exceeds it."""
  spread = max(main["top1_std"], baseline["top1_std"])
  margin = main["top1"] - baseline["top1"]
  return dict(pretrained=main["top1"], pretrained_std=main["top1_std"],
              pretrained_seeds=main["seeds"], random=baseline["top1"],
              random_std=baseline["top1_std"], random_seeds=baseline["seeds"], margin=margin,
              spread=spread, margin_exceeds_spread=bool(margin > spread))

def versus_line(v: dict) -> str:
  """The comparison as the eval prints it."""
  verdict = "exceeds" if v["margin_exceeds_spread"] else "does not exceed"
  return (f"pretrained {v['pretrained']:.1f} ± {v['pretrained_std']:.1f} vs random "
          f"{v['random']:.1f} ± {v['random_std']:.1f}: margin {v['margin']:+.1f}, which "
          f"{verdict} the seeds' spread {v['spread']:.1f} (top-1; probe seeds "
          f"{v['pretrained_seeds']}; random-init encoder and probe seeds {v['random_seeds']})")

def write_results(results: dict, workdir: str) -> str:
  path = os.path.join(workdir, "results.json")
  if jax.process_index() == 0:
    with paths.atomic_write(path) as f:
      json.dump(results, f, indent=1)
  return path
