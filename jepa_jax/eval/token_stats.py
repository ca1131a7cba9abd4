"""Where the variance of an encoder's tokens lives: a quick check for partial collapse.

    python -m jepa_jax.eval.token_stats --checkpoint WORKDIR --index VIDEOS.csv [--random]

The total variance of tokens ``x[clip, position, :]`` splits exactly into ``clip`` (the per-clip
mean token: global appearance), ``position`` (the per-position mean over clips: content-free
position) and ``residual`` (what a token says about its own place in its own clip). A random ViT
keeps a sizeable position and residual share; tokens collapsing towards clip-level features show
``clip`` taking over. Reported per block (with the final LayerNorm, as the probe sees it) and for
the position-embedded input tokens.
"""
import argparse
import json

import jax
import numpy as np

from jepa_jax import models
from jepa_jax.data.normalize import normalize


def variance_split(tokens) -> dict:
  """Fractions of the total variance of ``tokens [B, N, D]``: clip, position, residual (sum 1)."""
  x = np.asarray(tokens, np.float64)
  grand = x.mean(axis=(0, 1), keepdims=True)
  clip = x.mean(axis=1, keepdims=True) - grand
  position = x.mean(axis=0, keepdims=True) - grand
  residual = x - grand - clip - position
  total = np.square(x - grand).sum(axis=-1).mean()
  parts = {"clip": np.square(clip).sum(-1).mean(), "position": np.square(position).sum(-1).mean(),
           "residual": np.square(residual).sum(-1).mean()}
  return {k: float(v / total) for k, v in parts.items()}


def layer_stats(encoder, params, clips) -> dict:
  """``variance_split`` of the embedded input and of every block's output."""
  out = {"embed": variance_split(encoder.apply({"params": params}, clips, method=encoder.embed))}
  layers = encoder.apply({"params": params}, clips, out_layers=tuple(range(encoder.depth)))
  for i, x in enumerate(layers):
    out[f"block{i}"] = variance_split(x)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--checkpoint", required=True, help="pretraining workdir or checkpoint dir")
  p.add_argument("--index", required=True, help="index file of videos to encode")
  p.add_argument("--checkpoint_key", default="target")
  p.add_argument("--num_clips", type=int, default=48)
  p.add_argument("--random", action="store_true", help="also report a random init (seed 0)")
  args = p.parse_args(argv)
  from jepa_jax import cli  # noqa: PLC0415
  _, status = cli.run_or_report(lambda: report_token_stats(args))
  return status


def report_token_stats(args) -> None:
  from jepa_jax import data  # noqa: PLC0415
  from jepa_jax.eval import config as config_lib  # noqa: PLC0415
  from jepa_jax.eval import encoder as enc_lib  # noqa: PLC0415
  config = config_lib.base_eval_config()
  config.checkpoint, config.checkpoint_key = args.checkpoint, args.checkpoint_key
  encoder, params, info = enc_lib.load_frozen_encoder(config)
  dc = data.default_data_config()
  dc.crop_size, dc.num_frames = encoder.img_size, encoder.num_frames
  batch = next(iter(data.make_eval_dataset(dc, args.index, batch_size=args.num_clips,
                                           train=False)))
  clips = normalize(data.clips.single(batch["video"]))
  report = {"checkpoint": args.checkpoint, "step": info["step"], "key": args.checkpoint_key,
            "pretrained": layer_stats(encoder, params, clips)}
  if args.random:
    random_params = models.init_params(encoder, jax.random.PRNGKey(0), jit=True)
    report["random_init"] = layer_stats(encoder, random_params, clips)
  for name in ("pretrained", "random_init"):
    if name in report:
      for layer, s in report[name].items():
        print(f"{name:12s} {layer:7s} clip {s['clip']:.3f}  position {s['position']:.3f}  "
              f"residual {s['residual']:.3f}")
  print(json.dumps(report))


if __name__ == "__main__":
  import sys
  sys.exit(main(sys.argv[1:]))
