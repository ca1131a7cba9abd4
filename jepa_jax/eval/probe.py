"""Attentive probes: model, optimiser, jitted train and eval steps, view aggregation, and a saved
probe loaded back (``load_saved_probe``).

Only the probe trains; the encoder's tokens arrive cached, or are computed in the same jitted step
under ``stop_gradient`` (streaming). The optimiser is the reference's ``init_opt``
(``evals/video_classification_frozen/eval.py``): AdamW (0.9/0.999, eps 1e-8) with weight decay on
non-bias tensors with ndim != 1 (the query token included); linear LR warm-up over ``warmup``
epochs, then cosine to ``final_lr``; WD cosine to ``final_weight_decay`` (the reference's default
1e-6); both stepped before each update (update ``k`` uses ``k + 1``); gradient norm clipped at 1.
Init: trunc_normal(0.02), the cross-attention block's ``mlp.fc2`` divided by sqrt(2) and extra
block ``i`` (from 2) by sqrt(2 i), as the reference.

V-JEPA 2 (facebookresearch/vjepa2, same file): extra blocks on the tokens before pooling
(``blocks_on="tokens"``), rescaled by sqrt(2 i) from i = 1 and ``mlp.fc2`` by sqrt(2 (depth - 1))
(sqrt(2) at depth 1); decay on every parameter (``weight_decay_on="all"``); no clipping; several
probes per run (``config.probe_grid``).
"""
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from jepa_jax import checkpoint as ckpt_lib
from jepa_jax import models
from jepa_jax import optim
from jepa_jax import sharding
from jepa_jax.errors import ConfigError
from jepa_jax.eval.settings import PROBE_DTYPES, ProbeOptim


class ProbeState(train_state.TrainState):
  """The probe's parameters and AdamW state (``apply_fn`` is the probe's ``apply``)."""


def probe_config(num_classes: int, embed_dim: int, encoder_heads: int, probe_cfg) -> dict:
  """The saved description of a probe (``checkpoint.PROBE_CONFIG_KEYS``): what rebuilds it.
  ``probe_cfg``: ``eval.settings.ProbeSettings`` (or an object with its fields; ``blocks_on``
  defaults to ``"query"``)."""
  heads = probe_cfg.num_heads or encoder_heads
  if embed_dim % heads:
    raise ConfigError(f"probe num_heads {heads} does not divide the encoder width {embed_dim}")
  return dict(num_classes=int(num_classes), num_heads=int(heads),
              mlp_ratio=float(probe_cfg.mlp_ratio), depth=int(probe_cfg.depth), num_queries=1,
              embed_dim=int(embed_dim), blocks_on=getattr(probe_cfg, "blocks_on", "query"))


def build_probe(num_classes: int, embed_dim: int, encoder_heads: int, probe_cfg):
  return probe_from_config(probe_config(num_classes, embed_dim, encoder_heads, probe_cfg),
                           probe_cfg.dtype)


def probe_from_config(saved: dict, dtype: str = "float32"):
  """The probe module of a saved probe config (``probe_config``, or a converted probe's)."""
  models.dtype_of(dtype, "config.probe.dtype", PROBE_DTYPES)
  if int(saved.get("num_queries", 1)) != 1:
    raise ConfigError(f"the probe has {saved['num_queries']} queries; jepa_jax's eval uses 1")
  return _probe(int(saved["num_classes"]), int(saved["num_heads"]), float(saved["mlp_ratio"]),
                int(saved["depth"]), dtype, saved.get("blocks_on", "query"))


@functools.lru_cache(maxsize=32)
def _probe(num_classes, num_heads, mlp_ratio, depth, dtype, blocks_on="query"):
  # One module object per setting: its ``apply`` is a static part of the train state, so repeated
  # runs (seeds, fractions, labels) hit the jit cache instead of recompiling.
  return models.build_probe(num_classes, num_heads, mlp_ratio=mlp_ratio, depth=depth,
                            dtype=models.DTYPES[dtype], blocks_on=blocks_on)


def abstract_params(probe, embed_dim: int):
  """The probe's parameter shapes for ``embed_dim``-wide tokens (no computation)."""
  return models.abstract_params(probe, embed_dim)


def init_probe_params(probe, embed_dim: int, seed: int):
  params = models.init_params(probe, jax.random.PRNGKey(seed), embed_dim, jit=True)
  fc2 = params["mlp"]["fc2"]
  if probe.blocks_on == "tokens":
    # V-JEPA 2's _rescale_blocks: extra blocks 1, 2, ...; the cross-attention fc2 by the last one.
    fc2_layer, first_block = max(1, probe.depth - 1), 1
  else:
    # V-JEPA's: the cross-attention block is layer 1, extra blocks 2, 3, ...
    fc2_layer, first_block = 1, 2
  params["mlp"]["fc2"] = dict(fc2, kernel=fc2["kernel"] / math.sqrt(2.0 * fc2_layer))
  if "stack" in params:
    params["stack"] = models.rescale_residual_projections(params["stack"],
                                                          first_layer=first_block)
  return params


