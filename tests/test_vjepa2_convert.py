"""V-JEPA 2 weights: the released files' layout (src/hub/backbones.py) <-> jepa_jax checkpoints, RoPE
and sizes inferred; exports the reference's RoPE modules load with strict=True; V-JEPA 2 probes."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax import checkpoint, convert, models
from jepa_jax.convert import infer, reference
from jepa_jax.convert.__main__ import main as cli
from jepa_jax.models import pos_embed

PREFIX = "module.backbone."
TINY2 = ["--model", "tiny", "--embed-dim", "112", "--depth", "2", "--num-heads", "4",
         "--pred-num-heads", "4"]
TINY2_KW = dict(embed_dim=112, depth=2, num_heads=4, pred_num_heads=4)


def golden_state(golden, prefix, wrap=""):
  return {wrap + k[len(prefix):]: v for k, v in golden.items() if k.startswith(prefix)}


def released_v2(golden, like_hub_files=True) -> dict:
  """The golden V-JEPA 2 weights in the released files' structure. ``like_hub_files``: with the
  ``pos_embed`` / ``predictor_pos_embed`` entries the hub loader ignores (a sin-cos table here) and
  10 mask tokens, as the predictor src/hub/backbones.py builds for them."""
  ckpt = {"encoder": golden_state(golden, "param/encoder/", PREFIX),
          "predictor": golden_state(golden, "param/predictor/", PREFIX),
          "target_encoder": golden_state(golden, "after/target/", PREFIX),
          "opt": {"state": {}, "param_groups": []}, "scaler": None, "epoch": 40}
  if like_hub_files:
    table = pos_embed.sincos_3d(112, (4, 4, 4), True)[None]
    for group in ("encoder", "target_encoder"):
      ckpt[group][PREFIX + "pos_embed"] = table
    ckpt["predictor"][PREFIX + "predictor_pos_embed"] = pos_embed.sincos_3d(64, (4, 4, 4), True)[None]
    for i in range(2, 10):
      ckpt["predictor"][PREFIX + f"mask_tokens.{i}"] = np.zeros((1, 1, 64), np.float32)
  return ckpt


def assert_golden_outputs(golden, params, config):
  from jepa_jax.pretrain import config as config_lib  # noqa: PLC0415
  config = __import__("ml_collections").ConfigDict(config)
  config.model.attention = "einsum"
  enc, pred = models.from_spec(config_lib.model_spec(
      config, num_masks=params["predictor"]["mask_tokens"].shape[0]))
  enc, pred = (m.clone(block=m.block.replace(dtype=jnp.float32)) for m in (enc, pred))
  clip = jnp.asarray(golden["clip"].transpose(0, 2, 3, 4, 1))
  np.testing.assert_allclose(np.asarray(enc.apply(
      {"params": params["encoder"]}, clip)), golden["out/encoder_full"], atol=2e-5)
  ctx_idx, tgt_idx = jnp.asarray(golden["mask_enc_1"]), jnp.asarray(golden["mask_pred_1"])
  ctx = enc.apply({"params": params["encoder"]}, clip, token_idx=ctx_idx)
  out = pred.apply({"params": params["predictor"]}, ctx, ctx_idx, tgt_idx, 1)
  np.testing.assert_allclose(np.asarray(out), golden["out/pred_1"], atol=2e-5)


@pytest.mark.parametrize("like_hub_files", [True, False])
def test_rope_inferred_and_outputs_reproduced(golden_v2, like_hub_files):
  ckpt = released_v2(golden_v2, like_hub_files)
  params, config = convert.convert_state_dicts(ckpt, "tiny", **TINY2_KW)
  m = config.model
  assert m.use_rope and m.pred_num_heads == 4 and m.mask_token_per == "clip_length"
  assert m.num_mask_tokens == (10 if like_hub_files else 2)
  # The hub files' (unused) table gives the clip; without one the sizes default or are given.
  assert (config.data.crop_size, config.data.num_frames) == ((64, 8) if like_hub_files
                                                             else infer.ROPE_DEFAULT_CLIP)
  assert "pos_embed" not in str(jax.tree_util.tree_structure(params))
  config.data.crop_size, config.data.num_frames = 64, 8
  assert_golden_outputs(golden_v2, params, config.to_dict())


def test_rope_inference_rules(golden_v2):
  enc = golden_state(golden_v2, "param/encoder/")
  v1_pred = dict(num_mask_tokens=2)
  assert infer.infer_rope(enc, None)[0]                                   # no pos_embed
  with_table = dict(enc, pos_embed=np.zeros((1, 64, 112), np.float32))
  assert not infer.infer_rope(with_table, v1_pred)[0]                    # V-JEPA layout
  assert infer.infer_rope(with_table, dict(num_mask_tokens=10))[0]       # V-JEPA 2 predictor
  # Forcing it either way works; a sin-cos model forced to RoPE ignores its table.
  _, config = convert.convert_state_dicts(released_v2(golden_v2), "tiny", use_rope=False,
                                          **TINY2_KW)
  assert not config.model.use_rope


def _ac_predictor(width=64, in_width=112) -> dict:
  """A V-JEPA 2-AC predictor's state dict (src/models/ac_predictor.py names), tiny."""
  z = lambda *shape: np.zeros(shape, np.float32)
  return {PREFIX + "predictor_embed.weight": z(width, in_width), PREFIX + "predictor_embed.bias":
          z(width), PREFIX + "action_encoder.weight": z(width, 7), PREFIX + "action_encoder.bias":
          z(width), PREFIX + "state_encoder.weight": z(width, 7), PREFIX + "state_encoder.bias":
          z(width), PREFIX + "predictor_proj.weight": z(in_width, width)}


