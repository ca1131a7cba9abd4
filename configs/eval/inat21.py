"""iNaturalist 2021 frozen evaluation (configs/evals/vitl16_inat.yaml).

Reads a prepared TFDS i_naturalist2021 (nothing is downloaded): --config.data.tfds_data_dir=DIR.
"""
from jepa_jax.eval.config import image_task_config


def get_config():
  return image_task_config("inat21", 10000, "tfds:i_naturalist2021@train", "tfds:i_naturalist2021@val")
