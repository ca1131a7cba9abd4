"""Kinetics-400 frozen evaluation of a V-JEPA 2 encoder, 16x8x3 at 256 px
(configs/eval/vitl/k400.yaml of facebookresearch/vjepa2; protocol in
jepa_jax.eval.config.vjepa2_eval_config): 8 segments x one 16-frame clip at stride 4 x 3 views,
4-block probe, 20 LR/WD probes, 20 epochs, batch 4 per GPU x 64. ViT-g/16_384
(vitg-384/k400.yaml): --config.data.crop_size=384 --config.batch_size=256 (1 per GPU x 256).

python -m jepa_jax.eval --config=configs/eval/vjepa2_k400.py --workdir=DIR --config.checkpoint=CKPT
"""
from jepa_jax.eval.config import vjepa2_eval_config


def get_config():
  c = vjepa2_eval_config("k400_16x8x3_vjepa2", 400, frames=16, frame_step=4, segments=8, views=3,
                         resolution=256, clips_per_gpu=4)
  c.train_index = "/path/to/kinetics400/train.csv"
  c.val_index = "/path/to/kinetics400/val.csv"
  return c
