"""Probe runs: one attentive probe (or one per ``config.probe_grid`` entry) trained and validated
on a ``BatchSource`` (cached tokens, or clips the encoder reads inside the probe's jitted steps),
its parameters saved with what it was trained on; the protocol a result depends on."""
import dataclasses
import logging
import math
import os
import time
from typing import Callable, Iterator, Optional

import jax
import numpy as np

from jepa_jax import checkpoint as ckpt_lib
from jepa_jax.data import sources as sources_lib
from jepa_jax.eval import probe as probe_lib
from jepa_jax.eval.datasets import make_dataset
from jepa_jax.eval.features import FeatureCache, cache_batches, pixels_of
from jepa_jax.eval.placement import Placer

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ProbeTask:
  """Everything one probe run needs besides its seed and data."""
  num_classes: int
  embed_dim: int
  encoder_heads: int
  settings: object  # eval.settings.Settings
  encoder_info: dict = dataclasses.field(default_factory=dict)  # load_frozen_encoder's info

def train_and_evaluate(task: ProbeTask, *, seed: int, num_train: int,
                       train_batches: Callable[[int], Iterator], val_batches: Callable[[], Iterator],
                       steps_per_epoch: int, placer: Placer, token_fn=None, encoder_params=None,
                       writer=None, name: str = "probe"):
  """Train one probe; returns ``(params, record)`` with per-epoch history and final accuracy.

  ``train_batches(epoch)`` yields ``steps_per_epoch`` host batches ``(x, labels, weights)``;
  ``val_batches()`` one pass of the validation set. ``x`` is tokens (cached) or pixels (with
  ``token_fn``: streaming).
  """
  c = task.settings
  probe = probe_lib.build_probe(task.num_classes, task.embed_dim, task.encoder_heads, c.probe)
  params = probe_lib.init_probe_params(probe, task.embed_dim, seed)
  saved_config = probe_lib.probe_config(task.num_classes, task.embed_dim, task.encoder_heads,
                                        c.probe)
  total = c.epochs * steps_per_epoch
  tx = probe_lib.make_optimizer(c.optim, total, steps_per_epoch)
  state = placer.replicate(probe_lib.create_state(probe, params, tx))
  train, evaluate = probe_lib.make_steps(c.view_aggregation, token_fn, encoder_params,
                                         placer.mesh)
  lr_fn = probe_lib.lr_schedule(c.optim, total, steps_per_epoch)
  history, val = [], None
  t_start = time.time()
  for epoch in range(1, c.epochs + 1):
    sums, t0 = [], time.time()
    for i, (x, y, w) in enumerate(train_batches(epoch)):
      if i >= steps_per_epoch:
        break
      state, m = train(state, placer.batch(x), placer.batch(y), placer.batch(w))
      sums.append(m)
      step = (epoch - 1) * steps_per_epoch + i + 1
      if c.log_every and step % c.log_every == 0:
        log.info("[%s] epoch %d step %d/%d loss %.4f", name, epoch, step, total,
                 float(m["loss"]) / max(float(m["count"]), 1.0))
    tr = probe_lib.summarize(jax.device_get(sums))
    rec = dict(epoch=epoch, train_loss=tr["loss"], train_top1=tr["top1"],
               lr=float(lr_fn(epoch * steps_per_epoch - 1)), seconds=time.time() - t0)
    if epoch % max(1, c.eval_every) == 0 or epoch == c.epochs:
      val = probe_lib.summarize(jax.device_get(
          [evaluate(state, placer.batch(x), placer.batch(y), placer.batch(w))
           for x, y, w in val_batches()]))
      rec.update(val_top1=val["top1"], val_top5=val["top5"], val_loss=val["loss"],
                 num_val=val["count"])
      log.info("[%s] epoch %d/%d train loss %.4f top-1 %.2f | val top-1 %.2f top-5 %.2f (%d)",
               name, epoch, c.epochs, tr["loss"], tr["top1"], val["top1"], val["top5"],
               val["count"])
    if writer is not None:
      writer.write_scalars(epoch, {k if k.startswith(("val", "train")) else f"train_{k}": v
                                   for k, v in rec.items() if k not in ("epoch", "num_val")})
    history.append(rec)
  record = dict(seed=seed, num_train=int(num_train), num_val=int(val["count"]),
                top1=val["top1"], top5=val["top5"], val_loss=val["loss"],
                seconds=time.time() - t_start, history=history)
  return jax.device_get(state.params), record | dict(probe_config=saved_config)

def probe_eval_info(settings, encoder_info: dict) -> dict:
  """What a saved probe was trained on (checkpoint ``config["eval"]``): the encoder and the
  protocol, so inference can rebuild the same tokens."""
  return dict(task=settings.task, checkpoint=encoder_info.get("checkpoint"),
              checkpoint_key=encoder_info.get("checkpoint_key"), step=encoder_info.get("step"),
              model=encoder_info.get("model"), protocol=protocol(settings))

def make_writer(workdir: str, name: str):
  from clu import metric_writers  # pylint: disable=import-outside-toplevel  (imports TensorFlow)
  return metric_writers.create_default_writer(os.path.join(workdir, "tb", name),
                                              just_logging=jax.process_index() > 0,
                                              asynchronous=False)

def protocol(s) -> dict:
  """The settings a result depends on, for results.json (``s``: eval ``Settings``)."""
  layer = s.feature_layer
  return dict(
      num_segments=s.num_segments, frames_per_clip=s.data.num_frames,
      frame_step=s.data.frame_step, num_views=s.num_views,
      resolution=s.data.crop_size, view_aggregation=s.view_aggregation,
      epochs=s.epochs, batch_size=s.batch_size, optim=dataclasses.asdict(s.optim),
      probe=dataclasses.asdict(s.probe), encoder_dtype=s.encoder_dtype,
      feature_layer=list(layer) if isinstance(layer, tuple) else layer,
      cache_features=s.cache_features,
      probe_grid=[dict(g) for g in (s.probe_grid or [])] or None,
      lowshot=dict(fractions=list(s.lowshot.fractions), seeds=list(s.lowshot.seeds)))

