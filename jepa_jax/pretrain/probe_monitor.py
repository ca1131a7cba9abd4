"""The online probe monitor: does the target encoder's representation carry a label, step by step?

With ``config.monitor_probe.every = N > 0`` the trainer calls ``ProbeMonitor`` at step 0 of a fresh
run and every N steps: it encodes fixed labelled clips with the current target encoder (eval's
``make_token_fn`` and ``extract_features`` under the trainer's mesh), pools the tokens, fits a
cheap deterministic probe by k-fold cross-validation on the host and returns
``probe/<label>/<kind>`` (top-1, percent) and ``probe/seconds``. Usage and the demo's curve:
README, "Watching what the encoder learns".

Choices: ``index`` is a labelled index file or synthetic label names (comma-separated ones share
the clips); ``num_clips`` entries spread evenly over it (a class-sorted index still gives every
class), decoded once; clip i in fold ``i % folds`` (held out from the probe's fit, not from
pretraining); ``pooling`` ``mean`` / ``time`` / ``flat`` (every token: the ridge in dual form);
``kind`` ``ridge`` (one-hot targets, standardised features, penalty ``ridge_alpha`` x the Gram
matrix's mean diagonal, so scale-free) and/or ``knn`` (cosine, ``knn_k``, ties to the nearer),
both float64 numpy, so every process and rerun gets the same numbers.
"""
import logging
import os
import tempfile
import time
from typing import Optional

import jax
import numpy as np

from jepa_jax import sharding
from jepa_jax.data import synthetic
from jepa_jax.errors import ConfigError

log = logging.getLogger(__name__)

KINDS = ("ridge", "knn")
POOLINGS = ("mean", "time", "flat")


# --- the probes (pure numpy) ----------------------------------------------------------------------

