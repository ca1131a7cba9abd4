"""Failure accounting of the input pipeline: which entries could not be read, and when to stop.

A ``FailureTracker`` counts each entry once: it remembers the entries tried and the bad ones with
their reason, so a known-bad entry is replaced without another decode and the rate it measures is
the dataset's, not the retries'. Its ``state()`` is plain JSON (checkpointed per process by the
trainer, restored by ``from_state``); examples carry the entries they skipped (``sample_record``),
so the trainer keeps the account from the batches even when worker processes read.

The stop rule is a one-sided exact test: with k bad among n distinct entries tried, stop when, had
at most ``max_failure_fraction`` of the index's N entries been bad, k or more among n would have a
probability below 1 - ``confidence`` (0.1%): the hypergeometric tail, since a shuffled epoch reads
without replacement. An index below the limit then almost never stops, one well above it stops
within a few hundred samples (README, "Pretraining at scale", measured). The tail only grows with n
at fixed k, so it is computed only when a new bad entry appears.
"""
from __future__ import annotations

import base64
import collections
import logging
import math
import threading
import zlib

import numpy as np
from scipy import stats

from jepa_jax.errors import ConfigError, UserError

log = logging.getLogger(__name__)


class DataPipelineError(UserError, RuntimeError):
  """The data cannot feed the run: too many samples failed, one could not be replaced, or a
  source is empty or of the wrong kind. The message names the source and the fix."""
  label = "Data error"


_HINTS = {
    "missing": "do the index's paths exist on this machine (wrong path prefix? unmounted disk?)",
    "empty_file": "are the files complete (an interrupted copy?)",
    "open_error": "are these video files (truncated, or another format named .mp4?)",
    "no_video_stream": "are these video files (audio-only or another format?)",
    "no_frames": "are the videos empty or corrupt?",
    "decode_error": "are the videos corrupt?",
    "too_short": ("videos are shorter than num_frames * frame_step with "
                  "short_video_policy='skip': use 'pad' or shorter clips"),
    "read_error": "is the dataset readable (TFDS data_dir, split)?",
    "transform_error": "odd frame sizes or shapes?",
}
# Reasons as small integers, for the per-example arrays; "other" for any reason not listed.
REASONS = (*_HINTS, "other")


def reason_code(reason: str) -> int:
  return REASONS.index(reason) if reason in REASONS else len(REASONS) - 1


def tail_probability(bad: int, tried: int, limit: float, population: int | None = None) -> float:
  """If at most ``limit`` of the entries were bad, the probability that ``tried`` distinct entries
  drawn at random hold ``bad`` or more bad ones: the exact hypergeometric tail for an index of
  ``population`` entries (draws without replacement), the binomial one when it is None."""
  if bad <= 0:
    return 1.0
  if population:
    return float(stats.hypergeom.sf(bad - 1, population, math.floor(limit * population + 1e-9), tried))
  return float(stats.binom.sf(bad - 1, tried, limit))


