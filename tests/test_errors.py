"""One error policy for every entry point: a ``UserError`` (a config field, a flag, a missing
checkpoint or file, bad data) ends the run with one line naming the fix and a non-zero status; any
other exception is a bug and keeps its traceback (``cli.run_or_fail``, ``cli.run_or_report``)."""
import ast
import pathlib

import pytest

from jepa_jax import cli, errors

REPO = pathlib.Path(__file__).resolve().parent.parent


def _tool(name):
  if name in ("convert", "extract"):  # packages: the command line is their __main__
    module = __import__(f"jepa_jax.{name}.__main__", fromlist=["main"])
  else:
    module = __import__(f"jepa_jax.{name}", fromlist=["main"])
  return module


# tool, its work function (what main runs under the policy), argv with a user error, the line.
TOOLS = [
    ("extract", "run", ["--checkpoint", "{tmp}/none", "--out", "{tmp}/o", "--pool", "probe",
                        "v.mp4"], "Config error: --pool probe needs --probe PROBE_DIR"),
    ("predict", "predict", ["--checkpoint", "{tmp}/none", "v.mp4"], "Checkpoint error: "),
    ("convert", "convert", ["--from-torch", "{tmp}/nope.pth.tar", "--out", "{tmp}/c"],
     "error: {tmp}/nope.pth.tar: no such file"),
    ("visualize", "run", ["--checkpoint", "{tmp}/none", "--out", "{tmp}/o", "v.mp4"],
     "Checkpoint error: "),
    ("surprise", "run", ["--checkpoint", "{tmp}/none", "--out", "{tmp}/o", "v.mp4"],
     "Checkpoint error: "),
]


@pytest.mark.parametrize("name,work,argv,line", TOOLS, ids=[t[0] for t in TOOLS])
def test_a_tools_user_error_is_one_line_and_status_1(name, work, argv, line, tmp_path, capsys):
  del work
  argv = [a.format(tmp=tmp_path) for a in argv]
  assert _tool(name).main(argv) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert err and err[-1].startswith(line.format(tmp=tmp_path)), err
  assert "Traceback" not in "\n".join(err)
  if line.startswith("Checkpoint error"):
    assert str(tmp_path / "none") in err[-1]


@pytest.mark.parametrize("bug", [ValueError("an internal bug"), KeyError("internal")],
                         ids=["ValueError", "KeyError"])
@pytest.mark.parametrize("name,work,argv,line", TOOLS, ids=[t[0] for t in TOOLS])
def test_a_bug_in_a_tool_keeps_its_traceback(name, work, argv, line, bug, tmp_path, capsys,
                                             monkeypatch):
  """A ValueError of our own code is not the user's fault: before the one policy, extract,
  predict, visualize and surprise printed any ValueError as ``error: ...`` and returned 1."""
  del line
  module = _tool(name)

  def broken(*args, **kwargs):
    raise bug

  monkeypatch.setattr(module, work, broken)
  with pytest.raises(type(bug)):
    module.main([a.format(tmp=tmp_path) for a in argv])
  assert "error" not in capsys.readouterr().err


