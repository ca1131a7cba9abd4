"""The frozen-evaluation driver: encoder -> (cached) tokens -> probe per (fraction, seed) -> results.

``evaluate(config, workdir)`` reads the config once (``eval.settings.read``, every check before
anything loads), loads the frozen encoder, then for every low-shot fraction and seed trains a fresh
probe for ``epochs`` epochs (validated every ``eval_every``, saved under ``<workdir>/probes/<run>``,
TensorBoard under ``<workdir>/tb/<run>``) and writes the mean and std over seeds to
``results.json``, which it also returns. Streaming (``cache_features=False``, the reference)
decodes fresh clips and runs encoder + probe in one jitted step; cached runs the encoder once per
example, which makes many probe epochs affordable on a CPU. ``config.probe_grid`` (V-JEPA 2)
trains one probe per grid entry on the same batches and reports the best; the reference trains
them side by side, here one after another (the same numbers; streaming re-encodes per probe). The
driver only: its parts (``datasets``, ``features``, ``probe_runs``, ``probe``, ``results``,
``placement``) take ``Settings`` and serve fine-tuning, predict and extract too.
"""
import logging
import os
import time
from typing import Optional

import jax
import numpy as np
import optax

from jepa_jax import models
from jepa_jax import paths
from jepa_jax import sharding
from jepa_jax.errors import ConfigError
from jepa_jax.eval import encoder as enc_lib
from jepa_jax.eval import lowshot
from jepa_jax.eval import probe as probe_lib
from jepa_jax.eval import settings as settings_lib
from jepa_jax.eval.datasets import make_dataset, resolve_indexes, resolve_val_index, source_labels
from jepa_jax.eval.features import extract_features, pixels_of
from jepa_jax.eval.placement import Placer
from jepa_jax.eval.probe_runs import (ProbeTask, cached_source, protocol, run_cached_probe,
                                      run_name, run_probes, streaming_source)
from jepa_jax.eval.results import summarize_runs, versus_random, write_results

log = logging.getLogger(__name__)


def evaluate(config, workdir: str, *, encoder_bundle=None, write: bool = True) -> dict:
  """The whole frozen evaluation of the eval ConfigDict ``config`` (module docstring); returns
  and writes the results dict.

  ``encoder_bundle`` = ``(encoder, params, info)`` skips loading (the demo comparison reuses one).
  """
  s = settings_lib.read(config)
  if not s.train:
    return evaluate_saved_probe(s, workdir, encoder_bundle=encoder_bundle, write=write)
  return train_probes(s, workdir, encoder_bundle=encoder_bundle, write=write)


