"""grain pipelines for pretraining and evaluation, with failure accounting.

``make_pretrain_dataset``: per source ``range -> [shard::count] -> shuffle(seed) -> repeat() ->
random_map(load + augment)``, then ``mix(datasets_weights) -> batch -> mp_prefetch``. Hosts read
disjoint slices (sliced before shuffling); each epoch reshuffles and grain derives each record's
rng from the seed and its stream position, so the stream is a pure function of ``seed`` and the
iterator's ``get_state`` / ``set_state`` replay the exact next batches. ``make_eval_dataset``:
one source's batches of segments x views for the probe, every host the same number.

Bad samples never stop a run by themselves: ``_Loader`` records a failed read or transform in a
``failures.FailureTracker`` (logged and counted once; a known-bad entry is never decoded again)
and replaces it by another entry of the same source drawn uniformly from the sample's own rng
(``replacement_index``: deterministic, resumable, and unlike an ``index + 1`` rule favouring no
entry). Examples carry ``bad_reads`` (pretraining also ``bad_entries``, ``bad_reasons``) for the
trainer's account. ``DataPipelineError`` only when the stop rule of ``failures.py`` says so. Counts
are per process: each worker keeps its own tracker (seeded by ``failure_tracker``, which is filled
itself only with ``num_workers == 0``).
"""
from __future__ import annotations

import logging
import math
import os

from absl import flags
import grain
import numpy as np

from jepa_jax.data import decode
from jepa_jax.data.clips import ClipSpec
from jepa_jax.data import failures
# Re-exported: the config fields live in settings.py, which imports neither grain nor PyAV.
from jepa_jax.data.settings import dataset_frames
from jepa_jax.data.settings import default_data_config  # noqa: F401
from jepa_jax.data import sources as sources_lib
from jepa_jax.data import synthetic
from jepa_jax.data import transforms
from jepa_jax.errors import ConfigError

log = logging.getLogger(__name__)

DataPipelineError = failures.DataPipelineError
FailureTracker = failures.FailureTracker




def replacement_index(rng: np.random.Generator, failed: int, n: int) -> int:
  """An entry other than ``failed`` of a source of ``n``, uniformly at random from ``rng``."""
  j = int(rng.integers(n - 1))
  return j + (j >= failed)


