"""The command line: paths resolved in one place, overrides of every README field (lists, None
fields, mask entries), unknown fields named in one line, one-line errors with the traceback in
the workdir's log."""
import errno
import json
import logging
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from jepa_jax import checkpoint, cli, paths
from jepa_jax.eval import config as eval_config
from jepa_jax.pretrain import defaults

REPO = pathlib.Path(__file__).resolve().parents[1]
from test_readme import readme_commands


# --- paths ------------------------------------------------------------------------------------

def test_local_paths_become_absolute_remote_paths_stay(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert paths.resolve("workdir/demo") == str(tmp_path / "workdir" / "demo")
  assert paths.resolve("~/x") == os.path.join(os.path.expanduser("~"), "x")
  for remote in ("gs://bucket/run", "s3://bucket/run/", "hdfs://host/x"):
    assert paths.resolve(remote) == remote and paths.is_remote(remote)
  assert paths.resolve(None) is None and paths.resolve("") == ""
  assert paths.resolve_source("tfds:ucf101@train") == "tfds:ucf101@train"
  assert paths.resolve_source("idx.csv") == str(tmp_path / "idx.csv")
  assert checkpoint.checkpoint_dir("gs://b/run") == "gs://b/run/checkpoints"
  assert checkpoint.checkpoint_dir("gs://b/run/checkpoints") == "gs://b/run/checkpoints"
  (tmp_path / "rel" / "checkpoints").mkdir(parents=True)
  assert checkpoint.checkpoint_dir("rel") == str(tmp_path / "rel" / "checkpoints")


def test_relative_checkpoint_paths_save_and_load(tmp_path, monkeypatch):
  """orbax 0.12 refuses relative paths ("Checkpoint path should be absolute"): the README's
  relative --workdir crashed at the first save, and eval/convert on it failed to load."""
  import numpy as np
  monkeypatch.chdir(tmp_path)
  params = {"encoder": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}}
  manager = checkpoint.make_manager("run/checkpoints", async_save=False)
  checkpoint.save(manager, 3, params=params, force=True)
  manager.wait_until_finished()
  manager.close()
  loaded, step = checkpoint.load_params("run")
  assert step == 3 and (loaded["encoder"]["w"] == params["encoder"]["w"]).all()
  checkpoint.save_params("weights/w", params, step=5)
  assert checkpoint.load_params("weights/w")[1] == 5


