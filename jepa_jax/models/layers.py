"""Transformer building blocks shared by the encoder, the predictor and the attentive probe.

Parameter names mirror the reference PyTorch modules (``norm1``, ``attn/qkv``, ``attn/proj``,
``norm2``, ``mlp/fc1``, ``mlp/fc2``) so that weight conversion is a mechanical transpose.
Parameters are float32; ``dtype`` is the compute dtype (bfloat16 for mixed precision).
"""
import contextlib
import contextvars
import dataclasses
import functools
import math
from typing import Any, Callable, Optional

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from jepa_jax import sharding
from jepa_jax.models import rope as rope_lib
from jepa_jax.models import tpu_attention

Dtype = Any
LN_EPS = 1e-6  # the reference builds every LayerNorm with eps 1e-6 (``partial(nn.LayerNorm, eps=1e-6)``)
INIT_STD = 0.02

ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn", "einsum", "chunked", "flash")
# Queries per chunk of the ``chunked`` attention: 512 keeps the per-chunk logits of a 384 px clip
# (4608 tokens, 16 heads) at 512 x 4608 x 16 x 4 B = 150 MB per clip.
ATTENTION_CHUNK = 512


def reference_trunc_normal(std: float = INIT_STD) -> Callable:
  """The reference's ``trunc_normal_(std=0.02)``: truncation at +-2 in absolute units, not in stds.

  At std 0.02 the cut lies 100 standard deviations out, so the reference draws a plain normal; Flax's
  ``truncated_normal`` would cut at +-2 std and shrink the variance by ~12%.
  """

  def init(key, shape, dtype=jnp.float32):
    return jnp.clip(std * jax.random.normal(key, shape, dtype), -2.0, 2.0)

  return init


# The name ``Dense`` gives its output (``jax.ad_checkpoint.checkpoint_name``).
WEIGHT_MATMUL = "weight_matmul"


@jax.custom_vjp
def matmul_f32_grads(x, kernel, bias):
  """``x @ kernel + bias`` in ``x``'s (compute) dtype, whose weight gradients are float32.

  The kernel and bias gradients come out of their matmul/sum in float32 rather than rounded to
  bfloat16 first, so under data parallelism / FSDP the partial sums the partitioner all-reduces
  or reduce-scatters across devices are float32, as the reference's float32 gradient
  all-reduce (torch DDP on float32 parameters). ``kernel`` ``[in, out]`` and ``bias`` ``[out]``
  (or None) are the parameters (float32); the input gradient stays in the compute dtype.
  """
  y = jax.lax.dot_general(x, kernel.astype(x.dtype), (((x.ndim - 1,), (0,)), ((), ())))
  return y if bias is None else y + bias.astype(x.dtype)


def _matmul_fwd(x, kernel, bias):
  return matmul_f32_grads(x, kernel, bias), (x, kernel, bias)


def _matmul_bwd(res, g):
  x, kernel, bias = res
  dx = jax.lax.dot_general(g, kernel.astype(x.dtype), (((g.ndim - 1,), (1,)), ((), ())))
  lead = tuple(range(x.ndim - 1))
  dk = jax.lax.dot_general(x, g, ((lead, lead), ((), ())), preferred_element_type=jnp.float32)
  db = None if bias is None else jnp.sum(g.astype(jnp.float32), axis=lead).astype(bias.dtype)
  return dx.astype(x.dtype), dk.astype(kernel.dtype), db


matmul_f32_grads.defvjp(_matmul_fwd, _matmul_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def einsum_f32_grads(spec: str, x, kernel, bias):
  """``einsum(spec, x, kernel) + bias`` in ``x``'s dtype with float32 kernel/bias gradients, as
  ``matmul_f32_grads`` for projections written as einsums (head-major q/k/v and output). Every
  index of ``spec`` ("x,kernel->out") must appear in exactly two of the three terms; ``bias``
  (or None) broadcasts against the output."""
  y = jnp.einsum(spec, x, kernel.astype(x.dtype))
  return y if bias is None else y + bias.astype(x.dtype)


def _einsum_fwd(spec, x, kernel, bias):
  return einsum_f32_grads(spec, x, kernel, bias), (x, kernel, bias)


def _einsum_bwd(spec, res, g):
  x, kernel, bias = res
  x_spec, rest = spec.split(",")
  k_spec, out_spec = rest.split("->")
  dx = jnp.einsum(f"{out_spec},{k_spec}->{x_spec}", g, kernel.astype(x.dtype))
  dk = jnp.einsum(f"{x_spec},{out_spec}->{k_spec}", x, g, preferred_element_type=jnp.float32)
  db = None
  if bias is not None:
    lead = g.ndim - bias.ndim
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(bias.shape) if n == 1)
    db = jnp.sum(g.astype(jnp.float32), axis=axes, keepdims=True).reshape(bias.shape)
    db = db.astype(bias.dtype)
  return dx.astype(x.dtype), dk.astype(kernel.dtype), db


