"""The trainer: resume after SIGKILL, SIGTERM, mesh changes, bad configs, non-finite losses."""
import json
import logging
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jepa_jax import checkpoint, loop, main, nonfinite
from jepa_jax.data import synthetic
from jepa_jax.pretrain import defaults, experiment, trainer

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("synthetic")
  synthetic.ensure_synthetic(str(out), 12, 0)
  return str(out)


def tiny_config(synthetic_dir, steps=8, batch_size=4):
  c = defaults.base_config()
  c.seed = 3
  c.batch_size = batch_size
  c.model.name = "tiny"
  c.model.overrides = {"embed_dim": 32, "depth": 1, "num_heads": 2}
  c.model.pred_embed_dim, c.model.pred_depth = 16, 1
  c.model.dtype = "float32"
  c.data.synthetic_dir = synthetic_dir
  c.data.synthetic_num_videos = 12
  c.data.crop_size, c.data.num_frames = 32, 4
  c.data.num_threads = 1
  c.optim.update(dict(epochs=steps // 4, ipe=4, warmup=1))
  c.log_every = 1
  c.checkpoint.update(dict(every=4, keep=5, keep_period=None))
  return c


def config_flags(c) -> list[str]:
  """The command-line overrides that turn configs/demo.py into ``c`` (for subprocess runs)."""
  o = c.model.overrides
  return [
      "--config=configs/demo.py", f"--config.seed={c.seed}", f"--config.batch_size={c.batch_size}",
      f"--config.model.overrides.embed_dim={o['embed_dim']}",
      f"--config.model.overrides.depth={o['depth']}",
      f"--config.model.overrides.num_heads={o['num_heads']}",
      f"--config.model.pred_embed_dim={c.model.pred_embed_dim}",
      f"--config.model.pred_depth={c.model.pred_depth}",
      f"--config.data.synthetic_dir={c.data.synthetic_dir}",
      f"--config.data.synthetic_num_videos={c.data.synthetic_num_videos}",
      f"--config.data.crop_size={c.data.crop_size}", f"--config.data.num_frames={c.data.num_frames}",
      f"--config.optim.epochs={c.optim.epochs}", f"--config.optim.ipe={c.optim.ipe}",
      f"--config.optim.warmup={c.optim.warmup}", f"--config.log_every={c.log_every}",
      f"--config.checkpoint.every={c.checkpoint.every}", "--config.checkpoint.keep=5",
  ]


def main_cmd(c, workdir):
  return [sys.executable, "-m", "jepa_jax.main", *config_flags(c), f"--workdir={workdir}"]


def single_device_env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = ""
  return env


def losses(workdir) -> dict[int, float]:
  out = {}
  for line in pathlib.Path(workdir, "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    if "loss" in row:
      out[row["step"]] = row["loss"]
  return out


@pytest.mark.slow
def test_sigkill_and_resume_is_bitwise_identical(synthetic_dir, tmp_path):
  c = tiny_config(synthetic_dir, steps=8)
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  env = single_device_env()
  subprocess.run(main_cmd(c, straight), cwd=REPO, env=env, check=True, capture_output=True)

  proc = subprocess.Popen(main_cmd(c, killed), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not (killed / "checkpoints" / "4").exists() and proc.poll() is None:
    assert time.time() < deadline, "no checkpoint at step 4"
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done = checkpoint.make_manager(str(killed / "checkpoints"), read_only=True).latest_step()
  assert done is not None and done < 8, f"the run was not interrupted ({done})"
  subprocess.run(main_cmd(c, killed), cwd=REPO, env=env, check=True, capture_output=True)

  a, _ = checkpoint.load_params(str(straight))
  b, step = checkpoint.load_params(str(killed))
  assert step == 8
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)
  la, lb = losses(straight), losses(killed)
  assert sorted(la) == list(range(1, 9)) and set(lb) == set(la)
  assert all(la[s] == lb[s] for s in la), (la, lb)  # same batches, same masks, same updates


@pytest.mark.slow
def test_restore_onto_other_meshes(synthetic_dir, tmp_path, num_devices):
  if num_devices < 8:
    pytest.skip("needs 8 (simulated) devices")
  c = tiny_config(synthetic_dir, batch_size=8)
  c.mesh.data, c.mesh.fsdp, c.mesh.min_fsdp_size = 2, 4, 64
  exp8 = experiment.build(c)
  state = exp8.init_state(jax.random.PRNGKey(0))
  manager = checkpoint.make_manager(str(tmp_path / "ck"), async_save=False)
  checkpoint.save(manager, 1, state=state, data_state={"next_index": 3}, config=c, force=True)
  manager.wait_until_finished()
  for mesh, devices in (((1, 1), jax.devices()[:1]), ((1, 4), jax.devices()[:4])):
    c2 = tiny_config(synthetic_dir, batch_size=8)
    c2.mesh.data, c2.mesh.fsdp, c2.mesh.min_fsdp_size = *mesh, 64
    exp = experiment.build(c2, devices=devices)
    restored, data_state = checkpoint.restore_train_state(
        manager, 1, exp.sharded_abstract_state)
    assert data_state == {"next_index": 3}
    for x, y in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    qkv = restored.params["encoder"]["stack"]["blocks_0"]["attn"]["qkv"]["kernel"]
    assert len(qkv.sharding.device_set) == len(devices)


def test_checkpoint_of_another_model_is_named(synthetic_dir, tmp_path):
  c = tiny_config(synthetic_dir)
  c.mesh.data = 1
  exp = experiment.build(c, devices=jax.devices()[:1])
  manager = checkpoint.make_manager(str(tmp_path / "checkpoints"), async_save=False)
  checkpoint.save(manager, 4, state=exp.init_state(jax.random.PRNGKey(0)), force=True)
  manager.wait_until_finished()
  other = tiny_config(synthetic_dir)
  other.mesh.data = 1
  other.model.overrides = {"embed_dim": 64, "depth": 1, "num_heads": 2}
  exp2 = experiment.build(other, devices=jax.devices()[:1])
  with pytest.raises(checkpoint.CheckpointError, match=r"params/encoder/.*shape \(32,\).*\(64,\)"):
    checkpoint.restore_train_state(manager, 4, exp2.sharded_abstract_state)
  (tmp_path / "checkpoints" / "4" / "state" / "manifest.ocdbt").write_bytes(b"garbage")
  with pytest.raises(checkpoint.CheckpointError, match="checkpoint 4"):
    checkpoint.restore_train_state(manager, 4, exp.sharded_abstract_state)


@pytest.mark.parametrize("field,value,message", [
    ("data.crop_size", 60, "crop_size=60 is not divisible by config.model.patch_size"),
    ("data.num_frames", 7, "num_frames=7 is not divisible by config.model.tubelet_size"),
    ("batch_size", 3, "batch_size=3 is not divisible"),
    ("batch_size", 0, "batch_size=0 must be a positive number"),
    ("batch_size", -8, "batch_size=-8 must be a positive number"),
    ("data.datasets_weights", (0.5, 0.5), "2 weights for the synthetic set"),
    ("max_consecutive_skips", 0, "config.max_consecutive_skips=0 must be a positive integer"),
    ("grad_accum_steps", 4, "batch_size=4 does not split into config.grad_accum_steps=4 "
     "micro-batches over 2 devices; use a batch that is a multiple of 8"),
    ("grad_accum_steps", 0, "config.grad_accum_steps=0 must be a positive integer"),
    ("model.overrides", {"embed_dim": 30, "depth": 1, "num_heads": 4}, "not divisible by num_heads"),
    ("data.datasets", ["/nonexistent/index.csv"], "index file '/nonexistent/index.csv' does not exist"),
    ("nonfinite", "ignore", "config.nonfinite"),
    ("model.dtype", "float16", "config.model.dtype"),
])
def test_bad_configs_refused_before_compiling(synthetic_dir, field, value, message):
  c = tiny_config(synthetic_dir)
  c.mesh.data = 2
  section, _, name = field.rpartition(".")
  (c[section] if section else c)[name] = value
  with pytest.raises(experiment.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    experiment.validate(c, num_devices=2)


def test_mask_leaving_no_context_refused(synthetic_dir):
  c = tiny_config(synthetic_dir)
  c.masks[1].spatial_scale = (1.0, 1.0)
  with pytest.raises(experiment.ConfigError, match=r"config.masks\[1\] leaves no context"):
    experiment.validate(c, num_devices=1)


def test_mask_whose_union_of_blocks_covers_the_grid_refused():
  """Issue 19: 8 blocks of spatial_scale 1.0 passed (no single block covers the 4x4 grid at the
  aspect extremes) and trained on one context token: their union covers it in 98% of clips."""
  from jepa_jax import cli
  c = cli.load_config(str(REPO / "configs" / "demo.py"), [])
  experiment.validate(c, num_devices=1)  # the paper's masks: 0% and 0.2% of clips
  c.masks[0].spatial_scale = (1.0, 1.0)
  with pytest.raises(experiment.ConfigError,
                     match=r"config.masks\[0\] leaves no context in 98% of clips: its 8 blocks"):
    experiment.validate(c, num_devices=1)
  c.masks[0].spatial_scale = (0.5, 0.5)  # 8 blocks of half the grid: 1% of clips, allowed
  experiment.validate(c, num_devices=1)


def test_cli_reports_config_errors_in_one_line(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "jepa_jax.main", "--config=configs/demo.py",
                         "--config.data.crop_size=60", f"--workdir={tmp_path}"], cwd=REPO,
                        env=single_device_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert "Config error: config.data.crop_size=60 is not divisible" in proc.stderr
  assert "Traceback" not in proc.stderr


def _nonfinite_config(synthetic_dir, **changes):
  c = tiny_config(synthetic_dir, steps=8)
  c.mesh.data = 1
  c.optim.update(dict(start_lr=1e38, lr=1e38, final_lr=1e38))
  c.checkpoint.every = 1000
  c.update(changes)
  return c


def _strict_json(line):
  """json.loads that refuses the non-JSON constants NaN, Infinity and -Infinity."""
  def refuse(name):
    raise ValueError(f"not JSON: {name}")
  return json.loads(line, parse_constant=refuse)


def _rows(workdir):
  return [_strict_json(x) for x in pathlib.Path(workdir, "metrics.jsonl").read_text().splitlines()]


def test_nonfinite_stop_names_the_step_as_logged(synthetic_dir, tmp_path):
  c = _nonfinite_config(synthetic_dir, nonfinite="stop")
  workdir = str(tmp_path / "run")
  with pytest.raises(nonfinite.NonFiniteLossError,
                     match=r"Non-finite loss or gradient at step \d") as e:
    _train_single_device(c, workdir)
  assert checkpoint.make_manager(os.path.join(workdir, "checkpoints"),
                                 read_only=True).latest_step() is None
  named = int(re.search(r"at step (\d+)", str(e.value)).group(1))
  rows = _rows(workdir)  # strict JSON: a non-finite loss is null there, not a bare NaN
  first_bad = min(r["step"] for r in rows if r.get("nonfinite", 0) > 0)
  assert named == first_bad  # 1-based, as in metrics.jsonl and the progress lines
  assert [r["step"] for r in rows if "loss" in r and r["loss"] is None] == [first_bad]


def test_nonfinite_skip_counts_each_step_once_and_stops_after_a_run_of_skips(
    synthetic_dir, tmp_path, caplog):
  """A save used to re-check the pending flag, counting the step before each save twice; a run
  of skips never stopped."""
  c = _nonfinite_config(synthetic_dir, nonfinite="skip", max_consecutive_skips=4)
  c.checkpoint.every = 2
  workdir = str(tmp_path / "run")
  with caplog.at_level(logging.WARNING, logger="jepa_jax.nonfinite"):
    with pytest.raises(nonfinite.NonFiniteLossError, match="4 updates in a row") as e:
      _train_single_device(c, workdir)
  warned = [int(m.group(1)) for r in caplog.records
            for m in [re.search(r"at step (\d+): update skipped", r.getMessage())] if m]
  bad_steps = [r["step"] for r in _rows(workdir) if r.get("nonfinite", 0) > 0]
  assert warned == bad_steps[:4] and len(set(warned)) == 4, (warned, bad_steps)
  assert f"(steps {warned[0]}-{warned[-1]})" in str(e.value)
  assert "config.max_consecutive_skips=4" in str(e.value)
  # The skipped updates left the saved parameters finite.
  params, _ = checkpoint.load_params(workdir)
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params["target"]))


def probe_rows(workdir):
  return [r for r in _rows(workdir) if any(k.startswith("probe/") for k in r)]


def _train_single_device(c, workdir):
  real_build = experiment.build

  def build_one(config, mesh=None, devices=None):
    return real_build(config, mesh, devices=jax.devices()[:1])

  experiment.build, trainer.experiment.build = build_one, build_one
  try:
    return trainer.train(c, workdir)
  finally:
    experiment.build = trainer.experiment.build = real_build


def test_outputs_of_a_run(synthetic_dir, tmp_path, caplog):
  c = tiny_config(synthetic_dir, steps=4)
  c.mesh.data = 1
  workdir = tmp_path / "run"
  metrics = _train_single_device(c, str(workdir))
  assert np.isfinite(metrics["loss"]) and 0 <= metrics["data_wait_fraction"] <= 1
  assert json.loads((workdir / "config.json").read_text())["model"]["name"] == "tiny"
  assert list(workdir.glob("events.out.tfevents.*")), "no TensorBoard summaries"
  rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert {"steps_per_sec", "loss", "lr", "wd", "momentum", "grad_norm/encoder",
          "tokens/context0"} <= set().union(*rows)
  assert checkpoint.read_config(str(workdir))["batch_size"] == 4
  from jepa_jax.pretrain import config as config_lib  # noqa: PLC0415
  assert checkpoint.read_model_spec(str(workdir), 4) == config_lib.model_spec(c)
  # The same command again: the run is complete, so it says so and does nothing else (it said
  # "no unreadable samples in steps 5-4").
  written = (workdir / "metrics.jsonl").read_text()
  caplog.clear()
  with caplog.at_level(logging.INFO, logger="jepa_jax.pretrain.trainer"):
    assert _train_single_device(c, str(workdir)) == {}
  said = [r.getMessage() for r in caplog.records if r.name == "jepa_jax.pretrain.trainer"]
  assert said[-1].startswith("The run is already complete: checkpoint 4 in "), said
  assert not any("unreadable samples" in m or "Resumed" in m for m in said), said
  assert (workdir / "metrics.jsonl").read_text() == written


def test_the_logged_config_is_plain_json_one_line_per_field(synthetic_dir):
  """It was ml_collections' YAML: ~50 lines of !!python/object tags for the masks alone."""
  c = tiny_config(synthetic_dir)
  text = trainer.config_summary(c)
  assert "!!python" not in text and "ml_collections" not in text
  lines = text.splitlines()
  assert len(lines) == len(c) - 1 + len(c.masks)  # masks: one line per entry
  fields = dict(line.strip().split(": ", 1) for line in lines)
  assert json.loads(fields["masks[1]"])["spatial_scale"] == [0.7, 0.7]
  assert json.loads(fields["model"])["overrides"] == {"embed_dim": 32, "depth": 1, "num_heads": 2}
  assert json.loads(fields["batch_size"]) == 4


def test_metrics_jsonl_is_strict_json(tmp_path):
  writer = loop.JsonlWriter(str(tmp_path / "metrics.jsonl"))
  writer.write_scalars(1, {"loss": float("nan"), "grad_norm": float("inf"), "lr": 1e-3})
  writer.write_scalars(2, {"loss": np.float32(0.5)})
  assert _rows(tmp_path) == [{"step": 1, "loss": None, "grad_norm": None, "lr": 1e-3},
                             {"step": 2, "loss": 0.5}]


def test_interrupted_save_leaves_previous_checkpoint_usable(synthetic_dir, tmp_path):
  """A save killed half-way exists only as orbax's temporary directory: it is never picked up."""
  import shutil
  c = tiny_config(synthetic_dir)
  c.mesh.data = 1
  exp = experiment.build(c, devices=jax.devices()[:1])
  state = exp.init_state(jax.random.PRNGKey(0))
  directory = tmp_path / "checkpoints"
  manager = checkpoint.make_manager(str(directory), async_save=False)
  checkpoint.save(manager, 4, state=state, data_state={"next_index": 16}, force=True)
  manager.wait_until_finished()
  partial = directory / "8.orbax-checkpoint-tmp-1795588729"
  shutil.copytree(directory / "4", partial)
  (partial / "commit_success.txt").unlink(missing_ok=True)
  next(partial.glob("state/*")).write_bytes(b"half written")
  reopened = checkpoint.make_manager(str(directory), read_only=True)
  assert reopened.latest_step() == 4
  restored, data_state = checkpoint.restore_train_state(
      reopened, 4, exp.sharded_abstract_state)
  assert data_state == {"next_index": 16} and int(restored.step) == 0


def test_saved_config_is_plain_json(synthetic_dir):
  c = tiny_config(synthetic_dir)
  saved = checkpoint.config_to_json(c)
  assert saved["masks"][1]["num_blocks"] == 2 and saved["masks"][0]["spatial_scale"] == [0.15, 0.15]
  assert saved["model"]["overrides"] == {"embed_dim": 32, "depth": 1, "num_heads": 2}
  import ml_collections
  rebuilt = ml_collections.ConfigDict(saved)
  assert experiment.config_lib.mask_configs(rebuilt)[1].num_blocks == 2


def test_init_from_another_run_or_converted_weights(synthetic_dir, tmp_path):
  c = tiny_config(synthetic_dir)
  c.mesh.data = 1
  exp = experiment.build(c, devices=jax.devices()[:1])
  source = exp.init_state(jax.random.PRNGKey(42))
  params = jax.tree_util.tree_map(np.asarray, {"encoder": source.params["encoder"],
                                                "predictor": source.params["predictor"],
                                                "target": source.target_params})
  checkpoint.save_params(str(tmp_path / "weights"), params, config=c, step=7)
  c.init_from = str(tmp_path / "weights")
  manager = checkpoint.make_manager(str(tmp_path / "fresh" / "checkpoints"))
  state, start, data_state = trainer._init_or_restore(exp, manager, c)
  assert start == 0 and data_state is None and int(state.step) == 0
  for x, y in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(source.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  other = tiny_config(synthetic_dir)
  other.mesh.data = 1
  other.model.overrides = {"embed_dim": 64, "depth": 1, "num_heads": 2}
  other.init_from = c.init_from
  with pytest.raises(checkpoint.CheckpointError, match="config.init_from"):
    trainer._init_or_restore(experiment.build(other, devices=jax.devices()[:1]), manager, other)
  # A fine-tuning checkpoint (encoder + classifier, no predictor) is not a start for pretraining.
  finetuned = checkpoint.make_manager(str(tmp_path / "ft" / "checkpoints"), async_save=False)
  checkpoint.save(finetuned, 3, state={"params": {"encoder": params["encoder"],
                                                  "head": {"bias": np.zeros(4, np.float32)}}},
                  kind=checkpoint.FINETUNE, force=True)
  finetuned.wait_until_finished()
  c.init_from = str(tmp_path / "ft")
  with pytest.raises(checkpoint.CheckpointError, match="is a fine-tuning checkpoint .* start "
                                                        "pretraining from a pretraining or converted"):
    trainer._init_or_restore(exp, manager, c)
  c.init_from_optimizer = True
  with pytest.raises(checkpoint.CheckpointError, match="is a fine-tuning checkpoint"):
    trainer._init_or_restore(exp, manager, c)


def _damage(step_dir: pathlib.Path, kind: str):
  data_files = sorted((step_dir / "state").glob("ocdbt.process_0/d/*"), key=lambda p: p.stat().st_size)
  if kind == "truncated_file":
    big = data_files[-1]
    big.write_bytes(big.read_bytes()[:big.stat().st_size // 2])
  elif kind == "deleted_file":
    data_files[-1].unlink()
  elif kind == "deleted_state_metadata":
    (step_dir / "state" / "_METADATA").unlink()
  elif kind == "deleted_checkpoint_metadata":
    (step_dir / "_CHECKPOINT_METADATA").unlink()


@pytest.fixture(scope="module")
def two_checkpoints(synthetic_dir, tmp_path_factory):
  """A trainer-layout checkpoints directory with steps 4 and 8 (different parameters)."""
  c = tiny_config(synthetic_dir)
  c.mesh.data = 1
  exp = experiment.build(c, devices=jax.devices()[:1])
  directory = tmp_path_factory.mktemp("two") / "checkpoints"
  manager = checkpoint.make_manager(str(directory), async_save=False)
  for step, seed in ((4, 4), (8, 8)):
    checkpoint.save(manager, step, state=exp.init_state(jax.random.PRNGKey(seed)),
                    data_state={"next": step}, config=c, force=True)
  manager.wait_until_finished()
  manager.close()
  return exp, directory


@pytest.mark.parametrize("kind,resumed", [
    ("truncated_file", 4), ("deleted_file", 4), ("deleted_state_metadata", 4),
    ("deleted_checkpoint_metadata", 8),  # orbax reads the step without it: nothing to skip
])
def test_damaged_latest_checkpoint_falls_back_and_is_kept_aside(two_checkpoints, tmp_path, kind,
                                                                resumed, caplog):
  import shutil
  exp, original = two_checkpoints
  directory = tmp_path / "checkpoints"
  shutil.copytree(original, directory)
  _damage(directory / "8", kind)
  manager = checkpoint.make_manager(str(directory))
  with caplog.at_level(logging.WARNING, logger="jepa_jax.checkpoint"):
    state, data_state, step = checkpoint.restore_latest_train_state(
        manager, exp.sharded_abstract_state)
  assert (step, data_state) == (resumed, {"next": resumed})
  expected = exp.init_state(jax.random.PRNGKey(resumed))
  for x, y in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  aside = list(directory.glob("8.corrupt-*"))
  if resumed == 4:
    assert len(aside) == 1 and not (directory / "8").exists() and manager.all_steps() == [4]
    warnings = [r.getMessage() for r in caplog.records if r.name == "jepa_jax.checkpoint"]
    assert len(warnings) == 1 and warnings[0].startswith("Skipped checkpoint 8: checkpoint 8 in ")
    assert f"moved it to {aside[0]}" in warnings[0] and "\n" not in warnings[0]
  else:
    assert not aside and manager.all_steps() == [4, 8]
  manager.close()


def test_garbage_checkpoint_metadata_is_one_warning_line(two_checkpoints, tmp_path, caplog):
  """orbax logged two multi-line ERRORs holding the garbage before restoring anyway."""
  import shutil
  exp, original = two_checkpoints
  directory = tmp_path / "checkpoints"
  shutil.copytree(original, directory)
  garbage = directory / "8" / "_CHECKPOINT_METADATA"
  garbage.write_text("garbage{\nmore garbage\n")
  manager = checkpoint.make_manager(str(directory))
  with caplog.at_level(logging.INFO):
    _, _, step = checkpoint.restore_latest_train_state(manager, exp.sharded_abstract_state)
  manager.close()
  assert step == 8  # orbax reads the step without that file
  assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
  said = [r.getMessage() for r in caplog.records if "_CHECKPOINT_METADATA" in r.getMessage()]
  assert len(said) == 1 and said[0].startswith(f"Ignored checkpoint metadata file {garbage}: it "
                                               "is not JSON"), said
  assert "\n" not in said[0] and "garbage" not in said[0].replace(str(garbage), "")


def test_no_readable_checkpoint_or_another_model_is_an_error_and_moves_nothing(
    two_checkpoints, synthetic_dir, tmp_path):
  import shutil
  exp, original = two_checkpoints
  directory = tmp_path / "checkpoints"
  shutil.copytree(original, directory)
  other = tiny_config(synthetic_dir)
  other.mesh.data = 1
  other.model.overrides = {"embed_dim": 64, "depth": 1, "num_heads": 2}
  exp_other = experiment.build(other, devices=jax.devices()[:1])
  manager = checkpoint.make_manager(str(directory))
  with pytest.raises(checkpoint.CheckpointError, match="shape") as e:
    checkpoint.restore_latest_train_state(manager, exp_other.sharded_abstract_state)
  assert not isinstance(e.value, checkpoint.CorruptCheckpointError)
  for step in (4, 8):
    _damage(directory / str(step), "deleted_file")
  with pytest.raises(checkpoint.CheckpointError, match="no checkpoint in .* can be read"):
    checkpoint.restore_latest_train_state(manager, exp.sharded_abstract_state)
  assert sorted(p.name for p in directory.iterdir()) == ["4", "8"]
  manager.close()


@pytest.mark.slow
def test_resume_over_a_damaged_checkpoint_keeps_each_step_once_and_reports_bad_reads(
    synthetic_dir, tmp_path, caplog):
  """End to end: a run over an index with unreadable entries, its newest checkpoint damaged,
  then the same run again: it resumes from the previous checkpoint, replays the same steps
  (same losses), metrics.jsonl has every step once, and the failed reads are reported per
  logging window and at the end. The online probe monitor rides along (issue 26): probed at steps
  0, 4 and 8, each logged once, with the same accuracies after the resume."""
  good = sorted(pathlib.Path(synthetic_dir, "videos").glob("*.mp4"))[:10]
  index = tmp_path / "index.csv"
  index.write_text("".join(f"{p} 0\n" for p in good) +
                   "".join(f"{tmp_path}/missing{i}.mp4 0\n" for i in range(2)))
  c = tiny_config(synthetic_dir, steps=8)
  c.mesh.data = 1
  c.data.datasets = [str(index)]
  c.data.max_failure_fraction = 0.2  # 2 of 12 bad is above the default 0.1: the run would stop
  # Two synthetic labels of the same 12 clips, ridge and kNN, every 4 steps.
  c.monitor_probe.update(dict(every=4, index="direction,shape", num_clips=12, folds=3,
                              kind="ridge,knn"))
  workdir = tmp_path / "run"
  with caplog.at_level(logging.INFO, logger="jepa_jax.pretrain.trainer"):
    _train_single_device(c, str(workdir))
  first = losses(workdir)
  probed = probe_rows(workdir)
  assert [r["step"] for r in probed] == [0, 4, 8]
  for r in probed:
    for key in ("direction/ridge", "direction/knn", "shape/ridge", "shape/knn"):
      acc = r[f"probe/{key}"]  # 12 clips: a multiple of 100/12
      assert 0 <= acc <= 100 and abs(acc * 12 / 100 - round(acc * 12 / 100)) < 1e-6
    assert r["probe/seconds"] > 0 and 0 < r["probe/time_share"] < 1
  assert "loss" not in probed[0] and "loss" in probed[1]  # step 0: a row of its own
  rows = [r for r in _rows(workdir) if "data/bad_reads" in r]
  assert [r["step"] for r in rows] == list(range(1, 9))  # every logging window
  assert sum(r["data/bad_reads"] for r in rows) == rows[-1]["data/bad_reads_total"] > 0
  assert any("failed reads were replaced by other samples in steps 1-8" in r.getMessage() and
             "'missing'" in r.getMessage() for r in caplog.records)
  _damage(workdir / "checkpoints" / "8", "truncated_file")
  caplog.clear()
  with caplog.at_level(logging.INFO):
    _train_single_device(c, str(workdir))
  messages = [r.getMessage() for r in caplog.records]
  assert any(m.startswith("Skipped checkpoint 8:") for m in messages)
  assert any(m.startswith("Resumed from checkpoint 4") for m in messages)
  steps = [r["step"] for r in _rows(workdir) if "loss" in r]
  assert steps == list(range(1, 9))  # steps 5-8 replayed, each written once
  assert losses(workdir) == first
  again = probe_rows(workdir)  # the probe at 8 replayed once, the same; 0 and 4 kept
  assert [r["step"] for r in again] == [0, 4, 8]
  assert [{k: v for k, v in r.items() if k.count("/") == 2} for r in again] == \
      [{k: v for k, v in r.items() if k.count("/") == 2} for r in probed]
  pairs = [(r["step"], k) for r in _rows(workdir) for k in r if k != "step"]
  assert len(pairs) == len(set(pairs))  # no scalar of any step logged twice
  assert len(list((workdir / "checkpoints").glob("8.corrupt-*"))) == 1
  assert checkpoint.load_params(str(workdir))[1] == 8


@pytest.mark.slow
def test_sigterm_and_resume_continue_the_data_failure_account(synthetic_dir, tmp_path):
  """SIGTERM saves a checkpoint and exits with EXIT_PREEMPTED (75), and (issue 27) a run over an
  index with unreadable entries, SIGTERMed and resumed: the
  known-bad entries and the failed-read total come back from the checkpoint, so nothing is read
  again and ``data/bad_reads_total`` continues (both restarted from zero: the stop rule started
  over after every restart)."""
  good = sorted(pathlib.Path(synthetic_dir, "videos").glob("*.mp4"))[:10] * 2
  index = tmp_path / "index.csv"  # 2 of 22 entries bad: 9%, below the limit
  index.write_text("".join(f"{p} 0\n" for p in good) +
                   "".join(f"{tmp_path}/missing{i}.mp4 0\n" for i in range(2)))
  c = tiny_config(synthetic_dir, steps=400)
  c.checkpoint.every = 1000
  workdir = tmp_path / "run"
  cmd = main_cmd(c, workdir) + [f"--config.data.datasets={index}"]

  def run_until_preempted(rows: int) -> str:
    proc = subprocess.Popen(cmd, cwd=REPO, env=single_device_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not ((workdir / "metrics.jsonl").exists() and len(losses(workdir)) >= rows):
      if proc.poll() is not None:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr.read()[-2000:]}")
      assert time.time() < deadline, "training did not get there"
      time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == main.EXIT_PREEMPTED, err[-2000:]  # launchers requeue on it
    assert "Preemption requested" in err
    return err

  first = run_until_preempted(6)  # 6 batches of 4: the 22 entries were all read
  step = checkpoint.make_manager(str(workdir / "checkpoints"), read_only=True).latest_step()
  assert step is not None and 6 <= step < 400  # saved on SIGTERM (checkpoint.every is 1000)
  saved = json.loads((workdir / "checkpoints" / str(step) / checkpoint.DATA_FAILURES /
                      "process_0-of-1.json").read_text())
  assert saved["bad"] == [20, 21] and saved["bad_reasons"] == ["missing", "missing"]
  assert first.count("skipping sample") == 2
  rows = [r for r in _rows(workdir) if "data/bad_reads" in r]
  assert rows[-1]["step"] == step and rows[-1]["data/bad_reads_total"] == saved["bad_reads"] >= 2

  second = run_until_preempted(step + 3)
  assert "Resumed from checkpoint" in second
  assert "skipping sample" not in second  # the known-bad entries were not read again
  rows = [r for r in _rows(workdir) if "data/bad_reads" in r]
  assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
  totals = np.cumsum([r["data/bad_reads"] for r in rows])
  assert [r["data/bad_reads_total"] for r in rows] == totals.tolist()
  assert totals[-1] > saved["bad_reads"]  # the resumed run met them too, and kept counting


def test_data_failure_account_is_per_process_and_merged_on_another_process_count(tmp_path):
  """Each process restores its own account; after a restart on another number of processes,
  the union of all (known-bad entries are facts about the index, whichever process met them)."""
  cfg = defaults.base_config().data
  manager = checkpoint.make_manager(str(tmp_path / "checkpoints"), async_save=False)
  mine = {"sources": [["i.csv", 10]], "tried": data_failures_tried({0, 2, 4}), "bad": [2],
          "bad_reasons": ["missing"], "bad_reads": 3}
  checkpoint.save(manager, 4, data_failures=mine, force=True)
  manager.wait_until_finished()
  restored = trainer._restored_data_failures(manager, 4, cfg)
  assert (restored.tried, restored.bad, restored.bad_reads) == ({0, 2, 4}, {2: "missing"}, 3)
  assert trainer._restored_data_failures(manager, 0, cfg).tried == set()  # a fresh run
  item = tmp_path / "checkpoints" / "4" / checkpoint.DATA_FAILURES
  (item / "process_0-of-1.json").rename(item / "process_0-of-2.json")
  other = {**mine, "tried": data_failures_tried({1, 3}), "bad": [3], "bad_reasons": ["open_error"],
           "bad_reads": 1}
  (item / "process_1-of-2.json").write_text(json.dumps(other))
  merged = trainer._restored_data_failures(manager, 4, cfg)
  assert merged.tried == {0, 1, 2, 3, 4} and merged.bad == {2: "missing", 3: "open_error"}
  manager.close()


def data_failures_tried(entries):
  from jepa_jax.data import failures
  t = failures.FailureTracker()
  t.tried = set(entries)
  return t.state()["tried"]
