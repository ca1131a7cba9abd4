"""The V-JEPA objective as pure functions, importable without the trainer, data or configs.

    loss, aux = vjepa_loss(apply_encoder, apply_predictor, params, target_params, clips, masks)

``apply_encoder(encoder_params, clips, token_idx=None, token_valid=None) -> [B, K, D]`` and
``apply_predictor(predictor_params, context, context_idx, target_idx, mask_index, context_valid,
target_valid) -> [B, Kt, D]`` (``model_apply_fns`` makes both from the modules); ``params =
{"encoder", "predictor"}``, ``target_params`` the EMA encoder's; ``masks`` one ``masks.Masks``
(or alike) per mask type. The target encoder runs once on the full clip under ``stop_gradient``,
layer-normed without affine and with torch's default eps 1e-5 (the reference's ``F.layer_norm(h,
(D,))``, not the encoder's 1e-6); context encoder and predictor run once per mask; the loss is the
mean over masks of the float32 L1 error over valid target tokens and features.
"""
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from jepa_jax import sharding

TARGET_LN_EPS = 1e-5
TOKENS = ("batch", "length", "embed")  # logical axes of [B, N, D] token features


def target_layer_norm(features: jax.Array, eps: float = TARGET_LN_EPS) -> jax.Array:
  """LayerNorm over the last axis without scale/bias, in float32."""
  x = features.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def gather_targets(normed: jax.Array, target_idx: jax.Array) -> jax.Array:
  """``[B, N, D]`` target features at ``[B, K]`` token indices -> ``[B, K, D]``."""
  return jnp.take_along_axis(normed, target_idx[..., None], axis=1)


def l1_feature_loss(pred: jax.Array, target: jax.Array,
                    weights: Optional[jax.Array] = None) -> jax.Array:
  """Mean |pred - target| over tokens (weighted by ``weights [B, K]``) and features, in float32.

  With ``weights`` None or all ones this is exactly ``mean(|pred - target|)``.
  """
  err = jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32))
  if weights is None:
    return jnp.mean(err)
  w = weights.astype(jnp.float32)
  return jnp.sum(err * w[..., None]) / (jnp.maximum(jnp.sum(w), 1.0) * err.shape[-1])


def compute_targets(apply_encoder: Callable, target_params: Any, clips: jax.Array) -> jax.Array:
  """One target forward pass on the full clip, shared by every mask: LN(target_encoder(clips))."""
  return jax.lax.stop_gradient(target_layer_norm(apply_encoder(target_params, clips)))


def vjepa_loss(apply_encoder: Callable, apply_predictor: Callable, params: Any,
               target_params: Any, clips: jax.Array, masks: Sequence[Any],
               mask_token_ids: Optional[Sequence[int]] = None):
  """The V-JEPA loss and its diagnostics.

  ``mask_token_ids``: the predictor mask token of each mask (default: mask i uses token i, as
  V-JEPA; V-JEPA 2's training passes one token per clip-length group instead).

  Returns:
    ``(loss, aux)`` with ``aux = {"loss_per_mask": [M], "context_tokens": [M],
    "target_tokens": [M], "targets": [B, N, D], "predictions": M x [B, K_tgt, D]}`` (mean valid
    tokens per clip; the layer-normed targets and the predictions, for ``jepa_jax.pretrain.monitor``).
  """
  # Token features stay split over the batch under a mesh (``sharding.constrain``; no-op without).
  targets = sharding.constrain(compute_targets(apply_encoder, target_params, clips), TOKENS)
  losses, ctx_counts, tgt_counts, preds = [], [], [], []
  for i, m in enumerate(masks):
    context = apply_encoder(params["encoder"], clips, token_idx=m.context,
                            token_valid=m.context_valid)
    token = i if mask_token_ids is None else mask_token_ids[i]
    pred = apply_predictor(params["predictor"], context, m.context, m.target, token,
                           m.context_valid, m.target_valid)
    target = sharding.constrain(gather_targets(targets, m.target), TOKENS)
    losses.append(l1_feature_loss(pred, target, m.target_valid))
    preds.append(pred)
    ctx_counts.append(_mean_count(m.context, m.context_valid))
    tgt_counts.append(_mean_count(m.target, m.target_valid))
  per_mask = jnp.stack(losses)
  aux = {"loss_per_mask": per_mask, "context_tokens": jnp.stack(ctx_counts),
         "target_tokens": jnp.stack(tgt_counts), "targets": targets, "predictions": tuple(preds)}
  return jnp.mean(per_mask), aux


def _mean_count(idx, valid):
  if valid is None:
    return jnp.asarray(idx.shape[1], jnp.float32)
  return jnp.mean(jnp.sum(valid, axis=1).astype(jnp.float32))


def model_apply_fns(encoder, predictor):
  """``apply_encoder``/``apply_predictor`` for jepa_jax's Flax modules (params without the
  ``{"params": ...}`` wrapper)."""

  def apply_encoder(p, clips, token_idx=None, token_valid=None):
    return encoder.apply({"params": p}, clips, token_idx=token_idx, token_valid=token_valid)

  def apply_predictor(p, context, context_idx, target_idx, mask_index, context_valid=None,
                      target_valid=None):
    return predictor.apply({"params": p}, context, context_idx, target_idx, mask_index,
                           context_valid, target_valid)

  return apply_encoder, apply_predictor
