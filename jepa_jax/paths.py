"""User-given paths, resolved in one place.

Every entry point calls ``resolve`` where a path enters (``--workdir``, ``config.init_from``, the
eval's ``config.checkpoint``, the converter's ``--ckpt``/``--out``, index files): orbax refuses
relative checkpoint paths, and an absolute path also makes the printed and saved config say
exactly which directory was used. Remote paths (``gs://``, ``s3://``, any ``scheme://``) are
left exactly as given.
"""
from __future__ import annotations

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
