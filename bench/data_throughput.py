"""Input pipeline throughput, 16 frames x stride 4 at 224 px, on any index.

    python bench/data_throughput.py --index /data/k400/train.csv        # your own videos
    python bench/data_throughput.py --make-footage /tmp/footage          # camera-like test footage
    python bench/data_throughput.py                                      # the synthetic set

Measures, and prints as one line of JSON:

- ``stages``: one process, the same ``--samples`` videos of the index (cycled), per decoding
  setting (``--decode-threads``, and with ``--compare-plain`` also the decoder without skipping
  unneeded frames): seconds per clip in PyAV decoding (seek + decode + rgb24 conversion of the 16
  needed frames) and in the train transform (random resized crop to 224 + flip), both as wall
  time and as this process's CPU time (all its threads), and ``clips_per_s_per_core`` = 1 /
  (CPU seconds of decode + transform): what one core sustains, the figure that says how many
  cores keep one accelerator fed. CPU time is what the loading costs whatever else runs on the
  machine; wall time is what this run saw;
- ``pipeline``: the full grain pretraining pipeline (``make_pretrain_dataset``) with ``--workers``
  worker processes, one loading thread each: clips/s in total and per worker, after a warm-up
  that absorbs the worker start-up;
- ``in_process``: the same with ``num_workers=0`` and ``--threads`` loading threads (PyAV and
  Pillow release the GIL, so threads scale too, without worker start-up or IPC).

``stages`` also gives decoding's share of system CPU time (``decode_system_share``) and its minor
page faults per clip (memory touched for the first time).

``--make-footage DIR`` first writes the camera-like H.264 set of ``tests/video_files.py:
write_footage`` into DIR (``FOOTAGE``: 568x320 (Kinetics' usual 320 px short side) and 640x360
with keyframes every 250 frames, 640x360 every 60, 1280x720 every 250; 300 frames at 30 fps each; x264 ``medium``, CRF 23, 3 B-frames) with an
index per file and one for all, and measures that set. Figures, commands and machine:
BENCHMARKS.md ("Input pipeline").
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
# The footage writer lives with the tests' other video-file builders.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from jepa_jax.data import decode  # noqa: E402
from jepa_jax.data import pipeline  # noqa: E402
from jepa_jax.data import sources  # noqa: E402
from jepa_jax.data import synthetic  # noqa: E402
from jepa_jax.data import transforms  # noqa: E402
import video_files  # noqa: E402

# name: (width, height, keyframe interval); 300 frames at 30 fps each.
FOOTAGE = {"footage_568x320_gop250": (568, 320, 250),
           "footage_640x360_gop250": (640, 360, 250),
           "footage_640x360_gop60": (640, 360, 60),
           "footage_1280x720_gop250": (1280, 720, 250)}
FOOTAGE_FRAMES = 300


def _usage() -> tuple:
  """(user CPU s, system CPU s, minor page faults) of this process so far."""
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime, r.ru_stime, r.ru_minflt


def make_footage(directory: str, names=None, num_frames: int = FOOTAGE_FRAMES) -> dict:
  """Write the test footage (skipping files already there); {name: index path}, plus "all"."""
  os.makedirs(directory, exist_ok=True)
  indexes = {}
  for i, name in enumerate(names or FOOTAGE):
    width, height, keyint = FOOTAGE[name]
    path = os.path.join(directory, name + ".mp4")
    if not os.path.exists(path):
      video_files.write_footage(path + ".part.mp4", width, height, num_frames, keyint=keyint, seed=i)
      os.replace(path + ".part.mp4", path)
    indexes[name] = os.path.join(directory, name + ".csv")
    with open(indexes[name], "w") as f:
      f.write(name + ".mp4\n")
  indexes["all"] = os.path.join(directory, "index.csv")
  with open(indexes["all"], "w") as f:
    f.writelines(n + ".mp4\n" for n in (names or FOOTAGE))
  return indexes


def stage_times(cfg, index, samples: int, threads: int = 1, skip_unneeded: bool = True,
                seed: int = 0) -> dict:
  """Decode and transform ``samples`` clips in this thread; wall and CPU seconds per clip."""
  src = sources.read_index(index)
  rng = np.random.default_rng(seed)
  wall = {"decode": 0.0, "transform": 0.0}
  cpu = {"decode": 0.0, "transform": 0.0}
  # Of decoding, from getrusage alone (one clock, so the share cannot pass 1): system and all CPU
  # time, and minor page faults (fresh memory touched).
  sys_cpu = usage_cpu = faults = 0.0
  for i in range(samples):
    path = src.path(i % len(src))
    w0, c0, u0 = time.perf_counter(), time.process_time(), _usage()
    clip = decode.read_video_clips(path, cfg.num_frames, cfg.frame_step, 1, rng, threads=threads,
                                   skip_unneeded=skip_unneeded)[0]
    w1, c1, u1 = time.perf_counter(), time.process_time(), _usage()
    transforms.train_transform(clip, rng, cfg.crop_size, cfg.random_resize_scale,
                               cfg.random_resize_aspect_ratio, cfg.horizontal_flip)
    w2, c2 = time.perf_counter(), time.process_time()
    wall["decode"] += w1 - w0
    wall["transform"] += w2 - w1
    cpu["decode"] += c1 - c0
    cpu["transform"] += c2 - c1
    sys_cpu += u1[1] - u0[1]
    usage_cpu += (u1[0] - u0[0]) + (u1[1] - u0[1])
    faults += u1[2] - u0[2]
  per = lambda x: round(x / samples, 4)  # noqa: E731
  return dict(
      decode_threads=threads, skip_unneeded=skip_unneeded,
      decode_s_per_clip=per(wall["decode"]), transform_s_per_clip=per(wall["transform"]),
      decode_cpu_s_per_clip=per(cpu["decode"]), transform_cpu_s_per_clip=per(cpu["transform"]),
      decode_share=round(cpu["decode"] / (cpu["decode"] + cpu["transform"]), 3),
      decode_system_share=round(sys_cpu / max(usage_cpu, 1e-9), 3),
      decode_page_faults_per_clip=round(faults / samples),
      clips_per_s_wall=round(samples / (wall["decode"] + wall["transform"]), 2),
      clips_per_s_per_core=round(samples / (cpu["decode"] + cpu["transform"]), 2))


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


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x.strip()]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--index", default=None,
                 help="index file / directory / tfds spec to read (default: the synthetic set)")
  p.add_argument("--make-footage", default=None, metavar="DIR",
                 help="write the camera-like test footage into DIR and measure it")
  p.add_argument("--footage", default=",".join(FOOTAGE),
                 help="which footage files --make-footage writes and reads")
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
  p.add_argument("--decode-threads", default="1",
                 help="libavcodec threads per decode to time in `stages` (0 = automatic)")
  p.add_argument("--compare-plain", action="store_true",
                 help="also time decoding without skipping unneeded frames")
  p.add_argument("--workers", default="1,2", help="worker-process counts, 1 thread each")
  p.add_argument("--threads", default="1,2",
                 help="thread counts to time in-process (num_workers=0); empty to skip")
  args = p.parse_args(argv)

  if args.make_footage:
    index = make_footage(args.make_footage, args.footage.split(","))["all"]
  elif args.index:
    index = args.index
  else:
    index = synthetic.ensure_synthetic(args.synthetic_dir, args.num_videos, seed=0)
  cfg = pipeline.default_data_config()
  cfg.datasets = [index]
  cfg.crop_size, cfg.num_frames, cfg.frame_step = args.crop_size, args.num_frames, args.frame_step
  stages = [stage_times(cfg, index, args.samples, t) for t in _ints(args.decode_threads)]
  if args.compare_plain:
    stages += [stage_times(cfg, index, args.samples, t, skip_unneeded=False)
               for t in _ints(args.decode_threads)]
  result = dict(
      bench="data_throughput", index=index,
      crop_size=args.crop_size, num_frames=args.num_frames, frame_step=args.frame_step,
      batch_size=args.batch_size, cpus=os.cpu_count(),
      stages=stages,
      pipeline=[pipeline_rate(cfg, w, args.batch_size, args.batches, args.warmup)
                for w in _ints(args.workers)],
      in_process=[pipeline_rate(cfg, 0, args.batch_size, args.batches, args.warmup, t)
                  for t in _ints(args.threads)],
  )
  print(json.dumps(result))


if __name__ == "__main__":
  main()
