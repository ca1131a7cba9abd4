"""Sliding windows over a video (pure): which source frames each window covers and which its
clip shows (the package docstring's rules)."""
import dataclasses

import numpy as np

from jepa_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Window:
  start: int            # first source frame the window covers
  end: int              # one past the last source frame it covers, clipped to the video
  frames: tuple         # the source frames its clip shows (padding repeats the video's last)
  padded: int           # how many of ``frames`` are such repeats

  def to_json(self) -> dict:
    return dict(start=self.start, end=self.end, frames=list(self.frames), padded=self.padded)


def clip_offsets(window: int, num_frames: int) -> np.ndarray:
  """Frame offsets of a clip spread over ``window`` source frames (the reference's sampling)."""
  return np.minimum(np.floor(np.linspace(0, window, num_frames)).astype(np.int64), window - 1)


def window_plan(num_video_frames: int, num_frames: int, window: int, stride: int,
                last: str = "pad") -> list:
  """The windows of a ``num_video_frames``-frame video (the package docstring)."""
  if window < 1 or stride < 1:
    raise ConfigError(f"--window {window} and --stride {stride} must be positive")
  if last not in ("pad", "drop"):
    raise ConfigError(f"--last must be 'pad' or 'drop', got {last!r}")
  n = int(num_video_frames)
  offsets = clip_offsets(window, num_frames)
  starts = list(range(0, max(n - window, -1) + 1, stride)) if n >= window else []
  covered = starts[-1] + window if starts else 0
  if covered < n and last == "pad":
    nxt = starts[-1] + stride if starts else 0
    if nxt < n:
      starts.append(nxt)
  out = []
  for s in starts:
    idx = s + offsets
    out.append(Window(start=s, end=min(s + window, n), frames=tuple(int(i) for i in np.minimum(
        idx, n - 1)), padded=int(np.sum(idx > n - 1))))
  return out
