"""Hugging Face transformers' V-JEPA 2 <-> jepa_jax, against the real library: directories written
by transformers' own ``save_pretrained`` import with outputs equal to transformers' forward, and
``--to-hf`` exports load with ``from_pretrained`` (no missing or unexpected keys) and give
jepa_jax's outputs (and the V-JEPA 2 reference's golden ones) in transformers."""
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jepa_jax import checkpoint, models, predict  # noqa: E402
from jepa_jax.convert import reference  # noqa: E402
from jepa_jax.convert.__main__ import main as cli  # noqa: E402
from jepa_jax.models import attentive_probe  # noqa: E402
from jepa_jax.pretrain import config as config_lib
from test_vjepa2_convert import TINY2_KW, _probe_params, released_v2  # noqa: E402

CLASSES = ["walk", "run", "jump"]
ATOL = 1e-5


def _build(directory):
  """jepa_jax's float32 encoder, predictor (if any) and params of a checkpoint directory."""
  params, _ = checkpoint.load_params(str(directory))
  config = ml_collections.ConfigDict(checkpoint.read_config(str(directory)))
  config.model.attention = "einsum"
  num_masks = params["predictor"]["mask_tokens"].shape[0] if "predictor" in params else None
  enc, pred = models.from_spec(config_lib.model_spec(config, num_masks=num_masks))
  return enc, pred, params


def _jax_outputs(enc, pred, params, clip, ctx, tgt, key="target"):
  """Encoder output on the whole clip, and the predictor run as transformers' VJEPA2Model runs it:
  on the full clip's tokens at ``ctx`` with its mask token 1 (``VJEPA2PredictorEmbeddings``'
  ``mask_index=1``)."""
  @jax.jit
  def run(enc_params, pred_params, clip, ctx, tgt):
    full = enc.apply({"params": enc_params}, clip)
    context = jnp.take_along_axis(full, ctx[..., None], axis=1)
    return full, pred.apply({"params": pred_params}, context, ctx, tgt, 1)

  full, out = run(params[key], params["predictor"], clip, ctx, tgt)
  return np.asarray(full), np.asarray(out)


def _hf_outputs(model, clip, ctx, tgt):
  with torch.no_grad():
    out = model(torch.from_numpy(np.ascontiguousarray(clip.transpose(0, 1, 4, 2, 3))),
                context_mask=[torch.from_numpy(ctx)], target_mask=[torch.from_numpy(tgt)])
  return out.last_hidden_state.numpy(), out.predictor_output.last_hidden_state.numpy()


def _masks(num_tokens, num_context, batch, seed=0):
  rng = np.random.default_rng(seed)
  orders = [rng.permutation(num_tokens) for _ in range(batch)]
  ctx = np.stack([np.sort(o[:num_context]) for o in orders]).astype(np.int64)
  tgt = np.stack([np.sort(o[num_context:]) for o in orders]).astype(np.int64)
  return ctx, tgt


def _probe_logits(probe_config, params, tokens, eps=None, monkeypatch=None):
  if eps is not None:
    monkeypatch.setattr(attentive_probe, "PROBE_LN_EPS", eps)
  probe = models.build_probe(**{k: v for k, v in probe_config.items() if k != "embed_dim"},
                             attention="einsum")
  return np.asarray(jax.jit(probe.apply)({"params": params}, tokens))


def _assert_loaded_cleanly(info):
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert not info.get("mismatched_keys"), info