def train_probes(s: settings_lib.Settings, workdir: str, *, encoder_bundle=None,
                 write: bool = True) -> dict:
  """``evaluate`` with ``s.train``: probes trained per (fraction, seed), results.json."""
  workdir = paths.resolve(workdir)
  os.makedirs(workdir, exist_ok=True)
  t_start = time.time()
  placer = Placer.of(s.mesh)
  encoder, enc_params, info = encoder_bundle or enc_lib.load_frozen_encoder(s)
  enc_params = placer.encoder_params(enc_params)
  train_spec, val_spec = resolve_indexes(s)
  train_labels = None
  try:
    train_labels = source_labels(train_spec, s.data.tfds_data_dir)
  except Exception as e:  # noqa: BLE001 -- labels are optional unless needed below
    log.warning("could not read the labels of %s up front (%s)", train_spec, e)
  num_classes = s.num_classes
  if num_classes is None:
    if train_labels is None:
      raise ConfigError("set config.num_classes: the training labels could not be read up front")
    num_classes = int(train_labels.max()) + 1
  if train_labels is not None and train_labels.max() >= num_classes:
    raise ConfigError(f"the training index has label {int(train_labels.max())} but "
                      f"config.num_classes is {num_classes}")
  token_fn = enc_lib.make_token_fn(encoder, s.feature_layer)
  task = ProbeTask(num_classes, encoder.embed_dim, encoder.block.num_heads, s, info)
  fractions, seeds = list(s.lowshot.fractions), list(s.lowshot.seeds)
  if any(f < 1.0 for f in fractions) and train_labels is None:
    raise ConfigError(f"low-shot splits need the labels of {train_spec} (an index file)")

  baseline_seeds = list(s.random_baseline_seeds)
  by_fraction, baseline = [], None
  if s.cache_features:
    jit_tokens = jax.jit(sharding.with_activation_sharding(token_fn, placer.mesh))
    cache_dtype = np.dtype(models.DTYPES[s.cache_dtype])
    xb = s.extract_batch_size or s.batch_size
    train_batches = make_dataset(s, train_spec, train=False, batch_size=xb,
                                 seed=s.seed, repeat=False, num_views=1)
    val_batches = make_dataset(s, val_spec, train=False, batch_size=xb, seed=s.seed,
                               repeat=False, num_views=s.num_views)
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
      by_fraction.append(summarize_runs(runs, fraction))
    if baseline_seeds:
      def cached(params, seed, rows_of):
        params = placer.encoder_params(params)
        train_c = extract_features(jit_tokens, params, train_batches, placer, cache_dtype)
        val_c = extract_features(jit_tokens, params, val_batches, placer, cache_dtype)
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
      by_fraction.append(summarize_runs(runs, fraction))
    num_val = by_fraction[0]["runs"][0]["num_val"]
    if baseline_seeds:
      fraction = max(fractions)

      def streamed(params, seed, rows_of):
        spec, n = train_spec, None
        if fraction < 1.0:
          rows = rows_of(train_labels)
          spec = lowshot.write_subset_index(
              train_spec, rows, os.path.join(workdir, "lowshot", f"random_{seed}.csv"))
          n = len(rows)
        return streaming_source(task, spec, val_spec, n, seed, token_fn,
                                placer.encoder_params(params))
      baseline = random_baseline(task, encoder, baseline_seeds, fraction, streamed, placer, workdir)

  main = max(by_fraction, key=lambda f: f["fraction"])
  results = dict(
      task=s.task, checkpoint=info["checkpoint"], checkpoint_key=info["checkpoint_key"],
      step=info["step"], model=info["model"], num_classes=num_classes,
      train_index=train_spec, val_index=val_spec, protocol=protocol(s),
      accuracy=dict(fraction=main["fraction"], top1=main["top1"], top1_std=main["top1_std"],
                    top5=main["top5"], top5_std=main["top5_std"]),
      num_train_examples=main["num_train"], num_val_examples=num_val,
      settings=by_fraction, seconds=time.time() - t_start)
  if baseline is not None:
    results["random_baseline"] = baseline
    results["pretrained_vs_random"] = versus_random(main, baseline)
  if write:
    path = write_results(results, workdir)
    log.info("wrote %s: top-1 %.2f +- %.2f, top-5 %.2f (%s, fraction %g)", path,
             main["top1"], main["top1_std"], main["top5"], s.task, main["fraction"])
  return results

def random_baseline(task, encoder, seeds, fraction, make_source, placer, workdir) -> dict:
  """The same probe recipe on randomly initialised encoders of the same architecture: for each
  seed s, an encoder initialised with s probed with probe seed s (the fraction's split of s) on the
  same clips (cached: decoded once for every encoder). ``make_source(params, seed, rows_of)`` is
  the run's ``BatchSource`` for those encoder parameters; ``rows_of(labels)`` the split. Nothing
  is saved (the probes of a random encoder are not worth keeping)."""
  runs = []
  for seed in seeds:
    source = make_source(models.init_params(encoder, jax.random.PRNGKey(seed), jit=True), seed,
                         lambda labels, s=seed: lowshot.balanced_subset(labels, fraction, s))
    record = run_probes(task, source, seed, fraction, placer, workdir, write=False)
    log.info("random-init encoder (init and probe seed %d): top-1 %.2f", seed, record["top1"])
    runs.append(dict(seed=seed, top1=record["top1"], top5=record["top5"]))
  top1, top1_std = lowshot.mean_std([r["top1"] for r in runs])
  return dict(fraction=fraction, seeds=list(seeds), top1=top1, top1_std=top1_std,
              per_seed=[r["top1"] for r in runs], runs=runs)

