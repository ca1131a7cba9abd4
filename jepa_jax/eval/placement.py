"""Eval's device placement: a ``(data, fsdp)`` mesh of ``jepa_jax.sharding`` (data-parallel by
default), or the mesh a caller gives (fine-tuning's ``Settings.mesh``, whose state it shards
itself).

Batches are split along their leading axis over every device
(``jax.make_array_from_process_local_data``, so several processes work too); a batch the device
count does not divide (single process only) is replicated instead, which is correct, only
slower. A frozen encoder's parameters follow pretraining's FSDP rules (``encoder_params``):
replicated at ``fsdp = 1``, split over the fsdp devices otherwise; the probe's are replicated.
"""
import jax
import numpy as np

from jepa_jax import sharding
from jepa_jax.errors import ConfigError


class Placer:
  """Puts process-local host batches on the data mesh; replicates parameters; gathers rows."""

  def __init__(self, mesh=None, min_fsdp_size: int = sharding.DEFAULT_MIN_FSDP_SIZE):
    self.mesh = sharding.make_mesh(data=-1, fsdp=1) if mesh is None else mesh
    self.min_fsdp_size = min_fsdp_size
    self.num_devices = self.mesh.size
    self.split = sharding.batch_sharding(self.mesh)
    self.replicated = sharding.replicated(self.mesh)

  def batch(self, x):
    x = np.asarray(x)
    global_b = x.shape[0] * jax.process_count()
    if global_b % self.num_devices == 0:
      return jax.make_array_from_process_local_data(self.split, x)
    if jax.process_count() > 1:
      raise ConfigError(f"global batch {global_b} is not divisible by the {self.num_devices} "
                        "devices; choose config.batch_size accordingly")
    return jax.device_put(x, self.replicated)

  def replicate(self, tree):
    return jax.device_put(tree, self.replicated)

  def encoder_params(self, tree):
    """An encoder's parameters placed by ``sharding.state_shardings`` on this mesh."""
    return jax.device_put(tree, sharding.state_shardings(self.mesh, tree, self.min_fsdp_size))

  @classmethod
  def of(cls, mesh) -> "Placer":
    """The placement of an eval's ``Settings.mesh`` (fsdp, min_fsdp_size); data takes the rest."""
    return cls(sharding.make_mesh(data=-1, fsdp=mesh.fsdp), mesh.min_fsdp_size)

  @staticmethod
  def gather(x) -> np.ndarray:
    """Every process's rows as one host array, in process order: of a batch-sharded global
    array (its global value) or of process-local host rows alike."""
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
