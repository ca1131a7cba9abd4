"""User-given paths, resolved in one place; files written atomically (``atomic_write``).

Every entry point calls ``resolve`` where a path enters (``--workdir``, ``config.init_from``, the
eval's ``config.checkpoint``, the converter's ``--ckpt``/``--out``, index files): orbax refuses
relative checkpoint paths, and an absolute path also makes the printed and saved config say
exactly which directory was used. Remote paths (``gs://``, ``s3://``, any ``scheme://``) are
left exactly as given.
"""
from __future__ import annotations

import contextlib
import os
import re

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path) -> bool:
  """True for ``scheme://...`` paths (``gs://bucket/run``), which are not local files."""
  return bool(_SCHEME.match(os.fspath(path)))


def resolve(path):
  """An absolute local path (``~`` expanded, relative to the working directory), or a remote
  path unchanged; ``None`` and ``""`` (unset) pass through."""
  if path is None:
    return None
  path = os.fspath(path)
  if not path or is_remote(path):
    return path
  return os.path.abspath(os.path.expanduser(path))


def resolve_source(spec):
  """``resolve`` for a data source spec: ``tfds:name@split`` is a dataset name, not a path."""
  if spec is None or str(spec).startswith("tfds:"):
    return spec
  return resolve(spec)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w"):
  """``with atomic_write(path) as f:`` writes ``path.tmp`` and renames it onto ``path`` when the
  block ends, so a reader (or a rerun after a kill) sees the old file or the whole new one, never
  a part; if the block raises, ``path`` is untouched and the temporary file removed."""
  tmp = f"{path}.tmp"
  try:
    with open(tmp, mode) as f:
      yield f
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise
  os.replace(tmp, path)
