"""Collapse monitoring: the step statistics against numpy, the rule, and the trainer's warning."""
import json
import logging
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax import checkpoint, loss as loss_lib
from jepa_jax.data import synthetic
from jepa_jax.pretrain import experiment, monitor, trainer

from test_trainer import _train_single_device, tiny_config

WARNING = "Representation collapse suspected"


class M(NamedTuple):
  target: jax.Array
  target_valid: Optional[jax.Array]


def np_rankme(z):
  s = np.linalg.svd(np.asarray(z, np.float64), compute_uv=False)
  p = s / s.sum() + 1e-7
  return float(np.exp(-np.sum(p * np.log(p))))


def np_weighted_std(x, w):
  x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
  w = np.asarray(w, np.float64).reshape(-1)
  mean = (x * w[:, None]).sum(0) / w.sum()
  std = np.sqrt((np.square(x - mean) * w[:, None]).sum(0) / w.sum())
  return std.mean(), std.min()


def known_batch(seed=0, b=5, n=21, d=16, k=(7, 11)):  # an odd token count: one median
  rng = np.random.default_rng(seed)
  raw = rng.normal(size=(b, n, d)) * rng.uniform(0.2, 3.0, size=d) + rng.normal(size=d)
  targets = np.asarray(loss_lib.target_layer_norm(jnp.asarray(raw, jnp.float32)))
  masks, preds = [], []
  for kt in k:
    idx = np.stack([np.sort(rng.choice(n, kt, replace=False)) for _ in range(b)]).astype(np.int32)
    valid = np.ones((b, kt), bool)
    valid[: b // 2, -2:] = False  # padding in half of the clips
    masks.append(M(jnp.asarray(idx), jnp.asarray(valid)))
    preds.append(rng.normal(size=(b, kt, d)).astype(np.float32) * 0.3)
  return targets, preds, masks


def test_statistics_equal_numpy_on_a_known_batch():
  targets, preds, masks = known_batch()
  got = jax.jit(monitor.step_statistics)(jnp.asarray(targets), [jnp.asarray(p) for p in preds],
                                         masks)
  t = targets.astype(np.float64)
  d = t.shape[-1]
  t_mean, t_min = np_weighted_std(t, np.ones(t.shape[:2]))
  per_mask = [np_weighted_std(p, np.asarray(m.target_valid)) for p, m in zip(preds, masks)]
  median = np.median(t.reshape(-1, d), axis=0)
  const = []
  for m in masks:
    gathered = np.take_along_axis(t, np.asarray(m.target)[..., None], axis=1)
    w = np.asarray(m.target_valid, np.float64)
    const.append((np.abs(gathered - median) * w[..., None]).sum() / (w.sum() * d))
  expected = {
      "monitor/target_std": t_mean, "monitor/target_std_min": t_min,
      "monitor/pred_std": np.mean([m for m, _ in per_mask]),
      "monitor/pred_std_min": np.mean([m for _, m in per_mask]),
      "monitor/rankme": np_rankme(t.mean(axis=1)),
      "monitor/const_loss": np.mean(const),
  }
  assert set(got) == set(expected)
  for k, v in expected.items():
    np.testing.assert_allclose(float(got[k]), v, rtol=1e-4, err_msg=k)


@pytest.mark.parametrize("n", [200, 199])
def test_the_constant_is_a_median_and_the_best_l1_constant(n):
  rng = np.random.default_rng(1)
  x = rng.standard_t(3, size=(n, 8)).astype(np.float32)
  c = np.asarray(jax.jit(monitor.constant_prediction)(jnp.asarray(x)))
  s = np.sort(x, axis=0)
  lower, upper = s[(n - 1) // 2], s[n // 2]  # the two middle values (equal for odd n)
  tol = 1e-6 * (s[-1] - s[0])
  assert np.all(c >= lower - tol) and np.all(c <= upper + tol)
  l1 = lambda v: np.abs(x.astype(np.float64) - v).mean(axis=0)  # noqa: E731
  np.testing.assert_allclose(l1(c), l1(np.median(x, axis=0)), rtol=1e-6)
  for other in (x.mean(axis=0), c + 0.05, c - 0.05):  # flat between the middle values (even n)
    assert np.all(l1(c) <= l1(other) + 1e-12)
  same = np.full((10, 3), 2.5, np.float32)  # ties, e.g. collapsed targets
  np.testing.assert_array_equal(np.asarray(monitor.constant_prediction(jnp.asarray(same))), 2.5)


def test_rankme_of_known_spectra():
  rng = np.random.default_rng(2)
  for shape in ((16, 96), (200, 32)):  # both sides of the Gram matrix
    z = rng.normal(size=shape).astype(np.float32)
    assert float(monitor.rankme(jnp.asarray(z))) == pytest.approx(np_rankme(z), rel=1e-4)
  q, _ = np.linalg.qr(rng.normal(size=(64, 5)))
  assert float(monitor.rankme(jnp.asarray(q.T, jnp.float32))) == pytest.approx(5.0, rel=1e-3)
  same = np.tile(rng.normal(size=(1, 32)), (16, 1)).astype(np.float32)
  assert float(monitor.rankme(jnp.asarray(same))) == pytest.approx(1.0, abs=0.01)
  assert float(monitor.rankme(jnp.zeros((16, 32)))) == pytest.approx(1.0, abs=1e-3)


def test_the_rule_warns_once_and_names_its_reason():
  healthy = {"loss": 0.4, "monitor/target_std": 0.9, "monitor/rankme": 6.0,
             "monitor/const_loss": 0.8}
  det = monitor.CollapseDetector()
  assert det.check(20, healthy) is None and det.check(40, dict(healthy)) is None
  msg = det.check(60, dict(healthy, **{"monitor/rankme": 1.1}))
  assert WARNING in msg and "step 60" in msg and "RankMe" in msg and "0.4 vs 0.8" in msg
  assert det.check(80, dict(healthy, **{"monitor/rankme": 1.0})) is None  # once
  det = monitor.CollapseDetector()
  det.check(20, healthy)
  assert "fell below" in det.check(40, dict(healthy, **{"monitor/target_std": 0.15}))
  assert "about constant" in monitor.CollapseDetector().check(
      20, dict(healthy, **{"monitor/target_std": 0.01}))
  assert monitor.CollapseDetector().check(20, {"loss": 1.0}) is None  # no statistics: no verdict


# --- the train step and the trainer ------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("synthetic")
  synthetic.ensure_synthetic(str(out), 12, 0)
  return str(out)


def constant_encoder(params):
  """Zero patch embedding and blocks: every clip encodes to the same (position-only) tokens."""
  zero = lambda t: jax.tree_util.tree_map(jnp.zeros_like, t)  # noqa: E731
  return dict(params, patch_embed=zero(params["patch_embed"]), stack=zero(params["stack"]))


def zero_output_encoder(params):
  """Final LayerNorm scaled and shifted to 0: every token is the same (zero) vector."""
  return dict(params, norm=jax.tree_util.tree_map(jnp.zeros_like, params["norm"]))


def collapsed_weights(c, make_collapsed, directory):
  exp = experiment.build(c, devices=jax.devices()[:1])
  state = exp.init_state(jax.random.PRNGKey(0))
  enc = make_collapsed(state.params["encoder"])
  params = jax.tree_util.tree_map(np.asarray, {"encoder": enc,
                                                "predictor": state.params["predictor"],
                                                "target": enc})
  checkpoint.save_params(directory, params, config=c)
  return directory


def test_step_statistics_of_collapsed_encoders(synthetic_dir):
  c = tiny_config(synthetic_dir)
  c.mesh.data = 1
  exp = experiment.build(c, devices=jax.devices()[:1])
  batch = exp.shard_batch(next(iter(trainer.data_lib.make_pretrain_dataset(
      c.data, batch_size=c.batch_size, seed=0))))
  stats = {}
  for name, f in (("healthy", lambda p: p), ("constant", constant_encoder),
                  ("zero", zero_output_encoder)):
    state = exp.init_state(jax.random.PRNGKey(0))  # fresh: the step donates its state
    state = state.replace(target_params=f(state.target_params))
    _, metrics = exp.train_step(state, batch, jax.random.PRNGKey(1))
    stats[name] = {k: float(v) for k, v in metrics.items() if k.startswith("monitor/")}
  assert stats["healthy"]["monitor/rankme"] > 2 and stats["healthy"]["monitor/target_std"] > 0.3
  assert stats["constant"]["monitor/rankme"] < 1.05  # tokens differ by position only
  assert stats["zero"]["monitor/target_std"] < 1e-3 and stats["zero"]["monitor/const_loss"] < 1e-3
  for name in ("constant", "zero"):
    assert monitor.CollapseDetector().check(1, stats[name]) is not None, name
  assert monitor.CollapseDetector().check(1, stats["healthy"]) is None


def _run_and_collect_warnings(c, workdir, caplog):
  with caplog.at_level(logging.WARNING, logger="jepa_jax.pretrain.trainer"):
    _train_single_device(c, workdir)
  rows = [json.loads(x) for x in open(f"{workdir}/metrics.jsonl").read().splitlines()]
  return [r.getMessage() for r in caplog.records if WARNING in r.getMessage()], rows


def test_trainer_warns_once_on_a_collapsed_model(synthetic_dir, tmp_path, caplog):
  c = tiny_config(synthetic_dir, steps=8)
  c.mesh.data = 1
  c.optim.update(dict(start_lr=0.0, lr=0.0, final_lr=0.0))  # it stays collapsed
  c.init_from = collapsed_weights(c, constant_encoder, str(tmp_path / "weights"))
  warnings, rows = _run_and_collect_warnings(c, str(tmp_path / "run"), caplog)
  assert len(warnings) == 1 and "RankMe" in warnings[0], warnings
  logged = [r for r in rows if "monitor/rankme" in r]
  assert len(logged) == 8 and all(r["monitor/rankme"] < 1.05 for r in logged)
