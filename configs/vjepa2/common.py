"""The V-JEPA 2 recipe (facebookresearch/vjepa2 configs/train/*/{pretrain,cooldown}-*.yaml), shared by
the files of this directory, which change what differs per model and stage.

What V-JEPA 2 changes from V-JEPA (every number from those YAML files, app/vjepa/train.py and
app/vjepa/utils.py):

* model: 3D RoPE in encoder and predictor (``use_rope``), a 12-head predictor (``pred_num_heads``),
  activation checkpointing (``remat="full"``: the reference checkpoints every block), the per-block
  residual rescale kept at init (V-JEPA 2's ``init_video_model`` no longer re-draws the Linears);
  one mask token per (mask, dataset) pair -- 2 x 3 = 6 -- of which its predictor wrapper uses the
  one of the clip-length group, token 0 when every dataset gives the same frames per clip
  (``mask_token_per="clip_length"``);
* data: 256 px crops; frames sampled at 4 fps (each video's step is ceil(video fps) // 4) with 16
  frames per clip (64 in the cooldown) for each of K710, SSv2 and HowTo100M, mixed with weights
  0.335 / 0.100 / 0.565; batch 24 per GPU x 128 GPUs = 3072 (cooldown: 12 x 256, or 6 x 512 for
  ViT-g); seed 239;
* optimisation: warm-up 40 epochs from 1e-4 to 5.25e-4, then constant (``lr == final_lr``:
  "warmup-stable"); the cooldown decays linearly from 5.25e-4 to 1e-6 over 1.25 x its length with
  no warm-up, starting from the pretraining checkpoint's encoder, predictor, target encoder AND
  AdamW state; constant EMA 0.99925 and weight decay 0.04; no gradient clipping.

Masks, augmentation (random resized crop 0.3-1.0, aspect 0.75-1.35, horizontal flip) and the L1
loss are V-JEPA's. The reference's file lengths are reproduced as written, including those that
look like placeholders: ``epochs: 10`` for ViT-L/H pretraining ends inside the 40-epoch warm-up
(ViT-g: 800 epochs); set ``--config.optim.epochs`` for a real run.
"""
from jepa_jax.pretrain import defaults

DATASETS = ["/path/to/k710_train_paths.csv", "/path/to/ssv2_train_paths.csv",
            "/path/to/howto_320p.csv"]
DATASETS_WEIGHTS = [0.335, 0.100, 0.565]

# Per-size sharding/memory settings of jepa_jax (not part of the reference recipe).
MESH = {"large": dict(fsdp=1, scan=False), "huge": dict(fsdp=8, scan=True),
        "giant_xformers": dict(fsdp=16, scan=True)}


def pretrain_config(model_name: str, epochs: int):
  c = defaults.base_config()
  c.seed = 239
  c.batch_size = 24 * 16 * 8             # 24 clips per GPU, 16 nodes x 8 GPUs
  m = c.model
  m.name = model_name
  m.use_rope = True
  m.uniform_power = True                 # as the YAML; unused with RoPE (no position table)
  m.pred_depth, m.pred_embed_dim, m.pred_num_heads = 12, 384, 12
  m.zero_init_mask_tokens = True
  m.mask_token_per = "clip_length"
  m.rescale_residual_init = True
  m.remat = "full"                       # use_activation_checkpointing: true
  m.scan = MESH[model_name]["scan"]
  m.dtype = "bfloat16"
  c.mesh.fsdp = MESH[model_name]["fsdp"]

  d = c.data
  d.datasets = list(DATASETS)
  d.datasets_weights = list(DATASETS_WEIGHTS)
  d.crop_size = 256
  d.num_frames = 16
  d.dataset_fpcs = [16, 16, 16]
  d.fps = 4
  d.random_resize_scale = (0.3, 1.0)
  d.random_resize_aspect_ratio = (0.75, 1.35)
  d.horizontal_flip = True
  d.num_workers = 8

  c.optim.update(dict(
      epochs=epochs, ipe=300, ipe_scale=1.25, warmup=40,
      start_lr=1e-4, lr=5.25e-4, final_lr=5.25e-4, lr_schedule="warmup_cosine",
      weight_decay=0.04, final_weight_decay=0.04, ema=(0.99925, 0.99925),
      b1=0.9, b2=0.999, eps=1e-8))
  c.optim.clip_grad = None
  return c


def cooldown_config(model_name: str, *, crop_size: int, clips_per_gpu: int, gpus: int,
                    epochs: int, ipe: int, init_from: str):
  c = pretrain_config(model_name, epochs)
  c.batch_size = clips_per_gpu * gpus
  c.data.crop_size = crop_size
  c.data.num_frames = 64
  c.data.dataset_fpcs = [64, 64, 64]
  c.data.num_workers = 12
  c.optim.update(dict(epochs=epochs, ipe=ipe, warmup=0, final_lr=1e-6,
                      lr_schedule="linear_decay"))
  # is_anneal: start from the pretraining run (the reference's anneal_ckpt), optimiser included;
  # a restarted cooldown resumes from its own latest checkpoint first (resume_anneal: true).
  c.init_from = init_from
  c.init_from_optimizer = True
  return c
