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


def validate(config, num_devices: int | None = None) -> None:
  """Refuse impossible settings before any compilation, one line naming the field and the fix."""
  m, d = config.model, config.data
  try:
    encoder, _ = train_state.build_models(config)
  except ValueError as e:
    raise ConfigError(f"config.model: {e}") from None
  if encoder.embed_dim % encoder.num_heads:
    raise ConfigError(f"config.model: width {encoder.embed_dim} is not divisible by num_heads "
                      f"{encoder.num_heads}; change model.overrides.num_heads or embed_dim")
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
  try:
    mask_cfgs = masks_lib.configs_from(config)
  except ValueError as e:
    raise ConfigError(f"config.masks: {e}") from None
  grid = masks_lib.grid_from_config(config)
  for i, mc in enumerate(mask_cfgs):
    if _mask_never_leaves_context(grid, mc):
      raise ConfigError(f"config.masks[{i}] leaves no context token (blocks cover the whole "
                        f"{grid} grid); lower spatial_scale/temporal_scale or num_blocks")
  for path in list(d.get("datasets", []) or []):
    if not os.path.exists(path):
      raise ConfigError(f"config.data.datasets: index file {path!r} does not exist; fix the path "
                        "or leave datasets empty to use the built-in synthetic set")
  if config.nonfinite not in ("stop", "skip"):
    raise ConfigError(f"config.nonfinite must be 'stop' or 'skip', got {config.nonfinite!r}")


def _mask_never_leaves_context(grid, mc: masks_lib.MaskConfig) -> bool:
  """True when even the smallest block of a multi-block config covers the whole grid."""
  if mc.kind != "multiblock" or mc.max_temporal_keep < 1:
    return mc.kind == "random_tube" and int(grid[1] * grid[2] * (1 - mc.ratio)) < 1
  t, h, w = grid
  t_min = max(1, int(t * mc.temporal_scale[0]))
  keep = int(h * w * mc.spatial_scale[0])
  a_lo, a_hi = mc.aspect_ratio
  # The block is smallest-in-area at the aspect extremes; all of them must fill the grid.
  sizes = [(min(h, round((keep * a) ** 0.5)), min(w, round((keep / a) ** 0.5))) for a in (a_lo, a_hi)]
  return t_min >= t and all(bh >= h and bw >= w for bh, bw in sizes)


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
                                          self.optim_cfg, self.tx, self.batch_size, self.mesh)
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
