"""ViT-g/16 (1408 wide, 40 deep, 16 heads, MLP ratio 48/11) with the ViT-H/16 recipe. The paper
trains no ViT-g; the reference code defines the size and V-JEPA 2 uses it.
"""
from configs import vith16


def get_config():
  c = vith16.get_config()
  c.model.name = "giant"
  c.mesh.fsdp = 16
  c.model.remat = "full"
  return c
