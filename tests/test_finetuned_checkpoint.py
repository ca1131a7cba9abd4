"""Checkpoints tagged by kind: a fine-tuned encoder evaluates, extracts, predicts (with its own
head) and converts like a pretrained one; untagged (older) checkpoints are read by their tree; a
program refuses to resume another program's kind, in one line."""
import json
import os
import shutil

import jax
import numpy as np
import optax
import pytest

from jepa_jax import checkpoint as ckpt_lib
from jepa_jax import models
from jepa_jax.data import sources
from jepa_jax.eval import config as eval_config_lib
from jepa_jax.eval import encoder as enc_lib
from jepa_jax.finetune import run as ft_run
from jepa_jax.pretrain import train_state
from test_finetune import SYNTHETIC_VIDEOS, TINY, tiny_config

STEPS = 2


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
  """``(workdir, fine-tuning config, results)`` of a 2-step tiny fine-tuning run (linear head)."""
  from jepa_jax.data import synthetic  # noqa: PLC0415
  root = tmp_path_factory.mktemp("finetuned")
  data = str(root / "synthetic")
  synthetic.ensure_synthetic(data, SYNTHETIC_VIDEOS, seed=0)
  c = tiny_config(data, epochs=1, steps_per_epoch=STEPS, eval_every=0, log_every=0)
  c.save.every = STEPS
  workdir = str(root / "ft")
  results = ft_run.finetune(c, workdir)
  return workdir, c, results


def saved_state_params(workdir):
  import orbax.checkpoint as ocp  # noqa: PLC0415
  return ocp.PyTreeCheckpointer().restore(
      os.path.join(workdir, "checkpoints", str(STEPS), "state"))["params"]


def assert_trees_equal(a, b):
  fa, fb = (dict(jax.tree_util.tree_flatten_with_path(t)[0]) for t in (a, b))
  assert set(fa) == set(fb)
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=str(k))


def val_videos(c):
  val = sources.read_index(os.path.join(c.data.synthetic_dir, f"val_{c.synthetic_label}.csv"))
  return [val.path(i) for i in range(len(val))], [val.label(i) for i in range(len(val))]


def encoder_config(workdir):
  """An eval config reading the encoder's architecture from the checkpoint alone."""
  c = eval_config_lib.base_eval_config()
  c.checkpoint, c.encoder_dtype = workdir, "float32"
  c.data.crop_size, c.data.num_frames, c.data.frame_step, c.data.num_threads = 32, 4, 2, 1
  return c


# ------------------------------------------------------------------ the tag and the loader


def test_finetuning_checkpoint_is_tagged_and_loads_encoder_and_head(finetuned):
  workdir, _, _ = finetuned
  assert ckpt_lib.checkpoint_kind(workdir) == ckpt_lib.FINETUNE
  loaded = ckpt_lib.load(workdir)
  assert (loaded.kind, loaded.step, sorted(loaded.params)) == ("finetune", STEPS,
                                                               ["encoder", "head"])
  assert_trees_equal(loaded.params, saved_state_params(workdir))
  saved = ckpt_lib.read_config(workdir)
  assert saved["model"]["name"] == "tiny" and saved["model"]["overrides"] == TINY
  assert saved["num_classes"] == loaded.params["head"]["head"]["bias"].shape[0]
  # The fine-tuned encoder's spec, at the fine-tuning clips: it rebuilds the saved encoder.
  spec = ckpt_lib.read_model_spec(workdir, STEPS)
  assert (spec.name, dict(spec.overrides), spec.img_size, spec.predictor) == ("tiny", TINY, 32,
                                                                               None)
  ckpt_lib.check_shapes(loaded.params["encoder"],
                        models.abstract_params(models.from_spec(spec)[0]), "fine-tuned")


def tiny_pretrain_state():
  enc = models.build_encoder("tiny", img_size=32, num_frames=4, patch_size=16, tubelet_size=2,
                             **TINY)
  pred = models.build_predictor(enc, embed_dim=16, depth=1)
  return jax.jit(train_state.make_init_fn(enc, pred, optax.adamw(1e-3)))(jax.random.PRNGKey(0))


def untag(workdir, dst):
  """A copy of ``workdir``'s checkpoints without their ``kind`` and ``model_spec`` items: a
  checkpoint as written before either existed."""
  shutil.copytree(ckpt_lib.checkpoint_dir(workdir), dst)
  for step in os.listdir(dst):
    for item in (ckpt_lib.KIND, ckpt_lib.MODEL_SPEC):
      shutil.rmtree(os.path.join(dst, step, item), ignore_errors=True)
  return str(dst)


