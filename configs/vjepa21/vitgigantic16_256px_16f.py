"""V-JEPA 2.1 ViT-G/16 pretraining, 256 px x 16 frames at 4 fps (configs/train_2_1/vitG16/
pretrain-256px-16f.yaml of facebookresearch/vjepa2 at 204698b; common.py lists the recipe).

python -m jepa_jax.main --config=configs/vjepa21/vitgigantic16_256px_16f.py --workdir=gs://BUCKET/vjepa21-vitgigantic16_256px_16f \
    --config.data.datasets='("/data/k710.csv","/data/ssv2.csv","/data/howto100m.csv")'
"""
from configs.vjepa21 import common


def get_config():
  return common.pretrain_config("gigantic_xformers")
