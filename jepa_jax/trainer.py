"""The pretraining loop: data -> jitted sharded step -> metrics, checkpoints, progress.

Guarantees:
* Resume: restarting the same command continues from the latest complete checkpoint, with the
  same parameters, the same masks (drawn from ``fold_in(rng, state.step)``) and the next unseen
  batch (the data state saved is the one recorded *before* the next batch to be consumed, not the
  read-ahead position of the prefetcher). On CPU a killed-and-resumed run is bitwise identical to
  an uninterrupted one. A damaged latest checkpoint is skipped and moved aside, and the run
  resumes from the newest readable one (``checkpoint.restore_latest_train_state``).
  ``metrics.jsonl`` drops the rows of the steps a resumed run replays, so each step is there once
  (and holds strict JSON: a non-finite value is null). A finished run restarted says so and
  does nothing.
* Failed saves: an asynchronous checkpoint write that fails (a full disk) stops the run at the
  first step after that save is over, not at the next save; the previous checkpoint is intact.
* Preemption: SIGTERM (or JAX's multi-host preemption sync point) saves at the next step and exits
  cleanly.
* Non-finite loss: the step never applies a non-finite update (see ``train_step``); with
  ``config.nonfinite='stop'`` the run stops with the step and the last good checkpoint named and
  saves nothing; with ``'skip'`` the batch is skipped and counted, and after
  ``config.max_consecutive_skips`` skipped updates in a row the run stops (the parameters or the
  optimiser state are then broken, not one batch). The flag is read one step late, so no step
  waits for the host; steps are named as logged (1-based: step k is the k-th update).
* Bad data: samples replaced by the pipeline (``jepa_jax.data.pipeline``) are counted per logging
  window (``data/bad_reads``, with the run's total in ``data/bad_reads_total``) and summed up at
  the end. The account of unreadable entries met by the consumed batches (``data.failures``) is
  checkpointed per process with the data state and restored on resume, so the stop rule and the
  total continue where they were.
* No host round trip per step: metrics are reduced on device with ``clu.metrics`` and fetched only
  every ``config.log_every`` steps. Only process 0 writes logs and summaries.
* Online probe: with ``config.monitor_probe.every`` set, ``probe_monitor.ProbeMonitor`` probes the
  target encoder at step 0 of a fresh run and every N steps (``probe/*`` scalars, in the logging
  row when the step is a logging step, else a row of their own); a resumed run starts after its
  checkpoint's step, so no probe step is logged twice, and a fresh start drops every earlier row.
* Collapse: the logged ``monitor/*`` statistics are checked against ``jepa_jax.monitor``'s rule and
  the log warns once when they say the representation collapsed.
"""
import json
import logging
import os
import queue
import signal
import threading
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from clu import metric_writers, metrics as clu_metrics, periodic_actions

from jepa_jax import checkpoint as ckpt_lib
from jepa_jax import data as data_lib
from jepa_jax import defaults
from jepa_jax import experiment
from jepa_jax import monitor
from jepa_jax import optim
from jepa_jax import paths
from jepa_jax import probe_monitor

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
  pass


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
    tmp = self._path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(kept)
    os.replace(tmp, self._path)

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
  primary = jax.process_index() == 0
  writer = metric_writers.create_default_writer(workdir, just_logging=not primary,
                                                asynchronous=True)
  if not primary:
    return writer
  # A fresh start (step 0) replays everything, the step-0 probe row included: drop every row.
  jsonl = JsonlWriter(os.path.join(workdir, "metrics.jsonl"), resume_step if resume_step else -1)
  return metric_writers.MultiWriter([writer, jsonl])


def config_summary(config) -> str:
  """The config for the log, one line per top-level field (sections and mask entries as compact
  JSON objects): the values of ``config.json``, without ml_collections' YAML internals."""
  plain = ckpt_lib.config_to_json(config)
  lines = []
  for key, value in plain.items():
    if key == "masks" and isinstance(value, list):
      lines += [f"  masks[{i}]: {json.dumps(m)}" for i, m in enumerate(value)]
    else:
      lines.append(f"  {key}: {json.dumps(value)}")
  return "\n".join(lines)


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


# --- the loop ---------------------------------------------------------------------------------

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


