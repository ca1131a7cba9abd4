"""Encoder features of your own videos, written to files any tool can read.

  python -m jepa_jax.extract --checkpoint DIR --out OUT SOURCE... [--pool none|mean|probe]
      [--probe PROBE_DIR] [--layers K[,K...]] [--frames 16 --frame-step 4 --resolution 224]
      [--window W [--stride S] [--last pad|drop]] [--batch-size 8] [--dtype float32|float16]

SOURCE: video or image files, directories (scanned for videos and images), index files
(``path [label]`` per line) or ``tfds:name@split`` (videos or images). ``--checkpoint``: a
trainer workdir or converted weights; the EMA target encoder unless ``--checkpoint-key online``.
The encoder is rebuilt for ``--frames`` x ``--resolution`` clips (positions follow the grid).

What is encoded, per video (an image is one clip, the image repeated along time as the frozen
image eval does, resized and centre-cropped as below, with or without ``--window``):

* without ``--window``: one clip of ``--frames`` frames at ``--frame-step``, centred in the video
  (the eval's validation clip; a short video is padded with its last frame), resized so its short
  side is 256/224 of the crop and centre-cropped to ``--resolution``;
* with ``--window W``: sliding windows over the whole video. A window covers ``W`` source frames
  (default ``frames * frame_step``) and its clip is ``--frames`` frames spread over them as the
  reference samples a clip (``floor(linspace(start, start + W, frames))``, at most
  ``start + W - 1``). Windows start at frames 0, S, 2S, ... (``--stride S``, default W) while they
  fit in the video. If the last of them ends before the video does (or the video is shorter than
  W), one more window starts at the next stride position: ``--last pad`` (default) keeps it,
  repeating the video's last frame for the frames past its end, ``--last drop`` leaves it out. So
  with pad and S <= W every frame of the video lies in some window; with drop the tail after the
  last full window is not encoded; with S > W the frames between windows are skipped.

What is written, per window (float32 unless ``--dtype float16``):

* ``--pool none``: every token, ``[N, D]`` (N = t x h x w tokens in (time, height, width) order,
  the grid in meta.json); with several ``--layers``, ``[L, N, D]``;
* ``--pool mean``: the tokens' mean, ``[D]`` (``[L, D]`` with several layers);
* ``--pool probe --probe DIR``: the pooled query of a saved attentive probe (its classifier's
  input), ``[D]``, over one window's tokens (a probe trained on S segments saw S clips' tokens
  at once); the probe reads the layers it was trained on (or ``--layers``).

``--layers``: 0-based encoder blocks; each block's output goes through the encoder's final
LayerNorm, as the eval's ``feature_layer`` does. Default: the encoder's output.

Output layout of OUT (readable with numpy alone):

* ``meta.json``: the checkpoint, encoder, settings, token grid and layout, written first; a rerun
  with other settings into the same OUT is refused;
* ``features/<position>_<name>.npy``: one array per video, ``[num_windows, *per-window shape]``
  (``num_windows`` = 1 without ``--window``);
* ``index.jsonl``: one JSON line per finished video: ``position`` (in the source list),
  ``video``, ``label``, ``file``, ``shape``, ``dtype``, ``num_frames`` (frames decoded; -1 for a
  file without ``--window``, which is not decoded whole; 1 for an image) and ``windows`` (null
  without ``--window`` and for images): per window ``start``/``end`` (the source frames it
  covers, end exclusive, clipped to the video), ``frames`` (the source frames its clip shows) and
  ``padded`` (how many of them repeat the last frame);
* ``failures.jsonl``: one line per unreadable video (``video``, ``error``), skipped and counted.

Resumable: a video counts as done once its line is in index.jsonl (written after its array, which
is renamed into place whole), so rerunning the same command after an interruption skips what is
done and rewrites only what was not finished; the files are the same as an uninterrupted run's.
Batched (windows of several videos per encoder pass, batches padded to one shape so one program
is compiled) and split over every local device; decoding runs in ``--workers`` threads ahead of
the encoder. Single process.
"""
import argparse
import concurrent.futures
import dataclasses
import json
import logging
import os
import sys
import time
from typing import Iterator, Optional

import numpy as np

from jepa_jax import cli, paths
from jepa_jax.errors import ConfigError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
POOLS = ("none", "mean", "probe")
OUT_DTYPES = ("float32", "float16")


# ---------------------------------------------------------------------------------------------
# Windows (pure)


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
  """The windows of a ``num_video_frames``-frame video (module docstring)."""
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


# ---------------------------------------------------------------------------------------------
# Reading


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


# ---------------------------------------------------------------------------------------------
# The encoder side


