"""Frozen evaluation of the CPU demo encoder (configs/demo.py) on the built-in synthetic set.

python -m jepa_jax.main --config=configs/demo.py --workdir=workdir/demo      # pretrain
python -m jepa_jax.eval --config=configs/eval/demo.py --config.checkpoint=workdir/demo \
    --workdir=workdir/demo_eval

A demo-sized 8x2x3 protocol (2 segments of one 8-frame clip at stride 4, 3 views, 64 px) with the
features cached (no augmentation), so the probe trains for many epochs in seconds. It probes the
shape labels of a 512-video synthetic set (data/synthetic512, generated on first use) with probe
seeds 0-2, and randomly initialised encoders of the same architecture (seeds 0-2) with the same
recipe, and prints "pretrained X vs random Y" with the margin and the seeds' spread.
``--config.synthetic_label=``: direction, rotation, speed, motion (need motion), shape, colour
(appearance). ``--config.random_baseline_seeds='()'`` skips the baseline;
``--config.checkpoint=random`` probes a randomly initialised encoder alone.
"""
from jepa_jax.eval.config import demo_eval_config


def get_config():
  return demo_eval_config()
