"""Print parameter counts: ``python -m jepa_jax.models [--img-size 224 --num-frames 16]``.

Counts come from the model's own init traced on abstract shapes (no memory), next to the
closed-form count of ``analytic_encoder_params``. Positions are fixed sin-cos tables or RoPE, never
parameters, so V-JEPA and V-JEPA 2 (RoPE) encoders of one size have the same count. The predictor
is the pretraining one (384 wide, 12 deep, MLP ratio 4, ``--num-mask-tokens`` tokens); its heads
are the encoder's where they divide 384, else 12 (V-JEPA 2's ``pred_num_heads``).
"""
import argparse


from jepa_jax import models


def param_table(img_size: int = 224, num_frames: int = 16, pred_embed_dim: int = 384,
                pred_depth: int = 12, num_mask_tokens: int = 2) -> list[dict]:
  rows = []
  for size in models.VIT_SIZES:
    # scan: one block is traced instead of depth of them; the parameter count is the same.
    heads = models.size_spec(size)["num_heads"]
    pred_heads = heads if pred_embed_dim % heads == 0 else 12
    enc, pred = models.from_spec(models.ModelSpec(
        size, img_size=img_size, num_frames=num_frames, scan=True,
        predictor=models.PredictorSpec(depth=pred_depth, embed_dim=pred_embed_dim,
                                       num_heads=pred_heads, num_mask_tokens=num_mask_tokens)))
    enc_params = models.abstract_params(enc)
    pred_params = models.abstract_params(pred)
    spec = models.size_spec(size)
    rows.append(dict(size=size, heads=heads, mlp_hidden=int(enc.embed_dim * enc.block.mlp_ratio),
                     encoder=models.count_params(enc_params),
                     analytic=models.analytic_encoder_params(spec["embed_dim"], spec["depth"],
                                                             spec["mlp_ratio"]),
                     predictor=models.count_params(pred_params)))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--img-size", type=int, default=224)
  parser.add_argument("--num-frames", type=int, default=16)
  parser.add_argument("--num-mask-tokens", type=int, default=2,
                      help="predictor mask tokens (V-JEPA 2's released predictors have 10)")
  args = parser.parse_args()
  print(f"{'size':21s} {'heads':>5s} {'mlp':>5s} {'encoder':>14s} {'analytic':>14s} "
        f"{'predictor':>12s}")
  for r in param_table(args.img_size, args.num_frames, num_mask_tokens=args.num_mask_tokens):
    print(f"vit_{r['size']:17s} {r['heads']:5d} {r['mlp_hidden']:5d} {r['encoder']:14,d} "
          f"{r['analytic']:14,d} {r['predictor']:12,d}")


if __name__ == "__main__":
  main()