def build_feature_fn(encoder, settings, probe=None):
  """Jitted ``(encoder params, probe params, uint8 [B, T, H, W, C]) -> float32 features [B, ...]``."""
  import flax.linen as nn  # noqa: PLC0415
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  from jepa_jax.data import normalize as normalize_lib  # noqa: PLC0415
  from jepa_jax.eval import encoder as enc_lib  # noqa: PLC0415
  layers = enc_lib.feature_layers(encoder, settings.layers or None)

  if settings.pool == "probe":
    token_fn = enc_lib.make_token_fn(encoder, settings.layers or None)

    def fn(enc_params, probe_params, clips):
      tokens = token_fn(enc_params, clips[:, None, None])[:, 0]  # one segment, one view
      pooled = []

      def keep_classifier_input(next_fun, args, kwargs, context):
        if context.module.name == "linear" and context.method_name == "__call__":
          pooled.append(args[0])
        return next_fun(*args, **kwargs)

      with nn.intercept_methods(keep_classifier_input):
        probe.apply({"params": probe_params}, tokens)
      return pooled[0].astype(jnp.float32)
  else:
    def fn(enc_params, probe_params, clips):
      del probe_params
      x = normalize_lib.normalize(clips, encoder.block.dtype)
      out = encoder.apply({"params": enc_params}, x, out_layers=layers)
      tokens = jnp.stack(out, axis=1) if layers and len(layers) > 1 else (
          out[0] if layers else out)
      if settings.pool == "mean":
        tokens = jnp.mean(tokens.astype(jnp.float32), axis=-2)
      return jax.lax.stop_gradient(tokens).astype(jnp.float32)

  return jax.jit(fn)


@dataclasses.dataclass
class Settings:
  frames: int
  frame_step: int
  resolution: int
  window: int
  stride: int
  last: str
  pool: str
  layers: Optional[list]
  dtype: str


def settings_from_args(args) -> Settings:
  if args.pool == "probe" and not args.probe:
    raise ConfigError("--pool probe needs --probe PROBE_DIR (a saved attentive probe)")
  if args.probe and args.pool != "probe":
    raise ConfigError("--probe is only used with --pool probe")
  window = args.window or 0
  if (args.stride or args.last != "pad") and not window:
    raise ConfigError("--stride/--last apply to sliding windows: give --window too")
  if window and window < args.frames:
    log.warning("--window %d is shorter than --frames %d: frames repeat in each clip", window,
                args.frames)
  return Settings(frames=args.frames, frame_step=args.frame_step, resolution=args.resolution,
                  window=window, stride=(args.stride or window) if window else 0,
                  last=args.last, pool=args.pool, layers=list(args.layers or []) or None,
                  dtype=args.dtype)


def load_models(args, settings):
  """``(encoder, encoder params, encoder info, probe module or None, probe params or None)``."""
  from jepa_jax.eval import config as config_lib  # noqa: PLC0415
  from jepa_jax.eval import encoder as enc_lib  # noqa: PLC0415
  c = config_lib.base_eval_config()
  c.checkpoint, c.checkpoint_key = args.checkpoint, args.checkpoint_key
  c.encoder_dtype = args.encoder_dtype
  c.data.num_frames, c.data.frame_step = settings.frames, settings.frame_step
  c.data.crop_size = settings.resolution
  encoder, params, info = enc_lib.load_frozen_encoder(c)
  probe = probe_params = None
  if settings.pool == "probe":
    probe, probe_params, settings.layers = load_probe(args.probe, encoder, settings.layers)
  return encoder, params, info, probe, probe_params


def load_probe(probe_dir: str, encoder, layers: Optional[list]):
  """``(probe module, probe params, layers)``: a saved attentive probe and the encoder blocks it
  reads (``layers`` if given, else those it was trained on, else None: the encoder's output)."""
  from jepa_jax import checkpoint as ckpt_lib  # noqa: PLC0415
  from jepa_jax.eval import run as run_lib  # noqa: PLC0415
  probe, probe_params, _, _ = run_lib.load_saved_probe(probe_dir, encoder.embed_dim, "float32")
  if layers is None:
    trained = (ckpt_lib.read_probe_config(probe_dir).get("eval") or {}).get("protocol") or {}
    layer = trained.get("feature_layer")
    layers = ([layer] if isinstance(layer, int) else list(layer)) if layer is not None else None
  return probe, probe_params, layers


# ---------------------------------------------------------------------------------------------
# The run


