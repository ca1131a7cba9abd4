"""The non-finite policy that pretraining and fine-tuning share (``jepa_jax.nonfinite``): the
device half keeps the old state, the host half counts, resets and stops with one message."""
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax import nonfinite


def test_apply_if_finite_keeps_the_old_state_on_a_nonfinite_loss_or_gradient():
  old = {"w": jnp.ones(3), "step": jnp.int32(4)}
  new = {"w": jnp.full(3, 2.0), "step": jnp.int32(5)}
  kept, flag = nonfinite.apply_if_finite(new, old, jnp.float32(1.0), {"a": jnp.float32(0.5)})
  assert int(flag) == 0 and int(kept["step"]) == 5
  np.testing.assert_array_equal(kept["w"], new["w"])
  for loss, norms in ((jnp.float32(jnp.nan), {"a": jnp.float32(0.5)}),
                      (jnp.float32(1.0), {"a": jnp.float32(0.5), "b": jnp.float32(jnp.inf)})):
    kept, flag = nonfinite.apply_if_finite(new, old, loss, norms)
    assert int(flag) == 1 and int(kept["step"]) == 4
    np.testing.assert_array_equal(kept["w"], old["w"])


def _flags(check, flags, last_saved=None):
  for step, flag in enumerate(flags, 1):
    check.defer(step, np.int32(flag))
    check.check(last_saved)


def test_skip_counts_resets_on_a_good_step_and_stops_after_the_limit():
  check = nonfinite.NonFiniteCheck(nonfinite.NonFinitePolicy("skip", 3), "/ckpt")
  _flags(check, [1, 1, 0, 1, 1])  # two runs of skips, each shorter than 3
  assert (check.skipped, check.consecutive) == (4, 2)
  check.defer(6, np.int32(1))
  with pytest.raises(nonfinite.NonFiniteLossError) as e:
    check.check(last_saved=4)
  assert str(e.value) == (
      "3 updates in a row had a non-finite loss or gradient (steps 4-6), so it is not one bad "
      "batch; the last good checkpoint is step 4 in /ckpt. Lower config.optim.lr or check the "
      "data, then resume; config.max_consecutive_skips=3 sets this limit.")


def test_stop_names_the_step_and_reads_each_flag_once():
  check = nonfinite.NonFiniteCheck(nonfinite.NonFinitePolicy("stop"), "/ckpt")
  check.check(None)  # nothing pending
  check.defer(1, np.int32(0))
  check.check(None)
  check.check(None)  # already read
  check.defer(2, np.int32(1))
  with pytest.raises(nonfinite.NonFiniteLossError, match="^Non-finite loss or gradient at step "
                     "2; the update was not applied and nothing was saved after it; no "
                     "checkpoint was saved yet. "):
    check.check(None)
  check.check(None)  # the flag was consumed by the raise


@pytest.mark.parametrize("mode, limit, message", [
    ("ignore", 3, "config.nonfinite must be 'stop' or 'skip', got 'ignore'"),
    ("skip", 0, "config.max_consecutive_skips=0 must be a positive integer"),
])
def test_policy_names_the_impossible_field(mode, limit, message):
  with pytest.raises(ValueError, match=message):
    nonfinite.NonFinitePolicy(mode, limit)
