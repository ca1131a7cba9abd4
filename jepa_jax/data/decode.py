"""Clip sampling and PyAV decoding: only the frames a clip needs, as uint8 RGB.

Sampling (``clip_frame_indices``) follows the reference's ``src/datasets/video_dataset.py``: the
video is split into ``num_clips`` equal segments, one clip each, of ``num_frames`` indices
``floor(linspace(start, start + num_frames * frame_step, num_frames))`` clipped to the span (16 x
4: stride 64/15, not 4, as the released models were trained); ``start`` uniform with ``rng``
(train), else the segment's centre (eval: deterministic, where the reference samples at random).
A segment shorter than a clip: ``short_policy='pad'`` spreads ``segment_len // frame_step``
indices and repeats the last frame (the reference's padding), ``'skip'`` raises
``VideoReadError('too_short')``; ``allow_segment_overlap`` (the reference eval's default) spaces
the clips evenly over a video that holds one clip but not one per segment. V-JEPA 2's fixed frame
rate: step ``ceil(video_fps) // fps`` (``fps_frame_step``), 1 for a slow video where the reference
asserts.

Decoding (``read_video_clips``) is by time: index ``i`` is the frame shown at ``start_time + i /
average fps`` (exact at constant frame rate, a fixed-duration stride otherwise). Each clip seeks to
the keyframe before it, stops after its last frame and skips non-reference frames no clip shows
(``skip_frame=NONREF``, with a plain-decode fallback where timestamps make that unsafe:
``_decode_span``); only kept frames are converted to rgb24, each copied once.
"""
from __future__ import annotations

import math
import os

import av
import numpy as np

from jepa_jax.errors import ConfigError, UserError

SHORT_POLICIES = ("pad", "skip")


class VideoReadError(UserError):
  """A sample that cannot be used, with a short machine-readable ``reason``. The pipelines
  count and skip these; a tool that reads one named file reports it as the user's data."""
  label = "Data error"

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason
    self.detail = detail


def read_image(path: str) -> np.ndarray:
  """uint8 ``[H, W, 3]`` of an image file (any format Pillow reads; grey, palette and alpha images
  become RGB, as the reference's image loader's ``convert("RGB")``)."""
  from PIL import Image  # noqa: PLC0415
  if not os.path.exists(path):
    raise VideoReadError("missing", "file not found")
  try:
    with Image.open(path) as img:
      return np.asarray(img.convert("RGB"))
  except Exception as e:  # noqa: BLE001 -- Pillow raises many error types for bad files
    raise VideoReadError("decode_error", f"{type(e).__name__}: {e}") from None


def clip_frame_indices(
    num_video_frames: int,
    num_frames: int,
    frame_step: int,
    num_clips: int = 1,
    rng: np.random.Generator | None = None,
    short_policy: str = "pad",
    allow_segment_overlap: bool = False,
) -> np.ndarray:
  """Frame indices int64 [num_clips, num_frames] for a video of ``num_video_frames`` frames.

  ``rng`` None means eval (segment centres); see the module docstring for the rules.
  """
  if short_policy not in SHORT_POLICIES:
    raise ConfigError(f"short_policy must be one of {SHORT_POLICIES}, got {short_policy!r}")
  n = int(num_video_frames)
  if n <= 0:
    raise VideoReadError("no_frames", "video has no frames")
  clip_len = num_frames * frame_step
  if short_policy == "skip" and n < clip_len:
    raise VideoReadError("too_short", f"{n} frames < one clip of {num_frames}x{frame_step}")
  seg_len = n // num_clips
  clips = []
  if seg_len <= clip_len and allow_segment_overlap and n >= clip_len and num_clips > 1:
    starts = np.linspace(0, n - clip_len, num_clips)
    if rng is None:
      starts = np.round(starts)
    else:  # jitter each start within its share of the free range
      spacing = (n - clip_len) / num_clips
      starts = np.floor(starts * (num_clips - 1) / num_clips + rng.uniform(0, spacing, num_clips))
    for s in starts.astype(np.int64):
      clips.append(_span(s, clip_len, num_frames))
    return np.clip(np.stack(clips), 0, n - 1)
  for i in range(num_clips):
    offset = i * seg_len
    if seg_len > clip_len:
      free = seg_len - clip_len
      start = int(rng.integers(0, free)) if rng is not None else free // 2
      idx = _span(start, clip_len, num_frames)
    else:
      # The reference's padding: spread seg_len // frame_step indices over the segment and
      # repeat its last frame for the rest of the clip.
      m = seg_len // frame_step
      idx = np.concatenate([np.linspace(0, seg_len, num=m), np.full(num_frames - m, seg_len)])
      idx = np.clip(idx, 0, max(seg_len - 1, 0)).astype(np.int64)
    clips.append(idx + offset)
  return np.clip(np.stack(clips), 0, n - 1)


