"""The frozen-evaluation config schema: every field ``python -m jepa_jax.eval`` reads.

Task files in ``configs/eval/`` start from ``base_eval_config()`` (the reference's ViT-L/16 K400
16x8x3 protocol, evals/video_classification_frozen + configs/evals/vitl16_k400_16x8x3.yaml) and
change what differs. Any field can be overridden on the command line (``--config.epochs=5``).
"""
import ml_collections

from jepa_jax import models
from jepa_jax import paths
from jepa_jax import sharding
from jepa_jax.data import default_data_config


def model_config() -> ml_collections.ConfigDict:
  """Encoder architecture: ``models.ARCHITECTURE_FIELDS`` (name, patch_size, tubelet_size,
  uniform_power, use_rope, scan, overrides, vjepa21), all None. A None field is the checkpoint's
  (its saved model spec); a field set here wins (and a checkpoint that does not fit it fails with
  a named parameter). ``overrides``: e.g. ``{"embed_dim": 96, "depth": 4, "num_heads": 4}``."""
  return ml_collections.ConfigDict(dict.fromkeys(models.ARCHITECTURE_FIELDS), type_safe=False)


def base_eval_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "k400"
  c.seed = 0
  # -- Train a probe (True), or evaluate a saved one without training (False): config.probe_checkpoint
  # is a probe directory (an eval run's probes/<run>, or python -m jepa_jax.convert --kind probe);
  # only the validation index is read, with the full segments x views protocol.
  c.train = True
  c.probe_checkpoint = ""

  # -- Encoder: a trainer workdir (its checkpoints/), a converted-weights directory, or "random"
  # (a randomly initialised encoder of config.model's architecture: the baseline of the demo).
  c.checkpoint = ""
  c.checkpoint_key = "target"   # target (EMA encoder, the reference's default) | online
  c.checkpoint_step = None      # None = latest
  c.model = model_config()
  c.encoder_dtype = "bfloat16"  # forward dtype of the frozen encoder (float32|bfloat16|float16)
  c.attention = "auto"          # auto | xla | cudnn | chunked | flash | einsum (models/layers.py)
  c.feature_layer = None        # None = the final (layer-normed) output; k = LN(output of block k);
                                # a list: the tokens of all those blocks (V-JEPA 2 "multilevel")

  # -- Data (config.data is the pipeline's schema; crop_size is the eval resolution).
  c.data = default_data_config()
  c.data.crop_size = 224
  c.data.num_frames = 16        # frames per clip
  c.data.frame_step = 4
  c.train_index = "/path/to/kinetics400/train.csv"  # index file, directory or tfds:name@split
  c.val_index = "/path/to/kinetics400/val.csv"
  # With the synthetic set (train_index = ""), the label to probe: direction | speed | rotation |
  # shape | colour | motion (the index files train_<label>.csv / val_<label>.csv).
  c.synthetic_label = ""
  c.num_classes = 400           # None = 1 + the largest label of the training index
  c.num_segments = 8            # clips per video (one per equal segment), tokens concatenated
  c.num_views = 3               # spatial views per clip at test time (logits averaged)
  c.view_aggregation = "softmax"  # softmax: mean of probabilities (the reference); logits: mean

  # -- Attentive probe (src/models/attentive_pooler.py).
  c.probe = ml_collections.ConfigDict(dict(
      depth=1,                  # 2 = the paper's two-layer probe (IN1K 77.9); V-JEPA 2: 4
      num_heads=None,           # None = the encoder's head count (the reference); V-JEPA 2: 16
      mlp_ratio=4.0,
      dtype="bfloat16",         # compute dtype; parameters are float32
      blocks_on="query",        # extra blocks after pooling (V-JEPA) | "tokens" before (V-JEPA 2)
  ))

  # -- Devices: the batch is split over every device; with mesh.fsdp > 1 the frozen encoder's
  # parameters are split over fsdp devices by pretraining's rules (jepa_jax.sharding.PARAM_RULES,
  # tensors of at least min_fsdp_size elements per layer), for encoders one device cannot hold.
  c.mesh = ml_collections.ConfigDict(dict(fsdp=1, min_fsdp_size=sharding.DEFAULT_MIN_FSDP_SIZE))

  # -- Probe optimisation (init_opt of the reference eval).
  c.epochs = 20
  c.batch_size = 256            # global; the reference: 4 per GPU x 64 GPUs
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, start_lr=1e-3, final_lr=0.0, warmup=0.0,   # warmup in epochs
      # The reference decays WD by cosine to CosineWDSchedule's default final value 1e-6.
      weight_decay=0.01, final_weight_decay=1e-6,
      clip_grad=1.0,            # the reference clips the probe's gradient norm at 1.0 (V-JEPA 2:
                                # no clipping, None)
      weight_decay_on="weights",  # weights: ndim != 1, no biases (V-JEPA) | all (V-JEPA 2)
      b1=0.9, b2=0.999, eps=1e-8,
  ))
  # V-JEPA 2's sweep: one probe per entry (each a dict of optim overrides: lr, start_lr,
  # final_lr, weight_decay, final_weight_decay, warmup), all on the same batches; each run reports
  # its best probe (the reference trains them side by side and reports the maximum). None: one
  # probe with config.optim.
  c.probe_grid = None

  # -- Feature caching: run the encoder once per example (centre crops, no augmentation) and
  # train the probe on the stored tokens for many epochs. Essential on CPU and for small sets;
  # memory is num_examples x num_views x num_segments x tokens x width.
  c.cache_features = False
  c.cache_dtype = "float32"     # float32 | bfloat16 for the stored tokens
  c.extract_batch_size = None   # videos per encoder pass when caching; None = batch_size

  # -- A baseline in the same run: for each seed s listed, a randomly initialised encoder of the
  # same architecture (init seed s) probed with the same recipe (probe seed s); results.json gets
  # "random_baseline" and "pretrained_vs_random", and the eval prints "pretrained X vs random Y".
  # With cache_features the clips are decoded once for every encoder.
  c.random_baseline_seeds = ()

  # -- Low-shot (Table 7): train on a per-class balanced fraction, once per seed.
  c.lowshot = ml_collections.ConfigDict(dict(fractions=(1.0,), seeds=(0,)))

  # -- Logging.
  c.eval_every = 1              # epochs between validation passes (the last epoch always)
  c.log_every = 50              # steps between training logs
  c.max_train_steps_per_epoch = None  # cap (tests, smoke runs); None = one pass over the data
  return c


