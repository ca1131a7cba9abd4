"""jepa_jax.hlo_stats on small compiled functions whose answers are known by hand."""
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jepa_jax import hlo_stats

B, D, T = 8, 32, 5


def _scan_matmuls(x, ws):
  def body(c, w):
    return jnp.tanh(c @ w), None
  return jax.lax.scan(body, x, ws)[0]


def _compile(f, *args, **jit_kwargs):
  return jax.jit(f, **jit_kwargs).lower(*args).compile()


def _abstract(*shapes, dtype=jnp.float32):
  return [jax.ShapeDtypeStruct(s, dtype) for s in shapes]


def test_scanned_matmul_flops_use_the_trip_count():
  x, ws = _abstract((B, D), (T, D, D))
  stats = hlo_stats.analyse(_compile(_scan_matmuls, x, ws).as_text())
  assert [trips for _, trips, _ in stats.loops] == [T]
  assert stats.unknown_trip_counts == []
  assert stats.matmul_flops == T * 2 * B * D * D


def test_forward_and_backward_of_a_scan_is_three_matmuls_per_step():
  x, ws = _abstract((B, D), (T, D, D))
  loss = lambda x, ws: _scan_matmuls(x, ws).sum()
  stats = hlo_stats.analyse(_compile(jax.grad(loss, argnums=(0, 1)), x, ws).as_text())
  assert sorted(trips for _, trips, _ in stats.loops) == [T, T]
  assert stats.matmul_flops == 3 * T * 2 * B * D * D


def test_nested_loops_multiply():
  x, ws = _abstract((B, D), (3, 4, D, D))
  outer = lambda x, ws: jax.lax.scan(lambda c, w: (_scan_matmuls(c, w), None), x, ws)[0]
  stats = hlo_stats.analyse(_compile(outer, x, ws).as_text())
  assert stats.matmul_flops == 3 * 4 * 2 * B * D * D
  # The inner while runs 4 times per outer iteration, itself 3 times.
  assert sorted((trips, mult) for _, trips, mult in stats.loops) == [(3, 1.0), (4, 3.0)]


def _mesh(devices):
  return Mesh(np.asarray(devices), ("d",))


def test_all_gather_bytes_on_a_four_device_mesh():
  mesh = _mesh(jax.devices()[:4])
  f = lambda a: a * 2.0
  (x,) = _abstract((16, 8))
  compiled = _compile(f, x, in_shardings=NamedSharding(mesh, P("d")),
                      out_shardings=NamedSharding(mesh, P()))
  stats = hlo_stats.analyse(compiled.as_text())
  assert stats.collective_bytes["all-gather"] == 16 * 8 * 4   # the whole array, on each device
  assert stats.collective_counts["all-gather"] == 1
  assert stats.largest_collectives(1)[0].shape == "f32[16,8]"
  assert stats.collective_bytes["all-reduce"] == 0


