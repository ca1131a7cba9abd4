"""Per-device memory of the train step from XLA's memory analysis, on simulated devices.

    python bench/memory.py --config=configs/vith16.py --devices 8 --mesh=data:1,fsdp:8 \
        [--per_device_batch 24 | --batch 192] [--remat none|full|dots|dots_no_batch] [--scan] \
        [--attention chunked]

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
_known, _ = _pre.parse_known_args()
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count={_known.devices}").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import json  # noqa: E402
import time  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (configs/*.py).",
                                          lock_config=False)
_DEVICES = flags.DEFINE_integer("devices", 8, "Simulated CPU devices (read before jax starts).")
_MESH = flags.DEFINE_string("mesh", None, "data:X,fsdp:Y (default: config.mesh).")
_BATCH = flags.DEFINE_integer("batch", None, "Global batch on the simulated mesh.")
_PER_DEVICE = flags.DEFINE_integer("per_device_batch", None, "Clips per device (batch = this x "
                                   "devices); overrides --batch.")
_REMAT = flags.DEFINE_enum("remat", None, ["none", "full", "dots", "dots_no_batch"],
                           "Block rematerialisation (default: config.model.remat).")
_SCAN = flags.DEFINE_bool("scan", None, "nn.scan over blocks (default: config.model.scan).")
_ATTENTION = flags.DEFINE_string("attention", None, "Attention path (default: config.model."
                                 "attention; on this CPU 'auto' is 'xla', which materialises the "
                                 "logits: pass 'chunked' for what a TPU runs with 'auto').")

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

  from jepa_jax import experiment

  config = _CONFIG.value
  config.data.datasets = []
  if _MESH.value:
    config.mesh.update(parse_mesh(_MESH.value))
  n = jax.device_count()
  if _PER_DEVICE.value is not None:
    config.batch_size = _PER_DEVICE.value * n
  elif _BATCH.value is not None:
    config.batch_size = _BATCH.value
  if _REMAT.value is not None:
    config.model.remat = _REMAT.value
  if _SCAN.value is not None:
    config.model.scan = _SCAN.value
  if _ATTENTION.value is not None:
    config.model.attention = _ATTENTION.value

  exp = experiment.build(config)
  t0 = time.perf_counter()
  mem = exp.memory()
  compile_s = time.perf_counter() - t0
  out = {
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
      "compile_s": round(compile_s, 1),
      "bytes": mem,
  }
  out.update({k.replace("_bytes", "_gib").replace("_size_in", ""): round(v / GIB, 3)
              for k, v in mem.items()})
  print(json.dumps(out))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
