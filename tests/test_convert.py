"""Weight conversion: reference ``.pth.tar`` files <-> jepa_jax checkpoints (jepa_jax.convert).

The shape inference, the checks and the round trips run on numpy state dicts and need no torch;
the tests that write or read real ``.pth.tar`` files skip without it (``pip install
'jepa_jax[torch]'``).
"""
import argparse
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax import checkpoint, convert, models
from jepa_jax.convert import infer, reference
from jepa_jax.convert.__main__ import main as cli
from jepa_jax.models import pos_embed

PREFIX = "module.backbone."
TINY_FLAGS = dict(embed_dim=96, depth=2, num_heads=4)   # the golden model: no named size
TINY_CLI = ["--model", "tiny", "--embed-dim", "96", "--depth", "2", "--num-heads", "4"]


def golden_state(golden, prefix, wrap=""):
  return {wrap + k[len(prefix):]: v for k, v in golden.items() if k.startswith(prefix)}


def released(golden) -> dict:
  """The golden tiny weights in the released files' structure (prefixes, optimiser, epoch...).

  ``after/target`` is an EMA target one step on: its pos_embed is the table after one EMA update,
  off by a rounding error, exactly as in the released targets.
  """
  return {"encoder": golden_state(golden, "param/encoder/", PREFIX),
          "predictor": golden_state(golden, "param/predictor/", PREFIX),
          "target_encoder": golden_state(golden, "after/target/", PREFIX),
          "opt": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
          "scaler": None, "epoch": 300, "loss": 0.123, "batch_size": 24, "world_size": 1,
          "lr": 1e-4}


def assert_trees_equal(a, b):
  fa, fb = (dict(jax.tree_util.tree_flatten_with_path(t)[0]) for t in (a, b))
  assert set(fa) == set(fb)
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=str(k))


def assert_golden_outputs(golden, params, config):
  """The converted model reproduces the reference's encoder and predictor outputs."""
  cfg = dict(config["model"]["overrides"])
  enc = models.build_encoder(config["model"]["name"], img_size=config["data"]["crop_size"],
                             num_frames=config["data"]["num_frames"], attention="einsum", **cfg)
  pred = models.build_predictor(enc, embed_dim=config["model"]["pred_embed_dim"],
                                depth=config["model"]["pred_depth"])
  clip = jnp.asarray(golden["clip"].transpose(0, 2, 3, 4, 1))
  out = enc.apply({"params": params["encoder"]}, clip)
  np.testing.assert_allclose(np.asarray(out), golden["out/encoder_full"], atol=1e-5, rtol=1e-5)
  ctx_idx, tgt_idx = jnp.asarray(golden["mask_enc_0"]), jnp.asarray(golden["mask_pred_0"])
  ctx = enc.apply({"params": params["encoder"]}, clip, token_idx=ctx_idx)
  pred_out = pred.apply({"params": params["predictor"]}, ctx, ctx_idx, tgt_idx, mask_index=0)
  np.testing.assert_allclose(np.asarray(pred_out), golden["out/pred_0"], atol=1e-5, rtol=1e-5)


# --- shape inference (no torch) --------------------------------------------------------------

