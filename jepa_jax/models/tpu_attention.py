"""Fused attention on TPU: jax's Pallas splash attention kernel, with key padding as segment ids.

``fused_attention(q, k, v, kv_valid)`` computes exact softmax attention block by block in VMEM (no
``[B, H, N, S]`` logits in HBM, forward or backward; float32 logits as the other paths); ``layers``
calls it through ``padded_length`` and ``supports`` / ``check_supported``.

Why the layouts: XLA:TPU tiles the two minor dimensions by (8, 128), so a head-dimension-minor
array takes 2x its size at head dim 64 and 5.3x at the predictor's 24. q, k, v therefore enter in
the kernel's ``SEQ_MINOR`` layout (``[.., d, N]``, as the qkv matmul writes it), the output leaves
as ``[B, N, H * d]``, and a custom VJP keeps only q, k, v, that output and a float32 log-sum-exp per
query (BENCHMARKS.md, "TPU attention"). That VJP calls the kernel's private fused backward
(``_splash_attention_bwd_dkv``); ``tests/test_tpu_attention.py`` checks it against the ``einsum``
path in interpret mode, so a jax release that changes it fails there.

Constraints: q arrives pre-scaled (the kernel takes no scale); lengths are padded to multiples of
128 (1568 -> 1664) and ``kv_valid`` ``[B, S]`` becomes segment ids (real keys 1, padding 0; a row
with no real key is undefined, and no caller makes one); Mosaic kernels cannot be partitioned by
XLA, so under a mesh the call runs in a ``shard_map`` over ``sharding.BATCH_AXES`` of the mesh
declared while tracing (``jax.sharding.use_abstract_mesh``).
"""
import contextlib
import contextvars

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

# The kernel's block size along both sequences: lengths are padded to a multiple of it.
BLOCK = 128
_SEQ_MINOR = splash.QKVLayout.SEQ_MINOR


def _block_sizes(kv_len: int) -> splash.BlockSizes:
  """One fused backward kernel (dq, dk and dv in one pass: 10 rather than 14 matmul FLOPs per
  query-key pair and head dimension) whose key blocks span the whole key sequence: the fused
  kernel writes one partial dq per key block, ``[kv_len / block, B, H, N, d]``, which at 128-key
  blocks is ``kv_len / 128`` times dq (BENCHMARKS.md, "TPU attention")."""
  return splash.BlockSizes(
      block_q=BLOCK, block_kv=BLOCK, block_kv_compute=BLOCK, block_q_dkv=BLOCK,
      block_kv_dkv=kv_len, block_kv_dkv_compute=BLOCK, use_fused_bwd_kernel=True,
      q_layout=_SEQ_MINOR, k_layout=_SEQ_MINOR, v_layout=_SEQ_MINOR)


# Run the kernel in Pallas' interpreter (any backend; the tests' CPU): ``interpret_mode()``.
_INTERPRET = contextvars.ContextVar("jepa_jax_tpu_attention_interpret", default=False)


@contextlib.contextmanager
def interpret_mode():
  """Within this context the kernel is traced for Pallas' interpreter, so it runs on a CPU.
  (``pltpu.force_tpu_interpret_mode`` does not serve: its interpreter refuses the batch grid
  dimension that ``vmap`` adds to the kernel.)"""
  token = _INTERPRET.set(True)
  try:
    yield
  finally:
    _INTERPRET.reset(token)


def supports(head_dim: int, dtype) -> bool:
  """What the kernel takes: bfloat16 or float32 inputs; a head dimension that is a multiple of 8
  (it is the second-minor, sublane, dimension of the sequence-minor layout)."""
  return jnp.dtype(dtype) in (jnp.bfloat16, jnp.float32) and head_dim % 8 == 0


def check_supported(head_dim: int, dtype):
  """One-line refusal of inputs the kernel does not take, naming the setting to change."""
  if not supports(head_dim, dtype):
    raise ValueError(f"attention 'flash' (Pallas TPU splash kernel) takes bfloat16/float32 inputs "
                     f"with a head dimension that is a multiple of 8, got "
                     f"{jnp.dtype(dtype).name} with head dimension {head_dim}; use "
                     "model.attention='chunked' for this model")


