"""Spatial transforms on uint8 clips [T, H, W, C], on the host, in numpy + Pillow; randomness only
from the ``np.random.Generator`` grain hands each record, so runs are reproducible and resumable.

Train (the reference's ``app/vjepa/transforms.py``): one Inception-style random resized crop per
clip (area ~ U(scale), log-uniform aspect, 10 tries then a centre crop), resized to ``crop_size``,
then a horizontal flip with p = 0.5. Eval (``evals/video_classification_frozen/utils.py``): one
view = short side to ``int(crop_size * 256 / 224)``, centre crop; ``num_views > 1`` = short side to
``crop_size`` itself (the reference's multi-view transform has no 256/224 margin) and crops evenly
spaced along the long side (step ``(long - crop) // (num_views - 1)``).

Resizing is Pillow's bilinear per frame (several times faster than numpy): equal to torch's
``interpolate(bilinear, align_corners=False)`` when upscaling, antialiased when downscaling where
the reference is not, a deliberate small difference. Clips stay uint8 (``normalize.py``).
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image


def random_resized_crop_params(rng: np.random.Generator, height: int, width: int,
                               scale=(0.3, 1.0), ratio=(0.75, 1.35), tries: int = 10):
  """(top, left, h, w) of an Inception-style random crop, as the reference samples it."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(tries):
    target_area = rng.uniform(*scale) * area
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  # Fallback: the largest centred crop whose aspect ratio is within range.
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def resize_frames(clip: np.ndarray, out_h: int, out_w: int, box=None) -> np.ndarray:
  """Bilinear resize of every frame of uint8 [T, H, W, C] (optionally of a (top, left, h, w) box)."""
  t, h, w, c = clip.shape
  pil_box = None if box is None else (box[1], box[0], box[1] + box[3], box[0] + box[2])
  if box is None and (h, w) == (out_h, out_w):
    return clip
  out = np.empty((t, out_h, out_w, c), np.uint8)
  for i in range(t):
    img = Image.fromarray(np.ascontiguousarray(clip[i]))
    out[i] = np.asarray(img.resize((out_w, out_h), Image.BILINEAR, box=pil_box))
  return out


def train_transform(clip: np.ndarray, rng: np.random.Generator, crop_size: int,
                    scale=(0.3, 1.0), ratio=(0.75, 1.35), horizontal_flip: bool = True) -> np.ndarray:
  """Random resized crop (same on all frames) + optional flip: uint8 [T, crop, crop, C]."""
  _, h, w, _ = clip.shape
  box = random_resized_crop_params(rng, h, w, scale, ratio)
  out = resize_frames(clip, crop_size, crop_size, box=box)
  if horizontal_flip and rng.uniform() < 0.5:
    out = out[:, :, ::-1]
  return np.ascontiguousarray(out)


def short_side_resize(clip: np.ndarray, size: int) -> np.ndarray:
  """Resize so the short side is ``size`` (long side ``int(size * long / short)``)."""
  _, h, w, _ = clip.shape
  if h <= w:
    return resize_frames(clip, size, max(int(size * w / h), size))
  return resize_frames(clip, max(int(size * h / w), size), size)


def eval_views(clip: np.ndarray, crop_size: int, num_views: int = 1) -> np.ndarray:
  """Deterministic eval views: uint8 [num_views, T, crop, crop, C] (see module docstring)."""
  if num_views == 1:
    clip = short_side_resize(clip, int(crop_size * 256 / 224))
    _, h, w, _ = clip.shape
    top, left = (h - crop_size) // 2, (w - crop_size) // 2
    return np.ascontiguousarray(clip[None, :, top:top + crop_size, left:left + crop_size])
  clip = short_side_resize(clip, crop_size)
  _, h, w, _ = clip.shape
  step = (max(h, w) - crop_size) // (num_views - 1)
  views = []
  for i in range(num_views):
    s = i * step
    views.append(clip[:, s:s + crop_size, :crop_size] if h > w else clip[:, :crop_size, s:s + crop_size])
  return np.ascontiguousarray(np.stack(views))


def image_rgb(img: np.ndarray) -> np.ndarray:
  """uint8 ``[H, W, 3]`` of an image ``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]``."""
  if img.ndim == 2:
    img = img[..., None]
  return np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img


def eval_image(img: np.ndarray, crop_size: int) -> np.ndarray:
  """The eval view of one image, uint8 ``[crop, crop, 3]`` (a one-frame clip's ``eval_views``)."""
  return eval_views(image_rgb(img)[None], crop_size, 1)[0, 0]
