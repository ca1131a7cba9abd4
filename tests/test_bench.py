"""bench/: the scripts run on tiny configs and print one well-formed JSON line; the FLOP count
that MFU divides by agrees with XLA's own count. No test asserts a time."""
import json
import os
import pathlib
import subprocess
import sys

import av
import jax
import jax.numpy as jnp
import pytest

from jepa_jax import config as config_lib
from jepa_jax import experiment, flops, models

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from configs import demo  # noqa: E402


def bench(script, *args, devices=1):
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
         "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, str(REPO / "bench" / script), *map(str, args)],
                        capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 1, proc.stdout
  return json.loads(lines[0]), proc


def small_config(embed_dim=256):
  c = demo.get_config()
  c.data.datasets = []
  c.batch_size = 4
  c.mesh.data = 1
  c.model.overrides = {"embed_dim": embed_dim, "depth": 2, "num_heads": 4}
  c.model.pred_embed_dim = embed_dim // 2
  c.model.attention = "einsum"
  return c


def test_block_and_encoder_flops_match_xla_cost_analysis():
  enc = models.build_encoder("tiny", img_size=64, num_frames=8, embed_dim=256, depth=2,
                             num_heads=4, attention="einsum")
  clip = jnp.zeros((2, 8, 64, 64, 3))
  params = jax.eval_shape(enc.init, jax.random.PRNGKey(0), clip)
  xla = jax.jit(enc.apply).lower(params, clip).compile().cost_analysis()
  xla = xla[0] if isinstance(xla, list) else xla
  n, d = enc.num_tokens, enc.embed_dim
  ours = 2 * (2 * n * (2 * 16 * 16 * 3) * d + enc.depth * flops.block_flops(n, d, 4 * d))
  # XLA also counts element-wise ops (LayerNorm, GELU, softmax): measured +3.8%.
  assert 1.0 <= xla["flops"] / ours < 1.08


def test_train_step_flops_match_xla_cost_analysis():
  """The whole step (two masks, target forward, forward + backward, AdamW, EMA): XLA agrees."""
  c = small_config()
  exp = experiment.build(c, devices=jax.devices()[:1])
  compiled = exp.train_step.lower(exp.abstract_state, exp.abstract_batch(),
                                  jax.random.PRNGKey(0)).compile()
  xla = compiled.cost_analysis()
  xla = xla[0] if isinstance(xla, list) else xla
  ours = flops.train_step_flops(config_lib.read(c))
  assert ours["total"] == c.batch_size * ours["per_clip"]
  # XLA also counts element-wise work (LayerNorm, GELU, softmax, AdamW, EMA): measured 1.050.
  assert 0.98 < xla["flops"] / ours["total"] < 1.07


def test_train_step_bench_prints_json():
  out, _ = bench("train_step.py", "--config=configs/demo.py", "--steps=2",
                 "--config.batch_size=4", "--config.mesh.data=1", "--num_context=13,9",
                 "--num_target=40,50")
  assert out["mask_sizes"] == [[13, 40], [9, 50]] and out["compile_cpu_s"] > 0
  assert out["bench"] == "train_step" and out["platform"] == "cpu"
  assert out["attention"] == "auto" and out["attention_resolved"] == "xla"
  assert out["steps"] == 2 and out["step_s"] > 0 and out["compile_s"] > 0
  assert out["step_cpu_s"] > 0
  assert out["clips_per_s"] == pytest.approx(4 / out["step_s"], rel=1e-2)
  c = demo.get_config()
  c.batch_size = 4
  for m, (k_ctx, k_tgt) in zip(c.masks, out["mask_sizes"]):
    m.num_context, m.num_target = k_ctx, k_tgt
  assert out["model_flops_per_step"] == flops.train_step_flops(config_lib.read(c))["total"]
  assert out["mfu"] is None and out["peak_tflops_per_device"] is None  # no peak for CPUs
  assert out["loss"] > 0


def test_peak_table_matches_device_kinds():
  assert flops.peak_tflops("TPU v5 lite") == 197.0
  assert flops.peak_tflops("TPU v5p") == 459.0
  assert flops.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
  assert flops.peak_tflops("cpu") is None


def test_memory_bench_prints_json_and_remat_saves_memory():
  runs = {}
  for remat in ("none", "full"):
    runs[remat], _ = bench("memory.py", "--config=configs/demo.py", "--devices=4",
                           "--mesh=data:2,fsdp:2", "--per_device_batch=2",
                           f"--config.model.remat={remat}", "--config.model.scan=True",
                           "--config.model.attention=chunked", devices=4)
  none, full = runs["none"], runs["full"]
  assert none["bench"] == "memory" and none["mesh"] == {"data": 2, "fsdp": 2}
  assert none["batch_size"] == 8 and none["attention"] == "chunked"
  assert 0 < full["temp_gib"] < none["temp_gib"]
  assert none["peak_estimate_gib"] == pytest.approx(
      none["argument_gib"] + none["output_gib"] + none["temp_gib"] - none["alias_gib"], abs=2e-3)


