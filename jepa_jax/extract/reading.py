"""The sources given on the command line and the clips of each video or image (decoded by
``data/decode.py``, cropped as the eval crops)."""
import os
from typing import Optional

import numpy as np

from jepa_jax import paths
from jepa_jax.extract.windows import clip_offsets, window_plan


def _crop(frames: np.ndarray, crop: int) -> np.ndarray:
  from jepa_jax.data import transforms  # noqa: PLC0415
  return transforms.eval_views(frames, crop, 1)[0]


def read_windows(source, i: int, settings) -> tuple[np.ndarray, list, int]:
  """``(uint8 clips [W, T, crop, crop, 3], windows, decoded frame count)`` of source item ``i``."""
  from jepa_jax.data import decode  # noqa: PLC0415
  s = settings
  if source.kind == "image":  # one clip, the image repeated along time as the image eval does
    from jepa_jax.data import transforms  # noqa: PLC0415
    from jepa_jax.eval import encoder as enc_lib  # noqa: PLC0415
    array, _ = source.get(i)
    image = transforms.eval_image(np.asarray(array), s.resolution)
    return np.asarray(enc_lib.as_clips(image[None], s.frames))[0, 0], [], 1
  if not s.window:  # the eval's centred clip
    if source.kind == "video_file":
      clips = decode.read_video_clips(source.path(i), s.frames, s.frame_step, 1, None, "pad", True)
      n = -1
    else:
      array, _ = source.get(i)
      clips = decode.clips_from_array(array, s.frames, s.frame_step, 1, None, "pad", True)
      n = len(array)
    return _crop(clips[0], s.resolution)[None], [], n
  offsets = clip_offsets(s.window, s.frames)
  if source.kind == "video_file":
    def wanted(k):
      return any(k >= o and (k - o) % s.stride == 0 for o in offsets)
    frames, n = decode.read_frames(source.path(i), wanted)
  else:
    array, _ = source.get(i)
    array = np.asarray(array)
    if array.ndim != 4 or len(array) == 0:
      raise decode.VideoReadError("no_frames", f"video array of shape {array.shape}")
    frames, n = dict(enumerate(array)), len(array)
  windows = window_plan(n, s.frames, s.window, s.stride, s.last)
  if not windows:
    raise decode.VideoReadError("too_short", f"{n} frames, shorter than one --window of "
                                f"{s.window} (use --last pad to encode it padded)")
  clips = np.stack([_crop(np.stack([frames[k] for k in w.frames]), s.resolution)
                    for w in windows])
  return clips, windows, n


def open_sources(specs: list, tfds_data_dir: Optional[str] = None) -> list:
  """The sources of ``specs``, in order: consecutive video (image) files given one by one form
  one source; a directory is its videos, then its images."""
  from jepa_jax.data import sources  # noqa: PLC0415
  out, files, file_kind = [], [], None
  kinds = {sources.VIDEO_EXTENSIONS: sources.FileVideoSource,
           sources.IMAGE_EXTENSIONS: sources.ImageFileSource}

  def flush():
    if files:
      out.append(file_kind(list(files), [-1] * len(files), name="command line"))
      files.clear()

  for spec in specs:
    kind = next((k for ext, k in kinds.items() if not spec.startswith("tfds:")
                 and spec.lower().endswith(ext)), None)
    if kind is not None:
      if kind is not file_kind:
        flush()
      files.append(paths.resolve(spec))
      file_kind = kind
      continue
    flush()
    if not spec.startswith("tfds:") and os.path.isdir(paths.resolve(spec)):
      out += [src for src in (sources.scan_directory(paths.resolve(spec)),
                              sources.scan_images(paths.resolve(spec))) if len(src)]
      continue
    out.append(sources.load_source(spec if spec.startswith("tfds:") else paths.resolve(spec),
                                   tfds_data_dir))
  flush()
  return out


def items_of(srcs: list) -> list:
  """``(position, source, index in source)`` for every video, in order."""
  out = []
  for src in srcs:
    out += [(len(out) + j, src, j) for j in range(len(src))]
  return out


def describe(src, j) -> str:
  return src.path(j) if hasattr(src, "path") else src.describe(j)


def file_name(position: int, src, j) -> str:
  stem = os.path.splitext(os.path.basename(describe(src, j)))[0] if hasattr(src, "path") \
      else src.kind.split("_")[0]
  stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)[:80]
  return f"features/{position:07d}_{stem}.npy"
