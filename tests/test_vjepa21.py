"""V-JEPA 2.1 against its reference run (vjepa21_tiny_v1.npz, made by bench/make_vjepa21_golden.py):
encoder outputs (last level, four levels, chosen layers, the image path), context features,
predictions and context predictions, targets, distance weights, the lambda ramp, both losses,
every gradient, one AdamW step + EMA; and the two RoPE changes shown to matter."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax import convert, loss_vjepa21 as l21, models, optim
from jepa_jax.models import rope
from jepa_jax.pretrain.train_state import TrainState

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "vjepa21_tiny_v1.npz"
TINY21 = dict(img_size=64, num_frames=4, embed_dim=48, depth=12, num_heads=3)
ATOL = 2e-5


@pytest.fixture(scope="module")
def golden21():
  with np.load(FIXTURE) as f:
    return {k: f[k] for k in f.files}


def run_once(f, *args):
  """``jax.jit(f)(*args)`` compiled without LLVM's backend optimisations: these functions run
  once, and on XLA:CPU that halves their compile time (29 -> 12 s for the loss and gradients,
  whose value comes out identical)."""
  compiled = jax.jit(f).lower(*args).compile(
      compiler_options={"xla_backend_optimization_level": 0})
  return compiled(*args)


def golden_state(golden, prefix):
  return {k[len(prefix):]: v for k, v in golden.items() if k.startswith(prefix)}


def build(**kw):
  """The golden model; its blocks scanned (one compiled block body: a 12-block encoder compiles
  in a fraction of the unrolled time)."""
  enc = models.build_encoder("tiny", attention="einsum", scan=True,
                             **{**TINY21, **models.vjepa21_fields(12), **kw})
  return enc, models.build_predictor(enc, embed_dim=32, depth=4, num_heads=2, num_mask_tokens=2,
                                     return_context=True)


def to_torch(tree, kind):
  return convert.to_torch(convert.unstack_blocks(tree), kind)


@pytest.fixture(scope="module")
def tiny21(golden21):
  enc, pred = build()
  params = {kind: jax.tree_util.tree_map(jnp.asarray, convert.stack_blocks(convert.from_torch(
      golden_state(golden21, f"param/{kind}/"), kind))) for kind in ("encoder", "predictor")}
  clip = jnp.asarray(golden21["clip"].transpose(0, 2, 3, 4, 1))
  return enc, pred, params, clip


def masks_of(golden, i):
  return (jnp.asarray(golden[f"mask_enc_{i}"], jnp.int32),
          jnp.asarray(golden[f"mask_pred_{i}"], jnp.int32))


class Masks:
  def __init__(self, context, target):
    self.context, self.target, self.context_valid, self.target_valid = context, target, None, None


# --- model outputs -----------------------------------------------------------------------------

def test_state_dict_round_trip_is_strict(golden21, tiny21):
  """Every reference name maps to one parameter and back, bit for bit."""
  for kind in ("encoder", "predictor"):
    state = golden_state(golden21, f"param/{kind}/")
    back = convert.to_torch(convert.from_torch(state, kind), kind)
    assert set(back) == set(state)
    for name, value in state.items():
      np.testing.assert_array_equal(back[name], value, err_msg=name)
  enc, pred, params, clip = tiny21
  init = jax.eval_shape(enc.init, jax.random.PRNGKey(0), clip)["params"]
  assert jax.tree_util.tree_structure(init) == jax.tree_util.tree_structure(params["encoder"])


@pytest.fixture(scope="module")
def outputs(golden21, tiny21):
  """Every forward output the tests compare, in one compiled function (one compilation of the
  12-block encoder's scan instead of one per eager call)."""
  enc, pred, params, clip = tiny21
  ep, pp = {"params": params["encoder"]}, {"params": params["predictor"]}
  image_idx = jnp.asarray(golden21["mask_image"], jnp.int32)
  masks = [masks_of(golden21, i) for i in range(2)]

  def run(ep, pp, clip):
    image = clip[:, :1]
    # (The four levels of the full clip are checked through the targets, test_loss_*; of
    # gathered tokens here, context_*.)
    out = {"encoder_full": enc.apply(ep, clip),
           "encoder_layers": jnp.stack(enc.apply(ep, clip, out_layers=(5, 11))),
           "image_full": enc.apply(ep, image),
           "image_context": enc.apply(ep, image, token_idx=image_idx, hierarchical=True)}
    for i, (ctx_idx, tgt_idx) in enumerate(masks):
      ctx = enc.apply(ep, clip, token_idx=ctx_idx, hierarchical=True)
      out[f"context_{i}"] = ctx
      out[f"pred_{i}"], out[f"pred_context_{i}"] = pred.apply(pp, ctx, ctx_idx, tgt_idx, 0)
    # Padding (invalid repeats) in the predictor's context and targets.
    ctx_idx, tgt_idx = masks[1]
    k, kt = ctx_idx.shape[1], tgt_idx.shape[1]
    cpad = jnp.concatenate([ctx_idx, ctx_idx[:, :3]], 1)
    cval = jnp.broadcast_to(jnp.arange(k + 3) < k, cpad.shape)
    tpad = jnp.concatenate([tgt_idx, tgt_idx[:, :2]], 1)
    tval = jnp.broadcast_to(jnp.arange(kt + 2) < kt, tpad.shape)
    ctx = jnp.concatenate([out["context_1"], out["context_1"][:, :3]], 1)
    p, pc = pred.apply(pp, ctx, cpad, tpad, 0, cval, tval)
    out["padded_pred_1"], out["padded_pred_context_1"] = p[:, :kt], pc[:, :k]
    return out

  return jax.tree_util.tree_map(np.asarray, run_once(run, ep, pp, clip))


@pytest.mark.parametrize("key", ["encoder_full", "encoder_layers"])
def test_encoder_outputs_match_reference(golden21, outputs, key):
  """The last level (inference output) and layers 5 and 11 (through their level norms)."""
  np.testing.assert_allclose(outputs[key], golden21[f"out/{key}"], atol=ATOL)


def test_out_layers_must_be_levels(tiny21):
  enc, _, params, clip = tiny21
  with pytest.raises(ValueError, match="levels"):
    jax.eval_shape(lambda p: enc.apply({"params": p}, clip, out_layers=(4,)), params["encoder"])


@pytest.mark.parametrize("key", ["image_full", "image_context"])
def test_image_path_matches_reference(golden21, outputs, key):
  """One-frame clips: the tubelet-1 patch embedding, the image modality embedding, a 1 x 4 x 4
  grid (full and gathered tokens)."""
  np.testing.assert_allclose(outputs[key], golden21[f"out/{key}"], atol=ATOL)


@pytest.mark.parametrize("i", [0, 1])
def test_context_and_predictor_match_reference(golden21, outputs, i):
  """Four levels in, four levels out, for the targets and the context (mask token 0 for both
  masks, as the reference's wrapper passes the clip-length group)."""
  for key in (f"context_{i}", f"pred_{i}", f"pred_context_{i}"):
    np.testing.assert_allclose(outputs[key], golden21[f"out/{key}"], atol=ATOL, err_msg=key)


def test_padded_predictor_rows_match(golden21, outputs):
  """Padding (invalid repeats) changes neither the predictions nor the context predictions."""
  np.testing.assert_allclose(outputs["padded_pred_1"], golden21["out/pred_1"], atol=ATOL)
  np.testing.assert_allclose(outputs["padded_pred_context_1"], golden21["out/pred_context_1"],
                             atol=ATOL)


@pytest.mark.parametrize("change", [dict(rope_interleaved=False), dict(interpolate_rope=False)])
def test_rope_changes_are_needed(golden21, tiny21, change):
  """V-JEPA 2's tiled frequencies, or no row/column interpolation, miss the reference by far."""
  _, _, params, clip = tiny21
  # Three blocks suffice: their output is the first level (block 2) of out/encoder_hier.
  short = dict(depth=3, levels=(2,))
  enc, _ = build(**change, **short)
  ep = {"params": dict(params["encoder"], stack=jax.tree_util.tree_map(
      lambda x: x[:3], params["encoder"]["stack"]))}
  out = np.asarray(enc.apply(ep, clip, hierarchical=True))
  ours = np.asarray(build(**short)[0].apply(ep, clip, hierarchical=True))
  np.testing.assert_allclose(ours, golden21["out/encoder_hier"][..., :48], atol=ATOL)
  assert np.abs(out - golden21["out/encoder_hier"][..., :48]).max() > 10 * ATOL


def test_interpolated_positions_and_interleaved_layout():
  """Rows/columns of a 4-patch grid sit at 0, 5, 10, 15 (the 16-patch grid's span); frames are
  not scaled; dims 2i and 2i+1 share frequency i."""
  cos, sin = rope.angle_tables(4, 8, interleaved=True, base_grid=16)
  f = 1.0 / 10000 ** (np.arange(4) / 4)
  ang = np.repeat(f, 2)[None] * np.array([0, 5, 10, 15])[:, None]
  np.testing.assert_allclose(cos, np.cos(ang), atol=2e-6)
  np.testing.assert_allclose(sin, np.sin(ang), atol=2e-6)
  t_cos, _ = rope.rope_tables(jnp.asarray([[16]]), (2, 4, 4), 24, interleaved=True, base_grid=16)
  np.testing.assert_allclose(np.asarray(t_cos[0, 0, 0, :8]), np.cos(np.repeat(f, 2)), atol=2e-6)
  with pytest.raises(ValueError, match="patch_size 14 or 16"):
    rope.base_grid_of(8)


# --- the objective -----------------------------------------------------------------------------

def loss_fn(golden, tiny21, cfg=l21.ContextLossConfig()):
  enc, pred, params, clip = tiny21
  apply_encoder, apply_predictor = l21.model_apply_fns(enc, pred)
  masks = [Masks(*masks_of(golden, i)) for i in range(2)]
  step = int(golden["step/global_step"])
  return lambda p: l21.vjepa21_loss(apply_encoder, apply_predictor, p, params["encoder"], clip,
                                    masks, step, cfg, grid=enc.grid, levels=4)


@pytest.fixture(scope="module")
def loss_and_grads(golden21, tiny21):
  return run_once(jax.value_and_grad(loss_fn(golden21, tiny21), has_aux=True), tiny21[2])


def test_targets_and_distances_match_reference(golden21, tiny21, loss_and_grads):
  enc = tiny21[0]
  targets = loss_and_grads[0][1]["targets"]  # each level layer-normed on its own
  np.testing.assert_allclose(np.asarray(targets), golden21["out/target_ln"], atol=ATOL)
  for i in range(2):
    ctx_idx, tgt_idx = masks_of(golden21, i)
    np.testing.assert_allclose(np.asarray(l21.distance_weights(ctx_idx, tgt_idx, enc.grid)),
                               golden21[f"out/distance_{i}"], rtol=1e-6)
  # A padded target never counts as the nearest one.
  ctx_idx, tgt_idx = masks_of(golden21, 0)
  padded = jnp.concatenate([tgt_idx, ctx_idx[:, :1]], 1)
  valid = jnp.broadcast_to(jnp.arange(padded.shape[1]) < tgt_idx.shape[1], padded.shape)
  np.testing.assert_allclose(np.asarray(l21.distance_weights(ctx_idx, padded, enc.grid, valid)),
                             golden21["out/distance_0"], rtol=1e-6)


def test_lambda_ramp():
  cfg = l21.ContextLossConfig(lambda_value=0.5)
  values = [float(l21.context_lambda(cfg, s)) for s in (0, 14_999, 15_000, 22_500, 30_000, 10**6)]
  np.testing.assert_allclose(values, [0, 0, 0, 0.25, 0.5, 0.5], atol=1e-7)
  flat = l21.ContextLossConfig(lambda_value=0.5, lambda_progressive=False)
  assert float(l21.context_lambda(flat, 0)) == 0.5


def check_losses(loss, aux, golden):
  """lambda, both losses and the total against the golden file's ``out/*`` (2e-6 relative)."""
  for ours, key in ((aux["lambda"], "lambda"), (aux["loss_pred"], "loss_pred"),
                    (aux["loss_context"], "loss_context"), (loss, "loss")):
    ref = float(golden[f"out/{key}"])
    assert abs(float(ours) - ref) <= 2e-6 * abs(ref), (key, float(ours), ref)


def test_loss_matches_reference(golden21, loss_and_grads):
  (loss, aux), _ = loss_and_grads
  check_losses(loss, aux, golden21)


def assert_grads_match(grads, golden, prefix, atol_floor):
  """Every reference gradient under ``prefix`` (the same names, zeros included), held to 1e-5 of
  each tensor's largest entry, or of ``atol_floor`` when that is larger."""
  for kind in ("encoder", "predictor"):
    torch_grads = to_torch(grads[kind], kind)
    assert set(torch_grads) == {k[len(f"{prefix}/{kind}/"):] for k in golden
                                if k.startswith(f"{prefix}/{kind}/")}
    for name, g in torch_grads.items():
      ref = golden[f"{prefix}/{kind}/{name}"]
      np.testing.assert_allclose(g, ref, atol=1e-5 * max(atol_floor, np.abs(ref).max()),
                                 rtol=1e-4, err_msg=name)


def test_grads_match_reference(golden21, loss_and_grads):
  _, grads = loss_and_grads
  assert_grads_match(grads, golden21, "grad", atol_floor=1.0)


def test_one_step_matches_reference(golden21, tiny21, loss_and_grads):
  """AdamW (lr 5e-4, wd 0.04, no clipping) + EMA (0.998). The image-path parameters a video step
  does not reach get no update in torch (its AdamW skips gradient-less tensors) but weight decay
  here (optax sees zero gradients): they are checked for exactly that."""
  lr, wd, m = (float(golden21[f"step/{k}"]) for k in ("lr", "wd", "momentum"))
  tx = optim.make_optimizer(optim.OptimConfig(clip_grad=None), lr=lr, wd=wd)
  params = tiny21[2]
  state = run_once(lambda g: TrainState.create(params=params, tx=tx).apply_gradients(grads=g),
                   loss_and_grads[1])
  target = optim.ema_update(params["encoder"], state.params["encoder"], m)
  for kind, tree in (("encoder", state.params["encoder"]),
                     ("predictor", state.params["predictor"]), ("target", target)):
    torch_kind = "encoder" if kind == "target" else kind
    unused = set(golden21[f"unused/{torch_kind}"].tolist())
    before = golden_state(golden21, f"param/{torch_kind}/")
    for name, value in to_torch(tree, torch_kind).items():
      ref = golden21[f"after/{kind}/{name}"]
      if name in unused:
        np.testing.assert_allclose(ref, before[name], rtol=1e-6)  # torch: untouched
        decay = 0.0 if name.endswith("bias") else lr * wd
        expected = before[name] * (1 - decay)
        if kind == "target":
          expected = m * before[name] + (1 - m) * expected
        np.testing.assert_allclose(value, expected, rtol=1e-6, err_msg=name)
        continue
      # Adam's first step is lr * g / (|g| + 1e-8): where |g| is near eps it moves with the
      # gradient's last digits (a 3e-9 gradient gives 1e-5 here), so those few entries are held
      # to the step's size only.
      grad = golden21[f"grad/{torch_kind}/{name}"]
      tol = np.where(np.abs(grad) < 1e-6, lr, 1e-5) if kind != "target" else 1e-5
      assert np.all(np.abs(value - ref) <= tol + 1e-5 * np.abs(ref)), f"{kind}/{name}"
