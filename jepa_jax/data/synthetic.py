"""A synthetic video set of moving shapes, written as real H.264 files.

Each video shows one shape with a small dark marker moving over a static textured background and
spinning, its attributes drawn independently: ``direction`` (4), ``speed`` (slow, fast) and
``rotation`` (cw, ccw) need motion to tell apart (the marker makes a circle's spin visible);
``shape`` (circle, square, triangle) and ``colour`` (4) are appearance. Motion wraps around the
frame edges, so a clip taken anywhere shows the same direction (a bounce would flip it).

Under ``--out``: ``videos/``, ``index.csv`` (the 16 motion classes), ``index_<attr>.csv``,
``train_<attr>.csv`` / ``val_<attr>.csv`` (one 80/20 split by video for every attribute) and
``metadata.json``; index paths are relative, so the set can be moved. Sizes and label numbering:
docs/tools.md.

``python -m jepa_jax.data.synthetic --out DIR --num-videos N [--seed S]``;
``ensure_synthetic(out_dir, num_videos, seed)`` generates the set only if it is absent.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time

import numpy as np

from jepa_jax.errors import ConfigError

log = logging.getLogger(__name__)

FPS = 30
ATTRIBUTES = ("direction", "speed", "rotation", "shape", "colour")
CLASS_NAMES = {
    "direction": ["right", "left", "down", "up"],
    "speed": ["slow", "fast"],
    "rotation": ["cw", "ccw"],
    "shape": ["circle", "square", "triangle"],
    "colour": ["red", "green", "blue", "yellow"],
}
MOTION_CLASS_NAMES = [
    f"{d}_{s}_{r}"
    for d in CLASS_NAMES["direction"]
    for s in CLASS_NAMES["speed"]
    for r in CLASS_NAMES["rotation"]
]
_DIRECTIONS = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]], np.float32)  # (dx, dy), y down
_COLOURS = np.array([[220, 40, 40], [40, 190, 60], [50, 80, 230], [230, 210, 40]], np.float32)
_SPEEDS = ((0.4, 0.7), (1.4, 2.0))  # px per frame, slow / fast
_VAL_FRACTION = 0.2
_FORMAT_VERSION = 1


def motion_class(direction: int, speed: int, rotation: int) -> int:
  """The combined motion label used by ``index.csv``."""
  return direction * 4 + speed * 2 + rotation


def sample_attributes(rng: np.random.Generator) -> dict:
  """Draws one video's attributes and geometry."""
  attrs = {a: int(rng.integers(len(CLASS_NAMES[a]))) for a in ATTRIBUTES}
  h, w = (int(rng.integers(48, 81)) * 2 for _ in range(2))  # even sides in [96, 160]
  attrs.update(
      height=h,
      width=w,
      num_frames=int(rng.integers(150, 401)),
      speed_px=float(rng.uniform(*_SPEEDS[attrs["speed"]])),
      # Positive angular velocity turns +x towards +y, i.e. clockwise on a y-down screen.
      spin_deg=float(rng.uniform(2.0, 4.0)) * (1 if attrs["rotation"] == 0 else -1),
      radius=float(rng.uniform(0.12, 0.18) * min(h, w)),
      start=[float(rng.uniform(0, w)), float(rng.uniform(0, h))],
      angle0=float(rng.uniform(0, 360)),
      bg_seed=int(rng.integers(2**31)),
  )
  attrs["motion"] = motion_class(attrs["direction"], attrs["speed"], attrs["rotation"])
  return attrs


def _background(h: int, w: int, seed: int) -> np.ndarray:
  """A static two-colour gradient with fixed noise: texture without motion cues."""
  rng = np.random.default_rng(seed)
  c0, c1 = rng.uniform(40, 200, size=(2, 3)).astype(np.float32)
  ang = rng.uniform(0, 2 * np.pi)
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  t = (np.cos(ang) * xx / w + np.sin(ang) * yy / h)
  t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
  img = c0 + (c1 - c0) * t[..., None] + rng.normal(0, 6, size=(h, w, 3)).astype(np.float32)
  return img


