"""When the data-failure rule stops a run: for indexes with a given fraction of unreadable entries,
how many seeds stop, and at which sample.

    python bench/data_failure_rule.py                      # the rule (jepa_jax/data/failures.py)
    python bench/data_failure_rule.py --rule before-27     # the rule it replaced, for comparison

Runs the pretraining pipeline's own sampling: ``pipeline.source_order`` (grain's shuffle of the
entries, reshuffled every epoch) read by ``pipeline._Loader`` (its replacement draws, known-bad
skips and ``FailureTracker``), with only the decoding replaced: entry j fails iff it is one of the
bad ones, a random set of ``round(fraction * entries)`` drawn per seed (seed s also seeds the
shuffle). Prints one JSON line: per fraction, the seeds that stopped and the samples at which
they did. Figures: README, "data failures".
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jepa_jax.data import decode, failures, pipeline  # noqa: E402


class _Index:
  """``n`` entries, known only by number."""
  kind = "video_file"
  name = "simulated"

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def describe(self, j):
    return f"entry {j}"


class _SimulatedLoader(pipeline._Loader):  # noqa: SLF001 - the pipeline's loader, decoding aside
  def __init__(self, n, bad, tracker):
    super().__init__(_Index(n), mode="pretrain", train=True, num_frames=1, frame_step=1,
                     crop_size=1, tracker=tracker)
    self.bad = set(int(b) for b in bad)

  def load(self, j, rng):
    if j in self.bad:
      raise decode.VideoReadError("missing", "simulated")
    return np.zeros((), np.uint8), -1


class RuleBefore27(failures.FailureTracker):
  """The rule issue 27 replaced: from the 50th requested sample on, stop when more than
  ``max_failure_fraction`` of the requested samples needed a replacement."""

  def check(self):
    if self.requests >= 50 and self.replaced > self.max_failure_fraction * self.requests:
      raise failures.DataPipelineError(f"{self.replaced} of {self.requests} samples replaced")


def stop_sample(fraction: float, seed: int, *, entries: int = 1000, samples: int = 2000,
                rule: str = "current", max_failure_fraction: float = 0.1) -> int | None:
  """The 1-based sample at which the rule stops a run of ``samples`` over an index of ``entries``
  with ``fraction`` of them bad (None: it did not stop)."""
  cls = RuleBefore27 if rule == "before-27" else failures.FailureTracker
  tracker = cls(max_failure_fraction)
  tracker.bind([("simulated", entries)])
  bad = np.random.default_rng(seed).choice(entries, round(fraction * entries), replace=False)
  ds = pipeline.source_order(entries, seed).random_map(_SimulatedLoader(entries, bad, tracker))
  for i in range(samples):
    try:
      ds[i]
    except failures.DataPipelineError:
      return i + 1
  return None


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--entries", type=int, default=1000)
  p.add_argument("--samples", type=int, default=2000)
  p.add_argument("--seeds", type=int, default=20)
  p.add_argument("--fractions", default="0.05,0.08,0.1,0.15,0.25,1.0")
  p.add_argument("--rule", choices=("current", "before-27"), default="current")
  args = p.parse_args(argv)
  logging.getLogger("jepa_jax.data.failures").setLevel(logging.ERROR)  # one line per bad entry
  out = {"rule": args.rule, "entries": args.entries, "samples": args.samples, "seeds": args.seeds,
         "fractions": {}}
  for fraction in map(float, args.fractions.split(",")):
    stops = [stop_sample(fraction, s, entries=args.entries, samples=args.samples, rule=args.rule)
             for s in range(args.seeds)]
    at = sorted(s for s in stops if s is not None)
    out["fractions"][str(fraction)] = {
        "stopped": len(at), "median_stop_sample": int(np.median(at)) if at else None,
        "stop_samples": at}
  print(json.dumps(out))


if __name__ == "__main__":
  main()