def test_memory_bench_temporaries_fall_with_the_micro_batch():
  """The same 8 clips per device as 1 or 4 micro-batches: the activations of one micro-batch
  live at a time, so the temporaries shrink (the batch argument stays whole)."""
  runs = {}
  for k in (1, 4):
    runs[k], _ = bench("memory.py", "--config=configs/demo.py", "--devices=2",
                       "--mesh=data:2,fsdp:1", "--per_device_batch=8",
                       f"--config.grad_accum_steps={k}", devices=2)
  assert runs[4]["grad_accum_steps"] == 4 and runs[4]["per_device_micro_batch"] == 2
  assert runs[1]["argument_gib"] == pytest.approx(runs[4]["argument_gib"], rel=0.05)
  assert runs[4]["temp_gib"] < 0.5 * runs[1]["temp_gib"]


@pytest.mark.slow
def test_memory_bench_on_device_reports_its_own_figures_and_the_cpu_estimate():
  """On this CPU "the device" is the CPU: its compile's analysis, no runtime counters (the CPU
  keeps none), and the CPU estimate of the same config from a subprocess, which must agree."""
  out, _ = bench("memory.py", "--config=configs/demo.py", "--on_device", "--mesh=data:1,fsdp:1",
                 "--per_device_batch=2", "--run_steps=1", "--config.model.overrides.depth=1",
                 "--config.model.pred_depth=1", "--config.model.attention=chunked")
  dev = out["device"]
  assert dev["run_steps"] == 1 and "error" not in dev and dev["runtime"] is None
  assert dev["compiled"]["peak_estimate_gib"] == out["peak_estimate_gib"]
  est = out["cpu_estimate"]
  assert est["attention"] == "chunked"
  assert est["peak_estimate_gib"] == pytest.approx(out["peak_estimate_gib"], abs=2e-3)


def test_memory_table_marks_what_fits():
  sys.path.insert(0, str(REPO / "bench"))
  import memory_table
  rows = [dict(config="vitl16", pod_size=128, per_device_batch=24, attention="chunked",
               remat=remat, argument_gib=0.66, temp_gib=t, peak_estimate_gib=t + 0.7)
          for remat, t in (("full", 11.0), ("none", 90.0))]
  assert memory_table.global_batch("vith16_384") == 2400  # read from the config itself
  lines = memory_table.table(rows).splitlines()
  assert lines[2].endswith("| yes | yes | yes |")
  assert lines[3].endswith("| no | no | yes |")


def test_data_throughput_bench_prints_json(tmp_path):
  out, _ = bench("data_throughput.py", f"--synthetic-dir={tmp_path / 'videos'}",
                 "--num-videos=4", "--crop-size=32", "--num-frames=4", "--frame-step=2",
                 "--batch-size=2", "--batches=2", "--warmup=1", "--samples=2", "--workers=",
                 "--threads=1", "--decode-threads=1,0", "--compare-plain")
  assert out["bench"] == "data_throughput" and out["crop_size"] == 32
  assert [(s["decode_threads"], s["skip_unneeded"]) for s in out["stages"]] == [
      (1, True), (0, True), (1, False), (0, False)]
  for s in out["stages"]:
    assert 0 < s["decode_share"] < 1 and s["clips_per_s_per_core"] > 0
    assert 0 <= s["decode_system_share"] <= 1 and s["decode_page_faults_per_clip"] >= 0
  assert out["pipeline"] == [] and out["in_process"][0]["clips_per_s"] > 0


def test_data_throughput_takes_any_index_and_writes_footage(tmp_path):
  sys.path.insert(0, str(REPO / "bench"))
  import data_throughput
  indexes = data_throughput.make_footage(str(tmp_path), ["footage_640x360_gop60"], num_frames=20)
  with av.open(str(tmp_path / "footage_640x360_gop60.mp4")) as c:
    stream = c.streams.video[0]
    assert (stream.width, stream.height, stream.frames) == (640, 360, 20)
  out, _ = bench("data_throughput.py", f"--index={indexes['all']}", "--crop-size=32",
                 "--num-frames=4", "--frame-step=2", "--samples=2", "--workers=", "--threads=")
  assert out["index"] == indexes["all"] and out["stages"][0]["decode_s_per_clip"] > 0
