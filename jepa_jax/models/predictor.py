"""The V-JEPA predictor: a narrow ViT that fills in the target tokens from the context tokens.

Context features are projected to the predictor width and given the predictor's own fixed sin-cos
positions; each target position gets the mask token of its mask type plus its position. The blocks
run on ``[context tokens, target tokens]`` (no re-sorting, as the reference) and the outputs at the
target positions are projected back to the encoder width.

Padding. With validity masks, each clip's sequence is permuted to ``[valid context, valid
targets, padding]`` before the blocks (a stable sort on validity) and the target outputs are read
back at their permuted positions, so the blocks see padding as a per-clip length, the form fused
attention kernels take (``layers.dot_product_attention``). Positions are added before the
permutation and every block is permutation-equivariant, so the outputs are those of the unpermuted
sequence with padded keys masked.
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
      context_valid / target_valid: optional ``[B, K]`` bool, any pattern; padding is never
        attended to.

    Returns:
      ``[B, Kt, embed_dim]`` predictions.
    """
    pos = self.position_table().astype(self.dtype)
    x = layers.dense(self.predictor_embed_dim, "predictor_embed", self.dtype)(context)
    x = x + jnp.take(pos, context_idx, axis=0)

    token_init = (nn.initializers.zeros if self.zero_init_mask_tokens
                  else layers.reference_trunc_normal())
    mask_tokens = self.param("mask_tokens", token_init,
                             (self.num_mask_tokens, self.predictor_embed_dim), jnp.float32)
    token = mask_tokens[mask_index % self.num_mask_tokens].astype(self.dtype)
    targets = token + jnp.take(pos, target_idx, axis=0)

    num_context = x.shape[1]
    x = jnp.concatenate([x, targets], axis=1)
    lengths = target_rows = None
    if context_valid is not None or target_valid is not None:
      cv = context_valid if context_valid is not None else jnp.ones(context_idx.shape, bool)
      tv = target_valid if target_valid is not None else jnp.ones(target_idx.shape, bool)
      valid = jnp.concatenate([cv, tv], axis=1)
      order = jnp.argsort(~valid, axis=1, stable=True)  # valid first, each part in its order
      x = gather_tokens(x, order)
      lengths = jnp.sum(valid, axis=1, dtype=jnp.int32)
      # Where each target ended up: the inverse permutation at the target slots.
      target_rows = jnp.argsort(order, axis=1)[:, num_context:]
    x, _ = layers.BlockStack(self.depth, self.num_heads, self.mlp_ratio, self.dtype,
                             self.attention, self.remat, self.scan, name="stack")(x, lengths)
    x = x[:, num_context:] if target_rows is None else gather_tokens(x, target_rows)
    x = layers.layer_norm("predictor_norm", self.dtype)(x)
    return layers.dense(self.embed_dim, "predictor_proj", self.dtype)(x)