PROTOCOL_KEYS = ("num_segments", "frames_per_clip", "frame_step", "num_views", "resolution",
                 "feature_layer")

def protocol_differences(trained: Optional[dict], now: dict) -> list[str]:
  """The protocol settings a saved probe was trained with that differ from ``now``."""
  if not trained:
    return []
  return [f"{k} {trained[k]} (trained) vs {now[k]} (now)" for k in PROTOCOL_KEYS
          if k in trained and trained[k] != now[k]]

def evaluate_saved_probe(s: settings_lib.Settings, workdir: str, *, encoder_bundle=None,
                         write: bool = True) -> dict:
  """Validate a saved probe (``probe_checkpoint``) on the settings' validation set with the
  full segments x views protocol; no training. Returns and writes results.json (the training
  run's keys; std 0, one run)."""
  workdir = paths.resolve(workdir)
  os.makedirs(workdir, exist_ok=True)
  t_start = time.time()
  placer = Placer.of(s.mesh)
  encoder, enc_params, info = encoder_bundle or enc_lib.load_frozen_encoder(s)
  probe, probe_params, saved, eval_info = probe_lib.load_saved_probe(
      s.probe_checkpoint, encoder.embed_dim, s.probe.dtype)
  num_classes = int(saved["num_classes"])
  if s.num_classes is not None and s.num_classes != num_classes:
    raise ConfigError(f"config.num_classes is {s.num_classes} but the probe "
                      f"{s.probe_checkpoint} has {num_classes} classes; set "
                      f"--config.num_classes={num_classes} (or None)")
  for diff in protocol_differences((eval_info or {}).get("protocol"), protocol(s)):
    log.warning("the probe was trained with another protocol: %s", diff)
  val_spec = resolve_val_index(s)
  try:
    val_labels = source_labels(val_spec, s.data.tfds_data_dir)
  except Exception as e:  # noqa: BLE001 -- checked batch by batch otherwise
    log.warning("could not read the labels of %s up front (%s)", val_spec, e)
    val_labels = None
  if val_labels is not None and len(val_labels) and val_labels.max() >= num_classes:
    raise ConfigError(f"the validation index has label {int(val_labels.max())} but the probe has "
                      f"{num_classes} classes: the index and the probe number classes differently")
  token_fn = enc_lib.make_token_fn(encoder, s.feature_layer)
  state = placer.replicate(probe_lib.create_state(probe, probe_params, optax.identity()))
  _, evaluate_step = probe_lib.make_steps(s.view_aggregation, token_fn,
                                          placer.encoder_params(enc_params), placer.mesh)
  sums = []
  for b in make_dataset(s, val_spec, train=False, batch_size=s.batch_size,
                        seed=s.seed, repeat=False, num_views=s.num_views):
    sums.append(evaluate_step(state, placer.batch(pixels_of(b)), placer.batch(b["label"]),
                              placer.batch(b["valid"].astype(np.float32))))
  val = probe_lib.summarize(jax.device_get(sums))
  acc = dict(fraction=None, top1=val["top1"], top1_std=0.0, top5=val["top5"], top5_std=0.0)
  run = dict(name="saved_probe", num_train=0, num_val=val["count"], top1=val["top1"],
             top5=val["top5"], val_loss=val["loss"], seconds=time.time() - t_start)
  results = dict(
      task=s.task, checkpoint=info["checkpoint"], checkpoint_key=info["checkpoint_key"],
      step=info["step"], model=info["model"], num_classes=num_classes, train_index=None,
      val_index=val_spec, protocol=protocol(s), trained=False,
      probe_checkpoint=s.probe_checkpoint, probe=saved, probe_trained_with=eval_info,
      accuracy=acc, num_train_examples=0, num_val_examples=val["count"],
      settings=[dict(acc, num_train=0, seeds=[], runs=[run])], seconds=time.time() - t_start)
  if write:
    path = write_results(results, workdir)
    log.info("wrote %s: top-1 %.2f, top-5 %.2f (saved probe %s on %s)", path, val["top1"],
             val["top5"], s.probe_checkpoint, val_spec)
  return results
