"""Helpers that build awkward video files, for the data tests and ``bench/data_throughput.py``.

``coded_frames`` draws each frame's index as a 3x3 grid of black/white blocks (9 bits) that
survives lossy coding, so a test can check exactly which source frames a decoder returned.
"""
from __future__ import annotations

import fractions
import os

import av
import numpy as np


def coded_frames(num: int, height: int = 48, width: int = 48) -> np.ndarray:
  """uint8 [num, H, W, 3]; frame i shows i (mod 512) in binary blocks; read back with read_code."""
  bh, bw = height // 3, width // 3
  out = np.zeros((num, height, width, 3), np.uint8)
  for i in range(num):
    for b in range(9):
      if (i >> b) & 1:
        r, c = divmod(b, 3)
        out[i, r * bh:(r + 1) * bh, c * bw:(c + 1) * bw] = 255
  return out


def read_code(frame: np.ndarray) -> int:
  """The index drawn by coded_frames into ``frame`` [H, W, C]."""
  h, w = frame.shape[:2]
  bh, bw = h // 3, w // 3
  bits = [int(frame[(b // 3) * bh + bh // 2, (b % 3) * bw + bw // 2, 0] > 127) for b in range(9)]
  return sum(bit << b for b, bit in enumerate(bits))


def write_frames(path: str, frames: np.ndarray, codec: str = "libx264", pix_fmt: str = "yuv420p",
                 fps: int = 30, pts_ms=None) -> str:
  """Encodes uint8 [N, H, W, 3] frames; ``pts_ms`` (ints) gives each frame's time: variable rate."""
  with av.open(path, "w") as out:
    stream = out.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
    ms = fractions.Fraction(1, 1000)
    if pts_ms is not None:
      stream.codec_context.time_base = ms
    for i, f in enumerate(frames):
      frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
      if pts_ms is not None:
        frame.pts, frame.time_base = int(pts_ms[i]), ms
      for pkt in stream.encode(frame):
        out.mux(pkt)
    for pkt in stream.encode():
      out.mux(pkt)
  return path


def make_bad_files(directory: str, good_video: str) -> dict:
  """Writes one file per kind of bad input into ``directory``; returns {kind: path}.

  Kinds: truncated (first third of a real mp4), random_bytes, text (a text file named .mp4),
  empty (zero bytes), three_frames (a valid 3-frame video: short), missing (a path not written),
  yuv444p_odd (valid, 4:4:4 chroma at 75x51), vfr (valid, irregular frame times), gray (valid,
  FFV1 gray in mkv).
  """
  os.makedirs(directory, exist_ok=True)
  p = lambda name: os.path.join(directory, name)  # noqa: E731
  rng = np.random.default_rng(0)
  with open(good_video, "rb") as f:
    data = f.read()
  with open(p("truncated.mp4"), "wb") as f:
    f.write(data[:len(data) // 3])
  with open(p("random_bytes.mp4"), "wb") as f:
    f.write(rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes())
  with open(p("text.mp4"), "w") as f:
    f.write("this is not a video\n" * 100)
  open(p("empty.mp4"), "wb").close()
  write_frames(p("three_frames.mp4"), coded_frames(3, 32, 32))
  write_frames(p("yuv444p_odd.mp4"), rng.integers(0, 256, (40, 51, 75, 3), dtype=np.uint8),
               pix_fmt="yuv444p")
  pts = np.concatenate([[0], np.cumsum(rng.integers(15, 60, 99))])
  write_frames(p("vfr.mp4"), coded_frames(100, 48, 48), pts_ms=pts)
  write_frames(p("gray.mkv"), coded_frames(80, 48, 48), codec="ffv1", pix_fmt="gray")
  return {
      "truncated": p("truncated.mp4"), "random_bytes": p("random_bytes.mp4"),
      "text": p("text.mp4"), "empty": p("empty.mp4"), "three_frames": p("three_frames.mp4"),
      "missing": p("missing.mp4"), "yuv444p_odd": p("yuv444p_odd.mp4"), "vfr": p("vfr.mp4"),
      "gray": p("gray.mkv"),
  }


def natural_texture(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
  """float32 [H, W, 3] in [0, 255]: random colour texture with a natural image's 1/f amplitude
  spectrum (power ~ 1/f^2), rolled off at high frequencies like a lens' blur, made in the
  Fourier domain."""
  fy = np.fft.fftfreq(height)[:, None]
  fx = np.fft.rfftfreq(width)[None, :]
  f = np.sqrt(fy ** 2 + fx ** 2)
  f[0, 0] = 1.0
  out = np.empty((height, width, 3), np.float32)
  base = None
  for c in range(3):
    spectrum = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f
    spectrum *= np.exp(-(f / 0.35) ** 2)
    spectrum[0, 0] = 0.0
    field = np.fft.irfft2(spectrum, s=(height, width))
    # Channels share most of their structure, as in real scenes (luminance edges).
    base = field if base is None else base
    field = 0.7 * base + 0.3 * field
    field = (field - field.mean()) / (field.std() + 1e-8)
    out[..., c] = 128.0 + 45.0 * field + 15.0 * (c - 1)
  return np.clip(out, 0, 255)


def write_footage(path: str, width: int, height: int, num_frames: int, fps: int = 30,
                  keyint: int = 250, bframes: int = 3, crf: int = 23, preset: str = "medium",
                  noise: float = 2.0,
                  seed: int = 0) -> str:
  """Camera-like H.264 test footage: a 1/f colour texture (``natural_texture``) seen through a
  panning, slowly zooming window, two textured objects moving across it, and per-frame Gaussian
  sensor noise (sigma ``noise``). libx264 at ``preset``, yuv420p, ``keyint`` frames between keyframes (x264's default is
  250), ``bframes`` B-frames, CRF ``crf``: the structure and bitrate of ordinary camera footage,
  which the flat synthetic set (``jepa_jax.data.synthetic``) lacks. Frame i is at i / fps."""
  rng = np.random.default_rng(seed)
  scene = natural_texture(2 * height, 2 * width, rng)
  objects = [(natural_texture(height // 3, width // 5, rng), rng.uniform(-3, 3, 2))
             for _ in range(2)]
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  with av.open(path, "w") as out:
    stream = out.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.options = {"crf": str(crf), "preset": preset,
                      "x264-params": f"keyint={keyint}:min-keyint={min(keyint, 25)}:"
                                     f"bframes={bframes}"}
    for i in range(num_frames):
      t = i / fps
      zoom = 1.0 + 0.15 * np.sin(0.3 * t)
      cy = 0.5 * height + 0.4 * height * np.sin(0.21 * t)
      cx = 0.5 * width + 0.45 * width * np.sin(0.13 * t + 1.0)
      sy = np.clip((yy - height / 2) / zoom + cy + height / 2, 0, 2 * height - 2)
      sx = np.clip((xx - width / 2) / zoom + cx + width / 2, 0, 2 * width - 2)
      y0, x0 = sy.astype(np.int32), sx.astype(np.int32)
      wy, wx = (sy - y0)[..., None], (sx - x0)[..., None]
      frame = ((1 - wy) * ((1 - wx) * scene[y0, x0] + wx * scene[y0, x0 + 1])
               + wy * ((1 - wx) * scene[y0 + 1, x0] + wx * scene[y0 + 1, x0 + 1]))
      for k, (tex, vel) in enumerate(objects):
        oh, ow = tex.shape[:2]
        oy = int((height * (0.2 + 0.5 * k) + vel[0] * i) % (height - oh))
        ox = int((width * 0.3 + 40 * vel[1] * t) % (width - ow))
        frame[oy:oy + oh, ox:ox + ow] = tex
      frame = frame + rng.normal(0.0, noise, frame.shape).astype(np.float32)
      image = av.VideoFrame.from_ndarray(np.clip(frame, 0, 255).astype(np.uint8), format="rgb24")
      for pkt in stream.encode(image):
        out.mux(pkt)
    for pkt in stream.encode():
      out.mux(pkt)
  return path
