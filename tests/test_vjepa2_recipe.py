"""The V-JEPA 2 recipe: configs against the reference's configs/train/*.yaml, its schedulers stepped
as its train.py does, fps clip sampling, per-dataset frames per clip, the cooldown's start from a
pretraining checkpoint (optimiser included), and its mask-token assignment."""
import math
import os
import pathlib
import runpy
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax import checkpoint, models, optim
from jepa_jax.data import decode, pipeline, synthetic
from jepa_jax.pretrain import config as config_lib
from jepa_jax.pretrain import defaults, experiment, trainer

import video_files

REPO = pathlib.Path(__file__).resolve().parents[1]

# The reference's YAML files (facebookresearch/vjepa2 configs/train/<model>/<stage>.yaml):
# model, global batch (per-GPU batch x nodes x 8), crop, frames per clip, epochs, ipe, warm-up,
# final LR, and the stage.
REFERENCE = {
    "vitl16_256px_16f": ("large", 24 * 16 * 8, 256, 16, 10, 300, 40, 5.25e-4, "pretrain"),
    "vith16_256px_16f": ("huge", 24 * 16 * 8, 256, 16, 10, 300, 40, 5.25e-4, "pretrain"),
    "vitg16_256px_16f": ("giant_xformers", 24 * 16 * 8, 256, 16, 800, 300, 40, 5.25e-4,
                         "pretrain"),
    "vitl16_cooldown_256px_64f": ("large", 12 * 32 * 8, 256, 64, 40, 300, 0, 1e-6, "cooldown"),
    "vith16_cooldown_256px_64f": ("huge", 12 * 32 * 8, 256, 64, 40, 300, 0, 1e-6, "cooldown"),
    "vitg16_cooldown_256px_64f": ("giant_xformers", 6 * 64 * 8, 256, 64, 4, 30, 0, 1e-6,
                                  "cooldown"),
    "vitg16_cooldown_384px_64f": ("giant_xformers", 6 * 64 * 8, 384, 64, 40, 300, 0, 1e-6,
                                  "cooldown"),
}


def load_config(name):
  if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
  return runpy.run_path(str(REPO / "configs" / "vjepa2" / f"{name}.py"))["get_config"]()


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_configs_hold_the_reference_numbers(name):
  model, batch, crop, fpc, epochs, ipe, warmup, final_lr, stage = REFERENCE[name]
  c = load_config(name)
  m, d, o = c.model, c.data, c.optim
  assert (m.name, c.batch_size, d.crop_size, d.num_frames) == (model, batch, crop, fpc)
  assert list(d.dataset_fpcs) == [fpc] * 3 and d.fps == 4
  assert list(d.datasets_weights) == [0.335, 0.100, 0.565] and len(d.datasets) == 3
  assert tuple(d.random_resize_scale) == (0.3, 1.0)
  assert tuple(d.random_resize_aspect_ratio) == (0.75, 1.35) and d.horizontal_flip
  assert (o.epochs, o.ipe, o.ipe_scale, o.warmup) == (epochs, ipe, 1.25, warmup)
  assert (o.start_lr, o.lr, o.final_lr) == (1e-4, 5.25e-4, final_lr)
  assert (o.weight_decay, o.final_weight_decay, tuple(o.ema)) == (0.04, 0.04, (0.99925, 0.99925))
  assert o.clip_grad is None and c.seed == 239
  assert [(mc.num_blocks, tuple(mc.spatial_scale), tuple(mc.temporal_scale),
           tuple(mc.aspect_ratio), mc.max_temporal_keep) for mc in c.masks] == [
               (8, (0.15, 0.15), (1.0, 1.0), (0.75, 1.5), 1.0),
               (2, (0.7, 0.7), (1.0, 1.0), (0.75, 1.5), 1.0)]
  assert m.use_rope and m.remat == "full" and m.rescale_residual_init and m.zero_init_mask_tokens
  assert (m.pred_depth, m.pred_embed_dim, m.pred_num_heads) == (12, 384, 12)
  if stage == "cooldown":
    assert o.lr_schedule == "linear_decay" and c.init_from and c.init_from_optimizer
  else:
    assert o.lr_schedule == "warmup_cosine" and not c.init_from
  encoder, predictor = models.from_spec(config_lib.model_spec(c))
  assert encoder.use_rope and predictor.use_rope and predictor.block.num_heads == 12
  assert encoder.block.num_heads == {"large": 16, "huge": 16, "giant_xformers": 22}[model]
  assert predictor.num_mask_tokens == 6  # len(masks) x len(dataset_fpcs), as init_video_model
  assert config_lib.mask_token_ids(c) == (0, 0)


