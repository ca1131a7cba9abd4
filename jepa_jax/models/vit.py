"""The V-JEPA video ViT encoder (context and target encoder share this module).

Clips are ``[B, T, H, W, C]``. The reference's Conv3d with kernel = stride = (tubelet, patch,
patch) is computed as what it is, a reshape into tubelets and one matmul (``PatchEmbed``, with the
Conv's parameter names; GPUs run a 3D convolution in a slow implicit-GEMM kernel), giving ``T' x
H' x W'`` tokens in (t, h, w) order. Positions are fixed 3D sin-cos (V-JEPA) or RoPE in every block
(V-JEPA 2, ``use_rope``). Given token indices, only those tokens are embedded and run (the context
encoder). No cls token; the final LayerNorm applies to the output and to every requested
intermediate layer, as the reference's ``out_layers``.

V-JEPA 2.1 (``app/vjepa_2_1/models/vision_transformer.py``) is fields (``vjepa21_fields``):
``levels`` (one LayerNorm per level, ``norms_block_{k}``, the output the last level's;
``hierarchical=True`` returns the levels concatenated, the training output), ``rope_interleaved`` /
``interpolate_rope``,
``modality_embedding`` and ``image_frames`` (a tubelet-1 ``patch_embed_img`` for image clips); each
against its reference lines in docs/vjepa21.md.
"""
from typing import Any, Optional, Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jepa_jax import sharding
from jepa_jax.errors import ConfigError
from jepa_jax.models import layers
from jepa_jax.models import pos_embed
from jepa_jax.models import rope as rope_lib

# Reference sizes (src/models/vision_transformer.py of facebookresearch/jepa and /vjepa2).
# ViT-g uses MLP ratio 48/11 (hidden 6144). Two ViT-g exist: V-JEPA's ``vit_giant`` (16 heads of
# 88) and V-JEPA 2's ``vit_giant_xformers`` (22 heads of 64), the one its released ViT-g weights
# use; their parameters have the same shapes. ViT-G (``vit_gigantic[_xformers]``, 1664 wide, 48
# deep): the reference passes its MLP ratio 64/13 as ``mpl_ratio=``, a misspelt keyword its
# ``**kwargs`` swallows, so the modules it builds have the default ratio 4 (hidden 6656); these
# entries follow what the reference builds (``overrides={"mlp_ratio": 64 / 13}`` gives the
# intended hidden 8192).
VIT_SIZES = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0),
    "small": dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0),
    "base": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0),
    "large": dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16, mlp_ratio=4.0),
    "giant": dict(embed_dim=1408, depth=40, num_heads=16, mlp_ratio=48 / 11),
    "giant_xformers": dict(embed_dim=1408, depth=40, num_heads=22, mlp_ratio=48 / 11),
    "gigantic": dict(embed_dim=1664, depth=48, num_heads=16, mlp_ratio=4.0),
    "gigantic_xformers": dict(embed_dim=1664, depth=48, num_heads=26, mlp_ratio=4.0),
}
ROPE_SUFFIX = "_rope"  # the reference's ``vit_large_rope`` etc.: the size with use_rope=True


# V-JEPA 2.1's ``hierarchical_layers`` per encoder depth (vision_transformer.py:147-175); it builds
# no other depth.
VJEPA21_LEVELS = {12: (2, 5, 8, 11), 24: (5, 11, 17, 23), 40: (9, 19, 29, 39),
                  48: (11, 23, 37, 47)}


def vjepa21_fields(depth: int, levels: Optional[Sequence[int]] = None) -> dict:
  """The encoder fields that make a V-JEPA 2.1 encoder of ``depth`` blocks (its released and
  recipe settings: RoPE, interleaved and interpolated, modality embeddings, image patch embedding,
  four levels; ``levels`` chooses others, e.g. for a small test model)."""
  if levels is None and depth not in VJEPA21_LEVELS:
    raise ValueError(f"V-JEPA 2.1 defines its four output levels for depth 12, 24, 40 or 48, got "
                     f"depth={depth}; set levels=(...) explicitly")
  return dict(use_rope=True, rope_interleaved=True, interpolate_rope=True,
              modality_embedding=True, image_frames=1,
              levels=tuple(VJEPA21_LEVELS[depth] if levels is None else levels))


