"""The base pretraining config: every number of the paper's ViT-L/16 run (configs/pretrain/vitl16.yaml
of the reference). Experiment files in ``configs/`` start from it and change what differs.
"""
import dataclasses

import ml_collections

from jepa_jax import masks
from jepa_jax import nonfinite
from jepa_jax import paths
from jepa_jax import sharding


def mask_config(num_blocks, spatial_scale, **kwargs) -> ml_collections.ConfigDict:
  """A multi-block mask entry of ``config.masks``: ``masks.MaskConfig``'s defaults and checks,
  as a ConfigDict so that the command line can override its fields."""
  cfg = masks.MaskConfig(num_blocks=num_blocks, spatial_scale=spatial_scale, **kwargs)
  return ml_collections.ConfigDict(dataclasses.asdict(cfg))


def pretrain_masks() -> list:
  """Short-range (8 blocks x 0.15) and long-range (2 blocks x 0.7), blocks spanning all time."""
  return [ml_collections.ConfigDict(dataclasses.asdict(m)) for m in masks.pretrain_configs()]


def image_mask() -> ml_collections.ConfigDict:
  """V-JEPA 2.1's ``img_mask``: one mask of 10 blocks x 0.15 (configs/train_2_1/*: aspect
  0.75-1.5, the blocks spanning the image's one frame)."""
  return mask_config(num_blocks=10, spatial_scale=(0.15, 0.15))


def images_config() -> ml_collections.ConfigDict:
  """``config.images``: V-JEPA 2.1's image half of a step (its ``img_data`` ranks); off while
  ``batch_size`` is 0. Needs ``config.model.vjepa21`` (the image patch and modality embeddings)."""
  return ml_collections.ConfigDict(dict(
      batch_size=0,              # global images per step; 0 = video only
      # Image index files (``path [label]``, the reference's imagenet1k.csv), directories of
      # images or tfds: image datasets (e.g. "tfds:imagenet2012"); empty = synthetic stills.
      datasets=[],
      datasets_weights=None,
      synthetic_dir=None,        # None = config.data.synthetic_dir + "_images"
      synthetic_num_images=256,
      # The gradient weight of the image loss: the reference's img_data.rank_ratio, the share of
      # its ranks that train on images (DDP averages every rank's gradient equally).
      loss_weight=0.5,
      lambda_value=0.5,          # the context loss's lambda on images (lambda_value_img)
      masks=[image_mask()],
  ))


