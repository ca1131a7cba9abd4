"""Frozen evaluation: probe learning, segment/view layout and averaging, low-shot splits,
schedules, checkpoint loading (key, wrong architecture), results.json, end to end."""
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jepa_jax import checkpoint as ckpt_lib
from jepa_jax import models
from jepa_jax import sharding as sharding_lib
from jepa_jax.data import normalize as normalize_lib
from jepa_jax.data import synthetic
from jepa_jax.eval import config as config_lib
from jepa_jax.eval import encoder as enc_lib
from jepa_jax.eval import lowshot
from jepa_jax.eval import probe as probe_lib
from jepa_jax.eval import probe_runs
from jepa_jax.eval import results as results_lib
from jepa_jax.eval import run as run_lib
from jepa_jax.eval import settings as eval_settings
from jepa_jax.eval.features import FeatureCache, cache_batches
from jepa_jax.eval.placement import Placer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2}
SYNTHETIC_VIDEOS = 10


def tiny_eval_config(**overrides) -> ml_collections.ConfigDict:
  c = config_lib.base_eval_config()
  c.task = "test"
  c.model.name = "tiny"
  c.model.overrides = dict(TINY)
  c.encoder_dtype = "float32"
  c.probe.dtype = "float32"
  c.data.crop_size, c.data.num_frames, c.data.frame_step = 32, 4, 2
  c.data.num_threads = 1
  c.num_segments, c.num_views = 2, 3
  c.num_classes = None
  c.cache_features = True
  c.epochs, c.batch_size, c.eval_every, c.log_every = 2, 8, 1, 0
  c.update(overrides)
  return c


def tiny_encoder(**overrides):
  spec = dict(TINY, img_size=32, num_frames=4, patch_size=16, tubelet_size=2)
  spec.update(overrides)
  return models.build_encoder("tiny", **spec)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
  out = str(tmp_path_factory.getbasetemp() / "synthetic_eval")
  synthetic.ensure_synthetic(out, SYNTHETIC_VIDEOS, seed=0)
  return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
  """A parameters-only checkpoint of a tiny encoder (distinct online and EMA weights) + config."""
  enc = tiny_encoder()
  online = models.init_params(enc, jax.random.PRNGKey(1), jit=True)
  target = jax.tree_util.tree_map(lambda x: x + 1.0, online)
  cfg = {"model": {"name": "tiny", "patch_size": 16, "tubelet_size": 2, "uniform_power": True,
                   "scan": False, "overrides": dict(TINY)},
         "data": {"crop_size": 32, "num_frames": 4}}
  path = str(tmp_path_factory.getbasetemp() / "tiny_ckpt")
  ckpt_lib.save_params(path, {"encoder": jax.device_get(online), "target": jax.device_get(target)},
                       config=cfg, step=7)
  return path, online, target


# ------------------------------------------------------------------------ probe


def toy_cache(n, num_classes, rng, views=1, tokens=6, dim=16, noise=0.5):
  """Linearly separable tokens: class c adds +2 on feature c of every token."""
  labels = rng.integers(num_classes, size=n).astype(np.int32)
  x = rng.normal(0, noise, size=(n, views, tokens, dim)).astype(np.float32)
  x[np.arange(n), :, :, labels] += 2.0
  return FeatureCache(x, labels, np.arange(n))


def test_probe_learns_separable_toy_task():
  rng = np.random.default_rng(0)
  train, val = toy_cache(96, 4, rng), toy_cache(40, 4, rng, views=3)
  c = tiny_eval_config(epochs=15, batch_size=16)
  task = probe_runs.ProbeTask(4, 16, 2, eval_settings.read(c))
  rec = probe_runs.run_cached_probe(task, train, val, 0, 1.0, Placer(), "/unused", False)
  assert rec["top1"] >= 97.5, rec["history"][-1]
  assert rec["top5"] == 100.0
  assert rec["num_train"] == 96 and rec["num_val"] == 40
  assert rec["history"][0]["train_loss"] > rec["history"][-1]["train_loss"]