# --- transformers -> jepa_jax ----------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  """A randomly initialised tiny VJEPA2ForVideoClassification (every parameter, LayerNorms and
  mask tokens included, perturbed so no mapping error can hide behind ones and zeros), saved by
  transformers: whole, and its VJEPA2Model alone in shards with an index file."""
  root = tmp_path_factory.mktemp("hf")
  torch.manual_seed(0)
  config = transformers.VJEPA2Config(
      hidden_size=64, num_hidden_layers=2, num_attention_heads=4, crop_size=64, frames_per_clip=8,
      pred_hidden_size=32, pred_num_hidden_layers=2, pred_num_attention_heads=4,
      pred_num_mask_tokens=3, num_pooler_layers=2,
      id2label=dict(enumerate(CLASSES)), label2id={n: i for i, n in enumerate(CLASSES)})
  model = transformers.VJEPA2ForVideoClassification(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  dirs = {name: root / name for name in ("classifier", "sharded")}
  model.save_pretrained(dirs["classifier"])
  model.vjepa2.save_pretrained(dirs["sharded"], max_shard_size="100KB")
  assert (dirs["sharded"] / "model.safetensors.index.json").exists()
  return dirs


@pytest.fixture(scope="module")
def imported(hf_dirs, tmp_path_factory):
  out = tmp_path_factory.mktemp("imported")
  assert cli(["--from-hf", str(hf_dirs["classifier"]), "--out", str(out / "clf")]) == 0
  assert cli(["--from-hf", str(hf_dirs["sharded"]), "--out", str(out / "sharded")]) == 0
  return out


def test_from_hf_reproduces_transformers_forward(hf_dirs, imported, monkeypatch):
  classifier = transformers.VJEPA2ForVideoClassification.from_pretrained(
      hf_dirs["classifier"]).eval()
  model = classifier.vjepa2  # the VJEPA2Model inside
  enc, pred, params = _build(imported / "clf")
  assert enc.use_rope and (enc.embed_dim, enc.depth, enc.block.num_heads) == (64, 2, 4)
  assert (pred.predictor_embed_dim, pred.depth, pred.block.num_heads, pred.num_mask_tokens) == \
      (32, 2, 4, 3)
  clip = np.random.default_rng(1).normal(size=(2, 8, 64, 64, 3)).astype(np.float32)
  ctx, tgt = _masks(enc.num_tokens, 40, 2)
  want_enc, want_pred = _hf_outputs(model, clip, ctx, tgt)
  got_enc, got_pred = _jax_outputs(enc, pred, params, clip, ctx, tgt)
  np.testing.assert_allclose(got_enc, want_enc, atol=ATOL)
  np.testing.assert_allclose(got_pred, want_pred, atol=ATOL)
  # Its VJEPA2Model saved alone in shards (index + shards) imports to the same parameters.
  _, _, sharded = _build(imported / "sharded")
  for x, y in zip(jax.tree_util.tree_leaves(sharded), jax.tree_util.tree_leaves(
      {k: params[k] for k in sharded})):
    np.testing.assert_array_equal(x, y)

  # The classifier's probe, with its class names, gives transformers' logits on those tokens once
  # its LayerNorms run at transformers' eps; at the reference's eps 1e-5 the difference is small.
  with torch.no_grad():
    logits = classifier(torch.from_numpy(np.ascontiguousarray(
        clip.transpose(0, 1, 4, 2, 3)))).logits.numpy()
  probe_params, probe_config = checkpoint.load_probe(str(imported / "clf" / "probe"))
  assert probe_config == dict(num_classes=3, num_heads=4, mlp_ratio=4.0, depth=3, num_queries=1,
                              embed_dim=64, blocks_on="tokens")
  # predict shows the saved names unless --labels names them.
  assert predict.class_names(None, str(imported / "clf" / "probe"), 3) == CLASSES
  labels = imported / "labels.txt"
  labels.write_text("a\nb\nc\n")
  assert predict.class_names(str(labels), str(imported / "clf" / "probe"), 3) == ["a", "b", "c"]
  np.testing.assert_allclose(_probe_logits(probe_config, probe_params, got_enc, 1e-6,
                                           monkeypatch), logits, atol=ATOL)
  monkeypatch.undo()
  ours = _probe_logits(probe_config, probe_params, got_enc)
  assert 0 < np.max(np.abs(ours - logits)) < 1e-3


# --- jepa_jax -> transformers ----------------------------------------------------------------

@pytest.fixture(scope="module")
def golden_ckpt(golden_v2, tmp_path_factory):
  """The V-JEPA 2 reference's tiny model (golden run) as a jepa_jax checkpoint."""
  params, config = reference.convert_state_dicts(released_v2(golden_v2), "tiny", **TINY2_KW)
  config.data.crop_size, config.data.num_frames = 64, 8
  out = tmp_path_factory.mktemp("golden") / "ckpt"
  reference.save_converted(out, params, config)
  return out, params, config


