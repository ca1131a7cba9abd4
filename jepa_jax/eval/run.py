"""The frozen-evaluation driver: encoder -> (cached) tokens -> probe per (fraction, seed) -> results.

``evaluate(config, workdir)`` does the whole protocol and returns the results dict it also writes
to ``<workdir>/results.json``:

1. Load the frozen encoder (``encoder.load_frozen_encoder``).
2. Streaming (``cache_features=False``, the reference): every training step decodes fresh clips
   (one random-crop view per segment) and runs encoder + probe in one jitted program; every
   validation pass decodes S segments x V centre/side views.
   Cached (``cache_features=True``): the encoder runs once per training example (centre crop,
   one view) and once per validation example (V views); the probe then trains on the stored
   tokens, which is what makes many probe epochs affordable on a CPU.
3. For every low-shot fraction and seed, a fresh probe is trained for ``epochs`` epochs with
   AdamW + cosine LR (``probe``), validated every ``eval_every`` epochs, and its parameters saved
   with orbax under ``<workdir>/probes/<run>``; top-1/top-5 per epoch go to TensorBoard under
   ``<workdir>/tb/<run>``.
4. Mean and std over seeds per fraction; ``results.json``.

``config.probe_grid`` (V-JEPA 2's protocol): every (fraction, seed) run trains one probe per grid
entry (optim overrides), each on the same batches in the same order, and reports the best probe's
accuracy, with every probe's under ``heads``. The reference trains its probes side by side over
one pass of the data; here they train one after another -- the same numbers, and with cached
features the encoder still runs once, while streaming re-encodes the clips for each probe.

Data parallelism: ``placement.Placer`` (the data mesh of ``jepa_jax.sharding``); batches are split
over all devices, parameters replicated. The feature cache lives in ``features``.
"""
import copy
import dataclasses
import json
import logging
import math
import os
import time
from typing import Callable, Iterator, Optional

import jax
import numpy as np
import optax

from jepa_jax import checkpoint as ckpt_lib
from jepa_jax import models
from jepa_jax import data as data_lib
from jepa_jax import paths
from jepa_jax import sharding
from jepa_jax.data import sources as sources_lib
from jepa_jax.errors import ConfigError
from jepa_jax.eval import encoder as enc_lib
from jepa_jax.eval import lowshot
from jepa_jax.eval import probe as probe_lib
from jepa_jax.eval.features import FeatureCache, cache_batches, extract_features, pixels_of
from jepa_jax.eval.placement import Placer

log = logging.getLogger(__name__)

CACHE_DTYPES = ("float32", "bfloat16")  # of models.DTYPES


# ---------------------------------------------------------------------------------------------
# Data


def resolve_indexes(config) -> tuple[str, str]:
  """(train, val) source specs; the synthetic set's per-label split files when none are given."""
  if config.train_index:
    if not config.val_index:
      raise ConfigError("config.train_index is set but config.val_index is empty")
    return config.train_index, config.val_index
  if not config.data.synthetic_dir:
    raise ConfigError("set config.train_index/config.val_index (index files, directories or "
                      "tfds:name@split), or config.data.synthetic_dir for the synthetic set")
  index = data_lib.ensure_synthetic(config.data.synthetic_dir, config.data.synthetic_num_videos,
                                    config.data.synthetic_seed)
  root = os.path.dirname(index)
  label = config.synthetic_label or "motion"
  suffix = "" if label == "motion" else f"_{label}"
  paths = [os.path.join(root, f"{split}{suffix}.csv") for split in ("train", "val")]
  for p in paths:
    if not os.path.exists(p):
      raise ConfigError(f"no synthetic index {p}: config.synthetic_label must be one of motion, "
                        "direction, speed, rotation, shape, colour")
  return paths[0], paths[1]


