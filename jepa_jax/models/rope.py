"""V-JEPA 2's 3D rotary position embedding (``src/models/utils/modules.py``: ``RoPEAttention``).

``rope_tables(token_idx, grid, head_dim, ...)`` and ``apply_rope`` rotate each head's q and k in
three slices of ``axis_width(head_dim)`` dims, [t, h, w] order, by the token's coordinate in the
full grid (the last ``head_dim - 3 * axis_width`` dims unrotated). Coordinates come from the
token index, so gathered context, padding and the predictor's [context, target] sequence rotate
by where a token sits in the clip. No position table is added when RoPE is on.

Reproduced on purpose: the layout the reference's own comment calls a bug kept for the released
weights (a slice's ``D / 2`` frequencies tiled while neighbouring dims are paired, so dim ``j``
turns by ``f_{j mod D/2}``); and angles computed in the q/k dtype, as under the reference's
autocast, so a bfloat16 forward rotates as its bfloat16 forward (up to ~0.06 rad off at the end of
64 frames). ``angle_tables`` are static numpy per grid axis; a forward only gathers rows.

V-JEPA 2.1 (``app/vjepa_2_1/models/utils/modules.py``): ``interleaved`` frequencies (dims ``2i,
2i+1`` share ``f_i``: the fix) and ``base_grid`` (``interpolate_rope``: rows and columns scaled by
``(base_grid - 1) / (size - 1)``, so every resolution spans the trained grid's angles; frames not).
"""
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

THETA = 10000.0


