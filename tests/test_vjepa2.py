"""V-JEPA 2's 3D-RoPE encoder and predictor against the reference run (vjepa2_rope_tiny_v1.npz):
outputs, loss, every gradient, one AdamW step + EMA; and the RoPE invariants the golden run cannot
show on its own (layout, widths, coordinates of gathered/padded/permuted tokens, every attention
implementation, remat and scan, reduced-precision angles, non-square inputs)."""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jepa_jax import convert, loss as loss_lib, models, optim
from jepa_jax.models import rope
from jepa_jax.pretrain.train_state import TrainState

TINY2 = dict(img_size=64, num_frames=8, embed_dim=112, depth=2, num_heads=4, use_rope=True)


def golden_state(golden, prefix):
  return {k[len(prefix):]: v for k, v in golden.items() if k.startswith(prefix)}


def build(attention="einsum", **kw):
  enc = models.build_encoder("tiny", attention=attention, **dict(TINY2, **kw))
  return enc, models.build_predictor(enc, embed_dim=64, depth=2, num_heads=4)


@pytest.fixture(scope="module")
def tiny2(golden_v2):
  enc, pred = build()
  params = {"encoder": convert.from_torch(golden_state(golden_v2, "param/encoder/"), "encoder"),
            "predictor": convert.from_torch(golden_state(golden_v2, "param/predictor/"),
                                            "predictor")}
  params = jax.tree_util.tree_map(jnp.asarray, params)
  clip = jnp.asarray(golden_v2["clip"].transpose(0, 2, 3, 4, 1))  # [B,C,T,H,W] -> [B,T,H,W,C]
  return enc, pred, params, clip


def masks_of(golden, i):
  return (jnp.asarray(golden[f"mask_enc_{i}"], jnp.int32),
          jnp.asarray(golden[f"mask_pred_{i}"], jnp.int32))


# --- the rotation itself -----------------------------------------------------------------------

def reference_rotation(x, pos, width):
  """Independent numpy statement of the released rotation of one axis slice ``x [N, width]``:
  frequencies f_i = 10000^(-i/(width/2)), tiled [f, f]; pairs (x_2i, x_2i+1) -> (-x_2i+1, x_2i)."""
  half = width // 2
  f = 1.0 / 10000 ** (np.arange(half) / half)
  angles = np.concatenate([f, f])[None, :] * pos[:, None]
  y = np.empty_like(x)
  y[:, 0::2], y[:, 1::2] = -x[:, 1::2], x[:, 0::2]
  return x * np.cos(angles) + y * np.sin(angles)


@pytest.mark.parametrize("head_dim,width", [(28, 8), (16, 4), (64, 20), (80, 26), (32, 10),
                                            (88, 28)])
def test_axis_widths_and_released_layout(head_dim, width):
  """Per axis 2*((head_dim//3)//2) dims in [t, h, w] order, the rest untouched, tiled frequencies
  paired with neighbouring dims."""
  assert rope.axis_width(head_dim) == width
  grid = (3, 4, 5)
  idx = jnp.asarray([[0, 7, 23, 59, 38]], jnp.int32)
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(head_dim), (1, 5, 2, head_dim)))
  out = np.asarray(rope.apply_rope(jnp.asarray(x), rope.rope_tables(idx, grid, head_dim)))
  t, h, w = (np.asarray(c[0]) for c in rope.token_coords(idx, grid))
  np.testing.assert_array_equal(t * 20 + h * 5 + w, np.asarray(idx[0]))
  for head in range(2):
    for a, pos in enumerate((t, h, w)):
      sl = slice(a * width, (a + 1) * width)
      np.testing.assert_allclose(out[0, :, head, sl], reference_rotation(
          x[0, :, head, sl].astype(np.float64), pos, width), atol=2e-6)
    np.testing.assert_array_equal(out[0, :, head, 3 * width:], x[0, :, head, 3 * width:])