def test_untagged_checkpoints_are_read_by_their_tree(finetuned, tmp_path):
  workdir, _, _ = finetuned
  old_ft = untag(workdir, tmp_path / "ft")
  assert ckpt_lib.checkpoint_kind(old_ft) == ckpt_lib.FINETUNE
  loaded = ckpt_lib.load(old_ft)
  assert loaded.kind == ckpt_lib.FINETUNE
  assert_trees_equal(loaded.params, ckpt_lib.load(workdir).params)

  state = tiny_pretrain_state()
  manager = ckpt_lib.make_manager(str(tmp_path / "pre" / "checkpoints"), async_save=False)
  ckpt_lib.save(manager, 5, state=state, force=True)
  manager.wait_until_finished()
  manager.close()
  old_pre = untag(tmp_path / "pre", tmp_path / "pre_old")
  loaded = ckpt_lib.load(old_pre)
  assert (loaded.kind, sorted(loaded.params)) == ("pretrain", ["encoder", "predictor", "target"])
  assert_trees_equal(loaded.params["target"], jax.device_get(state.target_params))

  ckpt_lib.save_params(str(tmp_path / "conv"), {"encoder": loaded.params["encoder"]}, step=1)
  assert ckpt_lib.checkpoint_kind(str(tmp_path / "conv")) == ckpt_lib.PARAMS
  old_conv = untag(tmp_path / "conv", tmp_path / "conv_old")
  assert ckpt_lib.load(old_conv).kind == ckpt_lib.PARAMS

  ckpt_lib.save_probe(str(tmp_path / "probe"), {"linear": {"bias": np.zeros(3, np.float32)}},
                      dict(num_classes=3, num_heads=2, mlp_ratio=4.0, depth=1, num_queries=1,
                           embed_dim=32, blocks_on="query"))
  assert ckpt_lib.checkpoint_kind(str(tmp_path / "probe")) == ckpt_lib.PROBE
  old_probe = untag(tmp_path / "probe", tmp_path / "probe_old")
  assert ckpt_lib.checkpoint_kind(old_probe) == ckpt_lib.PROBE
  with pytest.raises(ckpt_lib.CheckpointError, match="is an attentive probe, which holds no "
                                                      "encoder"):
    ckpt_lib.load(old_probe)


def test_an_untagged_finetuning_checkpoint_finds_its_architecture_where_it_started(
    finetuned, tmp_path):
  """Fine-tuning checkpoints written before the tag saved the fine-tuning config's ``model``,
  which leaves the architecture to the pretrained checkpoint named by ``checkpoint``."""
  workdir, _, _ = finetuned
  encoder = ckpt_lib.load(workdir).params["encoder"]
  pretrained = str(tmp_path / "pretrained")
  ckpt_lib.save_params(pretrained, {"encoder": encoder},
                       config={"model": ckpt_lib.read_config(workdir)["model"]}, step=1)
  old = untag(workdir, tmp_path / "old")
  config_file = os.path.join(old, str(STEPS), ckpt_lib.CONFIG, "metadata")
  saved = json.load(open(config_file))
  saved["model"] = dict.fromkeys(saved["model"])  # the eval's model_config(): all None
  saved["checkpoint"] = pretrained
  json.dump(saved, open(config_file, "w"))
  _, params, info = enc_lib.load_frozen_encoder(encoder_config(old))
  assert info["model"]["name"] == "tiny" and info["model"]["overrides"] == TINY
  assert_trees_equal(params, encoder)


def test_resuming_another_programs_kind_is_refused_in_one_line(finetuned, tmp_path):
  workdir, c, _ = finetuned
  manager = ckpt_lib.make_manager(ckpt_lib.checkpoint_dir(workdir), read_only=True,
                                  async_save=False)
  with pytest.raises(ckpt_lib.CheckpointError) as e:
    ckpt_lib.restore_latest_train_state(manager, None)  # pretraining's resume
  assert "is a fine-tuning (python -m jepa_jax.finetune) checkpoint, which a pretraining" in str(e.value)
  assert "give this run another --workdir" in str(e.value) and "\n" not in str(e.value)

  manager = ckpt_lib.make_manager(str(tmp_path / "pre" / "checkpoints"), async_save=False)
  ckpt_lib.save(manager, 5, state=tiny_pretrain_state(), force=True)
  manager.wait_until_finished()
  with pytest.raises(ckpt_lib.CheckpointError) as e:
    ft_run.finetune(c, str(tmp_path / "pre"))  # fine-tuning resumed in a pretraining workdir
  assert "is a pretraining (python -m jepa_jax.main) checkpoint, which a fine-tuning" in str(e.value)
  assert "set config.checkpoint to it" in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------ every reader


