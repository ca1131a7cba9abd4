"""The pretraining run: start or resume, then the shared loop shell (``loop.py``) with
pretraining's step, checkpoint items, logging row and online probe.

``train(config, workdir, exp)`` resumes from the newest readable checkpoint (a damaged one moved
aside) with the same parameters, masks (``fold_in(rng, state.step)``) and next unseen batch: the
data state saved is the one recorded before the next batch, not the prefetcher's read-ahead, so on
CPU a killed and resumed run is bitwise identical to an uninterrupted one. Beyond the shell's work
it counts replaced samples (``data/bad_reads``, ``data/bad_reads_total``) and checkpoints each
process's account of unreadable entries, so the stop rule continues on resume; runs the online
probe (``probe_monitor``) at step 0 and every ``monitor_probe.every`` steps, never logging a step
twice; and warns once when ``monitor``'s collapse rule fires.
"""
import json
import logging
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
from clu import periodic_actions

from jepa_jax import checkpoint as ckpt_lib
from jepa_jax import data as data_lib
from jepa_jax import loop
from jepa_jax import optim
from jepa_jax import paths
from jepa_jax.pretrain import experiment
from jepa_jax.pretrain import monitor
from jepa_jax.pretrain import probe_monitor

log = logging.getLogger(__name__)


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


# --- start ------------------------------------------------------------------------------------

def _init_or_restore(exp, manager, run):
  """(state, start step, data state) from the latest readable checkpoint, ``run.init_from``,
  or fresh."""
  restored = ckpt_lib.restore_latest_train_state(manager, exp.sharded_abstract_state)
  if restored is not None:
    state, data_state, step = restored
    if step < exp.total_steps:  # else ``train`` says that the run is complete
      log.info("Resumed from checkpoint %d in %s", step, manager.directory)
    return state, step, data_state
  if run.init_from and run.init_from_optimizer:
    return _continue_from(exp, run.init_from), 0, None
  state = exp.init_state(jax.random.PRNGKey(run.seed))
  if run.init_from:
    loaded = ckpt_lib.load(run.init_from)
    _refuse_finetuned(loaded.kind, run.init_from)
    params, from_step = loaded.params, loaded.step
    shapes = exp.abstract_state
    expected = {"encoder": shapes.params["encoder"], "predictor": shapes.params["predictor"],
                "target": shapes.target_params}
    ckpt_lib.check_shapes(params, {k: expected[k] for k in params},
                          f"config.init_from={run.init_from}")
    sh = exp.state_shardings
    online = {k: params.get(k, state.params[k]) for k in ("encoder", "predictor")}
    # A converted checkpoint without a target encoder starts the EMA from the online encoder.
    target = params.get("target", online["encoder"])
    state = state.replace(
        params=jax.tree_util.tree_map(jax.device_put, online, sh.params),
        target_params=jax.tree_util.tree_map(jax.device_put, target, sh.target_params))
    log.info("Initialised from %s (step %d); optimiser state fresh", run.init_from, from_step)
  return state, 0, None


def _refuse_finetuned(kind: str, init_from: str) -> None:
  if kind == ckpt_lib.FINETUNE:
    raise ckpt_lib.CheckpointError(
        f"config.init_from={init_from} is a fine-tuning checkpoint (encoder + classifier, no "
        "predictor); start pretraining from a pretraining or converted checkpoint")


