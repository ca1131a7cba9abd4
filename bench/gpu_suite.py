"""The prepared one-GPU run: jepa_jax's train step against the reference PyTorch step, one JSON.

    bash bench/gpu_suite.sh                          # on the lent GPU machine (BENCHMARKS.md)
    GPU_SUITE_DRY_RUN=1 OUT=/tmp/s bash bench/gpu_suite.sh   # on a CPU: tiny shapes, every path

Each case is its own process, one after another (JAX takes most of the GPU's memory when it
starts and torch keeps its cache, so the two never share the card): the environment (versions,
``nvidia-smi``, a bf16 matmul rate as the achievable ceiling), then ``bench/train_step.py`` and
``bench/reference_step.py`` for ViT-L/16 at 24 clips: our default static masks, the reference,
our step at the reference's mean trimmed mask lengths (equal work), then ViT-H/16 and its
reference. If our ViT-L step fails (e.g. cuDNN refuses the attention), the same with
``attention=xla`` runs next. MFU on both sides divides ``jepa_jax.flops`` by the device's dense
bf16 peak; memory is the runtime's peak (``peak_bytes_in_use`` / ``max_memory_allocated``).

Time guard: the suite stops itself within ``--budget_s`` of ``$GPU_SUITE_T0`` (gpu_suite.sh sets
it before installing the wheels, so the install counts). A case starts only if its expected
minimum (``min_s``) fits in what is left, and runs under a timeout of what is left (or its own
cap, so one hung compile cannot take the rest); later cases are recorded as skipped, with why.
The JSON is rewritten after every case, so an outside kill still leaves what was measured.
Where the env case finds no GPU for jax (or torch), our (the reference's) cases are skipped.

Writes ``<out>/gpu_suite.json`` and appends every case's output to ``<out>/gpu_suite.log``; prints
a table last. ``python bench/gpu_suite.py --env`` prints the environment record alone.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_REF_DIR = os.path.join(REPO, ".ref", "jepa")
BUDGET_S = 450.0      # 7.5 minutes: the lease's 8 minutes of device time, less a margin
RESERVE_S = 5.0       # kept back from every timeout to write the JSON
# The reference's mean trimmed lengths at 24 clips (context, target per mask; BENCHMARKS.md).
EQUAL_WORK = ("--num_context=360,99", "--num_target=744,1104")
# (ours, reference) pairs whose clips/s the summary compares.
PAIRS = (("vitl16", "vitl16_reference"), ("vitl16_equal_work", "vitl16_reference"),
         ("vitl16_xla_attention", "vitl16_reference"), ("vith16", "vith16_reference"))
SUMMARY_FIELDS = ("step_s", "min_step_s", "first_step_s", "clips_per_s", "tflops_per_s", "mfu",
                  "peak_memory_gib", "compile_s", "model_flops_per_step", "batch_size",
                  "mask_sizes", "context_tokens", "target_tokens", "attention_resolved",
                  "device_kind")


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  kind: str                      # "env" | "ours" | "reference"
  argv: tuple[str, ...]
  min_s: float                   # the least time it needs to give a figure
  cap_s: float                   # its own timeout
  only_if_failed: str | None = None  # a fallback: runs only when that case failed
  needs_ref: bool = False


def env_argv(py: str, ref_dir: str | None) -> tuple[str, ...]:
  return (py, "bench/gpu_suite.py", "--env") + (("--ref_dir", ref_dir) if ref_dir else ())


def gpu_cases(py: str, ref_dir: str | None) -> list[Case]:
  ours = (py, "bench/train_step.py", "--config.batch_size=24", "--config.mesh.data=1")
  ref = (py, "bench/reference_step.py", "--ref-dir", ref_dir or "", "--batch-size", "24",
         "--warmup", "3")
  vitl, vith = "--config=configs/vitl16.py", "--config=configs/vith16.py"
  return [
      Case("env", "env", env_argv(py, ref_dir), 15, 90),
      Case("vitl16", "ours", ours + (vitl, "--steps=20"), 90, 240),
      Case("vitl16_xla_attention", "ours",
           ours + (vitl, "--steps=20", "--config.model.attention=xla"), 90, 200,
           only_if_failed="vitl16"),
      Case("vitl16_reference", "reference",
           ref + ("--ref-config", "configs/pretrain/vitl16.yaml", "--steps", "20"), 60, 180,
           needs_ref=True),
      Case("vitl16_equal_work", "ours", ours + (vitl, "--steps=20") + EQUAL_WORK, 90, 200),
      # One H200 holds ViT-H unsharded; the config's remat policy is kept.
      Case("vith16", "ours", ours + (vith, "--config.mesh.fsdp=1", "--steps=10"), 120, 240),
      Case("vith16_reference", "reference",
           ref + ("--ref-config", "configs/pretrain/vith16.yaml", "--steps", "10"), 70, 180,
           needs_ref=True),
  ]


def dry_cases(py: str, ref_dir: str | None) -> list[Case]:
  """The same cases on tiny shapes for a CPU: the code paths, not the figures."""
  ours = (py, "bench/train_step.py", "--config=configs/demo.py", "--config.batch_size=2",
          "--config.mesh.data=1", "--config.model.overrides.depth=1",
          "--config.model.pred_depth=1", "--steps=1")
  ref = (py, "bench/reference_step.py", "--ref-dir", ref_dir or "", "--model-name=vit_tiny",
         "--crop-size=64", "--num-frames=4", "--pred-depth=1", "--pred-embed-dim=48",
         "--batch-size=2", "--steps=1", "--warmup=1", "--device=cpu")
  return [
      Case("env", "env", env_argv(py, ref_dir), 1, 120),
      Case("vitl16", "ours", ours, 1, 300),
      Case("vitl16_xla_attention", "ours", ours + ("--config.model.attention=xla",), 1, 300,
           only_if_failed="vitl16"),
      Case("vitl16_reference", "reference", ref, 1, 300, needs_ref=True),
      Case("vitl16_equal_work", "ours", ours + ("--num_context=13,9", "--num_target=40,48"),
           1, 300),
      Case("vith16", "ours", ours + ("--config.model.overrides.embed_dim=128",), 1, 300),
      Case("vith16_reference", "reference",
           ref + ("--ref-config", "configs/pretrain/vith16.yaml"), 1, 300, needs_ref=True),
  ]


def find_ref_dir(explicit: str | None) -> str | None:
  """--ref_dir, else $JEPA_REF_DIR, else .ref/jepa (bench/gpu_ref_checkout.sh), if a checkout."""
  for path in (explicit, os.environ.get("JEPA_REF_DIR"), DEFAULT_REF_DIR):
    if path and os.path.isdir(os.path.join(path, "app", "vjepa")):
      return os.path.abspath(path)
  return None


def blocked_kinds(env_result: dict | None, dry_run: bool) -> dict:
  """Kinds of case not worth starting on this machine: a ViT-L step that jax or torch would run on
  the CPU takes the whole budget for a figure nobody wants. (An env case that failed blocks
  nothing: its error is in the JSON and the cases say the rest.)"""
  if dry_run or not env_result:
    return {}
  blocked = {}
  if env_result.get("jax_platform") != "gpu":
    blocked["ours"] = f"jax sees no GPU (platform {env_result.get('jax_platform')}; see env)"
  if not env_result.get("torch_device"):
    blocked["reference"] = "torch sees no GPU (see env)"
  return blocked


def decide(case: Case, remaining_s: float, statuses: dict, ref_dir: str | None,
           blocked: dict | None = None):
  """(timeout_s, None) to run ``case`` now, or (None, (status, reason)) to record it unrun."""
  if blocked and case.kind in blocked:
    return None, ("skipped", blocked[case.kind])
  if case.only_if_failed and statuses.get(case.only_if_failed) != "failed":
    return None, ("not_needed", f"runs only if {case.only_if_failed} failed")
  if case.needs_ref and not ref_dir:
    return None, ("skipped", "no reference checkout: run bench/gpu_ref_checkout.sh (.ref/jepa) "
                             "or set JEPA_REF_DIR")
  if remaining_s < case.min_s:
    return None, ("skipped", f"time budget: {remaining_s:.0f} s left, needs ~{case.min_s:.0f} s")
  return min(case.cap_s, remaining_s), None


def last_json_line(text: str):
  for line in reversed(text.strip().splitlines()):
    line = line.strip()
    if line.startswith("{"):
      try:
        return json.loads(line)
      except json.JSONDecodeError:
        return None
  return None


def free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def run_case(case: Case, timeout_s: float, env: dict, log) -> dict:
  """Run one case in its own process group; on timeout the whole group is killed."""
  log.write(f"\n===== {case.name}: {' '.join(case.argv)} (timeout {timeout_s:.0f} s)\n")
  log.flush()
  if case.kind == "reference":
    # reference_step.py's one-process group listens on MASTER_PORT (default 29517): take a
    # free one, so another job on the machine holding that port cannot fail the case.
    env = {**env, "MASTER_PORT": str(free_port())}
  t0 = time.perf_counter()
  proc = subprocess.Popen(case.argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True)
  try:
    out, err = proc.communicate(timeout=timeout_s)
    timed_out = False
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    out, err = proc.communicate()
    timed_out = True
  wall = time.perf_counter() - t0
  log.write(err)
  log.write(out)
  log.write(f"===== {case.name}: rc {proc.returncode}, {wall:.1f} s\n")
  log.flush()
  result = last_json_line(out)
  record = {"status": "ok", "returncode": proc.returncode, "wall_s": round(wall, 2),
            "timeout_s": round(timeout_s, 1), "result": result, "error": None}
  if timed_out:
    record.update(status="timed_out", error=f"killed after {timeout_s:.0f} s: "
                                            + (err or "")[-1500:])
  elif proc.returncode != 0 or result is None:
    record.update(status="failed", error=(err or out or "")[-3000:])
  return record


def summarize(cases: list[dict]) -> dict:
  """Per measured case the figures a table needs, and ours/reference clips/s per pair."""
  rows = {}
  for c in cases:
    if c["status"] == "ok" and c["kind"] in ("ours", "reference"):
      rows[c["name"]] = {k: c["result"].get(k) for k in SUMMARY_FIELDS if k in c["result"]}
  ratios = {}
  for ours, ref in PAIRS:
    if ours in rows and ref in rows:
      ratios[f"{ours}/{ref}"] = round(rows[ours]["clips_per_s"] / rows[ref]["clips_per_s"], 3)
  return {"rows": rows, "clips_per_s_ratios": ratios}


def table(summary: dict) -> str:
  cols = ("step_s", "clips_per_s", "mfu", "peak_memory_gib", "compile_s", "first_step_s")
  lines = ["case".ljust(22) + "".join(c.rjust(16) for c in cols)]
  for name, row in summary["rows"].items():
    lines.append(name.ljust(22) + "".join(str(row.get(c)).rjust(16) for c in cols))
  lines += [f"{k}: {v}" for k, v in summary["clips_per_s_ratios"].items()]
  return "\n".join(lines)


def matmul_tflops(jax, jnp, n: int, reps: int = 10) -> float:
  """bf16 n x n x n products on random data, timed after a warm-up: the achievable rate."""
  ka, kb = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(ka, (n, n), jnp.bfloat16)
  b = jax.random.normal(kb, (n, n), jnp.bfloat16)
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(reps):
    c = f(a, b)
  c.block_until_ready()
  return round(2 * n**3 * reps / (time.perf_counter() - t0) / 1e12, 2)


def env_report(ref_dir: str | None) -> dict:
  from importlib import metadata
  versions = {}
  for name in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax",
               "ml_collections", "numpy", "torch", "PyYAML"):
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      versions[name] = None
  import jax
  import jax.numpy as jnp
  devices = jax.devices()
  out = {"python": sys.version.split()[0], "versions": versions,
         "jax_platform": devices[0].platform, "jax_device_kind": devices[0].device_kind,
         "jax_devices": len(devices)}
  try:
    from jax._src.lib import cuda_versions  # noqa: PLC0415 - private; absent on CPU-only jaxlib
    out["jax_cudnn"] = cuda_versions.cudnn_get_version() if cuda_versions else None
  except Exception as e:  # noqa: BLE001 - a version probe must not stop the suite
    out["jax_cudnn"] = f"unknown: {type(e).__name__}"
  gpu = devices[0].platform == "gpu"
  out["bf16_matmul_tflops"] = matmul_tflops(jax, jnp, 8192 if gpu else 256)
  out["bf16_matmul_n"] = 8192 if gpu else 256
  try:
    import torch  # noqa: PLC0415
    out["torch_cuda"] = torch.version.cuda
    out["torch_cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    out["torch_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
  except Exception as e:  # noqa: BLE001 - keep the jax half of the record if torch fails
    out["torch_cuda"] = out["torch_cudnn"] = out["torch_device"] = None
    out["torch_error"] = f"{type(e).__name__}: {e}"[:500]
  smi = shutil.which("nvidia-smi")
  out["nvidia_smi"] = subprocess.run(
      [smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
       "--format=csv,noheader"], capture_output=True, text=True).stdout.strip() if smi else None
  sys.path.insert(0, os.path.join(REPO, "bench"))
  import reference_step  # noqa: PLC0415
  out["ref_dir"] = ref_dir
  out["ref_commit"] = reference_step._git_commit(ref_dir) if ref_dir else None
  return out


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default=os.environ.get("OUT"), help="folder for the JSON and the log "
                 "(default: $OUT)")
  p.add_argument("--dry_run", action="store_true",
                 default=os.environ.get("GPU_SUITE_DRY_RUN") == "1",
                 help="tiny shapes on the CPU (default: $GPU_SUITE_DRY_RUN=1)")
  p.add_argument("--budget_s", type=float,
                 default=float(os.environ.get("GPU_SUITE_BUDGET_S", BUDGET_S)))
  p.add_argument("--ref_dir", default=None, help="facebookresearch/jepa checkout (default: "
                 "$JEPA_REF_DIR, else .ref/jepa)")
  p.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
  p.add_argument("--python", default=sys.executable, help="interpreter for the cases")
  p.add_argument("--env", action="store_true", help="print the environment record and exit")
  args = p.parse_args(argv)
  if not args.env and not args.out:
    p.error("--out (or $OUT) is required: the folder for gpu_suite.json")
  return args


def case_env(dry_run: bool) -> dict:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in env.get("PYTHONPATH", "").split(
      os.pathsep) if p])
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  if dry_run:
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  else:
    # The default 75% would do; more room where a case needs it. Peaks are read from the
    # allocator's counters, not from this pool.
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
  return env


def main(argv=None):
  args = parse_args(argv)
  ref_dir = find_ref_dir(args.ref_dir)
  if args.env:
    print(json.dumps(env_report(ref_dir)))
    return
  t0 = float(os.environ.get("GPU_SUITE_T0") or time.time())
  os.makedirs(args.out, exist_ok=True)
  cases = (dry_cases if args.dry_run else gpu_cases)(args.python, ref_dir)
  if args.cases:
    wanted = args.cases.split(",")
    unknown = sorted(set(wanted) - {c.name for c in cases})
    if unknown:
      raise SystemExit(f"--cases: unknown {unknown}; known: {[c.name for c in cases]}")
    cases = [c for c in cases if c.name in wanted]
  env = case_env(args.dry_run)
  doc = {
      "suite": "gpu_suite", "dry_run": args.dry_run,
      "note": ("dry run on a CPU with tiny shapes: no figure here is a GPU measurement"
               if args.dry_run else "measured on the device named in env"),
      "started_utc": datetime.datetime.fromtimestamp(t0, datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "budget_s": args.budget_s, "elapsed_s": None, "stopped_by_budget": False,
      "wheels": os.environ.get("GPU_SUITE_WHEELS", "none"), "ref_dir": ref_dir,
      "env": None, "cases": [], "summary": None,
  }
  json_path = os.path.join(args.out, "gpu_suite.json")

  def write():
    doc["elapsed_s"] = round(time.time() - t0, 1)
    doc["summary"] = summarize(doc["cases"])
    with open(json_path + ".tmp", "w") as f:
      json.dump(doc, f, indent=1)
    os.replace(json_path + ".tmp", json_path)

  statuses = {}
  with open(os.path.join(args.out, "gpu_suite.log"), "a") as log:
    for case in cases:
      remaining = args.budget_s - (time.time() - t0) - RESERVE_S
      timeout, unrun = decide(case, remaining, statuses, ref_dir,
                              blocked_kinds(doc["env"], args.dry_run))
      entry = {"name": case.name, "kind": case.kind, "argv": list(case.argv)}
      if unrun:
        entry.update(status=unrun[0], reason=unrun[1], result=None)
        doc["stopped_by_budget"] |= unrun[1].startswith("time budget")
      else:
        entry.update(run_case(case, timeout, env, log))
        if case.kind == "env":
          doc["env"] = entry["result"]
      statuses[case.name] = entry["status"]
      doc["cases"].append(entry)
      print(f"[gpu_suite] {case.name}: {entry['status']} "
            f"({entry.get('wall_s', 0)} s; {round(time.time() - t0)} s of {args.budget_s:.0f})",
            flush=True)
      write()
  write()
  print(table(doc["summary"]))
  print(f"[gpu_suite] wrote {json_path}")


if __name__ == "__main__":
  main()
