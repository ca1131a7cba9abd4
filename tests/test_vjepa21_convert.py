"""V-JEPA 2.1 weights both ways: released-layout files (src/hub/backbones.py: ``ema_encoder`` in the
distilled ViT-B/L files, ``target_encoder`` in the ViT-g/G ones, ``module.backbone.`` prefixes)
recognised from the encoder's weights alone, converted to jepa_jax and back to exactly the
reference's state-dict names and values; the distilled predictor's shapes; the ViT-G MLP."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax import checkpoint, convert, models
from jepa_jax.convert import infer, reference
from jepa_jax.convert.__main__ import main as cli
from jepa_jax.pretrain import config as config_lib

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "vjepa21_tiny_v1.npz"
# The reference's frozen evaluation of the same weights (bench/make_vjepa21_golden.py --eval-out).
EVAL_FIXTURE = FIXTURE.with_name("vjepa21_eval_tiny_v1.npz")
PREFIX = "module.backbone."
TINY21 = ["--model", "tiny", "--embed-dim", "48", "--depth", "12", "--num-heads", "3",
          "--pred-num-heads", "2", "--img-size", "64", "--num-frames", "4"]
TINY21_KW = dict(embed_dim=48, depth=12, num_heads=3, pred_num_heads=2, img_size=64,
                 num_frames=4)


@pytest.fixture(scope="module")
def golden21():
  with np.load(FIXTURE) as f:
    return {k: f[k] for k in f.files}


def state(golden, prefix, wrap=PREFIX):
  return {wrap + k[len(prefix):]: v for k, v in golden.items() if k.startswith(prefix)}


def released_21(golden, encoder_key="target_encoder") -> dict:
  return {encoder_key: state(golden, "param/encoder/"),
          "predictor": state(golden, "param/predictor/"), "epoch": 40}


@pytest.mark.parametrize("encoder_key", ["target_encoder", "ema_encoder"])
def test_released_layout_recognised_and_round_trips_exactly(golden21, encoder_key):
  """The 2.1 architecture read from the weights (norms_block, modality embeddings, image patch
  embedding, the predictor's four levels and context projection); the export has the reference
  module's state-dict names and values, bit for bit (what its strict=True load checks)."""
  params, config = convert.convert_state_dicts(released_21(golden21, encoder_key), "tiny",
                                               **TINY21_KW)
  m = config.model
  assert m.vjepa21 and m.use_rope and m.pred_levels == 4 and m.pred_return_context
  assert m.overrides["modality_embedding"] and m.overrides["image_frames"] == 1
  exported = convert.export_torch(params, config)
  for group in ("encoder", "target_encoder"):
    want = state(golden21, "param/encoder/")
    assert set(exported[group]) == set(want), group
    for name, value in want.items():
      np.testing.assert_array_equal(exported[group][name], value, err_msg=name)
  want = state(golden21, "param/predictor/")
  assert set(exported["predictor"]) == set(want)
  for name, value in want.items():
    np.testing.assert_array_equal(exported["predictor"][name], value, err_msg=name)


def test_converted_config_builds_the_golden_modules(golden21):
  """The converted config rebuilds the modules the golden test runs (tests/test_vjepa21.py: same
  fields, so the same outputs from these bit-identical parameters); the encoder's outputs through
  a saved checkpoint are checked in test_frozen_eval_rebuilds_the_21_encoder."""
  params, config = convert.convert_state_dicts(released_21(golden21), "tiny", **TINY21_KW)
  enc, pred = models.from_spec(config_lib.model_spec(config, num_masks=2))
  want_enc = models.build_encoder("tiny", img_size=64, num_frames=4, embed_dim=48, depth=12,
                                  num_heads=3, **models.vjepa21_fields(12))
  want_pred = models.build_predictor(want_enc, embed_dim=32, depth=4, num_heads=2,
                                     num_mask_tokens=2, return_context=True)
  same = lambda m: m.clone(block=m.block.replace(attention="xla", scan=False, remat="none"))
  assert same(enc) == same(want_enc) and same(pred) == same(want_pred)


def test_released_clip_default_and_refusals(golden21):
  """Without clip sizes the config gets the released models' 384 px x 64 frames; --no-rope on a
  2.1 file is refused naming the flag."""
  kw = {k: v for k, v in TINY21_KW.items() if k not in ("img_size", "num_frames")}
  _, config = convert.convert_state_dicts(released_21(golden21), "tiny", **kw)
  assert (config.data.crop_size, config.data.num_frames) == (384, 64)
  with pytest.raises(convert.ConversionError, match="--no-rope"):
    convert.convert_state_dicts(released_21(golden21), "tiny", use_rope=False, **kw)
  _, alone = convert.convert_state_dicts(released_21(golden21), "tiny", encoder_only=True, **kw)
  assert alone.model.vjepa21 and alone.model.use_rope


def test_distilled_predictor_and_vitG_shapes():
  """The distilled ViT-B/L predictors read one level and predict the ViT-G teacher's 1664
  features; the ViT-G (1664 wide, 48 deep, hidden 8192) resolves to gigantic_xformers with MLP
  ratio 64/13 -- all from shapes (abstract trees, nothing allocated)."""
  enc = models.build_encoder("vit_large", img_size=384, num_frames=64, scan=True,
                             **models.vjepa21_fields(24))
  pred = models.build_predictor(enc, embed_dim=384, depth=12, num_heads=12, num_mask_tokens=8,
                                levels=1, out_embed_dim=1664, return_context=True)
  views = infer.zero_views(reference._abstract_params(enc, pred))
  pstate = convert.to_torch(convert.unstack_blocks(views["predictor"]), "predictor")
  assert pstate["predictor_embed.weight"].shape == (384, 1024)
  assert pstate["predictor_proj.weight"].shape == (1664, 384)
  spec = infer.predictor_spec(pstate)
  assert (spec["levels"], spec["out_embed_dim"], spec["return_context"]) == (1, 1664, True)
  g_enc = models.build_encoder("vit_gigantic_xformers", img_size=384, num_frames=64, scan=True,
                               mlp_ratio=64 / 13, **models.vjepa21_fields(48))
  g_pred = models.build_predictor(g_enc, embed_dim=384, depth=24, num_heads=12,
                                  num_mask_tokens=8, return_context=True)
  gv = infer.zero_views(reference._abstract_params(g_enc, g_pred))
  encoder = convert.to_torch(convert.unstack_blocks(gv["encoder"]), "encoder")
  # Both encoders given: a missing one would be made as a (2B-parameter) copy of the other.
  states = {"target_encoder": encoder, "encoder": encoder,
            "predictor": convert.to_torch(convert.unstack_blocks(gv["predictor"]), "predictor")}
  assert states["target_encoder"]["blocks.0.mlp.fc1.weight"].shape == (8192, 1664)
  _, config = convert.convert_state_dicts(states)
  assert config.model.name == "gigantic_xformers" and config.model.vjepa21
  assert int(1664 * config.model.overrides["mlp_ratio"]) == 8192
  assert config.model.pred_levels == 4 and config.model.pred_num_heads == 12


def _tensors(tree):
  torch = pytest.importorskip("torch")
  if isinstance(tree, dict):
    return {k: _tensors(v) for k, v in tree.items()}
  return torch.from_numpy(np.ascontiguousarray(tree)) if isinstance(tree, np.ndarray) else tree


def test_cli_both_ways(golden21, tmp_path):
  torch = pytest.importorskip("torch")
  path = tmp_path / "vjepa2_1_vitl_dist.pt"
  torch.save(_tensors(released_21(golden21, "ema_encoder")), path)
  assert cli(["--from-torch", str(path), "--out", str(tmp_path / "ckpt"), *TINY21]) == 0
  params, _ = checkpoint.load_params(str(tmp_path / "ckpt"))
  saved = checkpoint.read_config(str(tmp_path / "ckpt"))
  assert saved["model"]["vjepa21"]
  out = tmp_path / "export.pt"
  assert cli(["--to-torch", "--ckpt", str(tmp_path / "ckpt"), "--out", str(out)]) == 0
  loaded = torch.load(out, map_location="cpu", weights_only=True)
  for group, prefix in (("target_encoder", "param/encoder/"), ("predictor", "param/predictor/")):
    want = state(golden21, prefix)
    assert set(loaded[group]) == set(want), group
    for name, value in want.items():
      np.testing.assert_array_equal(loaded[group][name].numpy(), value, err_msg=name)


def test_frozen_eval_rebuilds_the_21_encoder(golden21, tmp_path):
  """A converted 2.1 checkpoint through the eval's encoder loading (which extract uses too): the
  2.1 architecture comes back from the saved config, outputs the reference's last level, and
  ``feature_layer`` reads its levels."""
  from jepa_jax.eval import config as eval_config
  from jepa_jax.eval import encoder as enc_lib
  params, config = convert.convert_state_dicts(released_21(golden21), "tiny", **TINY21_KW)
  reference.save_converted(str(tmp_path / "ckpt"), params, config)
  c = eval_config.vjepa2_eval_config("t", 3, frames=4, frame_step=2, segments=1, views=1,
                                     resolution=64, clips_per_gpu=2, gpus=1, epochs=1)
  c.checkpoint, c.encoder_dtype, c.attention = str(tmp_path / "ckpt"), "float32", "einsum"
  encoder, eparams, info = enc_lib.load_frozen_encoder(c)
  assert info["model"]["vjepa21"] and encoder.levels == (2, 5, 8, 11)
  clip = jnp.asarray(golden21["clip"].transpose(0, 2, 3, 4, 1))
  # Runs once: compiled without LLVM's backend optimisations (see test_vjepa21.run_once).
  full = jax.jit(lambda p: encoder.apply({"params": p}, clip)).lower(eparams).compile(
      compiler_options={"xla_backend_optimization_level": 0})(eparams)
  np.testing.assert_allclose(np.asarray(full), golden21["out/encoder_full"], atol=2e-5)
  pixels = jax.ShapeDtypeStruct((1, 1, 1, 4, 64, 64, 3), jnp.uint8)
  tokens = jax.eval_shape(enc_lib.make_token_fn(encoder, [5, 11]), eparams, pixels)
  assert tokens.shape == (1, 1, 64, 48)
  with pytest.raises(ValueError, match="levels"):
    jax.eval_shape(enc_lib.make_token_fn(encoder, [4]), eparams, pixels)


def test_exports_load_into_reference_modules_strictly(golden21):
  """The export loads into the 2.1 reference modules with strict=True and they reproduce the
  golden outputs (needs JEPA_JAX_VJEPA21_SRC=<vjepa2 checkout at 204698b>; skipped otherwise)."""
  import importlib.util
  import os
  root = os.environ.get("JEPA_JAX_VJEPA21_SRC")
  if not root:
    pytest.skip("set JEPA_JAX_VJEPA21_SRC to a vjepa2 checkout with app/vjepa_2_1 (204698b)")
  torch = pytest.importorskip("torch")
  spec = importlib.util.spec_from_file_location(
      "make_vjepa21_golden", pathlib.Path(__file__).parents[1] / "bench" / "make_vjepa21_golden.py")
  maker = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(maker)
  ref = maker._import_reference(os.path.abspath(root))
  from functools import partial
  params, config = convert.convert_state_dicts(released_21(golden21), "tiny", **TINY21_KW)
  states = convert.export_torch(params, config)
  strip = lambda sd: {k[len(PREFIX):]: torch.from_numpy(np.ascontiguousarray(v))
                      for k, v in sd.items()}
  enc = ref.vit.VisionTransformer(
      img_size=(64, 64), patch_size=16, num_frames=4, tubelet_size=2, embed_dim=48, depth=12,
      num_heads=3, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_sdpa=False,
      use_rope=True, img_temporal_dim_size=1, interpolate_rope=True,
      modality_embedding=True).eval()
  enc.load_state_dict(strip(states["target_encoder"]), strict=True)
  pred = ref.pred.vit_predictor(
      img_size=(64, 64), patch_size=16, num_frames=4, tubelet_size=2, embed_dim=48,
      predictor_embed_dim=32, depth=4, num_heads=2, use_mask_tokens=True, num_mask_tokens=2,
      use_rope=True, return_all_tokens=True, interpolate_rope=True, modality_embedding=True,
      img_temporal_dim_size=1).eval()
  pred.load_state_dict(strip(states["predictor"]), strict=True)
  with torch.no_grad():
    clip = torch.from_numpy(golden21["clip"])
    np.testing.assert_array_equal(enc(clip).numpy(), golden21["out/encoder_full"])
    ctx_idx, tgt_idx = (torch.from_numpy(golden21[k]) for k in ("mask_enc_0", "mask_pred_0"))
    out, out_ctx = pred(enc(clip, masks=ctx_idx, training=True), ctx_idx, tgt_idx, mask_index=0)
  np.testing.assert_array_equal(out.numpy(), golden21["out/pred_0"])
  np.testing.assert_array_equal(out_ctx.numpy(), golden21["out/pred_context_0"])


def test_as_vjepa2_is_what_the_references_eval_21_computes(golden21, tmp_path):
  """``--as-vjepa2``: the 2.1 weights in the V-JEPA 2 encoder as configs/eval_2_1 load them
  (vit_encoder_multiclip, strict=False). The keys it drops and adds are the reference load's
  unexpected and missing keys; through a saved checkpoint and the eval's loader the tokens are
  the reference's, which differ from the 2.1 encoder's own output."""
  from jepa_jax.eval import config as eval_config
  from jepa_jax.eval import encoder as enc_lib
  with np.load(EVAL_FIXTURE) as f:
    ref_eval = {k: f[k] for k in f.files}
  state21 = state(golden21, "param/encoder/", wrap="")
  as2 = reference.vjepa2_eval_state(state21)
  assert sorted(set(state21) - set(as2)) == sorted(ref_eval["unexpected"].tolist())
  assert sorted(set(as2) - set(state21)) == sorted(ref_eval["missing"].tolist())

  params, config = convert.convert_state_dicts(released_21(golden21), "tiny", as_vjepa2=True,
                                               **TINY21_KW)
  assert set(params) == {"encoder", "target"}
  assert config.model.use_rope and not config.model.get("vjepa21")
  reference.save_converted(str(tmp_path / "ckpt"), params, config)
  c = eval_config.vjepa2_eval_config("t", 3, frames=4, frame_step=2, segments=1, views=1,
                                     resolution=64, clips_per_gpu=2, gpus=1, epochs=1)
  c.checkpoint, c.encoder_dtype, c.attention = str(tmp_path / "ckpt"), "float32", "einsum"
  encoder, eparams, info = enc_lib.load_frozen_encoder(c)
  assert not info["model"]["vjepa21"] and not encoder.levels
  clip = jnp.asarray(golden21["clip"].transpose(0, 2, 3, 4, 1))
  # Runs once: compiled without LLVM's backend optimisations (see test_vjepa21.run_once).
  tokens = jax.jit(lambda p: encoder.apply({"params": p}, clip)).lower(eparams).compile(
      compiler_options={"xla_backend_optimization_level": 0})(eparams)
  np.testing.assert_allclose(np.asarray(tokens), ref_eval["out/tokens"], atol=2e-5)
  assert np.abs(ref_eval["out/tokens"] - golden21["out/encoder_full"]).max() > 0.1

  with pytest.raises(convert.ConversionError, match="--as-vjepa2 .* drop the flag"):
    convert.convert_state_dicts({"target_encoder": as2}, "tiny", as_vjepa2=True, **TINY21_KW)
  from jepa_jax.convert.__main__ import parse_args  # noqa: PLC0415
  with pytest.raises(SystemExit):
    parse_args(["--from-torch", "p.pt", "--kind", "probe", "--out", "o", "--as-vjepa2"])
