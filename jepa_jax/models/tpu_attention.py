"""Fused attention on TPU: jax's Pallas flash attention kernel, with key padding as segment ids.

``jax.experimental.pallas.ops.tpu.flash_attention`` computes exact softmax attention block by
block in VMEM: no ``[B, H, N, S]`` logits buffer in HBM, forward or backward (its backward kernels
recompute the blocks' logits from q, k and the saved log-sum-exp). Logits, softmax and the scale
are float32 inside the kernel (``sm_scale`` multiplies the float32 logits), as in the ``einsum``
and ``chunked`` paths; that is why this wrapper uses the flash kernel and not the splash kernel,
which takes no scale (q would have to be pre-scaled in bfloat16, an extra rounding for head
dimensions whose scale is not a power of two: the predictors' 32, ViT-H's 80).

The kernel refuses sequence lengths that are not a multiple of its 128-token blocks
(``kv_seq_len=1568 should be divisible by block_k_major=128``), so callers pad q, k and v to
``padded_length(n)`` (1568 -> 1664) and say which keys are real with ``kv_valid`` ``[B, S]``:
the kernel's segment ids, 1 for real keys, 0 for padding, every query 1, so a query attends to the
real keys only. This expresses both key-padding forms of ``layers.dot_product_attention`` exactly
(valid-first ``kv_lengths`` and any ``kv_mask``). A row with no real key at all has no defined
softmax here (the ``einsum`` path averages all keys then); no caller produces one.

Pallas TPU kernels cannot be partitioned by XLA ("Mosaic kernels cannot be automatically
partitioned. Please wrap the call in a shard_map"): under a mesh the call runs in a
``shard_map`` over the mesh's batch axes (``sharding.BATCH_AXES``), each chip attending its own
clips. The mesh is the one declared while tracing (``jax.sharding.use_abstract_mesh``; the train
step declares its mesh, ``train_step.jit_train_step``); ``layers.resolve_attention`` only picks
this kernel for ``auto`` when a mesh is declared, since a sharded program without one would not
compile.
"""
import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import flash_attention as pallas_flash

# The kernel's block size along both sequences (its default ``BlockSizes``): lengths are padded
# to a multiple of it.
BLOCK = 128
MAX_HEAD_DIM = 128  # larger head dimensions must be a multiple of 128 (the kernel's lanes)


def supports(head_dim: int, dtype) -> bool:
  """What the kernel takes: bfloat16 or float32 inputs; a head dimension of at most 128, or a
  multiple of 128."""
  return (jnp.dtype(dtype) in (jnp.bfloat16, jnp.float32)
          and (head_dim <= MAX_HEAD_DIM or head_dim % MAX_HEAD_DIM == 0))


def check_supported(head_dim: int, dtype):
  """One-line refusal of inputs the kernel does not take, naming the setting to change."""
  if not supports(head_dim, dtype):
    raise ValueError(f"attention 'flash' (Pallas TPU) takes bfloat16/float32 inputs with a head "
                     f"dimension of at most {MAX_HEAD_DIM} or a multiple of it, got "
                     f"{jnp.dtype(dtype).name} with head dimension {head_dim}; use "
                     "model.attention='chunked' for this model")


def padded_length(n: int) -> int:
  """``n`` rounded up to the kernel's block: 1568 -> 1664, 592 -> 640, 13 -> 128."""
  return -(-n // BLOCK) * BLOCK


def _batch_axes(mesh) -> tuple:
  from jepa_jax import sharding  # sharding imports the models: import here, not at the top
  return tuple(a for a in sharding.BATCH_AXES if a in mesh.axis_names)


def flash_attention(q, k, v, kv_valid, scale: float):
  """Exact attention of q ``[B, H, N, d]`` over k/v ``[B, H, S, d]``, head-major, with N and S
  multiples of ``BLOCK``; ``kv_valid`` ``[B, S]`` bool marks the keys attended to. Returns
  ``[B, H, N, d]`` in q's dtype."""
  b, _, n, _ = q.shape
  s = k.shape[2]
  if n % BLOCK or s % BLOCK:
    raise ValueError(f"flash attention needs lengths padded to a multiple of {BLOCK} "
                     f"(tpu_attention.padded_length), got q {n} and kv {s}")
  segments = pallas_flash.SegmentIds(q=jnp.ones((b, n), jnp.int32),
                                     kv=kv_valid.astype(jnp.int32))
  call = functools.partial(pallas_flash.flash_attention, sm_scale=float(scale))
  mesh = jax.sharding.get_abstract_mesh()
  axes = () if mesh.empty else _batch_axes(mesh)
  if not axes:
    return call(q, k, v, segment_ids=segments)
  spec = jax.sharding.PartitionSpec(axes)

  def per_shard(q, k, v, seg_q, seg_kv):
    return call(q, k, v, segment_ids=pallas_flash.SegmentIds(seg_q, seg_kv))

  return jax.shard_map(per_shard, mesh=mesh, in_specs=(spec,) * 5, out_specs=spec,
                       check_vma=False)(q, k, v, segments.q, segments.kv)
