"""Input pipeline throughput on the synthetic set at 224 px, 16 frames x stride 4.

Measures, and prints as one line of JSON:

- ``stages``: one process, one thread, the same ``--samples`` videos: seconds per clip spent in
  PyAV decoding (seek + decode + rgb24 conversion of the 16 needed frames) and in the train
  transform (random resized crop to 224 + flip), and the decode share of their sum;
- ``pipeline``: the full grain pretraining pipeline (``make_pretrain_dataset``) with 1 and 2
  worker processes (``--workers``), one loading thread per worker: clips/s in total and per
  worker, after a warm-up that absorbs the worker start-up;
- ``in_process``: the same with ``num_workers=0`` and 1 or 2 loading threads (``--threads``):
  PyAV and Pillow release the GIL, so threads scale too, without worker start-up or IPC.

Figures, with the command, machine and date: BENCHMARKS.md ("Input pipeline").

The synthetic videos are small (96-160 px), so at 224 px the crop is an upscale and decoding is
cheap; real 256-340 px footage decodes several times slower per frame.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jepa_jax.data import decode  # noqa: E402
from jepa_jax.data import pipeline  # noqa: E402
from jepa_jax.data import sources  # noqa: E402
from jepa_jax.data import synthetic  # noqa: E402
from jepa_jax.data import transforms  # noqa: E402


def stage_times(cfg, index, samples: int, seed: int = 0) -> dict:
  src = sources.read_index(index)
  rng = np.random.default_rng(seed)
  t_dec = t_tf = 0.0
  for i in range(samples):
    path = src.path(i % len(src))
    t0 = time.perf_counter()
    clip = decode.read_video_clips(path, cfg.num_frames, cfg.frame_step, 1, rng)[0]
    t1 = time.perf_counter()
    transforms.train_transform(clip, rng, cfg.crop_size, cfg.random_resize_scale,
                               cfg.random_resize_aspect_ratio, cfg.horizontal_flip)
    t2 = time.perf_counter()
    t_dec += t1 - t0
    t_tf += t2 - t1
  return dict(decode_s_per_clip=round(t_dec / samples, 4),
              transform_s_per_clip=round(t_tf / samples, 4),
              decode_share=round(t_dec / (t_dec + t_tf), 3))


def pipeline_rate(cfg, workers: int, batch_size: int, batches: int, warmup: int,
                  threads: int = 1) -> dict:
  cfg = cfg.copy_and_resolve_references()
  cfg.num_workers, cfg.num_threads = workers, threads
  it = iter(pipeline.make_pretrain_dataset(cfg, batch_size=batch_size, seed=0))
  for _ in range(warmup):
    next(it)
  t0 = time.perf_counter()
  for _ in range(batches):
    next(it)
  dt = time.perf_counter() - t0
  total = batches * batch_size / dt
  return dict(workers=workers, threads=threads, clips_per_s=round(total, 1),
              clips_per_s_per_worker=round(total / max(workers, 1), 1))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--synthetic-dir", default=os.path.join(tempfile.gettempdir(),
                                                         "jepa_jax_synthetic_64"))
  p.add_argument("--num-videos", type=int, default=64)
  p.add_argument("--crop-size", type=int, default=224)
  p.add_argument("--num-frames", type=int, default=16)
  p.add_argument("--frame-step", type=int, default=4)
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--batches", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--samples", type=int, default=48)
  p.add_argument("--workers", default="1,2", help="worker-process counts, 1 thread each")
  p.add_argument("--threads", default="1,2",
                 help="thread counts to time in-process (num_workers=0); empty to skip")
  args = p.parse_args(argv)

  index = synthetic.ensure_synthetic(args.synthetic_dir, args.num_videos, seed=0)
  cfg = pipeline.default_data_config()
  cfg.datasets = [index]
  cfg.crop_size, cfg.num_frames, cfg.frame_step = args.crop_size, args.num_frames, args.frame_step
  result = dict(
      bench="data_throughput",
      crop_size=args.crop_size, num_frames=args.num_frames, frame_step=args.frame_step,
      batch_size=args.batch_size, cpus=os.cpu_count(),
      stages=stage_times(cfg, index, args.samples),
      pipeline=[pipeline_rate(cfg, int(w), args.batch_size, args.batches, args.warmup)
                for w in args.workers.split(",") if w],
      in_process=[pipeline_rate(cfg, 0, args.batch_size, args.batches, args.warmup, int(t))
                  for t in args.threads.split(",") if t],
  )
  print(json.dumps(result))


if __name__ == "__main__":
  main()
