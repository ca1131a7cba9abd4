"""V-JEPA ViT-H/16 at 384 px (configs/pretrain/vith16_384.yaml of the reference): batch 2400,
16 frames x stride 4, 8 x 24 x 24 = 4608 tokens.
"""
from jepa_jax.pretrain import defaults


def get_config():
  c = defaults.base_config()
  c.model.name = "huge"
  c.batch_size = 2400
  c.data.crop_size = 384
  c.data.datasets = ["/path/to/kinetics710_index.csv", "/path/to/ssv2_index.csv",
                     "/path/to/howto100m_index.csv"]
  c.data.num_workers = 12
  c.mesh.fsdp = 8
  c.model.remat = "full"
  c.model.scan = True
  return c