def image_task_config(task: str, num_classes: int, train: str, val: str) -> ml_collections.ConfigDict:
  """The image tasks (configs/evals/vitl16_{in1k,places,inat}.yaml of the reference).

  The image is repeated 16 times along time to fill the clip the video encoder expects; one view
  (resize to 256/224 of the crop, centre crop) at test time. 20 epochs, batch 1024 (16 per GPU x
  64 GPUs), AdamW lr 1e-3 cosine to 0, weight decay 0.001 (the image configs' value), bf16.
  The reference trains with timm's auto-augment and random erasing, which jepa_jax does not
  implement (random resized crop only).
  """
  c = base_eval_config()
  c.task = task
  c.checkpoint = "/path/to/pretrain/workdir"
  c.train_index = train
  c.val_index = val
  c.num_classes = num_classes
  c.num_segments = 1
  c.num_views = 1
  c.data.num_frames = 16          # the image fills a 16-frame clip
  c.data.crop_size = 224          # 384 for ViT-H/16_384
  c.data.num_workers = 8
  c.epochs = 20
  c.batch_size = 1024
  c.optim.weight_decay = 0.001
  return c


# V-JEPA 2's probe sweep (configs/eval/vitl/{ssv2,k400}.yaml, vitg-384/...): 5 LRs x 4 WDs, each
# constant-start cosine to 0 with no warm-up and a constant WD.
VJEPA2_VIDEO_GRID = tuple(
    dict(lr=lr, start_lr=lr, final_lr=0.0, warmup=0.0, weight_decay=wd, final_weight_decay=wd)
    for wd in (0.01, 0.1, 0.4, 0.8) for lr in (0.005, 0.003, 0.001, 0.0003, 0.0001))