class _Loader:
  """grain ``random_map`` function: source index (+ valid flag) and rng -> one example."""

  def __init__(self, source, *, mode: str, train: bool, num_frames: int, frame_step: int,
               crop_size: int, num_clips: int = 1, num_views: int = 1, scale=(0.3, 1.0),
               ratio=(0.75, 1.35), flip: bool = True, short_policy: str = "pad",
               allow_overlap: bool = False, decode_threads: int = 1, offset: int = 0,
               tracker: FailureTracker, max_retries: int = 50, fps: float | None = None):
    self.source = source
    # "pretrain" (video [T,H,W,C]), "pretrain_image" (one-frame clip [1,H,W,C]), "eval"
    # ([S,V,T,H,W,C]) or "image" ([H,W,C])
    self.mode = mode
    self.train = train
    self.num_frames, self.frame_step = num_frames, frame_step
    self.crop_size = crop_size
    self.num_clips, self.num_views = num_clips, num_views
    self.scale, self.ratio, self.flip = tuple(scale), tuple(ratio), flip
    self.short_policy = short_policy
    self.allow_overlap = allow_overlap
    self.decode_threads = decode_threads
    self.offset = offset
    self.tracker = tracker
    self.max_retries = max_retries
    self.fps = fps  # None: fixed frame_step; else per-video step for this rate (decode.py)

  def __call__(self, item, rng: np.random.Generator) -> dict:
    index, valid = item if isinstance(item, tuple) else (item, True)
    n = len(self.source)
    j = int(index)
    bad = []  # (entry, reason) of each bad entry met, known-bad ones included
    for _ in range(self.max_retries + 1):
      entry = self.offset + j
      reason = self.tracker.known_bad(entry)
      if reason is None:
        before = rng.bit_generator.state
        try:
          data, label = self.load(j, rng)
        except decode.VideoReadError as e:
          self.tracker.read_failed(entry, self.source.describe(j), e)
          # Rewind what the failed read drew, so that the replacement is the one a known-bad
          # skip draws: the stream does not depend on which thread met the entry first.
          rng.bit_generator.state = before
          reason = e.reason
        else:
          self.tracker.read_ok(entry)
          self.tracker.sample_done(len(bad))
          self.tracker.check()
          key = "image" if self.mode in ("image", "pretrain_image") else "video"
          return {key: data, "label": np.int32(label), "index": np.int64(entry),
                  "bad_reads": np.int32(len(bad)),
                  **(failures.sample_record(bad, self.max_retries + 1)
                     if self.mode.startswith("pretrain") else {"valid": np.bool_(valid)})}
      bad.append((entry, reason))
      if n < 2:
        break
      j = replacement_index(rng, j, n)
    self.tracker.sample_done(len(bad))
    tried = "its only entry" if n < 2 else f"{self.max_retries + 1} entries in a row"
    raise DataPipelineError(
        f"no readable sample in {getattr(self.source, 'name', '') or 'a source'} after trying "
        f"{tried} (from {self.source.describe(int(index))}): " + self.tracker.message())

  def load(self, j: int, rng: np.random.Generator):
    """(uint8 array, label) for source index ``j``; any failure as a VideoReadError."""
    src = self.source
    rng_or_none = rng if self.train else None
    clip_args = (self.num_frames, self.frame_step, self.num_clips, rng_or_none, self.short_policy,
                 self.allow_overlap)
    if src.kind == "video_file":
      clips = decode.read_video_clips(src.path(j), *clip_args, threads=self.decode_threads,
                                      target_fps=self.fps)
      label = src.label(j)
    else:
      try:
        array, label = src.get(j)
      except decode.VideoReadError:  # an image file's reader says why itself
        raise
      except Exception as e:  # noqa: BLE001 -- any reader error is a bad sample
        raise decode.VideoReadError("read_error", f"{type(e).__name__}: {e}") from None
      if src.kind == "video_array":
        clips = decode.clips_from_array(array, *clip_args, target_fps=self.fps)
      else:
        clips = np.asarray(array)
    try:
      return self.transform(clips, rng), label
    except Exception as e:  # noqa: BLE001
      raise decode.VideoReadError("transform_error", f"{type(e).__name__}: {e}") from None

  def transform(self, clips: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if self.mode == "pretrain_image":  # the video augmentation on a one-frame clip
      return self.augment(transforms.image_rgb(clips)[None], rng)
    if self.mode == "image":
      img = transforms.image_rgb(clips)
      if self.train:
        return self.augment(img[None], rng)[0]
      return transforms.eval_image(img, self.crop_size)
    if self.mode == "pretrain":
      return self.augment(clips[0], rng)
    if self.train:  # probe training: one random crop per segment
      return np.stack([self.augment(c, rng)[None] for c in clips])
    return np.stack([transforms.eval_views(c, self.crop_size, self.num_views) for c in clips])

  def augment(self, clip, rng):
    return transforms.train_transform(clip, rng, self.crop_size, self.scale, self.ratio,
                                      self.flip)


def _resolve_sources(cfg) -> list[str]:
  specs = list(cfg.datasets or [])
  if not specs:
    if not cfg.synthetic_dir:
      raise DataPipelineError("config.data.datasets is empty and config.data.synthetic_dir is "
                              "not set; give index files or a directory for the synthetic set")
    index = synthetic.ensure_synthetic(cfg.synthetic_dir, cfg.synthetic_num_videos,
                                       cfg.synthetic_seed)
    specs = [index.replace("index.csv", cfg.synthetic_index)]
  return specs


def _to_batches(ds: grain.MapDataset, cfg, batch_size: int, finite: bool = False) -> grain.IterDataset:
  """Threads read samples; worker processes (``num_workers``) prefetch; batches of ``batch_size``.

  Each worker process reads every ``num_workers``-th sample. On an infinite stream the workers
  batch (less to send between processes); on a finite one (one eval pass) the main process
  batches, or every worker would drop its own partial last batch and lose examples.
  """
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.num_threads,
                                            prefetch_buffer_size=cfg.prefetch_buffer_size))
  batch_in_workers = not (finite and cfg.num_workers > 0)
  if batch_in_workers:
    it = it.batch(batch_size, drop_remainder=True)
  if cfg.num_workers > 0:
    # grain's worker processes read absl flags; outside absl.app.run (tests, notebooks, scripts)
    # they are unparsed and grain would raise UnparsedFlagAccessError. Accept the defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=cfg.num_workers, per_worker_buffer_size=cfg.worker_buffer_size))
  if not batch_in_workers:
    it = it.batch(batch_size, drop_remainder=True)
  return it


