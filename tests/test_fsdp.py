"""FSDP moves weights, not activations; gradients cross devices in float32.

The step is compiled for simulated CPU devices and its HLO read: XLA:CPU's partitioner makes the
same choices as XLA:TPU's here. Without the activation constraints (``sharding.constrain``), a
ViT-S step at 112 px, 16 clips on ``data 1 x fsdp 4`` all-gathers ``[16, 392, 1152]``, the whole
batch's qkv activations, in every block; with them, the only all-gathers are of weights.
"""
import importlib.util
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax import sharding as sharding_lib
from jepa_jax.models import layers
from jepa_jax.pretrain import defaults, experiment

# The result shape: one array or a tuple of them (XLA combines small all-reduces).
COLLECTIVE = re.compile(r"= (\([^=]*?\)|\S+) (all-gather|all-reduce|reduce-scatter|all-to-all|"
                        r"collective-permute)(?:-start)?\(")
DTYPE_BYTES = {"f32": 4, "bf16": 2, "s32": 4, "u32": 4, "pred": 1, "f16": 2, "s8": 1, "u8": 1}


def array_bytes(shape: str) -> int:
  """Bytes of an HLO shape string (``f32[16,392,1152]{...}`` or a tuple of them)."""
  total = 0
  for dtype, dims in re.findall(r"(\w+)\[([0-9,]*)\]", shape):
    total += DTYPE_BYTES.get(dtype, 4) * int(np.prod([int(d) for d in dims.split(",") if d]))
  return total


def collectives(hlo_text: str) -> list[tuple[str, str]]:
  """``(kind, result shape)`` of every collective op in an HLO module's text."""
  text = re.sub(r"/\*index=\d+\*/", "", hlo_text)  # long tuples number their elements
  return [(kind, shape) for shape, kind in COLLECTIVE.findall(text)]


def vit_s_config(mesh, dtype="float32", grad_accum_steps=1):
  """ViT-S/16 at 112 px x 16 frames (392 tokens), 16 clips, scanned blocks (two in the encoder,
  one in the predictor): main's step (b00613c) all-gathers f32[16,392,1152] here."""
  c = defaults.base_config()
  c.batch_size = 16
  c.grad_accum_steps = grad_accum_steps
  c.model.name = "small"
  c.model.overrides = {"depth": 2}
  c.model.scan = True
  c.model.pred_embed_dim, c.model.pred_depth = 192, 1
  c.model.dtype = dtype
  c.data.crop_size, c.data.num_frames = 112, 16
  c.mesh.data, c.mesh.fsdp = mesh
  return c


def compiled_step_text(config, num_devices):
  exp = experiment.build(config, devices=jax.devices()[:num_devices])
  largest = max(int(np.prod(x.shape)) * x.dtype.itemsize
                for x in jax.tree_util.tree_leaves(exp.abstract_state.params))
  return exp.compile_train_step().as_text(), largest


def assert_gradients_reduced_in_float32(ops):
  """bf16 compute, float32 parameters: every gradient all-reduce / reduce-scatter is float32
  (the reference all-reduces float32 gradients), none bf16."""
  reductions = [shape for kind, shape in ops if kind in ("all-reduce", "reduce-scatter")]
  assert any(array_bytes(s) > 2**16 for s in reductions), reductions  # the weight gradients
  assert not [s for s in reductions if "bf16" in s], reductions


@pytest.mark.parametrize("grad_accum_steps", [1, pytest.param(2, marks=pytest.mark.slow)],
                         ids=["whole", "accum2"])
def test_fsdp_step_moves_weights_not_activations(grad_accum_steps, num_devices):
  """data 1 x fsdp 4: the only all-gathers are of weights (none larger than the largest
  parameter), and nothing activation-sized is re-split between devices."""
  if num_devices < 4:
    pytest.skip("needs 4 (simulated) devices")
  text, largest_param = compiled_step_text(vit_s_config((1, 4), grad_accum_steps=grad_accum_steps), 4)
  ops = collectives(text)
  assert any(kind == "all-gather" for kind, _ in ops), "fsdp should all-gather the weights"
  moved = [(kind, shape) for kind, shape in ops
           if kind in ("all-gather", "all-to-all", "collective-permute")
           and array_bytes(shape) > largest_param]
  assert not moved, f"activation-sized transfers (largest parameter {largest_param} B): {moved}"


