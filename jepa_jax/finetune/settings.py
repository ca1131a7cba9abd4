"""The one reader of a fine-tuning config: ConfigDict (``configs/finetune/*.py``,
``finetune.config.base_finetune_config``) -> typed ``Settings``, every check made once (``read``).

The encoder, index and class fields are the frozen evaluation's and are read by its readers
(``eval.settings.read_encoder``, ``read_indexes``, ``read_num_classes``; the attentive head's by
``read_probe``). ``data`` and ``model`` pass through as ConfigDicts, as in eval. ``read_saved``
reads the config saved with a fine-tuning checkpoint (``predict`` rebuilds its head from it).

    settings = finetune.settings.read(config)     # ConfigError naming the field and the fix
"""
import dataclasses
from typing import Any, Optional

import ml_collections

from jepa_jax import models
from jepa_jax import nonfinite
from jepa_jax import sharding
from jepa_jax.config_fields import non_negative_int, number, one_of, positive_int
from jepa_jax.eval import settings as eval_settings

HEADS = ("attentive", "linear")


@dataclasses.dataclass(frozen=True)
class HeadSettings:
  """``config.head``: ``kind`` and the linear head's ``init_scale``; the rest are the attentive
  head's (``eval.settings.ProbeSettings``'s fields: ``eval.probe.build_probe`` reads them)."""
  kind: str                    # of HEADS
  init_scale: float
  depth: int
  num_heads: Optional[int]
  mlp_ratio: float
  blocks_on: str
  dtype: str


@dataclasses.dataclass(frozen=True)
class Mixup:
  """``config.mixup``: ``finetune.augment.mix``'s keyword arguments."""
  mixup_alpha: float
  cutmix_alpha: float
  prob: float
  switch_prob: float


@dataclasses.dataclass(frozen=True)
class FinetuneOptim:
  """``config.optim``: AdamW, warm-up + cosine; ``lr``/``start_lr``/``final_lr`` per
  ``lr_batch_base`` clips, ``warmup`` in epochs."""
  lr: float
  start_lr: float
  final_lr: float
  lr_batch_base: int
  warmup: float
  weight_decay: float
  b1: float
  b2: float
  eps: float
  clip_grad: Optional[float]


@dataclasses.dataclass(frozen=True)
class Save:
  """``config.save``: checkpoint cadence."""
  every: int
  keep: int
  async_save: bool


@dataclasses.dataclass(frozen=True)
class Settings:
  """A fine-tuning config, read and checked (``base_finetune_config`` says what each is)."""
  task: str
  seed: int
  # The encoder (``eval.encoder.load_frozen_encoder`` reads these names).
  checkpoint: str
  checkpoint_key: str
  checkpoint_step: Optional[int]
  model: Any                   # config.model, as written
  encoder_dtype: str
  attention: str
  freeze_encoder: bool
  head: HeadSettings
  # Data.
  data: Any                    # config.data: the data pipeline's own section
  train_index: str
  val_index: str
  synthetic_label: str
  num_classes: Optional[int]
  test_segments: int
  test_views: int
  view_aggregation: str
  test_batch_size: Optional[int]
  # Regularisation and optimisation.
  drop_path: float
  label_smoothing: float
  mixup: Mixup
  layer_decay: float
  epochs: int
  batch_size: int
  steps_per_epoch: Optional[int]
  optim: FinetuneOptim
  mesh: sharding.MeshConfig
  nonfinite: str
  max_consecutive_skips: int
  save: Save
  log_every: int
  eval_every: int
  prefetch: int

  @property
  def nonfinite_policy(self) -> nonfinite.NonFinitePolicy:
    return nonfinite.NonFinitePolicy(self.nonfinite, self.max_consecutive_skips)


def _head(section) -> HeadSettings:
  kind = one_of(section.kind, "config.head.kind", HEADS)
  if kind == "attentive":
    probe = eval_settings.read_probe(section, "config.head")
  else:
    one_of(section.dtype, "config.head.dtype", sorted(models.DTYPES))
    probe = eval_settings.ProbeSettings(section.depth, section.num_heads, section.mlp_ratio,
                                        section.dtype, section.blocks_on)
  return HeadSettings(kind=kind, init_scale=number(section.init_scale, "config.head.init_scale",
                                                   "the linear head's initial weight scale"),
                      **dataclasses.asdict(probe))


