"""Transformer building blocks shared by the encoder, the predictor and the attentive probe.

Parameter names mirror the reference PyTorch modules (``norm1``, ``attn/qkv``, ``attn/proj``,
``norm2``, ``mlp/fc1``, ``mlp/fc2``) so that weight conversion is a mechanical transpose.
Parameters are float32; ``dtype`` is the compute dtype (bfloat16 for mixed precision).
"""
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jepa_jax.models import rope as rope_lib

Dtype = Any
LN_EPS = 1e-6  # the reference builds every LayerNorm with eps 1e-6 (``partial(nn.LayerNorm, eps=1e-6)``)
INIT_STD = 0.02

ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn", "einsum", "chunked")
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


def dense(features: int, name: str, dtype: Dtype, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=reference_trunc_normal(), bias_init=nn.initializers.zeros, name=name)


def layer_norm(name: str, dtype: Dtype, eps: float = LN_EPS) -> nn.LayerNorm:
  # Flax computes LayerNorm statistics in at least float32 even when ``dtype`` is bfloat16.
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32, name=name)


def _einsum_attention(q, k, v, kv_mask, scale):
  logits = jnp.einsum("bnhd,bshd->bhns", q, k, preferred_element_type=jnp.float32) * scale
  if kv_mask is not None:
    logits = jnp.where(kv_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhns,bshd->bnhd", weights, v)


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
  c = min(chunk_size or ATTENTION_CHUNK, n)
  pad = (-n) % c
  if pad:  # padded queries attend like any other and are dropped; no gradient flows to them
    q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
  chunks = q.reshape(b, (n + pad) // c, c, h, d).swapaxes(0, 1)

  @jax.checkpoint
  def attend(q_chunk):
    return _einsum_attention(q_chunk, k, v, kv_mask, scale)

  out = jax.lax.map(attend, chunks).swapaxes(0, 1).reshape(b, n + pad, h, d)
  return out[:, :n]


def resolve_attention(implementation: str, backend: str, dtype) -> str:
  """``auto`` -> the fastest exact path that bounds memory on ``backend``; others pass through.

  GPU: cuDNN's fused flash kernel (it takes bfloat16/float16 only; float32 falls back to ``xla``).
  TPU: ``chunked`` (XLA:TPU would materialise every [heads, N, N] logits buffer; a 384 px clip has
  N = 4608). CPU: ``xla``.
  """
  if implementation != "auto":
    return implementation
  if backend in ("gpu", "cuda") and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
    return "cudnn"
  if backend == "tpu":
    return "chunked"
  return "xla"


def dot_product_attention(q, k, v, kv_mask: Optional[jax.Array] = None, implementation: str = "xla"):
  """Multi-head attention core. q ``[B, N, H, d]``, k/v ``[B, S, H, d]``, kv_mask ``[B, S]`` bool.

  ``auto`` picks one of the others for the backend (``resolve_attention``). ``xla``/``cudnn`` go through ``jax.nn.dot_product_attention`` (cuDNN's fused flash kernel on
  GPU with ``cudnn``; ``xla`` materialises the logits); ``chunked`` bounds the logits' memory on
  any backend (``chunked_attention``); ``einsum`` is the explicit softmax path of the reference,
  kept as the ground truth the tests compare against. Logits and softmax are float32 in every
  path, as under torch autocast.
  """
  scale = q.shape[-1] ** -0.5
  implementation = resolve_attention(implementation, jax.default_backend(), q.dtype)
  if implementation == "einsum":
    return _einsum_attention(q, k, v, kv_mask, scale)
  if implementation == "chunked":
    return chunked_attention(q, k, v, kv_mask)
  if implementation not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f"attention implementation must be one of {ATTENTION_IMPLEMENTATIONS}, "
                     f"got {implementation!r}")
  mask = None if kv_mask is None else kv_mask[:, None, None, :]
  bias = None
  if implementation == "cudnn" and mask is not None:
    # cuDNN's fused kernel takes an additive bias rather than a boolean mask.
    bias = jnp.where(mask, 0.0, -1e9).astype(q.dtype)
    mask = None
  return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale,
                                      implementation=implementation)


