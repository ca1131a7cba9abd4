"""The real train step and eval forward lower for CUDA and TPU, on this CPU machine.

JAX lowers a jitted function for a platform it does not run on
(``jit(f).trace(*abstract_args).lower(lowering_platforms=(...))``): tracing runs every shape and
layout check of the fused kernels (cuDNN's ``check_layout`` / ``check_is_flash_attention``) and
lowering emits the platform's custom calls, so an accelerator-only error such as cuDNN refusing a
``[B, 1, 1, S]`` key-padding bias ("Bias must have same seq length as QKV, got 1 and 592") or an
odd sequence length ("Unsupported sequence length Q 99, KV 99") fails here, in CI. Nothing is
allocated (abstract shapes only), so the paper configs lower in seconds.

What cannot be checked off-device, and why:

* jax asks the installed cuDNN for its version before tracing the fused kernel, and this machine
  has none ("cuDNN is not detected"); the ``cudnn`` fixture patches jax's private probe
  (``jax._src.cudnn.fused_attention_stablehlo.check_cudnn_version``) to report cuDNN 9.10. The
  compute-capability checks see no GPU and apply the pre-Hopper limits (head dim <= 128), the
  stricter ones.
* Compiling (XLA:GPU / XLA:TPU codegen, cuDNN's own graph build, autotuning, memory) needs the
  device's compiler; only lowering to StableHLO is done here.
* On a multi-device mesh, the cuDNN call is wrapped in ``custom_partitioning`` and only becomes a
  kernel call when the SPMD partitioner runs at compile time; the sharded lowering is checked for
  the partitioning call, the single-device lowering for the kernel calls themselves.
"""
import collections
import re
import sys
import pathlib

import jax
import jax.numpy as jnp
import pytest

from jepa_jax import models
from jepa_jax.models import layers
from jepa_jax.pretrain import experiment

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from configs import demo, vith16, vitl16  # noqa: E402

# Attention paths per platform: the ones that claim it (``layers.resolve_attention``).
PLATFORM_ATTENTION = {"cuda": ("cudnn", "auto", "xla", "chunked"),
                      "tpu": ("auto", "flash", "chunked", "xla", "einsum")}
RNG = jax.ShapeDtypeStruct((2,), jnp.uint32)


@pytest.fixture
def cudnn(monkeypatch):
  from jax._src.cudnn import fused_attention_stablehlo as fa
  monkeypatch.setattr(fa, "check_cudnn_version", lambda: 91000)


def custom_calls(text: str) -> collections.Counter:
  return collections.Counter(re.findall(r"custom_call @([\w$.]+)", text))


def lower_train_step(config, platform: str, devices=None) -> str:
  exp = experiment.build(config, devices=devices or jax.devices()[:1])
  with layers.target_platform(platform):
    traced = exp.train_step.trace(exp.sharded_abstract_state, exp.abstract_batch(), RNG)
  return traced.lower(lowering_platforms=(platform,)).as_text()


def tiny_config(attention: str, batch_size: int = 4):
  """The demo model in bf16 with a predictor head dim cuDNN takes (64 / 4 heads = 16)."""
  c = demo.get_config()
  c.data.datasets = []
  c.batch_size = batch_size
  c.mesh.data = -1
  c.model.dtype = "bfloat16"
  c.model.pred_embed_dim = 64
  c.model.attention = attention
  return c


def paper_config(module, attention: str, batch_size: int = 24):
  c = module.get_config()
  c.data.datasets = []
  c.batch_size = batch_size
  c.mesh.data = 1
  c.mesh.fsdp = 1
  c.model.attention = attention
  return c


def assert_cudnn_without_bias(text: str, forward: int, backward: int):
  """The expected number of cuDNN forward / backward kernel calls, none with a bias (padding
  has nothing to differentiate)."""
  calls = custom_calls(text)
  fmha = {k: v for k, v in calls.items() if "fmha" in k}
  assert not [k for k in fmha if "Bias" in k], fmha
  assert fmha.get("__cudnn$fmhaSoftmax", 0) == forward, calls
  assert fmha.get("__cudnn$fmhaSoftmaxBackward", 0) == backward, calls