def run_name(fraction: float, seed: int) -> str:
  return f"frac{fraction:g}_seed{seed}"

def grid_tasks(task: ProbeTask) -> list[tuple[str, ProbeTask]]:
  """``(name suffix, task)`` per probe: one per ``probe_grid`` entry, or the task itself."""
  s = task.settings
  if not s.probe_grid:
    return [("", task)]
  out = []
  for i, overrides in enumerate(s.probe_grid):
    optim = s.optim.with_overrides(dict(overrides), f"config.probe_grid[{i}]")
    head = dataclasses.replace(task, settings=dataclasses.replace(s, optim=optim))
    out.append((f"_head{i}", head))
  return out

def best_head(records: list[dict], grid) -> dict:
  """The run's record: its best probe's (by final top-1), with every probe's accuracy."""
  if len(records) == 1 and not grid:
    return records[0]
  best = max(range(len(records)), key=lambda i: records[i]["top1"])
  heads = [dict(optim=dict(g), top1=r["top1"], top5=r["top5"], name=r["name"])
           for g, r in zip(grid, records)]
  return records[best] | dict(best_head=best, heads=heads)

def _finish_run(task, workdir, name, params, record, writer, write):
  if writer is not None:
    writer.flush()
    writer.close()
  saved_config = record.pop("probe_config")
  if write:
    ckpt_lib.save_probe(os.path.join(workdir, "probes", name), params, saved_config,
                        eval_info=probe_eval_info(task.settings, task.encoder_info),
                        overwrite=True)
  return record | dict(name=name)

@dataclasses.dataclass
class BatchSource:
  """Where one probe run's batches come from: cached tokens, or clips decoded per step (then
  ``token_fn`` runs the frozen encoder inside the probe's jitted steps)."""
  num_train: int
  steps_per_epoch: int
  # A fresh ``train_batches(epoch)`` per probe: every probe of a grid sees the same batches in the
  # same order.
  new_train_batches: Callable[[], Callable[[int], Iterator]]
  val_batches: Callable[[], Iterator]
  token_fn: Optional[Callable] = None
  encoder_params: object = None

def _steps_per_epoch(c, num_train: int, batch: int) -> int:
  steps = max(1, math.ceil(num_train / batch))
  return min(steps, c.max_train_steps_per_epoch) if c.max_train_steps_per_epoch else steps

def cached_source(task, train_cache: FeatureCache, val_cache: FeatureCache, seed) -> BatchSource:
  c = task.settings
  batch = min(c.batch_size, len(train_cache))
  return BatchSource(
      num_train=len(train_cache), steps_per_epoch=_steps_per_epoch(c, len(train_cache), batch),
      new_train_batches=lambda: lambda epoch: cache_batches(
          train_cache, batch, np.random.default_rng([seed, epoch])),
      val_batches=lambda: cache_batches(val_cache, min(c.batch_size, len(val_cache)), None))

def streaming_source(task, train_spec, val_spec, num_train, seed, token_fn,
                     enc_params) -> BatchSource:
  c = task.settings
  if num_train is None:
    num_train = len(sources_lib.load_source(train_spec, c.data.tfds_data_dir))
  steps = _steps_per_epoch(c, num_train, c.batch_size)

  def new_train_batches():
    train_iter = iter(make_dataset(c, train_spec, train=True, batch_size=c.batch_size, seed=seed,
                                   repeat=True, num_views=1))

    def train_batches(epoch):
      del epoch  # the infinite iterator reshuffles every epoch by itself
      for _ in range(steps):
        b = next(train_iter)
        yield pixels_of(b), b["label"], np.ones(len(b["label"]), np.float32)

    return train_batches

  def val_batches():
    for b in make_dataset(c, val_spec, train=False, batch_size=c.batch_size, seed=c.seed,
                          repeat=False, num_views=c.num_views):
      yield pixels_of(b), b["label"], b["valid"].astype(np.float32)

  return BatchSource(num_train=num_train, steps_per_epoch=steps,
                     new_train_batches=new_train_batches, val_batches=val_batches,
                     token_fn=token_fn, encoder_params=enc_params)

def run_probes(task, source: BatchSource, seed, fraction, placer, workdir, write) -> dict:
  """One run: a probe per ``probe_grid`` entry (or one), trained on ``source``; the
  record of the best."""
  records = []
  for suffix, head_task in grid_tasks(task):
    name = run_name(fraction, seed) + suffix
    writer = make_writer(workdir, name) if write else None
    params, record = train_and_evaluate(
        head_task, seed=seed, num_train=source.num_train,
        train_batches=source.new_train_batches(), val_batches=source.val_batches,
        steps_per_epoch=source.steps_per_epoch, placer=placer, token_fn=source.token_fn,
        encoder_params=source.encoder_params, writer=writer, name=name)
    records.append(_finish_run(head_task, workdir, name, params, record, writer, write))
  return best_head(records, task.settings.probe_grid)

def run_cached_probe(task, train_cache: FeatureCache, val_cache: FeatureCache, seed, fraction,
                     placer, workdir, write):
  """One probe run trained and validated on cached tokens (all of ``train_cache``)."""
  return run_probes(task, cached_source(task, train_cache, val_cache, seed), seed, fraction,
                    placer, workdir, write)
