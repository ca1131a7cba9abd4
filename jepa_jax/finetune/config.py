"""The fine-tuning config schema: every field ``python -m jepa_jax.finetune`` reads.

The encoder and data fields are those of the frozen evaluation (``jepa_jax.eval.config``), so the
same checkpoint/converted weights and index files work: ``checkpoint`` is a pretraining workdir,
a converted-weights directory or ``"random"``; ``checkpoint_key`` ``target`` (EMA) or ``online``.
The defaults are VideoMAE's fine-tuning recipe (run_class_finetuning.py of MCG-NJU/VideoMAE);
``configs/finetune/vitl16_k400.py`` says which number comes from where.
"""
import ml_collections

from jepa_jax import nonfinite
from jepa_jax import sharding
from jepa_jax.data import default_data_config
from jepa_jax.eval import config as eval_config


def base_finetune_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "k400"
  c.seed = 0

  # -- Encoder (as jepa_jax.eval loads it; see eval/encoder.py).
  c.checkpoint = ""
  c.checkpoint_key = "target"
  c.checkpoint_step = None
  c.model = eval_config.model_config()
  c.encoder_dtype = "bfloat16"   # compute dtype; parameters and optimiser state stay float32
  c.attention = "auto"
  c.freeze_encoder = False       # True: the frozen-probe baseline (same loop, encoder not updated)

  # -- Head.
  c.head = ml_collections.ConfigDict(dict(
      kind="linear",             # linear: mean-pool + LayerNorm + linear (VideoMAE) | attentive
      init_scale=0.001,          # linear head's initial weights x this (VideoMAE --init_scale)
      depth=1, num_heads=None, mlp_ratio=4.0, blocks_on="query",   # attentive head (eval probe)
      dtype="float32",
  ))

  # -- Data (the eval pipeline: random resized crop per training clip, centre/side views at test).
  c.data = default_data_config()
  c.data.crop_size = 224
  c.data.num_frames = 16
  c.data.frame_step = 4
  c.train_index = "/path/to/kinetics400/train.csv"
  c.val_index = "/path/to/kinetics400/val.csv"
  c.synthetic_label = ""         # with the synthetic set (train_index = ""): which label
  c.num_classes = 400            # None = 1 + the largest training label
  c.test_segments = 5            # clips per test video (one per equal segment)
  c.test_views = 3               # spatial views per clip; the S x V predictions are averaged
  c.view_aggregation = "softmax"
  c.test_batch_size = None       # videos per test batch; None = batch_size

  # -- Regularisation.
  c.drop_path = 0.1              # stochastic depth of the last block (linear from 0)
  c.label_smoothing = 0.1
  c.mixup = ml_collections.ConfigDict(dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0,
                                           switch_prob=0.5))
  c.layer_decay = 0.75

  # -- Optimisation, in pretraining's and eval's schedule vocabulary (VideoMAE's names: warmup_lr
  # is start_lr, min_lr is final_lr, warmup_epochs is warmup). lr, start_lr and final_lr are per
  # 256 clips: scaled by batch_size / lr_batch_base.
  c.epochs = 30
  c.batch_size = 64              # global
  c.steps_per_epoch = None       # None = training examples // batch_size
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, start_lr=1e-6, final_lr=1e-6, lr_batch_base=256, warmup=5,   # warmup in epochs
      weight_decay=0.05, b1=0.9, b2=0.999, eps=1e-8, clip_grad=None))

  # -- Devices: pretraining's mesh and sharding rules (jepa_jax.sharding). The batch is split over
  # data x fsdp devices; with fsdp > 1, each parameter and AdamW moment of at least min_fsdp_size
  # elements is split over the fsdp devices (the default, fsdp 1, replicates them).
  c.mesh = ml_collections.ConfigDict(
      dict(data=-1, fsdp=1, min_fsdp_size=sharding.DEFAULT_MIN_FSDP_SIZE))

  # -- Non-finite loss or gradient: the update is never applied (jepa_jax.nonfinite, as in
  # pretraining); stop, or skip and stop after max_consecutive_skips skipped updates in a row.
  c.nonfinite = "stop"
  c.max_consecutive_skips = nonfinite.MAX_CONSECUTIVE_SKIPS

  # -- Checkpoints, logging, evaluation.
  c.save = ml_collections.ConfigDict(dict(every=500, keep=2, async_save=True))
  c.log_every = 50
  c.eval_every = 0               # epochs between validation passes; 0 = only at the end
  c.prefetch = 2
  return c


# Relative paths (checkpoint, index files, synthetic_dir) -> absolute, as for the eval.
resolve_paths = eval_config.resolve_paths