def test_specs_from_shapes(golden):
  enc = golden_state(golden, "param/encoder/")
  assert infer.encoder_spec(enc) == dict(embed_dim=96, depth=2, mlp_hidden=384, in_chans=3,
                                         patch_size=16, tubelet_size=2)
  assert infer.predictor_spec(golden_state(golden, "param/predictor/")) == dict(
      pred_embed_dim=48, embed_dim=96, pred_depth=2, num_mask_tokens=2)
  # Two ViT-g share the shapes: V-JEPA's (16 heads) first, V-JEPA 2's (22 heads) for RoPE files.
  giant = dict(embed_dim=1408, depth=40, mlp_hidden=6144)
  assert infer.named_sizes(giant) == ["giant", "giant_xformers"]
  assert infer.resolve_size(giant) == ("giant", {})
  assert infer.resolve_size(giant, use_rope=True) == ("giant_xformers", {})
  assert infer.resolve_size(dict(embed_dim=1280, depth=32, mlp_hidden=5120)) == ("huge", {})
  assert infer.resolve_size(infer.encoder_spec(enc), "vit_tiny", TINY_FLAGS) == ("tiny", TINY_FLAGS)
  # No named size and no heads: refused, asking for them.
  with pytest.raises(convert.ConversionError, match="--num-heads"):
    infer.resolve_size(infer.encoder_spec(enc))
  with pytest.raises(convert.ConversionError, match=r"patch_embed\.proj\.weight has shape "
                     r"\(96, 3, 2, 16, 16\) in the checkpoint but \(1024, 3, 2, 16, 16\)"):
    infer.resolve_size(infer.encoder_spec(enc), "vit_large")
  with pytest.raises(convert.ConversionError, match="2 blocks"):
    infer.resolve_size(infer.encoder_spec(enc), "tiny", dict(embed_dim=96, num_heads=4))


@pytest.mark.parametrize("uniform_power", [True, False])
def test_grid_read_from_position_table(uniform_power):
  # 1568 tokens: 8x14x14 (224 px, 16 frames), but also 2x28x28, 32x7x7, 392x2x2, 1568x1x1.
  table = pos_embed.sincos_3d(1024, (8, 14, 14), uniform_power)[None]
  assert infer.infer_grid(table, 16, 2) == (224, 16, uniform_power)
  assert infer.infer_grid(table, 16, 2, img_size=224, num_frames=16) == (224, 16, uniform_power)
  # The 384 px model: 8x24x24 = 4608 tokens.
  assert infer.infer_grid(pos_embed.sincos_3d(1280, (8, 24, 24), True), 16, 2) == (384, 16, True)
  with pytest.raises(convert.ConversionError, match="--img-size 256"):
    infer.infer_grid(table, 16, 2, img_size=256)
  with pytest.raises(convert.ConversionError, match="matches none"):
    infer.infer_grid(table, 16, 2, img_size=448, num_frames=4)  # 2x28x28: right N, wrong table
  with pytest.raises(convert.ConversionError, match="matches none"):
    infer.infer_grid(np.random.default_rng(0).normal(size=table.shape), 16, 2)
  with pytest.raises(convert.ConversionError, match="--img-size and --num-frames"):
    infer.infer_grid(None, 16, 2)


# --- round trips on numpy state dicts (no torch) ---------------------------------------------

@pytest.mark.parametrize("size", sorted(models.VIT_SIZES))
def test_round_trip_every_size_on_abstract_shapes(size):
  """JAX -> reference layout -> JAX keeps every name and shape (zero-stride views: no memory).
  V-JEPA 2's sizes (``*_xformers``) as RoPE models: no position tables in the files."""
  rope = size.endswith("_xformers")
  config = reference._config(size, {}, dict(patch_size=16, tubelet_size=2, in_chans=3), 224, 16,
                             True, dict(pred_embed_dim=384, pred_depth=12, num_mask_tokens=2),
                             use_rope=rope, pred_num_heads=12 if rope else None)
  from jepa_jax import models
  from jepa_jax.pretrain import config as config_lib  # noqa: PLC0415
  encoder, predictor = models.from_spec(config_lib.model_spec(config, num_masks=2))
  abstract = reference._abstract_params(encoder, predictor)
  views = infer.zero_views(abstract)
  params = {"encoder": views["encoder"], "predictor": views["predictor"],
            "target": views["encoder"]}
  states = convert.export_torch(params, config)
  spec = models.VIT_SIZES[size]
  enc = states["target_encoder"]
  if rope:
    assert PREFIX + "pos_embed" not in enc
    assert PREFIX + "predictor_pos_embed" not in states["predictor"]
  else:
    assert enc[PREFIX + "pos_embed"].shape == (1, 1568, spec["embed_dim"])
    assert states["predictor"][PREFIX + "predictor_pos_embed"].shape == (1, 1568, 384)
  assert sum(k.startswith(PREFIX + "blocks.") for k in enc) == 12 * spec["depth"]
  clip = dict(img_size=224, num_frames=16) if rope else {}  # a RoPE file holds no grid
  back, back_config = convert.convert_state_dicts(states, f"vit_{size}", **clip)
  assert back_config.model.use_rope == rope
  assert back_config.model.name == size and not back_config.model.overrides
  assert (back_config.data.crop_size, back_config.data.num_frames) == (224, 16)
  assert (back_config.model.pred_embed_dim, back_config.model.pred_depth) == (384, 12)
  # The abstract tree is traced with scanned blocks; converted trees are unscanned.
  want = {k: convert.unstack_blocks(v) for k, v in views.items()}
  for group, ref in (("encoder", "encoder"), ("target", "encoder"), ("predictor", "predictor")):
    got = jax.tree_util.tree_map(lambda x: x.shape, back[group])
    assert got == jax.tree_util.tree_map(lambda x: x.shape, want[ref]), group


