"""V-JEPA networks: video ViT encoder, predictor, attentive probe.

Initialisation note. The reference's model classes draw every Linear from trunc_normal(0.02) and
then divide block i's ``attn.proj`` and ``mlp.fc2`` weights by sqrt(2 i); but its pretraining entry
point (``app/vjepa/utils.py: init_video_model``) re-draws every Linear afterwards, which undoes that
rescale. The released models were therefore trained WITHOUT it. ``rescale_residual_projections``
applies it when asked (``config.model.rescale_residual_init``); the pretraining configs leave it off
to match the released training, the attentive probe (whose rescale the reference keeps) uses it.
"""
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jepa_jax.models.layers import ATTENTION_IMPLEMENTATIONS, REMAT_POLICIES
from jepa_jax.models.predictor import Predictor
from jepa_jax.models.probe import AttentiveClassifier
from jepa_jax.models.vit import (VIT_SIZES, VisionTransformer, analytic_encoder_params,
                                 build_encoder, gather_tokens, size_spec, token_grid)

__all__ = [
    "ATTENTION_IMPLEMENTATIONS", "REMAT_POLICIES", "VIT_SIZES", "AttentiveClassifier", "Predictor",
    "VisionTransformer", "analytic_encoder_params", "build_encoder", "build_predictor",
    "count_params", "gather_tokens", "rescale_residual_projections", "size_spec", "token_grid",
]


def build_predictor(encoder: VisionTransformer, embed_dim: int = 384, depth: int = 12,
                    num_mask_tokens: int = 2, zero_init_mask_tokens: bool = True,
                    num_heads: Optional[int] = None, **overrides) -> Predictor:
  """The predictor matching ``encoder`` (same grid, positions, dtype and kernels).

  ``num_heads``: the predictor's own head count (V-JEPA 2's ``pred_num_heads``); None = the
  encoder's, as in V-JEPA. The MLP ratio is 4 whatever the encoder's: the reference's
  ``vit_predictor`` fixes it (a ViT-g's predictor has hidden 4 x 384, not 48/11 x 384)."""
  kwargs = dict(img_size=encoder.img_size, num_frames=encoder.num_frames,
                patch_size=encoder.patch_size, tubelet_size=encoder.tubelet_size,
                embed_dim=encoder.embed_dim, predictor_embed_dim=embed_dim, depth=depth,
                num_heads=encoder.num_heads if num_heads is None else num_heads,
                mlp_ratio=4.0, uniform_power=encoder.uniform_power,
                use_rope=encoder.use_rope, num_mask_tokens=num_mask_tokens,
                zero_init_mask_tokens=zero_init_mask_tokens, dtype=encoder.dtype,
                attention=encoder.attention, remat=encoder.remat, scan=encoder.scan)
  kwargs.update(overrides)
  return Predictor(**kwargs)


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def rescale_residual_projections(params, first_layer: int = 1):
  """Divide each block's ``attn/proj`` and ``mlp/fc2`` kernels by sqrt(2 * layer), layer 1-based.

  Works on any tree holding ``BlockStack`` parameters, unscanned (``blocks_i``) or scanned
  (``blocks/block`` with a leading depth axis). ``first_layer`` is the 1-based id of the first
  block (the probe's extra blocks start at 2, after its cross-attention block).
  """

  def visit(tree):
    if not isinstance(tree, dict):
      return tree
    out = {}
    for name, sub in tree.items():
      if name.startswith("blocks_") and name[7:].isdigit():
        out[name] = _scale_block(sub, 1.0 / math.sqrt(2.0 * (int(name[7:]) + first_layer)))
      elif name == "blocks" and isinstance(sub, dict) and "block" in sub:
        depth = jax.tree_util.tree_leaves(sub)[0].shape[0]
        ids = jnp.arange(first_layer, first_layer + depth, dtype=jnp.float32)
        out[name] = {"block": _scale_block(sub["block"], 1.0 / jnp.sqrt(2.0 * ids))}
      else:
        out[name] = visit(sub)
    return out

  return visit(_to_dict(params))


def _scale_block(block, factor):
  block = _to_dict(block)
  for path in (("attn", "proj"), ("mlp", "fc2")):
    leaf = block[path[0]][path[1]]
    f = jnp.asarray(factor, leaf["kernel"].dtype)
    f = f.reshape(f.shape + (1,) * (leaf["kernel"].ndim - f.ndim))
    block[path[0]][path[1]] = dict(leaf, kernel=leaf["kernel"] * f)
  return block


def _to_dict(tree):
  """A mutable nested-dict copy (works for FrozenDict and dict)."""
  if hasattr(tree, "items"):
    return {k: _to_dict(v) for k, v in tree.items()}
  return tree
