"""Something-Something-v2 frozen evaluation of V-JEPA 2 ViT-g/16_384, 64x2x3 at 384 px
(configs/eval/vitg-384/ssv2.yaml of facebookresearch/vjepa2): 2 segments x one 64-frame clip at
stride 2 x 3 views, 4-block probe, 20 LR/WD probes, 20 epochs, batch 2 per GPU x 128. Reference:
77.3 (README, released probe ssv2-vitg-384-64x2x3.pt).

python -m jepa_jax.convert --from-torch vitg-384.pt --out /ckpt/vjepa2-vitg384
python -m jepa_jax.eval --config=configs/eval/vjepa2_vitg384_ssv2.py --workdir=DIR \
    --config.checkpoint=/ckpt/vjepa2-vitg384
"""
from jepa_jax.eval.config import vjepa2_eval_config


def get_config():
  c = vjepa2_eval_config("ssv2_64x2x3_vjepa2", 174, frames=64, frame_step=2, segments=2, views=3,
                         resolution=384, clips_per_gpu=2, gpus=128)
  c.train_index = "/path/to/ssv2/train.csv"
  c.val_index = "/path/to/ssv2/val.csv"
  return c
