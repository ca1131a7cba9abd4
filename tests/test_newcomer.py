"""A newcomer's first hour, automated: the README's commands, verbatim, in a fresh clone.

The commands are parsed out of README.md's ``bash`` blocks, so the README cannot drift from what
is tested. The install parts (``python3 -m venv``, ``. .venv/bin/activate``, ``pip install``) are
dropped: the test runs with the interpreter running it and ``PYTHONPATH`` set to the clone. Every
other command is

* run, in order, with the clone as the working directory, if it uses the demo's workdir
  (``workdir/demo``): the demo to its first checkpoint (then SIGTERM, which saves and exits 75),
  the same command again to resume from it (then SIGTERM again), then every later command (eval,
  convert, ...) to completion;
* or, if it is real-scale (``SKIP``: placeholders, buckets, downloads), only parsed: its config
  overrides as the entry point parses them, the converter's flags by its argument parser;
* anything else fails the test: a new README command must use the demo's workdir or be listed
  in ``SKIP`` with the reason.

The clone is of the committed HEAD (``git clone``), as a newcomer gets it.
"""
import importlib
import importlib.util
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

from test_readme import REPO, readme_commands

DEMO_WORKDIR = "workdir/demo"
FINETUNE_SHORTER = "--config.epochs=2 --config.optim.warmup=1"
INSTALL = re.compile(r"^(python3? -m venv |\. \.venv/bin/activate|source \.venv/bin/activate|pip install )")
# Real-scale commands, parsed but not run: what in them needs what the test does not have.
SKIP = {
    "gs://BUCKET": "a cloud bucket and the real datasets",
    "PRETRAIN_WORKDIR": "a real pretraining run (placeholder)",
    "wget ": "a download of released weights",
    "hf download ": "a download from the Hugging Face hub",
    "vith16.pth.tar": "released weights (downloaded by the wget before it)",
    "k400-probe.pth.tar": "a released probe (downloaded)",
    "runs/my_pretrain": "a real pretraining run",
    "runs/k400/probes": "a probe trained by the K400 eval above (real scale)",
    "weights/vith16_k400_probe": "a converted released probe",
    "vitg.pt": "released V-JEPA 2 weights (downloaded)",
    "ssv2-vitl-16x2x3.pt": "a released V-JEPA 2 probe (downloaded)",
    "weights/vjepa2-vitl": "converted released V-JEPA 2 weights",
}


def readme_shell_commands():
  """Each README command line (continuations joined), install parts dropped; pytest excluded."""
  out = []
  for block in readme_commands():
    for line in block.replace("\\\n", " ").splitlines():
      parts = [p.strip() for p in line.split("&&") if p.strip() and not INSTALL.match(p.strip())]
      command = " && ".join(parts)
      if command and "pytest" not in command:
        out.append(command)
  return out


def classify(command):
  if DEMO_WORKDIR in command:
    return "run", None
  for marker, reason in SKIP.items():
    if marker in command:
      return "parse", reason
  return "unknown", None


def test_every_readme_command_is_run_or_deliberately_skipped():
  commands = readme_shell_commands()
  assert commands[0] == "python -m jepa_jax.main --config=configs/demo.py --workdir=workdir/demo"
  unknown = [c for c in commands if classify(c)[0] == "unknown"]
  assert not unknown, f"README commands neither run on the demo nor listed in SKIP: {unknown}"


def test_skipped_commands_parse():
  """Real-scale commands are not run, but their flags must parse."""
  from jepa_jax import cli
  from jepa_jax.convert.__main__ import parse_args
  for command in readme_shell_commands():
    if classify(command)[0] != "parse" or command.startswith(("wget ", "hf download ")):
      continue
    argv = shlex.split(command)
    assert argv[:2] == ["python", "-m"], command
    module, args = argv[2], argv[3:]
    if module in ("jepa_jax.main", "jepa_jax.eval", "jepa_jax.finetune"):
      config_file = next(a.split("=", 1)[1] for a in args if a.startswith("--config="))
      overrides = [a for a in args if a.startswith("--config.")]
      cli.load_config(str(REPO / config_file), overrides)
      known = {"--config", "--workdir"}
      assert all(a.split("=", 1)[0] in known for a in args if not a.startswith("--config.")), command
    elif module == "jepa_jax.convert":
      parse_args(args)
    elif module in ("jepa_jax.predict", "jepa_jax.extract"):
      cli_module = module + ".__main__" if module == "jepa_jax.extract" else module
      importlib.import_module(cli_module).parse_args(args)
    else:
      pytest.fail(f"no parse check for {command}")


