"""Random-access sources of videos and images: index files, directories, TFDS.

``load_source(spec)`` takes a string of ``config.data.datasets`` or an eval ``index_path``:

- an index file: ``path [label]`` per line, separated by a space, tab or comma (the reference's
  CSV uses spaces); the label is -1 when absent and is the last field only if it parses as an
  integer (paths may hold spaces); relative paths are taken from the index's directory; blank and
  ``#`` lines are skipped, and a first line without an integer label is a header;
- a directory: scanned recursively for ``VIDEO_EXTENSIONS``, sorted, label -1;
- ``tfds:<name>[@<split>]`` (default ``train``): a prepared TFDS dataset via ``tfds.data_source``
  (nothing is downloaded); a ``video`` feature makes a video source, ``image`` an image source.

Each source has ``len()``, ``kind`` (``video_file``, ``video_array``, ``image``), ``label(i)`` and
``describe(i)`` (for failure messages); file sources ``path(i)``, array sources ``get(i)``. Image
files (``ImageFileSource``, ``IMAGE_EXTENSIONS``) are an image source with both.
"""
from __future__ import annotations

import os

import numpy as np

from jepa_jax.errors import ConfigError, InputNotFoundError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class FileVideoSource:
  """Video files with integer labels (-1 = unlabelled)."""

  kind = "video_file"

  def __init__(self, paths, labels, name: str = ""):
    self.paths = list(paths)
    self.labels = np.asarray(labels, np.int32)
    self.name = name
    if len(self.paths) != len(self.labels):
      raise ValueError("paths and labels differ in length")

  def __len__(self):
    return len(self.paths)

  def path(self, i: int) -> str:
    return self.paths[i]

  def label(self, i: int) -> int:
    return int(self.labels[i])

  def describe(self, i: int) -> str:
    return self.paths[i]


class ImageFileSource(FileVideoSource):
  """Image files (``IMAGE_EXTENSIONS``), read whole by ``get`` as uint8 ``[H, W, 3]``."""

  kind = "image"

  def get(self, i: int):
    from jepa_jax.data import decode  # noqa: PLC0415 -- PyAV, only when images are read
    return decode.read_image(self.paths[i]), self.label(i)


def _parse_label(field: str):
  try:
    return int(field)
  except ValueError:
    try:
      f = float(field)  # pandas-written indexes sometimes hold "3.0"
      return int(f) if f.is_integer() else None
    except ValueError:
      return None


def read_index(index_path: str) -> FileVideoSource:
  """Parses an index file (format in the module docstring)."""
  if not os.path.isfile(index_path):
    raise InputNotFoundError(f"video index not found: {index_path}")
  root = os.path.dirname(os.path.abspath(index_path))
  paths, labels = [], []
  with open(index_path) as f:
    for lineno, line in enumerate(f):
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      sep = "," if "," in line else None
      parts = line.rsplit(sep, 1)
      label = _parse_label(parts[1].strip()) if len(parts) == 2 else None
      if label is None:
        if lineno == 0 and len(parts) == 2:
          continue  # header such as "path label"
        path, label = line, -1
      else:
        path = parts[0].strip()
      paths.append(os.path.join(root, path))  # join keeps absolute paths unchanged
      labels.append(label)
  return FileVideoSource(paths, labels, name=index_path)


def _scan(directory: str, extensions: tuple) -> list:
  found = []
  for dirpath, _, files in os.walk(directory):
    found += [os.path.join(dirpath, f) for f in files if f.lower().endswith(extensions)]
  return sorted(found)


def scan_directory(directory: str) -> FileVideoSource:
  """All video files under ``directory`` (recursive, sorted), unlabelled."""
  found = _scan(directory, VIDEO_EXTENSIONS)
  return FileVideoSource(found, [-1] * len(found), name=directory)


def scan_images(directory: str) -> ImageFileSource:
  """All image files under ``directory`` (recursive, sorted), unlabelled."""
  found = _scan(directory, IMAGE_EXTENSIONS)
  return ImageFileSource(found, [-1] * len(found), name=directory)


class ArraySource:
  """Adapts any random-access source of feature dicts (e.g. ``tfds.data_source``).

  ``data_source[i]`` must return a mapping holding ``key`` (a video [T, H, W, C] -- an array or a
  list of frames -- or an image [H, W, C]) and optionally ``label_key``.
  """

  def __init__(self, data_source, key: str, label_key: str | None = "label", name: str = ""):
    self.data_source = data_source
    self.key = key
    self.label_key = label_key
    self.name = name
    self.kind = "image" if key == "image" else "video_array"

  def __len__(self):
    return len(self.data_source)

  def get(self, i: int):
    ex = self.data_source[i]
    label = int(ex[self.label_key]) if self.label_key and self.label_key in ex else -1
    return ex[self.key], label

  def label(self, i: int) -> int:
    return self.get(i)[1]

  def describe(self, i: int) -> str:
    return f"{self.name}[{i}]"


def tfds_source(name: str, split: str = "train", data_dir: str | None = None) -> ArraySource:
  """A prepared TFDS dataset as an ArraySource (``video`` or ``image`` feature)."""
  import tensorflow_datasets as tfds  # heavy import, only when TFDS is used

  ds = tfds.data_source(name, split=split, data_dir=data_dir)
  features = getattr(getattr(ds, "dataset_info", None), "features", None)
  keys = set(features.keys()) if features is not None else set(ds[0].keys())
  if "video" in keys:
    key = "video"
  elif "image" in keys:
    key = "image"
  else:
    raise ConfigError(f"tfds:{name} has neither a 'video' nor an 'image' feature: "
                      f"{sorted(keys)}; give a video or image dataset")
  label_key = "label" if "label" in keys else None
  return ArraySource(ds, key, label_key, name=f"tfds:{name}@{split}")


def load_image_source(spec: str, tfds_data_dir: str | None = None) -> ImageFileSource | ArraySource:
  """An image source from a spec of ``config.images.datasets``: an index of image files (the
  reference's imagenet1k.csv), a directory of images, or a ``tfds:`` image dataset."""
  if spec.startswith("tfds:"):
    src = load_source(spec, tfds_data_dir)
    if src.kind != "image":
      raise ConfigError(f"{spec} is a video dataset; config.images.datasets takes image datasets "
                        "(move it to config.data.datasets)")
    return src
  if os.path.isdir(spec):
    return scan_images(spec)
  index = read_index(spec)
  return ImageFileSource(index.paths, index.labels, name=spec)


def load_source(spec: str, tfds_data_dir: str | None = None):
  """A source from its spec string (see the module docstring)."""
  if spec.startswith("tfds:"):
    name, _, split = spec[len("tfds:"):].partition("@")
    return tfds_source(name, split or "train", tfds_data_dir)
  if os.path.isdir(spec):
    return scan_directory(spec)
  return read_index(spec)
