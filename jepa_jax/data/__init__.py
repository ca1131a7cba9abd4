"""Video/image input pipeline: sources, PyAV decoding, transforms, grain pipelines.

Public API::

    default_data_config()                        -> ml_collections.ConfigDict (config.data)
    make_pretrain_dataset(data_cfg, *, batch_size, seed, shard_index, shard_count)
    make_eval_dataset(data_cfg, index_path, *, batch_size, num_segments, frames_per_clip,
                      frame_step, num_views, train, seed, shard_index, shard_count, repeat)
    normalize.normalize(clips_uint8, dtype)       (on device, jnp; import the module)
    ensure_synthetic(out_dir, num_videos, seed)   -> path of the synthetic set's index.csv

Modules: sources (index files, directories, TFDS), decode (clip sampling + PyAV), transforms
(crops/resizes in numpy + Pillow), pipeline (grain), failures (unreadable entries: accounting and
the stop rule), normalize, synthetic.
"""
from jepa_jax.data import failures
from jepa_jax.data.pipeline import DataPipelineError
from jepa_jax.data.pipeline import FailureTracker
from jepa_jax.data.pipeline import default_data_config
from jepa_jax.data.pipeline import make_eval_dataset
from jepa_jax.data.pipeline import make_pretrain_dataset
from jepa_jax.data.synthetic import ensure_synthetic

__all__ = [
    "DataPipelineError", "FailureTracker", "default_data_config", "ensure_synthetic",
    "failures", "make_eval_dataset", "make_pretrain_dataset",
]
