"""End-to-end fine-tuning of a ViT-L/16 on Kinetics-400 with VideoMAE's recipe.

python -m jepa_jax.finetune --config=configs/finetune/vitl16_k400.py --workdir=DIR \
    --config.checkpoint=/path/to/pretrain/workdir

Where each number comes from (MCG-NJU/VideoMAE, read for this config):
  [script] scripts/kinetics/videomae_vit_large_patch16_224_tubemasking_ratio_0.9_epoch_1600/
           finetune.sh -- the ViT-L K400 run: 64 GPUs x batch 2, --lr 2e-3, --epochs 35,
           --num_frames 16 --sampling_rate 4, --input_size 224, --weight_decay 0.05,
           --opt_betas 0.9 0.999, --test_num_segment 5 --test_num_crop 3, --num_sample 2.
  [code]   run_class_finetuning.py argparse defaults, which that script does not override:
           --layer_decay 0.75, --drop_path 0.1, --smoothing 0.1, --mixup 0.8, --cutmix 1.0,
           --mixup_prob 1.0, --mixup_switch_prob 0.5, --mixup_mode batch, --warmup_epochs 5,
           --warmup_lr 1e-6, --min_lr 1e-6, --clip_grad None, --opt_eps 1e-8,
           --init_scale 0.001, mean pooling (use_mean_pooling True); and its LR rule
           lr = lr * total_batch / 256 (applied to lr, warmup_lr and min_lr), total_batch =
           batch_size x update_freq x GPUs = 128 here, so the per-step LR is 1e-3.
The VideoMAE paper's fine-tuning table could not be retrieved in this session, so no number
here is taken from it; in particular drop path is the code default 0.1 (0.2 is sometimes quoted
for ViT-L and was not confirmed).

Differences from VideoMAE, all in the data pipeline: no RandAugment (--aa rand-m7-n4-mstd0.5-inc1)
and no random erasing (--reprob 0.25), which jepa_jax does not implement; no repeated
augmentation (--num_sample 2 makes every step see 2 clips of each of 128 videos, i.e. 256 clips,
at the LR of 128; here a step is 128 clips); random resized crop (scale 0.08-1) instead of
VideoMAE's short-side jitter + crop. Horizontal flip is on (the usual Kinetics practice; not
checked against VideoMAE's kinetics.py, which was not available here).
"""
from jepa_jax.finetune.config import base_finetune_config


def get_config():
  c = base_finetune_config()
  c.task = "k400_finetune"
  c.checkpoint = "/path/to/pretrain/workdir"   # or converted V-JEPA weights
  c.checkpoint_key = "target"
  c.model.name = None                          # from the checkpoint's saved config
  c.encoder_dtype = "bfloat16"
  c.head.kind = "linear"                       # [code] mean pooling + fc_norm + linear head
  c.head.init_scale = 0.001                    # [code]
  c.train_index = "/path/to/kinetics400/train.csv"
  c.val_index = "/path/to/kinetics400/val.csv"
  c.num_classes = 400
  c.data.num_frames = 16                       # [script]
  c.data.frame_step = 4                        # [script] sampling_rate
  c.data.crop_size = 224                       # [script]
  c.data.num_workers = 8
  c.data.probe_horizontal_flip = True          # see the docstring
  c.test_segments = 5                          # [script] test_num_segment
  c.test_views = 3                             # [script] test_num_crop
  c.batch_size = 128                           # [script] 2 per GPU x 64 GPUs
  c.epochs = 35                                # [script]
  c.drop_path = 0.1                            # [code]
  c.label_smoothing = 0.1                      # [code]
  c.mixup.update(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5)  # [code]
  c.layer_decay = 0.75                         # [code]
  c.optim.update(
      lr=2e-3,                                 # [script], per 256 clips: x 128/256 = 1e-3
      start_lr=1e-6, final_lr=1e-6,            # [code] warmup_lr, min_lr; scaled by batch / 256
      lr_batch_base=256,                       # [code] the LR rule
      warmup=5,                                # [code] warmup_epochs
      weight_decay=0.05,                       # [script] (constant: weight_decay_end None)
      b1=0.9, b2=0.999, eps=1e-8,              # [script] betas, [code] eps
      clip_grad=None)                          # [code]
  c.save.every = 2000
  c.log_every = 50
  c.eval_every = 5
  return c
