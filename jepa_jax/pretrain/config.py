"""The one reader of a pretraining config: ConfigDict (``configs/*.py``, ``jepa_jax.pretrain.defaults``) ->
typed ``Settings`` (model spec, masks, optimiser, the data section), every check of the config made once (``read``).

Everything below this module takes typed objects: ``models.ModelSpec`` for the networks,
``masks.MaskConfig`` for the masks, ``optim.OptimConfig`` for the optimiser. The data pipeline
keeps its own section of the config (``config.data``, whose fields and defaults the data package
defines in ``data.default_data_config``), checked here as well. What depends on the machine (mesh,
batch per device, index files present) is checked by ``experiment.validate``, which calls ``read``
first.

    settings = config.read(cfg)     # ConfigError naming the field and the fix
    encoder, predictor = models.from_spec(settings.model)
"""
import dataclasses
import os
from typing import Any, Optional

from jepa_jax import loss_vjepa21
from jepa_jax import masks as masks_lib
from jepa_jax import models
from jepa_jax import nonfinite
from jepa_jax import optim
from jepa_jax import sharding
from jepa_jax.config_fields import non_negative_int, positive_int
from jepa_jax.data.settings import dataset_frames
from jepa_jax.errors import ConfigError  # noqa: F401 - config.ConfigError, as callers name it

# The names the model's grid check reports a pretraining config's fields under.
_GRID_FIELDS = ("config.data.crop_size", "config.data.num_frames", "config.model.patch_size",
                "config.model.tubelet_size")
TRAIN_DTYPES = ("float32", "bfloat16")  # of models.DTYPES: float16 would need loss scaling


@dataclasses.dataclass(frozen=True)
class CheckpointCadence:
  """``config.checkpoint``: steps between saves, the last ``keep`` kept plus every
  ``keep_period``-th (None: none), asynchronous writes."""
  every: int
  keep: Optional[int]
  keep_period: Optional[int]
  async_save: bool


@dataclasses.dataclass(frozen=True)
class RunSettings:
  """What the trainer reads besides the model, masks, recipe and data."""
  seed: int
  log_every: int                     # steps between metric fetches (0: none)
  prefetch: int                      # batches placed on the devices ahead
  profile: bool
  checkpoint: CheckpointCadence
  init_from: Optional[str]           # a run or converted weights to start from
  init_from_optimizer: bool          # ... with its optimiser state (V-JEPA 2's cooldown start)
  nonfinite: nonfinite.NonFinitePolicy
  monitor_probe: Any                 # config.monitor_probe, checked (None: off)


@dataclasses.dataclass(frozen=True)
class ImageSettings:
  """``config.images``, read and checked: V-JEPA 2.1's image half of each step."""
  batch_size: int                    # global images per step
  loss_weight: float                 # the image loss's gradient weight (img_data.rank_ratio)
  lambda_value: float                # the context loss's lambda on images (lambda_value_img)
  masks: tuple[masks_lib.MaskConfig, ...]
  grid: tuple[int, int, int]         # (1, H', W'): the one frame of the image patch embedding
  frames: int                        # frames per image clip (the model's image_frames)
  data: Any                          # config.images: the sources the data pipeline reads


@dataclasses.dataclass(frozen=True)
class Settings:
  """A pretraining config, read and checked."""
  model: models.ModelSpec            # encoder + predictor
  grid: tuple[int, int, int]         # (T', H', W') tokens
  masks: tuple[masks_lib.MaskConfig, ...]
  mask_token_ids: tuple[int, ...]    # the predictor mask token of each mask
  optim: optim.OptimConfig
  batch_size: int                    # global, in clips
  grad_accum_steps: int              # micro-batches per update (1 = none)
  rescale_residual_init: bool
  data: Any                          # config.data: the data pipeline's own section
  # V-JEPA 2.1's context loss (config.model.vjepa21 with config.loss); None = V-JEPA 1/2's loss.
  context_loss: Optional[loss_vjepa21.ContextLossConfig] = None
  run: Optional[RunSettings] = None  # what the trainer reads (``read`` always sets it)
  mesh: sharding.MeshConfig = sharding.MeshConfig()
  images: Optional[ImageSettings] = None  # V-JEPA 2.1's image half; None = video only