def schedule_config(optim_cfg, total_steps: int, steps_per_epoch: int) -> optim.OptimConfig:
  """The probe's schedules as ``optim``'s, counted in steps: warm-up over ``warmup`` epochs of
  ``steps_per_epoch`` updates, cosine LR and WD over ``total_steps`` (no ``ipe_scale`` stretch,
  so they reach their final values on the last update)."""
  return optim.OptimConfig(
      epochs=int(total_steps), ipe=1, ipe_scale=1.0, warmup=optim_cfg.warmup * steps_per_epoch,
      start_lr=optim_cfg.start_lr, lr=optim_cfg.lr, final_lr=optim_cfg.final_lr,
      weight_decay=optim_cfg.weight_decay, final_weight_decay=optim_cfg.final_weight_decay,
      clip_grad=None, lr_schedule="warmup_cosine")


def lr_schedule(optim_cfg, total_steps: int, steps_per_epoch: int) -> Callable:
  """``WarmupCosineSchedule`` read at ``k + 1`` for 0-based update ``k`` (``optim.learning_rate``)."""
  cfg = schedule_config(optim_cfg, total_steps, steps_per_epoch)
  return lambda k: optim.learning_rate(cfg, k)


def wd_schedule(optim_cfg, total_steps: int) -> Callable:
  """``CosineWDSchedule`` read at ``k + 1``, clamped at the final value (``optim.weight_decay``)."""
  cfg = schedule_config(optim_cfg, total_steps, 1)
  return lambda k: optim.weight_decay(cfg, k)


# Weight decay on tensors with ndim != 1 that are not biases: the same rule as pretraining's.
decay_mask = optim.decay_mask


@functools.lru_cache(maxsize=32)
def _optimizer(o: ProbeOptim, total_steps: int, steps_per_epoch: int):
  adamw = optax.adamw(lr_schedule(o, total_steps, steps_per_epoch), b1=o.b1, b2=o.b2,
                      eps=o.eps, weight_decay=wd_schedule(o, total_steps),
                      mask=decay_mask if o.weight_decay_on == "weights" else None)
  if o.clip_grad:
    return optax.chain(optax.clip_by_global_norm(o.clip_grad), adamw)
  return adamw


def make_optimizer(o: ProbeOptim, total_steps: int,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """AdamW with the reference's schedules (``o``: ``eval.settings.ProbeOptim``, read and checked).
  Memoised on the settings: the optimiser is a static part of the train state, so reusing the
  same object lets repeated probe runs (seeds, low-shot fractions) reuse one compiled step
  instead of recompiling."""
  return _optimizer(o, int(total_steps), int(steps_per_epoch))


def create_state(probe, params, tx) -> ProbeState:
  return ProbeState.create(apply_fn=probe.apply, params=params, tx=tx)


# ---------------------------------------------------------------------------------------------
# Steps. ``tokens`` is [B, V, L, D]: V views of L tokens each (segments already concatenated).


def aggregate_views(logits, mode: str = "softmax"):
  """``[B, V, C]`` per-view logits -> ``[B, C]`` scores for ranking.

  ``softmax`` averages the views' probabilities (the reference's run_one_epoch); ``logits``
  averages the logits. Both give the same ranking for V = 1.
  """
  if mode == "softmax":
    return jnp.mean(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=1)
  if mode == "logits":
    return jnp.mean(logits.astype(jnp.float32), axis=1)
  raise ConfigError(f"config.view_aggregation must be 'softmax' or 'logits', got {mode!r}")


def view_logits(apply_fn, params, tokens):
  """The probe on every view: ``[B, V, L, D] -> [B, V, C]``."""
  b, v, l, d = tokens.shape
  return apply_fn({"params": params}, tokens.reshape(b * v, l, d)).reshape(b, v, -1)


def topk_correct(scores, labels, k: int):
  """``[B]`` bool: the label is among the ``k`` highest scores (ties counted as the rank order)."""
  k = min(k, scores.shape[-1])
  top = jax.lax.top_k(scores, k)[1]
  return jnp.any(top == labels[:, None], axis=-1)


def train_step(state: ProbeState, tokens, labels, weights):
  """One AdamW update on a weighted batch (weight 0 = padding). Returns (state, metrics)."""

  def loss_fn(params):
    logits = view_logits(state.apply_fn, params, tokens)  # [B, V, C]; V = 1 in training
    ce = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels[:, None].repeat(logits.shape[1], axis=1)).mean(axis=1)
    loss = jnp.sum(ce * weights) / jnp.maximum(jnp.sum(weights), 1.0)
    return loss, logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads)
  correct = topk_correct(aggregate_views(logits), labels, 1)
  ce_sum = loss * jnp.maximum(jnp.sum(weights), 1.0)
  return state, dict(loss=ce_sum, top1=jnp.sum(correct * weights), count=jnp.sum(weights))