def padded_length(n: int) -> int:
  """``n`` rounded up to the kernel's block: 1568 -> 1664, 592 -> 640, 13 -> 128."""
  return -(-n // BLOCK) * BLOCK


def _batch_axes(mesh) -> tuple:
  from jepa_jax import sharding  # sharding imports the models: import here, not at the top
  return tuple(a for a in sharding.BATCH_AXES if a in mesh.axis_names)


def _kernel(heads: int, q_len: int, kv_len: int, interpret: bool):
  """The splash kernel for one clip's ``[heads, q_len, .]`` x ``[heads, kv_len, .]``: every query
  may attend every key (a full mask); the padding is excluded by segment ids. Built per trace, not
  cached: it holds its block masks as arrays of the trace that made it."""
  mask = splash_mask.MultiHeadMask([splash_mask.FullMask((q_len, kv_len))] * heads)
  return splash.make_splash_mha(mask, block_sizes=_block_sizes(kv_len), head_shards=1,
                                q_seq_shards=1, save_residuals=True, interpret=interpret)


def _segments(kv_valid, n):
  return splash.SegmentIds(q=jnp.ones((kv_valid.shape[0], n), jnp.int32),
                           kv=kv_valid.astype(jnp.int32))


@jax.custom_vjp
def _attention(q, k, v, kv_valid):
  out, _ = _forward(q, k, v, kv_valid)
  return out


def _forward(q, k, v, kv_valid):
  kernel = _kernel(q.shape[1], q.shape[2], k.shape[2], _INTERPRET.get())
  out, (lse,) = jax.vmap(lambda q, k, v, seg: kernel(q, k, v, segment_ids=seg))(
      q, k, v, _segments(kv_valid, q.shape[2]))
  # The kernel writes [B, H, N, d]; kept so for the backward it would be lane-padded (2x at
  # d = 64, 5.3x at 24; XLA:TPU turns a transpose into a choice of layout, not a copy). As
  # [B, N, H * d] the heads and head dimension share the minor dimension: dense, and the layout
  # the output projection reads.
  b, h, n, e = out.shape
  return out.transpose(0, 2, 1, 3).reshape(b, n, h * e), lse


def _attention_fwd(q, k, v, kv_valid):
  out, lse = _forward(q, k, v, kv_valid)
  return out, (q, k, v, kv_valid, out, lse)


def _attention_bwd(residuals, d_out):
  q, k, v, kv_valid, out, lse = residuals
  b, h, n, e = q.shape
  kernel = _kernel(h, n, k.shape[2], _INTERPRET.get())
  kw, sizes = kernel.kwargs, kernel.kwargs["block_sizes"]
  # The softmax backward's row term, sum_d(out * d_out), read in the [B, N, H, d] layout both
  # arrive in (the kernel's public backward would compute it from head-major float32 copies).
  di = jnp.einsum("bnhe,bnhe->bhn", out.reshape(b, n, h, e), d_out.reshape(b, n, h, e),
                  preferred_element_type=jnp.float32)

  def per_clip(q, k, v, seg, lse, d_out, di):
    return splash._splash_attention_bwd_dkv(  # pylint: disable=protected-access
        q, k, v, seg, None, lse, d_out, di, bq=sizes.block_q_dkv, bkv=sizes.block_kv_dkv,
        bkv_compute=sizes.block_kv_dkv_compute, is_mqa=kw["is_mqa"],
        mask_info=kernel.dkv_mask_info, mask_value=kw["mask_value"],
        attn_logits_soft_cap=kw["attn_logits_soft_cap"], use_fused_bwd_kernel=True,
        q_layout=sizes.q_layout, k_layout=sizes.k_layout, v_layout=sizes.v_layout,
        mask_function=kw["mask_function"], interpret=kw["interpret"])

  d_out = d_out.reshape(b, n, h, e).transpose(0, 2, 1, 3)
  dq, dk, dv = jax.vmap(per_clip)(q, k, v, _segments(kv_valid, n), lse, d_out, di)
  return dq, dk, dv, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def fused_attention(q, k, v, kv_valid):
  """Exact attention of q ``[B, H, N, d]`` (already multiplied by the softmax scale) over k/v
  ``[B, H, S, d]``, with N and S multiples of ``BLOCK``; ``kv_valid`` ``[B, S]`` bool marks the
  keys attended to. Returns the output as ``[B, N, H * d]`` (heads concatenated, as the output
  projection reads it), in q's dtype."""
  b, _, n, _ = q.shape
  s = k.shape[2]
  if n % BLOCK or s % BLOCK:
    raise ValueError(f"flash attention needs lengths padded to a multiple of {BLOCK} "
                     f"(tpu_attention.padded_length), got q {n} and kv {s}")
  mesh = jax.sharding.get_abstract_mesh()
  axes = () if mesh.empty else _batch_axes(mesh)
  if not axes:
    return _attention(q, k, v, kv_valid)
  spec = jax.sharding.PartitionSpec(axes)
  return jax.shard_map(_attention, mesh=mesh, in_specs=(spec,) * 4, out_specs=spec,
                       check_vma=False)(q, k, v, kv_valid)
