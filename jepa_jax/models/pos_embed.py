"""Fixed sin-cos position tables, computed exactly as the reference does (in float64, then cast).

The 3D table concatenates one 1D table per axis in the order [t, h, w] and cuts the result to the
model width. With ``uniform_power`` (all released V-JEPA models) each axis gets
``int(ceil(d / 6) * 2)`` dims, so the three axes carry equal power; otherwise h and w get d/4 and t
gets d/2. Token order is (t, h, w) row-major, index = t*H*W + h*W + w.
"""
import math

import numpy as np


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
  """MAE's 1D table: omega_i = 1 / 10000^(2i/dim); [sin(p*omega), cos(p*omega)]. -> [M, dim]."""
  if dim % 2:
    raise ValueError(f"sin-cos position width must be even, got {dim}")
  omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
  omega = 1.0 / 10000**omega
  out = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def axis_dims(embed_dim: int, uniform_power: bool) -> tuple[int, int, int]:
  """Widths given to the (t, h, w) axes before the concatenation is cut to ``embed_dim``."""
  if uniform_power:
    d = int(math.ceil(embed_dim / 6) * 2)
    return d, d, d
  return embed_dim // 2, embed_dim // 4, embed_dim // 4


def sincos_3d(embed_dim: int, grid: tuple[int, int, int], uniform_power: bool) -> np.ndarray:
  """Position table ``[T*H*W, embed_dim]`` (float32) for a (T, H, W) token grid."""
  t_size, h_size, w_size = grid
  t, h, w = np.meshgrid(np.arange(t_size), np.arange(h_size), np.arange(w_size), indexing="ij")
  dt, dh, dw = axis_dims(embed_dim, uniform_power)
  table = np.concatenate([sincos_1d(dt, t), sincos_1d(dh, h), sincos_1d(dw, w)], axis=1)
  return table[:, :embed_dim].astype(np.float32)
