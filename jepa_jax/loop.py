"""The training loop shell that pretraining (``trainer.py``) and fine-tuning (``finetune/run.py``)
both run: ``run`` drives a program's jitted ``step(state, batch) -> (state, metrics)`` and owns
everything around it, the same way for both.

* Prefetch (``Prefetcher``): host batches placed on the devices in a background thread, each with
  the data state recorded *before* it, which is what a checkpoint taken before it must store.
* Metric windows: device metrics averaged with ``clu.metrics``, fetched only every ``log_every``
  steps, to TensorBoard and ``metrics.jsonl`` (``make_writer``: strict JSON, rows replayed on
  resume dropped), with progress and ETA; only process 0 writes.
* Non-finite updates are never applied (``nonfinite``); the flag is read one step late.
* Saves every ``save_every`` steps and at the end; a failed asynchronous save stops the run when it
  is over. Preemption (SIGTERM or JAX's sync point) saves at the next step and returns with
  ``preempted_at`` set; the entry points exit with ``cli.EXIT_PREEMPTED``.

What differs between programs is a ``Program``: the step, the checkpoint's other items, what each
logging row adds, and evaluations between steps (the online probe, validation).
"""
import dataclasses
import json
import logging
import os
import queue
import signal
import threading
import time
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from clu import metric_writers, metrics as clu_metrics, periodic_actions

from jepa_jax import checkpoint as ckpt_lib
from jepa_jax import data as data_lib
from jepa_jax import nonfinite as nonfinite_lib
from jepa_jax import paths

log = logging.getLogger(__name__)


# --- settings ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Cadence:
  """When the shell logs and saves. ``total_steps``: the run's length (progress, ETA, the last
  save); ``end_step``: where this call stops (a test's early stop), at most ``total_steps``;
  ``log_every`` 0: no logging rows."""
  total_steps: int
  log_every: int
  save_every: int
  end_step: Optional[int] = None

  @property
  def end(self) -> int:
    return self.total_steps if self.end_step is None else min(self.total_steps, self.end_step)


@dataclasses.dataclass(frozen=True)
class Window:
  """The logging window just closed: how many steps, how many seconds."""
  steps: int
  seconds: float


@dataclasses.dataclass
class Program:
  """What one training program gives the shell.

  ``step(state, device batch) -> (state, metrics)``: jitted; ``metrics["nonfinite"]`` is 1 when
  the update was not applied. ``checkpoint_items()``: ``checkpoint.save``'s other keyword
  arguments at save time (``config``, ``kind``, ``data_failures``). ``consume(failed)``: each
  batch's bad-entry record (``data.failures.batch_record``), in step order. ``evaluate(step,
  state)``: scalars of an evaluation due after ``step`` ({} when none is), written in that step's
  logging row, or in a row of their own when it is not a logging step. ``log_row(step, scalars,
  window)``: adds the program's scalars to a logging row (and warns or logs on it) before the
  row is written.
  """
  step: Callable[[Any, Any], tuple[Any, dict]]
  checkpoint_items: Callable[[], dict] = dict
  consume: Optional[Callable[[Any], None]] = None
  evaluate: Optional[Callable[[int, Any], dict]] = None
  log_row: Optional[Callable[[int, dict, Window], None]] = None


@dataclasses.dataclass
class Result:
  """The state after the last step run, that step, the last logging row, and the step a
  preemption saved and stopped at (None when it did not)."""
  state: Any
  step: int
  last_scalars: dict
  preempted_at: Optional[int] = None


# --- metrics ----------------------------------------------------------------------------------

def metrics_collection(names):
  """A clu Collection averaging each named scalar over the logging window (field names cannot
  hold "/": ``loss/mask0`` is the field ``loss__mask0``)."""
  return clu_metrics.Collection.create(
      **{n.replace("/", "__"): clu_metrics.Average.from_output(n) for n in names})