# --- schedules, restated from src/utils/schedulers.py and stepped as app/vjepa/train.py -------

class _Warmup:
  def __init__(self, warmup, start, ref, final, t_max):
    self.w, self.start, self.ref, self.final, self.t = warmup, start, ref, final, t_max - warmup
    self.s = 0

  def step(self):
    self.s += 1
    if self.s < self.w:
      return self.start + self.s / max(1, self.w) * (self.ref - self.start)
    p = (self.s - self.w) / max(1, self.t)
    return max(self.final, self.final + (self.ref - self.final) * 0.5 * (1 + math.cos(math.pi * p)))


class _Linear:
  def __init__(self, ref, final, t_max):
    self.ref, self.final, self.t, self.s = ref, final, t_max, 0

  def step(self):
    self.s += 1
    return self.ref + self.s / max(1, self.t) * (self.final - self.ref)


class _WSD:
  def __init__(self, warmup, anneal, t_max, start, ref, final):
    self.w, self.a, self.t = warmup, anneal, t_max - warmup - anneal
    self.start, self.ref, self.final, self.s = start, ref, final, 0

  def step(self):
    self.s += 1
    if self.s < self.w:
      return self.start + self.s / max(1, self.w) * (self.ref - self.start)
    if self.s < self.t + self.w:
      return self.ref
    return self.ref + (self.s - (self.t + self.w)) / max(1, self.a) * (self.final - self.ref)


def reference_run(cfg: optim.OptimConfig, steps, lr_sched):
  t_max = int(cfg.ipe_scale * cfg.epochs * cfg.ipe)
  wd_s = 0
  momentum = (cfg.ema[0] + i * (cfg.ema[1] - cfg.ema[0]) / (cfg.ipe * cfg.epochs * cfg.ipe_scale)
              for i in range(int(cfg.ipe * cfg.epochs * cfg.ipe_scale) + 1))
  out = {}
  for k in range(max(steps) + 1):
    lr = lr_sched.step()
    wd_s += 1
    wd = cfg.final_weight_decay + (cfg.weight_decay - cfg.final_weight_decay) * 0.5 * (
        1 + math.cos(math.pi * wd_s / t_max))
    wd = max(cfg.final_weight_decay, wd)
    m = next(momentum)
    if k in steps:
      out[k] = (lr, wd, m)
  return out


@pytest.mark.parametrize("name,steps", [
    ("vitg16_256px_16f", [0, 1, 11998, 11999, 12000, 12001, 150000, 239999]),
    ("vitl16_256px_16f", [0, 1, 2999]),
    ("vitl16_cooldown_256px_64f", [0, 1, 6000, 11999]),
    ("vitg16_cooldown_256px_64f", [0, 1, 119]),
])
def test_schedules_match_reference_stepping(name, steps):
  cfg = optim.OptimConfig.from_config(load_config(name).optim)
  t_max = int(cfg.ipe_scale * cfg.epochs * cfg.ipe)
  if cfg.lr_schedule == "linear_decay":
    sched = _Linear(cfg.lr, cfg.final_lr, t_max)
  else:
    sched = _Warmup(int(cfg.warmup * cfg.ipe), cfg.start_lr, cfg.lr, cfg.final_lr, t_max)
  ref = reference_run(cfg, steps, sched)
  assert max(steps) == cfg.total_steps - 1
  for k in steps:
    lr, wd, m = ref[k]
    assert float(optim.learning_rate(cfg, k)) == pytest.approx(lr, rel=1e-5), k
    assert float(optim.weight_decay(cfg, k)) == pytest.approx(wd, rel=1e-6), k
    assert float(optim.ema_momentum(cfg, k)) == pytest.approx(m, rel=1e-7), k
  if cfg.lr_schedule == "linear_decay":  # the run stops 80% of the way down (ipe_scale 1.25)
    assert float(optim.learning_rate(cfg, cfg.total_steps - 1)) == pytest.approx(
        cfg.lr + 0.8 * (cfg.final_lr - cfg.lr), rel=1e-4)


