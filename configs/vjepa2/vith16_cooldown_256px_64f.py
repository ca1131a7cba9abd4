"""V-JEPA 2 vith16 cooldown ("anneal"), 256 px x 64 frames at 4 fps, from the 256 px x 16-frame
pretraining run (configs/train/vith16/cooldown-256px-64f.yaml of facebookresearch/vjepa2): batch
12 per GPU x 256 GPUs, 40 epochs x 300 iterations, LR linear from 5.25e-4 to 1e-6 over 1.25x
that, no warm-up; encoder, predictor, target and AdamW state from the pretraining checkpoint.

python -m jepa_jax.main --config=configs/vjepa2/vith16_cooldown_256px_64f.py --workdir=gs://BUCKET/vjepa2-vith16_cooldown_256px_64f \
    --config.init_from=gs://BUCKET/vjepa2-vith16_256px_16f
"""
from configs.vjepa2 import common


def get_config():
  return common.cooldown_config("huge", crop_size=256, clips_per_gpu=12, gpus=256,
                                epochs=40, ipe=300,
                                init_from="/path/to/vjepa2-vith16_256px_16f")
