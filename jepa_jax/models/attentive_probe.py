"""The attentive probe of V-JEPA's frozen evaluation (``src/models/attentive_pooler.py``).

One learnable query cross-attends to the frozen tokens: q + XAttn(q, LN(tokens)), q + MLP(LN(q)),
then a linear classifier. Extra self-attention blocks (``depth > 1``) go where each reference puts
them (``blocks_on``): ``"query"`` after the cross-attention, on the query (V-JEPA's two-layer
probe); ``"tokens"`` before it, on every encoder token (V-JEPA 2's 4-block probe).

Kept on purpose: V-JEPA's ``CrossAttention`` creates an output projection (``xattn.proj``) that it
never applies, so its released probes carry an unused ``proj``; this module has none, and
``jepa_jax.convert`` drops it on import and writes zeros on export, which changes neither forward.
LayerNorms use torch's default eps 1e-5 as both references' probes (``PROBE_LN_EPS``; the encoders
pass 1e-6).
"""
from typing import Any, Optional

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from jepa_jax.models import layers

PROBE_LN_EPS = 1e-5  # torch.nn.LayerNorm's default, which the reference probes use


class CrossAttention(nn.Module):
  num_heads: int
  dtype: Any = jnp.float32
  attention: str = "xla"

  @nn.compact
  def __call__(self, q, x, kv_mask=None):
    d = q.shape[-1]
    h = self.num_heads
    q = einops.rearrange(layers.dense(d, "q", self.dtype)(q), "b n (h d) -> b n h d", h=h)
    k, v = einops.rearrange(layers.dense(2 * d, "kv", self.dtype)(x),
                            "b s (kv h d) -> kv b s h d", kv=2, h=h)
    out = layers.dot_product_attention(q, k, v, kv_mask, self.attention)
    return einops.rearrange(out, "b n h d -> b n (h d)")


class AttentiveClassifier(nn.Module):
  """``block``: heads, MLP ratio, compute dtype and attention kernel of the cross-attention
  block and of the extra blocks (``build_probe`` takes them as flat keywords)."""
  num_classes: int
  block: layers.BlockConfig
  depth: int = 1
  num_queries: int = 1
  blocks_on: str = "query"   # query (V-JEPA) | tokens (V-JEPA 2); see the module docstring

  @nn.compact
  def __call__(self, tokens, token_valid: Optional[jax.Array] = None):
    """tokens ``[B, N, D]`` -> logits ``[B, num_classes]`` (float32)."""
    if self.blocks_on not in ("query", "tokens"):
      raise ValueError(f"blocks_on must be 'query' or 'tokens', got {self.blocks_on!r}")
    b, _, d = tokens.shape
    c = self.block
    tokens = tokens.astype(c.dtype)
    if self.depth > 1 and self.blocks_on == "tokens":
      tokens, _ = layers.BlockStack(self.depth - 1, c, ln_eps=PROBE_LN_EPS, name="stack")(
          tokens, token_valid)
    query = self.param("query_tokens", layers.reference_trunc_normal(),
                       (1, self.num_queries, d), jnp.float32)
    q = jnp.broadcast_to(query.astype(c.dtype), (b, self.num_queries, d))
    q = q + CrossAttention(c.num_heads, c.dtype, c.attention, name="xattn")(
        q, layers.layer_norm("norm1", c.dtype, PROBE_LN_EPS)(tokens), token_valid)
    q = q + layers.Mlp(int(d * c.mlp_ratio), c.dtype, name="mlp")(
        layers.layer_norm("norm2", c.dtype, PROBE_LN_EPS)(q))
    if self.depth > 1 and self.blocks_on == "query":
      q, _ = layers.BlockStack(self.depth - 1, c, ln_eps=PROBE_LN_EPS, name="stack")(q)
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                      kernel_init=layers.reference_trunc_normal(), name="linear")(q[:, 0])
    return logits


def build_probe(num_classes: int, num_heads: int, **kwargs) -> AttentiveClassifier:
  """``build_probe(400, num_heads=16, depth=4, blocks_on="tokens", dtype=jnp.bfloat16)``: the
  probe with block settings (``layers.BlockConfig``'s fields) given as flat keywords."""
  block, rest = layers.BlockConfig.split(dict(kwargs, num_heads=num_heads))
  return AttentiveClassifier(num_classes=num_classes, block=block, **rest)
