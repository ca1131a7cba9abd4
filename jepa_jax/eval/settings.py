"""The one reader of a frozen-evaluation config: ConfigDict (``configs/eval/*.py``,
``eval.config.base_eval_config``) -> typed ``Settings``, every check made once (``read``), as
``pretrain.config.read`` does for pretraining; fine-tuning reuses its readers.

    settings = eval.settings.read(config)     # ConfigError naming the field and the fix

``data`` (the pipeline's own section) and ``model`` (merged with the checkpoint's by
``eval.encoder``) pass through as ConfigDicts. The encoder's fields keep their config names, so
``eval.encoder.load_frozen_encoder`` reads ``Settings`` and the tools' ConfigDicts alike.
"""
import dataclasses
from typing import Any, Optional

from jepa_jax import models
from jepa_jax.config_fields import ints, non_negative_int, number, one_of, positive_int
from jepa_jax.errors import ConfigError

CHECKPOINT_KEYS = ("target", "online", "encoder")
PROBE_DTYPES = ("float32", "bfloat16")   # of models.DTYPES
CACHE_DTYPES = ("float32", "bfloat16")   # of models.DTYPES
VIEW_AGGREGATIONS = ("softmax", "logits")
PROBE_BLOCKS_ON = ("query", "tokens")
WEIGHT_DECAY_ON = ("weights", "all")


@dataclasses.dataclass(frozen=True)
class ProbeSettings:
  """``config.probe``: the attentive probe (``eval.probe.build_probe``)."""
  depth: int
  num_heads: Optional[int]     # None: the encoder's head count
  mlp_ratio: float
  dtype: str                   # compute dtype, of PROBE_DTYPES
  blocks_on: str               # of PROBE_BLOCKS_ON


@dataclasses.dataclass(frozen=True)
class ProbeOptim:
  """``config.optim``: the probe's AdamW and its schedules (``eval.probe.make_optimizer``);
  ``warmup`` in epochs."""
  lr: float
  start_lr: float
  final_lr: float
  warmup: float
  weight_decay: float
  final_weight_decay: float
  clip_grad: Optional[float]   # None or 0: no clipping
  weight_decay_on: str         # of WEIGHT_DECAY_ON
  b1: float
  b2: float
  eps: float

  def with_overrides(self, overrides: dict, field: str) -> "ProbeOptim":
    """These settings with ``overrides`` (a ``probe_grid`` entry) applied, checked again."""
    unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
    if unknown:
      raise ConfigError(f"{field} sets {sorted(unknown)}, which config.optim does not have")
    return probe_optim(dict(dataclasses.asdict(self), **overrides), field)


@dataclasses.dataclass(frozen=True)
class EvalMesh:
  """``config.mesh``: data takes every device fsdp leaves (``eval.placement.Placer``)."""
  fsdp: int
  min_fsdp_size: int


@dataclasses.dataclass(frozen=True)
class Lowshot:
  """``config.lowshot``: one probe per (fraction, seed)."""
  fractions: tuple[float, ...]
  seeds: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Settings:
  """A frozen-evaluation config, read and checked (``base_eval_config`` says what each is)."""
  task: str
  seed: int
  train: bool
  probe_checkpoint: str
  # The encoder (``eval.encoder.load_frozen_encoder`` reads these names).
  checkpoint: str
  checkpoint_key: str
  checkpoint_step: Optional[int]
  model: Any                   # config.model as written (eval.encoder merges it with the saved one)
  encoder_dtype: str
  attention: str
  feature_layer: Any           # None | int | tuple of ints
  # Data.
  data: Any                    # config.data: the data pipeline's own section
  train_index: str
  val_index: str
  synthetic_label: str
  num_classes: Optional[int]   # None: 1 + the largest training label
  num_segments: int
  num_views: int
  view_aggregation: str
  # The probe and its training.
  probe: ProbeSettings
  mesh: EvalMesh
  epochs: int
  batch_size: int
  optim: ProbeOptim
  probe_grid: Optional[tuple[dict, ...]]   # optim overrides, one probe each
  cache_features: bool
  cache_dtype: str
  extract_batch_size: Optional[int]
  random_baseline_seeds: tuple[int, ...]
  lowshot: Lowshot
  eval_every: int
  log_every: int
  max_train_steps_per_epoch: Optional[int]