class FailureTracker:
  """Distinct entries tried and found bad (by reason), the stop rule, and the run's failed reads;
  logs each failing entry once. Thread-safe; picklable (grain worker processes get a copy).

  Entries are ints unique over all sources of a pipeline (source index + the source's offset).
  ``bind`` ties the tracker to the sources it counts (a restored account of other sources starts
  afresh) and sets the population for the finite-population correction.
  """

  def __init__(self, max_failure_fraction: float = 0.1, confidence: float = 0.999):
    if not 0 < confidence < 1:
      raise ConfigError(f"config.data.failure_confidence={confidence} must be in (0, 1)")
    self.max_failure_fraction = max_failure_fraction
    self.confidence = confidence
    self.sources: list | None = None  # [[spec, length], ...] the entries number
    self.population: int | None = None
    self.tried: set[int] = set()
    self.bad: dict[int, str] = {}  # entry -> reason
    self.failures = collections.Counter()  # distinct bad entries by reason
    self.examples = {}  # reason -> (description, detail) of the first failure seen
    self.bad_reads = 0  # bad entries met by samples, repeats included (sum of their bad_reads)
    self.requests = 0  # samples delivered or given up
    self.replaced = 0  # ... that needed a replacement
    self._checked = 0  # bad entries when the stop rule last ran
    self._lock = threading.Lock()

  def __getstate__(self):
    state = self.__dict__.copy()
    del state["_lock"]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def bind(self, sources: list) -> None:
    """Count entries of ``sources`` (``[(spec, length), ...]``); an account of other sources,
    restored from an earlier run over another index, is dropped (its entries mean others now)."""
    sources = [[str(s), int(n)] for s, n in sources]
    if self.sources is not None and self.sources != sources and self.tried:
      log.info("Data-failure account of %s dropped: the sources are now %s", self.sources, sources)
      self._clear()
    self.sources = sources
    self.population = sum(n for _, n in sources)

  def _clear(self):
    self._checked = 0
    self.tried.clear()
    self.bad.clear()
    self.failures.clear()
    self.examples.clear()
    self.bad_reads = 0

  @property
  def num_failures(self) -> int:
    """Distinct entries found bad."""
    return len(self.bad)

  def known_bad(self, entry: int) -> str | None:
    """The reason ``entry`` failed before, or None if it did not (or was never tried)."""
    return self.bad.get(entry)

  def read_ok(self, entry: int) -> None:
    with self._lock:
      self.tried.add(entry)

  def read_failed(self, entry: int, desc: str, err) -> None:
    """``entry`` (described as ``desc``) failed with ``err`` (a ``decode.VideoReadError``)."""
    with self._lock:
      first = entry not in self.bad
      if first:
        self._add_bad(entry, err.reason)
        self.examples.setdefault(err.reason, (desc, err.detail))
    if first:
      log.warning("skipping sample %s: %s", desc, err)

  def _add_bad(self, entry: int, reason: str) -> None:
    self.tried.add(entry)
    self.bad[entry] = reason
    self.failures[reason] += 1

  def sample_done(self, bad_reads: int) -> None:
    """One requested sample, delivered (or given up) after meeting ``bad_reads`` bad entries."""
    with self._lock:
      self.requests += 1
      self.replaced += bad_reads > 0
      self.bad_reads += bad_reads

  def add_batch(self, record: dict | None) -> int:
    """Account for a consumed batch (``batch_record``); returns its bad reads."""
    return 0 if record is None else self.add_examples(**record)

  def add_examples(self, index, bad_entries, bad_reasons) -> int:
    """Account for consumed examples (arrays of a batch: ``index`` [B], ``bad_entries`` and
    ``bad_reasons`` [B, R], -1 padded); returns their bad reads."""
    bad_entries = np.asarray(bad_entries).reshape(-1)
    codes = np.asarray(bad_reasons).reshape(-1)
    met = bad_entries >= 0
    with self._lock:
      self.tried.update(int(i) for i in np.asarray(index).reshape(-1))
      for entry, code in zip(bad_entries[met].tolist(), codes[met].tolist()):
        if entry not in self.bad:
          self._add_bad(entry, REASONS[code])
      self.bad_reads += int(met.sum())
    return int(met.sum())

  def tail(self) -> float:
    """``tail_probability`` of the entries tried so far (module docstring)."""
    with self._lock:
      k, n = len(self.bad), len(self.tried)
    return tail_probability(k, n, self.max_failure_fraction, self.population)

  def message(self) -> str:
    with self._lock:
      k, n = len(self.bad), len(self.tried)
      reason, count = self.failures.most_common(1)[0] if self.failures else ("?", 0)
      desc, detail = self.examples.get(reason, ("an entry read before a restart", "see its log"))
      reasons = dict(self.failures)
    return (f"{k} of the {n} distinct entries read are unreadable ({k / max(n, 1):.1%}). Most "
            f"common reason: '{reason}' ({count}x), e.g. {desc} ({detail}) -- "
            f"{_HINTS.get(reason, '?')}. All reasons: {reasons}.")

  def check(self) -> None:
    """Raises DataPipelineError if the fraction of bad entries is confidently above the limit."""
    k = len(self.bad)
    if k == self._checked:  # no new bad entry: the tail can only have grown
      return
    self._checked = k
    p = self.tail()
    if p < 1 - self.confidence:
      raise DataPipelineError(
          f"more than max_failure_fraction={self.max_failure_fraction} of the entries are "
          f"unreadable (p={p:.1e} if they were not): " + self.message() + " Fix or remove these "
          "files, or raise config.data.max_failure_fraction.")

  # --- resumable state --------------------------------------------------------------------

  def state(self) -> dict:
    """JSON-able account: sources, entries tried, bad entries with reasons, failed reads."""
    with self._lock:
      bad = sorted(self.bad.items())
      return {"sources": self.sources, "tried": _pack(self.tried),
              "bad": [e for e, _ in bad], "bad_reasons": [r for _, r in bad],
              "bad_reads": self.bad_reads}

  @classmethod
  def from_state(cls, state: dict | None, max_failure_fraction: float = 0.1,
                 confidence: float = 0.999) -> FailureTracker:
    """A tracker holding ``state`` (from ``state()``; None: a fresh one)."""
    t = cls(max_failure_fraction, confidence)
    if state:
      t.sources = state.get("sources")
      if t.sources is not None:
        t.population = sum(n for _, n in t.sources)
      t.tried = _unpack(state["tried"])
      for entry, reason in zip(state["bad"], state["bad_reasons"]):
        t._add_bad(int(entry), reason)
      t.bad_reads = int(state["bad_reads"])
    return t

  def copy(self) -> FailureTracker:
    return FailureTracker.from_state(self.state(), self.max_failure_fraction, self.confidence)