def _init_or_restore(exp, manager, config):
  """(state, start step, data state) from the latest readable checkpoint, ``config.init_from``,
  or fresh."""
  restored = ckpt_lib.restore_latest_train_state(manager, exp.sharded_abstract_state)
  if restored is not None:
    state, data_state, step = restored
    if step < exp.total_steps:  # else ``train`` says that the run is complete
      log.info("Resumed from checkpoint %d in %s", step, manager.directory)
    return state, step, data_state
  if config.get("init_from") and config.get("init_from_optimizer"):
    return _continue_from(exp, config), 0, None
  state = exp.init_state(jax.random.PRNGKey(config.seed))
  if config.get("init_from"):
    loaded = ckpt_lib.load(config.init_from)
    _refuse_finetuned(loaded.kind, config.init_from)
    params, from_step = loaded.params, loaded.step
    shapes = exp.abstract_state
    expected = {"encoder": shapes.params["encoder"], "predictor": shapes.params["predictor"],
                "target": shapes.target_params}
    ckpt_lib.check_shapes(params, {k: expected[k] for k in params},
                          f"config.init_from={config.init_from}")
    sh = exp.state_shardings
    online = {k: params.get(k, state.params[k]) for k in ("encoder", "predictor")}
    # A converted checkpoint without a target encoder starts the EMA from the online encoder.
    target = params.get("target", online["encoder"])
    state = state.replace(
        params=jax.tree_util.tree_map(jax.device_put, online, sh.params),
        target_params=jax.tree_util.tree_map(jax.device_put, target, sh.target_params))
    log.info("Initialised from %s (step %d); optimiser state fresh", config.init_from, from_step)
  return state, 0, None


def _refuse_finetuned(kind: str, init_from: str) -> None:
  if kind == ckpt_lib.FINETUNE:
    raise ckpt_lib.CheckpointError(
        f"config.init_from={init_from} is a fine-tuning checkpoint (encoder + classifier, no "
        "predictor); start pretraining from a pretraining or converted checkpoint")


def _continue_from(exp, config):
  """V-JEPA 2's cooldown start (``is_anneal``): encoder, predictor, target encoder AND optimiser
  state of another run's latest checkpoint, with the step and the schedules back at 0."""
  directory = ckpt_lib.checkpoint_dir(config.init_from)
  source = ckpt_lib.make_manager(directory, read_only=True, async_save=False)
  step = source.latest_step()
  if step is None:
    raise ckpt_lib.CheckpointError(f"config.init_from={config.init_from}: no checkpoint in "
                                   f"{directory}")
  _refuse_finetuned(ckpt_lib.checkpoint_kind(directory, step), config.init_from)
  try:
    state, _ = ckpt_lib.restore_train_state(source, step, exp.sharded_abstract_state)
  except ckpt_lib.CheckpointError as e:
    raise ckpt_lib.CheckpointError(
        f"config.init_from_optimizer: {e} (converted weights carry no optimiser state: set "
        "config.init_from_optimizer=False to start AdamW afresh)") from None
  finally:
    source.close()
  state = state.replace(step=jnp.zeros_like(state.step),
                        opt_state=optim.restart_schedules(state.opt_state))
  log.info("Continuing from %s (step %d): parameters, target and optimiser state; schedules "
           "restart at 0", config.init_from, step)
  return state


