"""The eval's data: the train/val sources of its settings (the synthetic set's split files when
none are given), their labels, and per-process batches of them. ``settings``: an
``eval.settings.Settings`` or a ``finetune.settings.Settings`` (the same field names)."""
import dataclasses
import os

import jax
import numpy as np

from jepa_jax import data as data_lib
from jepa_jax.data import sources as sources_lib
from jepa_jax.errors import ConfigError


def resolve_indexes(settings) -> tuple[str, str]:
  """(train, val) source specs; the synthetic set's per-label split files when none are given."""
  if settings.train_index:
    return settings.train_index, settings.val_index
  d = settings.data
  if not d.synthetic_dir:
    raise ConfigError("set config.train_index/config.val_index (index files, directories or "
                      "tfds:name@split), or config.data.synthetic_dir for the synthetic set")
  index = data_lib.ensure_synthetic(d.synthetic_dir, d.synthetic_num_videos, d.synthetic_seed)
  root = os.path.dirname(index)
  label = settings.synthetic_label or "motion"
  suffix = "" if label == "motion" else f"_{label}"
  paths = [os.path.join(root, f"{split}{suffix}.csv") for split in ("train", "val")]
  for p in paths:
    if not os.path.exists(p):
      raise ConfigError(f"no synthetic index {p}: config.synthetic_label must be one of motion, "
                        "direction, speed, rotation, shape, colour")
  return paths[0], paths[1]

def resolve_val_index(settings) -> str:
  """The validation source alone (``val_index``, else the synthetic set's)."""
  if settings.val_index:
    return settings.val_index
  return resolve_indexes(dataclasses.replace(settings, train_index=""))[1]

def source_labels(spec: str, tfds_data_dir=None) -> np.ndarray:
  """All labels of a source (cheap for index files; reads every example of a TFDS source)."""
  src = sources_lib.load_source(spec, tfds_data_dir)
  if hasattr(src, "labels"):
    return np.asarray(src.labels)
  return np.asarray([src.label(i) for i in range(len(src))], np.int32)

def make_dataset(settings, spec: str, *, train: bool, batch_size: int, seed: int, repeat: bool,
                 num_views: int):
  """Per-process batches of ``spec`` (``batch_size`` is global)."""
  nproc = jax.process_count()
  if batch_size % nproc:
    raise ConfigError(f"batch size {batch_size} is not divisible by the {nproc} processes")
  return data_lib.make_eval_dataset(
      settings.data, spec, batch_size=batch_size // nproc,
      clip=data_lib.ClipSpec.of(settings.data, settings.num_segments, num_views), train=train,
      seed=seed, shard_index=jax.process_index(), shard_count=nproc, repeat=repeat)