def source_labels(spec: str, tfds_data_dir=None) -> np.ndarray:
  """All labels of a source (cheap for index files; reads every example of a TFDS source)."""
  src = sources_lib.load_source(spec, tfds_data_dir)
  if hasattr(src, "labels"):
    return np.asarray(src.labels)
  return np.asarray([src.label(i) for i in range(len(src))], np.int32)


def make_dataset(config, spec: str, *, train: bool, batch_size: int, seed: int, repeat: bool,
                 num_views: int):
  """Per-process batches of ``spec`` (``batch_size`` is global)."""
  nproc = jax.process_count()
  if batch_size % nproc:
    raise ConfigError(f"batch size {batch_size} is not divisible by the {nproc} processes")
  return data_lib.make_eval_dataset(
      config.data, spec, batch_size=batch_size // nproc, num_segments=config.num_segments,
      frames_per_clip=config.data.num_frames, frame_step=config.data.frame_step,
      num_views=num_views, train=train, seed=seed, shard_index=jax.process_index(),
      shard_count=nproc, repeat=repeat)


# ---------------------------------------------------------------------------------------------
# Probe training


@dataclasses.dataclass
class ProbeTask:
  """Everything one probe run needs besides its seed and data."""
  num_classes: int
  embed_dim: int
  encoder_heads: int
  config: object  # the eval ConfigDict
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
  c = task.config
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


def probe_eval_info(config, encoder_info: dict) -> dict:
  """What a saved probe was trained on (checkpoint ``config["eval"]``): the encoder and the
  protocol, so inference can rebuild the same tokens."""
  return dict(task=config.task, checkpoint=encoder_info.get("checkpoint"),
              checkpoint_key=encoder_info.get("checkpoint_key"), step=encoder_info.get("step"),
              model=encoder_info.get("model"), protocol=protocol(config))


def make_writer(workdir: str, name: str):
  from clu import metric_writers  # pylint: disable=import-outside-toplevel  (imports TensorFlow)
  return metric_writers.create_default_writer(os.path.join(workdir, "tb", name),
                                              just_logging=jax.process_index() > 0,
                                              asynchronous=False)


# ---------------------------------------------------------------------------------------------
# The protocol


def protocol(config) -> dict:
  """The settings a result depends on, for results.json."""
  return dict(
      num_segments=config.num_segments, frames_per_clip=config.data.num_frames,
      frame_step=config.data.frame_step, num_views=config.num_views,
      resolution=config.data.crop_size, view_aggregation=config.view_aggregation,
      epochs=config.epochs, batch_size=config.batch_size, optim=config.optim.to_dict(),
      probe=config.probe.to_dict(), encoder_dtype=config.encoder_dtype,
      feature_layer=config.feature_layer, cache_features=config.cache_features,
      probe_grid=[dict(g) for g in (config.get("probe_grid") or [])] or None,
      lowshot=dict(fractions=list(config.lowshot.fractions), seeds=list(config.lowshot.seeds)))


def summarize_runs(runs: list[dict], fraction: float) -> dict:
  top1 = lowshot.mean_std([r["top1"] for r in runs])
  top5 = lowshot.mean_std([r["top5"] for r in runs])
  return dict(fraction=fraction, num_train=int(np.mean([r["num_train"] for r in runs])),
              top1=top1[0], top1_std=top1[1], top5=top5[0], top5_std=top5[1],
              seeds=[r["seed"] for r in runs], runs=runs)


def run_name(fraction: float, seed: int) -> str:
  return f"frac{fraction:g}_seed{seed}"