def render_video(attrs: dict) -> np.ndarray:
  """Renders all frames of one video as uint8 [N, H, W, 3] with numpy only.

  Only a square patch around the shape is computed per frame (the background is static), which
  keeps rendering several times cheaper than whole-frame masks.
  """
  h, w, n = attrs["height"], attrs["width"], attrs["num_frames"]
  r = attrs["radius"]
  bg = np.clip(_background(h, w, attrs["bg_seed"]), 0, 255)
  bg_u8 = bg.astype(np.uint8)
  colour = _COLOURS[attrs["colour"]]
  marker_colour = np.float32(0.25) * colour
  vel = _DIRECTIONS[attrs["direction"]] * attrs["speed_px"]
  half = int(np.ceil(r)) + 1
  offs = np.arange(-half, half + 1)
  # Marker toward a triangle vertex (30 deg) so it sits inside every shape.
  m_u, m_v = 0.45 * r * np.cos(np.pi / 6), 0.45 * r * np.sin(np.pi / 6)
  # Triangle edge normals (inradius r/2), vertices at -90, 30 and 150 degrees.
  normals = [(np.cos(a), np.sin(a)) for a in np.deg2rad([90.0, 210.0, 330.0])]
  frames = np.empty((n, h, w, 3), np.uint8)
  for t in range(n):
    cx = (attrs["start"][0] + vel[0] * t) % w
    cy = (attrs["start"][1] + vel[1] * t) % h
    # Patch pixel indices wrap modulo the frame: the shape leaving one edge re-enters at the
    # other (toroidal motion).
    rows = (int(cy) + offs) % h
    cols = (int(cx) + offs) % w
    dy = (int(cy) + offs - cy).astype(np.float32)[:, None]
    dx = (int(cx) + offs - cx).astype(np.float32)[None, :]
    th = np.deg2rad(attrs["angle0"] + attrs["spin_deg"] * t)
    u = dx * np.cos(th) + dy * np.sin(th)
    v = -dx * np.sin(th) + dy * np.cos(th)
    if attrs["shape"] == 0:
      mask = u * u + v * v < r * r
    elif attrs["shape"] == 1:
      mask = (np.abs(u) < 0.85 * r) & (np.abs(v) < 0.85 * r)
    else:
      mask = np.ones(u.shape, bool)
      for nu, nv in normals:
        mask &= u * nu + v * nv < r / 2
    marker = (u - m_u) ** 2 + (v - m_v) ** 2 < (0.2 * r) ** 2
    patch = bg[np.ix_(rows, cols)]
    patch = np.where(mask[..., None], colour, patch)
    patch = np.where(marker[..., None], marker_colour, patch)
    frames[t] = bg_u8
    frames[t][np.ix_(rows, cols)] = patch.astype(np.uint8)
  return frames


def write_video(path: str, frames: np.ndarray, fps: int = FPS, crf: int = 23) -> None:
  """Encodes uint8 [N, H, W, 3] frames to an H.264/yuv420p mp4 (H, W even)."""
  n, h, w, _ = frames.shape
  import av  # noqa: PLC0415 -- only to write: readers of ATTRIBUTES need no PyAV
  with av.open(path, "w", format="mp4") as out:
    stream = out.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    # A keyframe every 2 s keeps seeks short; veryfast keeps B-frames (pts != dts, as in real
    # footage) while encoding several hundred small frames in well under a second.
    stream.options = {"crf": str(crf), "preset": "veryfast", "g": str(2 * fps)}
    for f in frames:
      for pkt in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        out.mux(pkt)
    for pkt in stream.encode():
      out.mux(pkt)


def _write_index(path: str, rows) -> None:
  with open(path, "w") as f:
    for p, label in rows:
      f.write(f"{p} {label}\n")


def generate(out_dir: str, num_videos: int, seed: int = 0) -> str:
  """Writes the full set into ``out_dir`` (created; should be empty). Returns index.csv's path."""
  os.makedirs(os.path.join(out_dir, "videos"), exist_ok=True)
  rng = np.random.default_rng(seed)
  videos = []
  for i in range(num_videos):
    attrs = sample_attributes(rng)
    rel = f"videos/vid_{i:05d}.mp4"
    write_video(os.path.join(out_dir, rel), render_video(attrs))
    videos.append(dict(path=rel, **attrs))
  # One split by video shared by all attributes.
  perm = np.random.default_rng(seed + 1).permutation(num_videos)
  num_val = int(round(num_videos * _VAL_FRACTION)) if num_videos >= 2 else 0
  num_val = min(max(num_val, 1 if num_videos >= 2 else 0), num_videos - 1) if num_videos else 0
  val_ids = set(perm[:num_val].tolist())
  for v_id, v in enumerate(videos):
    v["split"] = "val" if v_id in val_ids else "train"
  for attr in ("motion",) + ATTRIBUTES:
    suffix = "" if attr == "motion" else f"_{attr}"
    rows = [(v["path"], v[attr]) for v in videos]
    _write_index(os.path.join(out_dir, f"index{suffix}.csv"), rows)
    for split in ("train", "val"):
      _write_index(os.path.join(out_dir, f"{split}{suffix}.csv"),
                   [(v["path"], v[attr]) for v in videos if v["split"] == split])
  meta = dict(
      format_version=_FORMAT_VERSION,
      num_videos=num_videos,
      seed=seed,
      fps=FPS,
      index_label="motion",
      class_names=dict(CLASS_NAMES, motion=MOTION_CLASS_NAMES),
      videos=videos,
  )
  with open(os.path.join(out_dir, "metadata.json"), "w") as f:
    json.dump(meta, f, indent=1)
  return os.path.join(out_dir, "index.csv")


