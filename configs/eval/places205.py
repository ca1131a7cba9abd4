"""Places205 frozen evaluation (configs/evals/vitl16_places.yaml).

Places205 has no TFDS builder: prepare one with ``image`` and ``label`` features and point
--config.data.tfds_data_dir at it (or pass other tfds:name@split specs).
"""
from jepa_jax.eval.config import image_task_config


def get_config():
  return image_task_config("places205", 205, "tfds:places205@train", "tfds:places205@validation")
