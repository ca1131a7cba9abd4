"""Helpers that build awkward video files, for the data tests (and anyone debugging a reader).

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
