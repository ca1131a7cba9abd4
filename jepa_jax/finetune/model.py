"""The fine-tuned classifier: encoder + head, layer-wise LR decay and the optimiser.

Parameters are one tree ``{"encoder": ..., "head": ...}``; the head is ``attentive`` (the frozen
eval's probe, initialised as there) or ``linear`` (VideoMAE's: token mean, ``fc_norm``, a linear
layer with initial weights scaled by ``init_scale``, 0.001). Layer-wise LR decay (BEiT/VideoMAE's
``LayerDecayValueAssigner``): with ``L`` blocks, the patch embedding is layer 0, block ``i`` layer
``i + 1``, the rest (final norm, head) ``L + 1``; layer ``l``'s factor ``decay ** (L + 1 - l)``
multiplies each parameter's AdamW update, weight-decay term included, as a per-group learning rate
does in torch's AdamW.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jepa_jax import models, optim
from jepa_jax.checkpoint import CheckpointError
from jepa_jax.eval import probe as probe_lib
from jepa_jax.models import layers


class MeanPoolClassifier(nn.Module):
  """tokens ``[B, N, D]`` -> logits ``[B, num_classes]``: mean, LayerNorm, Dense."""
  num_classes: int
  init_scale: float = 0.001
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens, token_valid=None):
    del token_valid
    x = jnp.mean(tokens.astype(jnp.float32), axis=1)
    x = layers.layer_norm("fc_norm", self.dtype)(x.astype(self.dtype))
    scale = self.init_scale

    def kernel_init(key, shape, dtype=jnp.float32):
      return layers.reference_trunc_normal()(key, shape, dtype) * scale

    return nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                    kernel_init=kernel_init, name="head")(x)


def build_head(s, num_classes: int, embed_dim: int, encoder_heads: int):
  """The head of ``s.head`` (``finetune.settings.Settings``)."""
  if s.head.kind == "attentive":
    return probe_lib.build_probe(num_classes, embed_dim, encoder_heads, s.head)
  return MeanPoolClassifier(num_classes, s.head.init_scale, models.DTYPES[s.head.dtype])


def head_num_classes(head_params) -> int:
  """The classes of a head's parameters: its last layer's bias (``head`` of the linear head,
  ``linear`` of the attentive one)."""
  last = head_params.get("head", head_params.get("linear"))
  if last is None or "bias" not in last:
    raise CheckpointError(f"its head is not a fine-tuning head (entries {sorted(head_params)}); "
                          "give a fine-tuning workdir as --checkpoint, or a probe with --probe")
  return int(last["bias"].shape[0])


def init_head(head, embed_dim: int, seed: int):
  if isinstance(head, MeanPoolClassifier):
    return models.init_params(head, jax.random.PRNGKey(seed), embed_dim, jit=True)
  return probe_lib.init_probe_params(head, embed_dim, seed)


def layer_ids(params, depth: int):
  """A tree like ``params`` of each parameter's layer id (module docstring); scanned blocks get
  an int array ``[depth]`` (1..depth), one id per stacked layer."""

  def rule(path, leaf):
    names = jax.tree_util.keystr(path, simple=True, separator="/").split("/")
    if names[0] != "encoder":
      return depth + 1
    if "patch_embed" in names:
      return 0
    for name in names:
      if name.startswith("blocks_") and name[7:].isdigit():
        return int(name[7:]) + 1
    if layers.is_scanned(path):
      return jnp.arange(1, depth + 1)
    return depth + 1

  return jax.tree_util.tree_map_with_path(rule, params)


def layer_scales(params, depth: int, decay: float, freeze_encoder: bool = False):
  """Per-parameter LR multipliers ``decay ** (depth + 1 - layer id)``, shaped to broadcast
  against each leaf (scanned blocks: ``[depth, 1, ...]``). ``freeze_encoder``: 0 for the
  encoder (the frozen-probe baseline: no update, no weight decay)."""

  def scale(path, leaf, lid):
    s = jnp.asarray(decay, jnp.float32) ** (depth + 1 - jnp.asarray(lid, jnp.float32))
    names = jax.tree_util.keystr(path, simple=True, separator="/").split("/")
    if freeze_encoder and names[0] == "encoder":
      s = jnp.zeros_like(s)
    return s.reshape(s.shape + (1,) * (leaf.ndim - s.ndim))

  ids = layer_ids(params, depth)
  return jax.tree_util.tree_map_with_path(lambda p, leaf, lid: scale(p, leaf, lid), params, ids)


def scale_by_tree(scales) -> optax.GradientTransformation:
  """Multiply each update by the matching leaf of ``scales`` (constants, no state)."""

  def update_fn(updates, state, params=None):
    del params
    return jax.tree_util.tree_map(lambda u, s: u * s.astype(u.dtype), updates, scales), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def optim_config(s, steps_per_epoch: int) -> optim.OptimConfig:
  """The project's schedules (``optim.learning_rate``: linear warm-up from ``start_lr``, cosine
  to ``final_lr``; constant weight decay) with VideoMAE's LR scaling ``lr * batch / 256``
  (``s``: ``finetune.settings.Settings``)."""
  o = s.optim
  scale = s.batch_size / o.lr_batch_base
  return optim.OptimConfig(
      epochs=s.epochs, ipe=steps_per_epoch, ipe_scale=1.0, warmup=o.warmup,
      start_lr=o.start_lr * scale, lr=o.lr * scale, final_lr=o.final_lr * scale,
      weight_decay=o.weight_decay, final_weight_decay=o.weight_decay, clip_grad=o.clip_grad,
      b1=o.b1, b2=o.b2, eps=o.eps)


def make_optimizer(s, params, depth: int, steps_per_epoch: int):
  """``optim.make_optimizer`` (clipping per module, AdamW with the decay mask of pretraining,
  LR/WD recorded in the state) followed by the layer-wise LR factors."""
  scales = layer_scales(params, depth, s.layer_decay, s.freeze_encoder)
  return optax.chain(optim.make_optimizer(optim_config(s, steps_per_epoch)),
                     scale_by_tree(scales))


def applied_hyperparams(opt_state) -> dict:
  return optim.applied_hyperparams(opt_state[0])