def source_order(n: int, seed: int, shard_index: int = 0, shard_count: int = 1) -> grain.MapDataset:
  """The infinite order in which a pretraining source of ``n`` entries is read by one process:
  its slice of the entries (sliced before shuffling), reshuffled every epoch. Each source gets its
  own ``seed`` (``make_pretrain_dataset``: seed + 7919 k) so two equal-sized sources are not
  shuffled in lockstep."""
  ds = grain.MapDataset.range(n)[shard_index::shard_count]
  return ds.seed(seed % 2**32).shuffle().repeat() if len(ds) else ds


def make_pretrain_dataset(data_cfg, *, batch_size: int, seed: int | None = None,
                          shard_index: int = 0, shard_count: int = 1,
                          failure_tracker: FailureTracker | None = None, images=None,
                          image_batch_size: int = 0):
  """Infinite per-host batches ``{"video": uint8 [B,T,H,W,C], "label": int32 [B], "index": int64 [B],
  "bad_reads": int32 [B]}``.

  ``index`` numbers samples across all sources (source k's indices are offset by the sizes of
  sources 0..k-1); ``label`` is -1 for unlabelled indexes; ``bad_reads`` counts the failed reads
  each sample needed before its (replacement) entry read well. See the module docstring.

  ``images`` (``config.images``, V-JEPA 2.1): each batch also holds ``"image": uint8 [B_img, 1,
  H, W, C]``, ``image_batch_size`` images of its sources (indices after the videos'), augmented
  as the videos; ``index``/``bad_*`` then cover videos then images. Returns a ``PairedBatches``.
  """
  cfg = data_cfg
  seed = cfg.seed if seed is None else seed
  tracker = failure_tracker or FailureTracker(cfg.max_failure_fraction, cfg.failure_confidence)
  specs = _resolve_sources(cfg)
  fpcs = cfg.get("dataset_fpcs")
  if fpcs and len(fpcs) != len(specs):
    raise ConfigError(f"{len(specs)} datasets but {len(fpcs)} dataset_fpcs")
  sources = [sources_lib.load_source(spec, cfg.tfds_data_dir) for spec in specs]
  for spec, src in zip(specs, sources):
    if _holds_images(spec, src):
      raise DataPipelineError(f"{spec} is an image dataset; config.data.datasets takes videos: "
                              "move it to config.images.datasets (V-JEPA 2.1's image half)")
  shards = dict(seed=seed, shard_index=shard_index, shard_count=shard_count, tracker=tracker)
  videos, counted = _mixed_stream(
      specs, sources, cfg.datasets_weights, "config.data", cfg,
      lambda k: dict(mode="pretrain", num_frames=dataset_frames(cfg, k)), offset=0, **shards)
  if images is None:
    tracker.bind(counted)
    return _to_batches(videos, cfg, batch_size)
  image_specs = _resolve_image_sources(images, cfg)
  image_sources = [sources_lib.load_image_source(spec, cfg.tfds_data_dir) for spec in image_specs]
  stills, image_counted = _mixed_stream(
      image_specs, image_sources, images.get("datasets_weights"), "config.images", cfg,
      lambda k: dict(mode="pretrain_image", num_frames=1), offset=sum(n for _, n in counted),
      seed_offset=104729, **shards)
  tracker.bind(counted + image_counted)
  return PairedBatches(_to_batches(videos, cfg, batch_size),
                       _to_batches(stills, cfg, image_batch_size))