def vjepa2_eval_config(task: str, num_classes: int, *, frames: int, frame_step: int,
                       segments: int, views: int, resolution: int, clips_per_gpu: int,
                       gpus: int = 64, epochs: int = 20, grid=VJEPA2_VIDEO_GRID):
  """The V-JEPA 2 frozen-evaluation protocol (evals/video_classification_frozen of
  facebookresearch/vjepa2) where it differs from V-JEPA's:

  * a 4-block probe whose 3 self-attention blocks run over the encoder's tokens before the
    query pools them, with 16 heads whatever the encoder's (``classifier: num_heads 16,
    num_probe_blocks 4``), LayerNorm eps 1e-5;
  * 256 px (ViT-L/H/g) or 384 px (ViT-g/16_384) clips; the encoder is the RoPE one, so any clip
    length works (16, 32 or 64 frames);
  * one probe per LR/WD setting of ``grid`` (``multihead_kwargs``), the best reported; AdamW with
    weight decay on every parameter, no gradient clipping; the target encoder (``checkpoint_key:
    target_encoder``).

  The reference trains with RandAugment and random erasing (``auto_augment: true, reprob: 0.25``),
  which jepa_jax does not implement (random resized crop 0.08-1, aspect 3/4-4/3, no flip), and
  runs its frozen encoder under float16 autocast (``--config.encoder_dtype=float16`` reproduces
  that rounding; bfloat16 is the default here).
  """
  c = base_eval_config()
  c.task = task
  c.checkpoint = "/path/to/vjepa2/converted"   # python -m jepa_jax.convert --from-torch vitl.pt
  c.checkpoint_key = "target"
  c.num_classes = num_classes
  c.num_segments = segments
  c.num_views = views
  c.data.num_frames = frames
  c.data.frame_step = frame_step
  c.data.crop_size = resolution
  c.data.num_workers = 8
  c.epochs = epochs
  c.batch_size = clips_per_gpu * gpus
  c.probe.update(dict(depth=4, num_heads=16, blocks_on="tokens"))
  c.optim.update(dict(grid[0]))
  c.optim.clip_grad = None
  c.optim.weight_decay_on = "all"
  c.probe_grid = [dict(g) for g in grid] if len(grid) > 1 else None
  return c


def demo_eval_config() -> ml_collections.ConfigDict:
  """The CPU demo's eval (configs/eval/demo.py): the demo encoder (configs/demo.py) probed on the
  built-in synthetic set; in the package so that commands (``eval.compare``) need no configs/ tree."""
  c = base_eval_config()
  c.task = "synthetic_demo"
  c.checkpoint = "workdir/demo"  # the README's demo run, relative to the working directory
  # The demo encoder's architecture (configs/demo.py), used for checkpoint="random"; a checkpoint
  # that does not fit it fails with the name of the first mismatched parameter.
  c.model.name = "tiny"
  c.model.patch_size = 16
  c.model.tubelet_size = 2
  c.model.overrides = {"embed_dim": 96, "depth": 4, "num_heads": 4}
  c.encoder_dtype = "float32"     # bfloat16 is slower than float32 on most CPUs
  c.probe.dtype = "float32"
  c.train_index = ""              # the synthetic set's train_<label>.csv / val_<label>.csv
  c.val_index = ""
  # A 512-video probe set (generated on first use; the fine-tuning demo uses it too): the
  # pretraining set's 128 videos leave 26 validation videos, too few to tell two encoders apart.
  c.data.synthetic_dir = "data/synthetic512"
  c.data.synthetic_num_videos = 512
  c.data.synthetic_seed = 0
  # Shape: the label where the demo's pretraining beats a random encoder of the same size
  # (README "Demo: what the probe shows"); motion labels do not (same section).
  c.synthetic_label = "shape"
  # Probe seeds 0-2, and the random-init baseline in the same run: "pretrained X vs random Y".
  c.lowshot.seeds = (0, 1, 2)
  c.random_baseline_seeds = (0, 1, 2)
  c.num_classes = None            # from the labels
  c.num_segments = 2
  c.num_views = 3
  c.data.num_frames = 8
  c.data.frame_step = 4
  c.data.crop_size = 64
  c.data.num_workers = 0
  c.data.num_threads = 2
  c.cache_features = True
  c.extract_batch_size = 16
  c.epochs = 40
  c.batch_size = 16
  c.log_every = 0
  c.eval_every = 10
  return c


def resolve_paths(config) -> None:
  """Make an eval config's local paths absolute (``jepa_jax.paths``), in place; the entry point
  calls it. ``checkpoint="random"`` is a keyword, not a path."""
  if config.checkpoint and config.checkpoint != "random":
    config.checkpoint = paths.resolve(str(config.checkpoint))
  if config.get("probe_checkpoint"):
    config.probe_checkpoint = paths.resolve(str(config.probe_checkpoint))
  for name in ("train_index", "val_index"):
    if config[name]:
      config[name] = paths.resolve_source(str(config[name]))
  for name in ("synthetic_dir", "tfds_data_dir"):
    if config.data.get(name):
      config.data[name] = paths.resolve(str(config.data[name]))
