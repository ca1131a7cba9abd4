"""The fine-tuning loop: encoder + head trained end to end, checkpointed, resumed exactly, tested
on segments x views.

``finetune(config, workdir)`` reads the config once (``finetune.settings.read``: every check,
before anything is loaded); below it everything takes ``finetune.settings.Settings``. Then it

1. Loads the encoder as the frozen evaluation does (``eval.encoder.load_frozen_encoder``; any
   checkpoint kind), with ``config.drop_path`` set on its blocks, and builds the head.
2. Resumes from the latest readable checkpoint in ``<workdir>/checkpoints`` (train state + the
   data iterator's position, as pretraining), or starts at step 0. The state lives on
   ``config.mesh`` with pretraining's sharding rules (``sharding.state_shardings``: FSDP when
   ``fsdp > 1``), initialised and restored directly into them. Checkpoints are of kind
   ``finetune`` (``checkpoint.KINDS``): evaluation, extraction, prediction and conversion read
   their encoder like a pretrained one.
3. Trains ``epochs x steps_per_epoch`` updates: one training clip per video (random resized crop),
   label smoothing, mixup/cutmix, drop path, AdamW with warm-up + cosine and layer-wise LR decay.
   Randomness is ``fold_in(PRNGKey(seed + 1), step)``, so a resumed run repeats the same updates.
4. Validates every ``eval_every`` epochs and at the end: every test video as ``test_segments x
   test_views`` clips, each classified on its own, the softmax scores averaged (VideoMAE's test).
5. Writes ``metrics.jsonl`` + TensorBoard (loss, LR, steps/s, ETA) and ``results.json``.

Steps 3-5 run in the loop shell that pretraining runs too (``loop.run``: prefetch, metric
windows, save cadence, preemption, and the non-finite policy: an update whose loss or gradients
are not finite is never applied; ``config.nonfinite`` stops or skips, as in pretraining).
"""
import dataclasses
import logging
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from jepa_jax import checkpoint as ckpt_lib
from jepa_jax import data as data_lib
from jepa_jax import loop
from jepa_jax import nonfinite as nonfinite_lib
from jepa_jax import optim
from jepa_jax import paths
from jepa_jax import sharding
from jepa_jax.data import clips as clips_lib
from jepa_jax.data import normalize as normalize_lib
from jepa_jax.errors import ConfigError
from jepa_jax.eval import datasets as eval_data
from jepa_jax.eval import encoder as enc_lib
from jepa_jax.eval import probe as probe_lib
from jepa_jax.eval import results as eval_results
from jepa_jax.eval.placement import Placer
from jepa_jax.finetune import augment
from jepa_jax.finetune import model as model_lib
from jepa_jax.finetune import settings as settings_lib

log = logging.getLogger(__name__)


class FinetuneState(train_state.TrainState):
  """``params = {"encoder", "head"}``; ``apply_fn`` unused (the steps close over the modules)."""


