"""The V-JEPA 2.1 recipe (facebookresearch/vjepa2 at 204698b,
configs/train_2_1/*/{pretrain-256px-16f,cooldown-256px-64f}.yaml and app/vjepa_2_1/train.py;
docs/vjepa21.md), shared by the files of this directory. It starts from the V-JEPA 2 recipe
(configs/vjepa2/common.py: data mix, fps, crops, masks, AdamW, EMA, seed, mask tokens) and changes
what the 2.1 YAML files change:

* model: ``vjepa21`` (interleaved RoPE with ``interpolate_rope: true``, ``modality_embedding:
  true``, ``img_temporal_dim_size: 1``, four encoder levels read and predicted by the predictor),
  predictor depth 24 (ViT-B: 12), 384 wide, 12 heads (``pred_depth``, ``pred_embed_dim``,
  ``pred_num_heads``); ViT-G's MLP ratio 64/13 (app/vjepa_2_1/models/vision_transformer.py);
* loss (``config.loss``): ``predict_all: true`` (the context loss), ``lambda_value_vid: 0.5``
  ramped in over steps 15k-30k (``Lambda_LinearWarmupHold`` defaults, ``lambda_progressive``
  default true), ``weight_distance_loss: true``, ``loss_exp: 1.0``; the cooldowns set
  ``weight_distance_loss: false`` and ``lambda_progressive: false``;
* optimisation: lr 1e-4 -> 6e-4 over 40 warm-up epochs, then constant (``final_lr: 0.0006``),
  1000 epochs x 300 iterations; cooldown 40 epochs, 6e-4 -> 1e-6 linear, no warm-up;
* batch: per GPU x nodes x 8 (below per size);
* images (``config.images``, the reference's ``img_data`` ranks): ImageNet-1k as 1-frame clips at
  256 px with the videos' augmentation, ``img_mask`` (10 blocks x 0.15), ``lambda_value_img: 0.5``,
  on ``rank_ratio: 0.5`` of the GPUs: per image GPU 144 / 72 / 72 / 36 images (ViT-B/L/g/G), so
  the global image batch is that x ``int(GPUs * 0.5)``, and the image loss carries half of the
  gradient (``loss_weight``). The video batch stays per-GPU x all GPUs: the reference spreads it
  over the video ranks (``train.py``:216-240). ``config.images.datasets`` is a placeholder like
  the video lists (``"tfds:imagenet2012"`` or an index of image files).
"""
from configs.vjepa2 import common as vjepa2

# Per-size settings of configs/train_2_1/<size>16/pretrain-256px-16f.yaml: model_name, pred_depth,
# video batch per GPU and nodes (x 8 GPUs) in pretraining and cooldown.
SIZES = {
    "base": dict(pred_depth=12, pretrain=(48, 8), cooldown=(24, 16), images=144),
    "large": dict(pred_depth=24, pretrain=(24, 16), cooldown=(12, 32), images=72),
    "giant_xformers": dict(pred_depth=24, pretrain=(24, 16), cooldown=(12, 32), images=72),
    "gigantic_xformers": dict(pred_depth=24, pretrain=(12, 32), cooldown=(6, 64), images=36),
}
IMAGE_DATASETS = ["/path/to/imagenet1k.csv"]  # img_data.datasets
IMAGE_RANK_RATIO = 0.5                        # img_data.rank_ratio
IMAGE_LAMBDA = 0.5                            # model.lambda_value_img


def image_batch(model_name: str, nodes: int) -> int:
  """Global images per step: img_data.batch_size on each of the int(GPUs * rank_ratio) image
  ranks (train.py:216-240)."""
  return SIZES[model_name]["images"] * int(nodes * 8 * IMAGE_RANK_RATIO)
# jepa_jax sharding/memory settings per size (not part of the reference recipe).
MESH = {"base": dict(fsdp=1, scan=False), "large": dict(fsdp=1, scan=False),
        "giant_xformers": dict(fsdp=16, scan=True), "gigantic_xformers": dict(fsdp=32, scan=True)}


def pretrain_config(model_name: str):
  c = vjepa2.pretrain_config("large", epochs=1000)
  size = SIZES[model_name]
  per_gpu, nodes = size["pretrain"]
  c.batch_size = per_gpu * nodes * 8
  m = c.model
  m.name = model_name
  m.vjepa21 = True
  m.pred_depth = size["pred_depth"]
  if model_name == "gigantic_xformers":
    m.overrides = {"mlp_ratio": 64 / 13}  # 2.1's vit_gigantic_xformers: hidden 8192
  m.scan = MESH[model_name]["scan"]
  c.mesh.fsdp = MESH[model_name]["fsdp"]
  c.images.update(dict(batch_size=image_batch(model_name, nodes), datasets=list(IMAGE_DATASETS),
                       loss_weight=IMAGE_RANK_RATIO, lambda_value=IMAGE_LAMBDA))
  c.loss = dict(lambda_value=0.5, lambda_start=15_000, lambda_end=30_000,
                lambda_progressive=True, weight_distance=True, offset_context_loss=False,
                loss_exp=1.0)
  c.optim.update(dict(start_lr=1e-4, lr=6e-4, final_lr=6e-4, warmup=40, epochs=1000, ipe=300))
  return c


def cooldown_config(model_name: str, init_from: str):
  c = pretrain_config(model_name)
  per_gpu, nodes = SIZES[model_name]["cooldown"]
  c.batch_size = per_gpu * nodes * 8
  c.images.batch_size = image_batch(model_name, nodes)
  c.data.num_frames = 64
  c.data.dataset_fpcs = [64, 64, 64]
  c.data.num_workers = 12
  c.loss.update(dict(weight_distance=False, lambda_progressive=False))
  c.optim.update(dict(epochs=40, ipe=300, warmup=0, final_lr=1e-6, lr_schedule="linear_decay"))
  # is_anneal / resume_anneal: start from the pretraining run, optimiser included.
  c.init_from = init_from
  c.init_from_optimizer = True
  return c