def _dense_gradient_hlo_for_tpu(module) -> str:
  """The weight gradient of one bf16-compute dense layer (float32 parameters), data parallel on
  the 4 chips of a v5p:2x2x1 slice, compiled by XLA:TPU on this CPU."""
  from jax.experimental import topologies  # noqa: PLC0415
  topo = topologies.get_topology_desc(topology_name="v5p:2x2x1", platform="tpu")
  mesh = jax.sharding.Mesh(np.asarray(topo.devices).reshape(4, 1), ("data", "fsdp"))
  x = jax.ShapeDtypeStruct((32, 64, 256), jnp.bfloat16)
  params = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros(x.shape, x.dtype)))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))

  def loss(p, x):
    return jnp.mean(module.apply(p, x).astype(jnp.float32) ** 2)

  step = jax.jit(jax.grad(loss), in_shardings=(jax.tree_util.tree_map(lambda _: rep, params),
                                               batch), out_shardings=rep)
  return step.lower(params, x).compile().as_text()


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed")
def test_weight_gradients_cross_devices_in_float32_on_tpu(monkeypatch):
  """XLA:CPU already reduces float32 here, so the TPU compiler is the one to ask: with flax's
  plain Dense at bf16 compute XLA:TPU all-reduces the bf16 weight gradient (as main's ViT-L step
  did, 48 per-layer ``bf16[1,1024,4096]``); ``layers.dense`` (``matmul_f32_grads``) makes the
  partial sums float32, as the reference's DDP all-reduce."""
  monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  ours = collectives(_dense_gradient_hlo_for_tpu(layers.dense(512, "fc", jnp.bfloat16)))
  assert_gradients_reduced_in_float32(ours)
  plain = collectives(_dense_gradient_hlo_for_tpu(
      nn.Dense(512, dtype=jnp.bfloat16, param_dtype=jnp.float32)))
  assert any("bf16" in shape for kind, shape in plain if kind == "all-reduce"), plain


def test_f32_gradient_matmul_equals_the_plain_one():
  """Same forward (bf16 compute), same gradients up to the bf16 rounding the plain matmul adds,
  and the weight gradient is float32."""
  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (4, 7, 32), jnp.float32).astype(jnp.bfloat16)
  w = jax.random.normal(jax.random.fold_in(key, 1), (32, 16), jnp.float32) * 0.1
  ours = lambda w: jnp.sum(layers.matmul_f32_grads(x, w, None).astype(jnp.float32) ** 2)
  exact = lambda w: jnp.sum((x.astype(jnp.float32) @ w.astype(jnp.bfloat16).astype(jnp.float32)) ** 2)
  np.testing.assert_allclose(ours(w), exact(w), rtol=1e-2)
  g_ours, g_exact = jax.grad(ours)(w), jax.grad(exact)(w)
  assert g_ours.dtype == jnp.float32
  np.testing.assert_allclose(g_ours, g_exact, rtol=2e-2, atol=2e-2)


def test_f32_gradient_einsum_equals_the_plain_one():
  """The head-major projections of the TPU kernel's path (``layers.einsum_f32_grads``): the
  plain einsum's value and gradients at float32, float32 kernel and bias gradients at bf16."""
  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (2, 5, 12), jnp.float32)
  w = jax.random.normal(jax.random.fold_in(key, 1), (12, 3, 2, 4)) * 0.1
  b = jax.random.normal(jax.random.fold_in(key, 2), (3, 1, 2, 1, 4))
  spec = "bnc,cthe->tbhne"
  ours = lambda x, w, b: jnp.sum(jnp.sin(layers.einsum_f32_grads(spec, x, w, b)))
  plain = lambda x, w, b: jnp.sum(jnp.sin(jnp.einsum(spec, x, w) + b))
  np.testing.assert_allclose(ours(x, w, b), plain(x, w, b), rtol=1e-6)
  for g, g_ref in zip(jax.grad(ours, (0, 1, 2))(x, w, b), jax.grad(plain, (0, 1, 2))(x, w, b)):
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-6)
  grads = jax.grad(ours, (0, 1, 2))(x.astype(jnp.bfloat16), w, b)
  assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.float32, jnp.float32]


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed")
@pytest.mark.slow
def test_fsdp_on_tpu_gathers_weights_in_the_compute_dtype(tmp_path, monkeypatch):
  """The ViT-S step at bf16 on ``fsdp 4``, compiled by XLA:TPU as a TPU host runs it (``auto``
  attention: the Pallas kernel, whose qkv projection applies the softmax scale): every weight is
  all-gathered cast to bfloat16. Scaling the float32 qkv weight before its cast made XLA gather
  it in float32 (here ``f32[1,384,1152]``; ViT-H: 3.1 GiB per chip and step) and all-reduce
  its gradient."""
  from jepa_jax import aot  # noqa: PLC0415
  monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  hlo = tmp_path / "step.hlo"
  result = aot.compile_step(vit_s_config((1, 4), dtype="bfloat16"), "v5p:2x2x1", str(hlo))
  assert result["attention"] == "flash" and result["kernels"], result["kernels"]
  gathers = [shape for kind, shape in collectives(hlo.read_text()) if kind == "all-gather"]
  assert any("bf16" in s for s in gathers), gathers
  # (small float32 gathers are per-device statistics, [4, 1, .])
  assert not [s for s in gathers if s.startswith("f32") and array_bytes(s) > 2**16], gathers


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed")
@pytest.mark.parametrize("min_fsdp_size", [2**17, 2**18, 2**20])
def test_attention_weight_gradients_are_pinned_to_the_kernels_split(min_fsdp_size, monkeypatch):
  """The TPU attention computes the qkv and output projection gradients inside its own VJPs
  (qkv as [D, 3, H, d]), where XLA sees no link to the kernels' splits and can all-reduce them
  whole (measured: ViT-H at fsdp 4, 1.17 GiB per chip-step for qkv, 0.39 for proj). The qkv
  kernel is split along its input D and the projection along its output D, and the VJPs pin the
  gradients there (qkv's pin turned its all-reduce into a reduce-scatter in the two-block proxy;
  proj's made no difference in any compile so far); a kernel the rule keeps whole
  (min_fsdp_size) gets no constraint. Per layer, qkv has 442,368 elements and proj 147,456
  (ViT-S); 2**20 lies between a qkv kernel and its 12-layer stack: the rule counts per layer, as
  the VJP sees it, so the two agree. Lowered for TPU as the AOT compile traces it (BENCHMARKS.md has the compiled figures)."""
  from jepa_jax import aot, sharding  # noqa: PLC0415
  monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  config = vit_s_config((1, 4), dtype="bfloat16")
  config.mesh.min_fsdp_size = min_fsdp_size
  mesh = aot.tpu_mesh(config, aot.tpu_devices("v5p:2x2x1"))
  with layers.target_platform("tpu"):
    exp = experiment.build(config, mesh=mesh)
    batch = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding.batch_sharding(mesh)),
        exp.abstract_batch())
    text = exp.train_step.lower(exp.sharded_abstract_state, batch,
                                jax.ShapeDtypeStruct((2,), jnp.uint32)).as_text()
  attn = exp.state_shardings.params["encoder"]["stack"]["blocks"]["block"]["attn"]
  pinned = lambda shape: [line for line in text.splitlines()
                          if "sharding_constraint" in line and f"tensor<{shape}xf32>" in line]
  P = jax.sharding.PartitionSpec
  qkv, proj = pinned("384x3x6x64"), pinned("384x384")
  if min_fsdp_size <= 442_368:
    assert attn["qkv"]["kernel"].spec == P(None, "fsdp", None)  # [depth, D, 3D]: input D
    assert qkv and all('[{"fsdp"}, {}, {}, {}]' in line for line in qkv), qkv
  else:
    assert attn["qkv"]["kernel"].spec == P() and not qkv, qkv
  if min_fsdp_size <= 147_456:
    assert attn["proj"]["kernel"].spec == P(None, None, "fsdp")  # [depth, D, D]: output D
    assert proj and all('[{}, {"fsdp"}]' in line for line in proj), proj
  else:
    assert attn["proj"]["kernel"].spec == P() and not proj, proj