def test_released_layout_is_not_the_interleaved_fix(golden_v2, tiny2, monkeypatch):
  """The golden run needs the tiled ("bug") layout: the interleaved frequencies of the fix the
  reference comments on miss its outputs by far more than the tolerance."""
  enc, _, params, clip = tiny2

  def interleaved(length, width, dtype_name="float32"):
    half = width // 2
    f = 1.0 / 10000 ** (np.arange(half) / half)
    ang = np.repeat(f, 2)[None] * np.arange(length)[:, None]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)

  monkeypatch.setattr(rope, "angle_tables", interleaved)
  out = np.asarray(enc.apply({"params": params["encoder"]}, clip))
  assert np.abs(out - golden_v2["out/encoder_full"]).max() > 10 * 2e-5  # measured 8e-4


# --- golden outputs ----------------------------------------------------------------------------

def test_no_position_table(tiny2):
  enc, pred, params, _ = tiny2
  assert "pos_embed" not in str(jax.tree_util.tree_structure(params))
  with pytest.raises(ValueError, match="no position table"):
    enc.position_table()
  with pytest.raises(ValueError, match="no position table"):
    pred.position_table()


def test_encoder_full_matches_reference(golden_v2, tiny2):
  enc, _, params, clip = tiny2
  out = enc.apply({"params": params["encoder"]}, clip)
  np.testing.assert_allclose(np.asarray(out), golden_v2["out/encoder_full"], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("i", [0, 1])
def test_context_and_predictor_match_reference(golden_v2, tiny2, i):
  """Gathered context tokens rotate by their grid index; the predictor's [context, target]
  sequence too (unsorted here, sorted in the reference: same numbers)."""
  enc, pred, params, clip = tiny2
  ctx_idx, tgt_idx = masks_of(golden_v2, i)
  ctx = enc.apply({"params": params["encoder"]}, clip, token_idx=ctx_idx)
  np.testing.assert_allclose(np.asarray(ctx), golden_v2[f"out/context_{i}"], atol=2e-5, rtol=1e-5)
  out = pred.apply({"params": params["predictor"]}, ctx, ctx_idx, tgt_idx, mask_index=i)
  np.testing.assert_allclose(np.asarray(out), golden_v2[f"out/pred_{i}"], atol=1e-5, rtol=1e-5)


def test_positions_follow_token_index_not_sequence_slot(golden_v2, tiny2):
  """Permuting the context (tokens and their indices together) permutes the encoder's outputs and
  leaves the predictions unchanged: RoPE reads the grid index. (Why the reference's sort before the
  predictor's blocks is numerically irrelevant.)"""
  enc, pred, params, clip = tiny2
  ctx_idx, tgt_idx = masks_of(golden_v2, 0)
  perm = jax.random.permutation(jax.random.PRNGKey(3), ctx_idx.shape[1])
  ep, pp = {"params": params["encoder"]}, {"params": params["predictor"]}
  shuffled = enc.apply(ep, clip, token_idx=ctx_idx[:, perm])
  np.testing.assert_allclose(np.asarray(shuffled), golden_v2["out/context_0"][:, perm], atol=2e-5)
  out = pred.apply(pp, shuffled, ctx_idx[:, perm], tgt_idx, mask_index=0)
  np.testing.assert_allclose(np.asarray(out), golden_v2["out/pred_0"], atol=1e-5)
  # The same tokens told they sit elsewhere give other outputs: positions are really used.
  moved = enc.apply(ep, clip, token_idx=ctx_idx)
  wrong = enc.apply(ep, clip, method=enc.embed)
  wrong = enc.apply(ep, models.gather_tokens(wrong, ctx_idx), token_idx=ctx_idx[:, ::-1],
                    method=enc.encode_tokens)
  assert np.abs(np.asarray(wrong) - np.asarray(moved)).max() > 10 * 2e-5  # measured 1.6e-3


def test_gathered_tokens_need_their_indices(tiny2):
  enc, _, params, clip = tiny2
  tokens = enc.apply({"params": params["encoder"]}, clip, method=enc.embed)
  with pytest.raises(ValueError, match="token_idx"):
    enc.apply({"params": params["encoder"]}, tokens[:, :10], method=enc.encode_tokens)


def test_padding_is_invisible(golden_v2, tiny2):
  """Padded slots (repeats marked invalid) rotate like any token and are never attended to."""
  enc, pred, params, clip = tiny2
  ctx_idx, tgt_idx = masks_of(golden_v2, 1)
  k, kt = ctx_idx.shape[1], tgt_idx.shape[1]
  padded = jnp.concatenate([ctx_idx, ctx_idx[:, :5]], axis=1)
  valid = jnp.broadcast_to(jnp.arange(k + 5)[None] < k, padded.shape)
  out = enc.apply({"params": params["encoder"]}, clip, token_idx=padded, token_valid=valid)
  np.testing.assert_allclose(np.asarray(out[:, :k]), golden_v2["out/context_1"], atol=2e-5)
  tgt_padded = jnp.concatenate([tgt_idx, tgt_idx[:, :3]], axis=1)
  tgt_valid = jnp.broadcast_to(jnp.arange(kt + 3)[None] < kt, tgt_padded.shape)
  p = pred.apply({"params": params["predictor"]}, out, padded, tgt_padded, 1, valid, tgt_valid)
  np.testing.assert_allclose(np.asarray(p[:, :kt]), golden_v2["out/pred_1"], atol=2e-5)


# --- attention implementations, remat, scan ------------------------------------------------

@pytest.mark.parametrize("attention", ["xla", "chunked"])
def test_attention_implementations_match_reference(golden_v2, tiny2, attention, monkeypatch):
  """q/k are rotated before the kernel, so every implementation sees the same q/k. (cuDNN's
  kernel takes the same rotated q/k; it runs only on a GPU.)"""
  from jepa_jax.models import layers
  monkeypatch.setattr(layers, "ATTENTION_CHUNK", 24)  # 64 tokens: 3 chunks, the last one padded
  _, _, params, clip = tiny2
  enc, pred = build(attention)
  ep, pp = {"params": params["encoder"]}, {"params": params["predictor"]}
  np.testing.assert_allclose(np.asarray(enc.apply(ep, clip)), golden_v2["out/encoder_full"],
                             atol=2e-5)
  ctx_idx, tgt_idx = masks_of(golden_v2, 0)
  ctx = enc.apply(ep, clip, token_idx=ctx_idx)
  np.testing.assert_allclose(np.asarray(pred.apply(pp, ctx, ctx_idx, tgt_idx, 0)),
                             golden_v2["out/pred_0"], atol=2e-5)


@pytest.mark.parametrize("remat,scan", [("full", False), ("dots", True), ("none", True)])
def test_remat_and_scan_same_outputs_and_grads(golden_v2, tiny2, remat, scan):
  enc, pred, params, clip = tiny2
  enc2, pred2 = build(remat=remat, scan=scan)
  p2 = jax.tree_util.tree_map(jnp.asarray, {k: convert.stack_blocks(v) for k, v in params.items()}
                              ) if scan else params
  ctx_idx, tgt_idx = masks_of(golden_v2, 0)

  def loss(enc, pred, p):
    ctx = enc.apply({"params": p["encoder"]}, clip, token_idx=ctx_idx)
    out = pred.apply({"params": p["predictor"]}, ctx, ctx_idx, tgt_idx, 0)
    return jnp.mean(out ** 2), out

  (l0, o0), g0 = jax.jit(jax.value_and_grad(lambda p: loss(enc, pred, p), has_aux=True))(params)
  (l1, o1), g1 = jax.jit(jax.value_and_grad(lambda p: loss(enc2, pred2, p), has_aux=True))(p2)
  np.testing.assert_allclose(np.asarray(o1), np.asarray(o0), atol=1e-5)
  if scan:
    g1 = {k: convert.unstack_blocks(v) for k, v in g1.items()}
  for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g0)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-4)