def _holds_images(spec: str, src) -> bool:
  """Whether a source of ``config.data.datasets`` is images: an image dataset, an index listing
  image files, or a directory with images and no videos."""
  if src.kind == "image":
    return True
  paths = getattr(src, "paths", None)
  if paths:
    return all(p.lower().endswith(sources_lib.IMAGE_EXTENSIONS) for p in paths[:64])
  return paths is not None and os.path.isdir(spec) and len(sources_lib.scan_images(spec)) > 0


def _mixed_stream(specs, sources, weights, field, cfg, loader_args, *, offset: int, seed: int,
                  shard_index: int, shard_count: int, tracker, seed_offset: int = 0):
  """The mix of ``sources`` (``weights``), each read in ``source_order`` by a ``_Loader`` of
  ``loader_args(k)``; returns the dataset and its ``(spec, length)`` list for the tracker."""
  if weights is not None and len(weights) != len(specs):
    raise ConfigError(f"{len(specs)} {field}.datasets but {len(weights)} datasets_weights")
  parts, counted = [], []
  for k, (spec, src) in enumerate(zip(specs, sources)):
    counted.append((spec, len(src)))
    if len(src) == 0:
      raise DataPipelineError(f"{spec} holds no samples (nothing listed, or none found); add "
                              f"files or remove it from {field}.datasets")
    ds = source_order(len(src), seed + seed_offset + 7919 * k, shard_index, shard_count)
    if len(ds) == 0:
      raise DataPipelineError(f"{spec} has {len(src)} samples: none for process {shard_index} of "
                              f"{shard_count}; use a larger index or fewer processes")
    loader = _Loader(
        src, train=True, frame_step=cfg.frame_step, fps=cfg.get("fps"),
        crop_size=cfg.crop_size, scale=cfg.random_resize_scale,
        ratio=cfg.random_resize_aspect_ratio, flip=cfg.horizontal_flip,
        short_policy=cfg.short_video_policy, decode_threads=cfg.decode_threads, offset=offset,
        tracker=tracker, max_retries=cfg.max_retries_per_sample, **loader_args(k))
    parts.append(ds.random_map(loader))
    offset += len(src)
  return (parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, weights)), counted


def _resolve_image_sources(images, data_cfg) -> list[str]:
  specs = list(images.get("datasets") or [])
  if specs:
    return specs
  out = images.get("synthetic_dir") or (
      data_cfg.synthetic_dir.rstrip("/\\") + "_images" if data_cfg.synthetic_dir else None)
  if not out:
    raise DataPipelineError("config.images.datasets is empty and neither config.images."
                            "synthetic_dir nor config.data.synthetic_dir is set; give image "
                            "index files, directories or a tfds: image dataset")
  return [synthetic.ensure_synthetic_images(out, images.get("synthetic_num_images", 256),
                                            data_cfg.synthetic_seed)]


class PairedBatches:
  """Video and image batches read side by side (V-JEPA 2.1): ``iter()`` gives an iterator whose
  batches merge both (``PairedIterator``) and whose state is both streams' states."""

  def __init__(self, videos, images):
    self.videos, self.images = videos, images

  def __iter__(self) -> "PairedIterator":
    return PairedIterator(iter(self.videos), iter(self.images))