def test_encoder_only_on_a_released_file_stays_rope(golden_v2):
  """--encoder-only on a released V-JEPA 2 file (encoders with pos_embed entries): still RoPE, and
  the encoder reproduces the reference's outputs (it was converted as a sin-cos encoder before)."""
  params, config = convert.convert_state_dicts(released_v2(golden_v2), "tiny", encoder_only=True,
                                               **TINY2_KW)
  assert config.model.use_rope and "predictor" not in params
  enc, _ = models.from_spec(importlib.import_module("jepa_jax.pretrain.config").model_spec(config))
  enc = enc.clone(block=enc.block.replace(dtype=jnp.float32, attention="einsum"))
  clip = jnp.asarray(golden_v2["clip"].transpose(0, 2, 3, 4, 1))
  np.testing.assert_allclose(np.asarray(enc.apply({"params": params["encoder"]}, clip)),
                             golden_v2["out/encoder_full"], atol=2e-5)


def test_an_encoder_with_a_table_and_no_predictor_needs_rope_flag(golden_v2):
  """A bare encoder carrying pos_embed is V-JEPA's or V-JEPA 2's: refused, naming --rope."""
  bare = released_v2(golden_v2)["target_encoder"]
  with pytest.raises(convert.ConversionError, match=r"pass --rope .* or --no-rope") as e:
    convert.convert_state_dicts(bare, "tiny", **TINY2_KW)
  assert "\n" not in str(e.value)
  _, config = convert.convert_state_dicts(bare, "tiny", use_rope=True, **TINY2_KW)
  assert config.model.use_rope
  no_table = {k: v for k, v in bare.items() if not k.endswith("pos_embed")}
  assert convert.convert_state_dicts(no_table, "tiny", **TINY2_KW)[1].model.use_rope


def test_action_conditioned_files_point_to_encoder_only_which_works(golden_v2):
  ckpt = released_v2(golden_v2)
  ckpt["predictor"] = _ac_predictor()
  with pytest.raises(convert.ConversionError, match="V-JEPA 2-AC.*--encoder-only"):
    convert.convert_state_dicts(ckpt, "tiny", **TINY2_KW)
  params, config = convert.convert_state_dicts(ckpt, "tiny", encoder_only=True, **TINY2_KW)
  assert config.model.use_rope and "predictor" not in params


