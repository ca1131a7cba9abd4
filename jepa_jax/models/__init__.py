"""V-JEPA networks: video ViT encoder, predictor, attentive probe.

Initialisation note. The reference's model classes draw every Linear from trunc_normal(0.02) and
then divide block i's ``attn.proj`` and ``mlp.fc2`` weights by sqrt(2 i); but its pretraining entry
point (``app/vjepa/utils.py: init_video_model``) re-draws every Linear afterwards, which undoes that
rescale. The released models were therefore trained WITHOUT it. ``rescale_residual_projections``
applies it when asked (``config.model.rescale_residual_init``); the pretraining configs leave it off
to match the released training, the attentive probe (whose rescale the reference keeps) uses it.
"""
from typing import Optional

import jax
import numpy as np

from jepa_jax.models.layers import (ATTENTION_IMPLEMENTATIONS, REMAT_POLICIES, BlockConfig,
                                    rescale_residual_projections)
from jepa_jax.models.predictor import Predictor
from jepa_jax.models.probe import AttentiveClassifier, build_probe
from jepa_jax.models.vit import (VIT_SIZES, VisionTransformer, analytic_encoder_params,
                                 build_encoder, gather_tokens, size_spec, token_grid)

__all__ = [
    "ATTENTION_IMPLEMENTATIONS", "REMAT_POLICIES", "VIT_SIZES", "AttentiveClassifier",
    "BlockConfig", "Predictor", "VisionTransformer", "analytic_encoder_params", "build_encoder",
    "build_predictor", "build_probe", "count_params", "gather_tokens",
    "rescale_residual_projections", "size_spec", "token_grid",
]


def build_predictor(encoder: VisionTransformer, embed_dim: int = 384, depth: int = 12,
                    num_mask_tokens: int = 2, zero_init_mask_tokens: bool = True,
                    num_heads: Optional[int] = None) -> Predictor:
  """The predictor matching ``encoder`` (same grid, positions, dtype and kernels).

  ``num_heads``: the predictor's own head count (V-JEPA 2's ``pred_num_heads``); None = the
  encoder's, as in V-JEPA. The MLP ratio is 4 whatever the encoder's: the reference's
  ``vit_predictor`` fixes it (a ViT-g's predictor has hidden 4 x 384, not 48/11 x 384)."""
  block = encoder.block.replace(num_heads=encoder.block.num_heads if num_heads is None
                                else num_heads, mlp_ratio=4.0)
  return Predictor(grid=encoder.grid, embed_dim=encoder.embed_dim, predictor_embed_dim=embed_dim,
                   depth=depth, block=block, uniform_power=encoder.uniform_power,
                   use_rope=encoder.use_rope, num_mask_tokens=num_mask_tokens,
                   zero_init_mask_tokens=zero_init_mask_tokens)


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