class Finetuner:
  """The modules and the jitted steps of one fine-tuning run."""

  def __init__(self, s, encoder, head, num_classes: int, mesh=None, state_shardings=None):
    """``s``: ``finetune.settings.Settings``. ``mesh``: the (data, fsdp) mesh the batches are
    split over; the steps are traced with its activation rules (``sharding.constrain``).
    ``state_shardings``: where the train step leaves the state (the shardings it was initialised
    or restored into), so that the next step and a save see the same layout."""
    self.settings, self.encoder, self.head = s, encoder, head
    self.num_classes = num_classes
    out = None if state_shardings is None else (state_shardings, sharding.replicated(mesh))
    self.train_step = jax.jit(
        sharding.with_activation_sharding(self._train_step, mesh, s.mesh.min_fsdp_size),
        out_shardings=out, donate_argnums=0)
    self.eval_step = jax.jit(sharding.with_activation_sharding(self._eval_step, mesh))
    self.scores = jax.jit(sharding.with_activation_sharding(self._scores, mesh))

  def logits(self, params, clips, dropout_key=None):
    """normalised clips ``[B, T, H, W, C]`` -> logits ``[B, K]``; drop path iff a key is given."""
    rngs = {} if dropout_key is None else {"dropout": dropout_key}
    tokens = self.encoder.apply({"params": params["encoder"]}, clips, rngs=rngs)
    if self.settings.freeze_encoder:
      tokens = jax.lax.stop_gradient(tokens)
    return self.head.apply({"params": params["head"]}, tokens).astype(jnp.float32)

  def _train_step(self, state, video, labels, rng):
    c = self.settings
    k_mix, k_drop = jax.random.split(jax.random.fold_in(rng, state.step))
    clips = normalize_lib.normalize(clips_lib.single(video), self.encoder.block.dtype)
    targets = augment.smooth_targets(labels, self.num_classes, c.label_smoothing)
    clips, targets, lam = augment.mix(k_mix, clips, targets, **dataclasses.asdict(c.mixup))
    dropout_key = None if c.freeze_encoder or c.drop_path <= 0 else k_drop

    def loss_fn(params):
      logits = self.logits(params, clips, dropout_key)
      return jnp.mean(optax.softmax_cross_entropy(logits, targets)), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optim.global_norm(grads)
    new_state = state.apply_gradients(grads=grads)
    hp = model_lib.applied_hyperparams(new_state.opt_state)
    new_state, nonfinite = nonfinite_lib.apply_if_finite(new_state, state, loss, grad_norm)
    top1 = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
    return new_state, dict(loss=loss, train_top1=100.0 * top1, mix_lam=lam,
                           lr=hp["learning_rate"], grad_norm=grad_norm, nonfinite=nonfinite)

  def _scores(self, params, video):
    """uint8 ``video`` ``[B, S, V, T, H, W, C]`` -> ``[B, K]``: every clip classified on its own,
    the S x V predictions aggregated (``view_aggregation``)."""
    b, s, v = video.shape[:3]
    clips = normalize_lib.normalize(clips_lib.flatten(video), self.encoder.block.dtype)
    logits = clips_lib.unflatten(self.logits(params, clips), b, s, v)
    return probe_lib.aggregate_views(logits, self.settings.view_aggregation)

  def _eval_step(self, params, video, labels, weights):
    """Summed top-1/top-5 hits of the S x V averaged scores, ``video`` ``[B, S, V, T, H, W, C]``."""
    scores = self._scores(params, video)
    return dict(top1=jnp.sum(probe_lib.topk_correct(scores, labels, 1) * weights),
                top5=jnp.sum(probe_lib.topk_correct(scores, labels, 5) * weights),
                count=jnp.sum(weights))


def load_encoder(s):
  """``(encoder with s.drop_path, params as numpy, info)`` as the eval loads it."""
  encoder, params, info = enc_lib.load_frozen_encoder(s, on_host=True)
  encoder = encoder.clone(block=encoder.block.replace(drop_path=s.drop_path))
  return encoder, params, info


def make_mesh(s) -> jax.sharding.Mesh:
  """``s.mesh``'s (data, fsdp) mesh over every device, as pretraining's."""
  return sharding.make_mesh(s.mesh.data, s.mesh.fsdp)


class Model:
  """Encoder + head of one run, their optimiser and the state's shardings on ``mesh``
  (``sharding.state_shardings``: pretraining's FSDP rule, ``mesh.min_fsdp_size``)."""

  def __init__(self, s, mesh, num_classes: int, steps_per_epoch: int):
    self.encoder, enc_params, self.info = load_encoder(s)
    self.head = model_lib.build_head(s, num_classes, self.encoder.embed_dim,
                                     self.encoder.block.num_heads)
    head_params = jax.device_get(model_lib.init_head(self.head, self.encoder.embed_dim,
                                                     s.seed))
    # On the host until placed: only each device's shards ever reach it.
    self.params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32),
                                         {"encoder": dict(enc_params), "head": head_params})
    self.tx = model_lib.make_optimizer(s, self.params, self.encoder.depth, steps_per_epoch)
    abstract = jax.eval_shape(self._create, self.params)
    self.shardings = sharding.state_shardings(mesh, abstract, s.mesh.min_fsdp_size)
    self.abstract_state = jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract,
        self.shardings)
    self.finetuner = Finetuner(s, self.encoder, self.head, num_classes, mesh, self.shardings)

  def _create(self, params):
    return FinetuneState.create(apply_fn=None, params=params, tx=self.tx)

  def init_state(self) -> FinetuneState:
    """The fresh state, made in its shardings: parameters copied shard by shard from the host,
    AdamW moments created where their parameters are."""
    params = jax.device_put(self.params, self.shardings.params)
    return jax.jit(self._create, out_shardings=self.shardings)(params)


