"""Train-step throughput: compile time, median step time, clips/s, tokens/s, TFLOP/s and MFU.

    python bench/train_step.py --config=configs/demo.py [--steps 10] [--config.batch_size=8 ...]
        [--num_context=360,99 --num_target=744,1104]     # static mask sizes per mask

Builds the experiment of ``--config`` on all local devices (``config.mesh``), initialises the
state, and feeds synthetic uint8 clips made once on the host (``data.datasets`` is emptied: no
input pipeline is measured here, see ``bench/data_throughput.py``). The step is lowered and
compiled ahead of time (``compile_s`` wall time; ``compile_cpu_s`` this process's CPU time, which
other jobs on the machine do not inflate; with ``--config.compilation_cache_dir=DIR`` a second
run loads the step from JAX's persistent cache instead); the first execution is reported apart (``first_step_s``),
then ``--steps`` steps are timed one by one, each ending in ``block_until_ready`` on the metrics
(the state is donated and threaded through, as in training); ``step_cpu_s`` is the median CPU
time of this process per step (all its threads; what other jobs on a shared machine do not
inflate, unlike the wall-clock ``step_s``). Model FLOPs per step come from
``jepa_jax.flops.train_step_flops`` (its docstring has the formula); MFU divides the achieved
FLOP/s by the dense bf16 peak of the device kind (``jepa_jax.flops.PEAK_TFLOPS``) times the
device count, and is null where no peak is known (CPUs). ``peak_memory_gib`` is the runtime's
``peak_bytes_in_use`` on the first device after the timed steps (init, compile and steps; null
where the runtime keeps no counters, as on CPUs). Prints one line of JSON.

Figures, with their commands and machines, are in BENCHMARKS.md.
"""
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (configs/*.py).",
                                          lock_config=False)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps after the first (compile + warm-up).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the synthetic clips and of the init.")
_NUM_CONTEXT = flags.DEFINE_list("num_context", None, "Static context tokens per mask, e.g. "
                                 "360,99 (the reference's batch-24 trimmed lengths); default: "
                                 "the config's (jepa_jax.masks.static_sizes).")
_NUM_TARGET = flags.DEFINE_list("num_target", None, "Static target tokens per mask, e.g. 744,1104.")


def set_mask_sizes(config, num_context, num_target):
  """``config.masks[i].num_context/num_target`` from per-mask lists (None: keep)."""
  for name, values in (("num_context", num_context), ("num_target", num_target)):
    if values is None:
      continue
    if len(values) != len(config.masks):
      raise app.UsageError(f"--{name} needs one value per mask ({len(config.masks)}), "
                           f"got {values}")
    for mask, value in zip(config.masks, values):
      mask[name] = int(value)


def main(argv):
  del argv
  import jax
  import numpy as np

  from jepa_jax import compilation_cache
  from jepa_jax.pretrain import experiment  # noqa: PLC0415
  from jepa_jax import flops as flops_lib
  from jepa_jax import masks as masks_lib
  from jepa_jax.models import layers

  config = _CONFIG.value
  config.data.datasets = []
  set_mask_sizes(config, _NUM_CONTEXT.value, _NUM_TARGET.value)
  exp = experiment.build(config)
  d = config.data
  shape = (exp.batch_size, d.num_frames, d.crop_size, d.crop_size, 3)
  clips = np.random.default_rng(_SEED.value).integers(0, 256, shape, dtype=np.uint8)
  batch = exp.shard_batch({"video": clips})
  rng = jax.random.PRNGKey(_SEED.value + 1)
  state = exp.init_state(jax.random.PRNGKey(_SEED.value))
  jax.block_until_ready(state)

  t0, c0 = time.perf_counter(), time.process_time()
  compiled = exp.train_step.lower(state, batch, rng).compile()
  compile_s, compile_cpu_s = time.perf_counter() - t0, time.process_time() - c0

  t0 = time.perf_counter()
  state, metrics = compiled(state, batch, rng)
  jax.block_until_ready(metrics)
  first_step_s = time.perf_counter() - t0

  times, cpu_times = [], []
  for _ in range(_STEPS.value):
    t0, c0 = time.perf_counter(), time.process_time()
    state, metrics = compiled(state, batch, rng)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
    cpu_times.append(time.process_time() - c0)
  step_s = statistics.median(times) if times else first_step_s

  f = flops_lib.train_step_flops(exp.settings)
  peak_bytes = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
  devices = exp.mesh.devices.size
  kind = jax.devices()[0].device_kind
  peak = flops_lib.peak_tflops(kind)
  tflops = f["total"] / step_s / 1e12
  out = {
      "bench": "train_step",
      "model": config.model.name,
      "overrides": dict(config.model.get("overrides", {}) or {}),
      "dtype": config.model.dtype,
      "remat": config.model.remat,
      "scan": bool(config.model.scan),
      "attention": config.model.attention,
      "attention_resolved": layers.resolve_attention(config.model.attention, jax.default_backend(),
                                                     exp.encoder.block.dtype),
      "batch_size": exp.batch_size,
      "crop_size": d.crop_size,
      "num_frames": d.num_frames,
      "grid": list(exp.encoder.grid),
      "mask_sizes": [list(masks_lib.static_sizes(exp.encoder.grid, m)) for m in exp.mask_cfgs],
      "platform": jax.devices()[0].platform,
      "device_kind": kind,
      "devices": devices,
      "mesh": dict(exp.mesh.shape),
      "compile_s": round(compile_s, 3),
      "compile_cpu_s": round(compile_cpu_s, 3),
      "compilation_cache_dir": compilation_cache.enable(config.get("compilation_cache_dir")),
      "first_step_s": round(first_step_s, 4),
      "steps": len(times),
      "step_s": round(step_s, 4),
      "min_step_s": round(min(times), 4) if times else None,
      "step_cpu_s": round(statistics.median(cpu_times), 4) if times else None,
      "clips_per_s": round(exp.batch_size / step_s, 3),
      "tokens_per_s": round(exp.batch_size * f["tokens"] / step_s, 1),
      "model_flops_per_step": f["total"],
      "tflops_per_s": round(tflops, 4),
      "peak_tflops_per_device": peak,
      "mfu": None if peak is None else round(tflops / (peak * devices), 4),
      "peak_memory_gib": None if peak_bytes is None else round(peak_bytes / 2**30, 2),
      "loss": float(metrics["loss"]),
      "jax": jax.__version__,
  }
  print(json.dumps(out))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