def evaluate(config, workdir: str, *, encoder_bundle=None, write: bool = True) -> dict:
  """The whole frozen evaluation (module docstring); returns and writes the results dict.

  ``encoder_bundle`` = ``(encoder, params, info)`` skips loading (the demo comparison reuses one).
  """
  if not config.get("train", True):
    return evaluate_saved_probe(config, workdir, encoder_bundle=encoder_bundle, write=write)
  if config.get("probe_checkpoint"):
    raise ConfigError("config.probe_checkpoint is set but config.train is True: set "
                      "config.train=False to evaluate that probe, or drop probe_checkpoint to "
                      "train a new one")
  workdir = paths.resolve(workdir)
  os.makedirs(workdir, exist_ok=True)
  t_start = time.time()
  placer = Placer()
  encoder, enc_params, info = encoder_bundle or enc_lib.load_frozen_encoder(config)
  enc_params = placer.replicate(enc_params)
  train_spec, val_spec = resolve_indexes(config)
  train_labels = None
  try:
    train_labels = source_labels(train_spec, config.data.tfds_data_dir)
  except Exception as e:  # noqa: BLE001 -- labels are optional unless needed below
    log.warning("could not read the labels of %s up front (%s)", train_spec, e)
  num_classes = config.num_classes
  if num_classes is None:
    if train_labels is None:
      raise ConfigError("set config.num_classes: the training labels could not be read up front")
    num_classes = int(train_labels.max()) + 1
  if train_labels is not None and train_labels.max() >= num_classes:
    raise ConfigError(f"the training index has label {int(train_labels.max())} but "
                      f"config.num_classes is {num_classes}")
  token_fn = enc_lib.make_token_fn(encoder, config.feature_layer)
  task = ProbeTask(num_classes, encoder.embed_dim, encoder.block.num_heads, config, info)
  fractions = [float(f) for f in config.lowshot.fractions]
  seeds = [int(s) for s in config.lowshot.seeds]
  if any(f < 1.0 for f in fractions) and train_labels is None:
    raise ConfigError(f"low-shot splits need the labels of {train_spec} (an index file)")

  baseline_seeds = [int(s) for s in (config.get("random_baseline_seeds") or ())]
  settings, baseline = [], None
  if config.cache_features:
    jit_tokens = jax.jit(sharding.with_activation_sharding(token_fn, placer.mesh))
    cache_dtype = np.dtype(models.dtype_of(config.cache_dtype, "config.cache_dtype",
                                           CACHE_DTYPES))
    xb = config.extract_batch_size or config.batch_size
    train_batches = make_dataset(config, train_spec, train=False, batch_size=xb,
                                 seed=config.seed, repeat=False, num_views=1)
    val_batches = make_dataset(config, val_spec, train=False, batch_size=xb, seed=config.seed,
                               repeat=False, num_views=config.num_views)
    if baseline_seeds:  # decoded once, read by every encoder
      train_batches, val_batches = list(train_batches), list(val_batches)
    train_cache = extract_features(jit_tokens, enc_params, train_batches, placer, cache_dtype)
    val_cache = extract_features(jit_tokens, enc_params, val_batches, placer, cache_dtype)
    num_val = len(val_cache)
    for fraction in fractions:
      runs = []
      for seed in seeds:
        rows = lowshot.balanced_subset(train_cache.labels, fraction, seed)
        runs.append(run_cached_probe(task, train_cache.subset(rows), val_cache, seed, fraction,
                                    placer, workdir, write))
      settings.append(summarize_runs(runs, fraction))
    if baseline_seeds:
      def cached(params, seed, rows_of):
        train_c = extract_features(jit_tokens, placer.replicate(params), train_batches, placer,
                                   cache_dtype)
        val_c = extract_features(jit_tokens, placer.replicate(params), val_batches, placer,
                                 cache_dtype)
        return cached_source(task, train_c.subset(rows_of(train_c.labels)), val_c, seed)
      baseline = random_baseline(task, encoder, baseline_seeds, max(fractions), cached, placer,
                                 workdir)
  else:
    num_val = None
    for fraction in fractions:
      runs = []
      for seed in seeds:
        spec, n = train_spec, None
        if fraction < 1.0:
          rows = lowshot.balanced_subset(train_labels, fraction, seed)
          spec = lowshot.write_subset_index(
              train_spec, rows, os.path.join(workdir, "lowshot", f"{run_name(fraction, seed)}.csv"))
          n = len(rows)
        source = streaming_source(task, spec, val_spec, n, seed, token_fn, enc_params)
        runs.append(run_probes(task, source, seed, fraction, placer, workdir, write))
      settings.append(summarize_runs(runs, fraction))
    num_val = settings[0]["runs"][0]["num_val"]
    if baseline_seeds:
      fraction = max(fractions)

      def streamed(params, seed, rows_of):
        spec, n = train_spec, None
        if fraction < 1.0:
          rows = rows_of(train_labels)
          spec = lowshot.write_subset_index(
              train_spec, rows, os.path.join(workdir, "lowshot", f"random_{seed}.csv"))
          n = len(rows)
        return streaming_source(task, spec, val_spec, n, seed, token_fn, placer.replicate(params))
      baseline = random_baseline(task, encoder, baseline_seeds, fraction, streamed, placer, workdir)

  main = max(settings, key=lambda s: s["fraction"])
  results = dict(
      task=config.task, checkpoint=info["checkpoint"], checkpoint_key=info["checkpoint_key"],
      step=info["step"], model=info["model"], num_classes=num_classes,
      train_index=train_spec, val_index=val_spec, protocol=protocol(config),
      accuracy=dict(fraction=main["fraction"], top1=main["top1"], top1_std=main["top1_std"],
                    top5=main["top5"], top5_std=main["top5_std"]),
      num_train_examples=main["num_train"], num_val_examples=num_val,
      settings=settings, seconds=time.time() - t_start)
  if baseline is not None:
    results["random_baseline"] = baseline
    results["pretrained_vs_random"] = versus_random(main, baseline)
  if write:
    path = write_results(results, workdir)
    log.info("wrote %s: top-1 %.2f +- %.2f, top-5 %.2f (%s, fraction %g)", path,
             main["top1"], main["top1_std"], main["top5"], config.task, main["fraction"])
  return results


