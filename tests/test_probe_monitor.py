"""The online probe monitor: the ridge / kNN probes on toy sets, and a sharded trainer run that
logs the probe at the right steps, deterministically, and once per step across a resume."""
import json
import shutil

import jax
import numpy as np
import pytest

from jepa_jax import config as config_lib, experiment, probe_monitor, trainer

from test_trainer import synthetic_dir, tiny_config  # noqa: F401 (a fixture)


def toy_set(flipped=()):
  """16 points in two far-apart clusters (class 0 at x=-10, class 1 at x=+10, small jitter along
  x; a constant second feature); the labels of the rows in ``flipped`` are swapped."""
  rng = np.random.default_rng(0)
  labels = np.arange(16) % 2
  x = np.stack([np.where(labels == 1, 10.0, -10.0) + rng.normal(0, 0.5, 16), np.ones(16)], 1)
  labels[list(flipped)] = 1 - labels[list(flipped)]
  return x, labels


@pytest.mark.parametrize("kind", probe_monitor.KINDS)
def test_probes_on_a_separable_toy_set(kind):
  x, y = toy_set()
  assert probe_monitor.cross_validated_accuracy(x, y, kind, folds=4, knn_k=3) == 100.0
  # Two labels flipped: each held-out flipped point sits in the other class's cluster and is
  # predicted as that class; the other 14 points are still right (the flipped ones are 1 of ~3
  # neighbours / a small share of the ridge fit).
  x, y = toy_set(flipped=(0, 5))
  assert probe_monitor.cross_validated_accuracy(x, y, kind, folds=4, knn_k=3) == 87.5


def test_knn_ties_go_to_the_nearer_neighbours():
  fit = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
  test = np.array([[1.0, 0.2]])  # nearest: row 0 (class 1), then row 1 (class 0)
  assert probe_monitor.knn_predict(fit, [1, 0, 0, 1], test, 2, k=2)[0] == 1
  assert probe_monitor.knn_predict(fit, [0, 1, 1, 0], test, 2, k=2)[0] == 0


def test_pooling_keeps_time_order():
  tokens = np.arange(2 * 8 * 3, dtype=np.float64).reshape(2, 8, 3)  # grid (2, 2, 2)
  assert probe_monitor.pool_tokens(tokens, "mean", (2, 2, 2)).shape == (2, 3)
  timed = probe_monitor.pool_tokens(tokens, "time", (2, 2, 2))
  np.testing.assert_allclose(timed[0], np.concatenate([tokens[0, :4].mean(0), tokens[0, 4:].mean(0)]))


@pytest.mark.parametrize("field,value,message", [
    ("kind", "svm", "kind='svm'"), ("folds", 1, "folds=1"), ("index", "", "index is empty"),
    ("num_clips", 3, "num_clips=3"), ("pooling", "max", "pooling must be")])
def test_bad_monitor_settings_are_one_line_config_errors(synthetic_dir, field, value, message):
  c = tiny_config(synthetic_dir)
  c.monitor_probe.update(dict(every=2, index="direction"))
  c.monitor_probe[field] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.read(c)


def no_key_twice(rows) -> bool:
  """Each (step, scalar) is logged once (a step may have several rows: progress, metrics)."""
  pairs = [(r["step"], k) for r in rows for k in r if k != "step"]
  return len(pairs) == len(set(pairs))


def _probe_rows(workdir):
  rows = [json.loads(x) for x in open(f"{workdir}/metrics.jsonl").read().splitlines()]
  return [r for r in rows if any(k.startswith("probe/") for k in r)], rows


def test_sharded_run_logs_the_probe_every_n_steps_and_resumes_without_duplicates(
    synthetic_dir, tmp_path):
  assert jax.device_count() == 8
  c = tiny_config(synthetic_dir, steps=8, batch_size=8)  # mesh data=-1: all 8 devices
  c.log_every = 3
  # Two synthetic labels of the same clips; ridge and kNN.
  c.monitor_probe.update(dict(every=4, index="direction,shape", num_clips=12, folds=3,
                              kind="ridge,knn", batch_size=8))
  workdir = tmp_path / "run"
  exp = experiment.build(c)  # shared by both runs: the train step compiles once
  trainer.train(c, str(workdir), exp)
  probed, rows = _probe_rows(workdir)
  assert [r["step"] for r in probed] == [0, 4, 8]
  for r in probed:
    # 12 clips: every accuracy is a multiple of 100/12.
    for key in ("direction/ridge", "direction/knn", "shape/ridge", "shape/knn"):
      acc = r[f"probe/{key}"]
      assert 0 <= acc <= 100 and abs(acc * 12 / 100 - round(acc * 12 / 100)) < 1e-6
    assert r["probe/seconds"] > 0 and 0 < r["probe/time_share"] < 1
  # Step 4 is not a logging step (every 3): a row of its own; step 8 is the last, logged with
  # the window's metrics.
  assert "loss" not in probed[1] and "loss" in probed[2]
  assert no_key_twice(rows)
  # Lose the last checkpoint and rerun: it resumes from step 4 and replays 5-8, the probe at 8
  # once more, with the same accuracies (the CPU run is deterministic).
  shutil.rmtree(workdir / "checkpoints" / "8")
  trainer.train(c, str(workdir), exp)
  again, rows_again = _probe_rows(workdir)
  assert [r["step"] for r in again] == [0, 4, 8]
  assert no_key_twice(rows_again) and len(rows_again) == len(rows)
  keys = ("probe/direction/ridge", "probe/direction/knn", "probe/shape/ridge", "probe/shape/knn")
  assert [[r[k] for k in keys] for r in again] == [[r[k] for k in keys] for r in probed]