class JsonlWriter(metric_writers.interface.MetricWriter):
  """Appends one JSON object per written step to ``path`` (easy to read back in scripts).

  ``resume_step``: the step the run (re)starts from; rows of later steps, written before an
  interruption and about to be replayed, are dropped first (so is a torn last line).
  """

  def __init__(self, path: str, resume_step: Optional[int] = None):
    self._path = path
    if resume_step is not None and os.path.exists(path):
      self._truncate_after(resume_step)

  def _truncate_after(self, step: int):
    kept = []
    with open(self._path) as f:
      for line in f:
        try:
          row = json.loads(line)
        except ValueError:
          continue
        if isinstance(row, dict) and row.get("step", 0) <= step:
          kept.append(line if line.endswith("\n") else line + "\n")
    with paths.atomic_write(self._path) as f:
      f.writelines(kept)

  def write_scalars(self, step, scalars):
    # Strict JSON: a non-finite value (a NaN loss) is written as null, never as a bare NaN.
    row = {"step": int(step), **{k: _finite_or_none(float(v)) for k, v in scalars.items()}}
    with open(self._path, "a") as f:
      f.write(json.dumps(row, allow_nan=False) + "\n")

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    pass

  def close(self):
    pass


def _finite_or_none(x: float) -> Optional[float]:
  return x if np.isfinite(x) else None


def make_writer(workdir: str, resume_step: int = 0):
  """TensorBoard + ``metrics.jsonl`` on process 0, the log only elsewhere."""
  primary = jax.process_index() == 0
  writer = metric_writers.create_default_writer(workdir, just_logging=not primary,
                                                asynchronous=True)
  if not primary:
    return writer
  # A fresh start (step 0) replays everything, a step-0 probe row included: drop every row.
  jsonl = JsonlWriter(os.path.join(workdir, "metrics.jsonl"), resume_step if resume_step else -1)
  return metric_writers.MultiWriter([writer, jsonl])


def write_config(workdir: str, config) -> str:
  """``<workdir>/config.json`` (process 0; the directory made on the way); returns its path."""
  path = os.path.join(workdir, "config.json")
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  return path


# --- input ------------------------------------------------------------------------------------

class Prefetcher:
  """Reads host batches in a background thread and puts them on the devices ahead of the step.

  Each item carries the iterator state recorded *before* its batch, which is what a checkpoint
  taken before consuming that batch must store, and the batch's bad entries
  (``data.failures.batch_record``).
  """

  def __init__(self, iterator, place, size: int = 2):
    self._it, self._place = iterator, place
    self._queue: queue.Queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True, name="prefetch")
    self._thread.start()
    self._held = None
    self.wait_seconds = 0.0

  def _run(self):
    try:
      while not self._stop.is_set():
        state = self._it.get_state()
        host = next(self._it)
        failed = data_lib.failures.batch_record(host)
        batch = self._place(host)
        while not self._stop.is_set():
          try:
            self._queue.put((state, batch, failed), timeout=0.1)
            break
          except queue.Full:
            continue
    except BaseException as e:  # noqa: BLE001 - surfaced in the training thread
      self._queue.put(e)

  def _get(self):
    t0 = time.perf_counter()
    item = self._queue.get()
    self.wait_seconds += time.perf_counter() - t0
    if isinstance(item, BaseException):
      raise item
    return item

  def next(self):
    """``(data state before the batch, device batch, its bad entries or None)``."""
    item, self._held = (self._held, None) if self._held is not None else (self._get(), None)
    return item

  def peek_state(self):
    """The data state to checkpoint now: the one recorded before the next batch."""
    if self._held is None:
      self._held = self._get()
    return self._held[0]

  def close(self):
    self._stop.set()
    try:
      while True:
        self._queue.get_nowait()
    except queue.Empty:
      pass
    self._thread.join(timeout=5)


# --- the shell --------------------------------------------------------------------------------