def test_to_hf_loads_into_transformers_with_equal_outputs(golden_v2, golden_ckpt, tmp_path):
  ckpt, params, _ = golden_ckpt
  # The golden run's encoder outputs are its online encoder's.
  assert cli(["--to-hf", str(tmp_path / "online"), "--ckpt", str(ckpt), "--which", "online"]) == 0
  model, info = transformers.VJEPA2Model.from_pretrained(tmp_path / "online",
                                                         output_loading_info=True)
  _assert_loaded_cleanly(info)
  model.eval()
  assert model.dtype == torch.float32 and model.config.pred_num_mask_tokens == 10
  clip = np.ascontiguousarray(golden_v2["clip"].transpose(0, 2, 3, 4, 1))  # [B, T, H, W, C]
  enc, pred, _ = _build(ckpt)
  ctx, tgt = _masks(enc.num_tokens, 40, clip.shape[0])
  got_enc, got_pred = _hf_outputs(model, clip, ctx, tgt)
  np.testing.assert_allclose(got_enc, golden_v2["out/encoder_full"], atol=2e-5)
  want_enc, want_pred = _jax_outputs(enc, pred, params, clip, ctx, tgt, key="encoder")
  np.testing.assert_allclose(got_enc, want_enc, atol=ATOL)
  np.testing.assert_allclose(got_pred, want_pred, atol=ATOL)

  # The default writes the EMA target encoder; --from-hf reads an export back bit for bit.
  assert cli(["--to-hf", str(tmp_path / "hf"), "--ckpt", str(ckpt)]) == 0
  assert cli(["--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
  back, _ = checkpoint.load_params(str(tmp_path / "back"))
  for group, key in (("encoder", "target"), ("target", "target"), ("predictor", "predictor")):
    for x, y in zip(jax.tree_util.tree_leaves(back[group]), jax.tree_util.tree_leaves(
        params[key])):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert not np.array_equal(params["encoder"]["norm"]["scale"], params["target"]["norm"]["scale"])


def test_probe_to_hf_classifier_with_class_names(golden_v2, golden_ckpt, tmp_path, monkeypatch):
  ckpt, params, _ = golden_ckpt
  cfg = dict(num_classes=3, num_heads=4, depth=3, mlp_ratio=4.0, num_queries=1, embed_dim=112,
             blocks_on="tokens")
  probe_params = _probe_params(cfg)
  checkpoint.save_probe(tmp_path / "probe", probe_params, cfg, class_names=CLASSES)
  labels = tmp_path / "labels.txt"
  labels.write_text("a\nb\nc\n")
  clip = np.ascontiguousarray(golden_v2["clip"].transpose(0, 2, 3, 4, 1))
  args = ["--kind", "probe", "--ckpt", str(tmp_path / "probe"), "--encoder", str(ckpt)]
  assert cli(["--to-hf", str(tmp_path / "hf"), *args]) == 0
  model, info = transformers.VJEPA2ForVideoClassification.from_pretrained(
      tmp_path / "hf", output_loading_info=True)
  _assert_loaded_cleanly(info)
  assert [model.config.id2label[i] for i in range(3)] == CLASSES   # the probe's saved names
  with torch.no_grad():
    logits = model.eval()(torch.from_numpy(np.ascontiguousarray(
        clip.transpose(0, 1, 4, 2, 3)))).logits.numpy()
  enc, _, _ = _build(ckpt)
  tokens = jax.jit(enc.apply)({"params": params["target"]}, clip)
  np.testing.assert_allclose(logits, _probe_logits(cfg, probe_params, tokens, 1e-6, monkeypatch),
                             atol=ATOL)

  # --labels wins; back through --from-hf: the same probe, bit for bit, and the names.
  assert cli(["--to-hf", str(tmp_path / "labelled"), *args, "--labels", str(labels)]) == 0
  assert json.loads((tmp_path / "labelled" / "config.json").read_text())["id2label"] == {
      "0": "a", "1": "b", "2": "c"}
  assert cli(["--from-hf", str(tmp_path / "labelled"), "--out", str(tmp_path / "back")]) == 0
  back, back_cfg = checkpoint.load_probe(str(tmp_path / "back" / "probe"))
  assert back_cfg == cfg and checkpoint.probe_class_names(str(tmp_path / "back" / "probe")) == [
      "a", "b", "c"]
  for x, y in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(probe_params)):
    np.testing.assert_array_equal(x, y)
  # A probe without saved names gets class_i.
  checkpoint.save_probe(tmp_path / "unnamed", probe_params, cfg)
  assert cli(["--to-hf", str(tmp_path / "plain"), "--kind", "probe", "--ckpt",
              str(tmp_path / "unnamed"), "--encoder", str(ckpt)]) == 0
  assert json.loads((tmp_path / "plain" / "config.json").read_text())["id2label"]["2"] == "class_2"


# --- refusals --------------------------------------------------------------------------------

def _refused(capsys, argv, *fragments):
  capsys.readouterr()  # what earlier calls printed (transformers' progress bars)
  assert cli(argv) == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "\n" not in err, err
  for fragment in fragments:
    assert fragment in err, err
  return err


def test_what_transformers_cannot_represent_is_refused_in_one_line(golden_ckpt, hf_dirs, tmp_path,
                                                                   capsys):
  ckpt, params, config = golden_ckpt
  sincos = config.copy_and_resolve_references()
  sincos.model.use_rope = False
  reference.save_converted(tmp_path / "sincos", params, sincos)
  _refused(capsys, ["--to-hf", str(tmp_path / "x"), "--ckpt", str(tmp_path / "sincos")],
           "sin-cos", "RoPE", "--to-torch")

  reference.save_converted(tmp_path / "no_pred", {"encoder": params["encoder"],
                                                  "target": params["target"]}, config)
  _refused(capsys, ["--to-hf", str(tmp_path / "x"), "--ckpt", str(tmp_path / "no_pred")],
           "no predictor", "--encoder-only")
  assert cli(["--to-hf", str(tmp_path / "enc"), "--ckpt", str(tmp_path / "no_pred"),
              "--encoder-only"]) == 0
  _, info = transformers.VJEPA2Model.from_pretrained(tmp_path / "enc", output_loading_info=True)
  assert info["missing_keys"] and all(k.startswith("predictor.") for k in info["missing_keys"])
  assert not info["unexpected_keys"]

  v1_probe = dict(num_classes=3, num_heads=4, depth=2, mlp_ratio=4.0, num_queries=1,
                  embed_dim=112, blocks_on="query")
  checkpoint.save_probe(tmp_path / "v1_probe", _probe_params(v1_probe), v1_probe)
  _refused(capsys, ["--to-hf", str(tmp_path / "x"), "--kind", "probe", "--ckpt",
                    str(tmp_path / "v1_probe"), "--encoder", str(ckpt)], "blocks_on", "--to-torch")
  heads = dict(v1_probe, blocks_on="tokens", num_heads=16)
  checkpoint.save_probe(tmp_path / "heads", _probe_params(heads), heads)
  _refused(capsys, ["--to-hf", str(tmp_path / "x"), "--kind", "probe", "--ckpt",
                    str(tmp_path / "heads")], "--encoder")
  _refused(capsys, ["--to-hf", str(tmp_path / "x"), "--kind", "probe", "--ckpt",
                    str(tmp_path / "heads"), "--encoder", str(ckpt)], "16 heads",
           "num_attention_heads")
  with pytest.raises(SystemExit):
    cli(["--to-hf", str(tmp_path / "x"), "--ckpt", str(ckpt), "--which", "both"])
  assert "one encoder" in capsys.readouterr().err

  for field, value in (("model_type", "vit"), ("hidden_act", "gelu_pytorch_tanh"),
                       ("pred_mlp_ratio", 2.0)):
    bad = tmp_path / f"bad_{field}"
    shutil.copytree(hf_dirs["sharded"], bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg[field] = value
    (bad / "config.json").write_text(json.dumps(cfg))
    _refused(capsys, ["--from-hf", str(bad), "--out", str(tmp_path / "o")], field)
  _refused(capsys, ["--from-hf", str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
           "config.json")


def test_the_package_imports_and_explains_without_transformers(golden_ckpt, tmp_path):
  """jepa_jax (the converter included) imports with transformers and safetensors absent; --to-hf
  then says what to install, in one line."""
  ckpt, _, _ = golden_ckpt
  code = ("import sys; sys.modules['transformers'] = sys.modules['safetensors'] = None\n"
          "import jepa_jax.convert, jepa_jax.convert.hf, jepa_jax.predict\n"
          "from jepa_jax.convert.__main__ import main\n"
          f"sys.exit(main(['--to-hf', {str(tmp_path / 'x')!r}, '--ckpt', {str(ckpt)!r}]))")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo] + sys.path))
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                        timeout=120)
  assert done.returncode == 1, done.stderr
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "pip install 'jepa_jax[hf]'" in last, done.stderr