def _env(clone):
  # JAX's persistent compilation cache (its own environment variable, which the README's commands
  # honour as any user's would): the resumed demo loads the step the first run compiled instead
  # of compiling it again, in CI's longest test.
  env = dict(os.environ, PYTHONPATH=str(clone), XLA_FLAGS="",
             JAX_COMPILATION_CACHE_DIR=str(clone.parent / "jax_cache"))
  env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
  return env


def _start(command, clone, log):
  # exec: the shell becomes the command, so signals reach it.
  return subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=clone, env=_env(clone),
                          stdout=log, stderr=subprocess.STDOUT)


def _wait_for(proc, predicate, what, log_path, timeout=600):
  deadline = time.time() + timeout
  while not predicate():
    if proc.poll() is not None:
      pytest.fail(f"exited {proc.returncode} before {what}:\n{log_path.read_text()[-3000:]}")
    if time.time() > deadline:
      proc.kill()
      pytest.fail(f"no {what} after {timeout} s:\n{log_path.read_text()[-3000:]}")
    time.sleep(0.2)


def _steps(path, key="loss"):
  if not path.exists():
    return []
  return [r["step"] for r in map(json.loads, path.read_text().splitlines()) if key in r]


def _stop_with_sigterm(proc, log_path):
  proc.send_signal(signal.SIGTERM)
  proc.wait(timeout=300)
  assert proc.returncode == 75, log_path.read_text()[-3000:]  # saved; main.EXIT_PREEMPTED


@pytest.mark.slow
def test_readme_commands_from_a_fresh_clone(tmp_path):
  if shutil.which("git") is None or not (REPO / ".git").exists():
    pytest.skip("needs git and a git checkout to clone")
  clone = tmp_path / "jepa_jax"
  subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
  commands = [c for c in readme_shell_commands() if classify(c)[0] == "run"]
  demo, later = commands[0], commands[1:]
  assert "jepa_jax.main" in demo
  workdir = clone / DEMO_WORKDIR
  checkpoints, metrics = workdir / "checkpoints", workdir / "metrics.jsonl"

  def saved_steps():
    if not checkpoints.is_dir():
      return []
    return sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())

  # 1. The demo, verbatim, to its first checkpoint; SIGTERM saves one more and exits 75.
  log1 = tmp_path / "demo.log"
  with open(log1, "w") as log:
    proc = _start(demo, clone, log)
    _wait_for(proc, saved_steps, "a first checkpoint", log1)
    _stop_with_sigterm(proc, log1)
  stopped_at = saved_steps()[-1]

  # 2. The same command resumes from it and trains on; stopped again once it has logged a step.
  log2 = tmp_path / "resume.log"
  with open(log2, "w") as log:
    proc = _start(demo, clone, log)
    _wait_for(proc, lambda: any(s > stopped_at for s in _steps(metrics)), "a step after resuming",
              log2)
    _stop_with_sigterm(proc, log2)
  assert f"Resumed from checkpoint {stopped_at} in {checkpoints}" in log2.read_text()
  steps = _steps(metrics)
  assert len(steps) == len(set(steps)) and steps == sorted(steps), steps
  # The monitor on the demo (configs/demo.py: model, masks, recipe): every logged step carries
  # the collapse statistics, healthy, and no collapse warning was given.
  keys = {"monitor/target_std", "monitor/target_std_min", "monitor/pred_std",
          "monitor/pred_std_min", "monitor/rankme", "monitor/const_loss"}
  logged = [r for r in map(json.loads, metrics.read_text().splitlines()) if "loss" in r]
  assert logged and all(keys <= set(r) for r in logged), logged
  assert all(r["monitor/rankme"] > 2 and r["monitor/target_std"] > 0.3 for r in logged), logged
  assert "Representation collapse suspected" not in log1.read_text() + log2.read_text()

  # 3. Every later README command on the result, to completion.
  for i, command in enumerate(later):
    if "jepa_jax.convert" in command and importlib.util.find_spec("torch") is None:
      continue  # the converter needs the optional torch extra (README says so)
    if "jepa_jax.finetune" in command:
      # The README's command with the run shortened (CI time: the two fine-tunes took a third of
      # this test); everything else in it is the README's. Training to a result is
      # test_finetune.py::test_finetuning_beats_the_frozen_probe.
      command += " " + FINETUNE_SHORTER
    log_path = tmp_path / f"later{i}.log"
    with open(log_path, "w") as log:
      proc = _start(command, clone, log)
      proc.wait(timeout=600)
    assert proc.returncode == 0, (command, log_path.read_text()[-3000:])