def test_vitg_files_resolve_to_the_22_head_giant():
  """A RoPE ViT-g file is V-JEPA 2's vit_giant_xformers (22 heads), a sin-cos one V-JEPA's
  vit_giant (16 heads): same shapes, told apart by the positions."""
  from jepa_jax.pretrain import config as config_lib  # noqa: PLC0415
  for rope, name in ((True, "giant_xformers"), (False, "giant")):
    tokens = 10 if rope else 2  # V-JEPA 2's released predictors have 10, V-JEPA's 2
    config = reference._config(name, {}, dict(patch_size=16, tubelet_size=2, in_chans=3), 256, 16,
                               True, dict(pred_embed_dim=384, pred_depth=12,
                                          num_mask_tokens=tokens),
                               use_rope=rope, pred_num_heads=12 if rope else None)
    encoder, predictor = models.from_spec(config_lib.model_spec(config, num_masks=tokens))
    views = infer.zero_views(reference._abstract_params(encoder, predictor))
    states = convert.export_torch(dict(encoder=views["encoder"], predictor=views["predictor"],
                                       target=views["encoder"]), config)
    if rope:  # as the released files: an (ignored) table in the encoders
      for group in ("encoder", "target_encoder"):
        states[group][PREFIX + "pos_embed"] = pos_embed.sincos_3d(1408, (8, 16, 16), True)[None]
    _, back = convert.convert_state_dicts(states)
    assert (back.model.name, back.model.use_rope) == (name, rope)
    _, alone = convert.convert_state_dicts(states, encoder_only=True)  # same family, no predictor
    assert (alone.model.name, alone.model.use_rope) == (name, rope)
    assert (back.data.crop_size, back.data.num_frames) == (256, 16)
    assert back.model.pred_num_heads == (12 if rope else None)


# --- real files ------------------------------------------------------------------------------