def _specs(tree, fsdp: int, min_fsdp_size: int, rules=sharding_lib.PARAM_RULES):
  mesh = sharding_lib.make_mesh(data=1, fsdp=fsdp, devices=jax.devices()[:fsdp])
  abstract = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), tree,
                                    is_leaf=lambda x: isinstance(x, tuple))
  return jax.tree_util.tree_map(lambda s: s.spec,
                                sharding_lib.state_shardings(mesh, abstract, min_fsdp_size, rules))


def test_parameter_split_follows_the_rules_table():
  """``sharding.PARAM_RULES`` is data: a qkv kernel splits its input dimension, the attention's
  output projection its output dimension, anything else its largest divisible one; another
  table changes the split; the size threshold is per layer."""
  P = jax.sharding.PartitionSpec
  tree = {"attn": {"qkv": {"kernel": (64, 192)}, "proj": {"kernel": (64, 64)}},
          "mlp": {"fc1": {"kernel": (64, 256)}, "fc2": {"kernel": (256, 64)}},
          "norm": {"scale": (64,)}}
  specs = _specs(tree, 4, 1024)
  assert specs["attn"]["qkv"]["kernel"] == P("fsdp", None)
  assert specs["attn"]["proj"]["kernel"] == P(None, "fsdp")
  assert specs["mlp"]["fc1"]["kernel"] == P(None, "fsdp")
  assert specs["mlp"]["fc2"]["kernel"] == P("fsdp", None)
  fc2_by_output = ((r"(^|/)fc2/kernel$", "output"),) + sharding_lib.PARAM_RULES
  assert _specs(tree, 4, 1024, fc2_by_output)["mlp"]["fc2"]["kernel"] == P(None, "fsdp")
  assert specs["norm"]["scale"] == P()                      # 64 elements < 1024
  fc1_by_input = ((r"(^|/)fc1/kernel$", "input"),) + sharding_lib.PARAM_RULES
  assert _specs(tree, 4, 1024, fc1_by_input)["mlp"]["fc1"]["kernel"] == P("fsdp", None)
  scanned = {"blocks": {"block": {"attn": {"qkv": {"kernel": (6, 64, 192)}}}}}
  per_layer = 64 * 192
  assert _specs(scanned, 4, per_layer)["blocks"]["block"]["attn"]["qkv"]["kernel"] == P(
      None, "fsdp", None)
  assert _specs(scanned, 4, per_layer + 1)["blocks"]["block"]["attn"]["qkv"]["kernel"] == P()
  with pytest.raises(ValueError, match="one of"):
    _specs(tree, 4, 1024, (("", "rows"),))
  with pytest.raises(ValueError, match="no sharding rule matches"):
    _specs(tree, 4, 1024, (("qkv", "input"),))
