"""The V-JEPA video ViT encoder (context and target encoder share this module).

Clips are ``[B, T, H, W, C]`` (JAX layout). The reference's Conv3d with kernel = stride =
(tubelet, patch, patch) makes ``T' x H' x W'`` tokens in (t, h, w) order; here it is computed as
what it is, a reshape of the clip into tubelets and one matmul (``PatchEmbed``; GPUs run a 3D
convolution in a slow implicit-GEMM kernel), with the Conv's parameter names and shapes. Fixed 3D
sin-cos positions are added, and, when token indices are given, only those tokens are embedded
and go through the blocks (the context encoder's masking). There is no cls token. The final
LayerNorm is applied to the output and to every requested intermediate layer, as the reference
does for its ``out_layers``.
"""
import dataclasses
from typing import Any, Optional, Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jepa_jax.models import layers
from jepa_jax.models import pos_embed

# Reference sizes (src/models/vision_transformer.py). ViT-g uses MLP ratio 48/11 (hidden 6144).
VIT_SIZES = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0),
    "small": dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0),
    "base": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0),
    "large": dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16, mlp_ratio=4.0),
    "giant": dict(embed_dim=1408, depth=40, num_heads=16, mlp_ratio=48 / 11),
}


def size_spec(name: str) -> dict:
  """Width/depth/heads/MLP ratio of a named size; accepts ``large`` or the reference's ``vit_large``."""
  key = name[4:] if name.startswith("vit_") else name
  if key not in VIT_SIZES:
    raise ValueError(f"unknown model size {name!r}; choose one of {sorted(VIT_SIZES)} "
                     "(or set embed_dim/depth/num_heads explicitly)")
  return dict(VIT_SIZES[key])


def token_grid(img_size: int, num_frames: int, patch_size: int, tubelet_size: int):
  """(T', H', W') token grid, with a message that names the field to fix."""
  if img_size % patch_size:
    raise ValueError(f"crop/img size {img_size} is not divisible by patch_size {patch_size}")
  if num_frames % tubelet_size:
    raise ValueError(f"num_frames {num_frames} is not divisible by tubelet_size {tubelet_size}")
  return num_frames // tubelet_size, img_size // patch_size, img_size // patch_size


def gather_tokens(x: jax.Array, idx: jax.Array) -> jax.Array:
  """x ``[B, N, ...]``, idx ``[B, K]`` -> ``[B, K, ...]`` (the reference's ``apply_masks``)."""
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def valid_lengths(token_valid: Optional[jax.Array]) -> Optional[jax.Array]:
  """``[B, K]`` validity with valid entries FIRST -> ``[B]`` int32 counts (None passes through).

  The blocks take padding as lengths (``layers.dot_product_attention``), so a row's valid tokens
  must precede its padding, as ``jepa_jax.masks`` guarantees (its row contract). A concrete
  (non-traced) mask is checked; under jit the contract is the caller's.
  """
  if token_valid is None:
    return None
  try:
    valid = np.asarray(token_valid)
  except jax.errors.TracerArrayConversionError:  # traced under jit: nothing to check here
    valid = None
  if valid is not None:
    prefix = np.arange(valid.shape[1])[None, :] < valid.sum(axis=1)[:, None]
    if not np.array_equal(valid, prefix):
      raise ValueError("token_valid must put each row's valid tokens first and its padding last "
                       "(the row contract of jepa_jax.masks); reorder the indices")
  return jnp.sum(token_valid, axis=1, dtype=jnp.int32)


class PatchEmbed(nn.Module):
  """Tubelet embedding: ``[B, T, H, W, C]`` -> ``[B, N, D]`` as a reshape and one matmul.

  Parameters are those of ``nn.Conv`` with kernel = stride = (tubelet, patch, patch) (``kernel``
  ``[kt, p, p, C, D]``, ``bias`` ``[D]``), so checkpoints and ``jepa_jax.convert`` are unchanged;
  the matmul computes the same sums as the strided convolution. ``token_idx`` selects tokens
  before the matmul: only the kept tokens are embedded, and the backward needs no scatter.
  """
  embed_dim: int
  tubelet_size: int
  patch_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, clips, token_idx: Optional[jax.Array] = None):
    kt, p = self.tubelet_size, self.patch_size
    c = clips.shape[-1]
    kernel = self.param("kernel", layers.reference_trunc_normal(), (kt, p, p, c, self.embed_dim),
                        jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.embed_dim,), jnp.float32)
    patches = einops.rearrange(clips.astype(self.dtype),
                               "b (t kt) (h ph) (w pw) c -> b (t h w) (kt ph pw c)",
                               kt=kt, ph=p, pw=p)
    if token_idx is not None:
      patches = gather_tokens(patches, token_idx)
    w = kernel.reshape(-1, self.embed_dim).astype(self.dtype)
    return jnp.dot(patches, w) + bias.astype(self.dtype)


