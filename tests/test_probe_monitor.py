"""The online probe monitor: the ridge / kNN probes on toy sets, its settings, and its features
under an 8-device FSDP mesh. The trainer's use of it (probe steps, resume without duplicates) is
tested in tests/test_trainer.py (the damaged-checkpoint resume test), on that test's run."""
import jax
import numpy as np
import pytest

from jepa_jax.pretrain import config as config_lib, experiment, probe_monitor

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


def monitor_config(c):
  # Two synthetic labels of the same clips; ridge and kNN.
  c.monitor_probe.update(dict(every=4, index="direction,shape", num_clips=12, folds=3,
                              kind="ridge,knn", batch_size=8))
  return c


def test_features_under_an_fsdp_mesh_of_8_devices_equal_one_device(synthetic_dir):
  """The monitor encodes with the trainer's mesh and the train state's (FSDP-sharded) target
  parameters: the same features and accuracies as on one device, and the same on a second call."""
  assert jax.device_count() == 8
  c = monitor_config(tiny_config(synthetic_dir, batch_size=8))
  c.mesh.data, c.mesh.fsdp, c.mesh.min_fsdp_size = 2, 4, 64
  exp8 = experiment.build(c)
  target = exp8.init_state(jax.random.PRNGKey(0)).target_params
  qkv = target["stack"]["blocks_0"]["attn"]["qkv"]["kernel"]
  assert len(qkv.sharding.device_set) == 8 and not qkv.sharding.is_fully_replicated
  sharded = probe_monitor.ProbeMonitor(c.monitor_probe, exp8)
  x8, _ = sharded.features(target)
  c1 = monitor_config(tiny_config(synthetic_dir, batch_size=8))
  c1.mesh.data = 1
  exp1 = experiment.build(c1, devices=jax.devices()[:1])
  single = probe_monitor.ProbeMonitor(c1.monitor_probe, exp1)
  x1, _ = single.features(jax.device_get(target))
  assert x8.shape == (12, 32)
  np.testing.assert_allclose(x8, x1, rtol=1e-4, atol=1e-5)
  first = sharded(4, target)
  assert set(first) == {"probe/direction/ridge", "probe/direction/knn", "probe/shape/ridge",
                        "probe/shape/knn", "probe/seconds"}
  again = sharded(8, target)
  assert {k: v for k, v in again.items() if k != "probe/seconds"} == \
      {k: v for k, v in first.items() if k != "probe/seconds"}


def test_an_index_without_labels_is_refused(synthetic_dir, tmp_path):
  index = tmp_path / "unlabelled.csv"
  index.write_text("".join(f"{synthetic_dir}/videos/vid_{i:05d}.mp4\n" for i in range(8)))
  c = tiny_config(synthetic_dir)
  c.mesh.data = 1
  c.monitor_probe.update(dict(every=2, index=str(index), num_clips=8, folds=2))
  exp = experiment.build(c, devices=jax.devices()[:1])
  with pytest.raises(ValueError, match="unlabelled.csv has unlabelled"):
    probe_monitor.ProbeMonitor(c.monitor_probe, exp)
