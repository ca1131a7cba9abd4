"""Per-device memory of the train step from XLA's memory analysis, on simulated devices or on
the accelerator itself.

    python bench/memory.py --config=configs/vith16.py --devices 8 --mesh=data:1,fsdp:8 \
        [--per_device_batch 24 | --config.batch_size=192] [--config.model.remat=full] \
        [--config.model.scan=True] [--config.model.attention=chunked]
    python bench/memory.py --config=configs/vitl16.py --on_device --mesh=data:1,fsdp:1 \
        --per_device_batch 24                       # on a GPU / TPU host: the device's figures
    python bench/memory.py --config=configs/vitl16.py --devices 8 --mesh=data:1,fsdp:8 \
        --per_device_batch 384 --config.grad_accum_steps=16   # 3072 clips on 8 devices, 16 x 24

With ``--on_device`` the step is compiled for the machine's own accelerators (all local devices
on the ``--mesh``), and the JSON gains ``device``: XLA's memory analysis of that compile (the
accelerator's own buffer assignment), and, after ``--run_steps`` real steps on random clips,
the runtime's own counters (``device.memory_stats()``: ``peak_bytes_in_use``, ``bytes_limit``,
per device, max over devices), next to ``cpu_estimate``: this script's CPU figure for the same
config, per-device batch and mesh (run in a subprocess on simulated CPU devices; ``--no
cpu_estimate`` skips it). A step that does not fit reports the allocator's error in
``device.error`` instead of crashing.

Model and batch settings are the config's own fields, overridden as in training
(``--config.model.remat``, ``.scan``, ``.attention``, ``--config.batch_size``); on this CPU
``attention='auto'`` is ``xla``, which materialises the logits: pass ``chunked`` for what a TPU
runs with ``auto``. ``--per_device_batch`` sets the global batch to that many clips per device.

Sets ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before JAX is imported, builds the
experiment of ``--config`` on a ``data x fsdp`` mesh of those N CPU devices, then lowers and
compiles the train step on abstract inputs only (``Experiment.memory``: nothing is allocated, so
ViT-H fits in a laptop's RAM). Prints one line of JSON with XLA's per-device figures in GiB:
arguments (state + batch), outputs, temporaries (activations kept for the backward, workspaces),
aliased (the donated state, counted once) and ``peak_estimate`` = arguments + outputs + temps -
aliased.

Why a small simulated mesh stands for a pod: with data parallelism over ``data`` and parameters,
gradients and optimiser state sharded over ``fsdp``, what one device holds depends only on the
per-device batch (activations) and on the fsdp degree (state / fsdp), not on how many data
replicas there are. So ViT-L/16 at the paper's 3072 clips over 128 devices with fsdp 8 (24 clips
per device) has the per-device figure of ``--devices 8 --mesh=data:1,fsdp:8
--per_device_batch 24``. The figures are XLA:CPU's buffer assignment: a GPU/TPU compile fuses and
schedules differently (and the TPU keeps bf16 where the CPU may upcast), so treat them as an
estimate within tens of percent, and the remat comparison as the robust part.
"""
import argparse
import os
import sys

# The device count must be fixed before jax is imported (the config file imports it).
_pre = argparse.ArgumentParser(add_help=False)
_pre.add_argument("--devices", type=int, default=8)
_pre.add_argument("--on_device", action="store_true")
_known, _ = _pre.parse_known_args()
if not _known.on_device:
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={_known.devices}").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import json  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (configs/*.py).",
                                          lock_config=False)
_DEVICES = flags.DEFINE_integer("devices", 8, "Simulated CPU devices (read before jax starts).")
_MESH = flags.DEFINE_string("mesh", None, "data:X,fsdp:Y (default: config.mesh).")
_PER_DEVICE = flags.DEFINE_integer("per_device_batch", None, "Clips per device: the global batch "
                                   "is this x devices (default: config.batch_size).")
_ON_DEVICE = flags.DEFINE_bool("on_device", False, "Compile (and run) on this machine's "
                                "accelerators and report their own figures (read before jax starts).")
_RUN_STEPS = flags.DEFINE_integer("run_steps", 2, "With --on_device: real steps to run before "
                                  "reading the runtime's peak (0: compile only).")
_CPU_ESTIMATE = flags.DEFINE_bool("cpu_estimate", True, "With --on_device: also the CPU estimate "
                                  "of the same config (a subprocess on simulated CPU devices).")

GIB = 2.0 ** 30


def parse_mesh(text: str) -> dict:
  out = {}
  for part in text.split(","):
    name, _, value = part.partition(":")
    if name.strip() not in ("data", "fsdp") or not value:
      raise app.UsageError(f"--mesh={text!r}: expected data:X,fsdp:Y")
    out[name.strip()] = int(value)
  return out


