"""OUT's format (package docstring): ``meta.json``, one ``.npy`` per video, ``index.jsonl`` of
the finished videos (what makes a rerun resume), ``failures.jsonl``."""
import json
import os

import numpy as np

from jepa_jax import paths
from jepa_jax.errors import ConfigError

FORMAT_VERSION = 1


class Output:
  """OUT's files (the package docstring): meta, per-video arrays, the index of finished
  videos."""

  def __init__(self, out: str, meta: dict):
    self.out = out
    os.makedirs(os.path.join(out, "features"), exist_ok=True)
    meta_path = os.path.join(out, "meta.json")
    if os.path.exists(meta_path):
      with open(meta_path) as f:
        old = json.load(f)
      if old != json.loads(json.dumps(meta)):
        changed = sorted(k for k in set(old) | set(meta) if old.get(k) != json.loads(
            json.dumps(meta)).get(k))
        raise ConfigError(f"{out} holds features extracted with other settings ({changed} "
                          "differ); choose another --out or delete it")
    else:
      with paths.atomic_write(meta_path) as f:
        json.dump(meta, f, indent=1)
    self.done = self._read_done()

  def _read_done(self) -> set:
    path = os.path.join(self.out, "index.jsonl")
    done, good = set(), []
    if os.path.exists(path):
      with open(path) as f:
        for line in f:
          try:
            rec = json.loads(line)
          except json.JSONDecodeError:
            break  # a line cut short by a kill: that video is redone
          if not line.endswith("\n"):
            break
          done.add(int(rec["position"]))
          good.append(line)
      # Drop a cut-short tail so appended lines stay one per line.
      with paths.atomic_write(path) as f:
        f.writelines(good)
    return done

  def write(self, position: int, name: str, record: dict, features: np.ndarray) -> None:
    path = os.path.join(self.out, name)
    with paths.atomic_write(path, "wb") as f:
      np.save(f, features)
    with open(os.path.join(self.out, "index.jsonl"), "a") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()
      os.fsync(f.fileno())
    self.done.add(position)

  def failed(self, video: str, error: str) -> None:
    with open(os.path.join(self.out, "failures.jsonl"), "a") as f:
      f.write(json.dumps(dict(video=video, error=error)) + "\n")
