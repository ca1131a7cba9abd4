"""The V-JEPA networks: faithfulness to the reference (golden run) and our own invariants."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax import convert, models
from jepa_jax.models import pos_embed

TINY = dict(img_size=64, num_frames=8, embed_dim=96, depth=2, num_heads=4)


def golden_state(golden, prefix):
  return {k[len(prefix):]: v for k, v in golden.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def tiny(golden):
  enc = models.build_encoder("tiny", attention="einsum", **TINY)
  pred = models.build_predictor(enc, embed_dim=48, depth=2)
  enc_params = convert.from_torch(golden_state(golden, "param/encoder/"), "encoder")
  pred_params = convert.from_torch(golden_state(golden, "param/predictor/"), "predictor")
  clip = jnp.asarray(golden["clip"].transpose(0, 2, 3, 4, 1))  # [B,C,T,H,W] -> [B,T,H,W,C]
  return enc, pred, {"params": enc_params}, {"params": pred_params}, clip


# --- positions -------------------------------------------------------------------------------

def test_positions_match_reference(golden, tiny):
  enc, pred, *_ = tiny
  np.testing.assert_array_equal(np.asarray(enc.position_table()), golden["pos_embed/encoder"])
  np.testing.assert_array_equal(np.asarray(pred.position_table()), golden["pos_embed/predictor"])
  np.testing.assert_array_equal(golden["param/encoder/pos_embed"][0], golden["pos_embed/encoder"])


@pytest.mark.parametrize("uniform_power,d,widths", [(True, 60, (20, 20, 20)),
                                                     (False, 64, (32, 16, 16))])
def test_position_layout_per_axis(uniform_power, d, widths):
  """Each axis block of the table is the 1D MAE table of that axis' coordinate, [t, h, w] order."""
  grid = (3, 4, 5)
  table = pos_embed.sincos_3d(d, grid, uniform_power)
  assert table.shape == (60, d) and pos_embed.axis_dims(d, uniform_power) == widths
  t, h, w = np.meshgrid(*[np.arange(n) for n in grid], indexing="ij")

  def mae(dim, pos):
    omega = 1.0 / 10000 ** (np.arange(dim // 2) / (dim / 2))
    angles = pos.reshape(-1, 1) * omega
    return np.concatenate([np.sin(angles), np.cos(angles)], 1)

  dt, dh, dw = widths
  np.testing.assert_allclose(table[:, :dt], mae(dt, t), atol=1e-6)
  np.testing.assert_allclose(table[:, dt:dt + dh], mae(dh, h), atol=1e-6)
  np.testing.assert_allclose(table[:, dt + dh:], mae(dw, w), atol=1e-6)


def test_uniform_power_cut_to_width():
  # d = 1024: each axis gets ceil(1024/6)*2 = 342 dims, 3*342 = 1026 cut to 1024 (w loses 2).
  assert pos_embed.axis_dims(1024, True) == (342, 342, 342)
  assert pos_embed.sincos_3d(1024, (8, 14, 14), True).shape == (1568, 1024)
  assert pos_embed.axis_dims(1024, False) == (512, 256, 256)


# --- golden outputs --------------------------------------------------------------------------

def test_encoder_full_matches_reference(golden, tiny):
  enc, _, ep, _, clip = tiny
  out = enc.apply(ep, clip)
  np.testing.assert_allclose(np.asarray(out), golden["out/encoder_full"], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("i", [0, 1])
def test_context_and_predictor_match_reference(golden, tiny, i):
  enc, pred, ep, pp, clip = tiny
  ctx_idx, tgt_idx = jnp.asarray(golden[f"mask_enc_{i}"]), jnp.asarray(golden[f"mask_pred_{i}"])
  ctx = enc.apply(ep, clip, token_idx=ctx_idx)
  np.testing.assert_allclose(np.asarray(ctx), golden[f"out/context_{i}"], atol=2e-5, rtol=1e-5)
  out = pred.apply(pp, ctx, ctx_idx, tgt_idx, mask_index=i)
  np.testing.assert_allclose(np.asarray(out), golden[f"out/pred_{i}"], atol=1e-5, rtol=1e-5)


def test_fused_attention_matches_einsum(golden, tiny):
  enc, _, ep, _, clip = tiny
  fused = models.build_encoder("tiny", attention="xla", **TINY)
  np.testing.assert_allclose(np.asarray(fused.apply(ep, clip)), np.asarray(enc.apply(ep, clip)),
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(fused.apply(ep, clip)), golden["out/encoder_full"],
                             atol=2e-5)


@pytest.mark.parametrize("chunk_size", [4, 7, 64])  # several chunks, a padded last chunk, one chunk
def test_chunked_attention_is_exact_with_gradients(chunk_size):
  from jepa_jax.models import layers
  kq, kk, kv, km, kg = jax.random.split(jax.random.PRNGKey(0), 5)
  q = jax.random.normal(kq, (2, 23, 3, 8))
  k = jax.random.normal(kk, (2, 19, 3, 8))
  v = jax.random.normal(kv, (2, 19, 3, 8))
  kv_mask = jax.random.bernoulli(km, 0.7, (2, 19)).at[:, 0].set(True)
  cotangent = jax.random.normal(kg, q.shape)

  def loss(impl, q, k, v):
    return jnp.sum(impl(q, k, v) * cotangent)

  scale = 8 ** -0.5
  exact = lambda q, k, v: layers._einsum_attention(q, k, v, kv_mask, scale)
  chunked = lambda q, k, v: layers.chunked_attention(q, k, v, kv_mask, chunk_size=chunk_size)
  np.testing.assert_allclose(chunked(q, k, v), exact(q, k, v), atol=1e-6)
  g_exact = jax.grad(lambda *a: loss(exact, *a), argnums=(0, 1, 2))(q, k, v)
  g_chunked = jax.jit(jax.grad(lambda *a: loss(chunked, *a), argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(g_chunked, g_exact):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_chunk_layout_pads_little():
  from jepa_jax.models import layers
  # ViT-H/L at 224 px x 16 frames: the clip, the two default masks' contexts, the predictor's
  # context + targets. Padding to a multiple of 512 computed 2048, 1024 and 2048 queries.
  assert layers.chunk_layout(1568, 512) == (4, 392)
  assert layers.chunk_layout(592, 512) == (2, 296)
  assert layers.chunk_layout(296, 512) == (1, 296)
  assert layers.chunk_layout(1576, 512) == (4, 400)
  for n in range(1, 3000, 37):
    for max_chunk in (4, 7, 24, 512):
      chunks, size = layers.chunk_layout(n, max_chunk)
      assert chunks * size >= n and (chunks - 1) * size < n
      assert size <= max(max_chunk, 8) + 7 and chunks * size - n < 8 * chunks


@pytest.mark.parametrize("padding", ["none", "lengths", "mask"])
def test_chunked_self_attention_gradients_match_einsum(padding, monkeypatch):
  """The chunked path's own layouts (q split into chunks by its projection, head-major k/v, the
  output projection reading the chunks): outputs and every parameter and input gradient equal
  the einsum path's, with 3 chunks of which the last is padded."""
  from jepa_jax.models import layers
  monkeypatch.setattr(layers, "ATTENTION_CHUNK", 16)         # 37 tokens: 3 chunks of 16, 11 padded
  kx, kp, kg, km = jax.random.split(jax.random.PRNGKey(3), 4)
  x = jax.random.normal(kx, (2, 37, 24))
  key_padding = {"none": None, "lengths": jnp.array([37, 20]),
                 "mask": jax.random.bernoulli(km, 0.6, (2, 37)).at[:, 0].set(True)}[padding]
  einsum = layers.SelfAttention(4, implementation="einsum")
  chunked = layers.SelfAttention(4, implementation="chunked")
  params = einsum.init(kp, x, key_padding)
  cotangent = jax.random.normal(kg, x.shape)

  def loss(module, params, x):
    return jnp.sum(module.apply(params, x, key_padding) * cotangent)

  np.testing.assert_allclose(chunked.apply(params, x, key_padding),
                             einsum.apply(params, x, key_padding), atol=1e-5)
  g_ref = jax.grad(loss, argnums=(1, 2))(einsum, params, x)
  g = jax.jit(jax.grad(lambda p, x: loss(chunked, p, x), argnums=(0, 1)))(params, x)
  for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref)):
    assert a.dtype == b.dtype
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)


def _qkv(n=23, s=19, d=8, dtype=jnp.float32, seed=0):
  kq, kk, kv, kg = jax.random.split(jax.random.PRNGKey(seed), 4)
  q = jax.random.normal(kq, (2, n, 3, d), dtype)
  k = jax.random.normal(kk, (2, s, 3, d), dtype)
  v = jax.random.normal(kv, (2, s, 3, d), dtype)
  return q, k, v, jax.random.normal(kg, q.shape, dtype)


@pytest.mark.parametrize("implementation", ["einsum", "xla", "chunked"])
def test_key_lengths_equal_a_prefix_mask_with_gradients(implementation):
  """Padding given as lengths (valid keys first) = the same padding as a mask, on every path."""
  from jepa_jax.models import layers
  q, k, v, cot = _qkv()
  lengths = jnp.asarray([19, 7], jnp.int32)
  mask = layers.lengths_to_mask(lengths, 19)

  def loss(fn, q, k, v):
    return jnp.sum(fn(q, k, v) * cot)

  exact = lambda q, k, v: layers._einsum_attention(q, k, v, mask, 8 ** -0.5)
  ours = lambda q, k, v: layers.dot_product_attention(q, k, v, implementation=implementation,
                                                      kv_lengths=lengths)
  np.testing.assert_allclose(jax.jit(ours)(q, k, v), jax.jit(exact)(q, k, v), atol=1e-6)
  g_exact = jax.jit(jax.grad(lambda *a: loss(exact, *a), argnums=(0, 1, 2)))(q, k, v)
  g_ours = jax.jit(jax.grad(lambda *a: loss(ours, *a), argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(g_ours, g_exact):
    np.testing.assert_allclose(a, b, atol=1e-5)
  with pytest.raises(ValueError, match="not both"):
    layers.dot_product_attention(q, k, v, mask, kv_lengths=lengths)


@pytest.mark.parametrize("n,s,lengths", [(23, 19, [19, 7]), (99, 99, None), (16, 8, [8, 3])])
def test_cudnn_wrapper_pads_lengths_and_slices(monkeypatch, n, s, lengths):
  """The cuDNN wrapper's own logic (padding Q/KV to a multiple of 8, lengths, slicing back), run
  with jax's XLA attention standing in for the kernel (no GPU here; tests/test_lowering.py lowers
  the real kernel). The kernel must see even lengths and only valid keys."""
  from jepa_jax.models import layers
  seen = []
  real = jax.nn.dot_product_attention

  def fake(q, k, v, *, implementation, **kw):
    assert implementation == "cudnn" and kw.get("bias") is None
    seen.append((q.shape[1], k.shape[1]))
    return real(q, k, v, implementation="xla", **kw)

  monkeypatch.setattr(jax.nn, "dot_product_attention", fake)
  q, k, v, _ = _qkv(n, s, dtype=jnp.bfloat16)
  kv_lengths = None if lengths is None else jnp.asarray(lengths, jnp.int32)
  out = jax.jit(lambda q, k, v: layers.dot_product_attention(
      q, k, v, implementation="cudnn", kv_lengths=kv_lengths))(q, k, v)
  mask = None if lengths is None else layers.lengths_to_mask(kv_lengths, s)
  ref = jax.jit(lambda q, k, v: layers._einsum_attention(q, k, v, mask, 8 ** -0.5))(q, k, v)
  assert out.shape == q.shape and seen[0][0] % 8 == 0 and seen[0][1] % 8 == 0
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), atol=2e-2)


def test_auto_attention_resolves_for_the_target_platform():
  from jepa_jax.models import layers
  assert layers.current_platform() == "cpu"
  with layers.target_platform("cuda"):
    assert layers.current_platform() == "cuda"
    assert layers.resolve_attention("auto", layers.current_platform(), jnp.bfloat16) == "cudnn"
  assert layers.current_platform() == "cpu"
  # Head dims cuDNN refuses fall back to XLA.
  assert layers.resolve_attention("auto", "gpu", jnp.bfloat16, head_dim=12) == "xla"
  assert layers.resolve_attention("auto", "gpu", jnp.bfloat16, head_dim=256) == "xla"


def test_auto_attention_picks_a_memory_bounded_path_per_backend():
  from jepa_jax.models import layers
  assert layers.resolve_attention("auto", "gpu", jnp.bfloat16) == "cudnn"
  assert layers.resolve_attention("auto", "gpu", jnp.float32) == "xla"  # cuDNN: 16-bit only
  assert layers.resolve_attention("auto", "tpu", jnp.bfloat16) == "chunked"
  assert layers.resolve_attention("auto", "cpu", jnp.float32) == "xla"
  assert layers.resolve_attention("einsum", "tpu", jnp.float32) == "einsum"


def test_chunked_attention_bounds_the_logits_buffer():
  """XLA's memory analysis: the backward's temporaries shrink with the chunk, not the sequence."""
  from jepa_jax.models import layers
  q = k = v = jax.ShapeDtypeStruct((1, 2048, 4, 16), jnp.float32)

  def temp_bytes(impl):
    grad = jax.grad(lambda q, k, v: jnp.sum(impl(q, k, v)), argnums=(0, 1, 2))
    return jax.jit(grad).lower(q, k, v).compile().memory_analysis().temp_size_in_bytes

  logits = 4 * 2048 * 2048 * 4  # one full [H, N, S] float32 buffer: 64 MiB
  full = temp_bytes(lambda q, k, v: layers._einsum_attention(q, k, v, None, 0.25))
  chunked = {c: temp_bytes(lambda q, k, v: layers.chunked_attention(q, k, v, None, chunk_size=c))
             for c in (128, 256)}
  assert full >= 2 * logits  # measured 3x: logits, weights and their gradient
  assert chunked[256] < logits / 1.5  # measured 0.52x (a few [H, 256, S] buffers)
  assert chunked[128] < 0.6 * chunked[256]  # linear in the chunk


def test_chunked_encoder_and_predictor_match_einsum(golden, tiny, monkeypatch):
  from jepa_jax.models import layers
  monkeypatch.setattr(layers, "ATTENTION_CHUNK", 24)  # 64 tokens: 3 chunks, the last one padded
  enc, pred, ep, pp, clip = tiny
  enc_c = models.build_encoder("tiny", attention="chunked", **TINY)
  pred_c = models.build_predictor(enc_c, embed_dim=48, depth=2)
  np.testing.assert_allclose(np.asarray(enc_c.apply(ep, clip)), golden["out/encoder_full"],
                             atol=2e-5)
  ctx_idx, tgt_idx = jnp.asarray(golden["mask_enc_0"]), jnp.asarray(golden["mask_pred_0"])
  ctx = enc.apply(ep, clip, token_idx=ctx_idx)
  np.testing.assert_allclose(np.asarray(pred_c.apply(pp, ctx, ctx_idx, tgt_idx, mask_index=0)),
                             np.asarray(pred.apply(pp, ctx, ctx_idx, tgt_idx, mask_index=0)),
                             atol=1e-5)


# --- token selection and padding -------------------------------------------------------------

def test_token_indices_equal_blocks_on_gathered_tokens(golden, tiny):
  """Embedding only the kept tokens equals embedding all and gathering (to float rounding: the
  matmul runs on fewer rows)."""
  enc, _, ep, _, clip = tiny
  idx = jnp.asarray(golden["mask_enc_0"])
  direct = enc.apply(ep, clip, token_idx=idx)
  tokens = enc.apply(ep, clip, method=enc.embed)
  gathered = jnp.take_along_axis(tokens, idx[..., None], axis=1)
  np.testing.assert_allclose(np.asarray(enc.apply(ep, clip, idx, method=enc.embed)),
                             np.asarray(gathered), atol=1e-5)
  manual = enc.apply(ep, gathered, method=enc.encode_tokens)
  np.testing.assert_allclose(np.asarray(direct), np.asarray(manual), atol=1e-5)


def test_patch_embedding_equals_the_reference_conv(golden, tiny):
  """The reshape + matmul tubelet embedding computes the strided Conv3d of the reference, with
  the same parameters (Flax's nn.Conv as the independent implementation)."""
  import flax.linen as nn
  enc, _, ep, _, clip = tiny
  conv = nn.Conv(enc.embed_dim, kernel_size=(2, 16, 16), strides=(2, 16, 16), padding="VALID")
  conv_out = conv.apply({"params": ep["params"]["patch_embed"]}, clip)
  ours = enc.apply(ep, clip, method=lambda m, x: m.patch_embed(x))
  np.testing.assert_allclose(np.asarray(ours), np.asarray(conv_out).reshape(ours.shape), atol=1e-5)


def test_padding_is_invisible(golden, tiny):
  """Padded context (invalid slots) leaves the valid tokens' outputs and predictions unchanged."""
  enc, pred, ep, pp, clip = tiny
  ctx_idx, tgt_idx = jnp.asarray(golden["mask_enc_0"]), jnp.asarray(golden["mask_pred_0"])
  k = ctx_idx.shape[1]
  padded = jnp.concatenate([ctx_idx, ctx_idx[:, :5]], axis=1)
  valid = jnp.arange(k + 5)[None, :] < k
  valid = jnp.broadcast_to(valid, padded.shape)
  out = enc.apply(ep, clip, token_idx=padded, token_valid=valid)
  np.testing.assert_allclose(np.asarray(out[:, :k]), golden["out/context_0"], atol=2e-5)
  tgt_padded = jnp.concatenate([tgt_idx, tgt_idx[:, :3]], axis=1)
  tgt_valid = jnp.broadcast_to(jnp.arange(tgt_padded.shape[1])[None] < tgt_idx.shape[1],
                               tgt_padded.shape)
  p = pred.apply(pp, out, padded, tgt_padded, 0, valid, tgt_valid)
  np.testing.assert_allclose(np.asarray(p[:, :tgt_idx.shape[1]]), golden["out/pred_0"], atol=2e-5)


def test_predictor_padding_anywhere_equals_each_clip_alone(golden, tiny):
  """Per-clip validity in any pattern (the predictor sorts valid tokens first): each clip's valid
  target predictions equal a run of that clip alone on its valid tokens only, no padding."""
  enc, pred, ep, pp, clip = tiny
  ctx_idx, tgt_idx = jnp.asarray(golden["mask_enc_0"]), jnp.asarray(golden["mask_pred_0"])
  ctx = enc.apply(ep, clip, token_idx=ctx_idx)
  rng = np.random.default_rng(0)
  cv = rng.random(ctx_idx.shape) < 0.7
  tv = rng.random(tgt_idx.shape) < 0.6
  cv[:, 0] = tv[:, -1] = True
  apply = jax.jit(pred.apply, static_argnums=4)
  out = np.asarray(apply(pp, ctx, ctx_idx, tgt_idx, 1, jnp.asarray(cv), jnp.asarray(tv)))
  assert np.isfinite(out).all()
  for b in range(ctx.shape[0]):
    alone = apply(pp, ctx[b:b + 1, cv[b]], ctx_idx[b:b + 1, cv[b]], tgt_idx[b:b + 1, tv[b]], 1)
    np.testing.assert_allclose(out[b, tv[b]], np.asarray(alone[0]), atol=2e-5)


def test_encoder_refuses_padding_before_valid_tokens(golden, tiny):
  enc, _, ep, _, clip = tiny
  idx = jnp.asarray(golden["mask_enc_0"])
  valid = np.ones(idx.shape, bool)
  valid[:, 0] = False
  with pytest.raises(ValueError, match="valid tokens first"):
    enc.apply(ep, clip, token_idx=idx, token_valid=jnp.asarray(valid))


# --- precision, remat, scan ------------------------------------------------------------------

def _loss(enc, params, clip):
  return jnp.mean(enc.apply(params, clip).astype(jnp.float32) ** 2)


def test_bf16_close_to_fp32(tiny):
  enc, _, ep, _, clip = tiny
  bf16 = models.build_encoder("tiny", attention="einsum", dtype=jnp.bfloat16, **TINY)
  out = bf16.apply(ep, clip)
  assert out.dtype == jnp.bfloat16
  ref = np.asarray(enc.apply(ep, clip))
  err = np.abs(np.asarray(out, np.float32) - ref)
  assert err.mean() < 2e-2 and err.max() < 0.25, (err.mean(), err.max())


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_identical_outputs_and_grads(tiny, policy):
  enc, _, ep, _, clip = tiny
  remat = models.build_encoder("tiny", attention="einsum", remat=policy, **TINY)
  g0 = jax.grad(lambda p: _loss(enc, p, clip))(ep)
  g1 = jax.grad(lambda p: _loss(remat, p, clip))(ep)
  np.testing.assert_allclose(np.asarray(remat.apply(ep, clip)), np.asarray(enc.apply(ep, clip)),
                             atol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)


def _grad_matmul_flops(enc, clip):
  from jepa_jax import hlo_stats
  params = jax.eval_shape(enc.init, jax.random.PRNGKey(0), clip)
  grad = jax.jit(jax.grad(lambda p: _loss(enc, p, clip)))
  return hlo_stats.analyse(grad.lower(params).compile().as_text()).matmul_flops


def test_dot_remat_policies_keep_the_weight_matmuls(tiny):
  """Scanned blocks (a loop XLA cannot de-duplicate across), compiled: "dots_no_batch" runs again
  in the backward exactly the attention's two batched matmuls, "dots" nothing, "full" also the
  weight matmuls whose outputs the backward needs (qkv, proj, fc1; not fc2, whose output only
  joins the residual). The weight matmuls are a custom_vjp (float32 weight gradients) that the dot
  policies cannot see into; before they were kept by name, both dot policies recomputed them as
  "full" does (ViT-H's fsdp-4 step on XLA:TPU: 196 against 165 TFLOP per chip)."""
  _, _, _, _, clip = tiny
  build = lambda remat: models.build_encoder("tiny", attention="einsum", remat=remat, scan=True,
                                             **TINY)
  enc = build("none")
  n, d, depth = enc.num_tokens, enc.embed_dim, enc.depth
  attention = clip.shape[0] * depth * 4 * n * n * d             # QK^T and weights x V, forward
  hidden = int(d * enc.block.mlp_ratio)
  qkv_proj_fc1 = clip.shape[0] * depth * (2 * n * d * 4 * d + 2 * n * d * hidden)
  base = _grad_matmul_flops(enc, clip)
  assert _grad_matmul_flops(build("dots"), clip) == base
  assert _grad_matmul_flops(build("dots_no_batch"), clip) == base + attention
  assert _grad_matmul_flops(build("full"), clip) == base + attention + qkv_proj_fc1


def test_scan_layout_equals_unrolled(tiny):
  enc, _, ep, _, clip = tiny
  scanned = models.build_encoder("tiny", attention="einsum", scan=True, **TINY)
  sp = {"params": convert.stack_blocks(ep["params"])}
  shapes = jax.eval_shape(scanned.init, jax.random.PRNGKey(0), clip)
  assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(
      jax.tree_util.tree_map(jnp.asarray, sp))
  np.testing.assert_allclose(np.asarray(scanned.apply(sp, clip)), np.asarray(enc.apply(ep, clip)),
                             atol=1e-5)
  layers_scan = scanned.apply(sp, clip, out_layers=(0, 1))
  layers_unrolled = enc.apply(ep, clip, out_layers=(0, 1))
  for a, b in zip(layers_scan, layers_unrolled):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  back = convert.unstack_blocks(sp["params"])
  for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(ep["params"])):
    np.testing.assert_array_equal(a, b)


def test_scanned_blocks_keep_no_float32_or_gelu_copies_for_the_backward():
  """Under nn.scan, what the backward needs is stacked per layer; LayerNorm and GELU are
  recomputed (layers.py), so no float32 [depth, B, N, D] copy of the activations and at most two
  [depth, B, N, hidden] MLP hiddens (fc1's output and GELU's, the matmuls' inputs) are kept."""
  import re
  enc = models.build_encoder("tiny", img_size=32, num_frames=4, embed_dim=64, depth=3,
                             num_heads=4, dtype=jnp.bfloat16, scan=True, attention="einsum")
  clip = jax.ShapeDtypeStruct((2, 4, 32, 32, 3), jnp.float32)
  params = jax.eval_shape(enc.init, jax.random.PRNGKey(0), clip)
  loss = lambda p, x: jnp.mean(enc.apply(p, x).astype(jnp.float32) ** 2)
  text = jax.jit(jax.grad(loss)).lower(params, clip).as_text(dialect="hlo")
  n = enc.num_tokens
  stacked = []
  for tuple_types in re.findall(r"= \((.*?)\) while\(", text):
    stacked += re.findall(rf"(\w+)\[3,2,{n},(\d+)\]", tuple_types)
  assert stacked, "no per-layer stacks found: the test no longer sees the scan"
  assert not [s for s in stacked if s[0] == "f32"], stacked
  # Each stack appears in the forward loop's and the backward loop's tuple.
  assert sum(1 for s in stacked if s == ("bf16", "256")) <= 2 * 2, stacked


def test_intermediate_layers(tiny):
  enc, _, ep, _, clip = tiny
  outs = enc.apply(ep, clip, out_layers=(0, 1))
  assert len(outs) == 2
  np.testing.assert_allclose(np.asarray(outs[1]), np.asarray(enc.apply(ep, clip)), atol=1e-6)
  assert not np.allclose(np.asarray(outs[0]), np.asarray(outs[1]))


# --- sizes, parameter counts, init -----------------------------------------------------------

@pytest.mark.parametrize("size", sorted(models.VIT_SIZES))
def test_named_sizes_shapes_and_counts(size):
  enc = models.build_encoder(size, img_size=224, num_frames=16)
  clip = jax.ShapeDtypeStruct((2, 16, 224, 224, 3), jnp.float32)
  params = jax.eval_shape(enc.init, jax.random.PRNGKey(0), clip)
  out = jax.eval_shape(enc.apply, params, clip)
  assert out.shape == (2, 1568, enc.embed_dim)
  spec = models.size_spec(size)
  assert models.count_params(params) == models.analytic_encoder_params(
      spec["embed_dim"], spec["depth"], spec["mlp_ratio"])
  # V-JEPA 2's 22/26-head encoders pair with a 12-head predictor (pred_num_heads).
  pred = models.build_predictor(enc, num_heads=None if 384 % enc.block.num_heads == 0 else 12)
  idx = jax.ShapeDtypeStruct((2, 100), jnp.int32)
  tgt = jax.ShapeDtypeStruct((2, 200), jnp.int32)
  ctx = jax.ShapeDtypeStruct((2, 100, enc.embed_dim), jnp.float32)
  pparams = jax.eval_shape(pred.init, jax.random.PRNGKey(0), ctx, idx, tgt)
  assert jax.eval_shape(pred.apply, pparams, ctx, idx, tgt).shape == (2, 200, enc.embed_dim)


def test_headline_param_counts():
  large = models.analytic_encoder_params(1024, 24)
  huge = models.analytic_encoder_params(1280, 32)
  assert 303e6 < large < 305e6, large
  assert 631e6 < huge < 634e6, huge


def test_other_resolutions_and_patch_sizes():
  enc = models.build_encoder("tiny", img_size=96, num_frames=6, patch_size=8, tubelet_size=3,
                             depth=1)
  clip = jax.ShapeDtypeStruct((1, 6, 96, 96, 3), jnp.float32)
  params = jax.eval_shape(enc.init, jax.random.PRNGKey(0), clip)
  assert jax.eval_shape(enc.apply, params, clip).shape == (1, 2 * 12 * 12, 192)
  with pytest.raises(ValueError, match="patch_size"):
    models.token_grid(100, 16, 16, 2)
  with pytest.raises(ValueError, match="tubelet"):
    models.token_grid(224, 15, 16, 2)


def test_init_statistics_and_rescale():
  enc = models.build_encoder("small", img_size=32, num_frames=2, depth=3)
  params = enc.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 32, 32, 3)))["params"]
  qkv = np.asarray(params["stack"]["blocks_0"]["attn"]["qkv"]["kernel"])
  assert abs(qkv.std() - 0.02) < 1e-3 and abs(qkv.mean()) < 1e-3
  assert np.all(np.asarray(params["stack"]["blocks_0"]["attn"]["qkv"]["bias"]) == 0)
  assert np.all(np.asarray(params["norm"]["scale"]) == 1)
  scaled = models.rescale_residual_projections(params)
  for i in range(3):
    for path in (("attn", "proj"), ("mlp", "fc2")):
      before = params["stack"][f"blocks_{i}"][path[0]][path[1]]["kernel"]
      after = scaled["stack"][f"blocks_{i}"][path[0]][path[1]]["kernel"]
      np.testing.assert_allclose(np.asarray(after), np.asarray(before) / np.sqrt(2 * (i + 1)),
                                 rtol=1e-6)
  np.testing.assert_array_equal(scaled["stack"]["blocks_2"]["attn"]["qkv"]["kernel"],
                                params["stack"]["blocks_2"]["attn"]["qkv"]["kernel"])
  stacked = models.rescale_residual_projections(convert.stack_blocks(params))
  np.testing.assert_allclose(convert.unstack_blocks(stacked)["stack"]["blocks_2"]["mlp"]["fc2"]
                             ["kernel"], scaled["stack"]["blocks_2"]["mlp"]["fc2"]["kernel"],
                             rtol=1e-6)