class VisionTransformer(nn.Module):
  """Video ViT encoder.

  Attributes:
    img_size, num_frames, patch_size, tubelet_size: the input the position table is built for.
    embed_dim, depth, num_heads, mlp_ratio: the transformer (see ``VIT_SIZES``).
    uniform_power: position table layout (True for every released V-JEPA model).
    dtype: compute dtype; parameters stay float32.
    attention: ``auto`` | ``xla`` | ``cudnn`` | ``chunked`` | ``einsum`` (``layers.dot_product_attention``).
    remat: ``none`` | ``full`` | ``dots`` | ``dots_no_batch`` block rematerialisation.
    scan: scan over blocks (``nn.scan``) to make compile time independent of depth.
  """
  img_size: int = 224
  num_frames: int = 16
  patch_size: int = 16
  tubelet_size: int = 2
  in_chans: int = 3
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  uniform_power: bool = True
  dtype: Any = jnp.float32
  attention: str = "xla"
  remat: str = "none"
  scan: bool = False

  @property
  def grid(self):
    return token_grid(self.img_size, self.num_frames, self.patch_size, self.tubelet_size)

  @property
  def num_tokens(self) -> int:
    t, h, w = self.grid
    return t * h * w

  def position_table(self) -> jax.Array:
    return jnp.asarray(pos_embed.sincos_3d(self.embed_dim, self.grid, self.uniform_power))

  def setup(self):
    self.patch_embed = PatchEmbed(self.embed_dim, self.tubelet_size, self.patch_size, self.dtype)
    self.stack = layers.BlockStack(self.depth, self.num_heads, self.mlp_ratio, self.dtype,
                                   self.attention, self.remat, self.scan)
    self.norm = layers.layer_norm("norm", self.dtype)

  def embed(self, clips, token_idx: Optional[jax.Array] = None):
    """``[B, T, H, W, C]`` pixels -> ``[B, N, D]`` position-embedded tokens, (t, h, w) order;
    with ``token_idx`` ``[B, K]`` only those tokens, ``[B, K, D]``."""
    b, t, h, w, _ = clips.shape
    if (t, h, w) != (self.num_frames, self.img_size, self.img_size):
      raise ValueError(f"encoder built for {self.num_frames}x{self.img_size}x{self.img_size} "
                       f"clips, got {t}x{h}x{w}; build the model with matching num_frames/img_size")
    x = self.patch_embed(clips, token_idx)
    pos = self.position_table().astype(self.dtype)
    return x + (pos[None] if token_idx is None else jnp.take(pos, token_idx, axis=0))

  def encode_tokens(self, x, token_valid=None, out_layers: Sequence[int] = ()):
    """Blocks + final LayerNorm on already embedded (and possibly gathered) tokens.

    ``token_valid`` ``[B, K]``: valid tokens first, padding last (``valid_lengths``)."""
    x, intermediate = self.stack(x, valid_lengths(token_valid), collect=tuple(out_layers))
    if out_layers:
      return [self.norm(y) for y in intermediate]
    return self.norm(x)

  def __call__(self, clips, token_idx: Optional[jax.Array] = None,
               token_valid: Optional[jax.Array] = None, out_layers: Sequence[int] = ()):
    """Encode clips.

    Args:
      clips: ``[B, T, H, W, C]`` normalised pixels.
      token_idx: optional ``[B, K]`` int token indices to keep (only these are embedded).
      token_valid: optional ``[B, K]`` bool, each row's valid tokens first (the row contract of
        ``jepa_jax.masks``); invalid (padding) tokens are never attended to.
      out_layers: if given, return ``[LN(x_l) for l in out_layers]`` (0-based) instead of LN(x_out).

    Returns:
      ``[B, K or N, embed_dim]`` in the compute dtype, or a list of them.
    """
    return self.encode_tokens(self.embed(clips, token_idx), token_valid, out_layers)


def build_encoder(model: str = "base", **overrides) -> VisionTransformer:
  """``build_encoder("large", img_size=224, num_frames=16, dtype=jnp.bfloat16)``."""
  spec = size_spec(model)
  spec.update(overrides)
  return VisionTransformer(**spec)


@dataclasses.dataclass(frozen=True)
class ParamCount:
  encoder: int
  predictor: int

  def __str__(self):
    return f"encoder {self.encoder / 1e6:.1f} M, predictor {self.predictor / 1e6:.1f} M"


def analytic_encoder_params(embed_dim, depth, mlp_ratio=4.0, patch_size=16, tubelet_size=2,
                            in_chans=3) -> int:
  """Closed-form trainable parameter count of the encoder (positions are fixed, not counted)."""
  d, hidden = embed_dim, int(embed_dim * mlp_ratio)
  patch = tubelet_size * patch_size * patch_size * in_chans * d + d
  block = (3 * d * d + 3 * d) + (d * d + d) + (d * hidden + hidden) + (hidden * d + d) + 4 * d
  return patch + depth * block + 2 * d
