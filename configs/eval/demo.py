"""Frozen evaluation of the CPU demo encoder (configs/demo.py) on the built-in synthetic set.

python -m jepa_jax.main --config=configs/demo.py --workdir=workdir/demo      # pretrain
python -m jepa_jax.eval --config=configs/eval/demo.py --config.checkpoint=workdir/demo \
    --workdir=workdir/demo_eval --config.synthetic_label=direction

A demo-sized 8x2x3 protocol (2 segments of one 8-frame clip at stride 4, 3 views, 64 px) with the
features cached (no augmentation), so the probe trains for many epochs in seconds. Labels that
need motion: direction, rotation, speed, motion; labels that need appearance: shape, colour.
``--config.checkpoint=random`` probes a randomly initialised encoder of the same architecture.
"""
from jepa_jax.eval.config import demo_eval_config


def get_config():
  return demo_eval_config()