def _program_cases():
  """Each absl program: its module, the function its ``main`` runs under ``cli.run_or_fail``, and a
  call of that function with a user error (the programs define absl flags on import, so their
  ``main`` cannot run in a process that imported another of them: the call is made here and the
  routing is read from the module's source)."""
  from jepa_jax import aot  # noqa: PLC0415
  from jepa_jax.pretrain import experiment  # noqa: PLC0415
  from jepa_jax.eval import config as eval_config  # noqa: PLC0415
  from jepa_jax.eval import run as eval_run  # noqa: PLC0415
  from jepa_jax.finetune import config as ft_config  # noqa: PLC0415
  from jepa_jax.finetune import run as ft_run  # noqa: PLC0415

  def bad_pretrain_config():
    return cli.load_config(str(REPO / "configs" / "demo.py"), ["--config.batch_size=0"])

  def bad_eval_config():
    c = eval_config.base_eval_config()
    c.train, c.probe_checkpoint = True, "/some/probe"
    return c

  def bad_finetune_config():
    c = ft_config.base_finetune_config()
    c.train_index, c.val_index = "/some/train.csv", ""
    return c

  return [
      ("pretrain/__main__.py", experiment, "build", lambda tmp: experiment.build(bad_pretrain_config()),
       "Config error: config.batch_size=0 must be a positive number"),
      ("eval/__main__.py", eval_run, "evaluate",
       lambda tmp: eval_run.evaluate(bad_eval_config(), str(tmp)),
       "Config error: config.probe_checkpoint is set but config.train is True: set "
       "config.train=False"),
      ("finetune/__main__.py", ft_run, "finetune",
       lambda tmp: ft_run.finetune(bad_finetune_config(), str(tmp)),
       "Config error: config.train_index is set but config.val_index is empty"),
      ("aot.py", aot, "compile_for_flags", lambda tmp: aot.tpu_devices("v9x:2x2"),
       "error: unknown topology 'v9x:2x2'"),
  ]


PROGRAMS = ["pretrain/__main__.py", "eval/__main__.py", "finetune/__main__.py", "aot.py"]


def _case(path):
  return next(c for c in _program_cases() if c[0] == path)


def _calls_under_run_or_fail(path: str) -> set:
  """The names called inside ``cli.run_or_fail(...)`` in ``jepa_jax/<path>``, and inside the
  ``validate`` function given to ``cli.start_program`` (which runs it under ``run_or_fail``:
  ``test_start_program_reports_a_validation_error_in_one_line``)."""
  tree = ast.parse((REPO / "jepa_jax" / path).read_text())
  functions = {f.name: f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}
  names = set()

  def calls_in(node):
    for inner in ast.walk(node):
      if isinstance(inner, ast.Call) and inner is not node:
        f = inner.func
        names.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None))
      if isinstance(inner, ast.Name):  # run_or_fail(build): a local function
        names.add(inner.id)
        if inner.id in functions and inner.id not in names - {inner.id}:
          calls_in(functions[inner.id])

  for node in ast.walk(tree):
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
      if node.func.attr == "run_or_fail":
        calls_in(node)
      elif node.func.attr == "start_program":
        for kw in node.keywords:
          if kw.arg == "validate":
            calls_in(kw.value)
  return names


def test_start_program_reports_a_validation_error_in_one_line(tmp_path, capfd, monkeypatch):
  """``cli.start_program`` runs the program's ``validate`` under ``run_or_fail``, before the
  workdir exists."""
  from types import SimpleNamespace  # noqa: PLC0415
  from jepa_jax import distributed  # noqa: PLC0415
  monkeypatch.setattr(cli, "setup_logging", lambda: None)
  monkeypatch.setattr(distributed, "initialize_from_flags", lambda: False)
  workdir = tmp_path / "work"

  def validate(config):
    del config
    raise cli.ConfigError("config.batch_size=0 must be a positive number")

  with pytest.raises(SystemExit) as e:
    cli.start_program(SimpleNamespace(value={}), SimpleNamespace(value=str(workdir)),
                      lambda c: None, "checkpoints", validate=validate)
  assert e.value.code == 1 and not workdir.exists()
  err = capfd.readouterr().err.strip().splitlines()
  assert err[-1] == "Config error: config.batch_size=0 must be a positive number", err


@pytest.mark.parametrize("path", PROGRAMS)
def test_a_programs_user_error_is_one_line_and_status_1(path, tmp_path, capfd):
  _, _, work, call, line = _case(path)
  assert work in _calls_under_run_or_fail(path)
  with pytest.raises(SystemExit) as e:
    cli.run_or_fail(lambda: call(tmp_path), str(tmp_path))
  assert e.value.code == 1
  err = capfd.readouterr().err.strip().splitlines()
  assert err[-1].startswith(line), err
  assert "Traceback" not in "\n".join(err)


