"""The training state (online encoder + predictor, EMA target encoder, optimiser state, step) and
its initialisation. The models come from ``models.from_spec`` (``jepa_jax.pretrain.config`` reads their spec
from a config).

Initialisation is shape-first (``jax.eval_shape``) so that shardings can be chosen before any
array exists, and a model larger than one device is never materialised whole: ``init_state`` is
jitted with ``out_shardings``.
"""
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from jepa_jax import models


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


def init_params(encoder, predictor, rng, rescale_residual_init: bool = False):
  """Fresh ``{"encoder", "predictor"}`` parameters (reference initialisation)."""
  k_enc, k_pred = jax.random.split(rng)
  params = {"encoder": models.init_params(encoder, k_enc),
            "predictor": models.init_params(predictor, k_pred)}
  if rescale_residual_init:
    params = {k: models.rescale_residual_projections(v) for k, v in params.items()}
  return params


def make_init_fn(encoder, predictor, tx, rescale_residual_init: bool = False):
  """``rng -> TrainState``; jit it with ``out_shardings`` for a sharded init."""

  def init(rng):
    params = init_params(encoder, predictor, rng, rescale_residual_init)
    return TrainState.create(params=params, tx=tx)

  return init