def _optim(o) -> FinetuneOptim:
  values = {name: number(o[name], f"config.optim.{name}", "an optimiser setting")
            for name in ("lr", "start_lr", "final_lr", "weight_decay", "b1", "b2", "eps")}
  return FinetuneOptim(
      **values,
      lr_batch_base=positive_int(o.lr_batch_base, "config.optim.lr_batch_base",
                                 "the batch the learning rates are given for"),
      warmup=number(o.warmup, "config.optim.warmup", "epochs of warm-up", minimum=0),
      clip_grad=number(o.clip_grad, "config.optim.clip_grad", "gradient norm; None = no clipping",
                       optional=True))


def read(config) -> Settings:
  """``config`` as ``Settings``, refusing impossible values with one line naming the field and
  the fix (before an encoder is loaded)."""
  train_index, val_index, synthetic_label = eval_settings.read_indexes(config)
  encoder = eval_settings.read_encoder(config)
  mixup = config.mixup
  policy = nonfinite.NonFinitePolicy(config.nonfinite, config.max_consecutive_skips)
  return Settings(
      task=config.task, seed=non_negative_int(config.seed, "config.seed", "the run's seed"),
      **{f.name: getattr(encoder, f.name) for f in dataclasses.fields(encoder)},
      freeze_encoder=bool(config.freeze_encoder), head=_head(config.head),
      data=config.data, train_index=train_index, val_index=val_index,
      synthetic_label=synthetic_label, num_classes=eval_settings.read_num_classes(config),
      test_segments=positive_int(config.test_segments, "config.test_segments",
                                 "clips per test video"),
      test_views=positive_int(config.test_views, "config.test_views", "views per test clip"),
      view_aggregation=one_of(config.view_aggregation, "config.view_aggregation",
                              eval_settings.VIEW_AGGREGATIONS),
      test_batch_size=positive_int(config.test_batch_size, "config.test_batch_size",
                                   "videos per test batch; None = batch_size", optional=True),
      drop_path=number(config.drop_path, "config.drop_path", "stochastic depth rate", minimum=0),
      label_smoothing=number(config.label_smoothing, "config.label_smoothing",
                             "label smoothing in [0, 1)", minimum=0),
      mixup=Mixup(**{name: number(mixup[name], f"config.mixup.{name}", "mixup/cutmix setting",
                                  minimum=0)
                     for name in ("mixup_alpha", "cutmix_alpha", "prob", "switch_prob")}),
      layer_decay=number(config.layer_decay, "config.layer_decay", "layer-wise LR decay",
                         minimum=0),
      epochs=positive_int(config.epochs, "config.epochs", "training epochs"),
      batch_size=positive_int(config.batch_size, "config.batch_size", "the global batch"),
      steps_per_epoch=positive_int(config.steps_per_epoch, "config.steps_per_epoch",
                                   "None = training examples // batch_size", optional=True),
      optim=_optim(config.optim), mesh=sharding.MeshConfig.read(config.mesh),
      nonfinite=policy.mode, max_consecutive_skips=policy.max_consecutive_skips,
      save=Save(every=positive_int(config.save.every, "config.save.every", "steps between saves"),
                keep=positive_int(config.save.keep, "config.save.keep", "checkpoints kept"),
                async_save=bool(config.save.async_save)),
      log_every=non_negative_int(config.log_every, "config.log_every",
                                 "steps between logs; 0 = none"),
      eval_every=non_negative_int(config.eval_every, "config.eval_every",
                                  "epochs between validation passes; 0 = only at the end"),
      prefetch=non_negative_int(config.prefetch, "config.prefetch", "batches prefetched"))


def read_saved(saved: dict) -> Settings:
  """The config saved with a fine-tuning checkpoint (``config.json``) as ``Settings``; fields it
  lacks (checkpoints written before them) take ``base_finetune_config``'s defaults."""
  from jepa_jax.finetune import config as config_lib  # pylint: disable=import-outside-toplevel
  merged = config_lib.base_finetune_config().to_dict()
  for key, value in saved.items():
    if key not in merged:
      continue
    if isinstance(merged[key], dict) and isinstance(value, dict) and key != "model":
      merged[key].update({k: v for k, v in value.items() if k in merged[key]})
    else:
      merged[key] = value
  return read(ml_collections.ConfigDict(merged, type_safe=False))
