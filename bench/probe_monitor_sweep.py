"""The online probe's recipes on the saved checkpoints of one pretraining run, offline: which
label, pooling and probe kind show what the encoder learns (how ``configs/demo.py``'s
``monitor_probe`` was chosen).

    python bench/probe_monitor_sweep.py --workdir workdir/demo --labels direction,shape,colour \
        --poolings mean,time,flat --out probe_sweep.json

For step 0 (the initial encoder: ``config.seed``'s init, as the trainer draws it) and every
checkpoint in the workdir, the target encoder's tokens of the monitor's clips are computed once
(``probe_monitor.ProbeMonitor``, the trainer's own code) and every (label, pooling, kind) is
probed; prints one row per step. Options the run's config does not set are the monitor defaults.
"""
import argparse
import json
import os
import sys
import time

import jax
import numpy as np

from jepa_jax import checkpoint as ckpt_lib
from jepa_jax.pretrain import defaults
from jepa_jax.pretrain import experiment
from jepa_jax.pretrain import probe_monitor


def run_config(workdir: str):
  config = defaults.base_config()
  saved = ckpt_lib.read_config(workdir)
  # Only the fields the monitor needs: the model, the data and the mesh of the saved run.
  config.model.update(saved["model"])
  config.data.update({k: v for k, v in saved["data"].items() if k in config.data})
  config.batch_size = saved["batch_size"]
  config.seed = saved["seed"]
  config.masks = [defaults.mask_config(**m) for m in saved["masks"]]
  config.optim.update(saved["optim"])
  return config


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--labels", default="direction,shape,colour")
  p.add_argument("--poolings", default="mean,time,flat")
  p.add_argument("--kinds", default="ridge,knn")
  p.add_argument("--num_clips", type=int, default=128)
  p.add_argument("--ridge_alpha", type=float, default=None)
  p.add_argument("--knn_k", type=int, default=None)
  p.add_argument("--out", default="probe_sweep.json")
  args = p.parse_args(argv)
  config = run_config(args.workdir)
  config.mesh.data = -1
  exp = experiment.build(config)
  directory = ckpt_lib.checkpoint_dir(args.workdir)
  steps = sorted(int(s) for s in os.listdir(directory) if s.isdigit())
  labels = [s for s in args.labels.split(",") if s]
  poolings = [s for s in args.poolings.split(",") if s]
  kinds = probe_monitor.kinds_of(args.kinds)
  mp = config.monitor_probe.copy_and_resolve_references()
  mp.update(dict(every=1, index=",".join(labels), num_clips=args.num_clips, pooling="flat"))
  for name in ("ridge_alpha", "knn_k"):
    if getattr(args, name) is not None:
      mp[name] = getattr(args, name)
  mon = probe_monitor.ProbeMonitor(mp, exp)  # every label's clips at once: the same videos
  rows = []
  for step in [0] + steps:
    if step == 0:
      params = exp.init_state(jax.random.PRNGKey(config.seed)).target_params
    else:
      params = jax.tree_util.tree_map(np.asarray, ckpt_lib.load(args.workdir, step).params["target"])
    row = dict(step=step)
    t0 = time.perf_counter()
    flat, clip_rows = mon.features(params)
    tokens = flat.reshape(len(flat), -1, exp.encoder.embed_dim)
    for label, y in mon.labels.items():
      y = y[clip_rows]
      for pooling in poolings:
        x = probe_monitor.pool_tokens(tokens, pooling, mon.grid)
        for kind in kinds:
          row[f"{label}/{pooling}/{kind}"] = probe_monitor.cross_validated_accuracy(
              x, y, kind, mon.folds, ridge_alpha=mon.ridge_alpha, knn_k=mon.knn_k)
    row["seconds"] = time.perf_counter() - t0
    rows.append(row)
    print(json.dumps(row), flush=True)
  with open(args.out, "w") as f:
    json.dump(dict(workdir=args.workdir, command="python bench/probe_monitor_sweep.py " +
                   " ".join(argv if argv is not None else sys.argv[1:]), rows=rows), f, indent=1)


if __name__ == "__main__":
  main()
