"""Device mesh and sharding rules (jit + NamedSharding; no pmap).

Mesh axes are ``("data", "fsdp")``. The batch is split over both axes (every device gets its own
examples). Parameters, the EMA target and the optimiser moments follow one rule:

* ``fsdp == 1``: replicated (pure data parallelism).
* ``fsdp > 1``: a tensor with at least ``min_fsdp_size`` elements is split over ``fsdp`` along its
  largest dimension that the axis size divides (for scanned blocks never the leading depth axis,
  which ``nn.scan`` slices per iteration); smaller tensors (biases, norms) stay replicated, where
  the all-gathers would cost more than the memory saved.

The moments of AdamW have the shapes of the parameters and so get the same specs; the step
counters are replicated. ``jax.config.jax_threefry_partitionable`` is switched on so that random
numbers drawn inside the step are the same under any sharding.
"""
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jepa_jax.models import layers

BATCH_AXES = ("data", "fsdp")

jax.config.update("jax_threefry_partitionable", True)


def mesh_shape(data: int = -1, fsdp: int = 1, num_devices: int | None = None) -> tuple[int, int]:
  """Resolve ``-1`` (at most one) against the device count, with an actionable error."""
  n = jax.device_count() if num_devices is None else num_devices
  if data == -1 and fsdp == -1:
    raise ValueError("config.mesh: at most one of data/fsdp may be -1")
  if data == -1:
    data = n // fsdp if fsdp and n % fsdp == 0 else 0
  if fsdp == -1:
    fsdp = n // data if data and n % data == 0 else 0
  if data * fsdp != n:
    raise ValueError(f"config.mesh data={data} x fsdp={fsdp} does not cover the {n} devices; "
                     "set config.mesh.data=-1 to infer it")
  return data, fsdp


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
  """A ``(data, fsdp)`` mesh; ``jax.make_mesh`` orders devices by the physical topology."""
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(data, fsdp, len(devices))
  axis_types = (jax.sharding.AxisType.Auto,) * 2
  if len(devices) == jax.device_count():
    return topology_mesh(shape, devices)
  return Mesh(np.asarray(devices).reshape(shape), ("data", "fsdp"), axis_types=axis_types)


def topology_mesh(shape, devices) -> Mesh:
  """A ``(data, fsdp)`` mesh of ``shape`` over all of a slice's ``devices``, ordered by the
  physical topology. ``jax.make_mesh`` refuses axes that are not a product of whole physical axes
  (fsdp 8 on a v5p 4x4x4 slice: "Failed to find assignment for logical_axis_index 1"); those
  split a physical axis instead."""
  from jax.experimental import mesh_utils  # noqa: PLC0415
  axis_types = (jax.sharding.AxisType.Auto,) * 2
  try:
    return jax.make_mesh(shape, ("data", "fsdp"), axis_types=axis_types, devices=devices)
  except NotImplementedError:
    grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    return Mesh(grid, ("data", "fsdp"), axis_types=axis_types)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_spec(path, shape, fsdp_size: int, min_fsdp_size: int) -> P:
  if fsdp_size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_fsdp_size:
    return P()
  scanned = layers.is_scanned(path)
  candidates = [(dim, i) for i, dim in enumerate(shape)
                if dim % fsdp_size == 0 and not (scanned and i == 0)]
  if not candidates:
    return P()
  _, axis = max(candidates)
  spec = [None] * len(shape)
  spec[axis] = "fsdp"
  return P(*spec)


def state_shardings(mesh: Mesh, abstract_state: Any, min_fsdp_size: int = 2**18):
  """NamedShardings for every leaf of a (train) state given as shapes (``jax.eval_shape``)."""
  fsdp = mesh.shape["fsdp"]

  def rule(path, leaf):
    return NamedSharding(mesh, param_spec(path, leaf.shape, fsdp, min_fsdp_size))

  return jax.tree_util.tree_map_with_path(rule, abstract_state)


def shard_batch(batch, mesh: Mesh):
  """Place a host-local batch (numpy) as global arrays split over the batch axis.

  On several processes each host passes its own slice; the global batch is assembled with
  ``jax.make_array_from_process_local_data``.
  """
  sharding = batch_sharding(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)