def size_spec(name: str) -> dict:
  """Width/depth/heads/MLP ratio of a named size; accepts ``large`` or the reference's
  ``vit_large``; a ``_rope`` suffix (``vit_giant_xformers_rope``) adds ``use_rope=True``."""
  key = name[4:] if name.startswith("vit_") else name
  extra = {}
  if key.endswith(ROPE_SUFFIX) and key[:-len(ROPE_SUFFIX)] in VIT_SIZES:
    key, extra = key[:-len(ROPE_SUFFIX)], {"use_rope": True}
  if key not in VIT_SIZES:
    raise ConfigError(f"unknown model size {name!r}; choose one of {sorted(VIT_SIZES)} "
                      "(or set embed_dim/depth/num_heads explicitly)")
  return dict(VIT_SIZES[key], **extra)


def image_hw(img_size) -> tuple[int, int]:
  """``img_size`` as ``(height, width)``: an int is a square."""
  if isinstance(img_size, (tuple, list)):
    if len(img_size) != 2:
      raise ValueError(f"img_size must be an int or (height, width), got {img_size!r}")
    return int(img_size[0]), int(img_size[1])
  return int(img_size), int(img_size)


def token_grid(img_size, num_frames: int, patch_size: int, tubelet_size: int,
               names=("img_size", "num_frames", "patch_size", "tubelet_size")):
  """(T', H', W') token grid of an int or (height, width) ``img_size``; the one check that patches
  and tubelets tile the clip. ``names``: what the caller calls the four arguments (the config
  layer passes ``config.data.crop_size`` etc.), so the message names the field to fix."""
  height, width = image_hw(img_size)
  img_name, frames_name, patch_name, tubelet_name = names
  for side in (height, width):
    if side % patch_size:
      raise ConfigError(f"{img_name}={side} is not divisible by {patch_name}={patch_size}; use "
                        "a multiple of the patch size")
  if num_frames % tubelet_size:
    raise ConfigError(f"{frames_name}={num_frames} is not divisible by {tubelet_name}="
                      f"{tubelet_size}; use a multiple of the tubelet size")
  return num_frames // tubelet_size, height // patch_size, width // patch_size


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
    x = layers.matmul_f32_grads(patches, kernel.reshape(-1, self.embed_dim), bias)
    return sharding.constrain(x, layers.ACTIVATION)