def test_round_trip_tiny_exact(golden):
  ckpt = released(golden)
  params, config = convert.convert_state_dicts(ckpt, "tiny", **TINY_FLAGS)
  assert config.model.uniform_power and config.data.crop_size == 64
  assert config.data.num_frames == 8 and config.model.pred_embed_dim == 48
  states = convert.export_torch(params, config)
  for group in ("encoder", "predictor", "target_encoder"):
    assert set(states[group]) == set(ckpt[group]), group
    for name, value in ckpt[group].items():
      # Exported tables are the exact ones; the EMA target's was off by rounding.
      atol = 1e-6 if name.endswith("pos_embed") else 0
      np.testing.assert_allclose(states[group][name], value, atol=atol, rtol=0, err_msg=name)
  # Trainer checkpoints may hold scanned blocks ([depth, ...] leaves): same export.
  scanned = {k: convert.stack_blocks(v) for k, v in params.items()}
  for group, state in convert.export_torch(scanned, config).items():
    for name, value in state.items():
      np.testing.assert_array_equal(value, states[group][name])
  # --which picks one encoder for both keys.
  online = convert.export_torch(params, config, which="online")
  np.testing.assert_array_equal(online["target_encoder"][PREFIX + "norm.weight"],
                                ckpt["encoder"][PREFIX + "norm.weight"])


def test_converted_checkpoint_reproduces_golden(golden, tmp_path):
  params, config = convert.convert_state_dicts(released(golden), "tiny", **TINY_FLAGS)
  convert.save_converted(tmp_path, params, config)
  loaded, step = checkpoint.load_params(str(tmp_path))
  assert step == 0 and set(loaded) == {"encoder", "predictor", "target"}
  saved_config = checkpoint.read_config(str(tmp_path))
  assert saved_config["model"]["overrides"] == TINY_FLAGS
  assert_golden_outputs(golden, loaded, saved_config)
  # The saved spec is the config's model with the file's mask tokens.
  from jepa_jax.pretrain import config as config_lib  # noqa: PLC0415
  spec = checkpoint.read_model_spec(str(tmp_path), 0)
  num_masks = loaded["predictor"]["mask_tokens"].shape[0]
  assert spec == config_lib.model_spec(config, num_masks=num_masks)
  with pytest.raises(convert.ConversionError, match="already holds checkpoints"):
    convert.save_converted(tmp_path, params, config)


