"""Device mesh and sharding rules (jit + NamedSharding; no pmap).

``make_mesh`` builds the ``("data", "fsdp")`` mesh and ``shard_batch`` splits the batch over both
axes. ``state_shardings`` places parameters, EMA target and AdamW moments (step counters
replicated) for pretraining, fine-tuning and eval alike: replicated at ``fsdp == 1``, else by
``PARAM_RULES`` (path pattern -> split dimension): by default the largest dimension ``fsdp_size``
divides (never a scanned stack's depth axis), and tensors under ``min_fsdp_size`` elements per
layer stay replicated, where all-gathers would cost more than they save. An attention ``qkv``
kernel ``[D, 3D]`` is split along D: the TPU path views it as ``[D, 3, H, d]``
(``layers._HeadMajorQKV``), which equal chunks of 3D would cut through, and
``constrain_weight_gradient`` pins its gradient there so XLA reduce-scatters it; the output
projection ``[D, D]`` splits its output D, which the TPU path's ``[H, d, D]`` view keeps whole
(its gradient is pinned likewise).
``jax_threefry_partitionable`` is on, so random draws do not depend on the sharding.

Activations follow logical axes (MaxText's rules): models call ``constrain(x, ("batch", "length",
"embed"))`` and ``ACTIVATION_RULES`` splits the batch over every device, the rest whole; left
alone, XLA shards activations along features and all-gathers the batch around every matmul
(BENCHMARKS.md, "FSDP: activations stay sharded"). The rules apply inside
``activation_sharding(mesh)``; elsewhere ``constrain`` is the identity.
"""
import contextlib
import contextvars
import dataclasses
import functools
import re
from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jepa_jax.config_fields import non_negative_int
from jepa_jax.errors import ConfigError

BATCH_AXES = ("data", "fsdp")
DEFAULT_MIN_FSDP_SIZE = 2**18  # config.mesh.min_fsdp_size's default

# The min_fsdp_size of the step being traced (``activation_sharding``), so that a VJP inside the
# model can follow the parameters' split rule (``constrain_weight_gradient``).
_MIN_FSDP_SIZE = contextvars.ContextVar("jepa_jax_min_fsdp_size", default=DEFAULT_MIN_FSDP_SIZE)

# Logical activation axis -> mesh axes (None: not split). "length": tokens; "embed": the model
# width; "heads"/"kv": attention heads and head dimension; "mlp": a projection's wide output
# (MLP hidden, fused qkv).
ACTIVATION_RULES = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("embed", None),
    ("heads", None),
    ("kv", None),
    ("mlp", None),
)

# Parameter path (``/``-joined names, e.g. ``encoder/stack/blocks/block/attn/qkv/kernel``) ->
# the dimension FSDP splits, the first matching pattern wins: "input" is the first dimension
# after a scanned stack's depth axis, "largest" the largest one the fsdp axis divides; either
# falls back to replicated when the axis divides no candidate dimension.
PARAM_RULES = (
    (r"(^|/)qkv/kernel$", "input"),
    (r"(^|/)attn/proj/kernel$", "output"),
    (r"", "largest"),
)
_SPLIT_CHOICES = ("input", "output", "largest")

jax.config.update("jax_threefry_partitionable", True)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """``config.mesh`` of pretraining and fine-tuning: the (data, fsdp) mesh (-1, at most one: the
  devices the other leaves) and the size below which a layer's parameter is replicated."""
  data: int = -1
  fsdp: int = 1
  min_fsdp_size: int = DEFAULT_MIN_FSDP_SIZE

  @classmethod
  def read(cls, section, field: str = "config.mesh") -> "MeshConfig":
    """The checked section; ConfigError naming the field."""
    sizes = {}
    for name in ("data", "fsdp"):
      value = section.get(name, getattr(cls, name))
      if isinstance(value, bool) or not isinstance(value, int) or not (value == -1 or value >= 1):
        raise ConfigError(f"{field}.{name}={value!r} must be a positive integer, or -1 for the "
                          "devices the other axis leaves")
      sizes[name] = value
    if sizes["data"] == -1 and sizes["fsdp"] == -1:
      raise ConfigError(f"{field}: at most one of data/fsdp may be -1")
    return cls(min_fsdp_size=non_negative_int(
        section.get("min_fsdp_size", DEFAULT_MIN_FSDP_SIZE), f"{field}.min_fsdp_size",
        "elements per layer below which a tensor is replicated"), **sizes)


