"""Video/image input pipeline: sources, PyAV decoding, transforms, grain pipelines.

Public API::

    default_data_config()                        -> ml_collections.ConfigDict (config.data)
    make_pretrain_dataset(data_cfg, *, batch_size, seed, shard_index, shard_count)
    make_eval_dataset(data_cfg, index_path, *, batch_size, clip, train, seed, shard_index,
                      shard_count, repeat)        clip: a ClipSpec, batches [B, S, V, T, H, W, C]
    normalize.normalize(clips_uint8, dtype)       (on device, jnp; import the module)
    ensure_synthetic(out_dir, num_videos, seed)   -> path of the synthetic set's index.csv

Modules: clips (``ClipSpec``, the batch layout), sources (index files, directories, TFDS), decode (clip sampling + PyAV), transforms
(crops/resizes in numpy + Pillow), pipeline (grain), failures (unreadable entries: accounting and
the stop rule), normalize, synthetic, settings (the ``config.data`` fields; neither grain nor PyAV).
"""
import importlib

# Exported lazily (PEP 562), so that ``jepa_jax.data.settings`` / ``normalize`` import without
# grain and PyAV (the train step and bench/gpu_suite.sh need neither); the name's module loads on
# first use.
_EXPORTS = {
    "ClipSpec": "clips",
    "DataPipelineError": "pipeline",
    "FailureTracker": "pipeline",
    "default_data_config": "settings",
    "ensure_synthetic": "synthetic",
    "make_eval_dataset": "pipeline",
    "make_pretrain_dataset": "pipeline",
}
_SUBMODULES = ("clips", "decode", "failures", "normalize", "pipeline", "settings", "sources",
               "synthetic", "transforms")

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
  elif name in _SUBMODULES:
    value = importlib.import_module(f"{__name__}.{name}")
  else:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  globals()[name] = value  # bound once, as an eager import would
  return value


def __dir__():
  return sorted(set(globals()) | set(_EXPORTS) | set(_SUBMODULES))
