"""The one clip layout: every evaluation batch is uint8 ``[B, S, V, T, H, W, C]``.

``S`` clips (segments) per video, one per equal segment of it, each seen in ``V`` spatial views,
each ``T`` frames ``frame_step`` apart, ``H = W = size`` pixels. A program that looks at one clip
per video (fine-tuning's training step, extract, visualize) uses ``S = V = 1`` and the helpers
below, not indexing of its own; pretraining batches are single clips ``[B, T, H, W, C]``.
"""
import dataclasses

import einops


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """What is sampled from each video: ``segments`` x ``views`` clips of ``frames`` frames,
  ``frame_step`` apart, ``size`` x ``size`` pixels."""
  frames: int
  frame_step: int
  size: int
  segments: int = 1
  views: int = 1
  channels: int = 3

  @classmethod
  def of(cls, data_cfg, segments: int = 1, views: int = 1) -> "ClipSpec":
    """The clips of a ``config.data`` section (``num_frames``, ``frame_step``, ``crop_size``)."""
    return cls(frames=int(data_cfg.num_frames), frame_step=int(data_cfg.frame_step),
               size=int(data_cfg.crop_size), segments=int(segments), views=int(views))

  def shape(self, batch: int) -> tuple:
    return (batch, self.segments, self.views, self.frames, self.size, self.size, self.channels)


def flatten(video):
  """``[B, S, V, T, H, W, C]`` -> ``[B*S*V, T, H, W, C]`` (example-major, then segment, view)."""
  return einops.rearrange(video, "b s v t h w c -> (b s v) t h w c")


def unflatten(per_clip, batch: int, segments: int, views: int):
  """``flatten``'s inverse on per-clip outputs ``[B*S*V, ...]`` -> ``[B, S*V, ...]``."""
  return per_clip.reshape((batch, segments * views) + per_clip.shape[1:])


def single(video):
  """The one clip of each example: ``[B, 1, 1, T, H, W, C]`` -> ``[B, T, H, W, C]``."""
  if video.ndim != 7 or video.shape[1:3] != (1, 1):
    raise ValueError(f"expected one clip per example, [B, 1, 1, T, H, W, C]; got {video.shape}")
  return video[:, 0, 0]


def batch_of(clips):
  """Single clips ``[B, T, H, W, C]`` in the batch layout ``[B, 1, 1, T, H, W, C]``."""
  if clips.ndim != 5:
    raise ValueError(f"expected clips [B, T, H, W, C], got {clips.shape}")
  return clips[:, None, None]