def main(argv):
  del argv
  import jax

  from jepa_jax.pretrain import experiment  # noqa: PLC0415

  config = _CONFIG.value
  config.data.datasets = []
  if _MESH.value:
    config.mesh.update(parse_mesh(_MESH.value))
  n = jax.device_count()
  if _PER_DEVICE.value is not None:
    config.batch_size = _PER_DEVICE.value * n

  from jepa_jax.pretrain import train_step as train_step_lib  # noqa: PLC0415

  exp = experiment.build(config)
  t0, c0 = time.perf_counter(), time.process_time()
  compiled = exp.compile_train_step()
  compile_s, compile_cpu_s = time.perf_counter() - t0, time.process_time() - c0
  mem = train_step_lib.memory_analysis(compiled)
  out = {
      "platform": jax.devices()[0].platform,
      "device_kind": jax.devices()[0].device_kind,
      "bench": "memory",
      "model": config.model.name,
      "dtype": config.model.dtype,
      "remat": config.model.remat,
      "scan": bool(config.model.scan),
      "attention": config.model.attention,
      "crop_size": config.data.crop_size,
      "num_frames": config.data.num_frames,
      "devices": n,
      "mesh": dict(exp.mesh.shape),
      "batch_size": exp.batch_size,
      "per_device_batch": exp.batch_size // n,
      "grad_accum_steps": exp.settings.grad_accum_steps,
      "per_device_micro_batch": exp.batch_size // n // exp.settings.grad_accum_steps,
      "compile_s": round(compile_s, 1),
      "compile_cpu_s": round(compile_cpu_s, 1),
      "bytes": mem,
  }
  out.update(gib_fields(mem))
  if _ON_DEVICE.value:
    out["device"] = device_figures(exp, compiled, mem, _RUN_STEPS.value)
    if _CPU_ESTIMATE.value:
      out["cpu_estimate"] = cpu_estimate(config, exp)
  print(json.dumps(out))


def gib_fields(mem: dict) -> dict:
  return {k.replace("_bytes", "_gib").replace("_size_in", ""): round(v / GIB, 3)
          for k, v in mem.items()}


def device_figures(exp, compiled, compiled_mem: dict, run_steps: int) -> dict:
  """The accelerator's own figures: its compile's memory analysis, and the runtime allocator's
  peak after ``run_steps`` real steps of ``compiled`` (None where the backend keeps no
  statistics, e.g. CPU)."""
  import jax
  import numpy as np

  from jepa_jax import sharding
  out = {"compiled": gib_fields(compiled_mem), "run_steps": run_steps}
  if run_steps <= 0:
    return out
  try:
    shape = exp.encoder.clip_shape(exp.batch_size)
    batch = exp.shard_batch({"video": np.random.default_rng(0).integers(0, 256, shape, np.uint8)})
    state = exp.init_state(jax.random.PRNGKey(0))
    rng = jax.device_put(jax.random.PRNGKey(1), sharding.replicated(exp.mesh))
    for _ in range(run_steps):
      state, metrics = compiled(state, batch, rng)
    jax.block_until_ready(metrics)
  except Exception as e:  # noqa: BLE001 -- an OOM is a result here, not a crash
    out["error"] = f"{type(e).__name__}: {str(e)[:500]}"
    return out
  stats = [dev.memory_stats() for dev in exp.mesh.devices.flat]
  if any(s is None for s in stats):
    out["runtime"] = None
    return out
  out["runtime"] = {
      key.replace("_bytes", "_gib"): round(max(s.get(key, 0) for s in stats) / GIB, 3)
      for key in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit", "largest_alloc_size")}
  return out


def cpu_estimate(config, exp) -> dict:
  """This script's CPU figure for the same config (``--config.*`` overrides included), per-device
  batch and mesh. cuDNN does not compile for a CPU: ``auto``/``cudnn`` are estimated with
  ``chunked``, the other memory-bounded exact path."""
  n = exp.mesh.devices.size
  mesh = ",".join(f"{k}:{v}" for k, v in exp.mesh.shape.items())
  attention = config.model.attention
  attention = "chunked" if attention in ("auto", "cudnn") else attention
  overrides = [a for a in sys.argv[1:] if a.startswith("--config.")]
  # After the user's overrides: the last value of a repeated flag wins.
  args = [sys.executable, os.path.abspath(__file__),
          f"--config={config_flags.get_config_filename(flags.FLAGS['config'])}", *overrides,
          f"--devices={n}", f"--mesh={mesh}", f"--config.batch_size={exp.batch_size}",
          f"--config.model.attention={attention}"]
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run(args, capture_output=True, text=True, env=env)
  if proc.returncode:
    return {"error": proc.stderr[-500:]}
  est = json.loads(proc.stdout.strip().splitlines()[-1])
  return {k: est[k] for k in ("attention", "argument_gib", "temp_gib", "peak_estimate_gib")}


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