def context_loss_config(config) -> Optional[loss_vjepa21.ContextLossConfig]:
  """``config.loss`` (the reference's loss keys and lambda settings) for a ``config.model.vjepa21``
  model; None for V-JEPA 1/2 configs."""
  if not config.model.get("vjepa21"):
    return None
  fields = {f.name for f in dataclasses.fields(loss_vjepa21.ContextLossConfig)}
  given = dict(config.get("loss") or {})
  unknown = sorted(set(given) - fields)
  if unknown:
    raise ConfigError(f"config.loss.{unknown[0]} is not a V-JEPA 2.1 loss setting; use one of "
                      f"{sorted(fields)}")
  cfg = loss_vjepa21.ContextLossConfig(**given)
  if cfg.lambda_progressive and cfg.lambda_end <= cfg.lambda_start:
    raise ConfigError(f"config.loss.lambda_end={cfg.lambda_end} must be after "
                      f"config.loss.lambda_start={cfg.lambda_start} (the context loss's ramp), or "
                      "set config.loss.lambda_progressive=False")
  if config.get("grad_accum_steps", 1) != 1:
    raise ConfigError(f"config.grad_accum_steps={config.grad_accum_steps}: the V-JEPA 2.1 loss "
                      "does not support gradient accumulation yet; set config.grad_accum_steps=1")
  return cfg


def num_mask_tokens(config) -> int:
  """The predictor's mask tokens: one per mask (V-JEPA), or ``len(masks) * len(dataset_fpcs)``
  (V-JEPA 2's ``init_video_model``; ``config.model.num_mask_tokens`` overrides both)."""
  m = config.model
  if m.get("num_mask_tokens"):
    return int(m.num_mask_tokens)
  fpcs = config.data.get("dataset_fpcs")
  return len(config.masks) * (len(fpcs) if fpcs else 1)


def mask_token_ids(config) -> tuple:
  """Which mask token each mask of ``config.masks`` uses.

  ``config.model.mask_token_per``: ``"mask"`` (V-JEPA: mask i uses token i) or ``"clip_length"``
  (V-JEPA 2: its predictor wrapper passes the index of the clip-length group, so every mask of a
  batch whose clips share one frame count -- all of them here -- uses token 0).
  """
  per = config.model.get("mask_token_per") or "mask"
  if per == "mask":
    return tuple(range(len(config.masks)))
  if per == "clip_length":
    return (0,) * len(config.masks)
  raise ValueError(f"config.model.mask_token_per must be 'mask' or 'clip_length', got {per!r}")


def model_spec(config, num_masks: Optional[int] = None) -> models.ModelSpec:
  """The encoder + predictor of ``config.model`` / ``config.data``; ``num_masks`` overrides the
  predictor's mask-token count (the converter takes it from the weights)."""
  m, d = config.model, config.data
  predictor = models.PredictorSpec(
      depth=m.pred_depth, embed_dim=m.pred_embed_dim, num_heads=m.get("pred_num_heads"),
      num_mask_tokens=num_masks if num_masks is not None else num_mask_tokens(config),
      zero_init_mask_tokens=m.zero_init_mask_tokens,
      # V-JEPA 2.1: levels read/predicted (None = the encoder's), their width (None = the
      # encoder's; distilled models predict their teacher's) and the context outputs its dense
      # loss trains (predict_all); a converted file says what its predictor has.
      levels=m.get("pred_levels"), out_embed_dim=m.get("pred_out_embed_dim"),
      return_context=bool(m.get("vjepa21") if m.get("pred_return_context") is None
                          else m.get("pred_return_context")))
  # The model section's fields carry ModelSpec's names (configs older than V-JEPA 2 support have
  # no use_rope field: the size name decides).
  return models.ModelSpec.from_sections(m, d.crop_size, d.num_frames, predictor=predictor)


def token_grid(config) -> tuple[int, int, int]:
  """(T', H', W') of ``config.data.{crop_size,num_frames}`` and ``config.model.{patch,tubelet}_size``
  (the model's own check, ``models.token_grid``, reporting the config's field names)."""
  d, m = config.data, config.model
  return models.token_grid(d.crop_size, d.num_frames, m.patch_size, m.tubelet_size,
                           names=_GRID_FIELDS)


