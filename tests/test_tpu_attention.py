"""The Pallas TPU attention (``flash``, models/tpu_attention.py): exact against the ``einsum`` path
in Pallas's TPU interpret mode on this CPU, and compiled by XLA:TPU (libtpu, no chip) for v5e,
v5p and v6e with the kernel in the program and no logits buffer.

Every query row is compared, padded ones included: the kernel computes every query against the
real keys (padding to the kernel's block adds rows that are sliced off and keys that the segment
ids exclude), exactly as the ``einsum`` path computes every row against the unmasked keys.
"""
import functools
import importlib.util
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax.models import layers
from jepa_jax.models import rope as rope_lib
from jepa_jax.models import tpu_attention

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
# Tolerances relative to the output's / gradient's largest magnitude. float32: summation order
# only. bfloat16: the kernel rounds the softmax weights to bfloat16 block by block (before the
# normaliser is known) where the einsum path rounds the normalised weights once.
TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


def _qkv(b, n, s, h, d, dtype, seed=0):
  kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
  return (jax.random.normal(kq, (b, n, h, d), jnp.float32).astype(dtype),
          jax.random.normal(kk, (b, s, h, d), jnp.float32).astype(dtype),
          jax.random.normal(kv, (b, s, h, d), jnp.float32).astype(dtype))


def _value_and_grads(implementation, q, k, v, **padding):
  def loss(q, k, v):
    out = layers.dot_product_attention(q, k, v, implementation=implementation, **padding)
    # A fixed random cotangent, so each output element weighs differently in the gradients.
    w = jax.random.normal(jax.random.PRNGKey(7), out.shape, jnp.float32)
    return jnp.sum(out.astype(jnp.float32) * w), out

  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
  return out, grads


def _assert_close(got, want, tol, what):
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  err = np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-6)
  assert err < tol, f"{what}: relative error {err:.2e} >= {tol:.0e}"


@pytest.mark.parametrize("n,s,padding,dtype", [
    (200, 200, "lengths", jnp.float32),   # not a multiple of 128: padded to 256
    (128, 128, None, jnp.float32),        # exact block, no padding at all
    (200, 200, "lengths", jnp.bfloat16),
    (3, 150, "mask", jnp.float32),        # the probe's cross-attention: few queries, any mask
])
def test_flash_matches_einsum_forward_and_gradients(n, s, padding, dtype):
  b, h, d = 2, 2, 32
  q, k, v = _qkv(b, n, s, h, d, dtype)
  kwargs = {}
  if padding == "lengths":
    kwargs["kv_lengths"] = jnp.array([s - 57, s], jnp.int32)
  elif padding == "mask":
    kwargs["kv_mask"] = jax.random.bernoulli(jax.random.PRNGKey(3), 0.6, (b, s)).at[:, 0].set(True)
  want, want_grads = _value_and_grads("einsum", q, k, v, **kwargs)
  with tpu_attention.interpret_mode():
    got, got_grads = _value_and_grads("flash", q, k, v, **kwargs)
  assert got.shape == want.shape and got.dtype == want.dtype
  _assert_close(got, want, TOLERANCE[dtype], "output")
  for name, g, w in zip("qkv", got_grads, want_grads):
    _assert_close(g, w, TOLERANCE[dtype], f"d{name}")


def test_flash_self_attention_with_rope_matches_einsum():
  """``SelfAttention``'s own head-major path (q/k/v from the qkv kernel viewed [D, 3, H, d],
  RoPE there, the output projection reading [B, H, N, d]): same parameters as every other path,
  same outputs and gradients (parameters and input), with valid-first key padding."""
  b, n, dim, h = 2, 150, 96, 2
  x = jax.random.normal(jax.random.PRNGKey(1), (b, n, dim))
  lengths = jnp.array([97, 150], jnp.int32)
  tables = rope_lib.rope_tables(None, (2, 5, 15), dim // h, num_tokens=n)
  ref = layers.SelfAttention(h, jnp.float32, "einsum")
  flash = layers.SelfAttention(h, jnp.float32, "flash")
  params = ref.init(jax.random.PRNGKey(0), x, lengths, tables)
  with tpu_attention.interpret_mode():
    flash_params = flash.init(jax.random.PRNGKey(0), x, lengths, tables)
  # Same names, shapes and initial values: checkpoints and jepa_jax.convert see no difference.
  assert jax.tree_util.tree_structure(flash_params) == jax.tree_util.tree_structure(params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, flash_params, params)

  def loss(module, p, x):
    out = module.apply(p, x, lengths, tables)
    return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape))), out

  grad = lambda m: jax.jit(jax.value_and_grad(lambda p, x: loss(m, p, x), (0, 1), has_aux=True))
  (_, want), want_grads = grad(ref)(params, x)
  with tpu_attention.interpret_mode():
    (_, got), got_grads = grad(flash)(params, x)
  _assert_close(got, want, 1e-5, "output")
  # Not differentiated (the target encoder), the kernel and projection run without their VJP.
  with tpu_attention.interpret_mode():
    _assert_close(jax.jit(flash.apply)(params, x, lengths, tables), want, 1e-5, "forward alone")
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got_grads),
                          jax.tree_util.tree_leaves(want_grads)):
    _assert_close(g, w, 1e-5, jax.tree_util.keystr(path))