# ------------------------------------------------------------- sections shared with fine-tuning


@dataclasses.dataclass(frozen=True)
class EncoderFields:
  """The frozen encoder's fields, as both programs' configs name them."""
  checkpoint: str
  checkpoint_key: str
  checkpoint_step: Optional[int]
  model: Any
  encoder_dtype: str
  attention: str


def read_encoder(config) -> EncoderFields:
  """``checkpoint``, ``checkpoint_key``, ``checkpoint_step``, ``model``, ``encoder_dtype``,
  ``attention`` (whether the checkpoint exists is the loader's check: ``eval.encoder``)."""
  key = config.checkpoint_key
  if key not in CHECKPOINT_KEYS:
    raise ConfigError(f"config.checkpoint_key must be 'target' (EMA encoder) or 'online', got "
                      f"{key!r}")
  one_of(config.encoder_dtype, "config.encoder_dtype", sorted(models.DTYPES))
  if not isinstance(config.checkpoint, str):
    raise ConfigError(f"config.checkpoint={config.checkpoint!r} must be a path: a trainer "
                      "workdir, a converted-weights directory, or 'random'")
  return EncoderFields(
      checkpoint=config.checkpoint, checkpoint_key=key,
      checkpoint_step=non_negative_int(config.checkpoint_step, "config.checkpoint_step",
                                       "a saved step; None = the latest")
      if config.checkpoint_step is not None else None,
      model=config.model, encoder_dtype=config.encoder_dtype, attention=config.attention)


def read_indexes(config) -> tuple[str, str, str]:
  """``(train_index, val_index, synthetic_label)``: index files, or the synthetic set's label."""
  if config.train_index and not config.val_index:
    raise ConfigError("config.train_index is set but config.val_index is empty")
  for name in ("train_index", "val_index", "synthetic_label"):
    if not isinstance(config[name], str):
      raise ConfigError(f"config.{name}={config[name]!r} must be a string")
  return config.train_index, config.val_index, config.synthetic_label


def read_num_classes(config) -> Optional[int]:
  return positive_int(config.num_classes, "config.num_classes", "None = 1 + the largest "
                      "training label", optional=True)


def read_probe(section, field: str = "config.probe") -> ProbeSettings:
  """A probe section (``config.probe``, fine-tuning's attentive ``config.head``)."""
  return ProbeSettings(
      depth=positive_int(section.depth, f"{field}.depth", "probe blocks"),
      num_heads=positive_int(section.num_heads, f"{field}.num_heads",
                             "None = the encoder's head count", optional=True),
      mlp_ratio=number(section.mlp_ratio, f"{field}.mlp_ratio", "MLP width / token width",
                       minimum=0),
      dtype=one_of(section.dtype, f"{field}.dtype", PROBE_DTYPES),
      blocks_on=one_of(section.blocks_on, f"{field}.blocks_on", PROBE_BLOCKS_ON))


def probe_optim(section, field: str = "config.optim") -> ProbeOptim:
  """``config.optim`` of an eval config (a ConfigDict or a dict) as ``ProbeOptim``."""
  s = dict(section)
  missing = [f.name for f in dataclasses.fields(ProbeOptim) if f.name not in s]
  if missing:
    raise ConfigError(f"{field} has no {missing}; start from eval.config.base_eval_config()")
  values = {name: number(s[name], f"{field}.{name}", "a probe optimiser setting")
            for name in ("lr", "start_lr", "final_lr", "weight_decay", "final_weight_decay",
                         "b1", "b2", "eps")}
  return ProbeOptim(
      **values, warmup=number(s["warmup"], f"{field}.warmup", "epochs of warm-up", minimum=0),
      clip_grad=number(s["clip_grad"], f"{field}.clip_grad", "gradient norm; None = no clipping",
                       optional=True),
      weight_decay_on=one_of(s["weight_decay_on"], f"{field}.weight_decay_on", WEIGHT_DECAY_ON))


def _feature_layer(value):
  if value is None or (isinstance(value, int) and not isinstance(value, bool)):
    return value
  if isinstance(value, (list, tuple)) and value:
    return ints(value, "config.feature_layer", "encoder blocks whose tokens the probe reads")
  raise ConfigError(f"config.feature_layer={value!r} must be None (the final output), a block "
                    "index, or a list of block indices")


