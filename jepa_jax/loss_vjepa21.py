"""The V-JEPA 2.1 objective as pure functions (``app/vjepa_2_1/train.py``; docs/vjepa21.md).

    loss, aux = vjepa21_loss(apply_encoder, apply_predictor, params, target_params, clips, masks,
                             step, cfg=ContextLossConfig(), grid=encoder.grid, levels=4)

As ``loss.vjepa_loss``, except: ``apply_encoder`` returns the ``L`` levels concatenated (``[B, K,
L * D]``, ``hierarchical=True``), ``apply_predictor`` returns ``(predictions, context
predictions)`` (``return_context``), and ``step`` drives the lambda ramp. Targets: each EMA level
layer-normed on its own (no affine, eps 1e-5). Loss ``L_pred + lambda(step) * L_context``, each the
mean over masks of ``mean(|z - h|^p) / p``: over the target tokens, and over the context tokens
against the targets there, each context token's error divided by ``sqrt`` of its (t, h, w)
distance to the nearest target when ``weight_distance`` (averaged without renormalising, as the
reference). Padding is left out of every mean and distance.
"""
import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from jepa_jax import sharding
from jepa_jax.loss import TOKENS, _mean_count, gather_targets, target_layer_norm
from jepa_jax.models import rope


@dataclasses.dataclass(frozen=True)
class ContextLossConfig:
  """The reference's loss/model keys (pretraining YAML values as defaults).

  ``lambda_value`` (``lambda_value_vid``), ramped in linearly from 0 at ``lambda_start`` to its
  value at ``lambda_end`` (``Lambda_LinearWarmupHold``'s defaults) when ``lambda_progressive``;
  ``weight_distance`` (``weight_distance_loss``), ``offset_context_loss``, ``loss_exp``."""
  lambda_value: float = 0.5
  lambda_start: int = 15_000
  lambda_end: int = 30_000
  lambda_progressive: bool = True
  weight_distance: bool = True
  offset_context_loss: bool = False
  loss_exp: float = 1.0


def context_lambda(cfg: ContextLossConfig, step) -> jax.Array:
  """lambda at global ``step``: 0 before ``lambda_start``, linear to ``lambda_value`` at
  ``lambda_end``, constant after (or constant from 0 without ``lambda_progressive``)."""
  if not cfg.lambda_progressive:
    return jnp.asarray(cfg.lambda_value, jnp.float32)
  if cfg.lambda_end <= cfg.lambda_start:
    raise ValueError(f"lambda_end ({cfg.lambda_end}) must be after lambda_start "
                     f"({cfg.lambda_start})")
  s = jnp.asarray(step, jnp.float32)
  alpha = jnp.clip((s - cfg.lambda_start) / (cfg.lambda_end - cfg.lambda_start), 0.0, 1.0)
  return jnp.float32(cfg.lambda_value) * alpha


def level_layer_norm(features: jax.Array, levels: int) -> jax.Array:
  """``[..., L * D]`` -> each of the L slices layer-normed on its own (float32), concatenated."""
  parts = jnp.split(features, levels, axis=-1)
  return jnp.concatenate([target_layer_norm(p) for p in parts], axis=-1)


def distance_weights(context_idx: jax.Array, target_idx: jax.Array, grid: Sequence[int],
                     target_valid: Optional[jax.Array] = None,
                     offset_context_loss: bool = False) -> jax.Array:
  """``[B, Kc]`` ``sqrt`` of each context token's Euclidean (t, h, w) distance to the nearest
  (valid) target token (``masks_dist.compute_mask_distance``). ``offset_context_loss`` first
  divides the distance by ``grid_height // 16``, as the reference does."""
  def coords(idx):
    return jnp.stack([c.astype(jnp.float32) for c in rope.token_coords(idx, grid)], axis=-1)

  diff = coords(context_idx)[:, :, None, :] - coords(target_idx)[:, None, :, :]
  dist = jnp.sqrt(jnp.sum(jnp.square(diff), axis=-1))
  if target_valid is not None:
    dist = jnp.where(target_valid[:, None, :], dist, jnp.inf)
  dmin = jnp.min(dist, axis=-1)
  if offset_context_loss:
    coeff = grid[1] // 16
    if coeff == 0:
      raise ValueError(f"offset_context_loss divides distances by grid // 16, which is 0 for a "
                       f"{grid[1]}-patch grid; set offset_context_loss=False")
    dmin = dmin * (1.0 / coeff)
  return jnp.sqrt(dmin)


def feature_loss(pred: jax.Array, target: jax.Array, valid: Optional[jax.Array] = None,
                 token_scale: Optional[jax.Array] = None, loss_exp: float = 1.0) -> jax.Array:
  """``mean(|pred - target|^p * token_scale) / p`` over valid tokens and features (float32)."""
  err = jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32))
  if loss_exp != 1.0:
    err = err ** loss_exp
  w = jnp.ones(err.shape[:2], jnp.float32) if valid is None else valid.astype(jnp.float32)
  scaled = w if token_scale is None else w * token_scale
  total = jnp.sum(err * scaled[..., None])
  return total / (jnp.maximum(jnp.sum(w), 1.0) * err.shape[-1]) / loss_exp


def compute_targets(apply_encoder: Callable, target_params: Any, clips: jax.Array,
                    levels: int) -> jax.Array:
  return jax.lax.stop_gradient(level_layer_norm(apply_encoder(target_params, clips), levels))


