"""The demo's claim, measured: a pretrained encoder vs a random one of the same size, probed on
motion labels and appearance labels of the synthetic set, each over several seeds.

    python -m jepa_jax.eval.compare --pretrained workdir/demo --out results_compare.json

For each label (default: direction, rotation; shape, colour) and seed s, a fresh attentive probe
(seed s) is trained on cached tokens (configs/eval/demo.py's protocol) of the pretrained encoder
and of a random encoder of the same architecture initialised with seed s. Videos are decoded once
and tokens computed once per encoder for all labels (the per-label indexes list the same videos).
Writes per-seed numbers as JSON and prints a Markdown table of mean +- sample std and whether the
margin exceeds the spread.
"""
import argparse
import dataclasses
import importlib.util
import json
import logging
import time

import jax
import numpy as np

from jepa_jax import cli
from jepa_jax import models
from jepa_jax.eval import config as config_lib
from jepa_jax.eval import encoder as enc_lib
from jepa_jax.eval import features
from jepa_jax.eval import lowshot
from jepa_jax.eval import placement
from jepa_jax.eval import datasets
from jepa_jax.eval import probe_runs
from jepa_jax.eval import settings as settings_lib

log = logging.getLogger(__name__)

MOTION_LABELS = ("direction", "rotation", "speed", "motion")