def mask_configs(config, grid: Optional[tuple[int, int, int]] = None, field: str = "config.masks",
                 entries=None, check_context: bool = False) -> tuple[masks_lib.MaskConfig, ...]:
  """The mask configs of ``config.masks`` (a list of dicts / ConfigDicts; ``entries``/``field``:
  another list, e.g. ``config.images.masks``); with ``grid``, the static sizes
  (``num_context``/``num_target``) are checked against it too, and with ``check_context`` that
  every mask leaves a context (``masks.check_context``). Raises ``ConfigError`` naming the entry
  and field (``config.masks[0].num_context=96 must be in [1, 64]: ...``)."""
  entries = config.get("masks") if entries is None else entries
  if not entries:
    raise ConfigError(f"{field} is missing or empty; set it to a list of mask ConfigDicts "
                      "(e.g. the two pretraining masks, see jepa_jax.masks.pretrain_configs)")
  out = []
  for i, entry in enumerate(entries):
    try:
      mc = masks_lib.MaskConfig.from_dict(entry)
      if grid is not None:
        masks_lib.static_sizes(grid, mc)
    except masks_lib.MaskFieldError as e:
      what = f"{field}[{i}].{e}" if e.field else f"{field}[{i}]={e}"
      raise ConfigError(what) from None
    except ValueError as e:
      raise ConfigError(f"{field}[{i}]: {e}") from None
    out.append(mc)
  if grid is not None and check_context:
    try:
      masks_lib.check_context(grid, tuple(out))
    except ValueError as e:
      msg = str(e)
      raise ConfigError(f"{field}{msg[len('masks'):]}" if msg.startswith("masks[")
                        else f"{field}: {msg}") from None
  return tuple(out)


def read_images(config, encoder) -> Optional[ImageSettings]:
  """``config.images`` for the model's ``encoder`` (None while its ``batch_size`` is 0 or the
  section is absent, as in configs saved before it existed)."""
  section = config.get("images")
  if not section or not section.get("batch_size"):
    return None
  batch = section.batch_size
  if isinstance(batch, bool) or not isinstance(batch, int) or batch < 0:
    raise ConfigError(f"config.images.batch_size={batch!r} must be a number of images per step "
                      "(global), or 0 for video-only pretraining")
  if encoder.image_frames is None:
    raise ConfigError("config.images needs a model with an image patch embedding: set "
                      "config.model.vjepa21=True (V-JEPA 2.1), or config.images.batch_size=0")
  weight = section.get("loss_weight", 0.5)
  if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < 1:
    raise ConfigError(f"config.images.loss_weight={weight!r} must be in (0, 1): the image loss's "
                      "share of the gradient (the reference's img_data.rank_ratio)")
  lam = section.get("lambda_value", 0.5)
  if isinstance(lam, bool) or not isinstance(lam, (int, float)) or lam < 0:
    raise ConfigError(f"config.images.lambda_value={lam!r} must be a number >= 0 (the context "
                      "loss's weight on images, lambda_value_img)")
  frames = encoder.image_frames
  grid = tuple(encoder.grid_of(frames))
  masks = mask_configs(config, grid, "config.images.masks", section.get("masks"),
                       check_context=True)
  _check_sources(section, "config.images")
  return ImageSettings(batch_size=batch, loss_weight=float(weight), lambda_value=float(lam),
                       masks=masks, grid=grid, frames=frames, data=section)