def vjepa21_loss(apply_encoder: Callable, apply_predictor: Callable, params: Any,
                 target_params: Any, clips: jax.Array, masks: Sequence[Any], step,
                 cfg: ContextLossConfig = ContextLossConfig(), *, grid: Sequence[int],
                 levels: int, mask_token_ids: Optional[Sequence[int]] = None):
  """The V-JEPA 2.1 loss and its diagnostics.

  ``mask_token_ids``: the predictor mask token of each mask (default token 0 for all: the
  reference's wrapper passes the clip-length group, and a batch here is one group).

  Returns ``(loss, aux)``: ``aux`` holds ``loss.vjepa_loss``'s keys (``loss_per_mask`` is the
  predictor loss of each mask) and ``loss_pred``, ``loss_context``, ``lambda``,
  ``context_loss_per_mask``.
  """
  targets = sharding.constrain(compute_targets(apply_encoder, target_params, clips, levels),
                               TOKENS)
  lam = context_lambda(cfg, step)
  pred_losses, ctx_losses, ctx_counts, tgt_counts, preds = [], [], [], [], []
  for i, m in enumerate(masks):
    context = apply_encoder(params["encoder"], clips, token_idx=m.context,
                            token_valid=m.context_valid)
    token = 0 if mask_token_ids is None else mask_token_ids[i]
    pred, ctx_pred = apply_predictor(params["predictor"], context, m.context, m.target, token,
                                     m.context_valid, m.target_valid)
    target = sharding.constrain(gather_targets(targets, m.target), TOKENS)
    pred_losses.append(feature_loss(pred, target, m.target_valid, loss_exp=cfg.loss_exp))
    scale = None
    if cfg.weight_distance:
      scale = 1.0 / distance_weights(m.context, m.target, grid, m.target_valid,
                                     cfg.offset_context_loss)
    ctx_target = sharding.constrain(gather_targets(targets, m.context), TOKENS)
    ctx_losses.append(feature_loss(ctx_pred, ctx_target, m.context_valid, scale, cfg.loss_exp))
    preds.append(pred)
    ctx_counts.append(_mean_count(m.context, m.context_valid))
    tgt_counts.append(_mean_count(m.target, m.target_valid))
  loss_pred = jnp.mean(jnp.stack(pred_losses))
  loss_context = jnp.mean(jnp.stack(ctx_losses))
  aux = {"loss_per_mask": jnp.stack(pred_losses), "context_loss_per_mask": jnp.stack(ctx_losses),
         "context_tokens": jnp.stack(ctx_counts), "target_tokens": jnp.stack(tgt_counts),
         "targets": targets, "predictions": tuple(preds), "loss_pred": loss_pred,
         "loss_context": loss_context, "lambda": lam}
  return loss_pred + lam * loss_context, aux


def image_video_loss(apply_encoder: Callable, apply_predictor: Callable,
                     apply_image_predictor: Callable, params: Any, target_params: Any,
                     video: jax.Array, video_masks: Sequence[Any], images: jax.Array,
                     image_masks: Sequence[Any], step, cfg: ContextLossConfig, *,
                     image_lambda: float, image_weight: float, video_grid: Sequence[int],
                     image_grid: Sequence[int], levels: int,
                     mask_token_ids: Optional[Sequence[int]] = None):
  """V-JEPA 2.1's image + video objective: ``(1 - w) * L_video + w * L_image``.

  The reference trains images on a share ``w`` of its ranks (``img_data.rank_ratio``; ``w =
  int(world * rank_ratio) / world``) and videos on the rest, each rank computing ``vjepa21_loss``
  on its own batch; DDP averages the gradients over ranks, which is this weighted sum's gradient.
  Image ranks use their own masks (``img_mask``), their own lambda (``lambda_value_img``), the
  1-frame token grid, and mask token 0 (the clip-length group, as for video).
  ``apply_image_predictor``: the predictor with its image modality embedding.

  Returns ``(loss, {"video": aux, "image": aux})`` with ``vjepa21_loss``'s aux of each, and
  its total under ``"loss"``.
  """
  video_loss, video_aux = vjepa21_loss(apply_encoder, apply_predictor, params, target_params,
                                       video, video_masks, step, cfg, grid=video_grid,
                                       levels=levels, mask_token_ids=mask_token_ids)
  image_cfg = dataclasses.replace(cfg, lambda_value=image_lambda)
  image_loss, image_aux = vjepa21_loss(apply_encoder, apply_image_predictor, params,
                                       target_params, images, image_masks, step, image_cfg,
                                       grid=image_grid, levels=levels)
  loss = (1.0 - image_weight) * video_loss + image_weight * image_loss
  return loss, {"video": {**video_aux, "loss": video_loss}, "image": {**image_aux, "loss": image_loss}}


def model_apply_fns(encoder, predictor, image: bool = False):
  """``apply_encoder`` (hierarchical outputs) / ``apply_predictor`` (predictions and context
  predictions) for jepa_jax's V-JEPA 2.1 Flax modules; ``image``: the predictor adds its image
  modality embedding (the encoder tells images by their frame count)."""
  if not encoder.levels or not predictor.return_context:
    raise ValueError("the V-JEPA 2.1 loss needs an encoder with levels and a predictor with "
                     "return_context=True (ModelSpec(vjepa21=True), PredictorSpec("
                     "return_context=True))")

  def apply_encoder(p, clips, token_idx=None, token_valid=None):
    return encoder.apply({"params": p}, clips, token_idx=token_idx, token_valid=token_valid,
                         hierarchical=True)

  def apply_predictor(p, context, context_idx, target_idx, mask_index, context_valid=None,
                      target_valid=None):
    return predictor.apply({"params": p}, context, context_idx, target_idx, mask_index,
                           context_valid, target_valid, image=image)

  return apply_encoder, apply_predictor