def _probe_grid(grid, optim: ProbeOptim) -> Optional[tuple[dict, ...]]:
  if not grid:
    return None
  out = []
  for i, overrides in enumerate(grid):
    overrides = dict(overrides)
    optim.with_overrides(overrides, f"config.probe_grid[{i}]")   # checks names and values
    out.append(overrides)
  return tuple(out)


def _lowshot(section) -> Lowshot:
  fractions = section.fractions
  if isinstance(fractions, (int, float)) or not all(
      isinstance(f, (int, float)) and 0.0 < f <= 1.0 for f in fractions) or not fractions:
    raise ConfigError(f"config.lowshot.fractions={fractions!r} must be a list of fractions in "
                      "(0, 1], e.g. '(0.05, 0.1, 1.0)'")
  seeds = ints(section.seeds, "config.lowshot.seeds", "probe seeds per fraction")
  if not seeds:
    raise ConfigError("config.lowshot.seeds is empty; give at least one seed, e.g. '(0,)'")
  return Lowshot(tuple(float(f) for f in fractions), seeds)


# ---------------------------------------------------------------------------------- the reader


def read(config) -> Settings:
  """``config`` as ``Settings``, refusing impossible values with one line naming the field and
  the fix (before an encoder is loaded)."""
  if config.train and config.probe_checkpoint:
    raise ConfigError("config.probe_checkpoint is set but config.train is True: set "
                      "config.train=False to evaluate that probe, or drop probe_checkpoint to "
                      "train a new one")
  if not config.train and not config.probe_checkpoint:
    raise ConfigError("config.train=False needs config.probe_checkpoint: a probe directory (an "
                      "eval run's probes/<run>, or python -m jepa_jax.convert --kind probe --out "
                      "DIR)")
  encoder = read_encoder(config)
  train_index, val_index, synthetic_label = read_indexes(config)
  optim = probe_optim(config.optim)
  mesh = config.mesh
  return Settings(
      task=config.task, seed=non_negative_int(config.seed, "config.seed", "the run's seed"),
      train=bool(config.train), probe_checkpoint=config.probe_checkpoint,
      **{f.name: getattr(encoder, f.name) for f in dataclasses.fields(encoder)},
      feature_layer=_feature_layer(config.feature_layer),
      data=config.data, train_index=train_index, val_index=val_index,
      synthetic_label=synthetic_label, num_classes=read_num_classes(config),
      num_segments=positive_int(config.num_segments, "config.num_segments", "clips per video"),
      num_views=positive_int(config.num_views, "config.num_views", "spatial views per clip"),
      view_aggregation=one_of(config.view_aggregation, "config.view_aggregation",
                              VIEW_AGGREGATIONS),
      probe=read_probe(config.probe),
      mesh=EvalMesh(
          fsdp=positive_int(mesh.fsdp, "config.mesh.fsdp", "devices the encoder is split over"),
          min_fsdp_size=non_negative_int(mesh.min_fsdp_size, "config.mesh.min_fsdp_size",
                                         "elements per layer below which a tensor is replicated")),
      epochs=positive_int(config.epochs, "config.epochs", "probe training epochs"),
      batch_size=positive_int(config.batch_size, "config.batch_size", "the global batch"),
      optim=optim, probe_grid=_probe_grid(config.probe_grid, optim),
      cache_features=bool(config.cache_features),
      cache_dtype=one_of(config.cache_dtype, "config.cache_dtype", CACHE_DTYPES),
      extract_batch_size=positive_int(config.extract_batch_size, "config.extract_batch_size",
                                      "videos per encoder pass; None = batch_size", optional=True),
      random_baseline_seeds=ints(config.random_baseline_seeds or (),
                                 "config.random_baseline_seeds", "random-encoder seeds"),
      lowshot=_lowshot(config.lowshot),
      eval_every=non_negative_int(config.eval_every, "config.eval_every",
                                  "epochs between validation passes"),
      log_every=non_negative_int(config.log_every, "config.log_every",
                                 "steps between logs; 0 = none"),
      max_train_steps_per_epoch=positive_int(
          config.max_train_steps_per_epoch, "config.max_train_steps_per_epoch",
          "a cap for smoke runs; None = one pass", optional=True))

