"""Something-Something-v2 frozen evaluation, 16x2x3 (configs/evals/vitl16_ssv2_16x2x3.yaml).

2 segments x one 16-frame clip at stride 4 x 3 spatial views; 20 epochs, batch 256, AdamW lr 1e-3
cosine to 0, wd 0.01, bf16. Paper: ViT-L/16 69.5, ViT-H/16 71.4 top-1.
"""
from jepa_jax.eval.config import base_eval_config


def get_config():
  c = base_eval_config()
  c.task = "ssv2_16x2x3"
  c.checkpoint = "/path/to/pretrain/workdir"
  c.train_index = "/path/to/ssv2/train.csv"
  c.val_index = "/path/to/ssv2/val.csv"
  c.num_classes = 174
  c.num_segments = 2
  c.num_views = 3
  c.data.num_frames = 16
  c.data.frame_step = 4
  c.data.crop_size = 224
  c.data.num_workers = 8
  c.epochs = 20
  c.batch_size = 256
  c.optim.weight_decay = 0.01
  return c