class VisionTransformer(nn.Module):
  """Video ViT encoder.

  Attributes:
    img_size, num_frames, patch_size, tubelet_size: the input the positions are built for;
      ``img_size`` is an int (square) or ``(height, width)`` (non-square needs ``use_rope``: the
      reference's sin-cos table assumes a square grid, its RoPE takes rows and columns apart).
    embed_dim, depth: width and number of blocks (see ``VIT_SIZES``).
    block: heads, MLP ratio, compute dtype (parameters stay float32; the patch embedding and
      the final LayerNorm compute in it too), attention kernel, remat and scan of the blocks
      (``layers.BlockConfig``).
    uniform_power: position table layout (True for every released V-JEPA model).
    use_rope: V-JEPA 2's 3D rotary positions in every block instead of the sin-cos table.
    rope_interleaved, interpolate_rope, modality_embedding, image_frames, levels: V-JEPA 2.1 (see
      the module docstring; all off = V-JEPA 2).

  ``build_encoder`` takes all of these as flat keywords (``num_heads=16, dtype=jnp.bfloat16``).
  """
  img_size: Any = 224
  num_frames: int = 16
  patch_size: int = 16
  tubelet_size: int = 2
  in_chans: int = 3
  embed_dim: int = 768
  depth: int = 12
  block: layers.BlockConfig = layers.BlockConfig(num_heads=12)
  uniform_power: bool = True
  use_rope: bool = False
  rope_interleaved: bool = False
  interpolate_rope: bool = False
  modality_embedding: bool = False
  image_frames: Optional[int] = None
  levels: tuple = ()

  @property
  def grid(self):
    return token_grid(self.img_size, self.num_frames, self.patch_size, self.tubelet_size)

  @property
  def rope_base_grid(self) -> Optional[int]:
    return rope_lib.base_grid_of(self.patch_size) if self.interpolate_rope else None

  def is_image(self, num_frames: int) -> bool:
    """Whether clips of ``num_frames`` frames take the image path (V-JEPA 2.1's
    ``check_temporal_dim``)."""
    return self.image_frames is not None and num_frames == self.image_frames

  def grid_of(self, num_frames: int):
    """Token grid of clips with ``num_frames`` frames: the built clip, or an image."""
    if self.is_image(num_frames):
      return token_grid(self.img_size, num_frames, self.patch_size, 1)
    return self.grid

  @property
  def num_tokens(self) -> int:
    t, h, w = self.grid
    return t * h * w

  def clip_shape(self, batch: int = 1) -> tuple:
    """``(B, T, H, W, C)`` of the clips this encoder takes."""
    height, width = image_hw(self.img_size)
    return (batch, self.num_frames, height, width, self.in_chans)

  def position_table(self) -> jax.Array:
    if self.use_rope:
      raise ValueError("a RoPE encoder has no position table (positions rotate q/k in each block)")
    _, h, w = self.grid
    if h != w:
      raise ValueError(f"non-square inputs ({h}x{w} patches) need use_rope=True: the reference's "
                       "sin-cos table is built for square grids only")
    return jnp.asarray(pos_embed.sincos_3d(self.embed_dim, self.grid, self.uniform_power))

  def rope_tables(self, token_idx: Optional[jax.Array] = None, grid=None):
    """RoPE ``(cos, sin)`` for tokens at ``token_idx`` ([B, K]; None = the whole grid)."""
    grid = self.grid if grid is None else grid
    return rope_lib.rope_tables(token_idx, grid, self.embed_dim // self.block.num_heads,
                                self.block.dtype, num_tokens=int(np.prod(grid)),
                                interleaved=self.rope_interleaved, base_grid=self.rope_base_grid)

  def setup(self):
    self.patch_embed = PatchEmbed(self.embed_dim, self.tubelet_size, self.patch_size,
                                  self.block.dtype)
    if self.image_frames is not None:
      self.patch_embed_img = PatchEmbed(self.embed_dim, 1, self.patch_size, self.block.dtype)
    if self.modality_embedding:
      init = nn.initializers.normal(1e-6)
      self.video_mod_embed = self.param("video_mod_embed", init, (1, 1, self.embed_dim),
                                        jnp.float32)
      self.img_mod_embed = self.param("img_mod_embed", init, (1, 1, self.embed_dim), jnp.float32)
    self.stack = layers.BlockStack(self.depth, self.block)
    if self.levels:
      if any(not 0 <= l < self.depth for l in self.levels) or self.levels[-1] != self.depth - 1:
        raise ValueError(f"levels {self.levels} must be block indices ending with the last block "
                         f"({self.depth - 1})")
      self.norms_block = [layers.layer_norm(f"norms_block_{k}", self.block.dtype)
                          for k in range(len(self.levels))]
    else:
      self.norm = layers.layer_norm("norm", self.block.dtype)

  def embed(self, clips, token_idx: Optional[jax.Array] = None):
    """``[B, T, H, W, C]`` pixels -> ``[B, N, D]`` tokens, (t, h, w) order, with the sin-cos
    positions added (RoPE encoders: no positions here, they are applied in the blocks); with
    ``token_idx`` ``[B, K]`` only those tokens, ``[B, K, D]``. With ``image_frames``, clips of
    that many frames are images: their own patch embedding and modality embedding."""
    _, t, h, w, _ = clips.shape
    _, want_t, want_h, want_w, _ = self.clip_shape()
    image = self.is_image(t)
    if (h, w) != (want_h, want_w) or (t != want_t and not image):
      raise ValueError(f"encoder built for {want_t}x{want_h}x{want_w} clips, got {t}x{h}x{w}; "
                       "build the model with matching num_frames/img_size")
    if image:
      x = self.patch_embed_img(clips, token_idx)
    else:
      x = self.patch_embed(clips, token_idx)
      if self.image_frames is not None and self.is_initializing():
        # Create the image embedding's parameters too (a video init never calls it).
        self.patch_embed_img(clips[:, :self.image_frames])
    if self.modality_embedding:
      x = x + (self.img_mod_embed if image else self.video_mod_embed).astype(x.dtype)
    if self.use_rope:
      return x
    pos = self.position_table().astype(self.block.dtype)
    return x + (pos[None] if token_idx is None else jnp.take(pos, token_idx, axis=0))

  def _level_norm(self, layer: int):
    if layer not in self.levels:
      raise ValueError(f"out_layers {layer} is not one of this encoder's levels {self.levels} "
                       "(V-JEPA 2.1 has a LayerNorm for those only)")
    return self.norms_block[self.levels.index(layer)]

  def encode_tokens(self, x, token_valid=None, out_layers: Sequence[int] = (),
                    token_idx: Optional[jax.Array] = None, hierarchical: bool = False,
                    grid=None):
    """Blocks + final LayerNorm on already embedded (and possibly gathered) tokens.

    ``token_valid`` ``[B, K]``: valid tokens first, padding last (``valid_lengths``).
    ``token_idx``: the tokens' indices in the full grid (RoPE encoders rotate by them; None means
    ``x`` holds every token in order). ``grid``: the token grid (default: the clip's)."""
    grid = self.grid if grid is None else tuple(grid)
    rope = None
    if self.use_rope:
      if token_idx is None and x.shape[1] != int(np.prod(grid)):
        raise ValueError(f"{x.shape[1]} gathered tokens without their token_idx: a RoPE encoder "
                         "needs each token's grid index")
      rope = self.rope_tables(token_idx, grid)
    if hierarchical and not self.levels:
      raise ValueError("hierarchical outputs need an encoder with levels (V-JEPA 2.1)")
    collect = tuple(self.levels) if hierarchical else tuple(out_layers)
    x, intermediate = self.stack(x, valid_lengths(token_valid), collect=collect, rope=rope)
    if hierarchical:
      return jnp.concatenate([n(y) for n, y in zip(self.norms_block, intermediate)], axis=-1)
    if self.levels:
      if self.is_initializing():  # every level's LayerNorm exists whatever the init call asks for
        for norm in self.norms_block:
          norm(x)
      if out_layers:
        return [self._level_norm(l)(y) for l, y in zip(out_layers, intermediate)]
      return self.norms_block[-1](x)
    if out_layers:
      return [self.norm(y) for y in intermediate]
    return self.norm(x)

  def __call__(self, clips, token_idx: Optional[jax.Array] = None,
               token_valid: Optional[jax.Array] = None, out_layers: Sequence[int] = (),
               hierarchical: bool = False):
    """Encode clips.

    Args:
      clips: ``[B, T, H, W, C]`` normalised pixels.
      token_idx: optional ``[B, K]`` int token indices to keep (only these are embedded).
      token_valid: optional ``[B, K]`` bool, each row's valid tokens first (the row contract of
        ``jepa_jax.masks``); invalid (padding) tokens are never attended to.
      out_layers: if given, return ``[LN(x_l) for l in out_layers]`` (0-based) instead of LN(x_out).
      hierarchical: (encoders with ``levels``) return every level, each through its own
        LayerNorm, concatenated: ``[B, K or N, embed_dim * len(levels)]``.

    Returns:
      ``[B, K or N, embed_dim]`` in the compute dtype, or a list of them.
    """
    grid = self.grid_of(clips.shape[1])
    return self.encode_tokens(self.embed(clips, token_idx), token_valid, out_layers, token_idx,
                              hierarchical, grid)


def build_encoder(model: str = "base", **overrides) -> VisionTransformer:
  """``build_encoder("large", img_size=224, num_frames=16, dtype=jnp.bfloat16)``: the named size
  with ``overrides`` on top, block settings (``layers.BlockConfig``'s fields) included."""
  block, rest = layers.BlockConfig.split(dict(size_spec(model), **overrides))
  return VisionTransformer(block=block, **rest)


def analytic_encoder_params(embed_dim, depth, mlp_ratio=4.0, patch_size=16, tubelet_size=2,
                            in_chans=3) -> int:
  """Closed-form trainable parameter count of the encoder (positions are fixed, not counted)."""
  d, hidden = embed_dim, int(embed_dim * mlp_ratio)
  patch = tubelet_size * patch_size * patch_size * in_chans * d + d
  block = (3 * d * d + 3 * d) + (d * d + d) + (d * hidden + hidden) + (hidden * d + d) + 4 * d
  return patch + depth * block + 2 * d