def eval_step(state: ProbeState, tokens, labels, weights, aggregation: str = "softmax"):
  """Summed top-1/top-5 hits and cross-entropy of the view-averaged predictions."""
  logits = view_logits(state.apply_fn, state.params, tokens)
  scores = aggregate_views(logits, aggregation)
  probs = scores if aggregation == "softmax" else jax.nn.softmax(scores, axis=-1)
  nll = -jnp.log(jnp.take_along_axis(probs, labels[:, None], axis=1)[:, 0] + 1e-12)
  return dict(top1=jnp.sum(topk_correct(scores, labels, 1) * weights),
              top5=jnp.sum(topk_correct(scores, labels, 5) * weights),
              loss=jnp.sum(nll * weights), count=jnp.sum(weights))


_train_cached = jax.jit(train_step, donate_argnums=0)
_eval_cached = jax.jit(eval_step, static_argnames="aggregation")


@functools.lru_cache(maxsize=None)
def _cached_steps(mesh):
  """The cached-feature steps traced with ``mesh``'s activation rules, jitted once per mesh."""
  if mesh is None:
    return _train_cached, _eval_cached
  return (jax.jit(sharding.with_activation_sharding(train_step, mesh), donate_argnums=0),
          jax.jit(sharding.with_activation_sharding(eval_step, mesh),
                  static_argnames="aggregation"))


def make_steps(aggregation: str, token_fn: Callable | None = None, encoder_params=None,
               mesh=None):
  """``(train, evaluate)``, both ``(state, x, labels, weights)``.

  Without ``token_fn`` (cached features) ``x`` is tokens ``[B, V, L, D]`` and the steps are
  module-level jits, compiled once per shape, probe and mesh. With it (streaming) ``x`` is the
  batch's uint8 pixels and the frozen encoder runs inside the same jitted program; its parameters
  are passed as an argument, not captured as constants. ``mesh``: the data mesh the batches are
  split over; the steps are traced with its activation rules (``sharding.constrain``).
  """
  if token_fn is None:
    train_j, eval_j = _cached_steps(mesh)
    return train_j, lambda s, t, y, w: eval_j(s, t, y, w, aggregation=aggregation)
  train_j = jax.jit(sharding.with_activation_sharding(
      lambda s, e, x, y, w: train_step(s, token_fn(e, x), y, w), mesh), donate_argnums=0)
  eval_j = jax.jit(sharding.with_activation_sharding(
      lambda s, e, x, y, w: eval_step(s, token_fn(e, x), y, w, aggregation), mesh))
  return (lambda s, x, y, w: train_j(s, encoder_params, x, y, w),
          lambda s, x, y, w: eval_j(s, encoder_params, x, y, w))


def summarize(sums: list[dict]) -> dict:
  """Per-batch sums (``top1``, ``top5``, ``loss``, ``count``) -> accuracies in percent and the
  mean loss over the counted (valid) examples."""
  tot = {k: float(np.sum([np.asarray(m[k]) for m in sums])) for k in sums[0]}
  n = max(tot.pop("count"), 1.0)
  return {k: (100.0 * v / n if k in ("top1", "top5") else v / n)
          for k, v in tot.items()} | {"count": int(n)}


def load_saved_probe(path: str, embed_dim: int, dtype: str):
  """``(probe module, params, probe_config, eval info or None)`` of a probe checkpoint, checked
  against the encoder's width."""
  if not path:
    raise ConfigError("config.train=False needs config.probe_checkpoint: a probe directory (an "
                      "eval run's probes/<run>, or python -m jepa_jax.convert --kind probe --out "
                      "DIR)")
  params, saved = ckpt_lib.load_probe(path)
  if int(saved["embed_dim"]) != embed_dim:
    raise ckpt_lib.CheckpointError(
        f"probe {path} reads {saved['embed_dim']}-wide tokens but the encoder makes {embed_dim}-wide "
        "ones; give the encoder the probe was trained on (config.checkpoint)")
  probe = probe_from_config(saved, dtype)
  ckpt_lib.check_shapes(params, abstract_params(probe, embed_dim), f"probe {path}")
  eval_info = ckpt_lib.read_probe_config(path).get("eval")
  return probe, params, saved, eval_info