def test_converted_config_builds_the_float32_model_of_the_reference(golden):
  """The converted config's own model (no dtype override) reproduces the reference's float32
  outputs; a bfloat16 compute dtype recorded there cost 1.4% error."""
  from jepa_jax.pretrain import config as config_lib  # noqa: PLC0415
  params, config = convert.convert_state_dicts(released(golden), "tiny", **TINY_FLAGS)
  assert config.model.dtype == "float32"
  config.model.attention = "einsum"  # CPU; the precision is the config's
  encoder, _ = models.from_spec(config_lib.model_spec(config))
  clip = jnp.asarray(golden["clip"].transpose(0, 2, 3, 4, 1))
  np.testing.assert_allclose(np.asarray(encoder.apply({"params": params["encoder"]}, clip)),
                             golden["out/encoder_full"], atol=1e-5, rtol=1e-5)


def test_mismatches_refused(golden):
  ckpt = released(golden)
  with pytest.raises(convert.ConversionError, match="patch_embed.proj.weight has shape"):
    convert.convert_state_dicts(ckpt, "vit_large")
  with pytest.raises(convert.ConversionError, match="--tubelet-size 4 does not fit"):
    convert.convert_state_dicts(ckpt, "tiny", tubelet_size=4, **TINY_FLAGS)
  with pytest.raises(convert.ConversionError, match="--num-frames"):
    convert.convert_state_dicts(ckpt, "tiny", num_frames=16, **TINY_FLAGS)
  bad = released(golden)
  bad["predictor"][PREFIX + "predictor_proj.weight"] = np.zeros((96, 40), np.float32)
  with pytest.raises(convert.ConversionError, match=r"predictor_proj.weight has shape \(96, 40\)"):
    convert.convert_state_dicts(bad, "tiny", **TINY_FLAGS)
  bad = released(golden)
  bad["encoder"][PREFIX + "pos_embed"] = bad["encoder"][PREFIX + "pos_embed"] + 0.1
  with pytest.raises(convert.ConversionError, match="encoder pos_embed"):
    convert.convert_state_dicts(bad, "tiny", **TINY_FLAGS)
  with pytest.raises(convert.ConversionError, match="--kind probe"):
    convert.convert_state_dicts({"classifier": {}})


def test_probe_and_model_files_swapped_name_the_kind_flag(golden):
  """Each kind of file given to the other kind's conversion is refused in one line naming
  --kind probe (V-JEPA 2's probe files hold 'classifiers', a list) or its removal."""
  cfg, params = _probe()
  vjepa2_probe = convert.export_probe(params, dict(cfg, blocks_on="tokens"))
  assert "classifiers" in vjepa2_probe
  bare_probe = convert.export_probe(params, cfg)["classifier"]
  for probe_file in (vjepa2_probe, bare_probe):
    with pytest.raises(convert.ConversionError, match="convert it with --kind probe"):
      convert.convert_state_dicts(probe_file, "tiny", **TINY_FLAGS)
  model_file = released(golden)
  for model in (model_file, model_file["target_encoder"]):
    with pytest.raises(convert.ConversionError, match="convert it without --kind probe"):
      convert.convert_probe_state_dict(model)


def _probe(depth=2, blocks_on="query"):
  """Random probe parameters of width 32 (from the abstract tree: no init to compile)."""
  cfg = dict(num_classes=7, num_heads=4, depth=depth, mlp_ratio=4.0, num_queries=1, embed_dim=32,
             blocks_on=blocks_on)
  rng = np.random.default_rng(depth)
  params = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(np.float32),
                                  reference._abstract_probe(cfg))
  return cfg, params


def test_probe_round_trip(tmp_path):
  cfg, params = _probe()
  file_dict = convert.export_probe(params, cfg)
  names = set(file_dict["classifier"])
  assert "module.pooler.query_tokens" in names and "module.linear.weight" in names
  assert "module.pooler.cross_attention_block.xattn.proj.weight" in names  # unused, still saved
  assert "module.pooler.blocks.0.attn.qkv.weight" in names
  back, back_cfg = convert.convert_probe_state_dict(dict(file_dict, epoch=20), num_heads=4)
  assert back_cfg == cfg
  assert_trees_equal(back, params)
  convert.save_probe(tmp_path, back, cfg)
  loaded, loaded_cfg = convert.load_probe(str(tmp_path))
  assert loaded_cfg == cfg
  assert_trees_equal(loaded, params)
  with pytest.raises(convert.ConversionError, match="--num-heads"):
    convert.convert_probe_state_dict(file_dict)  # width 32: no named size to take heads from


