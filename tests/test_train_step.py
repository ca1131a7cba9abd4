"""The pure loss, the optimiser and schedules, the EMA, the sharded train step and gradient
accumulation."""
import collections
import math
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jepa_jax import convert, loss as loss_lib, models, optim, sharding
from jepa_jax import masks as masks_lib
from jepa_jax.pretrain import defaults, monitor
from jepa_jax.pretrain import experiment
from jepa_jax.pretrain import train_step as train_step_lib
from jepa_jax.pretrain.train_state import TrainState


class GoldenMasks(NamedTuple):
  context: jax.Array
  context_valid: None
  target: jax.Array
  target_valid: None


def golden_state(golden, prefix):
  return {k[len(prefix):]: v for k, v in golden.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def golden_setup(golden):
  enc = models.build_encoder("tiny", img_size=64, num_frames=8, embed_dim=96, depth=2,
                             num_heads=4, attention="einsum")
  pred = models.build_predictor(enc, embed_dim=48, depth=2)
  params = {"encoder": convert.from_torch(golden_state(golden, "param/encoder/"), "encoder"),
            "predictor": convert.from_torch(golden_state(golden, "param/predictor/"), "predictor")}
  params = jax.tree_util.tree_map(jnp.asarray, params)
  masks = [GoldenMasks(jnp.asarray(golden[f"mask_enc_{i}"], jnp.int32), None,
                       jnp.asarray(golden[f"mask_pred_{i}"], jnp.int32), None) for i in range(2)]
  clip = jnp.asarray(golden["clip"].transpose(0, 2, 3, 4, 1))
  return enc, pred, params, masks, clip


def golden_loss_fn(golden_setup):
  enc, pred, params, masks, clip = golden_setup
  apply_encoder, apply_predictor = loss_lib.model_apply_fns(enc, pred)
  return lambda p: loss_lib.vjepa_loss(apply_encoder, apply_predictor, p, params["encoder"], clip,
                                       masks)


# --- the pure loss against the reference ------------------------------------------------------

def test_targets_match_reference(golden, golden_setup):
  enc, pred, params, _, clip = golden_setup
  apply_encoder, _ = loss_lib.model_apply_fns(enc, pred)
  targets = loss_lib.compute_targets(apply_encoder, params["encoder"], clip)
  np.testing.assert_allclose(np.asarray(targets), golden["out/target_ln"], atol=2e-5)


def test_loss_and_grads_match_reference(golden, golden_setup):
  (loss, aux), grads = jax.jit(jax.value_and_grad(golden_loss_fn(golden_setup), has_aux=True))(
      golden_setup[2])
  assert abs(float(loss) - float(golden["out/loss"])) <= 1e-6 * float(golden["out/loss"])
  assert aux["loss_per_mask"].shape == (2,)
  for kind in ("encoder", "predictor"):
    torch_grads = convert.to_torch(grads[kind], kind)
    for name, g in torch_grads.items():
      ref = golden[f"grad/{kind}/{name}"]
      np.testing.assert_allclose(g, ref, atol=1e-5 * max(1.0, np.abs(ref).max()), rtol=1e-4,
                                 err_msg=name)


def test_l1_weights():
  pred = jnp.arange(24.0).reshape(1, 4, 6)
  target = jnp.zeros_like(pred)
  assert float(loss_lib.l1_feature_loss(pred, target)) == pytest.approx(float(pred.mean()))
  w = jnp.asarray([[1, 1, 0, 0]])
  assert float(loss_lib.l1_feature_loss(pred, target, w)) == pytest.approx(float(pred[:, :2].mean()))


def test_one_step_matches_reference(golden, golden_setup):
  """AdamW (lr 5e-4, wd 0.04, no clipping) + EMA (0.998) from the golden weights."""
  lr, wd, m = float(golden["step/lr"]), float(golden["step/wd"]), float(golden["step/momentum"])
  cfg = optim.OptimConfig(clip_grad=None)
  tx = optim.make_optimizer(cfg, lr=lr, wd=wd)
  params = golden_setup[2]
  state = TrainState.create(params=params, tx=tx)
  grads = jax.jit(jax.grad(lambda p: golden_loss_fn(golden_setup)(p)[0]))(params)
  state = state.apply_gradients(grads=grads)
  target = optim.ema_update(params["encoder"], state.params["encoder"], m)
  for kind, tree in (("encoder", state.params["encoder"]), ("predictor", state.params["predictor"]),
                     ("target", target)):
    torch_kind = "encoder" if kind == "target" else kind
    for name, value in convert.to_torch(tree, torch_kind).items():
      np.testing.assert_allclose(value, golden[f"after/{kind}/{name}"], atol=1e-5, rtol=1e-5,
                                 err_msg=f"{kind}/{name}")
  hp = optim.applied_hyperparams(state.opt_state)
  assert float(hp["learning_rate"]) == pytest.approx(lr) and float(hp["weight_decay"]) == pytest.approx(wd)


# --- schedules --------------------------------------------------------------------------------

def reference_schedules(cfg: optim.OptimConfig, steps):
  """An independent re-statement of the reference's scheduler objects, stepped as train.py does."""
  ipe, epochs = cfg.ipe, cfg.epochs
  t_max = int(cfg.ipe_scale * epochs * ipe)
  warm = int(cfg.warmup * ipe)
  out = []
  s = 0
  momentum = (cfg.ema[0] + i * (cfg.ema[1] - cfg.ema[0]) / (ipe * epochs * cfg.ipe_scale)
              for i in range(int(ipe * epochs * cfg.ipe_scale) + 1))
  for k in range(max(steps) + 1):
    s += 1
    if s < warm:
      lr = cfg.start_lr + s / max(1, warm) * (cfg.lr - cfg.start_lr)
    else:
      progress = (s - warm) / max(1, t_max - warm)
      lr = max(cfg.final_lr, cfg.final_lr + (cfg.lr - cfg.final_lr) * 0.5 * (1 + math.cos(math.pi * progress)))
    wd = cfg.final_weight_decay + (cfg.weight_decay - cfg.final_weight_decay) * 0.5 * (
        1 + math.cos(math.pi * s / t_max))
    wd = min(cfg.final_weight_decay, wd)
    m = next(momentum)
    clip = (k // ipe) > cfg.warmup
    if k in steps:
      out.append((lr, wd, m, clip))
  return out


def test_schedules_match_reference_stepping():
  cfg = optim.OptimConfig()
  steps = [0, 1, 11998, 11999, 12000, 12001, 12299, 12300, 45000, 89999]
  for k, (lr, wd, m, clip) in zip(steps, reference_schedules(cfg, steps)):
    assert float(optim.learning_rate(cfg, k)) == pytest.approx(lr, rel=1e-5), k
    assert float(optim.weight_decay(cfg, k)) == pytest.approx(wd, rel=1e-5), k
    assert float(optim.ema_momentum(cfg, k)) == pytest.approx(m, rel=1e-7), k
    assert (k >= cfg.clip_start_step) == clip, k
  assert cfg.total_steps == 90000 and cfg.schedule_steps == 112500
  # Truncation: the run ends before the schedules do.
  assert float(optim.learning_rate(cfg, 89999)) > 10 * cfg.final_lr
  assert float(optim.weight_decay(cfg, 89999)) < 0.39
  assert float(optim.ema_momentum(cfg, 89999)) < 0.9997


def test_applied_weight_decay_equals_schedule():
  """With zero gradients Adam's step is 0, so each update is exactly -lr(k) * wd(k) * p."""
  cfg = optim.OptimConfig(epochs=4, ipe=3, warmup=1, weight_decay=0.1, final_weight_decay=0.5,
                          clip_grad=None)
  params = {"encoder": {"dense": {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.ones(3)},
                        "norm": {"scale": jnp.ones(3)}},
            "predictor": {"mask_tokens": jnp.full((2, 4), 3.0)}}
  tx = optim.make_optimizer(cfg)
  state = tx.init(params)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  for k in range(8):
    updates, state = tx.update(zeros, state, params)
    lr, wd = float(optim.learning_rate(cfg, k)), float(optim.weight_decay(cfg, k))
    hp = optim.applied_hyperparams(state)
    assert float(hp["learning_rate"]) == pytest.approx(lr, rel=1e-6)
    assert float(hp["weight_decay"]) == pytest.approx(wd, rel=1e-6)
    np.testing.assert_allclose(updates["encoder"]["dense"]["kernel"],
                               -lr * wd * params["encoder"]["dense"]["kernel"], rtol=1e-5)
    np.testing.assert_allclose(updates["predictor"]["mask_tokens"],
                               -lr * wd * params["predictor"]["mask_tokens"], rtol=1e-5)
    assert not np.any(np.asarray(updates["encoder"]["dense"]["bias"]))
    assert not np.any(np.asarray(updates["encoder"]["norm"]["scale"]))
    params = optax.apply_updates(params, updates)


def test_decay_mask_scanned_and_unscanned():
  params = {"stack": {"blocks_0": {"norm1": {"scale": jnp.ones(4), "bias": jnp.ones(4)},
                                   "attn": {"qkv": {"kernel": jnp.ones((4, 12))}}}},
            "mask_tokens": jnp.ones((2, 4)), "patch_embed": {"kernel": jnp.ones((2, 2, 2, 3, 4))}}
  mask = optim.decay_mask(params)
  assert mask["stack"]["blocks_0"]["norm1"] == {"scale": False, "bias": False}
  assert mask["stack"]["blocks_0"]["attn"]["qkv"]["kernel"] and mask["mask_tokens"]
  scanned = optim.decay_mask(convert.stack_blocks(params))
  assert scanned["stack"]["blocks"]["block"]["norm1"] == {"scale": False, "bias": False}
  assert scanned["stack"]["blocks"]["block"]["attn"]["qkv"]["kernel"]


def test_clipping_per_module_after_warmup():
  tx = optim.clip_by_module_norm(10.0, start_step=2)
  grads = {"encoder": {"w": jnp.full((4,), 10.0)}, "predictor": {"w": jnp.full((4,), 1.0)}}
  state = tx.init(grads)
  for k in range(4):
    out, state = tx.update(grads, state)
    enc_norm = float(optim.global_norm(out["encoder"]))
    if k < 2:
      assert enc_norm == pytest.approx(20.0)
    else:
      assert enc_norm == pytest.approx(10.0, rel=1e-5)
    np.testing.assert_allclose(out["predictor"]["w"], grads["predictor"]["w"])  # norm 2 < 10


# --- the sharded step ---------------------------------------------------------------------------

def tiny_config(batch_size=8, mesh=(-1, 1)):
  c = defaults.base_config()
  c.batch_size = batch_size
  c.model.name = "tiny"
  c.model.overrides = {"embed_dim": 96, "depth": 2, "num_heads": 4}
  c.model.pred_embed_dim, c.model.pred_depth = 48, 2
  c.model.dtype = "float32"
  c.data.crop_size, c.data.num_frames = 64, 8
  c.optim.update(dict(epochs=2, ipe=4, warmup=1))
  c.mesh.data, c.mesh.fsdp = mesh
  c.mesh.min_fsdp_size = 1024
  return c


def run_steps(config, num_steps, devices=None, video=None, make_step=None):
  """``make_step(exp)``: the step function to run (default ``exp.train_step``)."""
  exp = experiment.build(config, devices=devices)
  step = exp.train_step if make_step is None else make_step(exp)
  state = exp.init_state(jax.random.PRNGKey(config.seed))
  rng = np.random.default_rng(0)
  mask_rng = jax.random.PRNGKey(7)
  if make_step is not None:  # an ahead-of-time compiled step takes only its own input shardings
    mask_rng = jax.device_put(mask_rng, sharding.replicated(exp.mesh))
  losses, metrics = [], None
  for _ in range(num_steps):
    if video is None:
      batch = {"video": rng.integers(0, 256, (config.batch_size, 8, 64, 64, 3), dtype=np.uint8)}
    else:
      batch = {"video": video}
    state, metrics = step(state, exp.shard_batch(batch), mask_rng)
    losses.append(float(metrics["loss"]))
  return exp, state, losses, metrics


@pytest.fixture(scope="module")
def single_device_run():
  return run_steps(tiny_config(mesh=(1, 1)), 2, devices=jax.devices()[:1])


@pytest.mark.parametrize("mesh", [(8, 1), (2, 4)], ids=["data8", "data2xfsdp4"])
def test_sharded_step_matches_single_device(single_device_run, mesh, num_devices):
  if num_devices < 8:
    pytest.skip("needs 8 (simulated) devices")
  _, ref_state, ref_losses, _ = single_device_run
  exp, state, losses, _ = run_steps(tiny_config(mesh=mesh), 2)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(ref_state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(state.target_params),
                  jax.tree_util.tree_leaves(ref_state.target_params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  qkv = state.params["encoder"]["stack"]["blocks_0"]["attn"]["qkv"]["kernel"]
  if mesh[1] > 1:
    assert "fsdp" in str(qkv.sharding.spec), qkv.sharding
    # qkv kernels split along their input dimension (sharding.param_spec: the TPU attention
    # views the output dimension as [3, H, d], which a split of 3D does not follow).
    assert qkv.addressable_shards[0].data.shape[0] == qkv.shape[0] // 4
    mu = state.opt_state[1].inner_state[0].mu["encoder"]["stack"]["blocks_0"]["attn"]["qkv"]["kernel"]
    assert mu.sharding == qkv.sharding
  else:
    assert qkv.sharding.is_fully_replicated


def test_step_compiles_once(single_device_run):
  exp = single_device_run[0]
  state = exp.init_state(jax.random.PRNGKey(1))
  rng = np.random.default_rng(1)
  for _ in range(4):
    batch = {"video": rng.integers(0, 256, (8, 8, 64, 64, 3), dtype=np.uint8)}
    state, metrics = exp.train_step(state, exp.shard_batch(batch), jax.random.PRNGKey(0))
  assert exp.train_step._cache_size() == 1
  assert int(state.step) == 4
  assert float(metrics["lr"]) == pytest.approx(float(optim.learning_rate(exp.optim_cfg, 3)))


def test_metrics_and_ema(single_device_run):
  exp, state, losses, metrics = single_device_run
  assert all(np.isfinite(losses)) and int(metrics["nonfinite"]) == 0
  for key in ("grad_norm/encoder", "grad_norm/predictor", "lr", "wd", "momentum",
              "tokens/context0", "tokens/target1", "loss/mask0"):
    assert key in metrics
  # The target moved towards the online encoder, but only by (1 - m) per step.
  online = state.params["encoder"]["stack"]["blocks_0"]["attn"]["qkv"]["kernel"]
  target = state.target_params["stack"]["blocks_0"]["attn"]["qkv"]["kernel"]
  assert 0 < float(jnp.abs(online - target).max()) < 1e-3


def test_nonfinite_step_leaves_state_untouched():
  config = tiny_config(mesh=(1, 1))
  exp = experiment.build(config, devices=jax.devices()[:1])
  state = exp.init_state(jax.random.PRNGKey(0))
  before = jax.tree_util.tree_map(np.asarray, state)
  video = jnp.full((8, 8, 64, 64, 3), jnp.nan, jnp.float32)  # float input skips normalisation
  raw = experiment.train_step_lib.make_train_step(exp.encoder, exp.predictor, exp.mask_cfgs,
                                                  exp.optim_cfg, exp.tx, 8)
  new_state, metrics = jax.jit(raw)(state, {"video": video}, jax.random.PRNGKey(0))
  assert int(metrics["nonfinite"]) == 1 and not np.isfinite(float(metrics["loss"]))
  for a, b in zip(jax.tree_util.tree_leaves(new_state), jax.tree_util.tree_leaves(before)):
    np.testing.assert_array_equal(np.asarray(a), b)


def test_compile_memory_on_abstract_shapes():
  config = tiny_config(mesh=(2, 4))
  exp = experiment.build(config)
  mem = exp.memory()
  assert mem["argument_size_in_bytes"] > 0 and mem["peak_estimate_bytes"] > 0


# --- gradient accumulation ----------------------------------------------------------------------

def accum_config(k, batch_size=8, mesh=(1, 1)):
  c = tiny_config(batch_size=batch_size, mesh=mesh)
  c.grad_accum_steps = k
  return c


def assert_same_updates(run, reference):
  """Two updates from the same init, batches and masks: same losses, metrics and state (float32
  summation order apart). The second update also checks that the step counter, and so the masks
  and schedules, advanced by one per global batch."""
  _, state, losses, metrics = run
  _, ref_state, ref_losses, ref_metrics = reference
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
  assert int(state.step) == int(ref_state.step) == 2
  assert sorted(metrics) == sorted(ref_metrics)
  for key in ref_metrics:
    if key.startswith("monitor/"):  # per micro-batch: test_accumulated_monitor_statistics
      continue
    np.testing.assert_allclose(float(metrics[key]), float(ref_metrics[key]), rtol=1e-5,
                               err_msg=key)
  for name in ("params", "target_params"):
    for a, b in zip(jax.tree_util.tree_leaves(getattr(state, name)),
                    jax.tree_util.tree_leaves(getattr(ref_state, name))):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, err_msg=name)
  for a, b in zip(jax.tree_util.tree_leaves(state.opt_state),
                  jax.tree_util.tree_leaves(ref_state.opt_state)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-9)


@pytest.fixture(scope="module")
def accumulated_run():
  return run_steps(accum_config(4), 2, devices=jax.devices()[:1])


def test_accumulated_update_equals_whole_batch(single_device_run, accumulated_run):
  """8 clips as 4 micro-batches of 2: the static masks pad clips to different numbers of valid
  target tokens (tokens/target0 is not a whole number), so equal weights per micro-batch would
  not give the whole-batch loss; the token-weighted sum does."""
  assert float(single_device_run[3]["tokens/target0"]) % 1 != 0
  assert_same_updates(accumulated_run, single_device_run)


def test_accumulated_step_compiles_once(accumulated_run):
  assert accumulated_run[0].train_step._cache_size() == 1  # two steps were run


@pytest.fixture(scope="module")
def whole_batch_16():
  return run_steps(accum_config(1, batch_size=16), 2, devices=jax.devices()[:1])


def collectives(hlo_text: str) -> dict:
  return collections.Counter(re.findall(
      r"\b(all-to-all|collective-permute|all-gather|all-reduce|reduce-scatter)(?:-start)?\(",
      hlo_text))


@pytest.mark.slow
@pytest.mark.parametrize("mesh", [(2, 4)], ids=["data2xfsdp4"])  # data and fsdp axes both
def test_sharded_accumulated_update_equals_whole_batch(whole_batch_16, mesh, num_devices):
  """16 clips as 2 micro-batches on 8 devices equal the whole batch on one, and no clip changes
  device to form a micro-batch: the compiled step has no more collective-permutes than the
  whole-batch step on the same mesh, nor, on the data-parallel mesh, all-to-alls (the whole-batch
  step has some of its own, in the collapse statistics). Contiguous micro-batches
  (``reshape(k, B/k)``) add 9 collective-permutes on both meshes."""
  if num_devices < 8:
    pytest.skip("needs 8 (simulated) devices")
  compiled = []

  def compile_ahead(exp):  # the same step compiled ahead of time, so that its HLO can be read
    compiled.append(exp.compile_train_step())
    return compiled[0]

  run = run_steps(accum_config(2, batch_size=16, mesh=mesh), 2, make_step=compile_ahead)
  assert_same_updates(run, whole_batch_16)
  ops = collectives(compiled[0].as_text())
  whole = collectives(
      experiment.build(accum_config(1, batch_size=16, mesh=mesh)).compile_train_step().as_text())
  assert ops["all-reduce"] > 0, ops  # the gradients are summed over the data axis
  assert ops["collective-permute"] <= whole["collective-permute"], (ops, whole)
  if mesh[1] == 1:  # with fsdp the loop body re-splits weight gradients (all-to-all on fsdp only)
    assert ops["all-to-all"] <= whole["all-to-all"], (ops, whole)


def test_accumulated_monitor_statistics_average_micro_batches():
  """With k micro-batches the collapse statistics are the mean of each micro-batch's (the step
  keeps scalars, not the whole batch's targets): recomputed here from the loss on clips j::k."""
  k, batch_size = 2, 8
  config = accum_config(k, batch_size)
  exp = experiment.build(config, devices=jax.devices()[:1])
  state = exp.init_state(jax.random.PRNGKey(config.seed))
  video = np.random.default_rng(3).integers(0, 256, (batch_size, 8, 64, 64, 3), dtype=np.uint8)
  rng = jax.random.PRNGKey(7)
  masks = masks_lib.sample_masks(jax.random.fold_in(rng, state.step), batch_size,
                                 exp.encoder.grid, exp.mask_cfgs)
  apply_encoder, apply_predictor = loss_lib.model_apply_fns(exp.encoder, exp.predictor)

  @jax.jit  # one compile for both micro-batches (op by op, this test took a minute)
  def micro_statistics(clips, micro):
    _, aux = loss_lib.vjepa_loss(apply_encoder, apply_predictor, state.params,
                                 state.target_params, clips, micro,
                                 exp.settings.mask_token_ids)
    return monitor.step_statistics(aux["targets"], aux["predictions"], micro)

  expected = []
  for j in range(k):
    micro = jax.tree_util.tree_map(lambda x: x[j::k], masks)
    clips = train_step_lib.normalize_clips(video[j::k], exp.encoder.block.dtype)
    expected.append(micro_statistics(clips, micro))
  _, metrics = exp.train_step(state, exp.shard_batch({"video": video}), rng)
  assert any(k.startswith("monitor/") for k in metrics)
  for key in expected[0]:
    np.testing.assert_allclose(float(metrics[key]), np.mean([float(e[key]) for e in expected]),
                               rtol=1e-4, err_msg=key)
