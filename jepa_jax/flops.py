"""Model FLOPs of one V-JEPA train step (what MFU is measured against).

FLOPs = 2 x multiply-accumulates of matmuls and convolutions; element-wise work (LayerNorm, GELU,
softmax, the loss, AdamW, EMA) and mask sampling are not counted, as usual for MFU. With d the
width, h = mlp_ratio * d, tubelet kt, patch p, C channels, N tokens per clip, B clips, masks m with
static sizes (K_ctx_m, K_tgt_m) (``masks.static_sizes``), depths D_e / D_p, predictor width d_p::

    block(L, d, h) = 2 L (4 d^2 + 2 d h) + 4 L^2 d     # qkv + proj, fc1 + fc2, QK^T and x V
    embed(L)       = 2 L (kt p p C) d
    target   = embed(N) + D_e block(N, d, h)            # EMA encoder, forward only
    context_m = D_e block(K_ctx_m, d, h)
    pred_m   = 2 K_ctx_m d d_p + D_p block(K_ctx_m + K_tgt_m, d_p, h_p) + 2 K_tgt_m d_p d
    step = B [ target + sum_m ( 3 (context_m + pred_m) + 2 embed(K_ctx_m) ) ]

x3 is forward + backward (a matmul's backward is two of its size); the online encoder embeds only
the context tokens and needs only the kernel gradient, hence x2. The predictor uses the encoder's
heads and MLP ratio (h_p = mlp_ratio d_p).

V-JEPA 2.1 (``levels`` L > 1): the predictor embeds the L concatenated levels in two steps,
``2 K_ctx (L d) d + 2 K_ctx d d_p``, projects its targets to L x d_out and, with
``return_context``, its context tokens too (``2 K_ctx d_p L d_out``); the levels' LayerNorms are
element-wise. Its image half (``settings.images``) adds ``B_img`` one-frame clips, each the same
sum over the image grid and image masks with a tubelet of 1.
"""
from __future__ import annotations

from jepa_jax import masks as masks_lib
from jepa_jax import models


def block_flops(tokens: int, width: int, hidden: int) -> int:
  """One pre-norm transformer block on ``tokens`` tokens: 2 L (4 d^2 + 2 d h) + 4 L^2 d."""
  L, d, h = int(tokens), int(width), int(hidden)
  return 2 * L * (4 * d * d + 2 * d * h) + 4 * L * L * d


def train_step_flops(settings) -> dict:
  """Model FLOPs of one train step of a read config (``jepa_jax.pretrain.config.read(config)``, global
  batch), with the parts that make it up.

  Returns a dict of ints: ``total`` (the whole step, all ``settings.batch_size`` clips, and the
  images of V-JEPA 2.1's image half), ``per_clip``, ``target_forward``, ``context_encoder`` and
  ``predictor`` (per clip, backward included for the last two, summed over masks),
  ``patch_embed`` (per clip, target + online), ``tokens`` (N per clip) and, with images,
  ``per_image`` and ``images`` (their share of ``total``).
  """
  encoder, predictor = models.from_spec(settings.model)
  video = _per_clip(encoder, predictor, encoder.grid, settings.masks, encoder.tubelet_size)
  out = {"total": settings.batch_size * video["per_clip"], **video}
  images = getattr(settings, "images", None)
  if images is not None:
    per_image = _per_clip(encoder, predictor, images.grid, images.masks, 1)["per_clip"]
    out.update(per_image=per_image, images=images.batch_size * per_image)
    out["total"] += out["images"]
  return out


def _per_clip(encoder, predictor, grid, mask_cfgs, tubelet: int) -> dict:
  """The formula of the module docstring for one clip of token ``grid`` and its masks."""
  n = grid[0] * grid[1] * grid[2]
  d = encoder.embed_dim
  h = int(d * encoder.block.mlp_ratio)
  dp = predictor.predictor_embed_dim
  hp = int(dp * predictor.block.mlp_ratio)
  levels, out_dim = predictor.levels, predictor.output_dim
  p, c = encoder.patch_size, encoder.in_chans

  def embed(tokens):
    return 2 * tokens * (tubelet * p * p * c) * d

  def predictor_embed(tokens):
    if levels == 1:
      return 2 * tokens * d * dp
    return 2 * tokens * (levels * d) * d + 2 * tokens * d * dp

  target = embed(n) + encoder.depth * block_flops(n, d, h)
  context = predictor_total = online_embed = 0
  for mc in mask_cfgs:
    k_ctx, k_tgt = masks_lib.static_sizes(grid, mc)
    context += 3 * encoder.depth * block_flops(k_ctx, d, h)
    online_embed += 2 * embed(k_ctx)
    projected = k_tgt + (k_ctx if predictor.return_context else 0)
    pred = (predictor_embed(k_ctx) + predictor.depth * block_flops(k_ctx + k_tgt, dp, hp)
            + 2 * projected * dp * out_dim)
    predictor_total += 3 * pred
  return {
      "per_clip": target + context + predictor_total + online_embed,
      "target_forward": target,
      "context_encoder": context,
      "predictor": predictor_total,
      "patch_embed": embed(n) + online_embed,
      "tokens": n,
  }


# Dense bf16 peak TFLOP/s per device (chip for TPUs; H100/H200 SXM without sparsity).
PEAK_TFLOPS = {
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,  # v5e
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v5": 459.0,
    "TPU v6 lite": 918.0,  # v6e (Trillium)
    "TPU v6e": 918.0,
    "NVIDIA H100": 989.0,
    "NVIDIA H200": 989.0,
}


def peak_tflops(device_kind: str):
  """The peak of ``device_kind`` (longest matching prefix), or None (e.g. CPUs)."""
  best = None
  for name, peak in PEAK_TFLOPS.items():
    if device_kind.startswith(name) and (best is None or len(name) > len(best[0])):
      best = (name, peak)
  return None if best is None else best[1]