@pytest.mark.parametrize("platform,attention",
                         [(p, a) for p, attns in PLATFORM_ATTENTION.items() for a in attns])
def test_tiny_train_step_lowers(cudnn, platform, attention):
  text = lower_train_step(tiny_config(attention), platform)
  if platform == "cuda" and attention in ("cudnn", "auto"):
    # Unscanned, 4 + 2 blocks: target 4 fwd; per mask (2) context 4 fwd + 4 bwd, predictor 2 + 2.
    assert_cudnn_without_bias(text, forward=4 + 2 * (4 + 2), backward=2 * (4 + 2))
  else:
    assert not [k for k in custom_calls(text) if "cudnn" in k]
  if platform == "tpu" and attention in ("flash", "auto"):  # auto on TPU: the kernel
    # The Pallas kernel: forward, dq and dk/dv kernels. StableHLO outlines repeated calls into shared functions, so the text holds
    # fewer calls than run (the compiled count is in tests/test_tpu_attention.py).
    assert custom_calls(text)["tpu_custom_call"] >= 3
  elif platform == "tpu":
    assert "tpu_custom_call" not in custom_calls(text)


def test_sharded_train_step_lowers_for_cuda(cudnn, num_devices):
  """data 2 x fsdp 4: the cuDNN call sits under custom_partitioning (see module docstring)."""
  c = tiny_config("cudnn", batch_size=8)
  c.mesh.data, c.mesh.fsdp = 2, 4
  text = lower_train_step(c, "cuda", devices=jax.devices()[:8])
  assert custom_calls(text)["CustomSPMDPartitioning"] > 0


def test_uneven_sequence_lengths_lower_for_cuda(cudnn):
  """Static context / target sizes that are odd (cuDNN refuses odd lengths in training): the
  attention pads them to a multiple of 8 (``layers.CUDNN_SEQ_MULTIPLE``)."""
  c = tiny_config("cudnn")
  c.masks[0].num_context, c.masks[0].num_target = 13, 27
  c.masks[1].num_context, c.masks[1].num_target = 5, 49
  assert_cudnn_without_bias(lower_train_step(c, "cuda"), forward=16, backward=12)


@pytest.mark.parametrize("module,name", [(vitl16, "vitl16"), (vith16, "vith16")])
def test_paper_train_steps_lower_for_cuda(cudnn, module, name):
  """The paper configs at 24 clips on one GPU, as issue 14 ran them, with ``auto`` attention.
  ViT-L also with the reference's batch-24 trimmed lengths (360/744 and 99/1104 context/target):
  a context of 99 tokens is the length cuDNN refused."""
  c = paper_config(module, "auto")
  assert c.model.scan  # one block per stack in the lowered program (and a short compile)
  text = lower_train_step(c, "cuda")
  # Scanned: one kernel per stack body. Forward: target, and per mask context + predictor (and
  # again in the backward under remat); backward: per mask context + predictor.
  recompute = 4 if c.model.remat != "none" else 0
  assert_cudnn_without_bias(text, forward=5 + recompute, backward=4)
  if name == "vitl16":
    c.masks[0].num_context, c.masks[0].num_target = 360, 744
    c.masks[1].num_context, c.masks[1].num_target = 99, 1104
    assert_cudnn_without_bias(lower_train_step(c, "cuda"), forward=5, backward=4)


@pytest.mark.parametrize("platform,attention", [("cuda", "cudnn"), ("tpu", "auto")])
def test_accumulated_train_step_lowers(cudnn, platform, attention):
  """grad_accum_steps=4: the micro-batch loop is one ``while`` whose body holds the kernels of
  one micro-batch, as many as the whole-batch step has."""
  c = tiny_config(attention, batch_size=8)
  c.grad_accum_steps = 4
  text = lower_train_step(c, platform)
  assert "stablehlo.while" in text
  if platform == "cuda":
    assert_cudnn_without_bias(text, forward=4 + 2 * (4 + 2), backward=2 * (4 + 2))