def generate_images(out_dir: str, num_images: int, seed: int = 0) -> str:
  """Writes ``num_images`` PNG stills (one frame of a synthetic video each: a shape over a
  textured background) and ``index.csv`` (label: the shape) into ``out_dir``; V-JEPA 2.1's image
  half of pretraining reads them when no image dataset is given. Returns index.csv's path."""
  from PIL import Image  # noqa: PLC0415
  os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(num_images):
    attrs = dict(sample_attributes(rng), num_frames=1)
    rel = f"images/img_{i:05d}.png"
    Image.fromarray(render_video(attrs)[0]).save(os.path.join(out_dir, rel))
    rows.append((rel, attrs["shape"]))
  _write_index(os.path.join(out_dir, "index.csv"), rows)
  with open(os.path.join(out_dir, "metadata.json"), "w") as f:
    json.dump(dict(format_version=_FORMAT_VERSION, kind="images", num_images=num_images,
                   seed=seed, index_label="shape", class_names=CLASS_NAMES["shape"]), f, indent=1)
  return os.path.join(out_dir, "index.csv")


def ensure_synthetic_images(out_dir: str, num_images: int, seed: int = 0) -> str:
  """``ensure_synthetic`` for ``generate_images``: ``out_dir/index.csv``, made if absent."""
  return _ensure(out_dir, "num_images", num_images, seed, generate_images)


def ensure_synthetic(out_dir: str, num_videos: int, seed: int = 0) -> str:
  """Returns ``out_dir/index.csv``, generating the set first if it is absent.

  Idempotent and safe against interruption or a concurrent caller: the set is generated in a
  temporary sibling directory and renamed into place in one step, so ``out_dir`` is either absent
  or complete. An existing set made with other ``num_videos``/``seed`` raises ValueError rather
  than silently being used.
  """
  return _ensure(out_dir, "num_videos", num_videos, seed, generate)


def _ensure(out_dir: str, count_key: str, count: int, seed: int, make) -> str:
  """``make(dir, count, seed)`` into ``out_dir`` unless a set is there (see ``ensure_synthetic``)."""
  out_dir = os.path.abspath(out_dir)
  index = os.path.join(out_dir, "index.csv")
  meta_path = os.path.join(out_dir, "metadata.json")
  if not os.path.exists(meta_path):
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=parent)
    try:
      t0 = time.time()
      make(tmp, count, seed)
      try:
        if os.path.isdir(out_dir) and not os.listdir(out_dir):
          os.rmdir(out_dir)  # an empty directory left by a caller: fill it
        os.rename(tmp, out_dir)
        log.info("synthetic set: %d %s in %s (%.1fs)", count, count_key[len("num_"):], out_dir,
                 time.time() - t0)
      except OSError:
        if not os.path.exists(meta_path):  # not a lost race with another generator
          raise
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  with open(meta_path) as f:
    meta = json.load(f)
  if meta.get(count_key) != count or meta.get("seed") != seed:
    raise ConfigError(
        f"{out_dir} holds a synthetic set with {count_key}={meta.get(count_key)}, "
        f"seed={meta.get('seed')}; asked for {count_key}={count}, seed={seed}. "
        "Use another directory or delete this one.")
  return index


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="output directory (created; an existing set with the same arguments is reused)")
  p.add_argument("--num-videos", type=int, default=64)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  from jepa_jax import cli  # noqa: PLC0415 (the writer's path imports no CLI stack)
  cli.setup_logging()
  t0 = time.time()
  index, status = cli.run_or_report(lambda: ensure_synthetic(args.out, args.num_videos, args.seed))
  if not status:
    print(f"{index} ({args.num_videos} videos, {time.time() - t0:.1f}s)")
  return status


if __name__ == "__main__":
  import sys
  sys.exit(main())
