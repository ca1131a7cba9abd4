"""A two-block proxy of the ViT-H/16 FSDP step for quick TPU compiles: the per-block collectives
and layouts of configs/vith16.py (fsdp 4, dots_no_batch, scanned blocks) at a fraction of its
compile time. Used for the qkv-gradient figures in BENCHMARKS.md:

python -m jepa_jax.aot --config=bench/vith16_two_blocks.py --topology=v5p:2x2x1 --per_chip_batch=2
"""
import importlib.util
import pathlib

_VITH16 = pathlib.Path(__file__).resolve().parents[1] / "configs" / "vith16.py"


def get_config():
  spec = importlib.util.spec_from_file_location("vith16", _VITH16)
  vith16 = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(vith16)
  c = vith16.get_config()
  c.model.overrides = {"depth": 2, "embed_dim": 512, "num_heads": 8}
  c.model.pred_depth = 1
  c.mesh.fsdp = 4
  c.mesh.data = -1
  return c
