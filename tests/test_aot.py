"""python -m jepa_jax.aot: the real train step compiled for TPU topologies on this CPU host."""
import importlib.util
import json
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import pytest

from jepa_jax import aot, cli
from jepa_jax.models import layers

REPO = pathlib.Path(__file__).resolve().parents[1]
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(
    not HAS_LIBTPU, reason="libtpu is not installed (pip install -e '.[tpu]' brings it)")

# A one-block ViT on 4-frame 32 px clips: compiles in seconds, still the full V-JEPA step
# (two masks, EMA target, predictor, AdamW).
TINY = ["--config.model.overrides={'embed_dim': 32, 'depth': 1, 'num_heads': 2}",
        "--config.model.pred_embed_dim=16", "--config.model.pred_depth=1",
        "--config.data.crop_size=32", "--config.data.num_frames=4", "--config.batch_size=8"]


def _run(*args):
  return subprocess.run([sys.executable, "-m", "jepa_jax.aot", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=900)


def _tiny_config():
  config = cli.load_config(str(REPO / "configs" / "demo.py"), TINY)
  config.data.datasets = []
  return config


def test_unknown_topology_is_one_line_naming_valid_ones():
  proc = _run("--config=configs/demo.py", "--topology=v9x:2x2")
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert "unknown topology 'v9x:2x2'" in last and "v5p:4x4x4" in last


def test_missing_libtpu_names_the_install(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "libtpu" else real(name, *a))
  with pytest.raises(aot.AotError, match=r"pip install -e '\.\[tpu\]'"):
    aot.tpu_devices("v5e:2x2")


def test_find_max_batch_bisects_to_the_largest_that_fits():
  tried = []

  def fake_compile(config, topology):
    per_chip = config.batch_size // 4
    tried.append(per_chip)
    if per_chip > 20:
      raise RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm")
    return {"fits": per_chip <= 13, "memory_bytes": {"total": per_chip * 2 ** 30}}

  per_chip, result = aot.find_max_batch(_tiny_config(), "v5e:2x2", 3, 4, fake_compile)
  assert per_chip == 13 and result["fits"]
  assert tried[:4] == [3, 6, 12, 24]            # doubling until it does not fit, then bisect
  assert aot.find_max_batch(_tiny_config(), "v5e:2x2", 1, 4,
                            lambda c, t: {"fits": False, "memory_bytes": {"total": 0}}) == (0, None)


@needs_libtpu
def test_batch_not_divisible_by_the_chips_is_one_line():
  proc = _run("--config=configs/demo.py", "--topology=v5e:2x2", "--config.batch_size=6")
  assert proc.returncode == 1, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("Config error: config.batch_size=6 is not divisible by the 4 devices")


def _check(r, topology):
  m = r["memory_bytes"]
  assert r["topology"] == topology and r["chips"] == 4 and r["per_chip_batch"] == 2
  assert r["mesh"] == {"data": 4, "fsdp": 1}
  assert m["total"] == m["arguments"] + m["temporaries"] + m["outputs"] - m["aliased"] > 0
  assert r["fits"] and m["total"] < r["hbm_bytes"] == aot.CHIPS[topology[:3]].hbm_bytes
  # Trip counts applied: the compiled matmuls are at least the model's (raw, loop bodies counted
  # once, they would be a fraction). With the Pallas kernel this tiny model's 8 tokens are padded
  # to the kernel's 128-token block, so only the chunked path's FLOPs are close to the model's.
  assert r["flops_ratio"] > 0.9
  if r["attention"] == "chunked":
    assert r["flops_ratio"] < 1.5
  # Data parallel: the gradients are all-reduced, every step.
  assert r["collective_bytes_per_chip"]["all-reduce"] > 0
  # What a TPU host resolves 'auto' to, not what this CPU host would; a Pallas kernel is seen in
  # the HLO exactly when one was chosen.
  assert r["attention"] != layers.resolve_attention("auto", "cpu", jnp.float32, 16)
  assert bool(r["kernels"]) == (r["attention"] in ("flash", "splash")), (r["attention"], r["kernels"])
  e = r["roofline_estimate"]
  assert e["lower_bound_s"] == max(e["compute_s"], e["hbm_s"]) > 0
  assert r["unknown_trip_counts"] == []


@needs_libtpu
@pytest.mark.slow
def test_tiny_step_compiles_for_tpu():
  config = _tiny_config()
  config.model.attention = "chunked"
  _check(aot.compile_step(config, "v6e:2x2"), "v6e:2x2")


@needs_libtpu
@pytest.mark.slow
def test_command_prints_a_summary_and_one_json_line(tmp_path):
  hlo = tmp_path / "step.hlo"
  proc = _run("--config=configs/demo.py", "--topology=v5e:2x2", "--per_chip_batch=2", *TINY[:-1],
              f"--hlo_out={hlo}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "ENTRY" in hlo.read_text()
  lines = proc.stdout.strip().splitlines()
  result = json.loads(lines[-1])
  _check(result, "v5e:2x2")
  summary = "\n".join(lines[:-1])
  for text in ("of 15.75 GiB HBM: fits", "matmul FLOPs", "collectives per chip and step",
               "copy/transpose", f"attention: {result['attention']}",
               "roofline lower bound on step time (an estimate, not a measurement)", "compiled in"):
    assert text in summary
  top = next(iter(result["matmul_flops_by_source_per_chip"]))
  assert top in summary and ("fwd" in top or "bwd" in top)


@needs_libtpu
def test_fsdp_8_mesh_on_a_v5p_4x4x4_slice():
  """jax.make_mesh refuses an fsdp axis of 8 on 4x4x4 chips (8 is no product of whole physical
  axes), which is vith16's mesh on a v5p-128; the trainer's mesh splits a physical axis."""
  import jax
  from jepa_jax import sharding
  devices = aot.tpu_devices("v5p:4x4x4")
  with pytest.raises(NotImplementedError):
    jax.make_mesh((8, 8), ("data", "fsdp"), devices=devices)
  mesh = sharding.topology_mesh((8, 8), devices)
  assert mesh.devices.shape == (8, 8) and {d.id for d in mesh.devices.flat} == {d.id for d in devices}


def test_per_chip_batch_keeps_the_recipes_images_per_clip():
  from test_vjepa21_recipe import load_config  # noqa: PLC0415
  c = load_config("vitl16_256px_16f")  # 3072 clips and 4608 images per step: 1.5 per clip
  assert (c.batch_size, c.images.batch_size) == (3072, 4608)
  scaled = aot.with_per_chip_batch(c, 24, 4)
  assert (scaled.batch_size, scaled.images.batch_size) == (96, 144)
  assert aot.with_per_chip_batch(c, 24, 4, per_chip_images=8).images.batch_size == 32
  video_only = aot.with_per_chip_batch(_tiny_config(), 3, 4)
  assert (video_only.batch_size, video_only.images.batch_size) == (12, 0)


@needs_libtpu
@pytest.mark.slow
def test_vjepa21_step_with_images_compiles_for_tpu(tmp_path):
  """The 2.1 recipe's step with its image half (a tiny override) compiles for a TPU slice: two
  clips and one image per chip, the model's FLOPs counted with the images."""
  from test_vjepa21_recipe import tiny_override  # noqa: PLC0415
  c = tiny_override("vitl16_256px_16f", tmp_path)
  c.mesh.data = -1
  c.images.update(dict(batch_size=1, datasets=[]))
  c.images.masks[0].num_blocks = 2
  c = aot.with_per_chip_batch(c, 2, 4, per_chip_images=1)
  c.model.attention = "chunked"
  r = aot.compile_step(c, "v5e:2x2")
  _check(r, "v5e:2x2")
  assert r["per_chip_images"] == 1


@pytest.mark.parametrize("recipe", ["vjepa2/vitl16_256px_16f.py", "vjepa21/vitl16_256px_16f.py"])
def test_recipes_with_dataset_mixes_compile_without_data(recipe):
  """The V-JEPA 2 / 2.1 recipes mix three placeholder datasets with weights: the command clears
  the weights with the lists (it refused these recipes in one line before)."""
  from jepa_jax.pretrain import config as config_lib  # noqa: PLC0415
  from jepa_jax.pretrain import experiment  # noqa: PLC0415
  if str(REPO) not in sys.path:  # the recipe files import configs.vjepa2.common
    sys.path.insert(0, str(REPO))
  config = cli.load_config(str(REPO / "configs" / recipe), [])
  assert config.data.datasets_weights
  cleared = aot.without_data(config)
  assert config.data.datasets  # the caller's config is left alone
  settings = config_lib.read(cleared)
  assert settings.data.datasets == [] and settings.data.datasets_weights is None
  experiment.validate(cleared, num_devices=64)  # no placeholder path is looked for