# --- the objective, gradients and one update -----------------------------------------------

class GoldenMasks(NamedTuple):
  context: jax.Array
  context_valid: None
  target: jax.Array
  target_valid: None


def golden_loss_fn(golden, tiny2):
  enc, pred, params, clip = tiny2
  apply_encoder, apply_predictor = loss_lib.model_apply_fns(enc, pred)
  masks = []
  for i in range(2):
    ctx_idx, tgt_idx = masks_of(golden, i)
    masks.append(GoldenMasks(ctx_idx, None, tgt_idx, None))
  return lambda p: loss_lib.vjepa_loss(apply_encoder, apply_predictor, p, params["encoder"], clip,
                                       masks)


def test_targets_match_reference(golden_v2, tiny2):
  enc, pred, params, clip = tiny2
  apply_encoder, _ = loss_lib.model_apply_fns(enc, pred)
  targets = loss_lib.compute_targets(apply_encoder, params["encoder"], clip)
  np.testing.assert_allclose(np.asarray(targets), golden_v2["out/target_ln"], atol=2e-5)


def test_loss_and_grads_match_reference(golden_v2, tiny2):
  (loss, _), grads = jax.jit(jax.value_and_grad(golden_loss_fn(golden_v2, tiny2), has_aux=True))(
      tiny2[2])
  assert abs(float(loss) - float(golden_v2["out/loss"])) <= 1e-6 * float(golden_v2["out/loss"])
  for kind in ("encoder", "predictor"):
    torch_grads = convert.to_torch(grads[kind], kind)
    assert set(torch_grads) == {k[len(f"grad/{kind}/"):] for k in golden_v2
                                if k.startswith(f"grad/{kind}/")}
    for name, g in torch_grads.items():
      ref = golden_v2[f"grad/{kind}/{name}"]
      np.testing.assert_allclose(g, ref, atol=1e-5 * max(1.0, np.abs(ref).max()), rtol=1e-4,
                                 err_msg=name)