def test_weights_are_read_as_the_safetensors_library_writes_them(tmp_path):
  """bfloat16 and float16 tensors (as hub files may hold) read as their float32 values; a
  truncated file is refused."""
  from safetensors.torch import save_file
  from jepa_jax.convert import safetensors_io
  from jepa_jax.convert.names import ConversionError
  tensors = {"a": torch.randn(3, 5).to(torch.bfloat16), "b": torch.randn(7).to(torch.float16),
             "c": torch.randn(2, 2, 2)}
  save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
  with safetensors_io.WeightFiles(tmp_path) as files:
    assert files.shapes == {"a": (3, 5), "b": (7,), "c": (2, 2, 2)}
    for name, want in tensors.items():
      got = files.read(name)
      assert got.dtype == np.float32
      np.testing.assert_array_equal(got, want.float().numpy())
  data = (tmp_path / "model.safetensors").read_bytes()
  (tmp_path / "model.safetensors").write_bytes(data[:-4])
  with pytest.raises(ConversionError, match="damaged or truncated"):
    safetensors_io.WeightFiles(tmp_path)


def test_load_reads_only_the_groups_asked_for(golden_ckpt, tmp_path):
  """``checkpoint.load(groups=...)`` (what --to-hf reads: one encoder) on a converted checkpoint
  and on a pretraining train state: those groups, equal to a full load's."""
  import optax
  from jepa_jax.pretrain import train_state  # noqa: PLC0415
  ckpt, _, _ = golden_ckpt
  rng = np.random.default_rng(0)
  tree = lambda: {"w": rng.normal(size=(3, 2)).astype(np.float32)}  # noqa: E731
  state = train_state.TrainState.create(params={"encoder": tree(), "predictor": tree()},
                                        tx=optax.adamw(1e-3), target_params=tree())
  manager = checkpoint.make_manager(str(tmp_path / "pretrain" / "checkpoints"), async_save=False)
  checkpoint.save(manager, 2, state=state, force=True)
  manager.close()
  finetuned = train_state.TrainState.create(params={"encoder": tree(), "head": tree()},
                                            tx=optax.adamw(1e-3))
  manager = checkpoint.make_manager(str(tmp_path / "finetune" / "checkpoints"), async_save=False)
  arch = {"model": {"name": "tiny", "patch_size": 16, "tubelet_size": 2, "use_rope": True},
          "data": {"crop_size": 32, "num_frames": 4}}
  checkpoint.save(manager, 3, state=finetuned, kind=checkpoint.FINETUNE, config=arch, force=True)
  manager.close()
  # A fine-tuned checkpoint has neither: nothing is read, and the export reads its one encoder.
  assert checkpoint.load(str(tmp_path / "finetune"), groups=("target", "predictor")).params == {}
  _, params, config = reference.load_model_checkpoint(str(tmp_path / "finetune"), None,
                                                      "--to-hf", ("target", "predictor"))
  assert set(params) == {"encoder"} and config.model.use_rope
  np.testing.assert_array_equal(params["encoder"]["w"],
                                np.asarray(finetuned.params["encoder"]["w"]))
  for path in (str(ckpt), str(tmp_path / "pretrain")):
    full = checkpoint.load(path).params
    assert set(full) == {"encoder", "predictor", "target"}
    for groups in (("target", "predictor"), ("encoder",)):
      part = checkpoint.load(path, groups=groups).params
      assert set(part) == set(groups)
      for group in groups:
        for x, y in zip(jax.tree_util.tree_leaves(part[group]),
                        jax.tree_util.tree_leaves(full[group])):
          np.testing.assert_array_equal(x, y)
