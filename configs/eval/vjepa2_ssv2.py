"""Something-Something-v2 frozen evaluation of a V-JEPA 2 encoder, 16x2x3 at 256 px
(configs/eval/vitl/ssv2.yaml of facebookresearch/vjepa2; the protocol is in
jepa_jax.eval.config.vjepa2_eval_config): 2 segments x one 16-frame clip at stride 4 x 3 views,
4-block probe, 20 LR/WD probes, 20 epochs, batch 4 per GPU x 64. Reference: ViT-L/16 73.7
(README, released probe).

python -m jepa_jax.convert --from-torch vitl.pt --out /ckpt/vjepa2-vitl
python -m jepa_jax.eval --config=configs/eval/vjepa2_ssv2.py --workdir=DIR \
    --config.checkpoint=/ckpt/vjepa2-vitl
ViT-g/16_384 (configs/eval/vitg-384/ssv2.yaml, 77.3): configs/eval/vjepa2_vitg384_ssv2.py.
"""
from jepa_jax.eval.config import vjepa2_eval_config


def get_config():
  c = vjepa2_eval_config("ssv2_16x2x3_vjepa2", 174, frames=16, frame_step=4, segments=2, views=3,
                         resolution=256, clips_per_gpu=4)
  c.train_index = "/path/to/ssv2/train.csv"
  c.val_index = "/path/to/ssv2/val.csv"
  return c
