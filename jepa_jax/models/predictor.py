"""The V-JEPA predictor: a narrow ViT that fills in the target tokens from the context tokens.

Context features are projected to the predictor width with its own fixed sin-cos positions (or,
V-JEPA 2's ``use_rope``, q/k rotated by each token's grid coordinates in every block); each target
gets its mask type's mask token plus its position; the blocks run on ``[context, target]`` and the
target outputs are projected back to the encoder width.

Not sorted: the V-JEPA 2 reference sorts [context, target] by token index before its blocks and
unsorts after; with positions carried by each token every block is permutation-equivariant, so the
sort changes only summation order and is skipped (the golden tests of ``vjepa2_rope_tiny_v1.npz``
hold). Padding: each clip's sequence is permuted (stable) to ``[valid context, valid targets,
padding]``, so blocks see padding as a per-clip length, the form fused attention kernels take.

V-JEPA 2.1 (``app/vjepa_2_1/models/predictor.py``) is fields: ``levels`` (read and predict L
concatenated levels), ``return_context`` (also predict the context positions),
``modality_embedding``, ``rope_interleaved`` / ``rope_base_grid``; reference lines in
docs/vjepa21.md.
"""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jepa_jax import sharding
from jepa_jax.models import layers
from jepa_jax.models import pos_embed
from jepa_jax.models import rope as rope_lib
from jepa_jax.models.vit import gather_tokens


class Predictor(nn.Module):
  """Attributes mirror the reference's ``vit_predictor``. ``block``: the encoder's block settings
  with the predictor's heads (the encoder's in V-JEPA, its own ``pred_num_heads`` (12) in V-JEPA
  2) and MLP ratio 4 (``models.build_predictor`` derives it from the encoder). ``grid``: the
  encoder's ``(T', H', W')`` token grid, which token indices number row-major."""
  grid: tuple[int, int, int] = (8, 14, 14)
  embed_dim: int = 768
  predictor_embed_dim: int = 384
  depth: int = 12
  block: layers.BlockConfig = layers.BlockConfig(num_heads=12)
  uniform_power: bool = True
  use_rope: bool = False
  num_mask_tokens: int = 2
  zero_init_mask_tokens: bool = True
  levels: int = 1
  out_embed_dim: Optional[int] = None
  return_context: bool = False
  modality_embedding: bool = False
  rope_interleaved: bool = False
  rope_base_grid: Optional[int] = None

  def position_table(self) -> jax.Array:
    if self.use_rope:
      raise ValueError("a RoPE predictor has no position table (positions rotate q/k per block)")
    _, h, w = self.grid
    if h != w:
      raise ValueError(f"non-square grids ({h}x{w} patches) need use_rope=True")
    return jnp.asarray(pos_embed.sincos_3d(self.predictor_embed_dim, self.grid, self.uniform_power))

  @property
  def input_dim(self) -> int:
    """Width of the context features it reads: the encoder's ``levels`` concatenated."""
    return self.levels * self.embed_dim

  @property
  def output_dim(self) -> int:
    """Width of the predictions: ``levels`` x ``out_embed_dim`` (default the encoder's width)."""
    return self.levels * (self.out_embed_dim or self.embed_dim)

  def _embed(self, context):
    if self.levels == 1:
      return layers.dense(self.predictor_embed_dim, "predictor_embed", self.block.dtype)(context)
    x = layers.dense(self.embed_dim, "predictor_embed_0", self.block.dtype)(context)
    return layers.dense(self.predictor_embed_dim, "predictor_embed_2", self.block.dtype)(
        layers.gelu(x))

  @nn.compact
  def __call__(self, context, context_idx, target_idx, mask_index: int = 0,
               context_valid: Optional[jax.Array] = None,
               target_valid: Optional[jax.Array] = None, image: bool = False):
    """Predict target features.

    Args:
      context: ``[B, Kc, embed_dim * levels]`` context-encoder outputs.
      context_idx: ``[B, Kc]`` token indices of the context.
      target_idx: ``[B, Kt]`` token indices to predict.
      mask_index: which mask token to use (static int; taken modulo ``num_mask_tokens``).
      context_valid / target_valid: optional ``[B, K]`` bool, any pattern; padding is never
        attended to.
      image: (``modality_embedding``) the clips are images: add ``img_mod_embed``.

    Returns:
      ``[B, Kt, output_dim]`` predictions; with ``return_context`` the pair (predictions,
      ``[B, Kc, output_dim]`` context predictions).
    """
    x = self._embed(context)
    token_init = (nn.initializers.zeros if self.zero_init_mask_tokens
                  else layers.reference_trunc_normal())
    mask_tokens = self.param("mask_tokens", token_init,
                             (self.num_mask_tokens, self.predictor_embed_dim), jnp.float32)
    token = mask_tokens[mask_index % self.num_mask_tokens].astype(self.block.dtype)
    if self.use_rope:
      targets = jnp.broadcast_to(token, target_idx.shape + (self.predictor_embed_dim,))
    else:
      pos = self.position_table().astype(self.block.dtype)
      x = x + jnp.take(pos, context_idx, axis=0)
      targets = token + jnp.take(pos, target_idx, axis=0)

    num_context = x.shape[1]
    x = jnp.concatenate([x, targets], axis=1)
    if self.modality_embedding:
      init = nn.initializers.normal(1e-6)
      video = self.param("video_mod_embed", init, (1, 1, self.predictor_embed_dim), jnp.float32)
      img = self.param("img_mod_embed", init, (1, 1, self.predictor_embed_dim), jnp.float32)
      x = x + (img if image else video).astype(x.dtype)
    seq_idx = jnp.concatenate([context_idx, target_idx], axis=1)  # each token's grid index
    lengths = target_rows = context_rows = None
    if context_valid is not None or target_valid is not None:
      cv = context_valid if context_valid is not None else jnp.ones(context_idx.shape, bool)
      tv = target_valid if target_valid is not None else jnp.ones(target_idx.shape, bool)
      valid = jnp.concatenate([cv, tv], axis=1)
      order = jnp.argsort(~valid, axis=1, stable=True)  # valid first, each part in its order
      x = gather_tokens(x, order)
      lengths = jnp.sum(valid, axis=1, dtype=jnp.int32)
      # Where each target ended up: the inverse permutation at the target slots.
      inverse = jnp.argsort(order, axis=1)
      target_rows, context_rows = inverse[:, num_context:], inverse[:, :num_context]
      seq_idx = gather_tokens(seq_idx, order)
    rope = None
    if self.use_rope:
      rope = rope_lib.rope_tables(seq_idx, self.grid,
                                  self.predictor_embed_dim // self.block.num_heads,
                                  self.block.dtype, interleaved=self.rope_interleaved,
                                  base_grid=self.rope_base_grid)
    x = sharding.constrain(x, layers.ACTIVATION)
    x, _ = layers.BlockStack(self.depth, self.block, name="stack")(x, lengths, rope=rope)
    seq = x
    x = x[:, num_context:] if target_rows is None else gather_tokens(x, target_rows)
    x = sharding.constrain(x, layers.ACTIVATION)
    norm = layers.layer_norm("predictor_norm", self.block.dtype)
    pred = layers.dense(self.output_dim, "predictor_proj", self.block.dtype)(norm(x))
    if not self.return_context:
      return pred
    ctx = seq[:, :num_context] if context_rows is None else gather_tokens(seq, context_rows)
    ctx = sharding.constrain(ctx, layers.ACTIVATION)
    return pred, layers.dense(self.output_dim, "predictor_proj_context", self.block.dtype)(
        norm(ctx))