def test_eval_trains_a_probe_on_the_finetuned_encoder(finetuned, tmp_path):
  from jepa_jax.eval import run as eval_run  # noqa: PLC0415
  workdir, ft_c, _ = finetuned
  c = encoder_config(workdir)
  c.checkpoint_key = "online"  # a fine-tuned checkpoint's one encoder, whichever key
  _, params, info = enc_lib.load_frozen_encoder(c)
  assert_trees_equal(params, saved_state_params(workdir)["encoder"])
  assert info["kind"] == "finetune" and info["step"] == STEPS
  c.task, c.probe.dtype = "test", "float32"
  c.train_index = c.val_index = ""
  c.data.synthetic_dir, c.data.synthetic_num_videos = ft_c.data.synthetic_dir, SYNTHETIC_VIDEOS
  c.synthetic_label, c.num_classes = "direction", None
  c.num_segments, c.num_views, c.epochs, c.batch_size, c.log_every = 1, 1, 1, 8, 0
  results = eval_run.evaluate(c, str(tmp_path))
  assert results["step"] == STEPS and results["checkpoint"] == workdir
  assert 0 <= results["accuracy"]["top1"] <= 100
  assert json.load(open(tmp_path / "results.json"))["step"] == STEPS


def test_extract_reads_the_finetuned_encoder(finetuned, tmp_path):
  """The features of the fine-tuning checkpoint are those of its encoder saved as converted
  weights."""
  from jepa_jax.extract import __main__ as extract_cli  # noqa: PLC0415
  workdir, c, _ = finetuned
  encoder = ckpt_lib.load(workdir).params["encoder"]
  ckpt_lib.save_params(str(tmp_path / "as_params"), {"encoder": encoder, "target": encoder},
                       config={"model": ckpt_lib.read_config(workdir)["model"]}, step=1)
  videos = val_videos(c)[0][:2]
  flags = ["--frames", "4", "--frame-step", "2", "--resolution", "32", "--batch-size", "2",
           "--workers", "1"]
  feats = {}
  for name, ckpt in (("ft", workdir), ("params", str(tmp_path / "as_params"))):
    out = tmp_path / name
    assert extract_cli.main(["--checkpoint", ckpt, "--out", str(out), *flags, *videos]) == 0
    index = [json.loads(line) for line in open(out / "index.jsonl")]
    feats[name] = [np.load(out / r["file"]) for r in index]
    assert len(feats[name]) == 2
  for a, b in zip(feats["ft"], feats["params"]):
    np.testing.assert_array_equal(a, b)
  assert json.load(open(tmp_path / "ft" / "meta.json"))["step"] == STEPS


def test_predict_with_the_finetuned_head_repeats_the_finetuning_test(finetuned, tmp_path, capsys):
  """Without --probe, predict classifies with the fine-tuned head and the run's test protocol
  (2 segments x 3 views): its top-1 over the validation videos is the run's final top-1."""
  from jepa_jax import predict  # noqa: PLC0415
  workdir, c, results = finetuned
  videos, labels = val_videos(c)
  out = tmp_path / "pred.json"
  assert predict.main(["--checkpoint", workdir, "--encoder-dtype", "float32", "--batch-size",
                       "4", "--json", str(out), *videos]) == 0
  preds = json.load(open(out))["predictions"]
  assert [p["video"] for p in preds] == videos
  top1 = 100.0 * np.mean([p["top"][0]["class"] == y for p, y in zip(preds, labels)])
  assert top1 == pytest.approx(results["accuracy"]["top1"])
  assert all(abs(sum(t["prob"] for t in p["top"]) - 1.0) < 1e-4 for p in preds
             if len(p["top"]) == results["num_classes"])
  conv = tmp_path / "conv"
  encoder = ckpt_lib.load(workdir).params["encoder"]
  ckpt_lib.save_params(str(conv), {"encoder": encoder},
                       config={"model": ckpt_lib.read_config(workdir)["model"]}, step=1)
  assert predict.main(["--checkpoint", str(conv), videos[0]]) == 1
  assert "--probe is needed" in capsys.readouterr().err


def test_convert_writes_the_finetuned_encoder_in_the_reference_format(finetuned, tmp_path):
  pytest.importorskip("torch")
  from jepa_jax import convert  # noqa: PLC0415
  from jepa_jax.convert import __main__ as convert_cli  # noqa: PLC0415
  workdir, _, _ = finetuned
  out = tmp_path / "ft.pth.tar"
  assert convert_cli.main(["--to-torch", "--ckpt", workdir, "--out", str(out)]) == 0
  back, config = convert.load_torch_checkpoint(str(out), "tiny", encoder_only=True, **TINY)
  assert config.data.crop_size == 32 and config.data.num_frames == 4
  encoder = ckpt_lib.load(workdir).params["encoder"]
  assert_trees_equal(back["encoder"], encoder)
  assert_trees_equal(back["target"], encoder)
