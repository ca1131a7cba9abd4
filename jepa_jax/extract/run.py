"""The extraction run: sources read in threads ahead of the encoder, windows of several videos
batched per encoder pass over every local device, each video written when its windows are done."""
import concurrent.futures
import dataclasses
import logging
import os
import time
from typing import Iterator

import numpy as np

from jepa_jax.errors import ConfigError
from jepa_jax.extract.features import build_feature_fn, load_models
from jepa_jax.extract.output import FORMAT_VERSION, Output
from jepa_jax.extract.reading import describe, file_name, items_of, open_sources, read_windows
from jepa_jax.extract.settings import settings_from_args

log = logging.getLogger(__name__)


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
  """Extract (the package docstring); returns counts ``{done, skipped_done, failed, windows}``."""
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
