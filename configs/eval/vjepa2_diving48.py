"""Diving-48 frozen evaluation of a V-JEPA 2 encoder, 32x4x3 at 256 px
(configs/eval/vitl/diving48.yaml of facebookresearch/vjepa2): 4 segments x one 32-frame clip at
stride 2 x 3 views; the probe reads the tokens of ViT-L's blocks 17, 19, 21 and 23 (the reference's
"multilevel" encoder wrapper; ViT-g/16_384: 24, 29, 34, 39 -- --config.feature_layer and
--config.data.crop_size=384); 3 probes (LR 1e-3, 3e-4, 1e-4 at WD 0.8), 100 epochs, batch 2 per
GPU x 64. Reference: ViT-L/16 89.0, ViT-g/16_384 90.2 (README, released probes).

python -m jepa_jax.eval --config=configs/eval/vjepa2_diving48.py --workdir=DIR \
    --config.checkpoint=CKPT
"""
from jepa_jax.eval.config import vjepa2_eval_config

GRID = tuple(dict(lr=lr, start_lr=lr, final_lr=0.0, warmup=0.0, weight_decay=0.8,
                  final_weight_decay=0.8) for lr in (0.001, 0.0003, 0.0001))


def get_config():
  c = vjepa2_eval_config("diving48_32x4x3_vjepa2", 48, frames=32, frame_step=2, segments=4,
                         views=3, resolution=256, clips_per_gpu=2, epochs=100, grid=GRID)
  c.feature_layer = [17, 19, 21, 23]
  c.train_index = "/path/to/diving48/Diving48_train_paths.csv"
  c.val_index = "/path/to/diving48/Diving48_test_paths.csv"
  return c