def fps_frame_step(video_fps: float, fps: float) -> int:
  """Frame step that samples a ``video_fps`` video at ``fps``: the reference's
  ``ceil(video_fps) // fps``, at least 1."""
  if video_fps <= 0:
    raise VideoReadError("no_frame_rate", "sampling at a fixed fps needs the video's frame rate")
  return max(1, int(math.ceil(video_fps) // fps))


def _span(start: int, clip_len: int, num_frames: int) -> np.ndarray:
  idx = np.linspace(start, start + clip_len, num=num_frames)
  return np.clip(idx, start, start + clip_len - 1).astype(np.int64)


def probe(container) -> tuple:
  """(video stream, estimated frame count, fps, start time in s) of an open container."""
  if not container.streams.video:
    raise VideoReadError("no_video_stream", "container has no video stream")
  stream = container.streams.video[0]
  rate = stream.average_rate or stream.guessed_rate or stream.base_rate
  fps = float(rate) if rate else 0.0
  tb = float(stream.time_base) if stream.time_base else 0.0
  start = stream.start_time * tb if stream.start_time is not None and tb else 0.0
  n = int(stream.frames or 0)
  if n <= 0 and fps > 0:
    if stream.duration is not None and tb:
      duration = stream.duration * tb
    elif container.duration is not None:
      duration = container.duration / av.time_base
    else:
      duration = 0.0
    n = int(round(duration * fps))
  return stream, n, fps, start


def _decode_all(container, stream) -> list:
  """Every frame, still in the decoder's pixel format (only the ones a clip takes are converted)."""
  frames = list(container.decode(stream))
  if not frames:
    raise VideoReadError("no_frames", "no decodable frames")
  return frames


class _Clips:
  """The one array a read returns, uint8 [num_clips, num_frames, H, W, 3].

  Allocated when the first frame is converted (its size is the frame's); each frame libswscale
  converts to rgb24 is copied once, into its slot, and a frame taken for several slots is
  copied from the first. Stacking per-frame arrays per clip and then the clips instead copied
  every clip twice more, into fresh allocations each time (page faults on the whole clip).
  """

  def __init__(self, num_clips: int, num_frames: int):
    self.shape = (num_clips, num_frames)
    self.array = None

  def put(self, c: int, k: int, frame) -> None:
    rgb = frame.to_ndarray(format="rgb24")  # a view of libswscale's output frame
    if self.array is None:
      self.array = np.empty(self.shape + rgb.shape, np.uint8)
    elif rgb.shape != self.array.shape[2:]:
      raise VideoReadError("decode_error", f"frame size changes from {self.array.shape[2:4]} to "
                           f"{rgb.shape[:2]} within the video")
    self.array[c, k] = rgb

  def copy(self, c: int, src: int, dst: int) -> None:
    self.array[c, dst] = self.array[c, src]


class _InexactSkip(Exception):
  """A frame skipped as unneeded turned out to be the one shown at a clip time: decode again."""


def _decode_clip(container, stream, times, fps, first_clip, dst, skip_unneeded: bool = True):
  """Decodes the frames shown at ``times`` (seconds, ascending) into ``dst`` (a ``(_Clips, clip
  number)`` pair); pads with the last frame.

  Exact in any case: the result is the frames a full decode from the start would show at
  ``times``. See ``_decode_span`` for what is skipped and how that is checked.
  """
  if skip_unneeded:
    try:
      return _decode_span(container, stream, times, fps, first_clip, dst, skip_unneeded=True)
    except _InexactSkip:
      first_clip = False  # the container has moved on: seek back
  return _decode_span(container, stream, times, fps, first_clip, dst, skip_unneeded=False)


def _decode_span(container, stream, times, fps, first_clip, dst=None, skip_unneeded=True):
  """Seek to the keyframe before ``times[0]``, decode forward to the frame shown at ``times[-1]``.

  With ``skip_unneeded``, packets whose frames cannot be shown at any of ``times`` (more than two
  frame durations before a clip time, or after it) are decoded with libavcodec's
  ``skip_frame=NONREF``: the decoder drops them if no other frame references them (B-frames
  between the keyframe and the clip, and between the clip's strided frames), which is most of
  the work in long GOPs. No later frame depends on a dropped one, so every other frame decodes
  exactly as in a full decode. A frame is on screen at time t when it is the last one with
  ``pts <= t``; if a dropped packet's pts lies between the frame taken for some t and t itself
  (possible with irregular timestamps), ``_InexactSkip`` is raised and the caller decodes the
  clip again without skipping.

  Writes the frames into ``dst`` = ``(clips, c)``: slots ``clips.array[c, :len(times)]`` of a
  ``_Clips`` (a fresh one-clip ``_Clips`` when None); returns that clip's array.
  """
  clips, c = dst if dst is not None else (_Clips(1, len(times)), 0)
  tb = float(stream.time_base)
  # A fresh container already sits at the start; otherwise seek to the keyframe before.
  if not (first_clip and times[0] < 1.0):
    container.seek(max(int(times[0] / tb), 0), stream=stream, backward=True, any_frame=False)
  # Tolerance for pts rounded to the time base (e.g. 1/1000 s in mkv): a frame up to 2 ticks
  # after the target still counts as shown at it; never more than a quarter frame.
  eps = min(0.25 / fps, 2 * tb + 1e-6)
  margin = 2.0 / fps
  codec = stream.codec_context
  skipped = []  # pts (s) of packets decoded with NONREF: their frames may have been dropped
  chosen = []   # pts of the frame taken for each time; its length is the number of slots filled
  prev = prev_slot = None  # the previous frame, and the slot it was converted into (if any)
  count = 0

  def take(frame, slot):
    """Fill the next slot with ``frame``; returns the slot that holds its pixels."""
    k = len(chosen)
    if slot is None:
      clips.put(c, k, frame)
      return k
    clips.copy(c, slot, k)
    return slot

  def needed(t):
    k = np.searchsorted(times, t - eps)  # the first clip time at or after t (within eps)
    return k < len(times) and times[k] - t < margin

  try:
    for packet in container.demux(stream):
      if skip_unneeded:
        pts = None if packet.pts is None else packet.pts * tb
        skip = pts is not None and packet.size > 0 and not needed(pts)
        codec.skip_frame = "NONREF" if skip else "DEFAULT"
        if skip:
          skipped.append(pts)
      for frame in codec.decode(packet):
        t = frame.time if frame.time is not None else count / fps
        count += 1
        cur_slot = None
        while len(chosen) < len(times) and t > times[len(chosen)] + eps:
          # times[k] lies before this frame: the frame on screen then is the previous one (or
          # this one, if the seek landed after the target).
          if prev is None:
            cur_slot = take(frame, cur_slot)
            chosen.append(None)
          else:
            prev_slot = take(prev, prev_slot)
            chosen.append(prev_t)
        if len(chosen) == len(times):
          break
        prev, prev_t, prev_slot = frame, t, cur_slot
      if len(chosen) == len(times):
        break  # stop after the last needed frame
  finally:
    codec.skip_frame = "DEFAULT"
  if len(chosen) < len(times):
    # End of stream before the last target time: pad with the last frame, like the reference.
    if prev is None:
      raise VideoReadError("no_frames", "no decodable frames")
    while len(chosen) < len(times):
      prev_slot = take(prev, prev_slot)
      chosen.append(prev_t)
  if skipped:
    _check_nothing_needed_was_dropped(skipped, chosen, times, eps, tb)
  return clips.array[c]


def _check_nothing_needed_was_dropped(skipped, chosen, times, eps, tb):
  """Raise ``_InexactSkip`` if a skipped packet could be the frame on screen at some time."""
  skipped = np.sort(np.asarray(skipped))
  for c, t in zip(chosen, times):
    lo = -np.inf if c is None else c + 0.5 * tb  # strictly after the chosen frame
    i = np.searchsorted(skipped, lo)
    if i < len(skipped) and skipped[i] <= t + eps:
      raise _InexactSkip()


def open_video(path: str):
  """The open PyAV container of a video file; ``VideoReadError`` (``missing``, ``empty_file``,
  ``open_error``) when there is none to open."""
  if not os.path.exists(path):
    raise VideoReadError("missing", "file not found")
  if os.path.getsize(path) == 0:
    raise VideoReadError("empty_file", "zero bytes")
  try:
    return av.open(path, metadata_errors="ignore")
  except Exception as e:  # noqa: BLE001 -- PyAV raises many error types for bad files
    raise VideoReadError("open_error", f"{type(e).__name__}: {e}") from None


def read_frames(path: str, wanted) -> tuple[dict, int]:
  """``({index: uint8 [H, W, 3]} for the indices where wanted(index), decoded frame count)``:
  the whole video decoded once in order (for sliding windows over all of it, where the frame
  count is needed and seeking would not pay), keeping the frames asked for and the last one (for
  padding). ``VideoReadError`` with the reasons of ``read_video_clips``."""
  container = open_video(path)
  kept, last, n = {}, None, 0
  try:
    stream, _, _, _ = probe(container)
    for frame in container.decode(stream):
      last = frame
      if wanted(n):
        kept[n] = frame.to_ndarray(format="rgb24")
      n += 1
  except VideoReadError:
    raise
  except Exception as e:  # noqa: BLE001 -- PyAV raises many error types for corrupt files
    raise VideoReadError("decode_error", f"{type(e).__name__}: {e}") from None
  finally:
    container.close()
  if n == 0:
    raise VideoReadError("no_frames", "no decodable frames")
  if n - 1 not in kept:
    kept[n - 1] = last.to_ndarray(format="rgb24")
  return kept, n


def read_video_clips(
    path: str,
    num_frames: int,
    frame_step: int,
    num_clips: int = 1,
    rng: np.random.Generator | None = None,
    short_policy: str = "pad",
    allow_segment_overlap: bool = False,
    threads: int = 1,
    target_fps: float | None = None,
    skip_unneeded: bool = True,
) -> np.ndarray:
  """Decodes ``num_clips`` clips of a video file as uint8 [num_clips, num_frames, H, W, 3].

  ``target_fps``: sample at this frame rate (V-JEPA 2): ``frame_step`` becomes
  ``fps_frame_step(video fps, target_fps)``.
  ``threads``: libavcodec decoding threads (1: none; 0: as many as it likes, ``thread_type``
  AUTO). ``skip_unneeded``: leave unneeded non-reference frames undecoded (``_decode_span``;
  the frames returned are the same either way).

  Raises VideoReadError with a reason (``missing``, ``empty_file``, ``open_error``,
  ``no_video_stream``, ``no_frames``, ``too_short``, ``decode_error``) for anything unusable.
  """
  container = open_video(path)
  try:
    stream, n, fps, start = probe(container)
    if target_fps:
      frame_step = fps_frame_step(fps, target_fps)
    if threads != 1:
      stream.thread_type = "AUTO"
      stream.thread_count = threads
    try:
      if n <= 0 or fps <= 0:
        # No usable length or rate in the header: decode everything and index the list.
        frames = _decode_all(container, stream)
        idx = clip_frame_indices(len(frames), num_frames, frame_step, num_clips, rng,
                                 short_policy, allow_segment_overlap)
        clips, first_slot = _Clips(*idx.shape), {}
        for c, clip in enumerate(idx):
          for k, i in enumerate(clip):
            if i in first_slot:
              clips.array[c, k] = clips.array[first_slot[i]]
            else:
              clips.put(c, k, frames[i])
              first_slot[i] = (c, k)
        return clips.array
      idx = clip_frame_indices(n, num_frames, frame_step, num_clips, rng, short_policy,
                               allow_segment_overlap)
      clips = _Clips(*idx.shape)
      for c, clip in enumerate(idx):
        times = start + clip / fps
        _decode_clip(container, stream, times, fps, first_clip=(c == 0), dst=(clips, c),
                     skip_unneeded=skip_unneeded)
      return clips.array
    except VideoReadError:
      raise
    except Exception as e:  # noqa: BLE001
      raise VideoReadError("decode_error", f"{type(e).__name__}: {e}") from None
  finally:
    container.close()


def clips_from_array(
    frames,
    num_frames: int,
    frame_step: int,
    num_clips: int = 1,
    rng: np.random.Generator | None = None,
    short_policy: str = "pad",
    allow_segment_overlap: bool = False,
    target_fps: float | None = None,
) -> np.ndarray:
  """The same sampling on frames already in memory (e.g. a TFDS ``video`` feature)."""
  if target_fps:  # arrays carry no frame rate to derive the step from
    raise VideoReadError("no_frame_rate", "fps sampling of in-memory videos (TFDS) is not "
                         "possible; set config.data.fps=None and use frame_step")
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[0] == 0:
    raise VideoReadError("no_frames", f"video array of shape {frames.shape}")
  if frames.shape[-1] == 1:
    frames = np.repeat(frames, 3, axis=-1)
  idx = clip_frame_indices(frames.shape[0], num_frames, frame_step, num_clips, rng, short_policy,
                           allow_segment_overlap)
  return frames[idx]
