"""ImageNet-1K frozen evaluation (configs/evals/vitl16_in1k.yaml).

Paper: ViT-L/16 74.8, ViT-H/16_384 77.4 top-1 (77.9 with a two-layer probe: --config.probe.depth=2).
Reads a prepared TFDS imagenet2012 (nothing is downloaded): --config.data.tfds_data_dir=DIR.
"""
from jepa_jax.eval.config import image_task_config


def get_config():
  return image_task_config("in1k", 1000, "tfds:imagenet2012@train", "tfds:imagenet2012@validation")