def test_paper_train_step_with_accumulation_lowers_for_cuda(cudnn):
  """ViT-L/16 as launch/README.md runs it on few GPUs: micro-batches of 24 clips (here 2 of them
  on one GPU; 16 on each of 8 GPUs keeps the paper's 3072)."""
  c = paper_config(vitl16, "auto", batch_size=48)
  c.grad_accum_steps = 2
  assert_cudnn_without_bias(lower_train_step(c, "cuda"), forward=5, backward=4)


def test_paper_train_step_lowers_for_tpu():
  text = lower_train_step(paper_config(vitl16, "auto"), "tpu")
  assert "cudnn" not in text
  # ``auto`` on TPU is the Pallas splash kernel (layers.resolve_attention); its forward and
  # fused backward, outlined by StableHLO into shared functions (tests/test_tpu_attention.py
  # compiles it and counts the calls that run).
  assert custom_calls(text)["tpu_custom_call"] >= 2


@pytest.mark.parametrize("platform,attention", [("cuda", "cudnn"), ("cuda", "auto"),
                                                ("tpu", "auto"), ("tpu", "xla")])
def test_eval_forward_and_probe_steps_lower(cudnn, platform, attention):
  """The frozen encoder's token function (K400 layout: 8 segments x 3 views, ViT-L/16 224 px x
  16 frames) and the probe's train / eval steps on its tokens."""
  import ml_collections

  from jepa_jax.eval import encoder as enc_lib
  from jepa_jax.eval import probe as probe_lib
  from jepa_jax.eval import settings as eval_settings
  from jepa_jax.eval.config import base_eval_config

  config = base_eval_config()
  config.attention = attention
  config.model.update(name="large", scan=True)
  encoder = enc_lib.build_eval_encoder(enc_lib.eval_spec(config, None))
  params = models.abstract_params(encoder)
  pixels = jax.ShapeDtypeStruct((2, 8, 3, 16, 224, 224, 3), jnp.uint8)
  token_fn = enc_lib.make_token_fn(encoder)
  with layers.target_platform(platform):
    text = jax.jit(token_fn).trace(params, pixels).lower(lowering_platforms=(platform,)).as_text()
  if platform == "cuda":
    assert_cudnn_without_bias(text, forward=1, backward=0)
  tokens = jax.eval_shape(token_fn, params, pixels)
  probe = probe_lib.build_probe(400, encoder.embed_dim, encoder.block.num_heads,
                                ml_collections.ConfigDict(config.probe.to_dict()))
  state = jax.eval_shape(lambda p: probe_lib.create_state(
      probe, p, probe_lib.make_optimizer(eval_settings.probe_optim(config.optim), 100, 10)),
      jax.eval_shape(lambda: probe_lib.init_probe_params(probe, encoder.embed_dim, 0)))
  labels = jax.ShapeDtypeStruct((2,), jnp.int32)
  weights = jax.ShapeDtypeStruct((2,), jnp.float32)
  one_view = jax.ShapeDtypeStruct((2, 1) + tokens.shape[2:], tokens.dtype)
  with layers.target_platform(platform):
    for step, x in ((probe_lib.train_step, one_view), (probe_lib.eval_step, tokens)):
      jax.jit(step).trace(state, x, labels, weights).lower(lowering_platforms=(platform,))


def test_vjepa21_step_with_images_lowers_for_cuda(cudnn, tmp_path):
  """V-JEPA 2.1's step with its image half on cuDNN: the one-frame images run the same fused
  attention as the clips (target forward of both; context and predictor of two video masks and
  the image mask, forward and backward)."""
  from test_vjepa21_recipe import tiny_override  # noqa: PLC0415
  c = tiny_override("vitl16_256px_16f", tmp_path)
  c.model.update(dict(dtype="bfloat16", attention="cudnn", pred_embed_dim=32))
  c.model.overrides = {"embed_dim": 32, "depth": 2, "num_heads": 2, "levels": (0, 1)}
  c.images.batch_size = 2
  c.images.masks[0].num_blocks = 2
  text = lower_train_step(c, "cuda")
  # Unscanned, 2 + 1 blocks: target 2 fwd per modality; per mask (3) context 2 + 2, predictor 1 + 1.
  assert_cudnn_without_bias(text, forward=2 * 2 + 3 * (2 + 1), backward=3 * (2 + 1))
