"""Kinetics-400 frozen evaluation, 16x8x3 (configs/evals/vitl16_k400_16x8x3.yaml of the reference).

8 segments x one 16-frame clip at stride 4 x 3 spatial views; the tokens of the 8 clips are
concatenated for the probe; 20 epochs, batch 256 (4 per GPU x 64), AdamW lr 1e-3 cosine to 0,
wd 0.01, bf16. Paper: ViT-L/16 80.8, ViT-H/16 82.0 top-1.

python -m jepa_jax.eval --config=configs/eval/k400.py --workdir=DIR --config.checkpoint=RUN
Low-shot (Table 7): --config.lowshot.fractions='(0.05,0.1,0.5)' --config.lowshot.seeds='(0,1,2)'
"""
from jepa_jax.eval.config import base_eval_config


def get_config():
  c = base_eval_config()
  c.task = "k400_16x8x3"
  c.checkpoint = "/path/to/pretrain/workdir"
  c.train_index = "/path/to/kinetics400/train.csv"  # `path label` per line
  c.val_index = "/path/to/kinetics400/val.csv"
  c.num_classes = 400
  c.num_segments = 8
  c.num_views = 3
  c.data.num_frames = 16
  c.data.frame_step = 4
  c.data.crop_size = 224            # 384 for ViT-H/16_384
  c.data.num_workers = 8
  c.epochs = 20
  c.batch_size = 256
  c.optim.weight_decay = 0.01
  return c
