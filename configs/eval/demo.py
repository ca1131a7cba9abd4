"""Frozen evaluation of the CPU demo encoder (configs/demo.py) on the built-in synthetic set.

python -m jepa_jax.main --config=configs/demo.py --workdir=workdir/demo      # pretrain
python -m jepa_jax.eval --config=configs/eval/demo.py --config.checkpoint=workdir/demo \
    --workdir=workdir/demo_eval --config.synthetic_label=direction

A demo-sized 8x2x3 protocol (2 segments of one 8-frame clip at stride 4, 3 views, 64 px) with the
features cached (no augmentation), so the probe trains for many epochs in seconds. Labels that
need motion: direction, rotation, speed, motion; labels that need appearance: shape, colour.
``--config.checkpoint=random`` probes a randomly initialised encoder of the same architecture.
"""
from jepa_jax.eval.config import base_eval_config


def get_config():
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
  c.data.synthetic_dir = "data/synthetic"
  c.data.synthetic_num_videos = 128
  c.data.synthetic_seed = 0
  c.synthetic_label = "direction"
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