def axis_width(head_dim: int) -> int:
  """Dims of a head rotated per grid axis (the remainder of ``head_dim - 3 * width`` is not)."""
  return 2 * ((head_dim // 3) // 2)


def _rounder(dtype):
  """Rounds float32 values through ``dtype`` (the reference's op-by-op rounding in that dtype)."""
  name = jnp.dtype(dtype).name
  if name == "float32" or name == "float64":
    return lambda x: np.asarray(x, np.float32)
  target = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}.get(name)
  if target is None:
    raise ValueError(f"RoPE angles for compute dtype {name} are not defined; use float32, "
                     "bfloat16 or float16")
  return lambda x: np.asarray(x, np.float32).astype(target).astype(np.float32)


def base_grid_of(patch_size: int) -> int:
  """The grid V-JEPA 2.1's ``interpolate_rope`` scales rows/columns to: 256 px / 16 or 252 / 14."""
  grids = {16: 256 // 16, 14: 252 // 14}
  if patch_size not in grids:
    raise ValueError(f"interpolate_rope is defined for patch_size 14 or 16 (the reference's "
                     f"pretrained grids), got {patch_size}; set interpolate_rope=False")
  return grids[patch_size]


def _positions(length: int, base_grid: Optional[int]) -> np.ndarray:
  """float32 coordinates ``0 .. length-1``, scaled as the reference's ``interpolate_rope`` does in
  float32: ``(pos * (base_grid - 1)) / (length - 1)``."""
  pos = np.arange(length, dtype=np.float32)
  if base_grid is None:
    return pos
  if length < 2:
    raise ValueError(f"interpolate_rope needs at least 2 rows and columns of patches, got {length}")
  return (pos * np.float32(base_grid - 1)) / np.float32(length - 1)


@functools.lru_cache(maxsize=64)
def angle_tables(length: int, width: int, dtype_name: str = "float32", interleaved: bool = False,
                 base_grid: Optional[int] = None):
  """``(cos, sin)`` float32 ``[length, width]`` for coordinates ``0 .. length-1`` of one axis.

  Frequencies ``omega_i = 1 / 10000^(i / (width / 2))``, ``i < width / 2``, tiled twice along the
  last axis (V-JEPA 2's released layout) or, ``interleaved``, each repeated twice in place (V-JEPA
  2.1). ``base_grid``: coordinates scaled to span that many positions (V-JEPA 2.1's
  ``interpolate_rope``). Each step is rounded to ``dtype_name`` as the reference computes it in the
  q/k dtype: ``omega``, ``10000^omega``, its reciprocal, ``pos * omega``, sin and cos.
  """
  if width % 2:
    raise ValueError(f"RoPE axis width must be even, got {width}")
  r = _rounder(dtype_name)
  half = width // 2
  omega = r(r(np.arange(half, dtype=np.float32)) / np.float32(half))
  omega = r(np.float32(1.0) / r(np.power(np.float32(THETA), omega)))
  pos = r(_positions(length, base_grid))
  freq = r(pos[:, None] * omega[None, :])
  cos, sin = r(np.cos(freq)), r(np.sin(freq))
  if interleaved:
    return np.repeat(cos, 2, axis=1), np.repeat(sin, 2, axis=1)
  return np.concatenate([cos, cos], axis=1), np.concatenate([sin, sin], axis=1)


def token_coords(token_idx: jax.Array, grid: Sequence[int]):
  """Flat token indices (``t*H*W + h*W + w``) -> ``(t, h, w)`` coordinates of the same shape."""
  _, h_size, w_size = grid
  t = token_idx // (h_size * w_size)
  rest = token_idx - t * (h_size * w_size)
  h = rest // w_size
  return t, h, rest - h * w_size


def rope_tables(token_idx: Optional[jax.Array], grid: Sequence[int], head_dim: int,
                dtype=jnp.float32, num_tokens: Optional[int] = None, interleaved: bool = False,
                base_grid: Optional[int] = None):
  """``(cos, sin)`` ``[B or 1, N, 1, 3 * axis_width]`` in ``dtype`` for tokens at ``token_idx``.

  ``token_idx`` ``[B, N]`` int (None: every token of the grid in order, ``num_tokens`` of them).
  The head axis is 1 so the tables broadcast over heads of q/k ``[B, N, H, head_dim]``.
  ``interleaved`` / ``base_grid``: V-JEPA 2.1's layout and row/column scaling (``angle_tables``).
  """
  width = axis_width(head_dim)
  if width == 0:
    raise ValueError(f"head_dim {head_dim} is too small for 3D RoPE (needs at least 6)")
  if token_idx is None:
    n = int(np.prod(grid)) if num_tokens is None else num_tokens
    token_idx = jnp.arange(n, dtype=jnp.int32)[None]
  dtype_name = jnp.dtype(dtype).name
  cos_parts, sin_parts = [], []
  for axis, (coord, length) in enumerate(zip(token_coords(token_idx, grid), grid)):
    scale = None if axis == 0 else base_grid  # frames are never interpolated
    v21 = dict(interleaved=True) if interleaved else {}
    if scale is not None:
      v21["base_grid"] = scale
    cos, sin = angle_tables(int(length), width, dtype_name, **v21)
    cos_parts.append(jnp.take(jnp.asarray(cos, dtype), coord, axis=0))
    sin_parts.append(jnp.take(jnp.asarray(sin, dtype), coord, axis=0))
  cos = jnp.concatenate(cos_parts, axis=-1)[:, :, None, :]
  sin = jnp.concatenate(sin_parts, axis=-1)[:, :, None, :]
  return cos, sin


def apply_rope(x: jax.Array, tables) -> jax.Array:
  """Rotate q or k ``[B, N, H, head_dim]`` by ``rope_tables`` output (first ``3 * width`` dims)."""
  cos, sin = tables
  r = cos.shape[-1]
  rotated, rest = x[..., :r], x[..., r:]
  pairs = rotated.reshape(rotated.shape[:-1] + (r // 2, 2))
  # (x_{2i}, x_{2i+1}) -> (-x_{2i+1}, x_{2i}): the reference's neighbouring-pair rotation.
  swapped = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(rotated.shape)
  out = rotated * cos.astype(x.dtype) + swapped * sin.astype(x.dtype)
  if rest.shape[-1] == 0:
    return out
  return jnp.concatenate([out, rest], axis=-1)