einsum_f32_grads.defvjp(_einsum_fwd, _einsum_bwd)


class Dense(nn.Module):
  """``nn.Dense``'s parameters (``kernel`` ``[in, out]``, ``bias``; same names, shapes and init
  order) computed in ``dtype`` with float32 weight gradients (``matmul_f32_grads``)."""
  features: int
  dtype: Dtype = jnp.float32
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", reference_trunc_normal(), (x.shape[-1], self.features),
                        jnp.float32)
    bias = (self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            if self.use_bias else None)
    # Named so that the "dots" remat policies can keep it: a custom_vjp is opaque to
    # jax.checkpoint's dot policies, which would otherwise recompute every weight matmul.
    return checkpoint_name(matmul_f32_grads(x.astype(self.dtype), kernel, bias), WEIGHT_MATMUL)


def dense(features: int, name: str, dtype: Dtype, use_bias: bool = True) -> Dense:
  return Dense(features, dtype=dtype, use_bias=use_bias, name=name)


# LayerNorm and GELU are recomputed in the backward pass from their inputs instead of keeping
# their intermediates: Flax's LayerNorm keeps ~3 float32 copies of its input ([B, N, D] each, for
# statistics in float32) and the exact GELU ~2 more copies of the MLP hidden. Under ``nn.scan``
# every kept intermediate is written to a per-layer stack in the forward and read back in the
# backward (an unrolled stack lets XLA fuse them away; a scanned one cannot), so recomputing
# them cuts the per-block residuals by about a third (BENCHMARKS.md, "Changes for the GPU
# path"). The recomputation is element-wise work XLA fuses into the backward's kernels; numerics
# are unchanged (the same ops run again on the same inputs).
_RecomputedLayerNorm = nn.remat(nn.LayerNorm, prevent_cse=False)


def layer_norm(name: str, dtype: Dtype, eps: float = LN_EPS) -> nn.Module:
  # Flax computes LayerNorm statistics in at least float32 even when ``dtype`` is bfloat16.
  return _RecomputedLayerNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32, name=name)


@functools.partial(jax.checkpoint, prevent_cse=False)
def gelu(x):
  """torch.nn.GELU(): the exact erf form, recomputed in the backward (see above)."""
  return nn.gelu(x, approximate=False)


