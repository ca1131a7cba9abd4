"""``config.data``: its fields and defaults, and the frames per clip of each dataset.

Kept apart from the pipeline so that reading a config (``jepa_jax.pretrain.defaults``,
``jepa_jax.pretrain.config``) imports neither grain nor PyAV: the train step and the benchmarks
run where those are not installed (e.g. a GPU machine that has only jax/flax/optax, ``bench/gpu_suite.sh``).
"""
import ml_collections

from jepa_jax.errors import ConfigError


def default_data_config() -> ml_collections.ConfigDict:
  """Every ``config.data`` field the data pipeline reads, with the reference's defaults."""
  c = ml_collections.ConfigDict()
  # Sources: index files, directories or "tfds:name@split" specs (see sources.py).
  c.datasets = []
  c.datasets_weights = None  # one weight per dataset for mixing; None = uniform
  c.tfds_data_dir = None  # data_dir for tfds: specs (prepared locally; nothing is downloaded)
  # With no datasets, the built-in synthetic set (generated into synthetic_dir if absent).
  c.synthetic_dir = None
  c.synthetic_num_videos = 64
  c.synthetic_seed = 0
  c.synthetic_index = "index.csv"  # which of the set's indexes to read
  # Clips (reference: 16 frames at stride 4, 224 px).
  c.num_frames = 16
  c.frame_step = 4
  # V-JEPA 2: sample at a fixed rate instead (frame step ceil(video fps) // fps per video), and
  # the frames per clip of each dataset (all equal to num_frames: one static clip shape).
  c.fps = None
  c.dataset_fpcs = None
  c.crop_size = 224
  c.short_video_policy = "pad"  # 'pad' (repeat the last frame, as the reference) or 'skip'
  c.eval_allow_segment_overlap = True  # the reference eval's allow_segment_overlap
  c.decode_threads = 1  # libavcodec threads per decode; 1 = parallelism from workers instead
  # Pretraining augmentation (app/vjepa/transforms.py).
  c.random_resize_scale = (0.3, 1.0)
  c.random_resize_aspect_ratio = (0.75, 1.35)
  c.horizontal_flip = True
  # Probe training (eval with train=True): the reference's crop range; its auto-augment and
  # random erasing are not implemented.
  c.probe_random_resize_scale = (0.08, 1.0)
  c.probe_random_resize_aspect_ratio = (0.75, 4 / 3)
  c.probe_horizontal_flip = False
  # Loading.
  c.num_workers = 0  # grain worker processes; 0 = in the main process
  c.num_threads = 2  # threads per process loading samples (PyAV and Pillow release the GIL)
  c.prefetch_buffer_size = 8  # samples read ahead per process
  c.worker_buffer_size = 2  # batches buffered per worker process
  # Bad input.
  c.max_failure_fraction = 0.1  # stop when confidently more entries than this are unreadable
  c.failure_confidence = 0.999  # ... at this one-sided confidence (failures.py)
  c.max_retries_per_sample = 50
  c.seed = 0  # used when a caller passes no seed
  return c


def dataset_frames(cfg, k: int) -> int:
  """Frames per clip of dataset ``k``: ``dataset_fpcs[k]`` (V-JEPA 2), else ``num_frames``. Batches
  have one static clip shape, so every dataset must give ``num_frames`` frames."""
  fpcs = cfg.get("dataset_fpcs")
  if not fpcs:
    return cfg.num_frames
  if any(int(f) != cfg.num_frames for f in fpcs):
    raise ConfigError(f"config.data.dataset_fpcs={list(fpcs)} differ from num_frames="
                      f"{cfg.num_frames}: jepa_jax batches have one clip length; give every "
                      "dataset num_frames frames (the released V-JEPA 2 recipes do)")
  return int(fpcs[k])