def data_config() -> ml_collections.ConfigDict:
  from jepa_jax.data import default_data_config
  return default_data_config()


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 234
  c.batch_size = 3072            # global: 24 clips per GPU x 128 GPUs
  # Micro-batches per update: the global batch is processed k slices at a time inside the step
  # (gradients summed, one optimiser + EMA update), so 8 GPUs can keep the 3072-clip batch at 24
  # clips per GPU per micro-step with k=16 (launch/README.md). batch_size % (k * devices) == 0.
  c.grad_accum_steps = 1

  c.model = ml_collections.ConfigDict(dict(
      name="large",              # tiny | small | base | large | huge | giant | giant_xformers ...
      patch_size=16,
      tubelet_size=2,
      uniform_power=True,
      pred_depth=12,
      pred_embed_dim=384,
      pred_num_heads=None,       # None = the encoder's heads (V-JEPA); V-JEPA 2 uses 12
      use_rope=False,            # V-JEPA 2: 3D RoPE in encoder and predictor, no position table
      zero_init_mask_tokens=True,
      num_mask_tokens=None,      # None = len(masks) * len(data.dataset_fpcs or [1])
      mask_token_per="mask",     # mask (V-JEPA: mask i -> token i) | clip_length (V-JEPA 2)
      # The reference's training entry point re-draws every Linear after construction, undoing
      # the per-block rescale: released models trained without it (see jepa_jax.models).
      rescale_residual_init=False,
      dtype="bfloat16",          # compute dtype; parameters and optimiser state stay float32
      attention="auto",          # auto | xla | cudnn | chunked | flash | einsum (models/layers.py)
      remat="none",              # none | full | dots | dots_no_batch
      scan=False,                # nn.scan over blocks: compile time independent of depth
      overrides={},              # e.g. {"embed_dim": 96, "depth": 2, "num_heads": 4}
      vjepa21=False,             # the V-JEPA 2.1 architecture (configs/vjepa21, docs/vjepa21.md)
  ))

  c.data = data_config()
  c.masks = pretrain_masks()
  c.images = images_config()

  c.optim = ml_collections.ConfigDict(dict(
      epochs=300, ipe=300, ipe_scale=1.25, warmup=40,
      start_lr=2e-4, lr=6.25e-4, final_lr=1e-6,
      weight_decay=0.04, final_weight_decay=0.4,
      ema=(0.998, 1.0), clip_grad=10.0, b1=0.9, b2=0.999, eps=1e-8,
      lr_schedule="warmup_cosine",  # | linear_decay (V-JEPA 2 cooldown) | wsd; see jepa_jax.optim
      anneal=0))

  c.mesh = ml_collections.ConfigDict(
      dict(data=-1, fsdp=1, min_fsdp_size=sharding.DEFAULT_MIN_FSDP_SIZE))
  c.nonfinite = "stop"           # stop | skip: what the trainer does on a non-finite loss
  c.max_consecutive_skips = nonfinite.MAX_CONSECUTIVE_SKIPS   # with 'skip': stop after this many in a row

  c.log_every = 50               # steps between metric fetches (the only host syncs)
  c.prefetch = 2                 # batches placed on the devices ahead of the step
  c.profile = False              # a jax profiler trace of 5 steps into the workdir
  # JAX's persistent compilation cache (jepa_jax/compilation_cache.py): a restart or the next run
  # of the same config loads the compiled step instead of compiling it again. "": off, unless
  # the JAX_COMPILATION_CACHE_DIR environment variable is set.
  c.compilation_cache_dir = ""
  c.init_from = None             # params of another run or converted weights to start from
  # With init_from a trainer workdir: also take its optimiser state (AdamW moments and step
  # count), restarting step and schedules at 0 -- V-JEPA 2's cooldown (is_anneal) start.
  c.init_from_optimizer = False
  # The online probe (jepa_jax/pretrain/probe_monitor.py): every `every` steps (0 = off) the target
  # encoder's pooled tokens of `num_clips` labelled clips, probed by k-fold ridge / kNN; logged as
  # probe/<label>/<kind> (percent). `index`: a labelled index file or a synthetic label name.
  c.monitor_probe = ml_collections.ConfigDict(dict(
      every=0, index="", num_clips=128, kind="ridge", pooling="mean", folds=4,
      ridge_alpha=1.0, knn_k=5, batch_size=None))
  c.checkpoint = ml_collections.ConfigDict(dict(
      every=1000,                # steps between (async) saves; always at the end
      keep=3,                    # the last K checkpoints ...
      keep_period=10000,         # ... plus every M-th step for good
      async_save=True))
  return c


def resolve_paths(config) -> None:
  """Make a pretraining config's local paths absolute (``jepa_jax.paths``), in place; the entry
  point calls it, so the printed and saved config name the files actually used."""
  if config.get("workdir"):
    config.workdir = paths.resolve(config.workdir)
  if config.get("init_from"):
    config.init_from = paths.resolve(str(config.init_from))
  mp = config.get("monitor_probe")
  if mp and mp.get("index") and not _is_synthetic_label(mp.index):
    mp.index = paths.resolve(str(mp.index))
  d = config.data
  if d.get("datasets"):
    d.datasets = [paths.resolve_source(str(s)) for s in d.datasets]
  for name in ("synthetic_dir", "tfds_data_dir"):
    if d.get(name):
      d[name] = paths.resolve(str(d[name]))
  images = config.get("images")
  if images:
    if images.get("datasets"):
      images.datasets = [paths.resolve_source(str(s)) for s in images.datasets]
    if images.get("synthetic_dir"):
      images.synthetic_dir = paths.resolve(str(images.synthetic_dir))


def _is_synthetic_label(name: str) -> bool:
  from jepa_jax.pretrain import probe_monitor  # pylint: disable=import-outside-toplevel
  return probe_monitor.is_synthetic_labels(name)
