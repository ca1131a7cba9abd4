"""Print parameter counts: ``python -m jepa_jax.models [--img-size 224 --num-frames 16]``.

Counts come from the model's own init traced on abstract shapes (no memory), next to the
closed-form count of ``analytic_encoder_params``.
"""
import argparse

import jax
import jax.numpy as jnp

from jepa_jax import models


def param_table(img_size: int = 224, num_frames: int = 16, pred_embed_dim: int = 384,
                pred_depth: int = 12) -> list[dict]:
  rows = []
  for size in models.VIT_SIZES:
    enc = models.build_encoder(size, img_size=img_size, num_frames=num_frames)
    pred = models.build_predictor(enc, embed_dim=pred_embed_dim, depth=pred_depth)
    clips = jax.ShapeDtypeStruct((1, num_frames, img_size, img_size, 3), jnp.float32)
    enc_params = jax.eval_shape(enc.init, jax.random.PRNGKey(0), clips)
    idx = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    ctx = jax.ShapeDtypeStruct((1, 1, enc.embed_dim), jnp.float32)
    pred_params = jax.eval_shape(pred.init, jax.random.PRNGKey(0), ctx, idx, idx)
    spec = models.size_spec(size)
    rows.append(dict(size=size, encoder=models.count_params(enc_params),
                     analytic=models.analytic_encoder_params(spec["embed_dim"], spec["depth"],
                                                             spec["mlp_ratio"]),
                     predictor=models.count_params(pred_params)))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--img-size", type=int, default=224)
  parser.add_argument("--num-frames", type=int, default=16)
  args = parser.parse_args()
  print(f"{'size':8s} {'encoder':>14s} {'analytic':>14s} {'predictor':>12s}")
  for r in param_table(args.img_size, args.num_frames):
    print(f"{r['size']:8s} {r['encoder']:14,d} {r['analytic']:14,d} {r['predictor']:12,d}")


if __name__ == "__main__":
  main()
