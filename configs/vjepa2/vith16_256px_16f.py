"""V-JEPA 2 ViT-H/16 pretraining, 256 px x 16 frames at 4 fps
(configs/train/vith16/pretrain-256px-16f.yaml of facebookresearch/vjepa2; common.py lists the
recipe).

python -m jepa_jax.main --config=configs/vjepa2/vith16_256px_16f.py --workdir=gs://BUCKET/vjepa2-vith16_256px_16f \
    --config.data.datasets='("/data/k710.csv","/data/ssv2.csv","/data/howto100m.csv")'
"""
from configs.vjepa2 import common


def get_config():
  return common.pretrain_config("huge", epochs=10)
