"""Fused attention on TPU: jax's Pallas splash attention kernel, with key padding as segment ids.

``fused_attention(q, k, v, kv_valid)`` computes exact softmax attention block by block in VMEM (no
``[B, H, N, S]`` logits in HBM, forward or backward; float32 logits as the other paths);
``fused_attention_projected`` adds the output projection (``SelfAttention``'s path). ``layers``
calls them through ``padded_length`` and ``supports`` / ``check_supported``.

Why the layouts: XLA:TPU tiles the two minor dimensions by (8, 128), so a head-dimension-minor
array takes 2x its size at head dim 64 and 5.3x at the predictor's 24. q, k, v therefore enter in
the kernel's ``SEQ_MINOR`` layout (``[.., d, N]``, as the qkv matmul writes it). The kernel's
output is ``[B, H, N, d]``, head dimension minor: the output projection reads it there (the
matmul contracts h and d wherever they lie), and the custom VJPs keep only q, k, v, a dense
``[B, N, H, d]`` copy of the output and a float32 log-sum-exp per query (BENCHMARKS.md, "TPU
attention"). They call the kernel's private fused backward (``_splash_attention_bwd_dkv``);
``tests/test_tpu_attention.py`` checks them against the ``einsum`` path in interpret mode, so a
jax release that changes it fails there.

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


def _row_term(out, d_out):
  """The softmax backward's row term ``sum_d(out * d_out)`` of ``[B, N, H, d]`` arrays, as
  ``[B, H, N]`` float32. Multiplied and summed element-wise rather than as an ``einsum``: a dot
  with batch dimensions b, n, h makes XLA:TPU relay both operands out head-major in float32
  first (3.6 GiB of copies per step on ViT-L at 24 clips per v5p chip, BENCHMARKS.md)."""
  prod = out.astype(jnp.float32) * d_out.astype(jnp.float32)
  return jnp.sum(prod, axis=-1).transpose(0, 2, 1)


def _kernel_forward(q, k, v, kv_valid):
  """The kernel over a batch: ``out`` ``[B, H, N, d]`` (its own layout) and the float32
  log-sum-exp ``[B, H, N]``."""
  kernel = _kernel(q.shape[1], q.shape[2], k.shape[2], _INTERPRET.get())
  out, (lse,) = jax.vmap(lambda q, k, v, seg: kernel(q, k, v, segment_ids=seg))(
      q, k, v, _segments(kv_valid, q.shape[2]))
  return out, lse


def _kernel_backward(q, k, v, kv_valid, lse, d_out, di):
  """The kernel's fused backward over a batch: dq, dk, dv from ``d_out`` ``[B, H, N, d]`` and the
  row term ``di`` ``[B, H, N]``."""
  b, h, n, e = q.shape
  kernel = _kernel(h, n, k.shape[2], _INTERPRET.get())
  kw, sizes = kernel.kwargs, kernel.kwargs["block_sizes"]

  def per_clip(q, k, v, seg, lse, d_out, di):
    return splash._splash_attention_bwd_dkv(  # pylint: disable=protected-access
        q, k, v, seg, None, lse, d_out, di, bq=sizes.block_q_dkv, bkv=sizes.block_kv_dkv,
        bkv_compute=sizes.block_kv_dkv_compute, is_mqa=kw["is_mqa"],
        mask_info=kernel.dkv_mask_info, mask_value=kw["mask_value"],
        attn_logits_soft_cap=kw["attn_logits_soft_cap"], use_fused_bwd_kernel=True,
        q_layout=sizes.q_layout, k_layout=sizes.k_layout, v_layout=sizes.v_layout,
        mask_function=kw["mask_function"], interpret=kw["interpret"])

  return jax.vmap(per_clip)(q, k, v, _segments(kv_valid, n), lse, d_out, di)


def _check_padded(q, k):
  n, s = q.shape[2], k.shape[2]
  if n % BLOCK or s % BLOCK:
    raise ValueError(f"flash attention needs lengths padded to a multiple of {BLOCK} "
                     f"(tpu_attention.padded_length), got q {n} and kv {s}")


def _on_batch_shards(fn, *args):
  """``fn(*args)``, under a mesh in a ``shard_map`` over its batch axes (Mosaic kernels cannot be
  partitioned by XLA); every argument and result is split along its leading (batch) axis."""
  mesh = jax.sharding.get_abstract_mesh()
  axes = () if mesh.empty else _batch_axes(mesh)
  if not axes:
    return fn(*args)
  spec = jax.sharding.PartitionSpec(axes)
  return jax.shard_map(fn, mesh=mesh, in_specs=(spec,) * len(args), out_specs=spec,
                       check_vma=False)(*args)


def _project(out, kernel, bias):
  heads = kernel.astype(out.dtype).reshape(out.shape[1], out.shape[3], -1)  # [H, d, D]
  return jnp.einsum("bhne,hed->bnd", out, heads) + bias.astype(out.dtype)


@jax.custom_vjp
def _attend_and_project(q, k, v, kv_valid, kernel, bias):
  out, _ = _on_batch_shards(_kernel_forward, q, k, v, kv_valid)
  return _project(out, kernel, bias)


def _attend_and_project_fwd(q, k, v, kv_valid, kernel, bias):
  out, lse = _on_batch_shards(_kernel_forward, q, k, v, kv_valid)
  # Kept for the backward as [B, N, H, d]: dense, where the kernel's own [B, H, N, d] is
  # lane-padded (2x at d = 64, 5.3x at 24).
  kept = out.transpose(0, 2, 1, 3)
  return _project(out, kernel, bias), (q, k, v, kv_valid, kept, lse, kernel)


def _attend_and_project_bwd(residuals, g):
  from jepa_jax import sharding  # see _batch_axes
  q, k, v, kv_valid, kept, lse, kernel = residuals
  _, h, _, e = q.shape
  # The output gradient is made in the kept output's dense layout, where the row term reads both
  # without relayout; the kernel then takes one head-major copy of it.
  d_kept = jnp.einsum("bnd,hed->bnhe", g, kernel.astype(g.dtype).reshape(h, e, -1))
  di = _row_term(kept, d_kept)
  # Pinned to the kernel's FSDP split, as qkv's. No compile yet tells the pin apart: XLA:TPU
  # all-reduces this gradient at ViT-H's size (fsdp 4: 0.39 GiB per chip-step) and
  # reduce-scatters it in the two-block proxy (bench/vith16_two_blocks.py), with or without it.
  # Contracting the kept output reshaped to [B, N, D] instead, as the Dense does, is
  # reduce-scattered at ViT-H's size but costs that reshape's relayout (2.5 GiB of copies per
  # step, more HBM traffic than the all-reduce saves: BENCHMARKS.md, "TPU attention").
  d_kernel = jnp.einsum("bnhe,bnd->hed", kept, g,
                        preferred_element_type=jnp.float32).reshape(h * e, -1)
  d_kernel = sharding.constrain_weight_gradient(d_kernel, axis=-1)
  d_bias = jnp.sum(g.astype(jnp.float32), axis=(0, 1))
  dq, dk, dv = _on_batch_shards(_kernel_backward, q, k, v, kv_valid, lse,
                                d_kept.transpose(0, 2, 1, 3), di)
  return dq, dk, dv, None, d_kernel.astype(kernel.dtype), d_bias


_attend_and_project.defvjp(_attend_and_project_fwd, _attend_and_project_bwd)


def fused_attention_projected(q, k, v, kv_valid, kernel, bias):
  """``fused_attention`` followed by the output projection, ``out @ kernel + bias`` (``kernel``
  ``[D, D]``, read as ``[H, d, D]``): ``[B, N, D]`` in q's dtype, float32 weight gradients. One VJP
  for both lets the projection read the kernel's output as it is written (no transpose in the
  forward) and keep one dense copy of it for the backward (which both the projection's weight
  gradient and the softmax backward read)."""
  _check_padded(q, k)
  return _attend_and_project(q, k, v, kv_valid, kernel, bias)


@jax.custom_vjp
def _attention(q, k, v, kv_valid):
  return _forward(q, k, v, kv_valid)[0]


def _forward(q, k, v, kv_valid):
  out, lse = _kernel_forward(q, k, v, kv_valid)
  # The kernel writes [B, H, N, d]; kept so for the backward it would be lane-padded (2x at
  # d = 64, 5.3x at 24; XLA:TPU turns a transpose into a choice of layout, not a copy). As
  # [B, N, H * d] the heads and head dimension share the minor dimension: dense, and the layout
  # an output projection reads.
  b, h, n, e = out.shape
  return out.transpose(0, 2, 1, 3).reshape(b, n, h * e), lse


def _attention_fwd(q, k, v, kv_valid):
  out, lse = _forward(q, k, v, kv_valid)
  return out, (q, k, v, kv_valid, out, lse)


def _attention_bwd(residuals, d_out):
  q, k, v, kv_valid, out, lse = residuals
  b, h, n, e = q.shape
  out, d_out = out.reshape(b, n, h, e), d_out.reshape(b, n, h, e)
  dq, dk, dv = _kernel_backward(q, k, v, kv_valid, lse, d_out.transpose(0, 2, 1, 3),
                                _row_term(out, d_out))
  return dq, dk, dv, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def fused_attention(q, k, v, kv_valid):
  """Exact attention of q ``[B, H, N, d]`` (already multiplied by the softmax scale) over k/v
  ``[B, H, S, d]``, with N and S multiples of ``BLOCK``; ``kv_valid`` ``[B, S]`` bool marks the
  keys attended to. Returns the output as ``[B, N, H * d]`` (heads concatenated, as the output
  projection reads it), in q's dtype."""
  _check_padded(q, k)
  # The whole VJP runs per shard: its element-wise parts need no partitioning either.
  return _on_batch_shards(_attention, q, k, v, kv_valid)