class Output:
  """OUT's files (module docstring): meta, per-video arrays, the index of finished videos."""

  def __init__(self, out: str, meta: dict):
    self.out = out
    os.makedirs(os.path.join(out, "features"), exist_ok=True)
    meta_path = os.path.join(out, "meta.json")
    if os.path.exists(meta_path):
      with open(meta_path) as f:
        old = json.load(f)
      if old != json.loads(json.dumps(meta)):
        changed = sorted(k for k in set(old) | set(meta) if old.get(k) != json.loads(
            json.dumps(meta)).get(k))
        raise ConfigError(f"{out} holds features extracted with other settings ({changed} "
                          "differ); choose another --out or delete it")
    else:
      _write_atomic(meta_path, json.dumps(meta, indent=1).encode())
    self.done = self._read_done()

  def _read_done(self) -> set:
    path = os.path.join(self.out, "index.jsonl")
    done, good = set(), []
    if os.path.exists(path):
      with open(path) as f:
        for line in f:
          try:
            rec = json.loads(line)
          except json.JSONDecodeError:
            break  # a line cut short by a kill: that video is redone
          if not line.endswith("\n"):
            break
          done.add(int(rec["position"]))
          good.append(line)
      # Drop a cut-short tail so appended lines stay one per line.
      _write_atomic(path, "".join(good).encode())
    return done

  def write(self, position: int, name: str, record: dict, features: np.ndarray) -> None:
    path = os.path.join(self.out, name)
    with open(path + ".tmp", "wb") as f:
      np.save(f, features)
    os.replace(path + ".tmp", path)
    with open(os.path.join(self.out, "index.jsonl"), "a") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()
      os.fsync(f.fileno())
    self.done.add(position)

  def failed(self, video: str, error: str) -> None:
    with open(os.path.join(self.out, "failures.jsonl"), "a") as f:
      f.write(json.dumps(dict(video=video, error=error)) + "\n")


def _write_atomic(path: str, data: bytes) -> None:
  with open(path + ".tmp", "wb") as f:
    f.write(data)
  os.replace(path + ".tmp", path)


class Progress:
  """One log line every ``every`` seconds: videos done, videos/s, ETA."""

  def __init__(self, total: int, every: float = 10.0):
    self.total, self.every = total, every
    self.t0 = self.last = time.time()
    self.count = 0

  def step(self, final: bool = False) -> None:
    self.count += 0 if final else 1
    now = time.time()
    if not final and now - self.last < self.every:
      return
    self.last = now
    rate = self.count / max(now - self.t0, 1e-9)
    eta = (self.total - self.count) / rate if rate > 0 else float("inf")
    log.info("%d/%d videos, %.2f videos/s, ETA %s", self.count, self.total, rate,
             time.strftime("%H:%M:%S", time.gmtime(eta)) if eta != float("inf") else "?")