def test_wsd_schedule_matches_reference():
  cfg = optim.OptimConfig(epochs=10, ipe=20, ipe_scale=1.0, warmup=2, anneal=3, start_lr=1e-4,
                          lr=1e-3, final_lr=1e-6, lr_schedule="wsd")
  steps = list(range(200))
  ref = reference_run(cfg, steps, _WSD(40, 60, 200, 1e-4, 1e-3, 1e-6))
  for k in steps:
    assert float(optim.learning_rate(cfg, k)) == pytest.approx(ref[k][0], rel=1e-5), k
  with pytest.raises(ValueError, match="lr_schedule"):
    optim.learning_rate(optim.OptimConfig(lr_schedule="cosine"), 0)


# --- fps sampling and per-dataset frames per clip --------------------------------------------

def reference_frame_step(avg_fps, fps):
  """VideoDataset.loadvideo_decord: ``video_fps = math.ceil(vr.get_avg_fps()); fstp =
  video_fps // self.fps``."""
  return math.ceil(avg_fps) // fps


@pytest.mark.parametrize("avg_fps", [30.0, 29.97, 25.0, 24.0, 23.976, 59.94, 60.0, 12.5, 4.0])
def test_fps_frame_step_matches_reference(avg_fps):
  assert decode.fps_frame_step(avg_fps, 4) == reference_frame_step(avg_fps, 4)
  assert decode.fps_frame_step(avg_fps, 2) == reference_frame_step(avg_fps, 2)


def test_fps_slower_than_target_and_unknown_rate():
  assert reference_frame_step(3.0, 4) == 0  # the reference asserts here
  assert decode.fps_frame_step(3.0, 4) == 1
  with pytest.raises(decode.VideoReadError) as e:
    decode.fps_frame_step(0.0, 4)
  assert e.value.reason == "no_frame_rate"
  with pytest.raises(decode.VideoReadError):
    decode.clips_from_array(np.zeros((10, 4, 4, 3), np.uint8), 4, 2, target_fps=4)


@pytest.mark.parametrize("video_fps", [25, 30])
def test_decoding_at_fixed_fps(tmp_path, video_fps):
  """Frames read back from a coded video are those of the reference's step at 4 fps."""
  n = 260
  path = video_files.write_frames(str(tmp_path / f"v{video_fps}.mp4"), video_files.coded_frames(n),
                              fps=video_fps)
  step = reference_frame_step(video_fps, 4)
  for seed in range(3):
    clips = decode.read_video_clips(path, 8, frame_step=99, rng=np.random.default_rng(seed),
                                    target_fps=4)
    got = [video_files.read_code(f) for f in clips[0]]
    expected = decode.clip_frame_indices(n, 8, step, rng=np.random.default_rng(seed))[0]
    np.testing.assert_array_equal(got, expected)
    assert got[-1] - got[0] == 8 * step - 1


def test_pipeline_fps_and_dataset_fpcs(tmp_path):
  index = synthetic.ensure_synthetic(str(tmp_path / "syn"), 4, 0)
  cfg = pipeline.default_data_config()
  cfg.datasets = [index, index]
  cfg.datasets_weights = [0.5, 0.5]
  cfg.num_frames, cfg.crop_size, cfg.num_threads = 4, 32, 1
  cfg.fps, cfg.dataset_fpcs = 4, [4, 4]
  batch = next(iter(pipeline.make_pretrain_dataset(cfg, batch_size=2, seed=0)))
  assert batch["video"].shape == (2, 4, 32, 32, 3)
  cfg.dataset_fpcs = [4, 8]
  with pytest.raises(ValueError, match="one clip length"):
    pipeline.make_pretrain_dataset(cfg, batch_size=2, seed=0)
  cfg.dataset_fpcs = [4]
  with pytest.raises(ValueError, match="dataset_fpcs"):
    pipeline.make_pretrain_dataset(cfg, batch_size=2, seed=0)


