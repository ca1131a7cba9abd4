"""FSDP moves weights, not activations; gradients cross devices in float32.

The step is compiled for simulated CPU devices and its HLO read: XLA:CPU's partitioner makes the
same choices as XLA:TPU's here. Without the activation constraints (``sharding.constrain``), a
ViT-S step at 112 px, 16 clips on ``data 1 x fsdp 4`` all-gathers ``[16, 392, 1152]``, the whole
batch's qkv activations, in every block; with them, the only all-gathers are of weights.
"""
import re

import jax
import numpy as np
import pytest

from jepa_jax import defaults, experiment

# The result shape: one array or a tuple of them (XLA combines small all-reduces).
COLLECTIVE = re.compile(r"= (\([^=]*?\)|\S+) (all-gather|all-reduce|reduce-scatter|all-to-all|"
                        r"collective-permute)(?:-start)?\(")
DTYPE_BYTES = {"f32": 4, "bf16": 2, "s32": 4, "u32": 4, "pred": 1, "f16": 2, "s8": 1, "u8": 1}


def array_bytes(shape: str) -> int:
  """Bytes of an HLO shape string (``f32[16,392,1152]{...}`` or a tuple of them)."""
  total = 0
  for dtype, dims in re.findall(r"(\w+)\[([0-9,]*)\]", shape):
    total += DTYPE_BYTES.get(dtype, 4) * int(np.prod([int(d) for d in dims.split(",") if d]))
  return total


def collectives(hlo_text: str) -> list[tuple[str, str]]:
  """``(kind, result shape)`` of every collective op in an HLO module's text."""
  text = re.sub(r"/\*index=\d+\*/", "", hlo_text)  # long tuples number their elements
  return [(kind, shape) for shape, kind in COLLECTIVE.findall(text)]


def vit_s_config(mesh, dtype="float32", grad_accum_steps=1):
  """ViT-S/16 at 112 px x 16 frames (392 tokens), 16 clips, scanned blocks (two in the encoder,
  one in the predictor): main's step (b00613c) all-gathers f32[16,392,1152] here."""
  c = defaults.base_config()
  c.batch_size = 16
  c.grad_accum_steps = grad_accum_steps
  c.model.name = "small"
  c.model.overrides = {"depth": 2}
  c.model.scan = True
  c.model.pred_embed_dim, c.model.pred_depth = 192, 1
  c.model.dtype = dtype
  c.data.crop_size, c.data.num_frames = 112, 16
  c.mesh.data, c.mesh.fsdp = mesh
  return c


def compiled_step_text(config, num_devices):
  exp = experiment.build(config, devices=jax.devices()[:num_devices])
  largest = max(int(np.prod(x.shape)) * x.dtype.itemsize
                for x in jax.tree_util.tree_leaves(exp.abstract_state.params))
  return exp.compile_train_step().as_text(), largest


def assert_gradients_reduced_in_float32(ops):
  """bf16 compute, float32 parameters: every gradient all-reduce / reduce-scatter is float32
  (the reference all-reduces float32 gradients), none bf16."""
  reductions = [shape for kind, shape in ops if kind in ("all-reduce", "reduce-scatter")]
  assert any(array_bytes(s) > 2**16 for s in reductions), reductions  # the weight gradients
  assert not [s for s in reductions if "bf16" in s], reductions


@pytest.mark.parametrize("grad_accum_steps", [1, pytest.param(2, marks=pytest.mark.slow)],
                         ids=["whole", "accum2"])
def test_fsdp_step_moves_weights_not_activations(grad_accum_steps, num_devices):
  """data 1 x fsdp 4: the only all-gathers are of weights (none larger than the largest
  parameter), and nothing activation-sized is re-split between devices."""
  if num_devices < 4:
    pytest.skip("needs 4 (simulated) devices")
  text, largest_param = compiled_step_text(vit_s_config((1, 4), grad_accum_steps), 4)
  ops = collectives(text)
  assert any(kind == "all-gather" for kind, _ in ops), "fsdp should all-gather the weights"
  moved = [(kind, shape) for kind, shape in ops
           if kind in ("all-gather", "all-to-all", "collective-permute")
           and array_bytes(shape) > largest_param]
  assert not moved, f"activation-sized transfers (largest parameter {largest_param} B): {moved}"


def test_data_parallel_gradients_reduced_in_float32(num_devices):
  if num_devices < 8:
    pytest.skip("needs 8 (simulated) devices")
  text, _ = compiled_step_text(vit_s_config((8, 1), dtype="bfloat16"), 8)
  assert_gradients_reduced_in_float32(collectives(text))
