"""Compile the real train step for a TPU topology on any machine, ahead of time, and say whether it
fits and how much it talks -- before paying for the pod.

    python -m jepa_jax.aot --config=configs/vith16.py --topology=v5p:4x4x4 [--per_chip_batch=48]
        [--find_max_batch] [--config.FIELD=VALUE ...]

Needs libtpu (``pip install -e '.[tpu]'``), not a TPU: ``jax.experimental.topologies`` gives the
devices and XLA:TPU compiles on the CPU host. What is compiled is the trainer's own step
(``Experiment.compile_train_step``: its shardings, donation and mesh, ``config.mesh`` resolved
against the topology, ``auto`` attention resolved for TPU); the data pipeline is not part of it.
Prints a summary and, last, one JSON line, per chip and step: memory (arguments + temporaries +
unaliased outputs) against usable HBM (the compiler itself only refuses temporaries larger than
HBM), HLO matmul FLOPs against ``flops``' model FLOPs, collective and copy bytes (``hlo_stats``),
custom calls, compile time and a roofline lower bound (an estimate, never a measurement).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from jepa_jax import cli
from jepa_jax.errors import UserError

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  hbm_bytes: float        # usable HBM per chip, as the TPU compiler reports it
  peak_flops: float       # bf16 FLOP/s per chip
  hbm_bandwidth: float    # bytes/s per chip


# Usable HBM: what XLA:TPU states when it refuses a program (libtpu 0.0.42); peaks: public specs.
CHIPS = {
    "v5e": Chip(15.75 * GIB, 197e12, 0.82e12),
    "v5p": Chip(95.74 * GIB, 459e12, 2.76e12),
    "v6e": Chip(31.25 * GIB, 918e12, 1.64e12),
}
_TOPOLOGY = re.compile(r"^(v5e|v5p|v6e):(\d+x\d+(?:x\d+)?)$")
EXAMPLE_TOPOLOGIES = "v5e:2x2, v5e:16x16, v5p:2x2x1, v5p:4x4x4, v6e:2x2, v6e:16x16"


class AotError(UserError, ValueError):
  """Something the user can fix: the topology, libtpu, the batch."""


def check_topology_name(name: str) -> str:
  """``name`` if it reads as CHIP:SHAPE for a chip with known HBM and peaks, else AotError."""
  if not _TOPOLOGY.match(name or ""):
    raise AotError(f"unknown topology {name!r}; give CHIP:SHAPE with CHIP one of "
                   f"{', '.join(CHIPS)} (e.g. {EXAMPLE_TOPOLOGIES})")
  return name


def tpu_devices(name: str) -> list:
  """The devices of TPU topology ``name`` (no TPU needed; libtpu must be installed)."""
  check_topology_name(name)
  if importlib.util.find_spec("libtpu") is None:
    raise AotError("libtpu is not installed, and the TPU compiler comes with it; run "
                   "pip install -e '.[tpu]'")
  # Compiling uses no chip: let libtpu load even where another process holds its lock file.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # noqa: PLC0415
  try:
    return list(topologies.get_topology_desc(topology_name=name, platform="tpu").devices)
  except Exception as e:  # noqa: BLE001 - libtpu's refusal of a shape, in one line
    raise AotError(f"libtpu refuses topology {name!r} ({cli._last_line(e)}); valid names look "
                   f"like {EXAMPLE_TOPOLOGIES}") from None


def tpu_mesh(config, devices):
  """The trainer's (data, fsdp) mesh over ``devices``, ``config.mesh`` resolved against their
  number; devices ordered by the physical topology, as ``jax.make_mesh`` does on a pod."""
  from jepa_jax import sharding  # noqa: PLC0415
  mesh = sharding.MeshConfig.read(config.mesh)
  shape = sharding.mesh_shape(mesh.data, mesh.fsdp, len(devices))
  return sharding.topology_mesh(shape, devices)


def compile_step(config, topology: str, hlo_path: str | None = None) -> dict:
  """Compile the train step of ``config`` for ``topology``; the figures of the summary (a dict,
  the JSON line). ``hlo_path``: also write the compiled HLO text there (what every chip runs).
  Raises AotError / experiment.ConfigError for what the user can fix."""
  import jax  # noqa: PLC0415
  from jepa_jax import flops, hlo_stats  # noqa: PLC0415
  from jepa_jax.pretrain import experiment  # noqa: PLC0415
  from jepa_jax.pretrain import train_step as train_step_lib  # noqa: PLC0415
  from jepa_jax.models import layers  # noqa: PLC0415

  devices = tpu_devices(topology)
  chip = CHIPS[topology.split(":")[0]]
  try:
    mesh = tpu_mesh(config, devices)
  except ValueError as e:
    raise experiment.ConfigError(str(e)) from None
  with layers.target_platform("tpu"):
    exp = experiment.build(config, mesh=mesh)
    start = time.perf_counter()
    compiled = exp.compile_train_step()
    compile_s = time.perf_counter() - start
  settings = exp.settings
  chips = len(devices)
  memory = train_step_lib.memory_analysis(compiled)
  text = compiled.as_text()
  if hlo_path:
    with open(hlo_path, "w", encoding="utf-8") as f:
      f.write(text)
  hlo = hlo_stats.analyse(text)
  model = flops.train_step_flops(settings)["total"]
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  enc = exp.encoder
  # Resolved as the step was traced: for TPU, with the mesh declared (kernels placed per shard).
  with layers.target_platform("tpu"), jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
    attention = layers.resolve_attention(settings.model.attention, "tpu", enc.block.dtype,
                                         enc.embed_dim // enc.block.num_heads)
  total = memory["peak_estimate_bytes"]
  compiled_flops = hlo.matmul_flops + hlo.kernel_flops    # per chip
  compute_s = compiled_flops / chip.peak_flops
  memory_s = hlo.hbm_bytes / chip.hbm_bandwidth
  return {
      "topology": topology, "chips": chips, "device_kind": devices[0].device_kind,
      "mesh": dict(zip(mesh.axis_names, map(int, mesh.devices.shape))),
      "model": settings.model.name, "batch_size": settings.batch_size,
      "per_chip_batch": settings.batch_size / chips,
      "per_chip_images": settings.images.batch_size / chips if settings.images else 0,
      "grad_accum_steps": settings.grad_accum_steps, "remat": settings.model.remat,
      "memory_bytes": {"arguments": memory["argument_size_in_bytes"],
                       "temporaries": memory["temp_size_in_bytes"],
                       "outputs": memory["output_size_in_bytes"],
                       "aliased": memory["alias_size_in_bytes"], "total": total},
      "hbm_bytes": chip.hbm_bytes, "fits": total <= chip.hbm_bytes,
      "hlo_matmul_flops_per_chip": hlo.matmul_flops,
      "kernel_flops_per_chip": hlo.kernel_flops, "model_flops": model,
      "flops_ratio": compiled_flops * chips / model,
      "matmul_flops_by_source_per_chip": dict(list(hlo.matmul_flops_by_source.items())[:12]),
      "collective_bytes_per_chip": hlo.collective_bytes,
      "collective_counts_per_chip": hlo.collective_counts,
      "largest_collectives": [{"kind": o.kind, "shape": o.shape, "count": o.count,
                               "bytes": o.bytes} for o in hlo.largest_collectives(5)],
      "relayout_bytes_per_chip": hlo.relayout_bytes,
      "largest_relayouts": [{"kind": o.kind, "shape": o.shape, "count": o.count, "bytes": o.bytes}
                            for o in hlo.relayout_ops[:3]],
      "attention": attention, "custom_calls": hlo.custom_calls, "kernels": hlo.kernels,
      "compile_seconds": compile_s,
      "roofline_estimate": {
          "lower_bound_s": max(compute_s, memory_s), "compute_s": compute_s,
          "hbm_s": memory_s, "hbm_bytes_per_chip": hlo.hbm_bytes,
          "peak_flops": chip.peak_flops, "hbm_bandwidth": chip.hbm_bandwidth,
          "note": ("estimate, not a measurement: max((HLO matmul FLOPs + Pallas kernels' "
                   "estimated FLOPs) / peak bf16 FLOP/s, HBM "
                   "bytes / HBM bandwidth); HBM bytes = operands + results of every unfused op, "
                   "loop trip counts applied; collectives and overlap not modelled")},
      "cost_analysis_raw": {"flops": float(cost.get("flops", 0.0)),
                            "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
                            "note": "XLA's cost_analysis(), loop bodies counted once"},
      "unknown_trip_counts": hlo.unknown_trip_counts,
  }


def _gib(b) -> str:
  """Bytes in the largest binary unit that keeps them >= 1 (GiB for the big figures)."""
  for unit, size in (("GiB", GIB), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
    if b >= size or unit == "KiB" and b == 0:
      return f"{b / size:.2f} {unit}" if unit == "GiB" else f"{b / size:.1f} {unit}"
  return f"{b:.0f} B"


def _seconds(s) -> str:
  return f"{s:.3f} s" if s >= 0.1 else f"{s * 1e3:.3g} ms"


def summary(r: dict) -> str:
  """The figures of ``compile_step`` for people."""
  m = r["memory_bytes"]
  verdict = "fits" if r["fits"] else "DOES NOT FIT"
  mesh = " x ".join(f"{k} {v}" for k, v in r["mesh"].items())
  lines = [
      f"{r['model']} on {r['topology']} ({r['chips']} chips, {r['device_kind']}; mesh {mesh}), "
      f"batch {r['batch_size']} = {r['per_chip_batch']:g} clips per chip, "
      + (f"+ {r['per_chip_images']:g} images per chip, " if r.get("per_chip_images") else "")
      + f"grad_accum_steps {r['grad_accum_steps']}, remat {r['remat']}",
      f"  memory per chip: {_gib(m['total'])} of {_gib(r['hbm_bytes'])} HBM: {verdict} "
      f"(arguments {_gib(m['arguments'])} + temporaries {_gib(m['temporaries'])} + outputs "
      f"{_gib(m['outputs'])} - aliased {_gib(m['aliased'])})",
      f"  matmul FLOPs (all chips): HLO {r['hlo_matmul_flops_per_chip'] * r['chips']:.4g} + "
      f"Pallas kernels' estimates {r['kernel_flops_per_chip'] * r['chips']:.4g} / model "
      f"{r['model_flops']:.4g} = {r['flops_ratio']:.2f}x",
  ]
  for source, f in list(r.get("matmul_flops_by_source_per_chip", {}).items())[:4]:
    share = f / max(r["hlo_matmul_flops_per_chip"], 1)
    lines.append(f"    {share:6.1%} {source}")
  lines += [
      "  collectives per chip and step: " + (", ".join(
          f"{k} {_gib(v)}" for k, v in r["collective_bytes_per_chip"].items() if v) or "none"),
  ]
  for o in r["largest_collectives"][:3]:
    lines.append(f"    {o['kind']} {o['shape']} x{o['count']:g} = {_gib(o['bytes'])}")
  lines.append("  copy/transpose per chip and step: " + ", ".join(
      f"{k} {_gib(v)}" for k, v in r["relayout_bytes_per_chip"].items()))
  calls = ", ".join(f"{k} x{v:g}" for k, v in r["custom_calls"].items()) or "none"
  kernels = ", ".join(f"{k} x{v:g}" for k, v in r["kernels"].items()) or "none"
  lines.append(f"  attention: {r['attention']}; Pallas kernels: {kernels}; custom calls: {calls}")
  e = r["roofline_estimate"]
  lines.append(f"  roofline lower bound on step time (an estimate, not a measurement): "
               f"{_seconds(e['lower_bound_s'])} (compute {_seconds(e['compute_s'])} at "
               f"{e['peak_flops'] / 1e12:g} TFLOP/s, HBM {_seconds(e['hbm_s'])} for "
               f"{_gib(e['hbm_bytes_per_chip'])} at {e['hbm_bandwidth'] / 1e12:g} TB/s)")
  lines.append(f"  compiled in {r['compile_seconds']:.1f} s")
  if r["unknown_trip_counts"]:
    lines.append(f"  warning: trip counts unread for {len(r['unknown_trip_counts'])} loops "
                 "(counted once)")
  return "\n".join(lines)


def _is_out_of_memory(e: Exception) -> bool:
  text = str(e)
  return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text


def without_data(config):
  """A copy of ``config`` whose data sources are cleared: the step compiles without data (the
  recipes' dataset lists are placeholders), and their mixing weights go with them."""
  config = config.copy_and_resolve_references()
  for section in (config.data, config.get("images")):
    if section:
      section.datasets = []
      section.datasets_weights = None
  return config


def with_per_chip_batch(config, per_chip: int, chips: int, per_chip_images: int | None = None):
  """``config`` with ``per_chip`` clips per chip; a V-JEPA 2.1 image half gets ``per_chip_images``
  per chip, by default the config's images per clip times ``per_chip`` (rounded, at least 1)."""
  images = config.get("images")
  has_images = bool(images and images.get("batch_size"))
  if has_images and per_chip_images is None:
    per_chip_images = max(1, round(per_chip * images.batch_size / config.batch_size))
  config = config.copy_and_resolve_references()
  config.batch_size = per_chip * chips
  if has_images:
    config.images.batch_size = per_chip_images * chips
  return config


def find_max_batch(config, topology: str, start: int, chips: int,
                   compile_fn=None) -> tuple[int, dict | None]:
  """The largest per-chip batch (a multiple of ``grad_accum_steps``) whose step fits on the
  ``chips`` chips of ``topology``, by doubling from ``start`` and then bisecting; (0, None) when
  even the smallest does not fit. ``compile_fn(config, topology)`` is ``compile_step``."""
  compile_fn = compile_fn or compile_step
  unit = max(1, int(config.get("grad_accum_steps", 1) or 1))

  def attempt(units):
    try:
      r = compile_fn(with_per_chip_batch(config, units * unit, chips), topology)
    except Exception as e:  # noqa: BLE001
      if _is_out_of_memory(e):
        print(f"  per-chip batch {units * unit}: the compiler ran out of memory", file=sys.stderr)
        return None
      raise
    print(f"  per-chip batch {units * unit}: {_gib(r['memory_bytes']['total'])}, "
          f"{'fits' if r['fits'] else 'does not fit'}", file=sys.stderr)
    return r if r["fits"] else None

  lo, best = 0, None
  hi = max(1, start // unit)
  while True:
    r = attempt(hi)
    if r is None:
      break
    lo, best, hi = hi, r, hi * 2
  while hi - lo > 1:
    mid = (lo + hi) // 2
    r = attempt(mid)
    if r is None:
      hi = mid
    else:
      lo, best = mid, r
  return lo * unit, best


_FLAGS = {}


def _define_flags():
  """The command's flags, defined when it runs (importing this module defines none, so tests and
  other entry points can import it)."""
  _FLAGS["config"] = config_flags.DEFINE_config_file(
      "config", None, "Experiment config file (configs/*.py).", lock_config=True)
  _FLAGS["topology"] = flags.DEFINE_string(
      "topology", None, f"TPU topology, CHIP:SHAPE (e.g. {EXAMPLE_TOPOLOGIES}).")
  _FLAGS["per_chip_batch"] = flags.DEFINE_integer(
      "per_chip_batch", None, "Clips per chip (sets config.batch_size to this x chips).")
  _FLAGS["per_chip_images"] = flags.DEFINE_integer(
      "per_chip_images", None, "V-JEPA 2.1's image half: images per chip (default: the config's "
      "images per clip times --per_chip_batch).")
  _FLAGS["hlo_out"] = flags.DEFINE_string(
      "hlo_out", None, "Also write the compiled HLO text (per chip) to this file.")
  _FLAGS["find_max_batch"] = flags.DEFINE_bool(
      "find_max_batch", False, "Find the largest per-chip batch that fits (several compiles).")


def main(argv):
  del argv
  cli.setup_logging()  # here: absl.app.run installs its own handler before calling main
  config = without_data(_FLAGS['config'].value)
  result = cli.run_or_fail(lambda: compile_for_flags(config, _FLAGS['topology'].value))
  print(summary(result))
  print(json.dumps(result))


def compile_for_flags(config, topology: str) -> dict:
  """What the flags ask for: one compile, or the search for the largest per-chip batch."""
  try:
    chips = len(tpu_devices(topology))
    if _FLAGS['per_chip_batch'].value is not None:
      config = with_per_chip_batch(config, _FLAGS['per_chip_batch'].value, chips,
                                   _FLAGS['per_chip_images'].value)
    if not _FLAGS['find_max_batch'].value:
      return compile_step(config, topology, _FLAGS['hlo_out'].value)
    start = _FLAGS['per_chip_batch'].value or max(1, config.batch_size // chips)
    per_chip, result = find_max_batch(config, topology, start, chips)
  except Exception as e:  # noqa: BLE001 - the compiler's out-of-memory is the user's to fix
    if _is_out_of_memory(e):
      raise AotError(f"does not fit: the TPU compiler ran out of memory on {topology} "
                     f"({cli._last_line(e)[:300]}); lower --per_chip_batch or use remat/fsdp"
                     ) from e
    raise
  if result is None:
    raise AotError(f"not even {max(1, int(config.get('grad_accum_steps', 1) or 1))} clip(s) per "
                   f"chip fit on {topology}; try --config.model.remat=full or a larger fsdp")
  result["max_per_chip_batch"] = per_chip
  return result


def run():
  # The compile needs no TPU backend: keep jax on the CPU (and libtpu quiet) unless told otherwise.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  _define_flags()
  flags.mark_flags_as_required(["config", "topology"])
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
