"""Eval's device placement: the data-parallel mesh of ``jepa_jax.sharding`` (``fsdp = 1``), or
the mesh a caller gives (fine-tuning's ``config.mesh``, whose parameters it shards itself).

Batches are split along their leading axis over every device
(``jax.make_array_from_process_local_data``, so several processes work too); parameters are
replicated. A batch the device count does not divide (single process only) is replicated
instead, which is correct, only slower.
"""
import jax
import numpy as np

from jepa_jax import sharding
from jepa_jax.errors import ConfigError


class Placer:
  """Puts process-local host batches on the data mesh; replicates parameters; gathers rows."""

  def __init__(self, mesh=None):
    self.mesh = sharding.make_mesh(data=-1, fsdp=1) if mesh is None else mesh
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

  @staticmethod
  def gather(x) -> np.ndarray:
    """Every process's rows as one host array, in process order: of a batch-sharded global
    array (its global value) or of process-local host rows alike."""
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
