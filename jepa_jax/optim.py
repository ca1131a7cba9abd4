"""V-JEPA's optimiser: AdamW with warm-up + cosine LR, a cosine weight-decay ramp, per-module
gradient clipping after warm-up, and the EMA momentum ramp of the target encoder.

``make_optimizer(OptimConfig)`` builds the optax chain; ``learning_rate``, ``weight_decay`` and
``ema_momentum`` are pure functions of the 0-based update index ``k``; ``ema_update`` applies the
EMA. They match the reference (``src/utils/schedulers.py``, ``app/vjepa/train.py``) number for
number, including what is easy to get wrong: LR and WD schedulers are stepped *before* each update
(update ``k`` uses step ``k + 1``), the momentum generator read *after* (``m(k)``); all schedules
span ``ipe_scale * epochs * ipe`` steps (112,500) but the run stops at ``epochs * ipe`` (90,000);
clipping starts when ``epoch > warmup`` with a 0-based epoch, one epoch after the warm-up, with
encoder and predictor clipped apart by torch's ``max_norm / (norm + 1e-6)``; weight decay skips
biases and 1-D tensors (a scanned stack's depth axis not counted), as the reference's groups.

``lr_schedule`` (V-JEPA 2's ``init_opt``, ``app/vjepa/utils.py`` of facebookresearch/vjepa2):
``warmup_cosine`` (with ``lr == final_lr``: warm-up then constant), ``linear_decay`` (the
cooldown's ``LinearDecaySchedule``: ``lr -> final_lr`` over the stretched span from the first
update, no warm-up) or ``wsd`` (``WSDSchedule``: warm-up, constant, then linear over the last
``anneal`` epochs). Constant EMA and WD come out of the same formulas; ``clip_grad=None`` clips
nothing, as V-JEPA 2.
"""
import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jepa_jax.errors import ConfigError
from jepa_jax.models import layers


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  epochs: int = 300
  ipe: int = 300                      # iterations per "epoch"
  ipe_scale: float = 1.25
  warmup: float = 40                  # epochs
  start_lr: float = 2e-4
  lr: float = 6.25e-4
  final_lr: float = 1e-6
  weight_decay: float = 0.04
  final_weight_decay: float = 0.4
  ema: tuple[float, float] = (0.998, 1.0)
  clip_grad: float | None = 10.0
  lr_schedule: str = "warmup_cosine"  # warmup_cosine | linear_decay | wsd (see module docstring)
  anneal: float = 0                   # wsd: epochs of the final linear decay
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8

  @classmethod
  def from_config(cls, cfg) -> "OptimConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in dict(cfg).items() if k in fields}
    if "ema" in values:
      values["ema"] = tuple(values["ema"])
    return cls(**values)

  @property
  def total_steps(self) -> int:
    """Updates actually run (the schedules are stretched beyond this by ``ipe_scale``)."""
    return int(self.epochs * self.ipe)

  @property
  def schedule_steps(self) -> int:
    return int(self.ipe_scale * self.epochs * self.ipe)

  @property
  def warmup_steps(self) -> int:
    return int(self.warmup * self.ipe)

  @property
  def clip_start_step(self) -> int:
    return int((math.floor(self.warmup) + 1) * self.ipe)


LR_SCHEDULES = ("warmup_cosine", "linear_decay", "wsd")


