"""Frozen evaluation of V-JEPA 2 encoders: its probe protocol (4 blocks on the tokens, 16 heads,
init rescale, weight decay on everything, no clipping, the LR/WD sweep reporting the best probe,
multilevel features) against the reference's eval and configs/eval/*.yaml, and a RoPE encoder
through ``jepa_jax.eval`` end to end."""
import json
import math
import os
import runpy

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jepa_jax import checkpoint as ckpt_lib
from jepa_jax import models
from jepa_jax.data import synthetic
from jepa_jax.eval import config as config_lib
from jepa_jax.eval import encoder as enc_lib
from jepa_jax.eval import probe as probe_lib
from jepa_jax.eval import probe_runs
from jepa_jax.eval import run as run_lib
from jepa_jax.eval import settings as eval_settings
from jepa_jax.eval.features import FeatureCache
from jepa_jax.eval.placement import Placer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
  return runpy.run_path(os.path.join(REPO, "configs", "eval", f"{name}.py"))["get_config"]()


# (classes, frames, frame step, segments, views, resolution, global batch, epochs, probes) of
# configs/eval/<vitl|vitg-384>/<task>.yaml (per-GPU batch x nodes x 8).
REFERENCE = {
    "vjepa2_ssv2": (174, 16, 4, 2, 3, 256, 4 * 64, 20, 20),
    "vjepa2_k400": (400, 16, 4, 8, 3, 256, 4 * 64, 20, 20),
    "vjepa2_vitg384_ssv2": (174, 64, 2, 2, 3, 384, 2 * 128, 20, 20),
    "vjepa2_diving48": (48, 32, 2, 4, 3, 256, 2 * 64, 100, 3),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_eval_configs_hold_the_reference_protocol(name):
  classes, frames, step, segments, views, res, batch, epochs, probes = REFERENCE[name]
  c = load(name)
  assert (c.num_classes, c.data.num_frames, c.data.frame_step, c.num_segments, c.num_views,
          c.data.crop_size, c.batch_size, c.epochs) == (classes, frames, step, segments, views,
                                                        res, batch, epochs)
  assert (c.probe.depth, c.probe.num_heads, c.probe.blocks_on) == (4, 16, "tokens")
  assert c.optim.clip_grad is None and c.optim.weight_decay_on == "all"
  assert c.checkpoint_key == "target" and len(c.probe_grid) == probes
  grid = {(g["lr"], g["weight_decay"]) for g in c.probe_grid}
  if probes == 20:
    assert grid == {(lr, wd) for lr in (0.005, 0.003, 0.001, 0.0003, 0.0001)
                    for wd in (0.01, 0.1, 0.4, 0.8)}
  else:
    assert grid == {(lr, 0.8) for lr in (0.001, 0.0003, 0.0001)}
    assert list(c.feature_layer) == [17, 19, 21, 23]
  assert all(g["start_lr"] == g["lr"] and g["final_lr"] == 0.0 and g["warmup"] == 0.0
             and g["final_weight_decay"] == g["weight_decay"] for g in c.probe_grid)


def test_vjepa2_probe_init_rescale():
  """V-JEPA 2's _rescale_blocks: extra blocks 1..d-1 by sqrt(2 i), cross-attention fc2 by
  sqrt(2 (d - 1))."""
  cfg = ml_collections.ConfigDict(dict(depth=4, num_heads=None, mlp_ratio=4.0, dtype="float32",
                                       blocks_on="tokens"))
  probe = probe_lib.build_probe(5, 16, 2, cfg)
  p = probe_lib.init_probe_params(probe, 16, 0)
  raw = jax.jit(probe.init)(jax.random.PRNGKey(0), jnp.zeros((1, 4, 16)))["params"]
  np.testing.assert_allclose(p["mlp"]["fc2"]["kernel"],
                             raw["mlp"]["fc2"]["kernel"] / math.sqrt(2 * 3), rtol=1e-6)
  for i in range(3):
    for path in (("attn", "proj"), ("mlp", "fc2")):
      np.testing.assert_allclose(
          p["stack"][f"blocks_{i}"][path[0]][path[1]]["kernel"],
          raw["stack"][f"blocks_{i}"][path[0]][path[1]]["kernel"] / math.sqrt(2 * (i + 1)),
          rtol=1e-6)
  one = probe_lib.build_probe(5, 16, 2, ml_collections.ConfigDict(dict(cfg, depth=1)))
  p1 = probe_lib.init_probe_params(one, 16, 0)
  raw1 = jax.jit(one.init)(jax.random.PRNGKey(0), jnp.zeros((1, 4, 16)))["params"]
  np.testing.assert_allclose(p1["mlp"]["fc2"]["kernel"],
                             raw1["mlp"]["fc2"]["kernel"] / math.sqrt(2), rtol=1e-6)


def test_weight_decay_on_every_parameter():
  """V-JEPA 2's probe optimiser has one parameter group: biases and LayerNorms decay too."""
  base = config_lib.base_eval_config().optim
  params = {"linear": {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.full((3,), 2.0)},
            "norm1": {"scale": jnp.full((3,), 2.0)}}
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  for on, decays_bias in (("all", True), ("weights", False)):
    cfg = ml_collections.ConfigDict(dict(base, weight_decay_on=on, clip_grad=None,
                                         weight_decay=0.1, final_weight_decay=0.1))
    tx = probe_lib.make_optimizer(eval_settings.probe_optim(cfg), 10, 5)
    upd, _ = tx.update(zeros, tx.init(params), params)
    new = optax.apply_updates(params, upd)
    moved = lambda x: not np.allclose(np.asarray(x), 2.0)
    assert moved(new["linear"]["kernel"])
    assert moved(new["linear"]["bias"]) == decays_bias
    assert moved(new["norm1"]["scale"]) == decays_bias


def test_multilevel_tokens_concatenate_layers():
  enc = models.build_encoder("tiny", img_size=32, num_frames=4, embed_dim=32, depth=3,
                             num_heads=2, use_rope=True)
  params = models.init_params(enc, jax.random.PRNGKey(0), jit=True)
  pixels = np.random.default_rng(0).integers(0, 255, (1, 1, 1, 4, 32, 32, 3), np.uint8)
  multi = enc_lib.make_token_fn(enc, [0, 2])(params, jnp.asarray(pixels))
  single = [enc_lib.make_token_fn(enc, k)(params, jnp.asarray(pixels)) for k in (0, -1)]
  assert multi.shape == (1, 1, 16, 32)
  np.testing.assert_allclose(np.asarray(multi), np.concatenate([np.asarray(s) for s in single],
                                                               axis=2), atol=1e-6)
  assert enc_lib.feature_layers(enc, None) == () and enc_lib.feature_layers(enc, -1) == (2,)


def test_probe_grid_reports_the_best_probe():
  rng = np.random.default_rng(0)

  def cache(n, views=1):
    labels = rng.integers(3, size=n).astype(np.int32)
    x = rng.normal(0, 0.5, size=(n, views, 6, 16)).astype(np.float32)
    x[np.arange(n), :, :, labels] += 2.0
    return FeatureCache(x, labels, np.arange(n))

  c = config_lib.vjepa2_eval_config("t", 3, frames=4, frame_step=2, segments=1, views=1,
                                    resolution=32, clips_per_gpu=16, gpus=1, epochs=3,
                                    grid=[dict(lr=1e-7, start_lr=1e-7),
                                          dict(lr=3e-3, start_lr=3e-3)])
  c.probe.update(dict(depth=2, num_heads=2, dtype="float32"))
  c.log_every = 0
  rec = probe_runs.run_cached_probe(probe_runs.ProbeTask(3, 16, 2, eval_settings.read(c)), cache(64),
                                    cache(30), 0, 1.0,
                                 Placer(), "/unused", False)
  assert [h["optim"]["lr"] for h in rec["heads"]] == [1e-7, 3e-3]
  assert rec["best_head"] == 1 and rec["top1"] == rec["heads"][1]["top1"] > rec["heads"][0]["top1"]
  with pytest.raises(ValueError, match="probe_grid"):
    bad = ml_collections.ConfigDict(c.to_dict())
    bad.probe_grid = [dict(learning_rate=1.0)]
    probe_runs.grid_tasks(probe_runs.ProbeTask(3, 16, 2, eval_settings.read(bad)))


@pytest.mark.slow
def test_rope_encoder_end_to_end(tmp_path):
  """A converted-style V-JEPA 2 checkpoint (RoPE, its config saying so) through the evaluation:
  the encoder is rebuilt as RoPE at the eval resolution, probes sweep, results.json."""
  syn = str(tmp_path / "syn")
  synthetic.ensure_synthetic(syn, 10, seed=0)
  enc = models.build_encoder("tiny", img_size=32, num_frames=4, embed_dim=32, depth=1,
                             num_heads=2, use_rope=True)
  cfg = {"model": {"name": "tiny", "patch_size": 16, "tubelet_size": 2, "uniform_power": True,
                   "use_rope": True, "scan": False,
                   "overrides": {"embed_dim": 32, "depth": 1, "num_heads": 2}},
         "data": {"crop_size": 32, "num_frames": 4}}
  params = jax.device_get(models.init_params(enc, jax.random.PRNGKey(1), jit=True))
  ckpt_lib.save_params(str(tmp_path / "ckpt"), {"encoder": params, "target": params}, config=cfg)
  c = config_lib.vjepa2_eval_config("syn", 2, frames=4, frame_step=2, segments=2, views=2,
                                    resolution=32, clips_per_gpu=8, gpus=1, epochs=1,
                                    grid=config_lib.VJEPA2_VIDEO_GRID[:2])
  c.checkpoint = str(tmp_path / "ckpt")
  c.data.synthetic_dir, c.synthetic_label, c.num_classes = syn, "colour", None
  c.data.synthetic_num_videos = 10
  c.data.num_threads, c.data.num_workers, c.log_every, c.cache_features = 1, 0, 0, True
  c.encoder_dtype, c.probe.dtype, c.probe.num_heads = "float32", "float32", 2
  c.train_index = c.val_index = ""
  results = run_lib.evaluate(c, str(tmp_path / "work"))
  assert results["model"]["use_rope"]
  run = results["settings"][0]["runs"][0]
  assert len(run["heads"]) == 2 and run["top1"] == max(h["top1"] for h in run["heads"])
  saved = json.load(open(tmp_path / "work" / "results.json"))
  assert saved["protocol"]["probe"]["blocks_on"] == "tokens"
  assert len(saved["protocol"]["probe_grid"]) == 2