def _pack(entries: set[int]) -> str:
  """A set of entries as text: a bitmap, compressed (an epoch of a shard is a few bytes)."""
  bits = np.zeros(max(entries, default=-1) + 1, bool)
  bits[list(entries)] = True
  return base64.b64encode(zlib.compress(np.packbits(bits).tobytes())).decode()


def _unpack(text: str) -> set[int]:
  bits = np.unpackbits(np.frombuffer(zlib.decompress(base64.b64decode(text)), np.uint8))
  return set(np.flatnonzero(bits).tolist())


def merge_states(states: list[dict]) -> dict | None:
  """One account from several processes' (checkpoints written by another number of processes):
  the union of their entries; their failed reads summed."""
  states = [s for s in states if s]
  if not states:
    return None
  union = FailureTracker.from_state(states[0])
  for s in states[1:]:
    other = FailureTracker.from_state(s)
    union.tried |= other.tried
    for entry, reason in other.bad.items():
      if entry not in union.bad:
        union._add_bad(entry, reason)
    union.bad_reads += other.bad_reads
  return union.state()


def batch_record(batch: dict) -> dict | None:
  """What ``FailureTracker.add_batch`` needs of a pretraining batch (None for other batches)."""
  if "bad_entries" not in batch:
    return None
  return {k: np.array(batch[k]) for k in ("index", "bad_entries", "bad_reasons")}


def sample_record(bad: list[tuple[int, str]], slots: int) -> dict:
  """The per-example arrays naming the bad entries a sample skipped: ``bad_entries`` int64 [slots]
  and ``bad_reasons`` int8 [slots] (reason codes, ``REASONS``), -1 padded."""
  entries = np.full(slots, -1, np.int64)
  codes = np.full(slots, -1, np.int8)
  for k, (entry, reason) in enumerate(bad[:slots]):
    entries[k], codes[k] = entry, reason_code(reason)
  return {"bad_entries": entries, "bad_reasons": codes}
