"""V-JEPA 2.1 ViT-B/16 cooldown, 256 px x 64 frames, from the 16-frame pretraining run
(configs/train_2_1/vitb16/cooldown-256px-64f.yaml of facebookresearch/vjepa2 at 204698b; common.py
lists the recipe): 40 epochs x 300 iterations, LR linear from 6e-4 to 1e-6, no warm-up, context
loss at lambda 0.5 from the first step without distance weights.

python -m jepa_jax.main --config=configs/vjepa21/vitb16_cooldown_256px_64f.py --workdir=gs://BUCKET/vjepa21-vitb16_cooldown \
    --config.init_from=gs://BUCKET/vjepa21-vitb16_256px_16f
"""
from configs.vjepa21 import common


def get_config():
  return common.cooldown_config("base", init_from="/path/to/vjepa21-vitb16_256px_16f")