def test_probe_init_rescales_like_reference():
  probe = probe_lib.build_probe(5, 16, 2, ml_collections.ConfigDict(
      dict(depth=2, num_heads=None, mlp_ratio=4.0, dtype="float32")))
  p = probe_lib.init_probe_params(probe, 16, 0)
  raw = jax.jit(probe.init)(jax.random.PRNGKey(0), jnp.zeros((1, 4, 16)))["params"]
  np.testing.assert_allclose(p["mlp"]["fc2"]["kernel"], raw["mlp"]["fc2"]["kernel"] / math.sqrt(2),
                             rtol=1e-6)
  for i, layer in ((0, 2),):  # the first extra block is layer 2
    np.testing.assert_allclose(p["stack"][f"blocks_{i}"]["mlp"]["fc2"]["kernel"],
                               raw["stack"][f"blocks_{i}"]["mlp"]["fc2"]["kernel"]
                               / math.sqrt(2 * layer), rtol=1e-6)
  np.testing.assert_allclose(p["mlp"]["fc1"]["kernel"], raw["mlp"]["fc1"]["kernel"], rtol=1e-6)


def test_schedules_match_reference_stepping():
  o = config_lib.base_eval_config().optim
  lr, wd = probe_lib.lr_schedule(o, 100, 10), probe_lib.wd_schedule(o, 100)
  # The reference steps its schedulers before each update: update k uses the value at k + 1.
  np.testing.assert_allclose(lr(0), 1e-3 * 0.5 * (1 + math.cos(math.pi / 100)), rtol=1e-6)
  np.testing.assert_allclose(lr(99), 0.0, atol=1e-9)
  np.testing.assert_allclose(wd(0), 1e-6 + (0.01 - 1e-6) * 0.5 * (1 + math.cos(math.pi / 100)),
                             rtol=1e-5)
  o2 = o.copy_and_resolve_references()
  o2.warmup, o2.start_lr = 1.0, 0.0  # one epoch (10 steps) of linear warm-up
  np.testing.assert_allclose(probe_lib.lr_schedule(o2, 100, 10)(4), 5e-4, rtol=1e-6)
  mask = probe_lib.decay_mask({"linear": {"kernel": np.zeros((2, 3)), "bias": np.zeros(3)},
                               "norm1": {"scale": np.zeros(3)}, "query_tokens": np.zeros((1, 1, 3))})
  assert mask == {"linear": {"kernel": True, "bias": False}, "norm1": {"scale": False},
                  "query_tokens": True}


# ----------------------------------------------------------- segments and views


def test_segments_concatenated_per_view_in_order():
  b, s, v, t, h, w = 2, 3, 2, 4, 8, 8
  val = (50 * np.arange(b)[:, None, None] + 10 * np.arange(s)[None, :, None]
         + np.arange(v)[None, None, :]).astype(np.uint8)
  clips = np.broadcast_to(val[..., None, None, None, None], (b, s, v, t, h, w, 3)).copy()

  def stub(x):  # [n, T, H, W, C] -> [n, N=5, D=4]: every token carries the clip's mean and id
    m = x.mean(axis=(1, 2, 3, 4))
    return jnp.broadcast_to(m[:, None, None], (x.shape[0], 5, 4)) + jnp.arange(5.0)[:, None]

  tokens = np.asarray(enc_lib.clips_to_tokens(stub, jnp.asarray(clips)))
  assert tokens.shape == (b, v, s * 5, 4)
  for bi in range(b):
    for vi in range(v):
      for si in range(s):
        one = np.asarray(stub(normalize_lib.normalize(clips[bi, si, vi][None])))[0]
        np.testing.assert_allclose(tokens[bi, vi, si * 5:(si + 1) * 5], one, atol=1e-5)


def test_image_repeated_along_time():
  img = np.random.default_rng(0).integers(0, 255, size=(2, 32, 32, 3), dtype=np.uint8)
  clips = np.asarray(enc_lib.as_clips(jnp.asarray(img), 4))
  np.testing.assert_array_equal(clips, np.repeat(img[:, None, None, None], 4, axis=3))
  enc = tiny_encoder()
  params = jax.eval_shape(lambda: models.init_params(enc, jax.random.PRNGKey(0), jit=True))
  out = jax.eval_shape(enc_lib.make_token_fn(enc), params, jax.ShapeDtypeStruct(img.shape, np.uint8))
  assert out.shape == (2, 1, enc.num_tokens, 32)  # one view, one segment
  video = jax.ShapeDtypeStruct((2, 3, 2, 4, 32, 32, 3), np.uint8)  # [B, S=3, V=2, T, H, W, C]
  out = jax.eval_shape(enc_lib.make_token_fn(enc, feature_layer=0), params, video)
  assert out.shape == (2, 2, 3 * enc.num_tokens, 32)