def test_missing_torch_is_explained(monkeypatch):
  from jepa_jax.convert import torch_io
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(ImportError, match=r"pip install 'jepa_jax\[torch\]'"):
    torch_io.load("whatever.pth.tar")


# --- real .pth.tar files (torch) -------------------------------------------------------------

def _tensors(tree):
  torch = pytest.importorskip("torch")
  if isinstance(tree, dict):
    return {k: _tensors(v) for k, v in tree.items()}
  return torch.from_numpy(np.ascontiguousarray(tree)) if isinstance(tree, np.ndarray) else tree


@pytest.fixture(scope="module")
def released_file(golden, tmp_path_factory):
  torch = pytest.importorskip("torch")
  path = tmp_path_factory.mktemp("released") / "vjepa_tiny.pth.tar"
  torch.save(_tensors(released(golden)), path)
  return path


def test_cli_converts_released_file_and_reproduces_golden(golden, released_file, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = subprocess.run([sys.executable, "-m", "jepa_jax.convert", "--from-torch",
                        str(released_file), "--out", str(tmp_path), *TINY_CLI],
                       capture_output=True, text=True, env=env, timeout=120)
  assert run.returncode == 0, run.stderr
  assert "for 8x64px clips" in run.stdout
  assert "V-JEPA sin-cos model: the encoder has a pos_embed table" in run.stderr  # INFO shows
  params, _ = checkpoint.load_params(str(tmp_path))
  assert_golden_outputs(golden, params, checkpoint.read_config(str(tmp_path)))


def test_cli_refuses_mismatch_and_unsafe_pickles(golden, released_file, tmp_path, capsys):
  torch = pytest.importorskip("torch")
  assert cli(["--from-torch", str(released_file), "--model", "vit_large",
              "--out", str(tmp_path / "a")]) == 1
  err = capsys.readouterr().err
  assert "patch_embed.proj.weight has shape (96, 3, 2, 16, 16) in the checkpoint but " \
         "(1024, 3, 2, 16, 16) in vit_large" in err and "--model" in err
  assert not (tmp_path / "a").exists()
  unsafe = tmp_path / "unsafe.pth.tar"
  torch.save(dict(_tensors(released(golden)), args=argparse.Namespace(lr=0.1)), unsafe)
  assert cli(["--from-torch", str(unsafe), "--out", str(tmp_path / "b"), *TINY_CLI]) == 1
  assert "refuses to unpickle arbitrary objects" in capsys.readouterr().err
  assert cli(["--from-torch", str(tmp_path / "nope.pth.tar"), "--out", str(tmp_path / "c")]) == 1
  assert "no such file" in capsys.readouterr().err


def test_to_torch_loads_back_exactly(golden, released_file, tmp_path, capsys):
  torch = pytest.importorskip("torch")
  params, config = convert.load_torch_checkpoint(str(released_file), "tiny", **TINY_FLAGS)
  convert.save_converted(tmp_path / "ckpt", params, config)
  out = tmp_path / "export.pth.tar"
  assert cli(["--to-torch", "--ckpt", str(tmp_path / "ckpt"), "--out", str(out)]) == 0
  loaded = torch.load(out, map_location="cpu", weights_only=True)
  assert {"encoder", "predictor", "target_encoder", "epoch"} <= set(loaded)
  want = released(golden)
  for group in ("encoder", "predictor", "target_encoder"):
    assert set(loaded[group]) == set(want[group]), group
    for name, value in want[group].items():
      assert tuple(loaded[group][name].shape) == value.shape, name
      atol = 1e-6 if name.endswith("pos_embed") else 0
      np.testing.assert_allclose(loaded[group][name].numpy(), value, atol=atol, rtol=0)
  back, _ = convert.load_torch_checkpoint(str(out), "tiny", **TINY_FLAGS)
  assert_trees_equal(back, params)
  capsys.readouterr()
  assert cli(["--to-torch", "--kind", "probe", "--ckpt", str(tmp_path / "ckpt"),
              "--out", str(tmp_path / "p.pth.tar")]) == 1
  err = capsys.readouterr().err.strip()
  assert "is a model checkpoint" in err and "without --kind probe" in err and "\n" not in err


def test_probe_files_both_ways(tmp_path, capsys):
  torch = pytest.importorskip("torch")
  cfg, params = _probe(depth=1)
  path = tmp_path / "probe.pth.tar"
  torch.save(_tensors(dict(convert.export_probe(params, cfg), epoch=20,
                           opt={"state": {}, "param_groups": []})), path)
  assert cli(["--from-torch", str(path), "--kind", "probe", "--num-heads", "4",
              "--out", str(tmp_path / "probe")]) == 0
  loaded, loaded_cfg = convert.load_probe(str(tmp_path / "probe"))
  assert loaded_cfg == cfg
  assert_trees_equal(loaded, params)
  out = tmp_path / "probe_out.pth.tar"
  assert cli(["--to-torch", "--kind", "probe", "--ckpt", str(tmp_path / "probe"),
              "--out", str(out)]) == 0
  state = torch.load(out, map_location="cpu", weights_only=True)["classifier"]
  original = torch.load(path, map_location="cpu", weights_only=True)["classifier"]
  assert set(state) == set(original)
  for name in original:
    assert torch.equal(state[name], original[name]), name
  capsys.readouterr()
  assert cli(["--to-torch", "--ckpt", str(tmp_path / "probe"), "--out", str(tmp_path / "m.pt")]) == 1
  err = capsys.readouterr().err.strip()
  assert "is an attentive probe" in err and "--to-torch --kind probe" in err and "\n" not in err


# --- memory ----------------------------------------------------------------------------------

def test_conversion_holds_one_copy_of_the_model(released_file, tmp_path, monkeypatch):
  """Converting holds the converted parameters plus one tensor of the file at a time (peak RSS
  grew ~2.9x the file's size: bench/convert_memory.py, BENCHMARKS.md): each tensor is copied into
  its own memory and the file's pages behind it dropped; the writer neither deep-copies the
  arrays (orbax's default for numpy leaves) nor holds them all encoded (OCDBT)."""
  from jepa_jax.convert import torch_io
  import orbax.checkpoint as ocp
  ckpt = torch_io.load(str(released_file))
  sources = [v for group in ("encoder", "predictor", "target_encoder")
             for v in ckpt[group].values()]
  assert all(id(v) in torch_io._MAPPED for v in sources)  # views of the mapped file
  params, config = convert.convert_state_dicts(ckpt, "tiny", **TINY_FLAGS)
  # Weights are transposed into copies, their pages released; vectors stay views of the file.
  weights = [v for v in sources if v.ndim in (2, 5)]
  assert weights and not any(id(v) in torch_io._MAPPED for v in weights)
  for leaf in jax.tree_util.tree_leaves(params):
    assert leaf.flags.c_contiguous and not any(np.may_share_memory(leaf, v) for v in weights)
  copies = []
  real_save = checkpoint.save_params

  def spy(*args, **kwargs):
    copies.append(ocp.type_handlers.get_type_handler(np.ndarray)._deepcopy_host_arrays)
    return real_save(*args, **kwargs)

  monkeypatch.setattr(checkpoint, "save_params", spy)
  path = convert.save_converted(tmp_path, params, config)
  assert copies == [False]
  assert ocp.type_handlers.get_type_handler(np.ndarray)._deepcopy_host_arrays  # restored
  written = [f for _, _, files in os.walk(path) for f in files]
  assert not any("ocdbt" in f for f in written), written
  assert_trees_equal(checkpoint.load_params(str(tmp_path))[0], params)