def random_baseline(task, encoder, seeds, fraction, make_source, placer, workdir) -> dict:
  """The same probe recipe on randomly initialised encoders of the same architecture: for each
  seed s, an encoder initialised with s probed with probe seed s (the fraction's split of s) on the
  same clips (cached: decoded once for every encoder). ``make_source(params, seed, rows_of)`` is
  the run's ``BatchSource`` for those encoder parameters; ``rows_of(labels)`` the split. Nothing
  is saved (the probes of a random encoder are not worth keeping)."""
  runs = []
  for seed in seeds:
    source = make_source(enc_lib.random_params(encoder, seed), seed,
                         lambda labels, s=seed: lowshot.balanced_subset(labels, fraction, s))
    record = run_probes(task, source, seed, fraction, placer, workdir, write=False)
    log.info("random-init encoder (init and probe seed %d): top-1 %.2f", seed, record["top1"])
    runs.append(dict(seed=seed, top1=record["top1"], top5=record["top5"]))
  top1, top1_std = lowshot.mean_std([r["top1"] for r in runs])
  return dict(fraction=fraction, seeds=list(seeds), top1=top1, top1_std=top1_std,
              per_seed=[r["top1"] for r in runs], runs=runs)


def versus_random(main: dict, baseline: dict) -> dict:
  """The pretrained encoder's top-1 against the random baseline's: the margin and the seeds'
  spread (the larger of the two sample stds), and whether the margin exceeds it."""
  spread = max(main["top1_std"], baseline["top1_std"])
  margin = main["top1"] - baseline["top1"]
  return dict(pretrained=main["top1"], pretrained_std=main["top1_std"],
              pretrained_seeds=main["seeds"], random=baseline["top1"],
              random_std=baseline["top1_std"], random_seeds=baseline["seeds"], margin=margin,
              spread=spread, margin_exceeds_spread=bool(margin > spread))


