"""Everything a V-JEPA run is built from, derived from one config: models, masks, optimiser, mesh,
shardings, the sharded init and the jitted train step; plus compile-time memory analysis on
abstract shapes (no arrays are allocated).

    exp = experiment.build(config)            # validates the config first
    state = exp.init_state(jax.random.key(config.seed))
    state, metrics = exp.train_step(state, exp.shard_batch(batch), exp.mask_rng)
    exp.memory()                              # XLA's per-device bytes for this config and mesh
"""
import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jepa_jax import compilation_cache
from jepa_jax import masks as masks_lib
from jepa_jax import optim
from jepa_jax import sharding
from jepa_jax import train_state
from jepa_jax import train_step as train_step_lib


class ConfigError(ValueError):
  """An impossible config value; the message names the field and the fix."""


# A multi-block mask may leave no context in at most this fraction of clips (after the redraws;
# see _check_masks). The paper's masks: 0% at 224 px, 0.2% on the demo's 4x4x4 grid.
MAX_NO_CONTEXT_FRACTION = 0.05


def validate(config, num_devices: int | None = None) -> None:
  """Refuse impossible settings before any compilation, one line naming the field and the fix."""
  m, d = config.model, config.data
  if not isinstance(config.batch_size, int) or config.batch_size <= 0:
    raise ConfigError(f"config.batch_size={config.batch_size!r} must be a positive number of clips "
                      "(the global batch)")
  try:
    encoder, _ = train_state.build_models(config)
  except ValueError as e:
    raise ConfigError(f"config.model: {e}") from None
  if encoder.embed_dim % encoder.block.num_heads:
    raise ConfigError(f"config.model: width {encoder.embed_dim} is not divisible by num_heads "
                      f"{encoder.block.num_heads}; change model.overrides.num_heads or embed_dim")
  if d.crop_size % m.patch_size:
    raise ConfigError(f"config.data.crop_size={d.crop_size} is not divisible by "
                      f"config.model.patch_size={m.patch_size}; use a multiple of the patch size")
  if d.num_frames % m.tubelet_size:
    raise ConfigError(f"config.data.num_frames={d.num_frames} is not divisible by "
                      f"config.model.tubelet_size={m.tubelet_size}")
  try:
    mesh_shape = sharding.mesh_shape(config.mesh.data, config.mesh.fsdp, num_devices)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  devices = int(np.prod(mesh_shape))
  processes = jax.process_count()
  if config.batch_size % devices or config.batch_size % processes:
    raise ConfigError(f"config.batch_size={config.batch_size} is not divisible by the "
                      f"{devices} devices ({processes} processes); use a multiple of {devices}")
  accum = grad_accum_steps(config)
  if not isinstance(accum, int) or isinstance(accum, bool) or accum < 1:
    raise ConfigError(f"config.grad_accum_steps={accum!r} must be a positive integer (micro-batches "
                      "per update; 1 = no accumulation)")
  if config.batch_size % (accum * devices):
    raise ConfigError(f"config.batch_size={config.batch_size} does not split into "
                      f"config.grad_accum_steps={accum} micro-batches over {devices} devices; use "
                      f"a batch that is a multiple of {accum * devices} or another grad_accum_steps")
  try:
    mask_cfgs = masks_lib.configs_from(config)
  except ValueError as e:
    raise ConfigError(f"config.masks: {e}") from None
  _check_masks(masks_lib.grid_from_config(config), mask_cfgs)
  _check_datasets(d)
  try:
    train_state.mask_token_ids(config)
    from jepa_jax.data.pipeline import dataset_frames  # noqa: PLC0415 - grain only when validating
    for k in range(len(d.get("dataset_fpcs") or [])):
      dataset_frames(d, k)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if config.nonfinite not in ("stop", "skip"):
    raise ConfigError(f"config.nonfinite must be 'stop' or 'skip', got {config.nonfinite!r}")
  max_skips = config.get("max_consecutive_skips", 1)
  if not isinstance(max_skips, int) or max_skips < 1:
    raise ConfigError(f"config.max_consecutive_skips={max_skips!r} must be a positive integer")


def grad_accum_steps(config) -> int:
  """Micro-batches per update (configs saved before the field existed have none: 1)."""
  return config.get("grad_accum_steps", 1)


def _check_masks(grid, mask_cfgs) -> None:
  """Refuse a mask that leaves no context too often.

  The rule: a multi-block mask's blocks may cover the whole token grid, leaving no context, in
  at most ``MAX_NO_CONTEXT_FRACTION`` of clips after the sampler's redraws (first draw plus
  ``masks.NUM_RETRIES``), measured by the deterministic Monte Carlo that also sizes the static
  masks. Those clips get one context token (the reference redraws until some context is left,
  for ever when one block covers the grid). It is a fraction, not "always": the block size is
  drawn per batch, and several blocks smaller than the grid can almost always cover it together
  (8 blocks of spatial_scale 1 on a 4x4 grid: 98% of clips), while rare full covers are harmless
  (the paper's long-range mask on the demo's 4x4x4 grid: 0.2%). A random-tube mask needs one
  unmasked position per frame.
  """
  for i, mc in enumerate(mask_cfgs):
    if mc.kind == "random_tube":
      if int(grid[1] * grid[2] * (1 - mc.ratio)) < 1:
        raise ConfigError(f"config.masks[{i}] leaves no context token (ratio={mc.ratio} masks "
                          f"every position of the {grid[1]}x{grid[2]} grid); lower ratio")
      continue
    empty = masks_lib.no_context_fraction(grid, mc)
    if empty > MAX_NO_CONTEXT_FRACTION:
      raise ConfigError(
          f"config.masks[{i}] leaves no context in {100 * empty:.0f}% of clips: its "
          f"{mc.num_blocks} blocks (spatial_scale {mc.spatial_scale}, temporal_scale "
          f"{mc.temporal_scale}) cover the whole {grid} token grid even after "
          f"{masks_lib.NUM_RETRIES} redraws (at most {100 * MAX_NO_CONTEXT_FRACTION:.0f}% "
          "allowed); lower spatial_scale/temporal_scale or num_blocks")