class Mlp(nn.Module):
  hidden_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    out_dim = x.shape[-1]
    x = dense(self.hidden_dim, "fc1", self.dtype)(x)
    x = nn.gelu(x, approximate=False)  # torch.nn.GELU() is the exact erf form
    return dense(out_dim, "fc2", self.dtype)(x)


class SelfAttention(nn.Module):
  num_heads: int
  dtype: Dtype = jnp.float32
  implementation: str = "xla"

  @nn.compact
  def __call__(self, x, kv_mask=None, rope=None):
    """``rope``: optional ``(cos, sin)`` tables (``models.rope.rope_tables``); q and k are rotated
    before the attention kernel, so every implementation sees already-positioned q/k."""
    b, n, d = x.shape
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by num_heads {self.num_heads}")
    qkv = dense(3 * d, "qkv", self.dtype)(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
    q, k = qkv[:, :, 0], qkv[:, :, 1]
    if rope is not None:
      q, k = rope_lib.apply_rope(q, rope), rope_lib.apply_rope(k, rope)
    out = dot_product_attention(q, k, qkv[:, :, 2], kv_mask, self.implementation)
    return dense(d, "proj", self.dtype)(out.reshape(b, n, d))


class Block(nn.Module):
  """Pre-norm transformer block: x + Attn(LN(x)); x + MLP(LN(x))."""
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  attention: str = "xla"
  ln_eps: float = LN_EPS  # the probes' blocks use torch's default 1e-5

  @nn.compact
  def __call__(self, x, kv_mask=None, rope=None):
    x = x + SelfAttention(self.num_heads, self.dtype, self.attention, name="attn")(
        layer_norm("norm1", self.dtype, self.ln_eps)(x), kv_mask, rope)
    hidden = int(x.shape[-1] * self.mlp_ratio)
    return x + Mlp(hidden, self.dtype, name="mlp")(
        layer_norm("norm2", self.dtype, self.ln_eps)(x))


# "dots" keeps every matmul output, the attention logits included (and, under ``chunked``
# attention, the logits of every chunk): measured on ViT-L/16 at 48 clips per device, 354 GiB of
# temporaries against 188 GiB without remat. "dots_no_batch" keeps only the weight matmuls (no
# batch dimensions) and recomputes attention: 67 GiB; "full" keeps block inputs only: 22 GiB.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class _ScanBlock(nn.Module):
  """Adapter giving Block the (carry, x) -> (carry, y) signature of ``nn.scan``."""
  num_heads: int
  mlp_ratio: float
  dtype: Dtype
  attention: str
  collect: bool
  ln_eps: float = LN_EPS

  @nn.compact
  def __call__(self, x, kv_mask, rope):
    x = Block(self.num_heads, self.mlp_ratio, self.dtype, self.attention, self.ln_eps,
              name="block")(x, kv_mask, rope)
    return x, (x if self.collect else None)


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
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  attention: str = "xla"
  remat: str = "none"
  scan: bool = False
  ln_eps: float = LN_EPS

  @nn.compact
  def __call__(self, x, kv_mask=None, collect: tuple[int, ...] = (), rope=None):
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"remat must be one of {tuple(REMAT_POLICIES)}, got {self.remat!r}")
    policy = REMAT_POLICIES[self.remat]
    if self.scan:
      cls = _ScanBlock
      if self.remat != "none":
        cls = nn.remat(cls, policy=policy, prevent_cse=False)
      stack = nn.scan(cls, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=nn.broadcast, length=self.depth)
      x, ys = stack(self.num_heads, self.mlp_ratio, self.dtype, self.attention, bool(collect),
                    self.ln_eps, name="blocks")(x, kv_mask, rope)
      return x, [ys[i] for i in collect]
    cls = Block if self.remat == "none" else nn.remat(Block, policy=policy)
    outs = []
    for i in range(self.depth):
      x = cls(self.num_heads, self.mlp_ratio, self.dtype, self.attention, self.ln_eps,
              name=f"blocks_{i}")(x, kv_mask, rope)
      if i in collect:
        outs.append(x)
    return x, outs
