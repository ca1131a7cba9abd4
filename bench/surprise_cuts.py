"""Does the surprise timeline find a cut? Videos made by cutting from one synthetic video to
another, scored by ``python -m jepa_jax.surprise``.

    python bench/surprise_cuts.py --checkpoint workdir/demo [--pairs 5] [--cut 77]

Video ``2i`` of ``data/synthetic/videos`` up to frame ``--cut``, then video ``2i + 1`` from that
frame on (both cropped to their common size, H.264 at 30 fps), for ``i < --pairs``; each scored
with the surprise command's defaults. Prints one JSON line per video: the start frame of the
window with the highest error, whether that window spans the cut, and the mean error of the
windows that span it against that of the others. Figures: README, "Looking at the features".
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import av
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from jepa_jax import surprise  # noqa: E402
import video_files  # noqa: E402


def frames_of(path: str) -> np.ndarray:
  with av.open(path) as container:
    return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--checkpoint", required=True, help="a pretraining workdir")
  p.add_argument("--videos", default="data/synthetic/videos")
  p.add_argument("--pairs", type=int, default=5)
  p.add_argument("--cut", type=int, default=77, help="the frame the second video starts at")
  args = p.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    for i in range(args.pairs):
      a, b = (frames_of(os.path.join(args.videos, f"vid_{k:05d}.mp4")) for k in (2 * i, 2 * i + 1))
      h, w = min(a.shape[1], b.shape[1]), min(a.shape[2], b.shape[2])
      path = video_files.write_frames(os.path.join(tmp, f"cut_{i}.mp4"), np.concatenate(
          [a[:args.cut, :h, :w], b[args.cut:, :h, :w]]))
      out = os.path.join(tmp, f"out_{i}")
      surprise.run(surprise.parse_args(["--checkpoint", args.checkpoint, "--out", out, path]))
      with open(os.path.join(out, f"0000000_cut_{i}.json")) as f:
        windows = json.load(f)["windows"]
      errors = np.array([x["error"] for x in windows])
      spans = np.array([x["start_frame"] < args.cut < x["end_frame"] for x in windows])
      top = int(np.argmax(errors))
      print(json.dumps(dict(video=i, top_window_start=windows[top]["start_frame"],
                            top_spans_cut=bool(spans[top]),
                            mean_error_spanning=round(float(errors[spans].mean()), 4),
                            mean_error_elsewhere=round(float(errors[~spans].mean()), 4))),
            flush=True)


if __name__ == "__main__":
  main()
