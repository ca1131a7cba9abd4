"""The training state (online encoder + predictor, EMA target encoder, optimiser state, step) and
the construction of V-JEPA's models from a config.

Initialisation is shape-first (``jax.eval_shape``) so that shardings can be chosen before any
array exists, and a model larger than one device is never materialised whole: ``init_state`` is
jitted with ``out_shardings``.
"""
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from jepa_jax import models

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class TrainState(train_state.TrainState):
  """``params = {"encoder": ..., "predictor": ...}``; ``target_params`` is the EMA encoder."""
  target_params: Any = None

  @classmethod
  def create(cls, *, params, tx: optax.GradientTransformation, target_params=None, **kwargs):
    if target_params is None:
      # The reference deep-copies the context encoder: target == online at step 0.
      target_params = jax.tree_util.tree_map(jnp.array, params["encoder"])
    return super().create(apply_fn=None, params=params, tx=tx, target_params=target_params,
                          **kwargs)


def build_models(config, num_masks: Optional[int] = None):
  """Encoder and predictor from ``config.model`` / ``config.data`` (see configs/*.py)."""
  m = config.model
  if m.dtype not in DTYPES:
    raise ValueError(f"config.model.dtype must be one of {sorted(DTYPES)}, got {m.dtype!r}")
  overrides = dict(m.get("overrides", {}) or {})
  if m.get("use_rope") is not None:  # configs older than V-JEPA 2 support have no such field
    overrides.setdefault("use_rope", bool(m.use_rope))
  encoder = models.build_encoder(
      m.name, img_size=config.data.crop_size, num_frames=config.data.num_frames,
      patch_size=m.patch_size, tubelet_size=m.tubelet_size, uniform_power=m.uniform_power,
      dtype=DTYPES[m.dtype], attention=m.attention, remat=m.remat, scan=m.scan, **overrides)
  predictor = models.build_predictor(
      encoder, embed_dim=m.pred_embed_dim, depth=m.pred_depth,
      num_mask_tokens=num_masks if num_masks is not None else num_mask_tokens(config),
      zero_init_mask_tokens=m.zero_init_mask_tokens, num_heads=m.get("pred_num_heads"))
  return encoder, predictor


def num_mask_tokens(config) -> int:
  """The predictor's mask tokens: one per mask (V-JEPA), or ``len(masks) * len(dataset_fpcs)``
  (V-JEPA 2's ``init_video_model``; ``config.model.num_mask_tokens`` overrides both)."""
  m = config.model
  if m.get("num_mask_tokens"):
    return int(m.num_mask_tokens)
  fpcs = config.data.get("dataset_fpcs")
  return len(config.masks) * (len(fpcs) if fpcs else 1)


def mask_token_ids(config) -> tuple:
  """Which mask token each mask of ``config.masks`` uses.

  ``config.model.mask_token_per``: ``"mask"`` (V-JEPA: mask i uses token i) or ``"clip_length"``
  (V-JEPA 2: its predictor wrapper passes the index of the clip-length group, so every mask of a
  batch whose clips share one frame count -- all of them here -- uses token 0).
  """
  per = config.model.get("mask_token_per") or "mask"
  if per == "mask":
    return tuple(range(len(config.masks)))
  if per == "clip_length":
    return (0,) * len(config.masks)
  raise ValueError(f"config.model.mask_token_per must be 'mask' or 'clip_length', got {per!r}")


def init_params(encoder, predictor, rng, rescale_residual_init: bool = False):
  """Fresh ``{"encoder", "predictor"}`` parameters (reference initialisation)."""
  k_enc, k_pred = jax.random.split(rng)
  clips = jnp.zeros(encoder.clip_shape())
  enc = encoder.init(k_enc, clips)["params"]
  ctx_idx = jnp.zeros((1, 1), jnp.int32)
  context = jnp.zeros((1, 1, encoder.embed_dim))
  pred = predictor.init(k_pred, context, ctx_idx, ctx_idx)["params"]
  params = {"encoder": flax.core.unfreeze(enc), "predictor": flax.core.unfreeze(pred)}
  if rescale_residual_init:
    params = {k: models.rescale_residual_projections(v) for k, v in params.items()}
  return params


def make_init_fn(encoder, predictor, tx, rescale_residual_init: bool = False):
  """``rng -> TrainState``; jit it with ``out_shardings`` for a sharded init."""

  def init(rng):
    params = init_params(encoder, predictor, rng, rescale_residual_init)
    return TrainState.create(params=params, tx=tx)

  return init