def load_config(path: str):
  spec = importlib.util.spec_from_file_location("eval_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def label_table(s: settings_lib.Settings, label: str, split: str) -> np.ndarray:
  """Labels of ``label`` by source position for the synthetic split ``split``."""
  train, val = datasets.resolve_indexes(dataclasses.replace(s, synthetic_label=label))
  return datasets.source_labels(train if split == "train" else val)


def with_positions(cache: features.FeatureCache, grid) -> features.FeatureCache:
  """Diagnostic: add the fixed sin-cos table of the (segment x time, height, width) token grid to
  cached tokens. The reference probe has no positions, so it sees a bag of tokens; this tells
  whether an encoder's features carry motion content that is only unreadable for lack of
  positions (see README "Demo: what the probe shows")."""
  from jepa_jax.models import pos_embed
  t, h, w = grid
  segments = cache.tokens.shape[2] // (t * h * w)
  table = pos_embed.sincos_3d(cache.tokens.shape[3], (segments * t, h, w), True)
  return features.FeatureCache(cache.tokens + table.astype(cache.tokens.dtype)[None, None],
                              cache.labels, cache.index)


def compare(config, pretrained: str, labels, seeds, workdir: str,
            probe_positions: bool = False) -> dict:
  t_start = time.time()
  placer = placement.Placer()
  config = config.copy_and_resolve_references()
  config.checkpoint = pretrained
  config.synthetic_label = labels[0]
  settings = settings_lib.read(config)
  # The random baselines are of the loaded encoder's architecture (random_params(encoder, seed)).
  encoder, pre_params, info = enc_lib.load_frozen_encoder(settings)

  # Decode every clip once; all encoders read the same pixels.
  train_spec, val_spec = datasets.resolve_indexes(settings)
  xb = settings.extract_batch_size or settings.batch_size
  t0 = time.time()
  train_batches = list(datasets.make_dataset(settings, train_spec, train=False, batch_size=xb,
                                             seed=settings.seed, repeat=False, num_views=1))
  val_batches = list(datasets.make_dataset(settings, val_spec, train=False, batch_size=xb,
                                           seed=settings.seed, repeat=False,
                                           num_views=settings.num_views))
  log.info("decoded %d train and %d val batches in %.1fs", len(train_batches), len(val_batches),
           time.time() - t0)
  tables = {lab: (label_table(settings, lab, "train"), label_table(settings, lab, "val"))
            for lab in labels}
  token_fn = jax.jit(enc_lib.make_token_fn(encoder, settings.feature_layer))

  def caches(params):
    params = placer.replicate(params)
    out = (features.extract_features(token_fn, params, train_batches, placer),
           features.extract_features(token_fn, params, val_batches, placer))
    return tuple(with_positions(c, encoder.grid) for c in out) if probe_positions else out

  encoders = {"pretrained": [(s, pre_params) for s in seeds],
              "random": [(s, None) for s in seeds]}
  runs = {name: {lab: [] for lab in labels} for name in encoders}
  pre_caches = None
  for name, items in encoders.items():
    for seed, params in items:
      if name == "pretrained":
        pre_caches = pre_caches or caches(params)  # one encoder, probe seeds vary
        train_c, val_c = pre_caches
      else:
        train_c, val_c = caches(models.init_params(encoder, jax.random.PRNGKey(seed), jit=True))
      for lab in labels:
        tr_labels, va_labels = tables[lab]
        tr, va = train_c.relabel(tr_labels), val_c.relabel(va_labels)
        num_classes = int(max(tr_labels.max(), va_labels.max())) + 1
        task = probe_runs.ProbeTask(num_classes, encoder.embed_dim, encoder.block.num_heads,
                                    settings)
        rec = probe_runs.run_cached_probe(task, tr, va, seed, 1.0, placer, workdir, write=False)
        log.info("%s seed %d %s: top-1 %.2f", name, seed, lab, rec["top1"])
        runs[name][lab].append(dict(seed=seed, top1=rec["top1"], top5=rec["top5"],
                                    train_top1=rec["history"][-1]["train_top1"]))

  table = []
  for lab in labels:
    row = dict(label=lab, kind="motion" if lab in MOTION_LABELS else "appearance",
               num_classes=int(tables[lab][0].max()) + 1)
    for name in encoders:
      m, s = lowshot.mean_std([r["top1"] for r in runs[name][lab]])
      row[name] = dict(top1=m, top1_std=s, per_seed=[r["top1"] for r in runs[name][lab]])
    row["margin"] = row["pretrained"]["top1"] - row["random"]["top1"]
    row["spread"] = max(row["pretrained"]["top1_std"], row["random"]["top1_std"])
    row["margin_exceeds_spread"] = bool(row["margin"] > row["spread"])
    table.append(row)
  return dict(
      pretrained=pretrained, checkpoint_key=settings.checkpoint_key, step=info["step"],
      model=info["model"], seeds=list(seeds), num_train=len(train_c), num_val=len(val_c),
      probe_positions=probe_positions,
      protocol=probe_runs.protocol(settings), table=table, runs=runs,
      seconds=time.time() - t_start)


def markdown(result: dict) -> str:
  lines = ["| label | kind | classes | pretrained top-1 | random-init top-1 | margin |",
           "|---|---|---|---|---|---|"]
  for r in result["table"]:
    p, q = r["pretrained"], r["random"]
    lines.append(f"| {r['label']} | {r['kind']} | {r['num_classes']} | "
                 f"{p['top1']:.1f} ± {p['top1_std']:.1f} | {q['top1']:.1f} ± {q['top1_std']:.1f} | "
                 f"{r['margin']:+.1f} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--pretrained", required=True, help="the pretraining workdir (or checkpoint dir)")
  p.add_argument("--out", default="results_compare.json")
  p.add_argument("--config", default=None,
                 help="eval config file (default: the demo's, eval.config.demo_eval_config)")
  p.add_argument("--labels", default="direction,rotation,shape,colour")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--epochs", type=int, default=None, help="probe epochs (default: the config's)")
  p.add_argument("--checkpoint_key", default=None, help="target (default) | online")
  p.add_argument("--feature_layer", type=int, default=None, help="probe an intermediate block")
  p.add_argument("--synthetic_dir", default=None, help="default: the config's data.synthetic_dir")
  p.add_argument("--num_videos", type=int, default=None)
  p.add_argument("--workdir", default="/tmp/jepa_compare")
  p.add_argument("--probe_positions", action="store_true",
                 help="diagnostic, not the reference protocol: add fixed positions to the tokens")
  args = p.parse_args(argv)
  cli.setup_logging()
  _, status = cli.run_or_report(lambda: compare_command(args, argv))
  return status


def compare_command(args, argv) -> None:
  config = load_config(args.config) if args.config else config_lib.demo_eval_config()
  overrides = {"epochs": args.epochs, "checkpoint_key": args.checkpoint_key,
               "data.synthetic_dir": args.synthetic_dir, "data.synthetic_num_videos": args.num_videos}
  overrides = {k: v for k, v in overrides.items() if v}
  if args.feature_layer is not None:
    overrides["feature_layer"] = args.feature_layer
  config.update_from_flattened_dict(overrides)
  labels = [s for s in args.labels.split(",") if s]
  seeds = [int(s) for s in args.seeds.split(",") if s]
  result = compare(config, args.pretrained, labels, seeds, args.workdir, args.probe_positions)
  result["command"] = "python -m jepa_jax.eval.compare " + " ".join(argv or [])
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  print(markdown(result))
  print(f"(mean ± sample std over seeds {seeds}; {result['num_train']} train / {result['num_val']} "
        f"val videos; {result['seconds']:.0f}s) -> {args.out}")


if __name__ == "__main__":
  import sys
  sys.exit(main(sys.argv[1:]))