def steps_per_epoch(s, num_train: int) -> int:
  if s.steps_per_epoch:
    return s.steps_per_epoch
  steps = num_train // s.batch_size
  if steps < 1:
    raise ConfigError(f"config.batch_size {s.batch_size} is larger than the {num_train} "
                      "training examples; lower it or set config.steps_per_epoch")
  return steps


def checkpoint_config(config, arch: dict, num_classes: int) -> dict:
  """The config saved with each checkpoint: ``config`` (the ConfigDict as written) with the
  encoder's resolved architecture as ``model`` (its own ``model`` may leave fields to the
  pretrained checkpoint's config) and the resolved ``num_classes``, so that readers rebuild
  encoder and head from this checkpoint alone."""
  saved = ckpt_lib.config_to_json(config)
  saved["model"] = ckpt_lib.config_to_json(dict(arch))
  saved["num_classes"] = int(num_classes)
  return saved


def evaluate(ft: Finetuner, params, s, val_spec, placer) -> dict:
  """Top-1/top-5 (percent) on every validation video, S x V clips each."""
  nproc = jax.process_count()
  batch = s.test_batch_size or s.batch_size
  ds = data_lib.make_eval_dataset(
      s.data, val_spec, batch_size=batch // nproc,
      clip=data_lib.ClipSpec.of(s.data, s.test_segments, s.test_views), train=False, seed=s.seed,
      shard_index=jax.process_index(), shard_count=nproc, repeat=False)
  sums = []
  for b in ds:
    out = ft.eval_step(params, placer.batch(b["video"]), placer.batch(b["label"]),
                       placer.batch(b["valid"].astype(np.float32)))
    sums.append(jax.device_get(out))
  tot = {k: float(np.sum([m[k] for m in sums])) for k in sums[0]}
  n = max(tot["count"], 1.0)
  return dict(top1=100.0 * tot["top1"] / n, top5=100.0 * tot["top5"] / n, count=int(n))