def versus_line(v: dict) -> str:
  """The comparison as the eval prints it."""
  verdict = "exceeds" if v["margin_exceeds_spread"] else "does not exceed"
  return (f"pretrained {v['pretrained']:.1f} ± {v['pretrained_std']:.1f} vs random "
          f"{v['random']:.1f} ± {v['random_std']:.1f}: margin {v['margin']:+.1f}, which "
          f"{verdict} the seeds' spread {v['spread']:.1f} (top-1; probe seeds "
          f"{v['pretrained_seeds']}; random-init encoder and probe seeds {v['random_seeds']})")


def write_results(results: dict, workdir: str) -> str:
  path = os.path.join(workdir, "results.json")
  if jax.process_index() == 0:
    with paths.atomic_write(path) as f:
      json.dump(results, f, indent=1)
  return path


# ---------------------------------------------------------------------------------------------
# A saved probe, no training


def resolve_val_index(config) -> str:
  """The validation source alone (``config.val_index``, else the synthetic set's)."""
  if config.val_index:
    return config.val_index
  c = copy.deepcopy(config)
  c.train_index = ""
  return resolve_indexes(c)[1]


def load_saved_probe(path: str, embed_dim: int, dtype: str):
  """``(probe module, params, probe_config, eval info or None)`` of a probe checkpoint, checked
  against the encoder's width."""
  if not path:
    raise ConfigError("config.train=False needs config.probe_checkpoint: a probe directory (an "
                      "eval run's probes/<run>, or python -m jepa_jax.convert --kind probe --out "
                      "DIR)")
  params, saved = ckpt_lib.load_probe(path)
  if int(saved["embed_dim"]) != embed_dim:
    raise ckpt_lib.CheckpointError(
        f"probe {path} reads {saved['embed_dim']}-wide tokens but the encoder makes {embed_dim}-wide "
        "ones; give the encoder the probe was trained on (config.checkpoint)")
  probe = probe_lib.probe_from_config(saved, dtype)
  ckpt_lib.check_shapes(params, probe_lib.abstract_params(probe, embed_dim), f"probe {path}")
  eval_info = ckpt_lib.read_probe_config(path).get("eval")
  return probe, params, saved, eval_info


PROTOCOL_KEYS = ("num_segments", "frames_per_clip", "frame_step", "num_views", "resolution",
                 "feature_layer")


def protocol_differences(trained: Optional[dict], now: dict) -> list[str]:
  """The protocol settings a saved probe was trained with that differ from ``now``."""
  if not trained:
    return []
  return [f"{k} {trained[k]} (trained) vs {now[k]} (now)" for k in PROTOCOL_KEYS
          if k in trained and trained[k] != now[k]]


