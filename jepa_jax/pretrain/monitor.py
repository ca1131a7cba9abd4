"""Collapse monitoring: cheap statistics of a training step's targets and predictions, and the rule
that says a run collapsed.

A JEPA can lower its loss by making the target features uninformative. ``step_statistics``
computes, inside the jitted step from tensors the loss already has (no extra forward, no host
sync), ``monitor/target_std`` and ``pred_std`` (with ``_min``), ``monitor/rankme`` (RankMe,
Garrido et al. 2023, epsilon 1e-7) and ``monitor/const_loss`` (the loss of the best constant
prediction); their meaning and healthy ranges: README, "Collapse monitoring". Cheap by design:
RankMe's singular values come from ``eigvalsh`` of the smaller Gram matrix (one matmul, one
all-reduce when sharded), not an SVD of the sharded batch; the best L1 constant, a per-feature
median, takes ``BISECTION_STEPS`` counting passes instead of a sort that would gather the batch.
With ``grad_accum_steps=k`` they are per micro-batch, averaged (RankMe then at most ``B/k``).
``CollapseDetector`` (on the logged averages) warns once when ``rankme < RANKME_FLOOR`` (1.5),
``target_std < STD_FLOOR`` (0.05), or ``target_std`` fell below ``STD_DROP`` (0.2) of its first
logged value.
"""
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

RANKME_EPS = 1e-7
BISECTION_STEPS = 24
RANKME_FLOOR = 1.5
STD_FLOOR = 0.05
STD_DROP = 0.2

_HIGHEST = jax.lax.Precision.HIGHEST


def feature_std(x: jax.Array, weights: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
  """(mean, min) over the last axis of the per-dimension std of ``x [..., D]`` over all other axes,
  each sample weighted by ``weights [...]`` (e.g. token validity; None = all 1), in float32."""
  x = x.astype(jnp.float32).reshape(-1, x.shape[-1])
  w = (jnp.ones(x.shape[:1], jnp.float32) if weights is None
       else weights.astype(jnp.float32).reshape(-1))
  total = jnp.maximum(jnp.sum(w), 1.0)
  mean = jnp.sum(x * w[:, None], axis=0) / total
  var = jnp.sum(jnp.square(x - mean) * w[:, None], axis=0) / total
  std = jnp.sqrt(var)
  return jnp.mean(std), jnp.min(std)


def singular_values(z: jax.Array) -> jax.Array:
  """Singular values of ``z [N, D]`` (``min(N, D)`` of them, ascending) from the eigenvalues of the
  Gram matrix of its smaller side, in float32."""
  z = z.astype(jnp.float32)
  gram = (jnp.matmul(z, z.T, precision=_HIGHEST) if z.shape[0] <= z.shape[1]
          else jnp.matmul(z.T, z, precision=_HIGHEST))
  return jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(gram), 0.0))


def rankme(z: jax.Array, eps: float = RANKME_EPS) -> jax.Array:
  """RankMe of ``z [N, D]``; 1 (up to eps) for a rank-one or all-zero ``z``."""
  s = singular_values(z)
  p = s / jnp.maximum(jnp.sum(s), jnp.finfo(jnp.float32).tiny) + eps
  return jnp.exp(-jnp.sum(p * jnp.log(p)))


def constant_prediction(targets: jax.Array, steps: int = BISECTION_STEPS) -> jax.Array:
  """The best constant L1 prediction ``[D]`` for ``targets [..., D]``: per dimension, a median of
  the values over all other axes (for an even count, a value between the two middle ones, where
  the L1 loss is flat), by ``steps`` bisections of ``[min, max]`` (``(max - min) / 2**steps``
  from the median; 24 steps reach float32 resolution)."""
  x = targets.astype(jnp.float32).reshape(-1, targets.shape[-1])
  half = x.shape[0] / 2

  def bisect(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    below = jnp.sum((x < mid).astype(jnp.float32), axis=0)
    # Fewer than half the values below mid: the median is above it.
    return jnp.where(below < half, mid, lo), jnp.where(below < half, hi, mid)

  _, hi = jax.lax.fori_loop(0, steps, bisect, (jnp.min(x, axis=0), jnp.max(x, axis=0)))
  return hi


def step_statistics(targets: jax.Array, predictions: Sequence[jax.Array],
                    masks: Sequence[Any]) -> dict:
  """The ``monitor/*`` scalars of one step.

  Args:
    targets: the layer-normed target features ``[B, N, D]`` of the whole clips (the loss's).
    predictions: per mask, the predictor's output ``[B, K_tgt, D]``.
    masks: per mask, an object with ``target [B, K_tgt]`` and ``target_valid`` (or None).
  """
  from jepa_jax import loss as loss_lib  # the loss's own gather and L1
  t_std, t_min = feature_std(targets)
  const = constant_prediction(targets)
  p_std, p_min, const_losses = [], [], []
  for pred, m in zip(predictions, masks):
    mean, low = feature_std(pred, m.target_valid)
    p_std.append(mean)
    p_min.append(low)
    gathered = loss_lib.gather_targets(targets, m.target)
    const_losses.append(loss_lib.l1_feature_loss(jnp.broadcast_to(const, gathered.shape),
                                                 gathered, m.target_valid))
  pooled = jnp.mean(targets.astype(jnp.float32), axis=1)
  return {
      "monitor/target_std": t_std,
      "monitor/target_std_min": t_min,
      "monitor/pred_std": jnp.mean(jnp.stack(p_std)),
      "monitor/pred_std_min": jnp.mean(jnp.stack(p_min)),
      "monitor/rankme": rankme(pooled),
      "monitor/const_loss": jnp.mean(jnp.stack(const_losses)),
  }


class CollapseDetector:
  """Host side: looks at each logged window's averaged scalars and returns a warning message the
  first time they say collapse (see the module docstring for the rule), None otherwise."""

  def __init__(self, rankme_floor: float = RANKME_FLOOR, std_floor: float = STD_FLOOR,
               std_drop: float = STD_DROP):
    self.rankme_floor, self.std_floor, self.std_drop = rankme_floor, std_floor, std_drop
    self.first_std: Optional[float] = None
    self.warned = False

  def reasons(self, scalars: dict) -> list[str]:
    """Every part of the rule that ``scalars`` meet (records the first target std it sees)."""
    if "monitor/rankme" not in scalars:
      return []
    std, rank = float(scalars["monitor/target_std"]), float(scalars["monitor/rankme"])
    if self.first_std is None:
      self.first_std = std
    out = []
    if rank < self.rankme_floor:
      out.append(f"RankMe of the clip-pooled target features is {rank:.2f} < {self.rankme_floor} "
                 "(every clip gets about the same representation)")
    if std < self.std_floor:
      out.append(f"target feature std {std:.3g} < {self.std_floor} (the target tokens are about "
                 "constant)")
    elif std < self.std_drop * self.first_std:
      out.append(f"target feature std {std:.3g} fell below {self.std_drop} x its first logged "
                 f"value {self.first_std:.3g}")
    return out

  def check(self, step: int, scalars: dict) -> Optional[str]:
    """The warning to log at ``step`` (once per run), or None."""
    reasons = self.reasons(scalars)
    if not reasons or self.warned:
      return None
    self.warned = True
    const = scalars.get("monitor/const_loss")
    loss = scalars.get("loss")
    vs = (f"; loss {float(loss):.4g} vs {float(const):.4g} for the best constant prediction"
          if loss is not None and const is not None else "")
    return (f"Representation collapse suspected at step {step}: " + "; ".join(reasons) + vs +
            ". Checkpoints before this step may be the ones to keep; see README "
            "\"Collapse monitoring\".")