# --- cooldown start: parameters, target AND optimiser state, schedules at 0 -------------------

def tiny_v2_config(synthetic_dir):
  c = defaults.base_config()
  c.batch_size = 2
  c.model.update(dict(name="tiny", use_rope=True, pred_embed_dim=24, pred_depth=1,
                      pred_num_heads=2, dtype="float32", mask_token_per="clip_length"))
  c.model.overrides = {"embed_dim": 24, "depth": 1, "num_heads": 2}
  c.data.synthetic_dir = synthetic_dir
  c.data.crop_size, c.data.num_frames = 32, 4
  c.optim.update(dict(epochs=2, ipe=2, warmup=1, lr=5.25e-4, final_lr=5.25e-4,
                      ema=(0.99925, 0.99925)))
  c.optim.clip_grad = None
  c.mesh.data = 1
  return c


@pytest.mark.slow
def test_cooldown_continues_pretraining_optimiser(tmp_path):
  c = tiny_v2_config(str(tmp_path / "syn"))
  exp = experiment.build(c, devices=jax.devices()[:1])
  state = exp.init_state(jax.random.PRNGKey(0))
  video = np.random.default_rng(0).integers(0, 255, (2, 4, 32, 32, 3), dtype=np.uint8)
  for _ in range(3):
    state, _ = exp.train_step(state, exp.shard_batch({"video": video}), jax.random.PRNGKey(1))
  # mask_token_per="clip_length": both masks use token 0 (V-JEPA 2's predictor wrapper passes the
  # clip-length group's index); token 1 gets no gradient and stays at its zero init.
  tokens = np.asarray(state.params["predictor"]["mask_tokens"])
  assert np.abs(tokens[0]).max() > 0 and not tokens[1].any()
  manager = checkpoint.make_manager(str(tmp_path / "pretrain" / "checkpoints"), async_save=False)
  checkpoint.save(manager, 3, state=state, config=c, force=True)
  manager.wait_until_finished()

  cool = tiny_v2_config(str(tmp_path / "syn"))
  cool.optim.update(dict(warmup=0, final_lr=1e-6, lr_schedule="linear_decay"))
  cool.init_from, cool.init_from_optimizer = str(tmp_path / "pretrain"), True
  cexp = experiment.build(cool, devices=jax.devices()[:1])
  fresh = checkpoint.make_manager(str(tmp_path / "cool" / "checkpoints"))
  cstate, start, _ = trainer._init_or_restore(cexp, fresh, cool)
  assert start == 0 and int(cstate.step) == 0
  same = lambda a, b: all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(
      jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
  assert same(cstate.params, state.params) and same(cstate.target_params, state.target_params)
  adam, cadam = state.opt_state[1].inner_state[0], cstate.opt_state[1].inner_state[0]
  assert int(cadam.count) == 3 and same(cadam.mu, adam.mu) and same(cadam.nu, adam.nu)
  assert int(cstate.opt_state[1].count) == 0 and int(cstate.opt_state[0].count) == 0
  assert all(int(h.count) == 0 for h in cstate.opt_state[1].hyperparams_states.values())
  cstate, metrics = cexp.train_step(cstate, cexp.shard_batch({"video": video}),
                                    jax.random.PRNGKey(1))
  ocfg = optim.OptimConfig.from_config(cool.optim)
  assert float(metrics["lr"]) == pytest.approx(5.25e-4 + (1e-6 - 5.25e-4) / ocfg.schedule_steps)
  assert int(cstate.opt_state[1].inner_state[0].count) == 4  # Adam's bias correction carries on

  weights = tmp_path / "weights"
  checkpoint.save_params(str(weights), jax.tree_util.tree_map(np.asarray, {
      "encoder": state.params["encoder"], "predictor": state.params["predictor"],
      "target": state.target_params}), config=c)
  cool.init_from = str(weights)
  with pytest.raises(checkpoint.CheckpointError, match="init_from_optimizer=False"):
    trainer._init_or_restore(cexp, fresh, cool)
