"""V-JEPA networks: video ViT encoder, predictor, attentive probe.

Initialisation note. The reference's model classes draw every Linear from trunc_normal(0.02) and
then divide block i's ``attn.proj`` and ``mlp.fc2`` weights by sqrt(2 i); but its pretraining entry
point (``app/vjepa/utils.py: init_video_model``) re-draws every Linear afterwards, which undoes that
rescale. The released models were therefore trained WITHOUT it. ``rescale_residual_projections``
applies it when asked (``config.model.rescale_residual_init``); the pretraining configs leave it off
to match the released training, the attentive probe (whose rescale the reference keeps) uses it.
"""
import jax
import numpy as np

from jepa_jax.models.layers import (ATTENTION_IMPLEMENTATIONS, REMAT_POLICIES, BlockConfig,
                                    rescale_residual_projections)
from jepa_jax.models.predictor import Predictor
from jepa_jax.models.init import abstract_params, example_inputs, init_params
from jepa_jax.models.attentive_probe import AttentiveClassifier, build_probe
from jepa_jax.models.spec import (ARCHITECTURE_FIELDS, DTYPES, RUNTIME_FIELDS, ModelSpec,
                                  PredictorSpec, build_predictor, dtype_of, encoder_from_spec,
                                  from_spec)
from jepa_jax.models.vit import (VIT_SIZES, VJEPA21_LEVELS, VisionTransformer,
                                 analytic_encoder_params, build_encoder, gather_tokens, size_spec,
                                 token_grid, vjepa21_fields)

__all__ = [
    "ARCHITECTURE_FIELDS", "ATTENTION_IMPLEMENTATIONS", "DTYPES", "REMAT_POLICIES",
    "RUNTIME_FIELDS", "VIT_SIZES", "VJEPA21_LEVELS", "AttentiveClassifier", "BlockConfig",
    "ModelSpec", "Predictor", "PredictorSpec", "VisionTransformer", "abstract_params",
    "analytic_encoder_params", "build_encoder", "build_predictor", "build_probe", "count_params",
    "dtype_of", "encoder_from_spec", "example_inputs", "from_spec", "gather_tokens",
    "init_params", "rescale_residual_projections", "size_spec", "token_grid", "vjepa21_fields",
]


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