def _check_datasets(d) -> None:
  specs = d.get("datasets", []) or []
  if isinstance(specs, str):
    raise ConfigError(f"config.data.datasets={specs!r} must be a list of index files; write "
                      f"--config.data.datasets='(\"{specs}\",)'")
  for spec in specs:
    if not isinstance(spec, str):
      raise ConfigError(f"config.data.datasets: {spec!r} is not a path or tfds: spec")
    if not spec.startswith("tfds:") and not os.path.exists(spec):
      raise ConfigError(f"config.data.datasets: index file {spec!r} does not exist; fix the path "
                        "or leave datasets empty to use the built-in synthetic set")
  weights = d.get("datasets_weights")
  if weights is not None:
    if (not isinstance(weights, (list, tuple)) or
        not all(isinstance(w, (int, float)) and w > 0 for w in weights)):
      raise ConfigError(f"config.data.datasets_weights={weights!r} must be a list of positive "
                        "numbers, one per dataset, e.g. '(0.5, 0.3, 0.2)'")
    if len(weights) != max(len(specs), 1):
      sources = f"{len(specs)} datasets" if specs else "the synthetic set (one source)"
      raise ConfigError(f"config.data.datasets_weights has {len(weights)} weights for {sources}; "
                        "give one weight per dataset")


@dataclasses.dataclass
class Experiment:
  config: Any
  encoder: Any
  predictor: Any
  mask_cfgs: tuple
  optim_cfg: optim.OptimConfig
  tx: Any
  mesh: jax.sharding.Mesh

  @property
  def batch_size(self) -> int:
    return int(self.config.batch_size)

  @property
  def total_steps(self) -> int:
    return self.optim_cfg.total_steps

  def init_fn(self):
    return train_state.make_init_fn(self.encoder, self.predictor, self.tx,
                                    self.config.model.rescale_residual_init)

  @functools.cached_property
  def abstract_state(self):
    return jax.eval_shape(self.init_fn(), jax.random.PRNGKey(0))

  @functools.cached_property
  def state_shardings(self):
    return sharding.state_shardings(self.mesh, self.abstract_state, self.config.mesh.min_fsdp_size)

  @functools.cached_property
  def sharded_abstract_state(self):
    """The state's shapes carrying their target shardings: what a restore or an AOT compile needs."""
    return jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        self.abstract_state, self.state_shardings)

  def init_state(self, rng):
    """Initialise directly into the target shardings (never whole on one device)."""
    return jax.jit(self.init_fn(), out_shardings=self.state_shardings)(rng)

  def abstract_batch(self, per_process: bool = False) -> dict:
    d = self.config.data
    b = self.batch_size // (jax.process_count() if per_process else 1)
    return {"video": jax.ShapeDtypeStruct((b, d.num_frames, d.crop_size, d.crop_size, 3),
                                          jnp.uint8)}

  @functools.cached_property
  def train_step(self):
    step = train_step_lib.make_train_step(self.encoder, self.predictor, self.mask_cfgs,
                                          self.optim_cfg, self.tx, self.batch_size, self.mesh,
                                          train_state.mask_token_ids(self.config),
                                          grad_accum_steps(self.config),
                                          self.state_shardings.params)
    return train_step_lib.jit_train_step(step, self.mesh, self.state_shardings,
                                         self.abstract_batch())

  def shard_batch(self, batch: dict) -> dict:
    """Host-local numpy batch -> global arrays split over the batch axis (only model inputs)."""
    return sharding.shard_batch({"video": batch["video"]}, self.mesh)

  def compile_train_step(self):
    """The train step lowered and compiled ahead of time on abstract shapes (nothing allocated)."""
    batch = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding.batch_sharding(self.mesh)),
        self.abstract_batch())
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
    return self.train_step.lower(self.sharded_abstract_state, batch, rng).compile()

  def memory(self) -> dict:
    """Per-device bytes of the compiled train step, from abstract shapes only."""
    return train_step_lib.memory_analysis(self.compile_train_step())


def build(config, mesh: jax.sharding.Mesh | None = None, devices=None) -> Experiment:
  """Validate ``config`` and build the experiment on ``mesh`` (default: from ``config.mesh``)."""
  if mesh is None:
    validate(config, None if devices is None else len(devices))
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, devices)
  else:
    validate(config, mesh.devices.size)
  compilation_cache.enable(config.get("compilation_cache_dir"))
  encoder, predictor = train_state.build_models(config)
  optim_cfg = optim.OptimConfig.from_config(config.optim)
  tx = optim.make_optimizer(optim_cfg)
  return Experiment(config=config, encoder=encoder, predictor=predictor,
                    mask_cfgs=masks_lib.configs_from(config), optim_cfg=optim_cfg, tx=tx,
                    mesh=mesh)