@pytest.mark.parametrize("path", PROGRAMS)
def test_a_bug_in_a_program_keeps_its_traceback(path, tmp_path, capfd, monkeypatch):
  """Before the one policy, eval and fine-tuning reported every ValueError in one line."""
  _, module, work, call, _ = _case(path)

  def broken(*args, **kwargs):
    raise ValueError("an internal bug")

  monkeypatch.setattr(module, "tpu_devices" if path == "aot.py" else work, broken)
  with pytest.raises(ValueError, match="an internal bug"):
    cli.run_or_fail(lambda: call(tmp_path), str(tmp_path))
  assert "error" not in capfd.readouterr().err


def test_every_user_error_type_derives_from_the_one_base():
  from jepa_jax import aot, checkpoint, nonfinite  # noqa: PLC0415
  from jepa_jax.convert.names import ConversionError  # noqa: PLC0415
  from jepa_jax.data import decode, failures  # noqa: PLC0415
  from jepa_jax.pretrain import config, experiment  # noqa: PLC0415
  for t in (cli.WorkdirError, config.ConfigError, experiment.ConfigError, aot.AotError,
            checkpoint.CheckpointError, checkpoint.CorruptCheckpointError,
            nonfinite.NonFiniteLossError, ConversionError, failures.DataPipelineError,
            decode.VideoReadError, errors.MissingDependencyError, errors.InputNotFoundError):
    assert issubclass(t, errors.UserError), t
  # The old bases stay, so callers catching ValueError/RuntimeError/ImportError still do.
  assert issubclass(errors.ConfigError, ValueError)
  assert issubclass(errors.InputNotFoundError, FileNotFoundError)


def test_a_user_error_in_the_cause_chain_is_explained_a_bare_one_is_not():
  try:
    try:
      raise errors.ConfigError("config.x=1 must be 2; set --config.x=2")
    except errors.ConfigError as e:
      raise RuntimeError("wrapped") from e
  except RuntimeError as wrapped:
    assert cli.explain(wrapped) == "Config error: config.x=1 must be 2; set --config.x=2"
  assert cli.explain(ValueError("config.x=1")) is None
  assert cli.explain(KeyError("x")) is None
  try:  # a bug while handling a user error (its __context__, not its cause) stays a bug
    try:
      raise errors.ConfigError("config.x=1 must be 2")
    except errors.ConfigError:
      {}["missing"]  # noqa: B018
  except KeyError as bug:
    assert cli.explain(bug) is None


def test_every_entry_point_goes_through_the_policy():
  """No entry point catches errors its own way: each ``main`` uses ``cli.run_or_fail``,
  ``cli.run_or_report`` (``cli.run_tool``, ``cli.files_command``)."""
  entry_points = ["pretrain/__main__.py", "eval/__main__.py", "finetune/__main__.py", "aot.py",
                  "extract/__main__.py", "predict.py", "convert/__main__.py", "visualize.py", "surprise.py",
                  "pretrain/probe_curve.py", "eval/compare.py", "eval/token_stats.py",
                  "data/synthetic.py",
                  "masks_plot.py"]
  for path in entry_points:
    source = (REPO / "jepa_jax" / path).read_text()
    policy = ("run_or_fail", "run_or_report", "run_tool", "files_command")
    assert any(f"cli.{f}(" in source for f in policy), path
    tree = ast.parse(source)
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef)
                and n.name in ("main", "_main"))
    handlers = [h for h in ast.walk(main) if isinstance(h, ast.ExceptHandler)]
    assert not handlers, f"{path}: main catches errors itself"


def test_an_empty_eval_index_is_a_data_error_not_a_bug(tmp_path):
  """Eval and fine-tuning read their sources with ``make_eval_dataset``: an empty index is the
  user's data (it was a bare ValueError, which the one policy would show as a bug)."""
  from jepa_jax import data  # noqa: PLC0415
  empty = tmp_path / "empty.csv"
  empty.write_text("")
  with pytest.raises(data.DataPipelineError) as e:
    data.make_eval_dataset(data.default_data_config(), str(empty), batch_size=1, train=False)
  assert cli.explain(e.value).startswith(f"Data error: {empty} holds no samples")