def test_collectives_inside_a_loop_count_each_iteration():
  mesh = _mesh(jax.devices()[:4])
  x, ws = _abstract((B, D), (T, D, D))
  # Batch split, weights split over their rows: each step gathers one layer's weight (FSDP).
  compiled = _compile(_scan_matmuls, x, ws,
                      in_shardings=(NamedSharding(mesh, P("d")), NamedSharding(mesh, P(None, "d"))),
                      out_shardings=NamedSharding(mesh, P()))
  stats = hlo_stats.analyse(compiled.as_text())
  assert stats.matmul_flops == T * 2 * (B // 4) * D * D
  by_shape = {(o.kind, o.shape): o.count for o in stats.collective_ops}
  assert by_shape == {("all-gather", f"f32[{D},{D}]"): T, ("all-gather", f"f32[{B},{D}]"): 1}
  assert stats.collective_bytes["all-gather"] == T * D * D * 4 + B * D * 4


# A while whose trip count must be read from its condition (as XLA:TPU writes it): the counter
# starts at 2 and runs while < 7, so 5 iterations; the body holds one f32[4,8]x[8,16] dot.
_HAND_WRITTEN = """HloModule m, entry_computation_layout={(f32[4,8]{1,0})->f32[4,16]{1,0}}

%body (p: (s32[], f32[4,8], f32[8,16])) -> (s32[], f32[4,8], f32[8,16]) {
  %p = (s32[], f32[4,8]{1,0}, /*index=2*/f32[8,16]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  %x = f32[4,8]{1,0} get-tuple-element(%p), index=1
  %w = f32[8,16]{1,0} get-tuple-element(%p), index=2
  %y = f32[4,16]{1,0} dot(%x, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %t = f32[16,4]{0,1} transpose(%y), dimensions={1,0}
  ROOT %out = (s32[], f32[4,8]{1,0}, f32[8,16]{1,0}) tuple(%next, %x, %w)
}

%cond (q: (s32[], f32[4,8], f32[8,16])) -> pred[] {
  %q = (s32[], f32[4,8]{1,0}, f32[8,16]{1,0}) parameter(0)
  %seven = s32[] constant(7)
  %j = s32[] get-tuple-element(%q), index=0
  ROOT %lt = pred[] compare(%j, %seven), direction=LT
}

ENTRY %main (a: f32[4,8]) -> f32[4,8] {
  %a = f32[4,8]{1,0} parameter(0)
  %two = s32[] constant(2)
  %start = s32[] copy(%two)
  %w0 = f32[8,16]{1,0} broadcast(%two), dimensions={}
  %init = (s32[], f32[4,8]{1,0}, f32[8,16]{1,0}) tuple(%start, %a, %w0)
  %loop = (s32[], f32[4,8]{1,0}, f32[8,16]{1,0}) while(%init), condition=%cond, body=%body
  %flash_attention.3 = f32[64,4]{1,0} custom-call(%a), custom_call_target="tpu_custom_call", backend_config={"custom_call_config":{"body":"TUxJUgA=","cost_estimate":{"flops":"1000","transcendentals":"8","bytes_accessed":"96"}}}
  ROOT %res = f32[4,8]{1,0} get-tuple-element(%loop), index=1
}
"""


def test_trip_count_from_the_condition_and_its_start():
  stats = hlo_stats.analyse(_HAND_WRITTEN)
  assert stats.loops == [("loop", 5, 1.0)]
  assert stats.matmul_flops == 5 * 2 * 4 * 8 * 16
  assert stats.relayout_bytes == {"copy": 4, "transpose": 5 * 16 * 4 * 4}
  assert stats.custom_calls == {"tpu_custom_call": 1}
  # A Pallas kernel: its work is not in the HLO, its declared cost estimate is.
  assert stats.kernels == {"flash_attention": 1} and stats.kernel_flops == 1000


def test_unreadable_trip_count_is_reported_not_guessed():
  text = _HAND_WRITTEN.replace("compare(%j, %seven)", "compare(%j, %j)")
  stats = hlo_stats.analyse(text)
  assert stats.unknown_trip_counts == ["loop"]
  assert stats.matmul_flops == 2 * 4 * 8 * 16


HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed (pip install -e '.[tpu]')")
def test_tpu_compile_of_a_sharded_scan(monkeypatch):
  from jax.experimental import topologies
  # Compiling needs no chip; without this libtpu refuses to load while another process holds it.
  monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  topo = topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu")
  mesh = _mesh(topo.devices)
  x, ws = _abstract((64, 128), (7, 128, 128), dtype=jnp.bfloat16)
  compiled = _compile(_scan_matmuls, x, ws,
                      in_shardings=(NamedSharding(mesh, P("d")), NamedSharding(mesh, P(None, "d"))),
                      out_shardings=NamedSharding(mesh, P()))
  stats = hlo_stats.analyse(compiled.as_text())
  assert stats.unknown_trip_counts == []
  assert [trips for _, trips, _ in stats.loops] == [7]
  assert stats.matmul_flops == 7 * 2 * 16 * 128 * 128        # each chip: its 16 rows, 7 layers
  # Each layer's weight gathered whole (bf16[1,128,128]) every iteration; the output once.
  assert stats.collective_bytes["all-gather"] == 7 * 128 * 128 * 2 + 64 * 128 * 2


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed (pip install -e '.[tpu]')")
def test_tpu_reduce_scatter_written_as_a_fused_all_reduce(monkeypatch):
  # FSDP's weight gradients: XLA:TPU emits each layer's reduce-scatter as an all-reduce fused with
  # the slice of the chip's shard (an ``all-reduce-scatter`` fusion). Read as a plain all-reduce,
  # ViT-H's fsdp-4 gradients counted 4.86 GiB of whole all-reduces per chip and step instead of
  # 1.21 GiB of reduce-scatters.
  from jax.experimental import topologies
  monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  topo = topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu")
  mesh = _mesh(topo.devices)
  x, ws = _abstract((64, 256), (7, 256, 256))
  weights = NamedSharding(mesh, P(None, None, "d"))

  def loss(ws, x):
    return jnp.sum(_scan_matmuls(x, ws) ** 2)

  compiled = _compile(jax.grad(loss), ws, x, in_shardings=(weights, NamedSharding(mesh, P("d"))),
                      out_shardings=weights)
  assert "all-reduce-scatter" in compiled.as_text()  # the fused form this test is about
  stats = hlo_stats.analyse(compiled.as_text())
  shard = 256 * 256 // 4 * 4                          # one layer's float32 gradient shard
  assert stats.collective_bytes["reduce-scatter"] == 7 * shard
  assert stats.collective_bytes["all-reduce"] < shard


_FUSED_ALL_REDUCE_SCATTER = """HloModule m

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%all-reduce-scatter.1 (g: f32[64,32]) -> f32[16,32] {
  %g = f32[64,32]{1,0} parameter(0)
  %ar = f32[64,32]{1,0} all-reduce(%g), replica_groups={{0,1,2,3}}, to_apply=%add
  %id = u32[] partition-id()
  %zero = u32[] constant(0)
  ROOT %shard = f32[16,32]{1,0} dynamic-slice(%ar, %id, %zero), dynamic_slice_sizes={16,32}
}

%fused_sum (p: f32[8,32]) -> f32[8,32] {
  %p = f32[8,32]{1,0} parameter(0)
  ROOT %ar2 = f32[8,32]{1,0} all-reduce(%p), replica_groups={{0,1,2,3}}, to_apply=%add
}

ENTRY %main (g: f32[64,32], h: f32[8,32]) -> (f32[16,32], f32[8,32]) {
  %g = f32[64,32]{1,0} parameter(0)
  %h = f32[8,32]{1,0} parameter(1)
  %rs = f32[16,32]{1,0} fusion(%g), kind=kCustom, calls=%all-reduce-scatter.1
  %whole = f32[8,32]{1,0} fusion(%h), kind=kCustom, calls=%fused_sum
  ROOT %t = (f32[16,32]{1,0}, f32[8,32]{1,0}) tuple(%rs, %whole)
}
"""


def test_fused_all_reduce_with_a_smaller_result_is_a_reduce_scatter():
  stats = hlo_stats.analyse(_FUSED_ALL_REDUCE_SCATTER)
  assert stats.collective_bytes["reduce-scatter"] == 16 * 32 * 4
  assert stats.collective_bytes["all-reduce"] == 8 * 32 * 4    # a fused whole all-reduce stays one
  assert stats.collective_counts["reduce-scatter"] == 1


def _convolution_module(lhs: str, rhs: str, out: str, window: str, labels: str) -> str:
  return f"""HloModule m

ENTRY %main (a: f32[{lhs}], b: f32[{rhs}]) -> f32[{out}] {{
  %a = f32[{lhs}] parameter(0)
  %b = f32[{rhs}] parameter(1)
  ROOT %c = f32[{out}] convolution(%a, %b), window={{{window}}}, dim_labels={labels}
}}
"""


# How XLA:TPU writes batched matmuls as convolutions, one real tap per output element each:
# - attention's 'bnhd,bshd->bhns': a window spanning the batch (2) and heads (3) over an input
#   dilated by the same sizes (counting the whole window overcounted 6x here, 384x on ViT-L's
#   24 clips x 16 heads);
# - the gradient of ViT-H's output projection into [B, N, heads, head_dim]: a window of the
#   heads over a 1-element input padded by heads - 1 on each side (16x on ViT-H: 38 of the
#   233 TFLOP per chip and step it read).
@pytest.mark.parametrize("lhs,rhs,out,window,labels,flops", [
    ("2,5,3,4", "2,7,3,4", "2,3,5,7", "size=2x3 stride=1x2 lhs_dilate=2x3", "0b1f_0o1i->01bf",
     2 * (2 * 3 * 5 * 7) * 4),
    ("2,3,4,1", "5,6,4,1", "2,3,5,6", "size=1x5 pad=0_0x4_4 rhs_reversal=0x1", "0bf1_1oi0->0b1f",
     2 * (2 * 3 * 5 * 6) * 4),
], ids=["base_dilated", "padded"])
def test_convolution_counts_only_the_window_taps_on_the_input(lhs, rhs, out, window, labels,
                                                              flops):
  stats = hlo_stats.analyse(_convolution_module(lhs, rhs, out, window, labels))
  assert stats.matmul_flops == flops