def test_view_aggregation_and_view_logits():
  logits = jnp.asarray([[[4.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])  # [B=1, V=3, C=2]
  p = np.exp(logits[0]) / np.exp(logits[0]).sum(-1, keepdims=True)
  np.testing.assert_allclose(probe_lib.aggregate_views(logits, "softmax")[0], p.mean(0), rtol=1e-6)
  np.testing.assert_allclose(probe_lib.aggregate_views(logits, "logits")[0], [4 / 3, 2 / 3])
  with pytest.raises(ValueError, match="view_aggregation"):
    probe_lib.aggregate_views(logits, "max")

  def apply_fn(variables, x):  # [N, L, D] -> [N, C=D]: mean over tokens, so views stay apart
    del variables
    return x.mean(axis=1)

  tokens = jnp.arange(2 * 3 * 4 * 2, dtype=jnp.float32).reshape(2, 3, 4, 2)  # [B, V, L, D]
  out = probe_lib.view_logits(apply_fn, None, tokens)
  np.testing.assert_allclose(out, tokens.mean(axis=2))

  # The eval step ranks by the views' average: view 0 is confident in class 0, views 1-2 mildly
  # in class 1: the mean of probabilities picks class 0, which no single majority vote would.
  state = probe_lib.ProbeState(step=0, apply_fn=lambda v, x: x[:, 0, :], params={}, tx=None,
                               opt_state=None)
  toks = jnp.asarray(logits)[:, :, None, :]  # [B, V, L=1, C]
  m = probe_lib.eval_step(state, toks, jnp.asarray([0]), jnp.ones(1), "softmax")
  assert float(m["top1"]) == 1.0 and float(m["count"]) == 1.0
  m = probe_lib.eval_step(state, toks, jnp.asarray([1]), jnp.ones(1), "softmax")
  assert float(m["top1"]) == 0.0 and float(m["top5"]) == 1.0
  m = probe_lib.eval_step(state, toks, jnp.asarray([1]), jnp.zeros(1), "softmax")
  assert float(m["count"]) == 0.0 and float(m["top5"]) == 0.0  # padding rows never count


def test_cache_batches_cover_every_example_once():
  cache = FeatureCache(np.arange(10.0)[:, None, None, None], np.zeros(10, np.int32),
                               np.arange(10))
  seen = []
  for x, _, w in cache_batches(cache, 4, np.random.default_rng(0)):
    assert x.shape[0] == 4
    seen += [int(v) for v, wi in zip(x[:, 0, 0, 0], w) if wi > 0]
  assert sorted(seen) == list(range(10))


# --------------------------------------------------------------------- low-shot


def test_lowshot_split_balanced_fixed_and_fraction():
  labels = np.repeat(np.arange(5), [40, 60, 100, 20, 80])
  rng = np.random.default_rng(0)
  labels = labels[rng.permutation(len(labels))]
  for fraction in (0.05, 0.1, 0.5):
    a = lowshot.balanced_subset(labels, fraction, seed=0)
    counts = np.bincount(labels[a], minlength=5)
    expected = [max(1, round(fraction * n)) for n in (40, 60, 100, 20, 80)]
    np.testing.assert_array_equal(counts, expected)  # per class, the requested fraction
    assert abs(len(a) - fraction * len(labels)) <= 5 * 0.5 + 1e-9
    assert len(np.unique(a)) == len(a)
    np.testing.assert_array_equal(a, lowshot.balanced_subset(labels, fraction, seed=0))
    assert not np.array_equal(a, lowshot.balanced_subset(labels, fraction, seed=1))
  np.testing.assert_array_equal(lowshot.balanced_subset(labels, 1.0, 3), np.arange(len(labels)))
  with pytest.raises(ValueError):
    lowshot.balanced_subset(labels, 0.0, 0)
  m, s = lowshot.mean_std([70.0, 72.0, 74.0])
  assert m == 72.0 and s == pytest.approx(2.0)


# ------------------------------------------------------------------- checkpoints


def test_loads_target_by_default_and_online_on_request(tiny_checkpoint):
  path, online, target = tiny_checkpoint
  c = tiny_eval_config(checkpoint=path)
  c.model = config_lib.model_config()  # architecture from the checkpoint's config
  enc, params, info = enc_lib.load_frozen_encoder(c)
  assert info["step"] == 7 and info["checkpoint_key"] == "target" and enc.depth == 1
  np.testing.assert_array_equal(params["norm"]["scale"], target["norm"]["scale"])
  c.checkpoint_key = "online"
  _, params, _ = enc_lib.load_frozen_encoder(c)
  np.testing.assert_array_equal(params["norm"]["scale"], online["norm"]["scale"])


def test_wrong_architecture_fails_with_clear_message(tiny_checkpoint, tmp_path):
  path, online, _ = tiny_checkpoint
  c = tiny_eval_config(checkpoint=path)
  c.model.overrides = {"embed_dim": 32, "depth": 2, "num_heads": 2}  # the checkpoint has depth 1
  with pytest.raises(ckpt_lib.CheckpointError, match=r"parameter .*blocks_1.* missing"):
    enc_lib.load_frozen_encoder(c)
  c.model.overrides = {"embed_dim": 64, "depth": 1, "num_heads": 2}
  with pytest.raises(ckpt_lib.CheckpointError, match=r"has shape .* in the checkpoint but"):
    enc_lib.load_frozen_encoder(c)
  # No saved config and no config.model: say which fields to set.
  bare = str(tmp_path / "bare")
  ckpt_lib.save_params(bare, {"target": jax.device_get(online)})
  c = tiny_eval_config(checkpoint=bare)
  c.model = config_lib.model_config()
  with pytest.raises(ValueError, match="config.model.name"):
    enc_lib.load_frozen_encoder(c)


# ------------------------------------------------------------------ end to end


def test_evaluate_writes_results_json(synthetic_dir, tiny_checkpoint, tmp_path):
  path, _, _ = tiny_checkpoint
  c = tiny_eval_config(checkpoint=path)
  c.data.synthetic_dir, c.data.synthetic_num_videos = synthetic_dir, SYNTHETIC_VIDEOS
  c.train_index = c.val_index = ""
  c.synthetic_label = "colour"
  c.lowshot.fractions, c.lowshot.seeds = (0.5, 1.0), (0, 1)
  results = run_lib.evaluate(c, str(tmp_path))
  on_disk = json.load(open(tmp_path / "results.json"))
  assert on_disk == json.loads(json.dumps(results))
  for key in ("task", "checkpoint", "step", "protocol", "accuracy", "num_train_examples",
              "num_val_examples", "settings"):
    assert key in on_disk, key
  assert on_disk["step"] == 7 and on_disk["checkpoint_key"] == "target"
  assert on_disk["protocol"]["num_segments"] == 2 and on_disk["protocol"]["num_views"] == 3
  n_train = len(open(os.path.join(synthetic_dir, "train_colour.csv")).readlines())
  n_val = len(open(os.path.join(synthetic_dir, "val_colour.csv")).readlines())
  assert on_disk["num_train_examples"] == n_train and on_disk["num_val_examples"] == n_val
  half, full = on_disk["settings"]
  assert half["fraction"] == 0.5 and half["num_train"] < n_train
  assert [r["seed"] for r in full["runs"]] == [0, 1] and len(full["runs"][0]["history"]) == 2
  assert on_disk["accuracy"]["top1"] == full["top1"]
  assert 0 <= full["top1"] <= 100 and full["top5"] >= full["top1"]
  assert os.path.isdir(tmp_path / "probes" / "frac0.5_seed1")
  assert os.listdir(tmp_path / "tb" / "frac1_seed0")  # TensorBoard event file


@pytest.mark.slow
def test_cli_demo_config_end_to_end(synthetic_dir, tmp_path):
  """``python -m jepa_jax.eval --config=configs/eval/demo.py`` (random tiny encoder, 1 epoch, and
  the streaming path, i.e. no feature cache) writes results.json."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  cmd = [sys.executable, "-m", "jepa_jax.eval", "--config=configs/eval/demo.py",
         f"--workdir={tmp_path}", "--config.checkpoint=random",
         f"--config.data.synthetic_dir={synthetic_dir}",
         f"--config.data.synthetic_num_videos={SYNTHETIC_VIDEOS}",
         "--config.model.overrides.embed_dim=32", "--config.model.overrides.depth=1",
         "--config.model.overrides.num_heads=2", "--config.data.crop_size=32",
         "--config.epochs=1", "--config.cache_features=False", "--config.batch_size=4"]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.load(open(tmp_path / "results.json"))
  assert results["task"] == "synthetic_demo" and results["checkpoint"] == "random"
  assert results["protocol"]["cache_features"] is False
  assert "top-1" in proc.stdout
  # The demo config's random-init baseline, streamed as well: seeds 0-2 and the printed line.
  assert results["random_baseline"]["seeds"] == [0, 1, 2]
  assert " vs random " in proc.stdout and "seeds' spread" in proc.stdout


def test_token_variance_split_is_exact():
  from jepa_jax.eval.token_stats import variance_split
  rng = np.random.default_rng(0)
  clip = rng.normal(size=(6, 1, 8)) * np.ones((1, 5, 1))
  position = rng.normal(size=(1, 5, 8)) * np.ones((6, 1, 1))
  assert variance_split(clip)["clip"] == pytest.approx(1.0)
  assert variance_split(position)["position"] == pytest.approx(1.0)
  mixed = variance_split(clip + position + rng.normal(size=(6, 5, 8)))
  assert sum(mixed.values()) == pytest.approx(1.0)
  assert all(0 < v < 1 for v in mixed.values())


def test_probe_positions_diagnostic_adds_the_grid_table():
  from jepa_jax.eval import compare
  from jepa_jax.models import pos_embed
  tokens = np.zeros((3, 2, 2 * 8, 16), np.float32)  # 2 segments of a (2, 2, 2) grid
  cache = FeatureCache(tokens, np.zeros(3, np.int32), np.arange(3))
  out = compare.with_positions(cache, (2, 2, 2))
  np.testing.assert_allclose(out.tokens[1, 1], pos_embed.sincos_3d(16, (4, 2, 2), True))
  assert out.labels is cache.labels


# ------------------------------------------------------- saved probes: one format, inference


@pytest.fixture(scope="module")
def trained_probe(synthetic_dir, tiny_checkpoint, tmp_path_factory):
  """An eval run (cached tokens) whose probe is saved under ``probes/frac1_seed0``."""
  path, _, _ = tiny_checkpoint
  c = tiny_eval_config(checkpoint=path)
  c.data.synthetic_dir, c.data.synthetic_num_videos = synthetic_dir, SYNTHETIC_VIDEOS
  c.train_index = c.val_index = ""
  c.synthetic_label = "colour"
  workdir = tmp_path_factory.mktemp("trained_probe")
  results = run_lib.evaluate(c, str(workdir))
  return c, str(workdir / "probes" / "frac1_seed0"), results


def test_eval_trained_probe_uses_the_one_probe_format(trained_probe):
  c, probe_dir, results = trained_probe
  params, saved = ckpt_lib.load_probe(probe_dir)
  assert saved == dict(num_classes=results["num_classes"], num_heads=2, mlp_ratio=4.0, depth=1,
                       num_queries=1, embed_dim=32, blocks_on="query")
  info = ckpt_lib.read_probe_config(probe_dir)["eval"]
  assert info["checkpoint"] == c.checkpoint and info["checkpoint_key"] == "target"
  assert info["protocol"]["num_segments"] == 2 and info["protocol"]["frames_per_clip"] == 4
  assert info["model"]["overrides"] == TINY
  # The converter's loader reads it too (one layout).
  from jepa_jax import convert
  again, again_cfg = convert.load_probe(probe_dir)
  assert again_cfg == saved
  jax.tree_util.tree_map(np.testing.assert_array_equal, again, params)


def test_eval_trained_probe_round_trips_through_the_reference_format(trained_probe, tmp_path):
  torch = pytest.importorskip("torch")
  from jepa_jax.convert.__main__ import main as convert_main
  _, probe_dir, _ = trained_probe
  params, saved = ckpt_lib.load_probe(probe_dir)
  out = tmp_path / "probe.pth.tar"
  assert convert_main(["--to-torch", "--kind", "probe", "--ckpt", probe_dir, "--out", str(out)]) == 0
  state = torch.load(out, map_location="cpu", weights_only=True)
  assert "module.pooler.query_tokens" in state["classifier"]
  assert convert_main(["--from-torch", str(out), "--kind", "probe", "--num-heads", "2",
                       "--out", str(tmp_path / "back")]) == 0
  back, back_cfg = ckpt_lib.load_probe(str(tmp_path / "back"))
  assert back_cfg == saved
  jax.tree_util.tree_map(np.testing.assert_array_equal, back, params)


def test_saved_probe_evaluated_without_training_reproduces_its_accuracy(trained_probe, tmp_path):
  """train=False re-encodes the validation clips (streaming, S x V views) and applies the saved
  probe: the accuracy the training run measured on cached tokens of the same clips."""
  c, probe_dir, trained = trained_probe
  c = c.copy_and_resolve_references()
  c.train, c.probe_checkpoint, c.cache_features = False, probe_dir, False
  c.epochs = 10**6  # never read: nothing is trained
  results = run_lib.evaluate(c, str(tmp_path))
  assert json.load(open(tmp_path / "results.json")) == json.loads(json.dumps(results))
  assert results["trained"] is False and results["probe_checkpoint"] == probe_dir
  assert results["num_val_examples"] == trained["num_val_examples"]
  assert results["accuracy"]["top1"] == pytest.approx(trained["accuracy"]["top1"])
  assert results["accuracy"]["top5"] == pytest.approx(trained["accuracy"]["top5"])
  run = trained["settings"][0]["runs"][0]
  assert results["settings"][0]["runs"][0]["val_loss"] == pytest.approx(run["val_loss"], rel=1e-4)
  assert not os.path.exists(tmp_path / "probes")


def test_saved_probe_that_does_not_fit_is_refused(trained_probe, tmp_path):
  c, probe_dir, _ = trained_probe
  c = c.copy_and_resolve_references()
  c.train, c.probe_checkpoint = False, probe_dir
  c.num_classes = 400
  with pytest.raises(ValueError, match="has .* classes"):
    run_lib.evaluate(c, str(tmp_path))
  c.num_classes, c.probe_checkpoint = None, str(tmp_path / "nothing")
  with pytest.raises(ckpt_lib.CheckpointError, match="does not exist"):
    run_lib.evaluate(c, str(tmp_path))
  c.train, c.probe_checkpoint = True, probe_dir
  with pytest.raises(ValueError, match="config.train=False"):
    run_lib.evaluate(c, str(tmp_path))


def test_predict_ranks_like_the_eval_and_names_classes(trained_probe, synthetic_dir, tmp_path,
                                                       capsys):
  """predict's top-1 over the validation videos gives the eval's top-1; names come from the label
  file by line; an unreadable video is reported, skipped and counted."""
  from jepa_jax import predict
  from jepa_jax.data import sources
  c, probe_dir, trained = trained_probe
  val = sources.read_index(os.path.join(synthetic_dir, "val_colour.csv"))
  videos = [val.path(i) for i in range(len(val))]
  bad = tmp_path / "broken.mp4"
  bad.write_bytes(b"not a video")
  num_classes = trained["num_classes"]
  labels = tmp_path / "classes.txt"
  labels.write_text("".join(f"colour_{i}\n" for i in range(num_classes)))
  out = tmp_path / "pred.json"
  rc = predict.main(["--checkpoint", c.checkpoint, "--probe", probe_dir, "--labels", str(labels),
                     "--batch-size", "4", "--json", str(out), *videos[:2], str(bad), *videos[2:]])
  assert rc == 1  # one video failed
  captured = capsys.readouterr()
  assert "1 of" in captured.err
  result = json.load(open(out))
  assert [f["video"] for f in result["failures"]] == [str(bad)]
  preds = result["predictions"]
  assert [p["video"] for p in preds] == videos
  for p in preds:
    probs = [t["prob"] for t in p["top"]]
    assert len(probs) == min(5, num_classes) and probs == sorted(probs, reverse=True)
    assert all(t["name"] == f"colour_{t['class']}" for t in p["top"])
  top1 = 100.0 * np.mean([p["top"][0]["class"] == val.label(i) for i, p in enumerate(preds)])
  assert top1 == pytest.approx(trained["accuracy"]["top1"])
  assert f"1. class" in captured.out and "colour_" in captured.out
  labels.write_text("just_one\n")
  assert predict.main(["--checkpoint", c.checkpoint, "--probe", probe_dir, "--labels",
                       str(labels), videos[0]]) == 1
  assert "the probe has" in capsys.readouterr().err


def test_pretrained_vs_random_in_the_same_run(synthetic_dir, tiny_checkpoint, tmp_path):
  """``config.random_baseline_seeds``: each random-init encoder is probed exactly as an eval of
  ``checkpoint=random`` with that seed would probe it, and the comparison is printed."""
  path, _, _ = tiny_checkpoint
  c = tiny_eval_config(checkpoint=path, random_baseline_seeds=(1,), epochs=1)
  c.data.synthetic_dir, c.data.synthetic_num_videos = synthetic_dir, SYNTHETIC_VIDEOS
  c.train_index = c.val_index = ""
  c.synthetic_label = "shape"
  results = run_lib.evaluate(c, str(tmp_path / "both"), write=False)
  base, versus = results["random_baseline"], results["pretrained_vs_random"]
  assert base["seeds"] == [1] and len(base["per_seed"]) == 1
  assert versus["pretrained"] == results["accuracy"]["top1"]
  assert versus["margin"] == pytest.approx(versus["pretrained"] - versus["random"])
  assert versus["spread"] == max(results["accuracy"]["top1_std"], base["top1_std"])
  alone = tiny_eval_config(checkpoint="random", seed=1)
  alone.data.synthetic_dir, alone.data.synthetic_num_videos = synthetic_dir, SYNTHETIC_VIDEOS
  alone.train_index = alone.val_index = ""
  alone.synthetic_label = "shape"
  alone.lowshot.seeds = (1,)
  alone.model.update(dict(patch_size=16, tubelet_size=2))
  alone.epochs = 1
  assert run_lib.evaluate(alone, str(tmp_path / "random1"), write=False)["accuracy"]["top1"] == \
      base["per_seed"][0]
  line = results_lib.versus_line(versus)
  assert line.startswith(f"pretrained {versus['pretrained']:.1f} ± ") and " vs random " in line


def test_frozen_encoder_split_over_fsdp_gives_the_replicated_tokens():
  """config.mesh.fsdp > 1 splits the frozen encoder's parameters by pretraining's rules
  (sharding.state_shardings); the tokens equal those of the replicated encoder."""
  from jepa_jax.eval.placement import Placer  # noqa: PLC0415
  if jax.device_count() < 8:
    pytest.skip("needs 8 (simulated) devices")
  enc = tiny_encoder()
  params = models.init_params(enc, jax.random.PRNGKey(0), jit=True)
  video = np.random.default_rng(0).integers(0, 255, size=(8, 1, 1, 4, 32, 32, 3), dtype=np.uint8)
  token_fn = enc_lib.make_token_fn(enc)
  outs = []
  for fsdp in (1, 8):
    placer = Placer.of(eval_settings.read(
        tiny_eval_config(mesh=dict(fsdp=fsdp, min_fsdp_size=256))).mesh)
    assert placer.mesh.shape["fsdp"] == fsdp
    placed = placer.encoder_params(params)
    split = [x for x in jax.tree_util.tree_leaves(placed) if not x.sharding.is_fully_replicated]
    assert bool(split) == (fsdp > 1)
    fn = jax.jit(sharding_lib.with_activation_sharding(token_fn, placer.mesh))
    outs.append(np.asarray(fn(placed, placer.batch(video))))
  np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-5)
