"""What each module's ``init`` is called with, and parameters made with it: one place.

The encoder takes a clip of its own size, the predictor context tokens and their indices, a
classification head (attentive probe, fine-tuning head) tokens of the encoder's width. Parameter
shapes never depend on the batch or on the number of tokens, so a batch of one and four tokens
stand for any input.
"""
from typing import Optional

import flax
import jax
import jax.numpy as jnp

from jepa_jax.models.predictor import Predictor
from jepa_jax.models.vit import VisionTransformer

_HEAD_TOKENS = 4


def example_inputs(module, embed_dim: Optional[int] = None) -> tuple:
  """``module.init``'s inputs after the key, as ``ShapeDtypeStruct``s; ``embed_dim``: the token
  width of a head (anything but an encoder or predictor)."""
  if isinstance(module, VisionTransformer):
    return (jax.ShapeDtypeStruct(module.clip_shape(), jnp.float32),)
  if isinstance(module, Predictor):
    index = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    return (jax.ShapeDtypeStruct((1, 1, module.input_dim), jnp.float32), index, index)
  if embed_dim is None:
    raise ValueError(f"a {type(module).__name__} takes tokens: give their width, embed_dim")
  return (jax.ShapeDtypeStruct((1, _HEAD_TOKENS, embed_dim), jnp.float32),)


def init_params(module, rng, embed_dim: Optional[int] = None, *, jit: bool = False) -> dict:
  """Fresh parameters of ``module`` (its own initialisers), as a plain dict. ``jit``: compile the
  init (once per module: a jitted bound ``init`` is cached by its module)."""
  inputs = [jnp.zeros(x.shape, x.dtype) for x in example_inputs(module, embed_dim)]
  init = jax.jit(module.init) if jit else module.init
  return flax.core.unfreeze(init(rng, *inputs)["params"])


def abstract_params(module, embed_dim: Optional[int] = None) -> dict:
  """The parameter shapes of ``module`` (no computation)."""
  return jax.eval_shape(lambda k: init_params(module, k, embed_dim), jax.random.PRNGKey(0))