def run(args) -> dict:
  """Extract (module docstring); returns counts ``{done, skipped_done, failed, windows}``."""
  import jax  # noqa: PLC0415
  from jepa_jax.data import decode  # noqa: PLC0415
  from jepa_jax.eval.placement import Placer  # noqa: PLC0415
  if jax.process_count() > 1:
    raise ConfigError("extract runs as one process (it uses every local device); split the "
                      "videos into one index file per host instead")
  settings = settings_from_args(args)
  srcs = open_sources(args.sources, args.tfds_data_dir)
  items = items_of(srcs)
  encoder, enc_params, info, probe, probe_params = load_models(args, settings)
  grid = list(encoder.grid) if hasattr(encoder, "grid") else None
  meta = dict(format_version=FORMAT_VERSION, checkpoint=info["checkpoint"],
              checkpoint_key=info["checkpoint_key"], step=info["step"], model=info["model"],
              embed_dim=encoder.embed_dim, token_grid=grid, probe=args.probe or None,
              sources=list(args.sources), encoder_dtype=args.encoder_dtype,
              **dataclasses.asdict(settings))
  out = Output(args.out, meta)
  todo = [it for it in items if it[0] not in out.done]
  if len(todo) < len(items):
    log.info("%d of %d videos already done in %s; extracting the other %d", len(items) - len(todo),
             len(items), args.out, len(todo))
  placer = Placer()
  batch = -(-args.batch_size // placer.num_devices) * placer.num_devices
  fn = build_feature_fn(encoder, settings, probe)
  enc_params = placer.replicate(enc_params)
  probe_params = placer.replicate(probe_params) if probe_params is not None else None
  out_dtype = np.float16 if settings.dtype == "float16" else np.float32
  progress = Progress(len(todo))
  counts = dict(done=0, skipped_done=len(items) - len(todo), failed=0, windows=0)
  pending = []   # (position, src, j, clips, windows, n): read, waiting for the encoder
  rows = []      # (pending entry, window index) per row of the batch being filled

  def encode(rows_now):
    clips = np.stack([p[3][w] for p, w in rows_now])
    pad = batch - len(clips)
    if pad:
      clips = np.concatenate([clips, np.zeros((pad,) + clips.shape[1:], clips.dtype)])
    return placer.gather(fn(enc_params, probe_params, placer.batch(clips)))[:len(rows_now)]

  results = {}   # position -> list of per-window features

  def finish_ready():
    while pending and len(results.get(pending[0][0], [])) == len(pending[0][3]):
      position, src, j, clips, windows, n = pending.pop(0)
      feats = np.stack(results.pop(position)).astype(out_dtype)
      name = file_name(position, src, j)
      record = dict(position=position, video=describe(src, j), label=int(src.label(j)), file=name,
                    shape=list(feats.shape), dtype=np.dtype(out_dtype).name, num_frames=n,
                    windows=[w.to_json() for w in windows] if windows else None)
      out.write(position, name, record, feats)
      counts["done"] += 1
      counts["windows"] += len(feats)
      progress.step()

  def read(item):
    position, src, j = item
    try:
      clips, windows, n = read_windows(src, j, settings)
      return position, src, j, clips, windows, n, None
    except decode.VideoReadError as e:
      return position, src, j, None, None, None, e

  with concurrent.futures.ThreadPoolExecutor(max(1, args.workers)) as pool:
    for position, src, j, clips, windows, n, error in _ordered(pool, read, todo, args.workers):
      if error is not None:
        log.warning("skipping %s: %s", describe(src, j), error)
        out.failed(describe(src, j), str(error))
        counts["failed"] += 1
        progress.step()
        continue
      entry = (position, src, j, clips, windows, n)
      pending.append(entry)
      results[position] = []
      for w in range(len(clips)):
        rows.append((entry, w))
        if len(rows) == batch:
          for (e, _), f in zip(rows, encode(rows)):
            results[e[0]].append(f)
          rows.clear()
          finish_ready()
    if rows:
      for (e, _), f in zip(rows, encode(rows)):
        results[e[0]].append(f)
      rows.clear()
    finish_ready()
  progress.step(final=True)
  log.info("extracted %d videos (%d windows) to %s; %d already done; %d unreadable%s",
           counts["done"], counts["windows"], args.out, counts["skipped_done"], counts["failed"],
           f" (listed in {os.path.join(args.out, 'failures.jsonl')})" if counts["failed"] else "")
  return counts


def _ordered(pool, fn, items, workers) -> Iterator:
  """``fn`` over ``items`` in ``pool``, results in order, at most ``2 * workers`` ahead."""
  ahead = max(2, 2 * workers)
  futures = []
  for item in items:
    futures.append(pool.submit(fn, item))
    if len(futures) >= ahead:
      yield futures.pop(0).result()
  for f in futures:
    yield f.result()


def int_list(text: str) -> list:
  try:
    return [int(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m jepa_jax.extract", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("sources", nargs="+", metavar="SOURCE",
                 help="video or image files, directories, index files or tfds:name@split")
  p.add_argument("--checkpoint", required=True, help="trainer workdir or converted weights")
  p.add_argument("--checkpoint-key", choices=("target", "online"), default="target")
  p.add_argument("--out", required=True, help="output directory (resumable)")
  p.add_argument("--pool", choices=POOLS, default="none")
  p.add_argument("--probe", help="--pool probe: a saved attentive probe's directory")
  p.add_argument("--layers", type=int_list,
                 help="0-based encoder blocks, comma-separated, e.g. 17,19,21,23 (default: output)")
  p.add_argument("--frames", type=int, default=16, help="frames per clip")
  p.add_argument("--frame-step", type=int, default=4, help="source frames between clip frames")
  p.add_argument("--resolution", type=int, default=224, help="crop size in pixels")
  p.add_argument("--window", type=int, help="sliding windows of this many source frames")
  p.add_argument("--stride", type=int, help="source frames between window starts (default: window)")
  p.add_argument("--last", choices=("pad", "drop"), default="pad",
                 help="a last, partial window: padded with the last frame, or dropped")
  p.add_argument("--batch-size", type=int, default=8,
                 help="clips per encoder pass (rounded up to a multiple of the devices)")
  p.add_argument("--workers", type=int, default=4, help="decoding threads")
  p.add_argument("--dtype", choices=OUT_DTYPES, default="float32", help="stored dtype")
  p.add_argument("--encoder-dtype", choices=("float32", "bfloat16", "float16"), default="float32")
  p.add_argument("--tfds-data-dir", help="where prepared TFDS datasets are")
  args = p.parse_args(argv)
  args.checkpoint, args.out = paths.resolve(args.checkpoint), paths.resolve(args.out)
  args.probe = paths.resolve(args.probe) if args.probe else None
  return args


def main(argv=None) -> int:
  cli.setup_logging(library_warnings=False)  # orbax warns for every read-only manager
  args = parse_args(argv)
  counts, status = cli.run_or_report(lambda: run(args))
  if status:
    return status
  print(f"{counts['done']} videos extracted ({counts['windows']} windows), "
        f"{counts['skipped_done']} already done, {counts['failed']} unreadable: {args.out}")
  return 0


if __name__ == "__main__":
  from jepa_jax import cli
  cli.install_unraisablehook()  # a skipped damaged checkpoint: no echoes of its failed reads
  sys.exit(main())