def test_flash_under_a_mesh_is_placed_per_shard():
  """Under a declared mesh the kernel is called in a shard_map over the batch axes (XLA cannot
  partition a Pallas TPU call: "Mosaic kernels cannot be automatically partitioned"); without
  one it is called directly. Lowered for TPU only (interpret mode cannot run inside a sharded
  CPU program); the per-shard numerics are those of the tests above, one clip per shard."""
  mesh = jax.make_mesh((2, 2), ("data", "fsdp"), devices=jax.devices()[:4],
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  q, k, v = _qkv(4, 130, 130, 2, 16, jnp.bfloat16)
  lengths = jnp.array([130, 5, 77, 129], jnp.int32)

  def lowered(declare_mesh):
    def run(q, k, v, lengths):
      if not declare_mesh:
        return layers.dot_product_attention(q, k, v, implementation="flash", kv_lengths=lengths)
      with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        return layers.dot_product_attention(q, k, v, implementation="flash", kv_lengths=lengths)
    return jax.jit(run).trace(q, k, v, lengths).lower(lowering_platforms=("tpu",)).as_text()

  sharded, plain = lowered(True), lowered(False)
  assert "tpu_custom_call" in sharded and "tpu_custom_call" in plain
  assert "sdy.manual_computation" in sharded and "sdy.manual_computation" not in plain
  assert re.search(r'manual_axes=\{"data", "fsdp"\}', sharded), "not split over the batch axes"


def test_auto_resolution():
  """``auto`` on TPU is the kernel where it takes the inputs and a mesh is declared (it runs per
  shard in a shard_map), else chunked; GPU keeps cuDNN; an explicit name always passes through."""
  mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1],
                       axis_types=(jax.sharding.AxisType.Auto,))
  assert layers.resolve_attention("auto", "tpu", jnp.bfloat16, 64) == "chunked"  # no mesh
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
    assert layers.resolve_attention("auto", "tpu", jnp.bfloat16, 64) == "flash"
    assert layers.resolve_attention("auto", "tpu", jnp.float32, 80) == "flash"
    assert layers.resolve_attention("auto", "tpu", jnp.bfloat16, 24) == "flash"   # predictor
    assert layers.resolve_attention("auto", "tpu", jnp.bfloat16, 88) == "flash"   # ViT-g
    assert layers.resolve_attention("auto", "tpu", jnp.bfloat16, 20) == "chunked"
    assert layers.resolve_attention("auto", "tpu", jnp.float16, 64) == "chunked"
    assert layers.resolve_attention("auto", "cuda", jnp.bfloat16, 64) == "cudnn"
  assert layers.resolve_attention("flash", "cpu", jnp.float32, 64) == "flash"
  assert [tpu_attention.padded_length(n) for n in (1568, 592, 296, 1576, 128, 13)] == [
      1664, 640, 384, 1664, 128, 128]


def test_unpadded_lengths_are_refused():
  q = jnp.zeros((1, 1, 100, 8))
  with pytest.raises(ValueError, match="multiple of 128"):
    tpu_attention.fused_attention(q, q, q, jnp.ones((1, 100), bool))


