"""The train step compiled by XLA:TPU ahead of time (no TPU needed: libtpu's compiler on this
host), with one attention implementation: per-chip memory, HLO matmul FLOPs, relayout
(copy/transpose) bytes, an HBM-traffic estimate, the Pallas kernel calls and the largest
attention-logits-shaped buffers. Compares the attention paths of BENCHMARKS.md "TPU attention".

  python bench/tpu_attention.py --config=configs/vitl16.py --topology=v5p:2x2x1 --data=4 \\
      --per_chip=24 --attention=flash [--attention=chunked ...]

Prints one JSON line per attention. Traces what a TPU host runs (``layers.target_platform``).
"""
import argparse
import importlib.util
import json
import os
import re
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # other compiles may hold libtpu's lock

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import topologies  # noqa: E402

from jepa_jax import hlo_stats  # noqa: E402
from jepa_jax.models import layers  # noqa: E402
from jepa_jax.pretrain import experiment  # noqa: E402

GIB = 2 ** 30


def load_config(path: str):
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def logits_buffers(text: str, min_dim: int) -> list:
  """Distinct 4-D float32 shapes whose last two dims are both >= ``min_dim``: per-head logits
  ``[B, H, N, S]`` (or a chunk of them) materialised in HBM."""
  shapes = set(re.findall(r"f32\[(\d+),(\d+),(\d+),(\d+)\]", text))
  return sorted(s for s in shapes if int(s[2]) >= min_dim and int(s[3]) >= min_dim)


def compile_step(config, topology: str, data: int, fsdp: int):
  topo = topologies.get_topology_desc(topology_name=topology, platform="tpu")
  devices = np.asarray(topo.devices)[: data * fsdp].reshape(data, fsdp)
  mesh = jax.sharding.Mesh(devices, ("data", "fsdp"))
  with layers.target_platform("tpu"):
    exp = experiment.build(config, mesh=mesh)
    start = time.time()
    compiled = exp.compile_train_step()
  return compiled, time.time() - start


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/vitl16.py")
  parser.add_argument("--topology", default="v5p:2x2x1")
  parser.add_argument("--data", type=int, default=4)
  parser.add_argument("--fsdp", type=int, default=1)
  parser.add_argument("--per_chip", type=int, default=24)
  parser.add_argument("--attention", action="append", default=None)
  parser.add_argument("--dump", default="", help="write each compiled HLO text to DUMP.<attention>.txt")
  args = parser.parse_args(argv)
  for attention in args.attention or ["flash"]:
    config = load_config(args.config)
    config.data.datasets = []
    config.mesh.data, config.mesh.fsdp = args.data, args.fsdp
    config.batch_size = args.per_chip * args.data * args.fsdp
    config.model.attention = attention
    compiled, seconds = compile_step(config, args.topology, args.data, args.fsdp)
    text = compiled.as_text()
    if args.dump:
      with open(f"{args.dump}.{attention}.txt", "w") as f:
        f.write(text)
    mem = compiled.memory_analysis()
    stats = hlo_stats.analyse(text)
    print(json.dumps({
        "config": args.config, "topology": args.topology, "data": args.data, "fsdp": args.fsdp,
        "per_chip": args.per_chip, "attention": attention, "compile_s": round(seconds, 1),
        "argument_gib": mem.argument_size_in_bytes / GIB, "temp_gib": mem.temp_size_in_bytes / GIB,
        "matmul_tflops": stats.matmul_flops / 1e12,
        "relayout_gib": {k: v / GIB for k, v in stats.relayout_bytes.items()},
        "largest_relayouts": [(o.kind, o.shape, o.count, o.bytes / GIB)
                              for o in stats.relayout_ops[:6]],
        "hbm_gib_estimate": stats.hbm_bytes / GIB,
        "tpu_custom_calls": stats.custom_calls.get("tpu_custom_call", 0),
        "logits_buffers": logits_buffers(text, 128)[:6]}), flush=True)


if __name__ == "__main__":
  sys.exit(main())
