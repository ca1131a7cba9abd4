"""Low-shot splits (the paper's Table 7): a fixed fraction of the labelled set, per-class balanced.

``balanced_subset(labels, fraction, seed)`` keeps ``max(1, round(fraction * n_c))`` examples of
every class c (so 5% of K400, ~600 videos per class, is ~30 per class, as the paper's "~29 samples
per class"). Each class draws from its own generator seeded by ``(seed, class)``: the split is a
pure function of the labels, the fraction and the seed, and one class's draw does not depend on
which other classes exist. The paper takes 3 random splits (seeds) per fraction and reports mean
and standard deviation.
"""
import os

import numpy as np

from jepa_jax import paths
from jepa_jax.errors import ConfigError


def balanced_subset(labels, fraction: float, seed: int) -> np.ndarray:
  """Sorted indices into ``labels`` of a per-class balanced ``fraction`` (all for fraction >= 1)."""
  labels = np.asarray(labels)
  if not 0.0 < fraction <= 1.0:
    raise ConfigError(f"low-shot fraction must be in (0, 1], got {fraction}")
  if fraction >= 1.0:
    return np.arange(len(labels))
  if np.any(labels < 0):
    raise ConfigError("low-shot splits need labelled data; the index has unlabelled (-1) entries")
  keep = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    k = max(1, int(round(fraction * len(members))))
    rng = np.random.default_rng([int(seed), int(c)])
    keep.append(rng.choice(members, size=k, replace=False))
  return np.sort(np.concatenate(keep))


def write_subset_index(index_path: str, indices, out_path: str) -> str:
  """Write the chosen lines of an index file (absolute paths), for streaming probe training."""
  from jepa_jax.data import sources  # pylint: disable=import-outside-toplevel
  src = sources.read_index(index_path)
  os.makedirs(os.path.dirname(out_path), exist_ok=True)
  with paths.atomic_write(out_path) as f:
    for i in indices:
      f.write(f"{os.path.abspath(src.path(int(i)))} {src.label(int(i))}\n")
  return out_path


def mean_std(values) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof=1, the conservative one for 3 seeds); std 0 for a
  single value."""
  v = np.asarray(values, np.float64)
  return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else 0.0)
