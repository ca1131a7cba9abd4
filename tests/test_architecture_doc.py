"""ARCHITECTURE.md's module table names only files and folders that exist, and names every module
of the package (a renamed or new module fails here until the table says who owns it)."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jepa_jax"


def _table_rows():
  text = (ROOT / "ARCHITECTURE.md").read_text()
  section = text.split("## Who owns what", 1)[1].split("\n## ", 1)[0]
  return [line for line in section.splitlines()
          if line.startswith("| `") or line.startswith("| bench")]


def _named_paths():
  """Every backticked ``*.py`` file or ``folder/`` in the table's rows: the first column relative
  to the package (``bench/`` to the repository), ``models/`` etc.'s listed files inside them."""
  paths = []
  for row in _table_rows():
    first, owns = row.strip("|").split("|", 1)
    for name in re.findall(r"`([\w./]+)`", first):
      base = ROOT if name.startswith("bench") else PACKAGE
      paths.append(base / name)
      if name.endswith("/"):
        paths += [base / name / f for f in re.findall(r"`(\w+\.py)`", owns)]
  return paths


def test_every_file_the_table_names_exists():
  paths = _named_paths()
  assert len(paths) > 20, paths
  missing = [str(p.relative_to(ROOT)) for p in paths if not p.exists()]
  assert not missing, f"ARCHITECTURE.md names files that do not exist: {missing}"


def test_every_module_of_the_package_is_in_the_table():
  named = {p.resolve() for p in _named_paths()}
  folders = {p for p in named if p.is_dir()}
  unnamed = []
  for module in sorted(PACKAGE.glob("*.py")):
    if module.name != "__init__.py" and module.resolve() not in named:
      unnamed.append(module.name)
  for folder in sorted(p for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
    if folder.resolve() not in folders:
      unnamed.append(folder.name + "/")
  assert not unnamed, f"modules ARCHITECTURE.md's table does not place: {unnamed}"
