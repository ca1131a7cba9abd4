"""Pixel normalisation on the device.

The host pipeline ships uint8 clips; they are normalised here, inside the jitted step. A uint8
clip is a quarter of the bytes of the same clip in float32 (half of bfloat16), so host->device
transfer and host memory for prefetch buffers shrink 4x: a 16x224x224x3 clip is 2.4 MB as uint8
versus 9.6 MB as float32. The arithmetic is the reference's ``(x / 255 - mean) / std`` with
ImageNet statistics, fused by XLA into the first layer's input.
"""
from __future__ import annotations

import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(clips_uint8, dtype=jnp.float32, mean=IMAGENET_MEAN, std=IMAGENET_STD):
  """uint8 [..., C] in 0..255 -> ``dtype`` normalised per channel (last axis).

  Computed in float32 and cast at the end, so bfloat16 output rounds only once.
  """
  x = jnp.asarray(clips_uint8).astype(jnp.float32)
  mean = jnp.asarray(mean, jnp.float32) * 255.0
  inv_std = 1.0 / (jnp.asarray(std, jnp.float32) * 255.0)
  return ((x - mean) * inv_std).astype(dtype)