def learning_rate(cfg: OptimConfig, k):
  """LR used by update ``k`` (0-based)."""
  if cfg.lr_schedule not in LR_SCHEDULES:
    raise ConfigError(f"optim.lr_schedule must be one of {LR_SCHEDULES}, got {cfg.lr_schedule!r}")
  s = jnp.asarray(k, jnp.float32) + 1.0
  if cfg.lr_schedule == "linear_decay":
    return cfg.lr + s / max(1, cfg.schedule_steps) * (cfg.final_lr - cfg.lr)
  w = cfg.warmup_steps
  if cfg.lr_schedule == "wsd":
    anneal = int(cfg.anneal * cfg.ipe)
    stable_end = cfg.schedule_steps - anneal  # = warmup + the reference's T_max
    warm = cfg.start_lr + s / max(1, w) * (cfg.lr - cfg.start_lr)
    decay = cfg.lr + (s - stable_end) / max(1, anneal) * (cfg.final_lr - cfg.lr)
    return jnp.where(s < w, warm, jnp.where(s < stable_end, cfg.lr, decay))
  warm = cfg.start_lr + s / max(1, w) * (cfg.lr - cfg.start_lr)
  progress = (s - w) / max(1, cfg.schedule_steps - w)
  cosine = cfg.final_lr + (cfg.lr - cfg.final_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
  return jnp.where(s < w, warm, jnp.maximum(cfg.final_lr, cosine))


def weight_decay(cfg: OptimConfig, k):
  """Weight decay used by update ``k`` (0-based)."""
  s = jnp.asarray(k, jnp.float32) + 1.0
  progress = s / cfg.schedule_steps
  wd = cfg.final_weight_decay + (cfg.weight_decay - cfg.final_weight_decay) * 0.5 * (
      1.0 + jnp.cos(jnp.pi * progress))
  if cfg.final_weight_decay <= cfg.weight_decay:
    return jnp.maximum(cfg.final_weight_decay, wd)
  return jnp.minimum(cfg.final_weight_decay, wd)


def ema_momentum(cfg: OptimConfig, k):
  """Target-encoder momentum applied after update ``k`` (0-based)."""
  m0, m1 = cfg.ema
  return m0 + jnp.asarray(k, jnp.float32) * (m1 - m0) / (cfg.ipe * cfg.epochs * cfg.ipe_scale)


def decay_mask(params):
  """True where weight decay applies: ndim != 1 (depth axis of scanned blocks excluded), no bias."""

  def rule(path, leaf):
    names = jax.tree_util.keystr(path, simple=True, separator="/").split("/")
    ndim = leaf.ndim - (1 if layers.is_scanned(path) else 0)
    return ndim != 1 and "bias" not in names

  return jax.tree_util.tree_map_with_path(rule, params)


def global_norm(tree) -> jax.Array:
  """sqrt of the sum of squares of every leaf, in float32 (torch's ``clip_grad_norm_`` norm)."""
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


class ClipState(NamedTuple):
  count: jax.Array


def clip_by_module_norm(max_norm: float | None, start_step: int) -> optax.GradientTransformation:
  """torch's ``clip_grad_norm_`` applied to each top-level module of the gradient tree separately,
  only from update ``start_step`` on."""

  def init_fn(params):
    del params
    return ClipState(jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    if max_norm is None:
      return updates, ClipState(state.count + 1)
    active = state.count >= start_step

    def clip(tree):
      norm = global_norm(tree)
      coef = jnp.minimum(1.0, max_norm / (norm + 1e-6))
      coef = jnp.where(active, coef, 1.0)
      return jax.tree_util.tree_map(lambda g: g * coef.astype(g.dtype), tree)

    return {k: clip(v) for k, v in updates.items()}, ClipState(state.count + 1)

  return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(cfg: OptimConfig, lr=None, wd=None) -> optax.GradientTransformation:
  """Per-module clipping, then AdamW whose LR and WD are recorded in the optimiser state.

  ``lr``/``wd`` override the schedules (a float or a function of the update index); the default
  is the reference schedules above. The applied values of the last update can be read back with
  ``applied_hyperparams(opt_state)``.
  """
  lr = (lambda k: learning_rate(cfg, k)) if lr is None else lr
  wd = (lambda k: weight_decay(cfg, k)) if wd is None else wd
  adamw = optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
      learning_rate=lr, weight_decay=wd, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, mask=decay_mask)
  return optax.chain(clip_by_module_norm(cfg.clip_grad, cfg.clip_start_step), adamw)


def applied_hyperparams(opt_state) -> dict[str, Any]:
  """{'learning_rate', 'weight_decay'} used by the most recent update."""
  hp = opt_state[1].hyperparams
  return {"learning_rate": hp["learning_rate"], "weight_decay": hp["weight_decay"]}


def restart_schedules(opt_state):
  """An optimiser state whose schedules start again at update 0 while Adam's moments and step
  count carry on: V-JEPA 2's cooldown loads the pretraining optimiser (``opt.load_state_dict``)
  and builds fresh LR/WD schedulers. Works on ``make_optimizer``'s chain."""
  clip_state, adamw_state = opt_state
  # inject_hyperparams keeps one step counter of its own and one per scheduled hyperparameter.
  schedules = {k: v._replace(count=jnp.zeros_like(v.count)) if hasattr(v, "count") else v
               for k, v in adamw_state.hyperparams_states.items()}
  return (ClipState(jnp.zeros_like(clip_state.count)),
          adamw_state._replace(count=jnp.zeros_like(adamw_state.count),
                               hyperparams_states=schedules))


def ema_update(target, online, momentum):
  """target = m * target + (1 - m) * online, leaf by leaf (float32 arithmetic): optax's Polyak
  average with step size ``1 - m``."""
  return optax.incremental_update(online, target, 1.0 - momentum)