def _einsum_attention(q, k, v, kv_mask, scale):
  logits = jnp.einsum("bnhd,bshd->bhns", q, k, preferred_element_type=jnp.float32) * scale
  if kv_mask is not None:
    logits = jnp.where(kv_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhns,bshd->bnhd", weights, v)


def lengths_to_mask(lengths: jax.Array, size: int) -> jax.Array:
  """``[B]`` valid counts -> ``[B, size]`` bool, True on the first ``lengths[b]`` positions."""
  return jnp.arange(size)[None, :] < lengths[:, None]


def chunk_layout(n: int, max_chunk: int) -> tuple[int, int]:
  """``(chunks, chunk size)`` for ``n`` queries in chunks of at most ~``max_chunk``: as few
  chunks as that allows, of equal size rounded up to a multiple of 8 (TPU sublanes), so the
  padding is under 8 queries per chunk (padding to a multiple of ``max_chunk`` computed 1568 ->
  2048 and 592 -> 1024 queries' attention)."""
  if n <= max_chunk:
    return 1, n
  chunks = -(-n // max_chunk)
  size = -(-n // chunks)
  if size > 8:
    size = -(-size // 8) * 8
  return -(-n // size), size


def chunked_attention(q, k, v, kv_mask=None, chunk_size: Optional[int] = None):
  """Exact attention that never holds more than ``chunk_size`` queries' logits, forward or backward.

  The queries are split into chunks, attended one chunk at a time (``lax.map``), and each chunk is
  rematerialised in the backward pass, so the largest buffer is ``[B, H, chunk_size, S]`` instead
  of ``[B, H, N, S]``: the memory-efficient attention of Rabe & Staats (2021) without the key
  blocking. It is the portable choice where no fused kernel is (XLA:TPU and XLA:CPU materialise
  the full logits through ``jax.nn.dot_product_attention``), at the cost of one more attention
  forward in the backward pass. Same numerics as ``einsum`` (float32 logits and softmax).
  """
  b, n, h, d = q.shape
  scale = d ** -0.5
  num_chunks, c = chunk_layout(n, chunk_size or ATTENTION_CHUNK)
  pad = num_chunks * c - n
  if pad:  # padded queries attend like any other and are dropped; no gradient flows to them
    q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
  chunks = q.reshape(b, (n + pad) // c, c, h, d).swapaxes(0, 1)

  @jax.checkpoint
  def attend(q_chunk):
    return _einsum_attention(q_chunk, k, v, kv_mask, scale)

  out = jax.lax.map(attend, chunks).swapaxes(0, 1).reshape(b, n + pad, h, d)
  return out[:, :n]


# The platform ``auto`` resolves for. None: the backend JAX runs on (``jax.default_backend()``).
# Set it (``target_platform``) to trace for another platform, e.g. to lower a step for "cuda" on
# a CPU machine (tests/test_lowering.py) or to compile ahead of time for another accelerator.
_TARGET_PLATFORM: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar(
    "jepa_jax_attention_platform", default=None)


@contextlib.contextmanager
def target_platform(platform: Optional[str]):
  """Within this context ``auto`` attention resolves for ``platform`` ("cuda", "tpu", "cpu")."""
  token = _TARGET_PLATFORM.set(platform)
  try:
    yield
  finally:
    _TARGET_PLATFORM.reset(token)


def current_platform() -> str:
  return _TARGET_PLATFORM.get() or jax.default_backend()


def cudnn_supports(head_dim: int, dtype) -> bool:
  """What cuDNN's fused flash kernel takes (jax ``check_is_flash_attention``, pre-Hopper limit):
  16-bit inputs and a head dimension that is a multiple of 8, at most 128."""
  return jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 128


def resolve_attention(implementation: str, backend: str, dtype, head_dim: int = 64) -> str:
  """``auto`` -> the fastest exact path that bounds memory on ``backend``; others pass through.

  GPU: cuDNN's fused flash kernel where it takes the inputs (bfloat16/float16, head dimension a
  multiple of 8 up to 128; otherwise ``xla``). TPU: the Pallas splash kernel (``flash``,
  ``models.tpu_attention``) where it takes the inputs (bfloat16/float32, head dimension a multiple
  of 8) and a mesh is declared while tracing (the kernel runs per shard in a ``shard_map``; the
  train step, eval and fine-tuning declare theirs); otherwise ``chunked`` (XLA:TPU would
  materialise every [heads, N, N] logits buffer; a 384 px clip has N = 4608). CPU: ``xla``.
  """
  if implementation != "auto":
    return implementation
  if backend in ("gpu", "cuda") and cudnn_supports(head_dim, dtype):
    return "cudnn"
  if backend == "tpu":
    declared = not jax.sharding.get_abstract_mesh().empty
    return "flash" if declared and tpu_attention.supports(head_dim, dtype) else "chunked"
  return "xla"


# cuDNN sequence lengths are padded to a multiple of this. jax refuses odd lengths in training
# (``check_is_flash_attention``: "Unsupported sequence length Q 99, KV 99"), and multiples of 8
# keep the kernel's tiles aligned; at most 7 extra tokens, excluded by the sequence lengths.
CUDNN_SEQ_MULTIPLE = 8


def _pad_to(x, length: int):
  pad = length - x.shape[1]
  return x if pad == 0 else jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))


def _cudnn_attention(q, k, v, kv_lengths, kv_mask, scale):
  """cuDNN flash attention; key padding as lengths (valid keys first) or, slower, as a mask.

  Every query is computed (as in the other paths, so padded queries' outputs stay finite and
  equal to theirs). With ``kv_lengths`` the keys at positions >= length are excluded by the
  kernel's own padding mask: no bias is built and nothing is differentiated for it (a bias costs
  a ``dbias`` kernel in the backward). An arbitrary ``kv_mask`` becomes an additive bias of a
  shape the kernel takes, ``[B, 1, N, S]`` (it refuses the broadcast ``[B, 1, 1, S]``).
  Sequence lengths that are not a multiple of ``CUDNN_SEQ_MULTIPLE`` are padded here (the extra
  keys excluded, the extra queries sliced off).
  """
  b, n, _, _ = q.shape
  s = k.shape[1]
  n_pad = -(-n // CUDNN_SEQ_MULTIPLE) * CUDNN_SEQ_MULTIPLE
  s_pad = -(-s // CUDNN_SEQ_MULTIPLE) * CUDNN_SEQ_MULTIPLE
  q, k, v = _pad_to(q, n_pad), _pad_to(k, s_pad), _pad_to(v, s_pad)
  bias = q_lengths = None
  if kv_mask is not None:
    kv_mask = jnp.pad(kv_mask, ((0, 0), (0, s_pad - s)))
    bias = jnp.broadcast_to(jnp.where(kv_mask, 0.0, -1e9).astype(q.dtype)[:, None, None, :],
                            (b, 1, n_pad, s_pad))
  else:
    if kv_lengths is None and s_pad != s:
      kv_lengths = jnp.full((b,), s, jnp.int32)
    if kv_lengths is not None:
      kv_lengths = kv_lengths.astype(jnp.int32)
      q_lengths = jnp.full((b,), n_pad, jnp.int32)
  out = jax.nn.dot_product_attention(q, k, v, bias=bias, scale=scale,
                                      query_seq_lengths=q_lengths,
                                      key_value_seq_lengths=kv_lengths, implementation="cudnn")
  return out[:, :n]


def kv_valid_mask(kv_lengths, kv_mask, length: int, padded: int, batch: int) -> jax.Array:
  """``[batch, padded]`` bool: the keys attended to, given ``length`` real positions padded to
  ``padded`` and the key padding as ``kv_lengths`` or ``kv_mask`` (or neither)."""
  if kv_mask is not None:
    return jnp.pad(kv_mask.astype(bool), ((0, 0), (0, padded - length)))
  if kv_lengths is None:
    kv_lengths = jnp.full((batch,), length, jnp.int32)
  return lengths_to_mask(jnp.minimum(kv_lengths, length), padded)


def _flash_attention(q, k, v, kv_lengths, kv_mask, scale):
  """``tpu_attention.fused_attention`` for ``[B, N, H, d]`` inputs: head-major, scaled and padded
  to the kernel's block here, back after. ``SelfAttention`` calls the kernel in its own layout
  instead (no transposes, the scale applied on its projection's float32 accumulator); this path
  serves the probe's cross-attention and direct callers, and rounds ``q * scale`` to q's dtype
  once."""
  b, n, _, _ = q.shape
  s = k.shape[1]
  tpu_attention.check_supported(q.shape[-1], q.dtype)
  n_pad, s_pad = tpu_attention.padded_length(n), tpu_attention.padded_length(s)
  heads = lambda x, p: _pad_to(x, p).transpose(0, 2, 1, 3)
  q = (q.astype(jnp.float32) * scale).astype(q.dtype)
  out = tpu_attention.fused_attention(heads(q, n_pad), heads(k, s_pad), heads(v, s_pad),
                                      kv_valid_mask(kv_lengths, kv_mask, s, s_pad, b))
  return out.reshape(q.shape[0], n_pad, *q.shape[2:])[:, :n]


def dot_product_attention(q, k, v, kv_mask: Optional[jax.Array] = None, implementation: str = "xla",
                          kv_lengths: Optional[jax.Array] = None):
  """Multi-head attention core. q ``[B, N, H, d]``, k/v ``[B, S, H, d]``.

  Key padding, at most one of: ``kv_lengths`` ``[B]`` int, the number of valid keys of each row,
  which come FIRST (positions >= length are padding: the layout the fused kernels take, and the
  one the encoder and predictor use); or ``kv_mask`` ``[B, S]`` bool, any pattern (the probe's
  ``token_valid``; on cuDNN it becomes a ``[B, 1, N, S]`` additive bias, so prefer lengths).

  ``auto`` picks one of the others for the platform (``resolve_attention``, ``target_platform``).
  ``flash`` is the Pallas TPU kernel (``models.tpu_attention``; key padding as segment ids).
  ``xla``/``cudnn`` go through ``jax.nn.dot_product_attention`` (cuDNN's fused flash kernel on GPU
  with ``cudnn``; ``xla`` materialises the logits); ``chunked`` bounds the logits' memory on any
  backend (``chunked_attention``); ``einsum`` is the explicit softmax path of the reference, kept
  as the ground truth the tests compare against. Logits and softmax are float32 in every path, as
  under torch autocast.
  """
  if kv_mask is not None and kv_lengths is not None:
    raise ValueError("give key padding as kv_mask or as kv_lengths, not both")
  scale = q.shape[-1] ** -0.5
  implementation = resolve_attention(implementation, current_platform(), q.dtype, q.shape[-1])
  if implementation not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f"attention implementation must be one of {ATTENTION_IMPLEMENTATIONS}, "
                     f"got {implementation!r}")
  if implementation == "cudnn":
    return _cudnn_attention(q, k, v, kv_lengths, kv_mask, scale)
  if implementation == "flash":
    return _flash_attention(q, k, v, kv_lengths, kv_mask, scale)
  if kv_lengths is not None and implementation == "xla":
    return jax.nn.dot_product_attention(q, k, v, scale=scale,
                                        key_value_seq_lengths=kv_lengths.astype(jnp.int32),
                                        implementation="xla")
  if kv_lengths is not None:
    kv_mask = lengths_to_mask(kv_lengths, k.shape[1])
  if implementation == "einsum":
    return _einsum_attention(q, k, v, kv_mask, scale)
  if implementation == "chunked":
    return chunked_attention(q, k, v, kv_mask)
  mask = None if kv_mask is None else kv_mask[:, None, None, :]
  return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="xla")


class Mlp(nn.Module):
  hidden_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    out_dim = x.shape[-1]
    x = sharding.constrain(dense(self.hidden_dim, "fc1", self.dtype)(x), ("batch", "length",
                                                                           "mlp"))
    x = gelu(x)
    return dense(out_dim, "fc2", self.dtype)(x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _head_major_qkv(q_scale: float, x, kernel, bias):
  """``einsum_f32_grads("bnc,cthe->tbhne", x, kernel, bias)`` with q (``t = 0``) multiplied by
  ``q_scale`` on the float32 accumulator, before the one rounding to ``x``'s dtype. The weight
  itself is not scaled: a float32 product of the parameter made XLA all-gather float32 weights
  under FSDP (and all-reduce their gradients) where it gathers them cast to the compute dtype."""
  y = jnp.einsum("bnc,cthe->tbhne", x, kernel.astype(x.dtype), preferred_element_type=jnp.float32)
  return ((y + bias) * _qkv_scale(q_scale)[:, None, None, None, None]).astype(x.dtype)


def _qkv_scale(q_scale):
  """``[3]``: the factor of q, k and v (the ``t`` index of ``[3, B, H, N, d]``)."""
  return jnp.array([q_scale, 1.0, 1.0], jnp.float32)


def _head_major_qkv_fwd(q_scale, x, kernel, bias):
  return _head_major_qkv(q_scale, x, kernel, bias), (x, kernel, bias)


def _head_major_qkv_bwd(q_scale, res, g):
  # The scale goes onto the weight-sized terms, never onto g: a scaled copy of g is a new
  # activation-sized array (XLA:TPU relaid it out for the weight gradient; BENCHMARKS.md, "TPU
  # attention"). The input gradient's weight is scaled after its cast, so FSDP still gathers it in
  # the compute dtype.
  x, kernel, bias = res
  scale = _qkv_scale(q_scale)
  per_column = scale[None, :, None, None]  # kernel [D, 3, H, d]
  dx = jnp.einsum("tbhne,cthe->bnc", g, kernel.astype(x.dtype) * per_column.astype(x.dtype))
  dk = jnp.einsum("bnc,tbhne->cthe", x, g, preferred_element_type=jnp.float32) * per_column
  dk = sharding.constrain_weight_gradient(dk, axis=0)
  db = jnp.sum(g.astype(jnp.float32), axis=(1, 3), keepdims=True) * scale[:, None, None, None, None]
  return dx, dk.astype(kernel.dtype), db.astype(bias.dtype)


_head_major_qkv.defvjp(_head_major_qkv_fwd, _head_major_qkv_bwd)


class _HeadMajorQKV(nn.Module):
  """The ``qkv`` Dense (same parameters: ``kernel`` ``[D, 3D]``, ``bias`` ``[3D]``) computed as
  ``[3, B, H, N, d]``: the kernel viewed as ``[D, 3, H, d]`` (the reference's ``[q | k | v]``,
  head-major) lets the matmul write the layout the TPU kernel reads, instead of a ``[B, N, 3D]``
  output relaid out for it. ``q_scale`` multiplies q in float32 before its rounding to the
  compute dtype (the splash kernel takes no softmax scale)."""
  num_heads: int
  dtype: Dtype
  q_scale: float = 1.0

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    kernel = self.param("kernel", reference_trunc_normal(), (d, 3 * d), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (3 * d,), jnp.float32)
    h = self.num_heads
    out = _head_major_qkv(self.q_scale, x.astype(self.dtype), kernel.reshape(d, 3, h, d // h),
                          bias.reshape(3, 1, h, 1, d // h))
    return checkpoint_name(out, WEIGHT_MATMUL)


class _ProjParams(nn.Module):
  """The ``proj`` Dense's parameters (same names, shapes, init order) for a caller that applies
  them itself."""
  features: int

  @nn.compact
  def __call__(self):
    kernel = self.param("kernel", reference_trunc_normal(), (self.features, self.features),
                        jnp.float32)
    return kernel, self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)


class SelfAttention(nn.Module):
  num_heads: int
  dtype: Dtype = jnp.float32
  implementation: str = "xla"

  @nn.compact
  def __call__(self, x, key_padding=None, rope=None):
    """``key_padding``: None; ``[B]`` int valid-token counts with valid tokens first (the form
    fused kernels take: the encoder and predictor use it); or a ``[B, S]`` bool mask of any
    pattern (the probe's ``token_valid``). ``rope``: optional ``(cos, sin)`` tables
    (``models.rope.rope_tables``); q and k are rotated before the attention kernel, so every
    implementation sees already-positioned q/k."""
    d = x.shape[-1]
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by num_heads {self.num_heads}")
    as_lengths = key_padding is not None and key_padding.ndim == 1
    implementation = resolve_attention(self.implementation, current_platform(), self.dtype,
                                       d // self.num_heads)
    if implementation == "flash":
      return self._head_major(x, key_padding if as_lengths else None,
                              None if as_lengths else key_padding, rope)
    # The reference's qkv layout: [q | k | v], each head-major.
    qkv = sharding.constrain(dense(3 * d, "qkv", self.dtype)(x), ("batch", "length", "mlp"))
    q, k, v = einops.rearrange(qkv, "b n (qkv h d) -> qkv b n h d", qkv=3, h=self.num_heads)
    if rope is not None:
      q, k = rope_lib.apply_rope(q, rope), rope_lib.apply_rope(k, rope)
    out = dot_product_attention(q, k, v, None if as_lengths else key_padding,
                                self.implementation, key_padding if as_lengths else None)
    out = sharding.constrain(out, ("batch", "length", "heads", "kv"))
    return dense(d, "proj", self.dtype)(einops.rearrange(out, "b n h d -> b n (h d)"))

  def _head_major(self, x, kv_lengths, kv_mask, rope):
    """The TPU kernel's path, in its layout end to end: the tokens are padded to the kernel's
    block once (``[B, N, D]``, not q, k and v), q/k/v come out of the projection head-major
    (``_HeadMajorQKV``, q already scaled), RoPE rotates them there (its tables broadcast over
    heads either way; a rotation commutes with the scale), and the ``proj`` parameters project
    the kernel's ``[B, H, N, d]`` output inside ``fused_attention_projected``, whose VJP owns
    both (so the output is neither transposed for the projection nor kept twice)."""
    b, n, d = x.shape
    tpu_attention.check_supported(d // self.num_heads, self.dtype)
    n_pad = tpu_attention.padded_length(n)
    x = jnp.pad(x, ((0, 0), (0, n_pad - n), (0, 0)))
    q, k, v = _HeadMajorQKV(self.num_heads, self.dtype, (d // self.num_heads) ** -0.5,
                            name="qkv")(x)
    if rope is not None:
      # [B, N, 1, r] tables -> [B, 1, N_pad, r]: the head axis is 1, so this moves no data.
      rope = tuple(jnp.pad(t, ((0, 0), (0, n_pad - n), (0, 0), (0, 0))).swapaxes(1, 2)
                   for t in rope)
      q, k = rope_lib.apply_rope(q, rope), rope_lib.apply_rope(k, rope)
    valid = kv_valid_mask(kv_lengths, kv_mask, n, n_pad, b)
    kernel, bias = _ProjParams(d, name="proj")()
    out = tpu_attention.fused_attention_projected(q, k, v, valid, kernel, bias)
    return checkpoint_name(out, WEIGHT_MATMUL)[:, :n]


@dataclasses.dataclass(frozen=True)
class BlockConfig:
  """The settings every block of a stack shares; the encoder, the predictor and the probe each
  hold one and pass it down to their ``BlockStack``.

  ``dtype`` is the compute dtype (parameters stay float32); ``attention`` one of
  ``ATTENTION_IMPLEMENTATIONS`` (``dot_product_attention``); ``remat`` one of ``REMAT_POLICIES``;
  ``scan``: ``nn.scan`` over the blocks (compile time independent of depth). ``drop_path``:
  stochastic depth for fine-tuning, the rate of the LAST block of a stack (block ``i`` of ``n``
  drops at ``drop_path * i / (n - 1)``, timm's linear rule); active only when the module is
  applied with a ``"dropout"`` PRNG key (``rngs={"dropout": key}``), so inference and every
  caller that passes no such key are deterministic. At 0 the blocks are exactly as without it.
  """
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  attention: str = "xla"
  remat: str = "none"
  scan: bool = False
  drop_path: float = 0.0

  def replace(self, **changes) -> "BlockConfig":
    return dataclasses.replace(self, **changes)

  @classmethod
  def split(cls, kwargs: dict) -> tuple["BlockConfig", dict]:
    """``(BlockConfig of the block fields in kwargs, the other kwargs)``: what the flat-keyword
    factories (``build_encoder``, ``build_probe``) use."""
    names = {f.name for f in dataclasses.fields(cls)}
    block = cls(**{k: v for k, v in kwargs.items() if k in names})
    return block, {k: v for k, v in kwargs.items() if k not in names}


def drop_path(x, rate, key):
  """Stochastic depth on a residual branch ``x`` ``[B, ...]``: each example's branch is zeroed
  with probability ``rate`` and the kept ones scaled by ``1 / (1 - rate)`` (timm's ``drop_path``
  with ``scale_by_keep``), so its expectation is ``x``. ``rate`` may be traced (scanned blocks)."""
  keep = 1.0 - jnp.asarray(rate, jnp.float32)
  kept = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  scale = jnp.where(kept, 1.0 / jnp.maximum(keep, 1e-12), 0.0)
  return x * scale.astype(x.dtype)


def drop_path_rates(rate: float, depth: int) -> list:
  """Per-block stochastic-depth rates: linear from 0 (first block) to ``rate`` (last)."""
  if depth <= 1:
    return [float(rate)] * depth
  return [float(rate) * i / (depth - 1) for i in range(depth)]


# Logical axes of a block's input and output (``sharding.constrain``).
ACTIVATION = ("batch", "length", "embed")


class Block(nn.Module):
  """Pre-norm transformer block: x + Attn(LN(x)); x + MLP(LN(x)).

  ``key_padding`` ``[B]`` int: only the first ``key_padding[b]`` tokens of row b are attended to
  (the rest is padding, which still gets outputs); ``[B, S]`` bool: the True keys; None: all.
  ``drop_rate``: this block's stochastic-depth rate (``BlockConfig.drop_path``); used only when
  ``config.drop_path > 0`` and a ``"dropout"`` key was given to ``apply``.
  """
  config: BlockConfig
  ln_eps: float = LN_EPS  # the probes' blocks use torch's default 1e-5

  @nn.compact
  def __call__(self, x, key_padding=None, rope=None, drop_rate=0.0):
    c = self.config
    # Static: with drop_path 0 (pretraining, eval) the graph is the plain block's.
    stochastic = c.drop_path > 0 and self.has_rng("dropout")

    def branch(y):
      return drop_path(y, drop_rate, self.make_rng("dropout")) if stochastic else y

    x = sharding.constrain(x, ACTIVATION)  # FSDP: activations split over the batch, not features
    x = x + branch(SelfAttention(c.num_heads, c.dtype, c.attention, name="attn")(
        layer_norm("norm1", c.dtype, self.ln_eps)(x), key_padding, rope))
    x = sharding.constrain(x, ACTIVATION)
    hidden = int(x.shape[-1] * c.mlp_ratio)
    x = x + branch(Mlp(hidden, c.dtype, name="mlp")(layer_norm("norm2", c.dtype, self.ln_eps)(x)))
    return sharding.constrain(x, ACTIVATION)


# "dots" keeps every matmul output, the attention logits included (and, under ``chunked``
# attention, the logits of every chunk), which costs more memory than no remat at all;
# "dots_no_batch" keeps only the weight matmuls (no batch dimensions) and recomputes attention;
# "full" keeps block inputs only (each policy's memory: BENCHMARKS.md, "Per-device memory").
# The weight matmuls are ``Dense``'s custom_vjp, which the dot policies cannot see into; they are
# kept by name; without it both dot policies recomputed qkv, proj and fc1 in the backward, as
# "full" does (BENCHMARKS.md, "TPU, compiled ahead of time").
_KEEP_WEIGHT_MATMULS = jax.checkpoint_policies.save_only_these_names(WEIGHT_MATMUL)
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_saveable, _KEEP_WEIGHT_MATMULS),
    "dots_no_batch": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable, _KEEP_WEIGHT_MATMULS),
}


class _ScanBlock(nn.Module):
  """Adapter giving Block the (carry, x) -> (carry, y) signature of ``nn.scan``."""
  config: BlockConfig
  collect: bool
  ln_eps: float = LN_EPS

  @nn.compact
  def __call__(self, x, key_padding, rope, drop_rate):
    x = Block(self.config, self.ln_eps, name="block")(x, key_padding, rope, drop_rate)
    return x, (x if self.collect else None)


def is_scanned(path) -> bool:
  """Whether the parameter at ``path`` (a ``jax.tree_util`` key path) lives in a scanned
  ``BlockStack``, i.e. carries a leading depth axis: its path has ``blocks/block`` (the names
  ``BlockStack`` gives ``nn.scan`` and the scanned block)."""
  names = jax.tree_util.keystr(path, simple=True, separator="/").split("/")
  return any(a == "blocks" and b == "block" for a, b in zip(names, names[1:]))


class BlockStack(nn.Module):
  """``depth`` Blocks, optionally rematerialised and/or scanned.

  Unscanned, parameters are ``blocks_0 ... blocks_{depth-1}``; scanned (``nn.scan``, compile time
  independent of depth) they are one ``blocks/block`` subtree with a leading ``depth`` axis.
  ``jepa_jax.convert`` maps both layouts to the reference names.

  Returns the final activations and, when ``collect`` is given, the activations after each block
  in ``collect`` (0-based layer indices). ``rope``: the ``(cos, sin)`` tables of
  ``models.rope.rope_tables``, shared by every block (V-JEPA 2).
  """
  depth: int
  block: BlockConfig
  ln_eps: float = LN_EPS

  @nn.compact
  def __call__(self, x, key_padding=None, collect: tuple[int, ...] = (), rope=None):
    remat = self.block.remat
    if remat not in REMAT_POLICIES:
      raise ValueError(f"remat must be one of {tuple(REMAT_POLICIES)}, got {remat!r}")
    policy = REMAT_POLICIES[remat]
    if self.block.scan:
      cls = _ScanBlock
      if remat != "none":
        cls = nn.remat(cls, policy=policy, prevent_cse=False)
      # With drop path, the per-layer rates are scanned over and the dropout key is split per
      # layer; without it, the scan is the one pretraining always had.
      rates, rate_axis = 0.0, nn.broadcast
      if self.block.drop_path > 0:
        rates = jnp.asarray(drop_path_rates(self.block.drop_path, self.depth), jnp.float32)
        rate_axis = 0
      stack = nn.scan(cls, variable_axes={"params": 0},
                      split_rngs={"params": True, "dropout": True},
                      in_axes=(nn.broadcast, nn.broadcast, rate_axis), length=self.depth)
      x, ys = stack(self.block, bool(collect), self.ln_eps, name="blocks")(
          x, key_padding, rope, rates)
      return x, [ys[i] for i in collect]
    cls = Block if remat == "none" else nn.remat(Block, policy=policy)
    rates = drop_path_rates(self.block.drop_path, self.depth)
    outs = []
    for i in range(self.depth):
      x = cls(self.block, self.ln_eps, name=f"blocks_{i}")(x, key_padding, rope, rates[i])
      if i in collect:
        outs.append(x)
    return x, outs


def rescale_residual_projections(params, first_layer: int = 1):
  """Divide each block's ``attn/proj`` and ``mlp/fc2`` kernels by sqrt(2 * layer), layer 1-based.

  Works on any tree holding ``BlockStack`` parameters, unscanned (``blocks_i``) or scanned
  (``blocks/block`` with a leading depth axis). ``first_layer`` is the 1-based id of the first
  block (the probe's extra blocks start at 2, after its cross-attention block).
  """

  def visit(tree):
    if not isinstance(tree, dict):
      return tree
    out = {}
    for name, sub in tree.items():
      if name.startswith("blocks_") and name[7:].isdigit():
        out[name] = _scale_block(sub, 1.0 / math.sqrt(2.0 * (int(name[7:]) + first_layer)))
      elif name == "blocks" and isinstance(sub, dict) and "block" in sub:
        depth = jax.tree_util.tree_leaves(sub)[0].shape[0]
        ids = jnp.arange(first_layer, first_layer + depth, dtype=jnp.float32)
        out[name] = {"block": _scale_block(sub["block"], 1.0 / jnp.sqrt(2.0 * ids))}
      else:
        out[name] = visit(sub)
    return out

  return visit(_to_dict(params))


def _scale_block(block, factor):
  block = _to_dict(block)
  for path in (("attn", "proj"), ("mlp", "fc2")):
    leaf = block[path[0]][path[1]]
    f = jnp.asarray(factor, leaf["kernel"].dtype)
    f = f.reshape(f.shape + (1,) * (leaf["kernel"].ndim - f.ndim))
    block[path[0]][path[1]] = dict(leaf, kernel=leaf["kernel"] * f)
  return block


def _to_dict(tree):
  """A mutable nested-dict copy (works for FrozenDict and dict)."""
  if hasattr(tree, "items"):
    return {k: _to_dict(v) for k, v in tree.items()}
  return tree