def _continue_from(exp, init_from: str):
  """V-JEPA 2's cooldown start (``is_anneal``): encoder, predictor, target encoder AND optimiser
  state of another run's latest checkpoint, with the step and the schedules back at 0."""
  directory = ckpt_lib.checkpoint_dir(init_from)
  source = ckpt_lib.make_manager(directory, read_only=True, async_save=False)
  step = source.latest_step()
  if step is None:
    raise ckpt_lib.CheckpointError(f"config.init_from={init_from}: no checkpoint in "
                                   f"{directory}")
  _refuse_finetuned(ckpt_lib.checkpoint_kind(directory, step), init_from)
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
           "restart at 0", init_from, step)
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
  log.info("Config (saved as %s):\n%s", loop.write_config(workdir, config), config_summary(config))
  log.info("Mesh %s over %d devices, %d processes; global batch %d",
           dict(exp.mesh.shape), jax.device_count(), jax.process_count(), exp.batch_size)

  run = exp.settings.run
  ck = run.checkpoint
  manager = ckpt_lib.make_manager(os.path.join(workdir, "checkpoints"), save_every=ck.every,
                                  keep=ck.keep, keep_period=ck.keep_period,
                                  async_save=ck.async_save)
  state, start_step, data_state = _init_or_restore(exp, manager, run)
  if start_step >= exp.total_steps:
    manager.close()
    log.info("The run is already complete: checkpoint %d in %s is its last step (%d steps); "
             "nothing to do", start_step, manager.directory, exp.total_steps)
    return {}

  per_process_batch = exp.batch_size // jax.process_count()
  # The account of the consumed batches (checkpointed); the loader's copy decides when to stop
  # (filled in this process only without worker processes; the entries also travel in the batches).
  consumed = _restored_data_failures(manager, start_step, exp.settings.data)
  tracker = consumed.copy()
  images = exp.settings.images
  dataset = data_lib.make_pretrain_dataset(
      exp.settings.data, batch_size=per_process_batch, seed=run.seed,
      shard_index=jax.process_index(), shard_count=jax.process_count(), failure_tracker=tracker,
      images=images.data if images else None,
      image_batch_size=images.batch_size // jax.process_count() if images else 0)
  consumed.bind(tracker.sources)
  iterator = iter(dataset)
  if data_state is not None:
    iterator.set_state(data_state)

  writer = loop.make_writer(workdir, start_step)
  hooks = []
  if primary and run.profile:
    hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=5,
                                          first_profile=start_step + 10))
  rng = jax.random.PRNGKey(run.seed + 1)
  bad_reads = {"window": 0, "total": 0}
  collapse = monitor.CollapseDetector()
  probe = probe_monitor.ProbeMonitor(run.monitor_probe, exp) if run.monitor_probe else None
  run_start, probe_seconds = time.perf_counter(), 0.0

  def run_probe(step, state) -> dict:
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

  def probe_if_due(step, state) -> dict:
    return run_probe(step, state) if probe.due(step) else {}

  def consume(failed):
    n = consumed.add_batch(failed)
    bad_reads["window"] += n
    bad_reads["total"] += n

  def log_row(step, scalars, window):
    del window
    scalars["data/bad_reads"] = bad_reads["window"]
    scalars["data/bad_reads_total"] = consumed.bad_reads
    bad_reads["window"] = 0
    warning = collapse.check(step, scalars)
    if warning and primary:
      log.warning(warning)

  program = loop.Program(
      step=lambda state, batch: exp.train_step(state, batch, rng),
      checkpoint_items=lambda: dict(config=config, model_spec=exp.settings.model,
                                    data_failures=consumed.state()),
      consume=consume,
      evaluate=probe_if_due if probe is not None else None,
      log_row=log_row)
  if probe is not None and start_step == 0:  # the initial encoder: where the curve starts
    writer.write_scalars(0, run_probe(0, state))
  result = loop.run(
      program, state, start_step, iterator=iterator, place=exp.shard_batch,
      prefetch=run.prefetch, manager=manager, writer=writer, hooks=hooks,
      cadence=loop.Cadence(total_steps=exp.total_steps, log_every=run.log_every,
                           save_every=ck.every),
      policy=run.nonfinite)
  _log_bad_reads(bad_reads["total"], tracker, start_step, result.step)
  if result.preempted_at is not None:
    return {**result.last_scalars, "preempted_at_step": result.preempted_at}
  return result.last_scalars


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