def pool_tokens(tokens: np.ndarray, pooling: str, grid: tuple) -> np.ndarray:
  """``tokens [n, L, D]`` of clips on a ``grid`` (t, h, w) token grid -> features ``[n, F]``."""
  n, length, d = tokens.shape
  if pooling == "mean":
    return tokens.mean(axis=1)
  if pooling == "time":
    t = grid[0]
    return tokens.reshape(n, t, length // t, d).mean(axis=2).reshape(n, t * d)
  if pooling == "flat":
    return tokens.reshape(n, length * d)
  raise ConfigError(f"config.monitor_probe.pooling must be one of {POOLINGS}, got {pooling!r}")


def _standardise(fit: np.ndarray, test: np.ndarray):
  mean, std = fit.mean(axis=0), fit.std(axis=0)
  std = np.where(std > 1e-12, std, 1.0)
  return (fit - mean) / std, (test - mean) / std


def ridge_predict(fit_x, fit_y, test_x, num_classes: int, alpha: float) -> np.ndarray:
  """Class predictions of ridge regression on one-hot targets (with an intercept), solved on the
  smaller side of the design matrix (the dual form when features outnumber examples)."""
  x, tx = _standardise(np.asarray(fit_x, np.float64), np.asarray(test_x, np.float64))
  y = np.eye(num_classes)[fit_y]
  y_mean = y.mean(axis=0)
  y = y - y_mean
  n, f = x.shape
  if f <= n:
    gram = x.T @ x
    lam = alpha * np.trace(gram) / f
    w = np.linalg.solve(gram + lam * np.eye(f), x.T @ y)
    scores = tx @ w
  else:
    gram = x @ x.T
    lam = alpha * np.trace(gram) / n
    dual = np.linalg.solve(gram + lam * np.eye(n), y)
    scores = (tx @ x.T) @ dual
  return np.argmax(scores + y_mean, axis=1)


def knn_predict(fit_x, fit_y, test_x, num_classes: int, k: int) -> np.ndarray:
  """Majority vote of the ``k`` most cosine-similar fit examples; a tie goes to the class whose
  voters rank nearer (each vote weighs ``1 + (k - rank) / k**2``, rank 0 the nearest)."""
  x, tx = _standardise(np.asarray(fit_x, np.float64), np.asarray(test_x, np.float64))
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  tx = tx / np.maximum(np.linalg.norm(tx, axis=1, keepdims=True), 1e-12)
  k = min(k, len(x))
  # A stable sort on -similarity: equal similarities keep the fit order (deterministic).
  nearest = np.argsort(-(tx @ x.T), axis=1, kind="stable")[:, :k]
  weights = 1.0 + (k - np.arange(k)) / k**2
  votes = np.zeros((len(tx), num_classes))
  np.add.at(votes, (np.arange(len(tx))[:, None], np.asarray(fit_y)[nearest]), weights[None, :])
  return np.argmax(votes, axis=1)


def cross_validated_accuracy(features, labels, kind: str, folds: int, *, ridge_alpha: float = 1.0,
                             knn_k: int = 5, num_classes: Optional[int] = None) -> float:
  """Percent of examples predicted right by a ``kind`` probe fitted on the other folds (example i
  is in fold ``i % folds``)."""
  features, labels = np.asarray(features), np.asarray(labels, np.int64)
  num_classes = num_classes or int(labels.max()) + 1
  fold = np.arange(len(labels)) % folds
  correct = 0
  for f in range(folds):
    test, fit = fold == f, fold != f
    if not test.any():
      continue
    if kind == "ridge":
      pred = ridge_predict(features[fit], labels[fit], features[test], num_classes, ridge_alpha)
    elif kind == "knn":
      pred = knn_predict(features[fit], labels[fit], features[test], num_classes, knn_k)
    else:
      raise ConfigError(f"config.monitor_probe.kind: unknown probe {kind!r}; use one of {KINDS}")
    correct += int(np.sum(pred == labels[test]))
  return 100.0 * correct / len(labels)


# --- the monitor ----------------------------------------------------------------------------------

def kinds_of(kind: str) -> tuple:
  """``"ridge"``, ``"knn"`` or ``"ridge,knn"`` -> the probe kinds to fit."""
  kinds = tuple(k.strip() for k in str(kind).split(",") if k.strip())
  bad = [k for k in kinds if k not in KINDS]
  if not kinds or bad:
    raise ConfigError(f"config.monitor_probe.kind={kind!r}: use ridge, knn or 'ridge,knn'")
  return kinds


def check_config(mp) -> None:
  """Refuse impossible ``config.monitor_probe`` settings (one line each; ``ValueError``)."""
  every = mp.get("every", 0) or 0
  if not isinstance(every, int) or every < 0:
    raise ConfigError(f"config.monitor_probe.every={every!r} must be a number of steps (0 = off)")
  if not every:
    return
  if not mp.get("index"):
    raise ConfigError("config.monitor_probe.every is set but config.monitor_probe.index is empty: "
                      f"give a labelled index file or a synthetic label ({', '.join(LABELS)})")
  kinds_of(mp.kind)
  if mp.pooling not in POOLINGS:
    raise ConfigError(f"config.monitor_probe.pooling must be one of {POOLINGS}, got {mp.pooling!r}")
  if not isinstance(mp.folds, int) or mp.folds < 2:
    raise ConfigError(f"config.monitor_probe.folds={mp.folds!r} must be an integer >= 2")
  if not isinstance(mp.num_clips, int) or mp.num_clips < 2 * mp.folds:
    raise ConfigError(f"config.monitor_probe.num_clips={mp.num_clips!r} must be at least "
                      f"2 x folds ({2 * mp.folds})")


LABELS = ("motion",) + synthetic.ATTRIBUTES


def is_synthetic_labels(index: str) -> bool:
  """``index`` is one synthetic label name or several, comma-separated (``"speed,direction"``)."""
  names = [n.strip() for n in str(index).split(",")]
  return bool(names) and all(n in LABELS for n in names)


def resolve_index(index: str, data_config) -> dict:
  """``{label name: index file}`` of ``config.monitor_probe.index``: synthetic label names pick
  the synthetic set's ``index_<label>.csv`` files (which list the same videos in the same order;
  the set is generated if absent); an index file is named after its file."""
  if is_synthetic_labels(index):
    if not data_config.get("synthetic_dir"):
      raise ConfigError(f"config.monitor_probe.index={index!r} names synthetic labels but "
                        "config.data.synthetic_dir is empty; give a labelled index file instead")
    root = os.path.dirname(synthetic.ensure_synthetic(
        data_config.synthetic_dir, data_config.synthetic_num_videos,
        data_config.get("synthetic_seed", 0)))
    names = [n.strip() for n in index.split(",")]
    return {n: os.path.join(root, "index.csv" if n == "motion" else f"index_{n}.csv")
            for n in names}
  if not os.path.exists(index):
    raise ConfigError(f"config.monitor_probe.index={index!r} is neither a labelled index file nor "
                      f"synthetic labels ({', '.join(LABELS)}, or several comma-separated)")
  return {os.path.splitext(os.path.basename(index))[0]: index}


def spread_rows(n: int, count: int) -> np.ndarray:
  """``min(count, n)`` row numbers spread evenly over ``[0, n)`` (all of them when count >= n)."""
  if count >= n:
    return np.arange(n)
  return np.unique(np.floor(np.arange(count) * (n / count)).astype(np.int64))


class ProbeMonitor:
  """Decodes the fixed clips once (``__init__``); ``__call__(step, target_params)`` -> scalars."""

  def __init__(self, mp, exp):
    from jepa_jax import data as data_lib
    from jepa_jax.data import sources as sources_lib
    from jepa_jax.eval import encoder as enc_lib
    from jepa_jax.eval import lowshot
    from jepa_jax.eval.placement import Placer
    check_config(mp)
    self.every = int(mp.every)
    self.kinds = kinds_of(mp.kind)
    self.pooling, self.folds = mp.pooling, int(mp.folds)
    self.ridge_alpha, self.knn_k = float(mp.ridge_alpha), int(mp.knn_k)
    self.grid = exp.encoder.grid
    d = exp.config.data
    indexes = resolve_index(str(mp.index), d)
    index = next(iter(indexes.values()))  # the clips (every synthetic index lists the same ones)
    source = sources_lib.read_index(index)
    rows = spread_rows(len(source), int(mp.num_clips))
    # Each label's classes, of the clips in the order ``features`` returns them (index order).
    self.labels = {name: sources_lib.read_index(path).labels[rows]
                   for name, path in indexes.items()}
    for name, labels in self.labels.items():
      if labels.min() < 0:
        raise ConfigError(f"config.monitor_probe.index: {indexes[name]} has unlabelled (-1) "
                          "entries among the chosen clips; give an index with a label on every "
                          "line")
    self.placer = Placer(exp.mesh)
    nproc = jax.process_count()
    batch = int(mp.get("batch_size") or exp.batch_size)
    batch = max(nproc, batch - batch % nproc)
    t0 = time.perf_counter()
    # The subset is written per process to a local temporary file: nothing shared to race on.
    with tempfile.TemporaryDirectory(prefix="monitor_probe") as tmp:
      subset = lowshot.write_subset_index(index, rows, os.path.join(tmp, "index.csv"))
      dataset = data_lib.make_eval_dataset(
          d, subset, batch_size=batch // nproc, train=False, seed=0,
          shard_index=jax.process_index(), shard_count=nproc, repeat=False)
      self.batches = [dict(video=b["video"], label=b["label"], index=b["index"],
                           valid=b["valid"]) for b in dataset]
    self.num_clips = len(rows)
    token_fn = enc_lib.make_token_fn(exp.encoder)
    self._tokens = jax.jit(sharding.with_activation_sharding(token_fn, exp.mesh))
    log.info("Probe monitor: %d clips of %s (labels: %s), %s probe(s) on %s-pooled tokens, %d "
             "folds, every %d steps (clips decoded in %.1fs)", self.num_clips, index,
             ", ".join(self.labels),
             "+".join(self.kinds), self.pooling, self.folds, self.every,
             time.perf_counter() - t0)

  def due(self, step: int) -> bool:
    return step % self.every == 0

  def features(self, target_params) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features ``[n, F]`` of the fixed clips and their rows ``[n]`` (positions among the
    clips, ascending: all of them unless the decoder had to drop unreadable ones)."""
    from jepa_jax.eval.features import extract_features
    cache = extract_features(self._tokens, target_params, self.batches, self.placer)
    tokens = np.asarray(cache.tokens[:, 0], np.float64)  # one view
    return pool_tokens(tokens, self.pooling, self.grid), cache.index

  def __call__(self, step: int, target_params) -> dict:
    t0 = time.perf_counter()
    x, rows = self.features(target_params)
    out = {}
    for name, y in self.labels.items():
      for kind in self.kinds:
        out[f"probe/{name}/{kind}"] = cross_validated_accuracy(
            x, y[rows], kind, self.folds, ridge_alpha=self.ridge_alpha, knn_k=self.knn_k,
            num_classes=int(y.max()) + 1)
    out["probe/seconds"] = time.perf_counter() - t0
    return out
