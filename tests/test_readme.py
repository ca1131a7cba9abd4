"""The README's commands are the ones CI and users run."""
import pathlib
import re

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