def finetune(config, workdir: str, *, stop_at_step: Optional[int] = None) -> dict:
  """Run (or resume) fine-tuning of the ConfigDict ``config``; returns the results dict also
  written to results.json.

  ``stop_at_step``: save and return after that many updates (tests of resumption); the
  schedules still span the whole run.
  """
  t_start = time.time()
  s = settings_lib.read(config)
  workdir = paths.resolve(workdir)
  policy = s.nonfinite_policy
  loop.write_config(workdir, config)
  mesh = make_mesh(s)
  placer = Placer(mesh)
  train_spec, val_spec = eval_data.resolve_indexes(s)
  train_labels = eval_data.source_labels(train_spec, s.data.tfds_data_dir)
  num_classes = s.num_classes or int(train_labels.max()) + 1
  if train_labels.max() >= num_classes:
    raise ConfigError(f"the training index has label {int(train_labels.max())} but "
                      f"config.num_classes is {num_classes}")
  ipe = steps_per_epoch(s, len(train_labels))
  total = int(s.epochs * ipe)

  model = Model(s, mesh, num_classes, ipe)
  ft, info = model.finetuner, model.info
  manager = ckpt_lib.make_manager(os.path.join(workdir, "checkpoints"),
                                  save_every=s.save.every, keep=s.save.keep,
                                  async_save=s.save.async_save)
  restored = ckpt_lib.restore_latest_train_state(manager, model.abstract_state, ckpt_lib.FINETUNE)
  start_step, data_state = 0, None
  if restored is not None:
    state, data_state, start_step = restored
    log.info("Resumed fine-tuning from checkpoint %d in %s", start_step, manager.directory)
  else:
    state = model.init_state()
  saved_config = checkpoint_config(config, info["model"], num_classes)

  nproc = jax.process_count()
  if s.batch_size % nproc:
    raise ConfigError(f"batch size {s.batch_size} is not divisible by the {nproc} processes")
  dataset = data_lib.make_eval_dataset(
      s.data, train_spec, batch_size=s.batch_size // nproc, train=True, seed=s.seed,
      shard_index=jax.process_index(), shard_count=nproc, repeat=True)
  iterator = iter(dataset)
  if data_state is not None:
    iterator.set_state(data_state)

  writer = loop.make_writer(workdir, start_step)
  rng = jax.random.PRNGKey(s.seed + 1)
  history = []

  def validate(step, state) -> dict:
    """Validation every ``eval_every`` epochs (the final test comes after the loop)."""
    if not (s.eval_every and step % ipe == 0 and (step // ipe) % s.eval_every == 0
            and step < total):
      return {}
    acc = evaluate(ft, state.params, s, val_spec, placer)
    history.append(dict(step=step, epoch=step // ipe, **acc))
    log.info("epoch %d: val top-1 %.2f, top-5 %.2f", step // ipe, acc["top1"], acc["top5"])
    return {"val/top1": acc["top1"], "val/top5": acc["top5"]}

  def log_row(step, scalars, window):
    rate = window.steps / max(window.seconds, 1e-9)
    scalars.update(steps_per_sec=rate, eta_seconds=(total - step) / max(rate, 1e-9))
    log.info("step %d/%d: loss %.4f, lr %.3g, %.2f steps/s, ETA %.0f s", step, total,
             scalars["loss"], scalars["lr"], rate, scalars["eta_seconds"])

  program = loop.Program(
      step=lambda state, batch: ft.train_step(state, *batch, rng),
      checkpoint_items=lambda: dict(config=saved_config, kind=ckpt_lib.FINETUNE,
                                    model_spec=info["model"]),
      evaluate=validate, log_row=log_row)
  result = loop.run(
      program, state, start_step, iterator=iterator,
      place=lambda b: (placer.batch(b["video"]), placer.batch(b["label"])),
      prefetch=s.prefetch, manager=manager, writer=writer, policy=policy,
      cadence=loop.Cadence(total_steps=total, log_every=s.log_every,
                           save_every=s.save.every, end_step=stop_at_step))
  state, step = result.state, result.step
  if result.preempted_at is not None:
    return dict(preempted_at_step=result.preempted_at)
  if step < total:  # stopped early on request: no final test
    return dict(stopped_at_step=step)

  acc = evaluate(ft, state.params, s, val_spec, placer)
  history.append(dict(step=step, epoch=step // ipe, **acc))
  writer.write_scalars(step, {"val/top1": acc["top1"], "val/top5": acc["top5"]})
  writer.flush()
  results = dict(
      task=s.task, checkpoint=info["checkpoint"], checkpoint_key=info["checkpoint_key"],
      encoder_step=info["step"], model=info["model"], freeze_encoder=s.freeze_encoder,
      head=s.head.kind, num_classes=num_classes, train_index=train_spec, val_index=val_spec,
      accuracy=dict(top1=acc["top1"], top5=acc["top5"]), num_val_examples=acc["count"],
      num_train_examples=int(len(train_labels)), steps=total, steps_per_epoch=ipe,
      test_segments=s.test_segments, test_views=s.test_views, history=history,
      seconds=time.time() - t_start)
  path = eval_results.write_results(results, workdir)  # process 0 writes
  if jax.process_index() == 0:
    log.info("wrote %s: top-1 %.2f, top-5 %.2f", path, acc["top1"], acc["top5"])
  return results
