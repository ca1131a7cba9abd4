"""Encoder features of a whole split, kept in memory: the eval's feature cache.

``extract_features`` runs a jitted token function once over a source's batches and keeps one row
per source example (``FeatureCache``); ``cache_batches`` serves fixed-size (padded, weighted)
batches from it, so a probe trains for many epochs on tokens computed once. The ``extract``
command (``jepa_jax.extract``) writes features to files instead; both read clips the same way.
"""
import dataclasses
import logging
import math
import time
from typing import Callable, Optional

import numpy as np

from jepa_jax.data.failures import DataPipelineError

log = logging.getLogger(__name__)


def pixels_of(batch: dict) -> np.ndarray:
  return batch["video"] if "video" in batch else batch["image"]




@dataclasses.dataclass
class FeatureCache:
  """Encoder tokens of a split: ``tokens [n, V, L, D]``, ``labels [n]``, ``index [n]`` (the
  position in the source, so other label files of the same videos can be joined)."""
  tokens: np.ndarray
  labels: np.ndarray
  index: np.ndarray

  def __len__(self):
    return len(self.labels)

  def subset(self, rows) -> "FeatureCache":
    return FeatureCache(self.tokens[rows], self.labels[rows], self.index[rows])

  def relabel(self, labels_by_index: np.ndarray) -> "FeatureCache":
    return FeatureCache(self.tokens, np.asarray(labels_by_index)[self.index].astype(np.int32),
                        self.index)


def extract_features(token_fn: Callable, encoder_params, batches, placer,
                     cache_dtype=np.float32) -> FeatureCache:
  """Run ``token_fn`` (jitted) over ``batches`` once; keep the valid rows, one per source index.
  ``placer``: an ``eval.placement.Placer`` (batches split over the devices)."""
  toks, labels, index = [], [], []
  seen = set()
  t0, count = time.time(), 0
  for batch in batches:
    t = placer.gather(token_fn(encoder_params, placer.batch(pixels_of(batch))))
    valid = placer.gather(batch.get("valid", np.ones(len(batch["label"]), bool)))
    lab = placer.gather(batch["label"])
    idx = placer.gather(batch["index"])
    for r in range(len(lab)):
      if valid[r] and int(idx[r]) not in seen:
        seen.add(int(idx[r]))
        toks.append(t[r].astype(cache_dtype))
        labels.append(lab[r])
        index.append(idx[r])
    count += len(lab)
  if not toks:
    raise DataPipelineError("feature extraction produced no examples: is the source empty?")
  log.info("encoded %d examples (%d rows read) in %.1fs", len(toks), count, time.time() - t0)
  order = np.argsort(index)
  return FeatureCache(np.stack(toks)[order], np.asarray(labels, np.int32)[order],
                      np.asarray(index, np.int64)[order])


def cache_batches(cache: FeatureCache, batch_size: int, rng: Optional[np.random.Generator]):
  """Fixed-size batches ``(tokens, labels, weights)`` over a cache: shuffled when ``rng`` is given;
  the last batch is padded with weight-0 repeats, so every example counts exactly once and every
  step has the same shape (one compilation)."""
  n = len(cache)
  order = rng.permutation(n) if rng is not None else np.arange(n)
  steps = math.ceil(n / batch_size)
  pad = steps * batch_size - n
  order = np.concatenate([order, order[:pad] if pad <= n else np.resize(order, pad)])
  weights = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
  for s in range(steps):
    rows = order[s * batch_size:(s + 1) * batch_size]
    yield cache.tokens[rows], cache.labels[rows], weights[s * batch_size:(s + 1) * batch_size]


