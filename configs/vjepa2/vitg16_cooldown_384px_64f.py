"""V-JEPA 2 vitg16 cooldown ("anneal"), 384 px x 64 frames at 4 fps, from the 256 px x 16-frame
pretraining run (configs/train/vitg16/cooldown-384px-64f.yaml of facebookresearch/vjepa2): batch
6 per GPU x 512 GPUs, 40 epochs x 300 iterations, LR linear from 5.25e-4 to 1e-6 over 1.25x
that, no warm-up; encoder, predictor, target and AdamW state from the pretraining checkpoint.

python -m jepa_jax.main --config=configs/vjepa2/vitg16_cooldown_384px_64f.py --workdir=gs://BUCKET/vjepa2-vitg16_cooldown_384px_64f \
    --config.init_from=gs://BUCKET/vjepa2-vitg16_256px_16f
"""
from configs.vjepa2 import common


def get_config():
  return common.cooldown_config("giant_xformers", crop_size=384, clips_per_gpu=6, gpus=512,
                                epochs=40, ipe=300,
                                init_from="/path/to/vjepa2-vitg16_256px_16f")
