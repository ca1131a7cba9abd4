"""The one non-finite policy of every training program (pretraining, fine-tuning): never apply
an update whose loss or gradients are not finite, then stop or skip.

``apply_if_finite`` (inside the jitted step) keeps the old state on a non-finite loss or gradient
norm and returns the flag the step reports as ``metrics["nonfinite"]``, so no step waits for the
host. ``NonFiniteCheck`` (in the loop shell) reads each flag one step late, exactly once, and
applies ``NonFinitePolicy``: 'stop' names the step (1-based, as logged) and the last good
checkpoint, saving nothing after it; 'skip' counts skipped updates and stops after
``max_consecutive_skips`` in a row. Imports only JAX, so the config check can read the policy
without the data stack.
"""
import dataclasses
import logging
from typing import Any, Optional

import jax
import jax.numpy as jnp

from jepa_jax.errors import ConfigError, UserError

log = logging.getLogger(__name__)

MODES = ("stop", "skip")

# With ``nonfinite='skip'``, a run of this many skipped updates stops training: a skipped update
# changes nothing, so a long run of them means the state is broken rather than a few batches; 20
# rides out a short run of bad batches. Also the value for configs saved before the field.
MAX_CONSECUTIVE_SKIPS = 20


class NonFiniteLossError(UserError, RuntimeError):
  """The loss went non-finite under config.nonfinite='stop' (or too many steps in a row were
  skipped); the message says which step and what to change."""
  label = "Stopped"


@dataclasses.dataclass(frozen=True)
class NonFinitePolicy:
  """``config.nonfinite`` ('stop' | 'skip') and ``config.max_consecutive_skips``."""
  mode: str = "stop"
  max_consecutive_skips: int = MAX_CONSECUTIVE_SKIPS

  def __post_init__(self):
    if self.mode not in MODES:
      raise ConfigError(f"config.nonfinite must be 'stop' or 'skip', got {self.mode!r}")
    n = self.max_consecutive_skips
    if not isinstance(n, int) or n < 1:
      raise ConfigError(f"config.max_consecutive_skips={n!r} must be a positive integer")

  @classmethod
  def from_config(cls, config) -> "NonFinitePolicy":
    """The policy of a program's config (the defaults for configs saved before the fields);
    ``ValueError`` naming the field when either value is impossible."""
    return cls(config.get("nonfinite", "stop"),
               config.get("max_consecutive_skips", MAX_CONSECUTIVE_SKIPS))


def apply_if_finite(new_state, state, loss, grad_norms):
  """``(new_state, 0)`` when ``loss`` and every gradient norm (a tree of scalars) are finite,
  else ``(state, 1)``, step count included; the flag is int32. A gradient with an inf or NaN
  element has a non-finite norm."""
  norms = jax.tree_util.tree_leaves(grad_norms)
  finite = jnp.isfinite(loss) & jnp.all(jnp.stack([jnp.isfinite(n) for n in norms]))
  kept = jax.tree_util.tree_map(lambda new, old: jnp.where(finite, new, old), new_state, state)
  return kept, (~finite).astype(jnp.int32)


class NonFiniteCheck:
  """Each step's device flag, read one step late and exactly once: ``defer(step, flag)`` after
  dispatching the step, ``check(last_saved)`` after dispatching the next one, before a save and
  at the end. ``directory``: where the checkpoints are, for the message."""

  def __init__(self, policy: NonFinitePolicy, directory: str):
    self.policy, self._directory = policy, directory
    self._pending: Optional[tuple[int, Any]] = None  # (logged step, device flag)
    self.skipped = self.consecutive = 0

  def defer(self, step: int, flag) -> None:
    self._pending = (step, flag)

  def check(self, last_saved: Optional[int]) -> None:
    if self._pending is None:
      return
    (bad_step, flag), self._pending = self._pending, None
    if int(flag) == 0:
      self.consecutive = 0
      return
    where = (f"the last good checkpoint is step {last_saved} in {self._directory}"
             if last_saved is not None else "no checkpoint was saved yet")
    if self.policy.mode == "skip":
      self.skipped += 1
      self.consecutive += 1
      log.warning("Non-finite loss or gradient at step %d: update skipped (%d so far, %d in a row)",
                  bad_step, self.skipped, self.consecutive)
      limit = self.policy.max_consecutive_skips
      if self.consecutive >= limit:
        raise NonFiniteLossError(
            f"{self.consecutive} updates in a row had a non-finite loss or gradient (steps "
            f"{bad_step - self.consecutive + 1}-{bad_step}), so it is not one bad batch; {where}. "
            "Lower config.optim.lr or check the data, then resume; "
            f"config.max_consecutive_skips={limit} sets this limit.")
      return
    raise NonFiniteLossError(
        f"Non-finite loss or gradient at step {bad_step}; the update was not applied and nothing "
        f"was saved after it; {where}. Lower config.optim.lr, check the data, or set "
        "config.nonfinite='skip'.")
