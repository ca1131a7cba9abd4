"""Class names of Meta's released attentive probes, shipped as data (line i = class i).

Sources and what was checked: README.md in this directory. ``convert --from-torch FILE --kind
probe`` saves these names with a converted probe when it knows the probe's dataset (``--dataset``,
else the class count and the file name agreeing: ``dataset_of_probe``), so ``predict`` and
``convert --to-hf`` (``id2label``) show them; ``--labels`` still overrides.

Kinetics-400 is not shipped: the released K400 probes were trained with Meta's own class
numbering (neither alphabetical nor any list in common use), which its authors posted in
facebookresearch/jepa#18, and no complete copy of that list could be retrieved to check against.
"""
import os
import re
from typing import Optional

# dataset -> (classes, shipped file or None)
DATASETS = {"k400": (400, None), "ssv2": (174, "ssv2.txt"), "diving48": (48, "diving48.txt")}
TITLES = {"k400": "Kinetics-400", "ssv2": "Something-Something-v2", "diving48": "Diving48"}
NOT_SHIPPED = {
    "k400": "jepa_jax ships no Kinetics-400 names: the released K400 probes use Meta's own class "
            "order (facebookresearch/jepa#18: 0 weaving_basket, 1 playing_drums, ...), not the "
            "alphabetical one; give that list with --labels (README, \"Class names of the "
            "released probes\")",
}


def path(dataset: str) -> Optional[str]:
  """The shipped names file of ``dataset``, or None where none is shipped."""
  _, name = DATASETS[dataset]
  return os.path.join(os.path.dirname(os.path.abspath(__file__)), name) if name else None


def class_names(dataset: str) -> Optional[list]:
  """The shipped names of ``dataset`` (name i = class i), or None where none is shipped."""
  file = path(dataset)
  if file is None:
    return None
  with open(file, encoding="utf-8") as f:
    names = [line.rstrip("\n") for line in f if line.strip()]
  if len(names) != DATASETS[dataset][0]:  # a damaged install; never show names off by one
    raise ValueError(f"{file} holds {len(names)} names, not {DATASETS[dataset][0]}")
  return names


def _named_in(filename: str) -> list:
  """The datasets a file name names as a token (``k400-probe.pth.tar``, ``ssv2-vitl-16x2x3.pt``,
  ``diving48-vitl-256.pt``: Meta's released probe files)."""
  base = os.path.basename(filename).lower()
  return [d for d in DATASETS if re.search(rf"(?:^|[^a-z0-9]){d}(?:[^a-z0-9]|$)", base)]


def dataset_of_probe(num_classes: int, filename: str) -> tuple[Optional[str], str]:
  """``(dataset or None, why)``: a probe file's dataset when its class count and its name agree
  (both are needed: a probe trained on one's own index has the same class count and its own
  numbering, so the count alone is no evidence); else None, and why."""
  by_count = [d for d, (n, _) in DATASETS.items() if n == num_classes]
  by_name = _named_in(filename)
  if by_count and by_name == by_count:
    return by_count[0], (f"{num_classes} classes and the file name "
                         f"{os.path.basename(filename)!r} name {TITLES[by_count[0]]}")
  if by_count:
    return None, (f"{num_classes} classes, as {TITLES[by_count[0]]}, but the file name "
                  f"{os.path.basename(filename)!r} does not say {by_count[0]}; if it is Meta's "
                  f"released {TITLES[by_count[0]]} probe, pass --dataset {by_count[0]}")
  if by_name:
    return None, (f"the file name names {TITLES[by_name[0]]} but the probe has {num_classes} "
                  f"classes, not {DATASETS[by_name[0]][0]}")
  return None, f"{num_classes} classes: no released probe's dataset"