def test_config_paths_resolved_at_the_boundary(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = cli.load_config(str(REPO / "configs" / "demo.py"), [
      "--config.init_from=weights/vith16",
      "--config.data.datasets=(\"a.csv\",\"tfds:ucf101@train\",\"gs://b/c.csv\")"])
  defaults.resolve_paths(config)
  assert config.init_from == str(tmp_path / "weights" / "vith16")
  assert list(config.data.datasets) == [str(tmp_path / "a.csv"), "tfds:ucf101@train",
                                        "gs://b/c.csv"]
  assert config.data.synthetic_dir == str(tmp_path / "data" / "synthetic")


def test_eval_and_convert_resolve_their_paths(tmp_path, monkeypatch):
  from jepa_jax.convert.__main__ import parse_args
  monkeypatch.chdir(tmp_path)
  config = cli.load_config(str(REPO / "configs" / "eval" / "demo.py"),
                           ["--config.checkpoint=runs/pretrain"])
  eval_config.resolve_paths(config)
  assert config.checkpoint == str(tmp_path / "runs" / "pretrain")
  random = cli.load_config(str(REPO / "configs" / "eval" / "demo.py"), ["--config.checkpoint=random"])
  eval_config.resolve_paths(random)
  assert random.checkpoint == "random"  # a keyword, not a path
  args = parse_args(["--to-torch", "--ckpt", "workdir/demo", "--out", "demo.pth.tar"])
  assert (args.ckpt, args.out) == (str(tmp_path / "workdir" / "demo"), str(tmp_path / "demo.pth.tar"))
  args = parse_args(["--from-torch", "gs://b/vith16.pth.tar", "--out", "weights/vith16"])
  assert (args.from_torch, args.out) == ("gs://b/vith16.pth.tar", str(tmp_path / "weights" / "vith16"))


# --- overrides --------------------------------------------------------------------------------

MAIN_CONFIG = str(REPO / "configs" / "demo.py")


@pytest.mark.parametrize("flag,field,value", [
    ('--config.data.datasets=("/data/k710.csv","/data/ssv2.csv")', "data.datasets",
     ["/data/k710.csv", "/data/ssv2.csv"]),
    ("--config.data.datasets=/data/k710.csv", "data.datasets", ["/data/k710.csv"]),
    ("--config.data.datasets_weights=(0.7,0.3)", "data.datasets_weights", (0.7, 0.3)),
    ("--config.init_from=weights/vith16", "init_from", "weights/vith16"),
    ("--config.masks[0].num_context=24", "masks[0].num_context", 24),
    ("--config.masks[1].spatial_scale=0.6", "masks[1].spatial_scale", (0.6,)),
    ("--config.checkpoint.keep_period=5000", "checkpoint.keep_period", 5000),
    ("--config.data.tfds_data_dir=/data/tfds", "data.tfds_data_dir", "/data/tfds"),
])
def test_list_and_none_fields_from_the_command_line(flag, field, value):
  from ml_collections.config_flags import config_path
  config = cli.load_config(MAIN_CONFIG, [flag])
  got = config_path.get_value(field, config)
  assert got == value and type(got) is type(value), (got, value)


def test_a_mask_entry_set_from_the_command_line_reaches_the_masks():
  from jepa_jax.pretrain import config as config_lib, experiment  # noqa: PLC0415
  config = cli.load_config(MAIN_CONFIG, ["--config.masks[0].num_context=24",
                                         "--config.masks[1].spatial_scale=0.6"])
  experiment.validate(config, num_devices=1)
  cfgs = config_lib.mask_configs(config)
  assert cfgs[0].num_context == 24 and cfgs[1].spatial_scale == (0.6, 0.6)


@pytest.mark.parametrize("flag,message", [
    ("--config.optim.lrr=1", "unknown config field config.optim.lrr; did you mean config.optim.lr?"),
    ("--config.optimm.lr=1", "unknown config field config.optimm (in --config.optimm.lr); did you "
                             "mean config.optim?"),
    ("--config.masks[0].num_contxt=5", "did you mean config.masks[0].num_context"),
    ("--config.masks[2].num_context=5", "config.masks has 2 entries"),
])
def test_unknown_fields_are_named_with_close_matches(flag, message):
  with pytest.raises(ValueError) as e:
    cli.load_config(MAIN_CONFIG, [flag])
  assert message in str(e.value) and "\n" not in str(e.value)


def _readme_overrides():
  """Every ``--config.X=V`` the README shows, in code blocks and in the text, with the config
  file it applies to: the command's own ``--config=``, else the section's (the frozen-evaluation
  section's eval config, the fine-tuning section's demo config, the pretraining config
  elsewhere)."""
  found = set()
  for section in re.split(r"\n(?=## )", (REPO / "README.md").read_text()):
    default = ("configs/eval/k400.py" if section.startswith("## Frozen evaluation")
               else "configs/finetune/demo.py" if section.startswith("## Fine-tuning")
               else "configs/vith16.py")
    spans = re.findall(r"```bash\n(.*?)\n```", section, re.S)
    spans += re.findall(r"`([^`\n]*--config\.[^`\n]*)`", re.sub(r"```.*?```", "", section, flags=re.S))
    for span in spans:
      tokens = shlex.split(span.replace("\\\n", " "))
      config_file = next((t.split("=", 1)[1] for t in tokens if t.startswith("--config=")), default)
      found.update((config_file, t) for t in tokens if t.startswith("--config."))
  return sorted(found)


def test_readme_shows_the_documented_overrides():
  shown = " ".join(flag for _, flag in _readme_overrides())
  for field in ("data.datasets=", "data.datasets_weights=", "init_from=", "masks[0].num_context=",
                "checkpoint="):
    assert f"--config.{field}" in shown, field


@pytest.mark.parametrize("config_file,override", _readme_overrides())
def test_every_readme_override_parses(config_file, override):
  """Parsed as the entry points parse them, into the config file the README uses it with."""
  from ml_collections.config_flags import config_path
  path, _, text = override[len("--config."):].partition("=")
  config = cli.load_config(str(REPO / config_file), [override])
  got = config_path.get_value(path, config)
  want = cli.LiteralOrTextParser().parse(text)
  if isinstance(got, (list, tuple)):
    want = list(want) if isinstance(want, (list, tuple)) else [want]
    got = list(got)
  assert got == want, (override, got)


# --- one-line errors --------------------------------------------------------------------------

def test_disk_full_is_explained_in_one_line():
  err = OSError(errno.ENOSPC, "No space left on device", "/run/checkpoints/4/x")
  assert cli.explain(err, "/run").startswith(
      "Disk full: no space left on the device holding /run/checkpoints/4/x; free some space")
  # What orbax/tensorstore raise (measured on a full 600 KB tmpfs):
  ts = ValueError('RESOURCE_EXHAUSTED: Error writing "opt_state.1.mu" in OCDBT database at local '
                  'file "/w/checkpoints/4.orbax-checkpoint-tmp/state/": Failed writing: '
                  '"/w/checkpoints/4.orbax-checkpoint-tmp/state/d/28": Failed to write 214449 bytes '
                  "to file 5: No space left on device [os_error_code='28']")
  try:
    raise RuntimeError("save failed") from ts
  except RuntimeError as wrapped:
    assert "device holding /w/checkpoints/4.orbax-checkpoint-tmp/state/" in cli.explain(wrapped, "/w")
  assert cli.explain(KeyError("a bug"), "/w") is None


def _env():
  env = dict(os.environ, XLA_FLAGS="", PYTHONPATH=str(REPO))
  return env


def _run_main(args, cwd=REPO, timeout=300, prefix=()):
  cmd = [*prefix, sys.executable, "-m", "jepa_jax.main", *args]
  return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _assert_one_line(proc, *needles):
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 1, proc.stderr[-3000:]
  last = lines[-1]
  for needle in needles:
    assert needle in last, (needle, last)
  assert not last.startswith(("Traceback", "  File", "E1", "W1", "I1")), last
  return last


def _can_mount_tmpfs():
  try:
    return subprocess.run(["unshare", "-r", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                          capture_output=True, timeout=30).returncode == 0
  except (OSError, subprocess.SubprocessError):
    return False


def _in_tmpfs(directory, options):
  """A command prefix running the rest in a private mount namespace with a small tmpfs on
  ``directory`` (no privileges needed where user namespaces are allowed)."""
  return ["unshare", "-r", "-m", "sh", "-c",
          f'mount -t tmpfs -o {options} tmpfs "{directory}" && exec "$@"', "sh"]


def test_config_typo_in_one_line():
  proc = _run_main(["--config=configs/demo.py", "--config.optim.lrr=1", "--workdir=/nonexistent"])
  assert proc.stderr.strip() == ("Config error: unknown config field config.optim.lrr; did you "
                                 "mean config.optim.lr?"), proc.stderr[-2000:]
  assert proc.returncode == 1


def test_batch_size_refused_before_anything_is_created(tmp_path):
  workdir = tmp_path / "run"
  proc = _run_main(["--config=configs/demo.py", "--config.batch_size=0", f"--workdir={workdir}"])
  _assert_one_line(proc, "Config error: config.batch_size=0 must be a positive number")
  assert not workdir.exists()


def test_a_mask_the_grid_cannot_hold_refused_before_anything_is_created(tmp_path):
  """The README's override syntax with a size the demo's 64-token grid cannot hold: one line
  naming the field and the range, before the workdir exists (it was a traceback from tracing)."""
  workdir = tmp_path / "run"
  proc = _run_main(["--config=configs/demo.py", "--config.masks[0].num_context=96",
                    f"--workdir={workdir}"])
  last = _assert_one_line(proc, "Config error: config.masks[0].num_context=96 must be in [1, 64]")
  assert proc.stderr.strip() == last and "Traceback" not in proc.stderr
  assert not workdir.exists()


def test_a_missing_init_from_refused_before_anything_is_created(tmp_path):
  """It was refused only after the workdir was made and the config printed."""
  workdir = tmp_path / "run"
  proc = _run_main(["--config=configs/demo.py", f"--config.init_from={tmp_path}/no_such_run",
                    f"--workdir={workdir}"])
  last = _assert_one_line(proc, f"Config error: config.init_from={tmp_path}/no_such_run does not "
                          "exist")
  assert proc.stderr.strip() == last
  assert not workdir.exists()


def test_tensorstore_callbacks_into_a_closed_loop_are_kept_off_the_console(tmp_path, capsys,
                                                                          monkeypatch):
  """After a failed orbax read (a damaged checkpoint the trainer falls back from), tensorstore's
  reads still in flight call back into the asyncio loop orbax has closed: "Event loop is closed"
  errors that Python ignores. They go to the log file only; other ignored errors keep their one
  console line."""
  import asyncio
  import types
  loop = asyncio.new_event_loop()
  loop.close()
  try:
    loop.call_soon_threadsafe(lambda: None)  # what tensorstore's completion callback does
  except RuntimeError as e:
    closed = types.SimpleNamespace(exc_type=RuntimeError, exc_value=e, exc_traceback=e.__traceback__,
                                   err_msg=None, object=None)
  log = tmp_path / "log.txt"
  monkeypatch.setattr(cli, "_log_path", str(log))
  monkeypatch.setattr(cli, "_unraisable_reported", False)
  handler = cli._LogFile(str(log))
  cli._TRACEBACKS.addHandler(handler)
  try:
    cli._unraisablehook(closed)
    assert capsys.readouterr().err == ""
    handler.flush()
    assert "Event loop is closed" in log.read_text()
    other = RuntimeError("Event loop is closed")  # the same words raised elsewhere: reported
    cli._unraisablehook(types.SimpleNamespace(exc_type=RuntimeError, exc_value=other,
                                              exc_traceback=None, err_msg=None, object=None))
    assert capsys.readouterr().err.startswith("Ignored errors in library callbacks")
  finally:
    cli._TRACEBACKS.removeHandler(handler)
    handler.close()


def test_unusable_workdirs_in_one_line(tmp_path):
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  proc = _run_main(["--config=configs/demo.py", f"--workdir={a_file}"])
  _assert_one_line(proc, f"Workdir error: --workdir={a_file} is a file, not a directory")
  if os.geteuid() != 0:
    read_only = tmp_path / "ro"
    read_only.mkdir(mode=0o555)
    prefix = ()
  elif _can_mount_tmpfs():
    read_only = tmp_path / "ro"
    read_only.mkdir()
    prefix = _in_tmpfs(read_only, "ro,size=64k")
  else:
    pytest.skip("root without mount namespaces: a read-only directory cannot be made")
  proc = _run_main(["--config=configs/demo.py", f"--workdir={read_only}/run"], prefix=prefix)
  _assert_one_line(proc, f"Workdir error: cannot create --workdir={read_only}/run",
                   "choose a writable location")


def _tiny_run_flags(synthetic_dir, steps=8):
  """configs/demo.py shrunk to a few seconds of training (the trainer tests' tiny model)."""
  return ["--config=configs/demo.py", "--config.batch_size=4",
          "--config.model.overrides.embed_dim=32", "--config.model.overrides.depth=1",
          "--config.model.overrides.num_heads=2", "--config.model.pred_embed_dim=16",
          "--config.model.pred_depth=1", f"--config.data.synthetic_dir={synthetic_dir}",
          "--config.data.synthetic_num_videos=12", "--config.data.crop_size=32",
          "--config.data.num_frames=4", "--config.data.num_threads=1",
          f"--config.optim.epochs={steps // 4}", "--config.optim.ipe=4",
          "--config.optim.warmup=1", "--config.log_every=1", "--config.checkpoint.every=4"]


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
  from jepa_jax.data import synthetic
  out = tmp_path_factory.mktemp("synthetic")
  synthetic.ensure_synthetic(str(out), 12, 0)
  return str(out)


def _assert_traceback_in_log(workdir):
  log = pathlib.Path(workdir, "log.txt").read_text()
  assert "Traceback (most recent call last)" in log


@pytest.mark.slow
def test_data_errors_in_one_line(synthetic_dir, tmp_path):
  empty = tmp_path / "empty.csv"
  empty.write_text("")
  proc = _run_main([*_tiny_run_flags(synthetic_dir), f"--config.data.datasets={empty}",
                    f"--workdir={tmp_path / 'run_empty'}"])
  _assert_one_line(proc, "Data error:", f"{empty} holds no samples")
  _assert_traceback_in_log(tmp_path / "run_empty")
  missing = tmp_path / "wrong_prefix.csv"
  missing.write_text("".join(f"/no/such/mount/v{i}.mp4 0\n" for i in range(80)))
  proc = _run_main([*_tiny_run_flags(synthetic_dir), f"--config.data.datasets={missing}",
                    f"--workdir={tmp_path / 'run_missing'}"])
  _assert_one_line(proc, "Data error:", "'missing'", "wrong path prefix")
  _assert_traceback_in_log(tmp_path / "run_missing")


@pytest.mark.slow
def test_a_run_of_skipped_updates_stops_in_one_line(synthetic_dir, tmp_path):
  proc = _run_main([*_tiny_run_flags(synthetic_dir), "--config.optim.start_lr=1e38",
                    "--config.optim.lr=1e38", "--config.optim.final_lr=1e38",
                    "--config.nonfinite=skip", "--config.max_consecutive_skips=2",
                    f"--workdir={tmp_path / 'run'}"])
  _assert_one_line(proc, "Stopped: 2 updates in a row had a non-finite loss or gradient")


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs mount namespaces (unshare -r -m)")
def test_full_disk_in_one_line(synthetic_dir, tmp_path):
  """A real full disk: a 600 KB tmpfs fills up at the first checkpoint."""
  disk = tmp_path / "disk"
  disk.mkdir()
  proc = _run_main([*_tiny_run_flags(synthetic_dir), f"--workdir={disk}/run"],
                   prefix=_in_tmpfs(disk, "size=600k"))
  # Which write meets the full disk first (a checkpoint file, metrics.jsonl, the TensorBoard
  # events) depends on timing; the line names a path on the full device, whichever it was.
  _assert_one_line(proc, f"Disk full: no space left on the device holding {disk}/run",
                   "run the same command again")
  # orbax's failing writes: their tracebacks went to the log file (gone with the tmpfs).
  assert "Traceback" not in proc.stderr


_FAILING_SAVE = """
import errno, re, sys
from orbax.checkpoint._src.handlers import json_checkpoint_handler as handler
real = handler.JsonCheckpointHandler._save_fn

async def failing(self, item, directory):  # the asynchronous write of checkpoint 16's JSON items
  if re.search(r"/16\\.orbax-checkpoint-tmp", str(directory)):
    raise OSError(errno.ENOSPC, "No space left on device", str(directory / self._filename))
  return await real(self, item, directory)

handler.JsonCheckpointHandler._save_fn = failing
from jepa_jax import main
main.run()
"""


@pytest.mark.slow
def test_a_failed_asynchronous_save_stops_the_run_at_once_in_one_line(synthetic_dir, tmp_path):
  """A write of checkpoint 16 fails in orbax's background thread (injected: a full disk). It was
  noticed at the next checkpoint (step 24 here), after orbax's error lines; now it stops the
  run as soon as the save is over, in one line, and checkpoint 8 stays the last complete one."""
  script = tmp_path / "failing_save.py"
  script.write_text(_FAILING_SAVE)
  workdir = tmp_path / "run"
  flags = [*_tiny_run_flags(synthetic_dir, steps=32), "--config.checkpoint.every=8",
           f"--workdir={workdir}"]
  proc = subprocess.run([sys.executable, str(script), *flags], cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=600)
  last = _assert_one_line(proc, "Disk full: no space left on the device holding "
                          f"{workdir}/checkpoints/16.orbax-checkpoint-tmp")
  # orbax's own error lines (four, with tracebacks) are in the log file only.
  assert not [ln for ln in proc.stderr.splitlines() if "traceback in" in ln or "orbax" in ln
              and ln != last], proc.stderr[-3000:]
  steps = [json.loads(x)["step"] for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert 16 < max(steps) < 24, steps  # the next save was due at 24
  assert checkpoint.make_manager(str(workdir / "checkpoints"), read_only=True).all_steps() == [8]


@pytest.fixture
def root_logging():
  """The root logger's handlers and levels, restored after the test."""
  root, absl_logger = logging.getLogger(), logging.getLogger("absl")
  saved = root.handlers[:], root.level, absl_logger.level
  yield root
  root.handlers[:] = saved[0]
  root.setLevel(saved[1])
  absl_logger.setLevel(saved[2])


def test_one_logging_setup_shows_info_over_a_handler_already_installed(root_logging, capsys):
  """orbax's import leaves absl's ``logging.basicConfig()`` handler (WARNING) on the root logger,
  which made the entry points' own ``basicConfig(level=INFO)`` a no-op: INFO lines never showed."""
  logging.basicConfig(force=True)
  cli.setup_logging(library_warnings=False)
  cli.setup_logging(library_warnings=False)  # the absl entry points call it twice: one line still
  logging.getLogger("jepa_jax.convert.reference").info("clip size %d px", 64)
  logging.getLogger("absl").warning("a read-only checkpoint manager")
  err = capsys.readouterr().err
  assert err.count("clip size 64 px") == 1, err
  assert "read-only" not in err


def test_no_module_configures_logging_itself():
  """Every entry point logs through ``cli.setup_logging``: a module's own ``basicConfig`` is a
  silent no-op once a library has installed a root handler (its INFO lines never show)."""
  package = pathlib.Path(cli.__file__).parent
  offenders = [str(p.relative_to(package)) for p in package.rglob("*.py")
               if p.name != "cli.py" and "logging.basicConfig(" in p.read_text()]
  assert not offenders, offenders


def test_a_file_is_written_whole_or_not_at_all(tmp_path):
  """``paths.atomic_write``: the one way the package writes a file in place (no other
  ``os.replace`` of a file): a block that raises leaves the old file and no temporary one."""
  target = tmp_path / "results.json"
  target.write_text("old")
  with pytest.raises(RuntimeError):
    with paths.atomic_write(str(target)) as f:
      f.write("half")
      raise RuntimeError("killed")
  assert target.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["results.json"]
  with paths.atomic_write(str(target)) as f:
    f.write("new")
  assert target.read_text() == "new" and sorted(os.listdir(tmp_path)) == ["results.json"]
  package = pathlib.Path(paths.__file__).parent
  replacing = sorted(str(p.relative_to(package)) for p in package.rglob("*.py")
                     if "os.replace(" in p.read_text())
  assert replacing == ["paths.py"], replacing