# --- probe -----------------------------------------------------------------------------------

def test_probe_shapes_and_masking():
  probe = models.build_probe(num_classes=5, num_heads=4, attention="einsum")
  tokens = jax.random.normal(jax.random.PRNGKey(1), (3, 10, 32))
  params = probe.init(jax.random.PRNGKey(0), tokens)
  assert probe.apply(params, tokens).shape == (3, 5)
  valid = jnp.arange(10)[None].repeat(3, 0) < 6
  noisy = tokens.at[:, 6:].set(100.0)
  np.testing.assert_allclose(np.asarray(probe.apply(params, noisy, valid)),
                             np.asarray(probe.apply(params, tokens[:, :6])), atol=1e-5)
  two_layer = models.build_probe(num_classes=5, num_heads=4, depth=2)
  assert two_layer.apply(two_layer.init(jax.random.PRNGKey(0), tokens), tokens).shape == (3, 5)


# --- name mapping ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["encoder", "predictor"])
def test_torch_name_round_trip(golden, kind):
  state = golden_state(golden, f"param/{kind}/")
  back = convert.to_torch(convert.from_torch(state, kind), kind)
  buffers = {"pos_embed", "predictor_pos_embed"}
  assert set(back) == set(state) - buffers
  for name, value in back.items():
    np.testing.assert_array_equal(value, state[name], err_msg=name)


def test_wrapper_prefixes_and_unknown_names(golden):
  state = golden_state(golden, "param/encoder/")
  wrapped = {f"module.backbone.{k}": v for k, v in state.items()}
  a = convert.from_torch(wrapped, "encoder")
  b = convert.from_torch(state, "encoder")
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)
  with pytest.raises(convert.ConversionError, match="predictor_embed"):
    convert.from_torch(golden_state(golden, "param/predictor/"), "encoder")


def test_param_table_cli_helper():
  from jepa_jax.models.__main__ import param_table
  rows = param_table(img_size=32, num_frames=2, pred_depth=1)
  assert [r["size"] for r in rows] == sorted(models.VIT_SIZES, key=list(models.VIT_SIZES).index)
  assert all(r["encoder"] == r["analytic"] for r in rows)
  # Predictor: embed d->384, 1 block of width 384 (analytic block count), LN, 384->d, 2 tokens.
  d, p = 192, 384
  block = models.analytic_encoder_params(p, 1, 4.0, patch_size=1, tubelet_size=1, in_chans=0) - 2 * p - p
  assert rows[0]["predictor"] == (d * p + p) + block + 2 * p + (p * d + d) + 2 * p