def mesh_shape(data: int = -1, fsdp: int = 1, num_devices: int | None = None) -> tuple[int, int]:
  """Resolve ``-1`` (at most one) against the device count, with an actionable error."""
  n = jax.device_count() if num_devices is None else num_devices
  if data == -1 and fsdp == -1:
    raise ConfigError("config.mesh: at most one of data/fsdp may be -1")
  for name, given, other in (("data", data, fsdp), ("fsdp", fsdp, data)):
    if other == -1 and (given < 1 or n % given):
      divisors = [d for d in range(1, n + 1) if n % d == 0]
      raise ConfigError(f"config.mesh.{name}={given} does not divide the {n} devices; use one of "
                        f"{divisors}")
  if data == -1:
    data = n // fsdp
  if fsdp == -1:
    fsdp = n // data
  if data * fsdp != n:
    raise ConfigError(f"config.mesh data={data} x fsdp={fsdp} does not cover the {n} devices; "
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


def split_choice(path, rules=PARAM_RULES) -> str:
  """The split ``rules`` give the parameter at ``path`` (a key path or a ``/``-joined string)."""
  name = path if isinstance(path, str) else jax.tree_util.keystr(path, simple=True, separator="/")
  for pattern, choice in rules:
    if re.search(pattern, name):
      if choice not in _SPLIT_CHOICES:
        raise ValueError(f"sharding rule {pattern!r} -> {choice!r}: the split must be one of "
                         f"{_SPLIT_CHOICES}")
      return choice
  raise ValueError(f"no sharding rule matches parameter {name}; end the rules with ('', 'largest')")


def param_spec(path, shape, fsdp_size: int, min_fsdp_size: int, rules=PARAM_RULES) -> P:
  """The PartitionSpec of the parameter (or AdamW moment) at ``path`` on an fsdp axis of
  ``fsdp_size`` (see the module docstring)."""
  from jepa_jax.models import layers  # pylint: disable=import-outside-toplevel (layers uses constrain)
  scanned = layers.is_scanned(path)
  per_layer = shape[1:] if scanned else shape
  if fsdp_size <= 1 or int(np.prod(per_layer, dtype=np.int64)) < min_fsdp_size:
    return P()
  first = 1 if scanned else 0
  candidates = [(dim, i) for i, dim in enumerate(shape) if i >= first and dim % fsdp_size == 0]
  if not candidates:
    return P()
  _, axis = max(candidates)
  choice = split_choice(path, rules)
  if choice == "input" and any(i == first for _, i in candidates):
    axis = first
  elif choice == "output" and any(i == len(shape) - 1 for _, i in candidates):
    axis = len(shape) - 1
  spec = [None] * len(shape)
  spec[axis] = "fsdp"
  return P(*spec)


def state_shardings(mesh: Mesh, abstract_state: Any, min_fsdp_size: int = DEFAULT_MIN_FSDP_SIZE,
                    rules=PARAM_RULES):
  """NamedShardings for every leaf of a (train) state given as shapes (``jax.eval_shape``)."""
  fsdp = mesh.shape["fsdp"]

  def rule(path, leaf):
    return NamedSharding(mesh, param_spec(path, leaf.shape, fsdp, min_fsdp_size, rules))

  return jax.tree_util.tree_map_with_path(rule, abstract_state)


def shard_batch(batch, mesh: Mesh):
  """Place a host-local batch (numpy) as global arrays split over the batch axis.

  On several processes each host passes its own slice; the global batch is assembled with
  ``jax.make_array_from_process_local_data``.
  """
  sharding = batch_sharding(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


@contextlib.contextmanager
def activation_sharding(mesh: Optional[Mesh], min_fsdp_size: int = DEFAULT_MIN_FSDP_SIZE):
  """Within this context (entered while a step is traced, inside or outside ``jax.jit``),
  ``constrain`` pins activations to ``ACTIVATION_RULES`` on ``mesh``, and weight gradients
  follow the parameters' split (``min_fsdp_size``: ``config.mesh``'s); ``mesh`` None: no-op."""
  if mesh is None:
    yield
    return
  token = _MIN_FSDP_SIZE.set(min_fsdp_size)
  try:
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      yield
  finally:
    _MIN_FSDP_SIZE.reset(token)


def with_activation_sharding(fn, mesh: Optional[Mesh],
                             min_fsdp_size: int = DEFAULT_MIN_FSDP_SIZE):
  """``fn`` traced inside ``activation_sharding(mesh, min_fsdp_size)``: what to ``jax.jit`` so
  that the rules are active whenever the step is traced, whoever calls it; ``mesh`` None: ``fn``
  itself."""
  if mesh is None:
    return fn

  @functools.wraps(fn)
  def traced(*args, **kwargs):
    with activation_sharding(mesh, min_fsdp_size):
      return fn(*args, **kwargs)

  return traced


def constrain_weight_gradient(g: jax.Array, axis: int) -> jax.Array:
  """Pin the gradient of a weight, computed inside a custom VJP in a view of its own, to the
  weight's FSDP split at ``axis`` of that view, so that XLA reduce-scatters it: the ``qkv``
  kernel's ``[D, 3, H, d]`` (split along its input D, axis 0) and the TPU attention's output
  projection (``[D, D]``, split along its output D, axis -1). Without the pin the view carries no hint of
  the parameter's split, and XLA all-reduces it whole and slices it afterwards. Unchanged
  without a mesh, or where the rule keeps the weight whole (fewer than ``min_fsdp_size``
  elements per layer, as in ``param_spec``, or the dimension not divisible)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or "fsdp" not in mesh.axis_names or mesh.shape["fsdp"] <= 1:
    return g
  if g.shape[axis] % mesh.shape["fsdp"] or g.size < _MIN_FSDP_SIZE.get():
    return g
  spec = [None] * g.ndim
  spec[axis] = "fsdp"
  return jax.lax.with_sharding_constraint(g, NamedSharding(mesh, P(*spec)))


def activation_spec(names: Sequence[Optional[str]], shape, mesh, rules=ACTIVATION_RULES) -> P:
  """The PartitionSpec of an activation whose dimensions have logical ``names`` (None: not
  split). A dimension the named mesh axes do not divide stays whole (e.g. an eval batch smaller
  than the device count), as does any mesh axis the mesh lacks."""
  table = dict(rules)
  spec = []
  for name, size in zip(names, shape):
    if name is not None and name not in table:
      raise ValueError(f"unknown logical axis {name!r}; known: {sorted(table)}")
    axes = table.get(name) if name is not None else None
    axes = tuple(a for a in ((axes,) if isinstance(axes, str) else axes or ())
                 if a in mesh.axis_names)
    split = int(np.prod([mesh.shape[a] for a in axes], dtype=np.int64)) if axes else 1
    spec.append(axes if axes and split > 1 and size % split == 0 else None)
  return P(*spec)


def constrain(x: jax.Array, names: Sequence[Optional[str]]) -> jax.Array:
  """Pin activation ``x`` to the mesh split its logical axis ``names`` map to (see
  ``activation_sharding``); without an active mesh, ``x`` unchanged."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  if len(names) != x.ndim:
    raise ValueError(f"{len(names)} logical axes {tuple(names)} for an array of shape {x.shape}")
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, activation_spec(names, x.shape,
                                                                                  mesh)))