class Preemption:
  """SIGTERM -> save at the next step and exit; on several processes JAX's sync point decides."""

  def __init__(self):
    self.requested = False
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
      except RuntimeError:  # no preemption service (e.g. local multi-process tests)
        return False
    return self.requested

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def run(program: Program, state, start_step: int, *, iterator, place: Callable, prefetch: int,
        manager, writer, cadence: Cadence, policy: nonfinite_lib.NonFinitePolicy,
        hooks: Sequence[Callable[[int], Any]] = ()) -> Result:
  """Run ``program`` from ``state`` at ``start_step`` to ``cadence.end`` (module docstring).

  ``iterator``: the host data iterator, at the position of the next batch; ``place``: host batch
  -> device batch, run in the prefetch thread (``prefetch`` batches ahead). ``manager``: the
  checkpoint manager (waited for and closed here); ``writer``: ``make_writer``'s, flushed here.
  ``hooks``: called with each step after clu's ``ReportProgress`` (e.g. a profiler).
  """
  primary = jax.process_index() == 0
  end = cadence.end
  prefetcher = Prefetcher(iterator, place, size=prefetch)
  all_hooks = []
  if primary and cadence.log_every:
    all_hooks.append(periodic_actions.ReportProgress(num_train_steps=cadence.total_steps,
                                                     writer=writer,
                                                     every_steps=cadence.log_every))
  all_hooks += list(hooks)
  preemption = Preemption()
  nonfinite = nonfinite_lib.NonFiniteCheck(policy, manager.directory)
  last_saved = start_step if start_step else None
  unconfirmed_save = False  # an asynchronous save was started and its outcome not yet checked
  collection = collection_cls = None
  last_scalars, preempted_at = {}, None
  window_start, window_wait, window_step = time.perf_counter(), 0.0, start_step

  def save(step, force=False):
    nonlocal last_saved, unconfirmed_save
    nonfinite.check(last_saved)  # nothing is saved after a step that stops the run
    if ckpt_lib.save(manager, step, state=state, data_state=prefetcher.peek_state(),
                     force=force, **program.checkpoint_items()):
      last_saved = step
      unconfirmed_save = True

  def check_saved():
    """Raise the error of an asynchronous save as soon as it has failed (a full disk), not at the
    next save: a flag read per step, and one non-blocking wait once the save is over."""
    nonlocal unconfirmed_save
    if unconfirmed_save and not manager.is_saving_in_progress():
      unconfirmed_save = False
      manager.wait_until_finished()  # returns at once; raises what the save raised

  step = start_step
  try:
    with metric_writers.ensure_flushes(writer):
      while step < end:
        _, batch, failed = prefetcher.next()
        if program.consume is not None:
          program.consume(failed)
        state, metrics = program.step(state, batch)
        # Read the previous step's flag now: it has finished (or nearly), the new one is queued.
        nonfinite.check(last_saved)
        step += 1
        nonfinite.defer(step, metrics["nonfinite"])
        collection_cls = collection_cls or metrics_collection(tuple(metrics))
        update = collection_cls.single_from_model_output(**metrics)
        collection = update if collection is None else collection.merge(update)
        for hook in all_hooks:
          hook(step)
        evaluated = program.evaluate(step, state) if program.evaluate is not None else {}
        if cadence.log_every and (step % cadence.log_every == 0 or step == end):
          scalars = {k.replace("__", "/"): float(v) for k, v in collection.compute().items()}
          scalars.update(evaluated)
          evaluated = {}
          now = time.perf_counter()
          scalars["data_wait_fraction"] = ((prefetcher.wait_seconds - window_wait)
                                           / max(now - window_start, 1e-9))
          scalars["skipped_steps"] = nonfinite.skipped
          if program.log_row is not None:
            program.log_row(step, scalars, Window(step - window_step, now - window_start))
          writer.write_scalars(step, scalars)
          window_start, window_wait, window_step = now, prefetcher.wait_seconds, step
          last_scalars, collection = scalars, None
        if evaluated:  # an evaluation at a step that is not a logging step: a row of its own
          writer.write_scalars(step, evaluated)
        if preemption.reached(step):
          log.warning("Preemption requested: saving step %d and exiting", step)
          save(step, force=True)
          preempted_at = step
          break
        if step % cadence.save_every == 0 or step == end:
          save(step, force=step == end)
        else:
          check_saved()
  finally:
    prefetcher.close()
    manager.wait_until_finished()
    preemption.restore()
  nonfinite.check(last_saved)
  manager.close()
  return Result(state, step, last_scalars, preempted_at)