class PairedIterator:
  """``next``: the video batch plus ``"image"``, the per-sample account (``index``, ``bad_*``)
  of videos then images; ``get_state`` / ``set_state`` cover both streams, so a restore replays
  both exactly."""

  _ACCOUNT = ("index", "bad_reads", "bad_entries", "bad_reasons")

  def __init__(self, videos, images):
    self.videos, self.images = videos, images

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    video, image = next(self.videos), next(self.images)
    batch = dict(video, image=image["image"])
    for key in self._ACCOUNT:
      batch[key] = np.concatenate([video[key], image[key]])
    return batch

  def get_state(self) -> dict:
    return {"video": self.videos.get_state(), "image": self.images.get_state()}

  def set_state(self, state: dict) -> None:
    if set(state) != {"video", "image"}:
      raise DataPipelineError("the checkpointed data state is a video-only run's; a run with "
                              "config.images cannot resume its data position (start it with "
                              "config.init_from instead)")
    self.videos.set_state(state["video"])
    self.images.set_state(state["image"])


class _EvalPositions:
  """Position j of a host's padded eval shard -> (source index, valid)."""

  def __init__(self, n, shard_index, shard_count):
    self.n, self.shard_index, self.shard_count = n, shard_index, shard_count

  def __call__(self, j):
    g = self.shard_index + int(j) * self.shard_count
    return (g % self.n, g < self.n)


def make_eval_dataset(data_cfg, index_path: str, *, batch_size: int,
                      clip: ClipSpec | None = None, train: bool = False, seed: int | None = None,
                      shard_index: int = 0, shard_count: int = 1, repeat: bool = False,
                      failure_tracker: FailureTracker | None = None) -> grain.IterDataset:
  """Batches for frozen evaluation / probe training from one source spec.

  Videos: ``{"video": uint8 [B, S, V, T, H, W, C], "label": int32 [B], "index": int64 [B],
  "valid": bool [B], "bad_reads": int32 [B]}``, the clips of ``clip`` (``data.clips.ClipSpec``;
  None = one clip of ``data_cfg``'s frames, step and crop): S segments, one clip per equal
  segment (random position and a random resized crop per segment when ``train``, else centred
  and V spatial views; ``train`` forces V = 1). Images (a TFDS image source):
  ``"image": uint8 [B, H, W, C]`` instead of ``"video"``.

  ``repeat=False``: one pass, shuffled if ``train``. Every host gets the same number of batches:
  its shard is padded to ``ceil(ceil(n / shard_count) / B) * B`` with repeats marked
  ``valid=False`` (mask them out of metrics). ``repeat=True``: infinite, reshuffled every epoch
  when ``train``, every element valid.
  """
  cfg = data_cfg
  clip = ClipSpec.of(cfg) if clip is None else clip
  seed = cfg.seed if seed is None else seed
  tracker = failure_tracker or FailureTracker(cfg.max_failure_fraction, cfg.failure_confidence)
  src = sources_lib.load_source(index_path, cfg.tfds_data_dir)
  n = len(src)
  tracker.bind([(index_path, n)])
  if n == 0:
    raise DataPipelineError(f"{index_path} holds no samples (no video listed, or none found); "
                            "give an index, directory or dataset with entries")
  if repeat:
    ds = grain.MapDataset.range(n)[shard_index::shard_count].seed(seed)
    if train:
      ds = ds.shuffle()
    ds = ds.repeat()
  else:
    per_shard = math.ceil(math.ceil(n / shard_count) / batch_size) * batch_size
    ds = grain.MapDataset.range(per_shard).seed(seed)
    if train:
      ds = ds.shuffle()
    ds = ds.map(_EvalPositions(n, shard_index, shard_count))
  loader = _Loader(
      src, mode="image" if src.kind == "image" else "eval", train=train,
      num_frames=clip.frames, frame_step=clip.frame_step,
      crop_size=clip.size, num_clips=clip.segments, num_views=1 if train else clip.views,
      scale=cfg.probe_random_resize_scale, ratio=cfg.probe_random_resize_aspect_ratio,
      flip=cfg.probe_horizontal_flip, short_policy=cfg.short_video_policy,
      allow_overlap=cfg.eval_allow_segment_overlap, decode_threads=cfg.decode_threads,
      tracker=tracker, max_retries=cfg.max_retries_per_sample)
  return _to_batches(ds.random_map(loader), cfg, batch_size, finite=not repeat)
