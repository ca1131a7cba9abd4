"""The per-device memory table of BENCHMARKS.md: ``bench/memory.py`` over models, pod sizes, remat.

    python bench/memory_table.py [--models vitl16,vith16,vith16_384] [--pod_sizes 64,128,256] \
        [--remat none,dots_no_batch,full] [--attention chunked,xla] [--fsdp 8] [--out memory.jsonl]

For every (config, pod size, remat policy) it runs ``bench/memory.py`` in a subprocess (each needs
its own simulated device count before JAX starts) on ``--fsdp`` simulated devices with the
per-device batch the config's global batch gives on that pod (``ceil(batch / pod_size)``; see
``bench/memory.py`` for why fsdp devices stand for the pod). Appends each JSON line to ``--out``
and prints a Markdown table with a column per memory budget (16 GiB: TPU v4 / v5e; 80 GiB: H100;
95 GiB: TPU v5p), marking which fit.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import runpy
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
BUDGETS_GIB = {"v4/v5e 16": 16.0, "H100 80": 80.0, "v5p 95": 95.0}


def config_path(config: str) -> str:
  return os.path.join(ROOT, "configs", config + ".py")


def global_batch(config: str) -> int:
  """The config's own ``batch_size``: the paper's global batch for the paper configs."""
  return int(runpy.run_path(config_path(config))["get_config"]().batch_size)


def run_one(config: str, devices: int, per_device_batch: int, remat: str, scan: bool,
            attention: str, extra=()) -> dict:
  cmd = [sys.executable, os.path.join(HERE, "memory.py"),
         f"--config={config_path(config)}", f"--devices={devices}",
         f"--mesh=data:1,fsdp:{devices}", f"--per_device_batch={per_device_batch}",
         f"--config.model.remat={remat}", f"--config.model.scan={scan}",
         f"--config.model.attention={attention}", *extra]
  out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
  result = json.loads(out.strip().splitlines()[-1])
  result["config"] = config
  return result


def table(rows: list[dict]) -> str:
  head = ("| config | pod | per-device batch | attention | remat | args GiB | temps GiB | peak GiB | "
          + " | ".join(f"fits {k}" for k in BUDGETS_GIB) + " |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in rows:
    fits = ["yes" if r["peak_estimate_gib"] <= b else "no" for b in BUDGETS_GIB.values()]
    lines.append(f"| {r['config']} | {r['pod_size']} | {r['per_device_batch']} | "
                 f"{r['attention']} | {r['remat']} | "
                 f"{r['argument_gib']:.2f} | {r['temp_gib']:.1f} | {r['peak_estimate_gib']:.1f} | "
                 + " | ".join(fits) + " |")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", default="vitl16,vith16,vith16_384")
  p.add_argument("--pod_sizes", default="64,128,256")
  p.add_argument("--remat", default="none,dots_no_batch,full")
  p.add_argument("--fsdp", type=int, default=8, help="simulated devices = fsdp degree")
  p.add_argument("--scan", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--attention", default="chunked",
                 help="comma list; chunked = what 'auto' runs on TPU; xla materialises the logits")
  p.add_argument("--out", default=None, help="append each JSON result to this file")
  args = p.parse_args(argv)

  rows = []
  for config in args.models.split(","):
    for pod in (int(s) for s in args.pod_sizes.split(",")):
      per_device = math.ceil(global_batch(config) / pod)
      for attention in args.attention.split(","):
        for remat in args.remat.split(","):
          r = run_one(config, args.fsdp, per_device, remat, args.scan, attention)
          r["pod_size"] = pod
          rows.append(r)
          print(json.dumps(r), file=sys.stderr, flush=True)
          if args.out:
            with open(args.out, "a") as f:
              f.write(json.dumps(r) + "\n")
  print(table(rows))


if __name__ == "__main__":
  main()
