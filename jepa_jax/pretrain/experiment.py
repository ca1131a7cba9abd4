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
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jepa_jax import compilation_cache
from jepa_jax import models
from jepa_jax import optim
from jepa_jax import sharding
from jepa_jax.pretrain import config as config_lib
from jepa_jax.pretrain import train_state
from jepa_jax.pretrain import train_step as train_step_lib


ConfigError = config_lib.ConfigError  # the one config error type, re-exported for callers


def validate(config, num_devices: int | None = None) -> config_lib.Settings:
  """``config_lib.read`` plus what depends on this machine (mesh, batch per device, index files);
  returns the settings.

  ``build`` calls it: an entry point that builds the experiment needs no call of its own."""
  settings = config_lib.read(config)
  try:
    mesh_shape = sharding.mesh_shape(settings.mesh.data, settings.mesh.fsdp, num_devices)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  devices = int(np.prod(mesh_shape))
  processes = jax.process_count()
  batches = {"config.batch_size": settings.batch_size}
  if settings.images is not None:
    batches["config.images.batch_size"] = settings.images.batch_size
  for field, size in batches.items():
    if size % devices or size % processes:
      raise ConfigError(f"{field}={size} is not divisible by the {devices} devices "
                        f"({processes} processes); use a multiple of {devices}")
  accum = settings.grad_accum_steps
  if settings.batch_size % (accum * devices):
    raise ConfigError(f"config.batch_size={settings.batch_size} does not split into "
                      f"config.grad_accum_steps={accum} micro-batches over {devices} devices; use "
                      f"a batch that is a multiple of {accum * devices} or another grad_accum_steps")
  config_lib.check_dataset_files(config)
  return settings


@dataclasses.dataclass
class Experiment:
  config: Any                        # the raw config (saved with checkpoints; the data section)
  settings: config_lib.Settings      # the same, read and checked
  encoder: Any
  predictor: Any
  tx: Any
  mesh: jax.sharding.Mesh

  @property
  def mask_cfgs(self) -> tuple:
    return self.settings.masks

  @property
  def optim_cfg(self) -> optim.OptimConfig:
    return self.settings.optim

  @property
  def batch_size(self) -> int:
    return self.settings.batch_size

  @property
  def total_steps(self) -> int:
    return self.optim_cfg.total_steps

  def init_fn(self):
    return train_state.make_init_fn(self.encoder, self.predictor, self.tx,
                                    self.settings.rescale_residual_init)

  @functools.cached_property
  def abstract_state(self):
    return jax.eval_shape(self.init_fn(), jax.random.PRNGKey(0))

  @functools.cached_property
  def state_shardings(self):
    return sharding.state_shardings(self.mesh, self.abstract_state, self.settings.mesh.min_fsdp_size)

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
    processes = jax.process_count() if per_process else 1
    batch = {"video": jax.ShapeDtypeStruct(self.encoder.clip_shape(self.batch_size // processes),
                                           jnp.uint8)}
    images = self.settings.images
    if images is not None:  # V-JEPA 2.1's image half: one-frame clips
      _, _, h, w, c = self.encoder.clip_shape()
      batch["image"] = jax.ShapeDtypeStruct(
          (images.batch_size // processes, images.frames, h, w, c), jnp.uint8)
    return batch

  @functools.cached_property
  def train_step(self):
    step = train_step_lib.make_train_step(self.encoder, self.predictor, self.mask_cfgs,
                                          self.optim_cfg, self.tx, self.batch_size, self.mesh,
                                          self.settings.mask_token_ids,
                                          self.settings.grad_accum_steps,
                                          self.state_shardings.params,
                                          self.settings.mesh.min_fsdp_size,
                                          self.settings.context_loss, self.settings.images)
    return train_step_lib.jit_train_step(step, self.mesh, self.state_shardings,
                                         self.abstract_batch(), self.settings.mesh.min_fsdp_size)

  @property
  def input_keys(self) -> tuple:
    """The batch entries the step reads: the clips, and V-JEPA 2.1's images."""
    return ("video", "image") if self.settings.images is not None else ("video",)

  def shard_batch(self, batch: dict) -> dict:
    """Host-local numpy batch -> global arrays split over the batch axis (only model inputs)."""
    return sharding.shard_batch({k: batch[k] for k in self.input_keys}, self.mesh)

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
    settings = validate(config, None if devices is None else len(devices))
    mesh = sharding.make_mesh(settings.mesh.data, settings.mesh.fsdp, devices)
  else:
    settings = validate(config, mesh.devices.size)
  compilation_cache.enable(config.get("compilation_cache_dir"))
  encoder, predictor = models.from_spec(settings.model)
  return Experiment(config=config, settings=settings, encoder=encoder, predictor=predictor,
                    tx=optim.make_optimizer(settings.optim), mesh=mesh)