def read(config) -> Settings:
  """``config`` as ``Settings``, refusing impossible values with one line naming the field and
  the fix (before anything is compiled)."""
  m, d = config.model, config.data
  if not isinstance(config.batch_size, int) or config.batch_size <= 0:
    raise ConfigError(f"config.batch_size={config.batch_size!r} must be a positive number of clips "
                      "(the global batch)")
  try:
    models.dtype_of(m.dtype, "config.model.dtype", TRAIN_DTYPES)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  try:
    grid = token_grid(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  tokens = m.get("num_mask_tokens")
  if tokens is not None and (not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0):
    raise ConfigError(f"config.model.num_mask_tokens={tokens!r} must be a positive integer, or None "
                      "(or 0) for one per mask (and clip length)")
  try:
    spec = model_spec(config)
    encoder, _ = models.from_spec(spec)
  except ValueError as e:
    raise ConfigError(f"config.model: {e}") from None
  mask_cfgs = mask_configs(config, grid, check_context=True)
  _check_sources(d, "config.data")
  try:
    token_ids = mask_token_ids(config)
    for k in range(len(d.get("dataset_fpcs") or [])):
      dataset_frames(d, k)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  run = read_run(config)
  # Configs saved before the field existed have none: 1.
  accum = config.get("grad_accum_steps", 1)
  if not isinstance(accum, int) or isinstance(accum, bool) or accum < 1:
    raise ConfigError(f"config.grad_accum_steps={accum!r} must be a positive integer (micro-batches "
                      "per update; 1 = no accumulation)")
  context_loss = context_loss_config(config)
  images = read_images(config, encoder)
  return Settings(model=spec, grid=grid, masks=mask_cfgs, mask_token_ids=token_ids,
                  optim=optim.OptimConfig.from_config(config.optim),
                  batch_size=int(config.batch_size), grad_accum_steps=accum,
                  rescale_residual_init=bool(m.rescale_residual_init), data=d,
                  context_loss=context_loss, run=run, mesh=sharding.MeshConfig.read(config.mesh),
                  images=images)


def read_run(config) -> RunSettings:
  """The trainer's fields: seed, logging, prefetch, profiling, checkpoint cadence, where to start
  from, the non-finite policy and the online probe (configs saved before a field existed get
  its default)."""
  try:
    policy = nonfinite.NonFinitePolicy.from_config(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  probe = config.get("monitor_probe")
  if probe:
    from jepa_jax.pretrain import probe_monitor  # pylint: disable=import-outside-toplevel
    try:
      probe_monitor.check_config(probe)
    except ValueError as e:
      raise ConfigError(str(e)) from None
  ck = config.checkpoint
  cadence = CheckpointCadence(
      every=positive_int(ck.every, "config.checkpoint.every", "steps between saves"),
      keep=positive_int(ck.keep, "config.checkpoint.keep", "the last checkpoints kept",
                        optional=True),
      keep_period=positive_int(ck.get("keep_period"), "config.checkpoint.keep_period",
                               "every keep_period-th step kept for good", optional=True),
      async_save=bool(ck.get("async_save", True)))
  init_from = config.get("init_from") or None
  if init_from is not None and not isinstance(init_from, str):
    raise ConfigError(f"config.init_from={init_from!r} must be a path: a trainer workdir or "
                      "converted weights")
  return RunSettings(
      seed=non_negative_int(config.seed, "config.seed", "the run's seed"),
      log_every=non_negative_int(config.log_every, "config.log_every",
                                 "steps between metric fetches; 0 = none"),
      prefetch=non_negative_int(config.get("prefetch", 2), "config.prefetch",
                                "batches prefetched"),
      profile=bool(config.get("profile", False)), checkpoint=cadence, init_from=init_from,
      init_from_optimizer=bool(config.get("init_from_optimizer", False)), nonfinite=policy,
      monitor_probe=probe if probe and probe.get("every") else None)


def _check_sources(d, field: str) -> None:
  """``datasets`` / ``datasets_weights`` of ``config.data`` or ``config.images`` (``field``)."""
  specs = d.get("datasets", []) or []
  if isinstance(specs, str):
    raise ConfigError(f"{field}.datasets={specs!r} must be a list of index files; write "
                      f"--{field}.datasets='(\"{specs}\",)'")
  for spec in specs:
    if not isinstance(spec, str):
      raise ConfigError(f"{field}.datasets: {spec!r} is not a path or tfds: spec")
  weights = d.get("datasets_weights")
  if weights is not None:
    if (not isinstance(weights, (list, tuple)) or
        not all(isinstance(w, (int, float)) and w > 0 for w in weights)):
      raise ConfigError(f"{field}.datasets_weights={weights!r} must be a list of positive "
                        "numbers, one per dataset, e.g. '(0.5, 0.3, 0.2)'")
    if len(weights) != max(len(specs), 1):
      sources = f"{len(specs)} datasets" if specs else "the synthetic set (one source)"
      raise ConfigError(f"{field}.datasets_weights has {len(weights)} weights for {sources}; "
                        "give one weight per dataset")


def check_dataset_files(config) -> None:
  """The index files of ``config.data.datasets`` exist here (a check of this machine, not of the
  config: ``experiment.validate`` makes it, ``read`` does not)."""
  images = config.get("images") or {}
  for field, specs in (("config.data", config.data.get("datasets")),
                       ("config.images", images.get("datasets") if images.get("batch_size") else None)):
    for spec in specs or []:
      if not spec.startswith("tfds:") and not os.path.exists(spec):
        raise ConfigError(f"{field}.datasets: index file {spec!r} does not exist; fix the path "
                          "or leave datasets empty to use the built-in synthetic set")


def check_init_from(config) -> None:
  """``config.init_from`` (when set) exists here, so that ``main`` refuses a missing path before
  it makes the workdir (not part of ``experiment.validate``: the cooldown configs carry a
  placeholder path and are built elsewhere, e.g. for memory estimates)."""
  source = config.get("init_from")
  if not source:
    return
  from jepa_jax import paths  # noqa: PLC0415
  if not isinstance(source, str):
    raise ConfigError(f"config.init_from={source!r} must be a path: a trainer workdir or "
                      "converted weights")
  if not paths.is_remote(source) and not os.path.isdir(source):
    what = "is not a directory" if os.path.exists(source) else "does not exist"
    raise ConfigError(f"config.init_from={source} {what}; give a trainer workdir or a "
                      "converted-weights directory (python -m jepa_jax.convert), or drop "
                      "config.init_from to start from random weights")