def test_one_step_matches_reference(golden_v2, tiny2):
  """AdamW (lr 5e-4, wd 0.04, no clipping) + EMA (0.998) from the golden weights."""
  lr, wd, m = (float(golden_v2[f"step/{k}"]) for k in ("lr", "wd", "momentum"))
  tx = optim.make_optimizer(optim.OptimConfig(clip_grad=None), lr=lr, wd=wd)
  params = tiny2[2]
  state = TrainState.create(params=params, tx=tx)
  grads = jax.jit(jax.grad(lambda p: golden_loss_fn(golden_v2, tiny2)(p)[0]))(params)
  state = state.apply_gradients(grads=grads)
  target = optim.ema_update(params["encoder"], state.params["encoder"], m)
  for kind, tree in (("encoder", state.params["encoder"]),
                     ("predictor", state.params["predictor"]), ("target", target)):
    torch_kind = "encoder" if kind == "target" else kind
    for name, value in convert.to_torch(tree, torch_kind).items():
      np.testing.assert_allclose(value, golden_v2[f"after/{kind}/{name}"], atol=1e-5, rtol=1e-5,
                                 err_msg=f"{kind}/{name}")


# --- reduced-precision angles and non-square inputs -------------------------------------------

def _torch_angles(length, width, torch_dtype):
  """The reference's angle computation restated with torch ops in ``torch_dtype`` (its autocast
  dtype): omega, 10000^omega, 1/., pos*omega, sin, cos, each rounded to that dtype."""
  torch = pytest.importorskip("torch")
  omega = torch.arange(width // 2, dtype=torch_dtype)
  omega = omega / (width / 2.0)
  omega = 1.0 / 10000 ** omega
  freq = torch.arange(length).to(torch_dtype)[:, None] * omega[None, :]
  return freq.cos().float().numpy(), freq.sin().float().numpy()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_angle_tables_round_as_the_reference_dtype(dtype):
  torch = pytest.importorskip("torch")
  for length, width in ((32, 20), (24, 26), (16, 10)):
    cos, sin = rope.angle_tables(length, width, dtype)
    ref_cos, ref_sin = _torch_angles(length, width, getattr(torch, dtype))
    tol = {"float32": 2e-6, "bfloat16": 8e-3, "float16": 1e-3}[dtype]
    np.testing.assert_allclose(cos[:, :width // 2], ref_cos, atol=tol)
    np.testing.assert_allclose(sin[:, width // 2:], ref_sin, atol=tol)
  if dtype == "bfloat16":  # the rounding is real: far from the float32 angles at late frames
    assert np.abs(rope.angle_tables(32, 20, dtype)[1] - rope.angle_tables(32, 20)[1]).max() > 1e-2
    assert rope.angle_tables(32, 20, dtype)[0].astype(ml_dtypes.bfloat16).astype(
        np.float32).tolist() == rope.angle_tables(32, 20, dtype)[0].tolist()


def test_non_square_encoder_uses_rows_and_columns():
  """A (height, width) encoder: rows and columns rotate by their own coordinate."""
  enc = models.build_encoder("tiny", img_size=(32, 64), num_frames=4, depth=1, embed_dim=48,
                             num_heads=2, use_rope=True, attention="einsum")
  assert enc.grid == (2, 2, 4) and enc.clip_shape(3) == (3, 4, 32, 64, 3)
  clip = jax.random.normal(jax.random.PRNGKey(0), enc.clip_shape(2))
  params = enc.init(jax.random.PRNGKey(1), clip)
  assert enc.apply(params, clip).shape == (2, 16, 48)
  cos, _ = enc.rope_tables()
  w = rope.axis_width(24)
  full_cos = [rope.angle_tables(n, w)[0] for n in (2, 2, 4)]
  for i in range(16):
    t, h, col = i // 8, (i % 8) // 4, i % 4
    np.testing.assert_array_equal(np.asarray(cos[0, i, 0]), np.concatenate(
        [full_cos[0][t], full_cos[1][h], full_cos[2][col]]))
  with pytest.raises(ValueError, match="use_rope"):
    models.build_encoder("tiny", img_size=(32, 64), num_frames=4).position_table()


def test_model_sizes_at_vjepa2_resolutions():
  """ViT-L at 256 px x 16 frames and ViT-g (22 heads) at 384 px x 64 frames (18432 tokens)."""
  for size, img, frames in (("vit_large", 256, 16), ("vit_giant_xformers", 384, 64)):
    enc = models.build_encoder(size, img_size=img, num_frames=frames, use_rope=True, scan=True)
    clips = jax.ShapeDtypeStruct(enc.clip_shape(1), jnp.float32)
    params = jax.eval_shape(enc.init, jax.random.PRNGKey(0), clips)
    n = (frames // 2) * (img // 16) ** 2
    assert jax.eval_shape(enc.apply, params, clips).shape == (1, n, enc.embed_dim)
  assert models.size_spec("vit_giant_xformers")["num_heads"] == 22
  assert models.size_spec("vit_giant")["num_heads"] == 16  # V-JEPA's ViT-g keeps its 16 heads
  assert models.size_spec("vit_giant_xformers_rope") == dict(
      models.size_spec("giant_xformers"), use_rope=True)
  g = models.VIT_SIZES["giant_xformers"]
  assert 1.0e9 < models.analytic_encoder_params(g["embed_dim"], g["depth"], g["mlp_ratio"]) < 1.02e9


# --- the reference modules themselves (skipped unless JEPA_JAX_VJEPA2_SRC is set) --------------

def test_param_counts_equal_reference_modules(monkeypatch):
  import reference_vjepa2
  ref = reference_vjepa2.reference()
  torch = ref.torch
  linspace = torch.linspace  # the reference calls .item() on it: keep it off the meta device
  monkeypatch.setattr(torch, "linspace", lambda *a, **k: linspace(*a, **dict(k, device="cpu")))
  for size in ("vit_large", "vit_huge", "vit_giant_xformers", "vit_gigantic_xformers"):
    with torch.device("meta"):
      enc_t = ref.vit.__dict__[size](img_size=256, num_frames=16, use_rope=True)
      pred_t = ref.predictor.vit_predictor(
          img_size=256, num_frames=16, embed_dim=enc_t.embed_dim, predictor_embed_dim=384,
          depth=12, num_heads=12, use_mask_tokens=True, num_mask_tokens=10, use_rope=True)
    enc = models.build_encoder(size, img_size=256, num_frames=16, use_rope=True, scan=True)
    pred = models.build_predictor(enc, num_heads=12, num_mask_tokens=10)
    clips = jax.ShapeDtypeStruct(enc.clip_shape(1), jnp.float32)
    idx = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    ctx = jax.ShapeDtypeStruct((1, 1, enc.embed_dim), jnp.float32)
    assert models.count_params(jax.eval_shape(enc.init, jax.random.PRNGKey(0), clips)) == sum(
        p.numel() for p in enc_t.parameters()), size
    assert models.count_params(jax.eval_shape(pred.init, jax.random.PRNGKey(0), ctx, idx, idx)
                               ) == sum(p.numel() for p in pred_t.parameters()), size
    assert enc.block.num_heads == enc_t.num_heads


def test_matches_reference_modules_non_square_and_sorted_predictor():
  """Random weights through the reference's own modules: a non-square RoPE encoder (full clip and
  gathered tokens) and a predictor whose reference sorts [context, target] before its blocks."""
  from functools import partial
  import reference_vjepa2
  ref = reference_vjepa2.reference()
  torch = ref.torch
  torch.manual_seed(0)
  norm = partial(torch.nn.LayerNorm, eps=1e-6)
  enc_t = ref.vit.VisionTransformer(img_size=(32, 64), patch_size=16, num_frames=4, embed_dim=48,
                                    depth=2, num_heads=2, use_rope=True, use_sdpa=False,
                                    norm_layer=norm).eval()
  enc = models.build_encoder("tiny", img_size=(32, 64), num_frames=4, embed_dim=48, depth=2,
                             num_heads=2, use_rope=True, attention="einsum")
  ep = {"params": convert.from_torch(reference_vjepa2.numpy_state(enc_t), "encoder")}
  clip = np.random.default_rng(0).normal(size=(2, 3, 4, 32, 64)).astype(np.float32)
  idx = np.stack([np.sort(np.random.default_rng(s).permutation(16)[:7]) for s in (1, 2)])
  with torch.no_grad():
    full_t = enc_t(torch.from_numpy(clip)).numpy()
    ctx_t = enc_t(torch.from_numpy(clip), masks=torch.from_numpy(idx)).numpy()
  clip_j = jnp.asarray(clip.transpose(0, 2, 3, 4, 1))
  np.testing.assert_allclose(np.asarray(enc.apply(ep, clip_j)), full_t, atol=2e-5)
  np.testing.assert_allclose(np.asarray(enc.apply(ep, clip_j, token_idx=jnp.asarray(idx))), ctx_t,
                             atol=2e-5)

  pred_t = ref.predictor.vit_predictor(
      img_size=64, patch_size=16, num_frames=4, embed_dim=48, predictor_embed_dim=64, depth=2,
      num_heads=4, use_mask_tokens=True, num_mask_tokens=3, zero_init_mask_tokens=False,
      use_rope=True, use_sdpa=False).eval()
  sq = models.build_encoder("tiny", img_size=64, num_frames=4, embed_dim=48, depth=1,
                            num_heads=2, use_rope=True)
  pred = models.build_predictor(sq, embed_dim=64, depth=2, num_heads=4, num_mask_tokens=3)
  pp = {"params": convert.from_torch(reference_vjepa2.numpy_state(pred_t), "predictor")}
  rng = np.random.default_rng(3)
  perm = np.stack([rng.permutation(32) for _ in range(2)])
  ctx_idx, tgt_idx = np.sort(perm[:, :12], 1), np.sort(perm[:, 12:], 1)
  ctx = rng.normal(size=(2, 12, 48)).astype(np.float32)
  with torch.no_grad():
    out_t = pred_t(torch.from_numpy(ctx), torch.from_numpy(ctx_idx), torch.from_numpy(tgt_idx),
                   mask_index=2).numpy()
  out = pred.apply(pp, jnp.asarray(ctx), jnp.asarray(ctx_idx), jnp.asarray(tgt_idx), 2)
  np.testing.assert_allclose(np.asarray(out), out_t, atol=2e-5)