# --- XLA:TPU ahead of time ------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _tiny_encoder_hlo(topology: str, width: int = 64, grad: bool = True) -> str:
  """Forward + backward (or, ``grad=False``, the forward alone, as the target encoder runs) of a
  tiny scanned transformer stack (2 blocks, 2 heads, 200 tokens with valid-first padding, 8
  clips on 4 chips, bf16) compiled by XLA:TPU for ``topology`` with the ``flash`` attention,
  traced for TPU under the mesh, as the train step is."""
  from jax.experimental import topologies
  topo = topologies.get_topology_desc(topology_name=topology, platform="tpu")
  mesh = jax.sharding.Mesh(np.asarray(topo.devices)[:4].reshape(4, 1), ("data", "fsdp"))
  stack = layers.BlockStack(2, layers.BlockConfig(num_heads=2, dtype=jnp.bfloat16,
                                                  attention="flash", scan=True))
  x = jax.ShapeDtypeStruct((8, 200, width), jnp.float32)
  lengths = jax.ShapeDtypeStruct((8,), jnp.int32)
  params = jax.eval_shape(lambda: stack.init(jax.random.PRNGKey(0), jnp.zeros(x.shape),
                                             jnp.zeros(lengths.shape, jnp.int32)))
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def loss(p, x, lengths):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return jnp.mean(stack.apply(p, x, lengths)[0].astype(jnp.float32) ** 2)

  step = jax.jit(jax.grad(loss, argnums=(0, 1)) if grad else loss,
                 in_shardings=(jax.tree_util.tree_map(lambda _: rep, params), batch, batch))
  with layers.target_platform("tpu"):
    return step.lower(params, x, lengths).compile().as_text()


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed (pip install -e '.[tpu]')")
@pytest.mark.slow
@pytest.mark.parametrize("topology,width", [("v5e:2x2", 64), ("v5p:2x2x1", 176), ("v6e:2x2", 48)])
def test_tiny_model_compiles_for_tpu_with_the_kernel(topology, width, monkeypatch):
  """Head dimensions 32, 88 (ViT-g's) and 24 (the predictors'); the kernels' matmul FLOPs as
  ``hlo_stats`` counts them: per block, a forward (2 matmuls per query, key and head dimension)
  and one fused backward (5), over the padded lengths."""
  from jepa_jax import hlo_stats
  # Compiling needs no chip; without this libtpu refuses to load while another process holds it.
  monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  text = _tiny_encoder_hlo(topology, width)
  stats = hlo_stats.analyse(text)
  assert stats.kernels == {"splash_mha_fwd_segmented_residuals": 2,
                           "splash_mha_dkv_segmented_no_residuals": 2}, stats.kernels
  # Per chip: 2 clips, 2 heads, 200 tokens padded to 256.
  assert stats.kernel_flops == 2 * 2 * (2 + 5) * (2 * 2 * 256 * 256 * (width // 2))
  # No [2, 2, 256, 256] (or [.., 200, 200]) logits in float32 or bfloat16 anywhere.
  for n in ("200", "256"):
    assert not re.search(rf"(f32|bf16)\[2,2,{n},{n}\]", text), topology


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed (pip install -e '.[tpu]')")
@pytest.mark.parametrize("grad", [False, True])
def test_activation_relayouts_around_the_kernel(grad, monkeypatch):
  """Relayouts of activation-sized arrays around the kernel (its ``[B, H, N, d]`` output and
  output gradient against the ``[B, N, H * d]`` of the projections), in the tiny model's
  compiled step (v5p, head dimension 88, 2 blocks, 2 clips of 256 padded tokens per chip).
  Forward alone (the target encoder): none, as the output projection reads the kernel's output
  where it lies. Forward + backward: two per block (the output kept dense for the backward, and
  the output gradient in the kernel's layout), none of them float32. Before, the forward
  transposed the output for the projection in every pass and the softmax backward's row term
  relaid the output and its gradient out in float32: three per block, one float32
  (BENCHMARKS.md, "TPU attention": 10.8 -> 5.4 GiB per step on ViT-L)."""
  from jepa_jax import hlo_stats
  monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  stats = hlo_stats.analyse(_tiny_encoder_hlo("v5p:2x2x1", 176, grad))
  dims = lambda o: [int(n) for n in re.search(r"\[([\d,]*)\]", o.shape).group(1).split(",") if n]
  activation = [o for o in stats.relayout_ops
                if math.prod(dims(o)) == 2 * 256 * 176 and 256 in dims(o)]
  assert not [o for o in activation if o.shape.startswith("f32")], activation
  assert sum(o.count for o in activation) == (4 if grad else 0), activation
