"""The V-JEPA predictor: a narrow ViT that fills in the target tokens from the context tokens.

Context features are projected to the predictor width and given the predictor's own fixed sin-cos
positions; each target position gets the mask token of its mask type plus its position. The blocks
run on ``[context tokens, target tokens]`` (no re-sorting, as the reference) and the outputs at the
target positions are projected back to the encoder width.
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jepa_jax.models import layers
from jepa_jax.models import pos_embed
from jepa_jax.models.vit import gather_tokens, token_grid


class Predictor(nn.Module):
  """Attributes mirror the reference's ``vit_predictor``; ``num_heads`` is the encoder's."""
  img_size: int = 224
  num_frames: int = 16
  patch_size: int = 16
  tubelet_size: int = 2
  embed_dim: int = 768
  predictor_embed_dim: int = 384
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  uniform_power: bool = True
  num_mask_tokens: int = 2
  zero_init_mask_tokens: bool = True
  dtype: Any = jnp.float32
  attention: str = "xla"
  remat: str = "none"
  scan: bool = False

  @property
  def grid(self):
    return token_grid(self.img_size, self.num_frames, self.patch_size, self.tubelet_size)

  def position_table(self) -> jax.Array:
    return jnp.asarray(pos_embed.sincos_3d(self.predictor_embed_dim, self.grid, self.uniform_power))

  @nn.compact
  def __call__(self, context, context_idx, target_idx, mask_index: int = 0,
               context_valid: Optional[jax.Array] = None,
               target_valid: Optional[jax.Array] = None):
    """Predict target features.

    Args:
      context: ``[B, Kc, embed_dim]`` context-encoder outputs.
      context_idx: ``[B, Kc]`` token indices of the context.
      target_idx: ``[B, Kt]`` token indices to predict.
      mask_index: which mask token to use (static int; taken modulo ``num_mask_tokens``).
      context_valid / target_valid: optional ``[B, K]`` bool; padding is never attended to.

    Returns:
      ``[B, Kt, embed_dim]`` predictions.
    """
    pos = self.position_table().astype(self.dtype)[None]
    b = context.shape[0]
    x = layers.dense(self.predictor_embed_dim, "predictor_embed", self.dtype)(context)
    x = x + gather_tokens(jnp.broadcast_to(pos, (b,) + pos.shape[1:]), context_idx)

    token_init = (nn.initializers.zeros if self.zero_init_mask_tokens
                  else layers.reference_trunc_normal())
    mask_tokens = self.param("mask_tokens", token_init,
                             (self.num_mask_tokens, self.predictor_embed_dim), jnp.float32)
    token = mask_tokens[mask_index % self.num_mask_tokens].astype(self.dtype)
    targets = token + gather_tokens(jnp.broadcast_to(pos, (b,) + pos.shape[1:]), target_idx)

    num_context = x.shape[1]
    x = jnp.concatenate([x, targets], axis=1)
    kv_mask = None
    if context_valid is not None or target_valid is not None:
      cv = context_valid if context_valid is not None else jnp.ones(context_idx.shape, bool)
      tv = target_valid if target_valid is not None else jnp.ones(target_idx.shape, bool)
      kv_mask = jnp.concatenate([cv, tv], axis=1)
    x, _ = layers.BlockStack(self.depth, self.num_heads, self.mlp_ratio, self.dtype,
                             self.attention, self.remat, self.scan, name="stack")(x, kv_mask)
    x = layers.layer_norm("predictor_norm", self.dtype)(x)[:, num_context:]
    return layers.dense(self.embed_dim, "predictor_proj", self.dtype)(x)