def train(config, workdir: str, exp: Optional[experiment.Experiment] = None) -> dict:
  """Run (or resume) pretraining; returns the last logged metrics. ``exp``: ``config``'s
  experiment when the caller has built it already (``main`` does, to report config errors before
  touching the workdir); built here otherwise.

  A run stopped by SIGTERM / a preemption notice saves, returns early, and says so with the key
  ``preempted_at_step`` (``python -m jepa_jax.main`` then exits with ``EXIT_PREEMPTED``).
  """
  workdir = paths.resolve(workdir)
  primary = jax.process_index() == 0
  if exp is None:
    exp = experiment.build(config)
  if primary:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  log.info("Config (saved as %s):\n%s", os.path.join(workdir, "config.json"), config_summary(config))
  log.info("Mesh %s over %d devices, %d processes; global batch %d",
           dict(exp.mesh.shape), jax.device_count(), jax.process_count(), exp.batch_size)

  ck = config.checkpoint
  manager = ckpt_lib.make_manager(os.path.join(workdir, "checkpoints"), save_every=ck.every,
                                  keep=ck.keep, keep_period=ck.keep_period,
                                  async_save=ck.async_save)
  state, start_step, data_state = _init_or_restore(exp, manager, config)
  if start_step >= exp.total_steps:
    manager.close()
    log.info("The run is already complete: checkpoint %d in %s is its last step (%d steps); "
             "nothing to do", start_step, manager.directory, exp.total_steps)
    return {}

  per_process_batch = exp.batch_size // jax.process_count()
  # The account of the consumed batches (checkpointed); the loader's copy decides when to stop
  # (filled in this process only without worker processes; the entries also travel in the batches).
  consumed = _restored_data_failures(manager, start_step, config.data)
  tracker = consumed.copy()
  dataset = data_lib.make_pretrain_dataset(
      config.data, batch_size=per_process_batch, seed=config.seed,
      shard_index=jax.process_index(), shard_count=jax.process_count(), failure_tracker=tracker)
  consumed.bind(tracker.sources)
  iterator = iter(dataset)
  if data_state is not None:
    iterator.set_state(data_state)
  prefetcher = Prefetcher(iterator, exp.shard_batch, size=config.prefetch)

  writer = make_writer(workdir, start_step)
  total = exp.total_steps
  hooks = []
  if primary:
    hooks.append(periodic_actions.ReportProgress(num_train_steps=total, writer=writer,
                                                 every_steps=config.log_every))
    if config.profile:
      hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=5,
                                            first_profile=start_step + 10))
  preemption = Preemption()
  rng = jax.random.PRNGKey(config.seed + 1)
  collection, last_metrics = None, {}
  preempted_at = None
  # (logged step, device flag) of the last step: read one step late, exactly once.
  pending_flag: Optional[tuple[int, Any]] = None
  skipped = consecutive_skips = 0
  max_consecutive_skips = config.get("max_consecutive_skips", defaults.MAX_CONSECUTIVE_SKIPS)
  last_saved = start_step if start_step else None
  unconfirmed_save = False  # an asynchronous save was started and its outcome not yet checked
  window_start, window_wait = time.perf_counter(), 0.0
  window_bad_reads = total_bad_reads = 0

  def check_finite():
    nonlocal pending_flag, skipped, consecutive_skips
    if pending_flag is None:
      return
    (bad_step, flag), pending_flag = pending_flag, None
    if int(flag) == 0:
      consecutive_skips = 0
      return
    where = (f"the last good checkpoint is step {last_saved} in {manager.directory}"
             if last_saved is not None else "no checkpoint was saved yet")
    if config.nonfinite == "skip":
      skipped += 1
      consecutive_skips += 1
      log.warning("Non-finite loss or gradient at step %d: update skipped (%d so far, %d in a row)",
                  bad_step, skipped, consecutive_skips)
      if consecutive_skips >= max_consecutive_skips:
        raise NonFiniteLossError(
            f"{consecutive_skips} updates in a row had a non-finite loss or gradient (steps "
            f"{bad_step - consecutive_skips + 1}-{bad_step}), so it is not one bad batch; {where}. "
            "Lower config.optim.lr or check the data, then resume; "
            f"config.max_consecutive_skips={max_consecutive_skips} sets this limit.")
      return
    raise NonFiniteLossError(
        f"Non-finite loss or gradient at step {bad_step}; the update was not applied and nothing "
        f"was saved after it; {where}. Lower config.optim.lr, check the data, or set "
        "config.nonfinite='skip'.")

  def save(step, force=False):
    nonlocal last_saved, unconfirmed_save
    check_finite()
    if ckpt_lib.save(manager, step, state=state, data_state=prefetcher.peek_state(),
                     config=config, data_failures=consumed.state(), force=force):
      last_saved = step
      unconfirmed_save = True

  def check_saved():
    """Raise the error of an asynchronous save as soon as it has failed (a full disk), not at the
    next save: a flag read per step, and one non-blocking wait once the save is over."""
    nonlocal unconfirmed_save
    if unconfirmed_save and not manager.is_saving_in_progress():
      unconfirmed_save = False
      manager.wait_until_finished()  # returns at once; raises what the save raised

  collection_cls = None
  collapse = monitor.CollapseDetector()
  step = start_step
  mp = config.get("monitor_probe")
  probe = probe_monitor.ProbeMonitor(mp, exp) if mp and mp.get("every") else None
  run_start, probe_seconds = time.perf_counter(), 0.0

  def run_probe(step) -> dict:
    """The probe monitor's scalars at ``step``, with its share of this process's wall time."""
    nonlocal probe_seconds
    scalars = probe(step, state.target_params)
    probe_seconds += scalars["probe/seconds"]
    scalars["probe/time_share"] = probe_seconds / max(time.perf_counter() - run_start, 1e-9)
    if primary:
      log.info("Probe at step %d: %s (%.2fs)", step, ", ".join(
          f"{k[len('probe/'):]} {v:.1f}" for k, v in scalars.items() if k.count("/") == 2),
          scalars["probe/seconds"])
    return scalars

  try:
    with metric_writers.ensure_flushes(writer):
      if probe is not None and start_step == 0:  # the initial encoder: where the curve starts
        writer.write_scalars(0, run_probe(0))
      while step < total:
        _, batch, failed = prefetcher.next()
        bad_reads = consumed.add_batch(failed)
        window_bad_reads += bad_reads
        total_bad_reads += bad_reads
        state, metrics = exp.train_step(state, batch, rng)
        # Read the previous step's flag now: it has finished (or nearly), the new one is queued.
        check_finite()
        step += 1
        pending_flag = (step, metrics["nonfinite"])
        collection_cls = collection_cls or metrics_collection(tuple(metrics))
        update = collection_cls.single_from_model_output(**metrics)
        collection = update if collection is None else collection.merge(update)
        for hook in hooks:
          hook(step)
        probe_scalars = run_probe(step) if probe is not None and probe.due(step) else {}
        if step % config.log_every == 0 or step == total:
          scalars = {k.replace("__", "/"): float(v) for k, v in collection.compute().items()}
          scalars.update(probe_scalars)
          probe_scalars = {}
          elapsed = time.perf_counter() - window_start
          scalars["data_wait_fraction"] = (prefetcher.wait_seconds - window_wait) / max(elapsed, 1e-9)
          scalars["skipped_steps"] = skipped
          scalars["data/bad_reads"] = window_bad_reads
          scalars["data/bad_reads_total"] = consumed.bad_reads
          window_start, window_wait = time.perf_counter(), prefetcher.wait_seconds
          window_bad_reads = 0
          writer.write_scalars(step, scalars)
          warning = collapse.check(step, scalars)
          if warning and primary:
            log.warning(warning)
          last_metrics, collection = scalars, None
        if probe_scalars:  # a probe step that is not a logging step: a row of its own
          writer.write_scalars(step, probe_scalars)
        if preemption.reached(step):
          log.warning("Preemption requested: saving step %d and exiting", step)
          save(step, force=True)
          preempted_at = step
          break
        if step % ck.every == 0 or step == total:
          save(step, force=step == total)
        else:
          check_saved()
  finally:
    prefetcher.close()
    manager.wait_until_finished()
    preemption.restore()
  check_finite()
  manager.close()
  _log_bad_reads(total_bad_reads, tracker, start_step, step)
  if preempted_at is not None:
    last_metrics = {**last_metrics, "preempted_at_step": preempted_at}
  return last_metrics


def _restored_data_failures(manager, step: int, data_config):
  """This process's data-failure account saved with checkpoint ``step`` (a fresh one at step 0;
  the union of all processes' after a restart on another number of processes)."""
  own, every = ckpt_lib.read_per_process(manager, step, ckpt_lib.DATA_FAILURES) if step else (None, [])
  return data_lib.FailureTracker.from_state(
      own if own is not None else data_lib.failures.merge_states(every),
      data_config.max_failure_fraction, data_config.failure_confidence)


def _log_bad_reads(total: int, tracker, first_step: int, last_step: int) -> None:
  """The run's summary of replaced samples (reasons known only without worker processes)."""
  if not total:
    log.info("Data: no unreadable samples in steps %d-%d", first_step + 1, last_step)
    return
  reasons = f" ({', '.join(map(repr, sorted(tracker.failures)))})" if tracker.failures else ""
  log.warning("Data: %d failed reads were replaced by other samples in steps %d-%d%s (each "
              "failing file is named once in the warnings above)", total, first_step + 1,
              last_step, reasons)
