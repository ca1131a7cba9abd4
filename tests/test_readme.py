"""The README's commands are the ones CI and users run."""
import os
import pathlib
import re
import shlex

REPO = pathlib.Path(__file__).resolve().parents[1]


def readme_commands():
  return re.findall(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(), re.S)


def test_ci_runs_the_readme_test_command():
  commands = readme_commands()
  test_cmd = next(c for c in commands if "pytest" in c)
  ci = (REPO / ".ci" / "run").read_text()
  assert test_cmd.strip() in ci.splitlines(), (test_cmd, ci)


def test_readme_main_job_uses_the_demo_config():
  main_cmd = next(c for c in readme_commands() if "jepa_jax.main" in c)
  assert "pip install -e ." in main_cmd and "--config=configs/demo.py" in main_cmd
  assert (REPO / "configs" / "demo.py").exists()


# --- every command block stands on its own ---------------------------------------------------

WRITING_FLAGS = ("--out", "--workdir")


def block_commands(block: str) -> list:
  """The commands of a bash block as argument lists (continuations joined, ``&&`` split)."""
  commands = []
  for line in block.replace("\\\n", " ").splitlines():
    for command in line.split("&&"):
      if command.strip():
        commands.append(shlex.split(command))
  return commands


def _under(path: str, written: set) -> bool:
  return any(path == w or path.startswith(w.rstrip("/") + "/") for w in written)


def unmet_inputs(block: str) -> list:
  """Paths a block's commands read that no earlier command of the block wrote or downloaded:
  anything under ``weights/`` and the files ``--from-torch`` converts."""
  written, unmet = set(), []
  for args in block_commands(block):
    if args and args[0] == "wget":
      written.update(os.path.basename(a) for a in args[1:] if "://" in a)
      continue
    reads, writes = [], []
    for i, arg in enumerate(args):
      flag, eq, value = arg.partition("=")
      if eq and flag.startswith("--"):
        (writes if flag in WRITING_FLAGS else reads).append(value)
      elif i and args[i - 1] in WRITING_FLAGS + (">",):
        writes.append(arg)
      elif i and args[i - 1] == "--from-torch" and not _under(arg, written):
        unmet.append(arg)  # a downloaded file, wherever it is
      else:
        reads.append(arg)
    unmet.extend(p for p in reads if p.startswith("weights/") and not _under(p, written))
    written.update(writes)
  return unmet


def test_every_readme_block_writes_the_weights_it_reads():
  """A block that evaluates or exports weights/X first downloads and converts X (the V-JEPA 2
  snippet converted vitg.pt and then evaluated weights/vjepa2-vitl with a probe never fetched)."""
  for block in readme_commands():
    assert not unmet_inputs(block), (unmet_inputs(block), block)


def test_the_block_check_catches_a_missing_download_and_conversion():
  old_vjepa2 = (
      "wget https://dl.fbaipublicfiles.com/vjepa2/vitg.pt\n"
      "python -m jepa_jax.convert --from-torch vitg.pt --out weights/vjepa2-vitg\n"
      "python -m jepa_jax.convert --from-torch ssv2-vitl-16x2x3.pt --kind probe "
      "--out weights/vjepa2-vitl-ssv2-probe\n"
      "python -m jepa_jax.eval --config=configs/eval/vjepa2_ssv2.py "
      "--config.checkpoint=weights/vjepa2-vitl --workdir=runs/ssv2")
  assert unmet_inputs(old_vjepa2) == ["ssv2-vitl-16x2x3.pt", "weights/vjepa2-vitl"]
  assert unmet_inputs("python -m jepa_jax.predict --checkpoint weights/vith16/checkpoints/0 x.mp4"
                      ) == ["weights/vith16/checkpoints/0"]