def evaluate_saved_probe(config, workdir: str, *, encoder_bundle=None, write: bool = True) -> dict:
  """Validate a saved probe (``config.probe_checkpoint``) on ``config``'s validation set with the
  full segments x views protocol; no training. Returns and writes results.json (the training
  run's keys; std 0, one run)."""
  workdir = paths.resolve(workdir)
  os.makedirs(workdir, exist_ok=True)
  t_start = time.time()
  placer = Placer()
  encoder, enc_params, info = encoder_bundle or enc_lib.load_frozen_encoder(config)
  probe, probe_params, saved, eval_info = load_saved_probe(
      config.probe_checkpoint, encoder.embed_dim, config.probe.dtype)
  num_classes = int(saved["num_classes"])
  if config.num_classes is not None and int(config.num_classes) != num_classes:
    raise ConfigError(f"config.num_classes is {config.num_classes} but the probe "
                      f"{config.probe_checkpoint} has {num_classes} classes; set "
                      f"--config.num_classes={num_classes} (or None)")
  for diff in protocol_differences((eval_info or {}).get("protocol"), protocol(config)):
    log.warning("the probe was trained with another protocol: %s", diff)
  val_spec = resolve_val_index(config)
  try:
    val_labels = source_labels(val_spec, config.data.tfds_data_dir)
  except Exception as e:  # noqa: BLE001 -- checked batch by batch otherwise
    log.warning("could not read the labels of %s up front (%s)", val_spec, e)
    val_labels = None
  if val_labels is not None and len(val_labels) and val_labels.max() >= num_classes:
    raise ConfigError(f"the validation index has label {int(val_labels.max())} but the probe has "
                      f"{num_classes} classes: the index and the probe number classes differently")
  token_fn = enc_lib.make_token_fn(encoder, config.feature_layer)
  state = placer.replicate(probe_lib.create_state(probe, probe_params, optax.identity()))
  _, evaluate_step = probe_lib.make_steps(config.view_aggregation, token_fn,
                                          placer.replicate(enc_params), placer.mesh)
  sums = []
  for b in make_dataset(config, val_spec, train=False, batch_size=config.batch_size,
                        seed=config.seed, repeat=False, num_views=config.num_views):
    sums.append(evaluate_step(state, placer.batch(pixels_of(b)), placer.batch(b["label"]),
                              placer.batch(b["valid"].astype(np.float32))))
  val = probe_lib.summarize(jax.device_get(sums))
  acc = dict(fraction=None, top1=val["top1"], top1_std=0.0, top5=val["top5"], top5_std=0.0)
  run = dict(name="saved_probe", num_train=0, num_val=val["count"], top1=val["top1"],
             top5=val["top5"], val_loss=val["loss"], seconds=time.time() - t_start)
  results = dict(
      task=config.task, checkpoint=info["checkpoint"], checkpoint_key=info["checkpoint_key"],
      step=info["step"], model=info["model"], num_classes=num_classes, train_index=None,
      val_index=val_spec, protocol=protocol(config), trained=False,
      probe_checkpoint=config.probe_checkpoint, probe=saved, probe_trained_with=eval_info,
      accuracy=acc, num_train_examples=0, num_val_examples=val["count"],
      settings=[dict(acc, num_train=0, seeds=[], runs=[run])], seconds=time.time() - t_start)
  if write:
    path = write_results(results, workdir)
    log.info("wrote %s: top-1 %.2f, top-5 %.2f (saved probe %s on %s)", path, val["top1"],
             val["top5"], config.probe_checkpoint, val_spec)
  return results


def grid_tasks(task: ProbeTask) -> list[tuple[str, ProbeTask]]:
  """``(name suffix, task)`` per probe: one per ``config.probe_grid`` entry, or the task itself."""
  grid = task.config.get("probe_grid")
  if not grid:
    return [("", task)]
  out = []
  for i, overrides in enumerate(grid):
    unknown = set(dict(overrides)) - set(task.config.optim)
    if unknown:
      raise ConfigError(f"config.probe_grid[{i}] sets {sorted(unknown)}, which config.optim does "
                        "not have")
    c = copy.deepcopy(task.config)
    c.optim.update(dict(overrides))
    out.append((f"_head{i}", dataclasses.replace(task, config=c)))
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
                        eval_info=probe_eval_info(task.config, task.encoder_info), overwrite=True)
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
  c = task.config
  batch = min(c.batch_size, len(train_cache))
  return BatchSource(
      num_train=len(train_cache), steps_per_epoch=_steps_per_epoch(c, len(train_cache), batch),
      new_train_batches=lambda: lambda epoch: cache_batches(
          train_cache, batch, np.random.default_rng([seed, epoch])),
      val_batches=lambda: cache_batches(val_cache, min(c.batch_size, len(val_cache)), None))


def streaming_source(task, train_spec, val_spec, num_train, seed, token_fn,
                     enc_params) -> BatchSource:
  c = task.config
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
  """One run: a probe per ``config.probe_grid`` entry (or one), trained on ``source``; the
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
  return best_head(records, task.config.get("probe_grid"))


def run_cached_probe(task, train_cache: FeatureCache, val_cache: FeatureCache, seed, fraction,
                     placer, workdir, write):
  """One probe run trained and validated on cached tokens (all of ``train_cache``)."""
  return run_probes(task, cached_source(task, train_cache, val_cache, seed), seed, fraction,
                    placer, workdir, write)