def _tensors(tree):
  torch = pytest.importorskip("torch")
  if isinstance(tree, dict):
    return {k: _tensors(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return [_tensors(v) for v in tree]
  return torch.from_numpy(np.ascontiguousarray(tree)) if isinstance(tree, np.ndarray) else tree


def test_cli_both_ways_on_a_released_layout_file(golden_v2, tmp_path, capsys):
  torch = pytest.importorskip("torch")
  path = tmp_path / "vitg.pt"
  torch.save(_tensors(released_v2(golden_v2)), path)
  assert cli(["--from-torch", str(path), "--out", str(tmp_path / "ckpt"), *TINY2]) == 0
  assert "3D RoPE" in capsys.readouterr().out
  params, _ = checkpoint.load_params(str(tmp_path / "ckpt"))
  saved = checkpoint.read_config(str(tmp_path / "ckpt"))
  assert saved["model"]["use_rope"] and (saved["data"]["crop_size"], saved["data"]["num_frames"]) \
      == (64, 8)
  assert_golden_outputs(golden_v2, params, saved)

  out = tmp_path / "export.pt"
  assert cli(["--to-torch", "--ckpt", str(tmp_path / "ckpt"), "--out", str(out)]) == 0
  loaded = torch.load(out, map_location="cpu", weights_only=True)
  want = released_v2(golden_v2)
  for group in ("encoder", "predictor", "target_encoder"):
    # The released names minus the tables a RoPE module does not have.
    expected = {k for k in want[group] if not k.endswith("pos_embed")}
    assert set(loaded[group]) == expected, group
    for name in expected:
      np.testing.assert_array_equal(loaded[group][name].numpy(), want[group][name], err_msg=name)
  back, _ = convert.load_torch_checkpoint(str(out), "tiny", **TINY2_KW)
  for x, y in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_exports_load_into_reference_modules_strictly(golden_v2, tmp_path):
  """``--to-torch`` files load into the V-JEPA 2 reference modules with strict=True, and those
  modules then reproduce the golden outputs (needs JEPA_JAX_VJEPA2_SRC)."""
  import reference_vjepa2
  ref = reference_vjepa2.reference()
  torch = ref.torch
  from functools import partial
  params, config = convert.convert_state_dicts(released_v2(golden_v2), "tiny", **TINY2_KW)
  states = convert.export_torch(params, config)
  strip = lambda sd: {k[len(PREFIX):]: torch.from_numpy(np.ascontiguousarray(v))
                      for k, v in sd.items()}
  norm = partial(torch.nn.LayerNorm, eps=1e-6)
  enc = ref.vit.VisionTransformer(img_size=64, patch_size=16, num_frames=8, embed_dim=112,
                                  depth=2, num_heads=4, use_rope=True, use_sdpa=False,
                                  norm_layer=norm).eval()
  enc.load_state_dict(strip(states["target_encoder"]), strict=True)
  pred = ref.predictor.vit_predictor(
      img_size=64, patch_size=16, num_frames=8, embed_dim=112, predictor_embed_dim=64, depth=2,
      num_heads=4, use_mask_tokens=True, num_mask_tokens=10, use_rope=True, use_sdpa=False).eval()
  pred.load_state_dict(strip(states["predictor"]), strict=True)
  enc.load_state_dict(strip(states["encoder"]), strict=True)
  with torch.no_grad():
    clip = torch.from_numpy(golden_v2["clip"])
    np.testing.assert_allclose(enc(clip).numpy(), golden_v2["out/encoder_full"], atol=2e-5)
    ctx_idx, tgt_idx = (torch.from_numpy(golden_v2[k]) for k in ("mask_enc_0", "mask_pred_0"))
    out = pred(enc(clip, masks=ctx_idx), ctx_idx, tgt_idx, mask_index=0).numpy()
  np.testing.assert_allclose(out, golden_v2["out/pred_0"], atol=2e-5)


# --- V-JEPA 2 probes -------------------------------------------------------------------------

def _probe_params(cfg, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda s: (0.2 * rng.normal(size=s.shape)).astype(np.float32),
                                reference._abstract_probe(cfg))


def test_vjepa2_probe_layout_round_trip(tmp_path):
  cfg = dict(num_classes=5, num_heads=16, depth=4, mlp_ratio=4.0, num_queries=1, embed_dim=64,
             blocks_on="tokens")
  params = _probe_params(cfg)
  file_dict = convert.export_probe(params, cfg)
  (state,) = file_dict["classifiers"]  # V-JEPA 2's eval saves a list, one per LR/WD head
  assert not any("xattn.proj" in k for k in state)  # its CrossAttention has no proj
  assert "module.pooler.blocks.2.attn.qkv.weight" in state
  # Heads default to V-JEPA 2's 16; a second probe in the list is picked with probe_index.
  two = {"classifiers": [state, convert.export_probe(_probe_params(cfg, 1), cfg)["classifiers"][0]]}
  back, back_cfg = convert.convert_probe_state_dict(two)
  assert back_cfg == cfg
  for x, y in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(x, y)
  other, _ = convert.convert_probe_state_dict(two, probe_index=1)
  assert not np.array_equal(other["linear"]["kernel"], params["linear"]["kernel"])
  with pytest.raises(convert.ConversionError, match="--probe-index 2"):
    convert.convert_probe_state_dict(two, probe_index=2)


def test_vjepa2_probe_blocks_run_on_tokens_before_pooling():
  """depth-d V-JEPA 2 probe == its d-1 blocks over the tokens, then a depth-1 probe."""
  kw = dict(num_classes=5, num_heads=4, attention="einsum")
  deep = models.build_probe(depth=3, blocks_on="tokens", **kw)
  shallow = models.build_probe(depth=1, **kw)
  tokens = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 32))
  params = deep.init(jax.random.PRNGKey(1), tokens)["params"]
  stack = models.layers.BlockStack(2, models.BlockConfig(4, attention="einsum"), ln_eps=1e-5)
  mixed, _ = stack.apply({"params": params["stack"]}, tokens)
  rest = {k: v for k, v in params.items() if k != "stack"}
  np.testing.assert_allclose(np.asarray(deep.apply({"params": params}, tokens)),
                             np.asarray(shallow.apply({"params": rest}, mixed)), atol=1e-5)
  query_side = models.build_probe(depth=3, blocks_on="query", **kw)
  assert not np.allclose(np.asarray(query_side.apply({"params": params}, tokens)),
                         np.asarray(deep.apply({"params": params}, tokens)), atol=1e-3)


def test_vjepa2_probe_matches_reference_module():
  """The V-JEPA 2 reference's AttentiveClassifier (4 blocks) on our converted weights."""
  import reference_vjepa2
  ref = reference_vjepa2.reference()
  torch = ref.torch
  torch.manual_seed(0)
  probe_t = ref.pooler.AttentiveClassifier(embed_dim=64, num_heads=16, depth=4, num_classes=5,
                                           norm_layer=torch.nn.LayerNorm).eval()
  sd = {"module." + k: v for k, v in reference_vjepa2.numpy_state(probe_t).items()}
  params, cfg = convert.convert_probe_state_dict({"classifiers": [sd]})
  assert cfg["blocks_on"] == "tokens" and cfg["depth"] == 4 and cfg["num_heads"] == 16
  tokens = np.random.default_rng(0).normal(size=(3, 20, 64)).astype(np.float32)
  with torch.no_grad():
    want = probe_t(torch.from_numpy(tokens)).numpy()
  got = models.build_probe(num_classes=5, num_heads=16, depth=4, blocks_on="tokens",
                           attention="einsum").apply({"params": params}, tokens)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
