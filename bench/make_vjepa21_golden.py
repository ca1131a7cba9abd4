"""Make tests/fixtures/vjepa21_tiny_v1.npz by running the V-JEPA 2.1 reference on a tiny model.

    python bench/make_vjepa21_golden.py --ref-dir /path/to/vjepa2@204698b [--out FILE]
        [--eval-out FILE] [--image-out FILE]

(or ``JEPA_JAX_VJEPA21_SRC=/path/to/checkout``). The checkout is upstream facebookresearch/vjepa2's
tree with ``app/vjepa_2_1/`` complete: ``git archive 204698b`` of github.com/DhvanilSheth/vjepa2
("Fix figure (#143)", 2026-03-23). Its modules are imported here, at data-creation time only;
nothing of it is copied into jepa_jax, and the tests read only the npz.

What runs, all float32 on the CPU, plain (non-SDPA) attention:

* the reference's ``VisionTransformer`` (12 blocks of width 48, 3 heads: 2.1 defines its four
  output levels only for depths 12/24/40/48), 64 px, 4 frames, patch 16, tubelet 2, RoPE with
  ``interpolate_rope`` (a 4x4 grid is scaled to span 16: h, w x 5), modality embeddings and the
  image patch embedding (``img_temporal_dim_size=1``), wrapped in its ``MultiSeqWrapper``;
* its ``vit_predictor`` (4 blocks of width 32, 2 heads, 2 mask tokens, four levels in and out,
  ``return_all_tokens``), wrapped in its ``PredictorMultiSeqWrapper`` (every mask of the one
  clip-length group uses mask token 0, as in training);
* every parameter drawn at random (LayerNorm scales near 1, embeddings and mask tokens of
  order 0.1) so that no name or layout mistake can hide behind a zero or a one;
* two masks per clip (random disjoint context/target index sets, equal lengths in the batch as the
  reference's collator makes them), the objective as ``app/vjepa_2_1/train.py`` computes it with
  ``weight_distance_loss`` (its ``compute_mask_distance``) and ``predict_all``, at global step
  ``STEP`` of its ``Lambda_LinearWarmupHold(0.5)`` ramp; gradients; one AdamW step (lr 5e-4, wd
  0.04 on non-bias, non-1-D tensors, as its ``init_opt`` groups them) and one EMA update (0.998).

``--eval-out FILE`` (default ``tests/fixtures/vjepa21_eval_tiny_v1.npz``) also records what the
reference's frozen evaluation of 2.1 checkpoints (``configs/eval_2_1/*``) computes from the same
encoder weights and clip: ``evals/video_classification_frozen/modelcustom/vit_encoder_multiclip.py``
builds the *V-JEPA 2* encoder (``src/models/vision_transformer``, ``use_rope``) and loads the 2.1
state dict into it with ``strict=False``. Keys: ``out/tokens`` (its output on ``clip``),
``missing`` and ``unexpected`` (the load's key lists).

Keys (PyTorch layouts, reference names): ``param/{encoder,predictor}/NAME``, ``clip``
``[B, C, T, H, W]``, ``mask_enc_{i}`` / ``mask_pred_{i}``, ``out/*`` (encoder eval and training
outputs, the image path, targets, context features, predictions, context predictions, distance
weights, the two losses, lambda and the total), ``grad/{encoder,predictor}/NAME``,
``after/{encoder,predictor,target}/NAME``, ``step/*`` (lr, wd, momentum, global step, lambda_value).

``--image-out FILE`` (default ``tests/fixtures/vjepa21_image_tiny_v1.npz``) records V-JEPA 2.1's
*image ranks* (``img_data`` in train.py: the first ``int(world * rank_ratio)`` ranks), from the
weights of the main file before its AdamW step (the file holds no parameters: the tests read them
from ``vjepa21_tiny_v1.npz``, and the video inputs too). An image rank's ``train_step`` on fresh
modules: 3 one-frame clips (``img_temporal_dim_size=1``: the encoder's ``patch_embed_img`` and
``img_mod_embed``), one mask (``img_mask``: 7 context + 5 target tokens of the 16, equal lengths
in the batch), ``forward_context``'s ``predictor(..., mod="image")`` (the predictor's
``img_mod_embed``, mask token 0 of the one clip-length group), distance weights on the image grid
(``compute_mask_distance`` with grid_size 64 // 16 = 4: every frame index 0), and
``lambda_value_img`` = 0.3 at the same ``STEP`` of the ramp (0.1, not the video's 0.1667). Keys, as
in the main file: ``clip`` ``[3, C, 1, H, W]``, ``mask_enc_0`` / ``mask_pred_0``, ``out/target_ln``,
``out/context_0``, ``out/pred_0``, ``out/pred_context_0``, ``out/distance_0``, ``out/loss_pred``,
``out/loss_context``, ``out/lambda``, ``out/loss``, ``grad/{encoder,predictor}/NAME`` (zeros for
the parameters the rank never reaches, named in ``unused/{encoder,predictor}``). And the step of
a 2-rank DDP job with ``rank_ratio`` 0.5 (rank 0 images as above, rank 1 the video step of the
main file, recomputed here and checked bit for bit against it): ``mixed/grad/{encoder,
predictor}/NAME`` (each rank's gradient / 2, summed: DDP's average, a rank's unreached parameters
adding zeros), ``mixed/loss`` = 0.5 * (image loss + video loss), ``mixed/loss_video``,
``mixed/rank_ratio``; ``step/global_step``, ``step/lambda_value_img``, ``step/lambda_value_vid``.

The run is deterministic on one machine and torch build; another CPU or torch build reproduces
the parameters, clips and masks bit for bit but the outputs and gradients only to ~1e-6.
"""
import argparse
import importlib
import os
import sys
import types
from functools import partial

import numpy as np

ENV = "JEPA_JAX_VJEPA21_SRC"
STEP = 20000  # inside the 15k..30k ramp: lambda = 0.5 * 5000 / 15000
LAMBDA_VALUE = 0.5
LR, WD, MOMENTUM = 5e-4, 0.04, 0.998
# Image ranks (--image-out): their own lambda (lambda_value_img, not the video's 0.5, so a swapped
# lambda shows), a batch of 3 one-frame clips (not the video's 2), one mask of 7 context + 5 target
# tokens of the 4 x 4 grid, and the share of image ranks of a 2-rank job (img_data.rank_ratio).
LAMBDA_VALUE_IMG = 0.3
IMAGE_BATCH, IMAGE_CTX, IMAGE_TGT = 3, 7, 5
RANK_RATIO = 0.5


def _import_reference(root):
  """The reference's 2.1 modules; ``timm`` (drop_path only, identity at rate 0) and ``torchvision``
  (imported, unused, by masks_dist.py) are stood in for when absent."""
  try:
    importlib.import_module("timm.models.layers")
  except ImportError:
    layers = types.ModuleType("timm.models.layers")
    layers.drop_path = lambda x, drop_prob=0.0, training=False: x
    sys.modules.setdefault("timm", types.ModuleType("timm"))
    sys.modules.setdefault("timm.models", types.ModuleType("timm.models"))
    sys.modules["timm.models.layers"] = layers
  try:
    importlib.import_module("torchvision")
  except ImportError:
    sys.modules["torchvision"] = types.ModuleType("torchvision")
  sys.path.insert(0, root)
  import app.vjepa_2_1.models.predictor as pred  # noqa: PLC0415
  import app.vjepa_2_1.models.vision_transformer as vit  # noqa: PLC0415
  import app.vjepa_2_1.wrappers as wrappers  # noqa: PLC0415
  from app.vjepa_2_1.models.utils.masks_dist import compute_mask_distance  # noqa: PLC0415
  from app.vjepa_2_1.models.utils.modules import Lambda_LinearWarmupHold  # noqa: PLC0415
  from src.masks.utils import apply_masks  # noqa: PLC0415
  return types.SimpleNamespace(vit=vit, pred=pred, wrappers=wrappers, apply_masks=apply_masks,
                               compute_mask_distance=compute_mask_distance,
                               Lambda=Lambda_LinearWarmupHold)


def _randomise(module, gen, torch):
  """Every parameter at random: Linear/Conv weights N(0, 0.05), biases N(0, 0.02), LayerNorm
  scales 1 + N(0, 0.1), embeddings and mask tokens N(0, 0.1)."""
  with torch.no_grad():
    for name, p in module.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if "norm" in name and name.endswith("weight"):
        p.copy_(1 + 0.1 * noise)
      elif name.endswith("bias"):
        p.copy_(0.02 * noise)
      elif "mod_embed" in name or "mask_tokens" in name:
        p.copy_(0.1 * noise)
      else:
        p.copy_(0.05 * noise)


def _masks(rng, batch, n_tokens, n_ctx, n_tgt):
  enc, pred = [], []
  for _ in range(batch):
    perm = rng.permutation(n_tokens)
    enc.append(np.sort(perm[:n_ctx]))
    pred.append(np.sort(perm[n_ctx:n_ctx + n_tgt]))
  return np.stack(enc).astype(np.int64), np.stack(pred).astype(np.int64)


def _l1(ref, torch, zs, hs, idx, weights=None):
  """train.py's ``loss_fn`` (loss_exp 1, no cls token): the mean over masks of the mean L1 error,
  each context token's error divided by its distance weight when ``weights`` are given."""
  hs = [ref.apply_masks(hi, mi, concat=False) for hi, mi in zip(hs, idx)]
  total, n = 0, 0
  for g, (zi, hi) in enumerate(zip(zs, hs)):
    for j, (zij, hij) in enumerate(zip(zi, hi)):
      err = torch.abs(zij - hij)
      if weights is not None:
        err = err * (1 / weights[g][j].unsqueeze(2))
      total, n = total + torch.mean(err), n + 1
  return total / n


def _state(module):
  return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def _grads(module, out, prefix):
  """Each parameter's gradient under ``prefix/NAME`` (zeros where autograd left none: parameters
  this rank never reached) and their names under ``unused``."""
  unused = []
  for name, prm in module.named_parameters():
    if prm.grad is None:
      unused.append(name)
    out[f"{prefix}/{name}"] = (np.zeros(prm.shape, np.float32) if prm.grad is None
                               else prm.grad.numpy().copy())
  return sorted(unused)


def _rank_step(ref, torch, F, models, clip, masks_enc, masks_pred, grid_size, lambda_value,
               levels):
  """One rank's ``train_step`` of app/vjepa_2_1/train.py (one clip-length group, predict_all,
  weight_distance_loss, lambda_progressive, loss_exp 1) on fresh modules: ``forward_target``,
  ``forward_context`` (``mod="image"`` when the clip has img_temporal_dim_size = 1 frames), the
  two losses, ``loss.backward()``. Returns the outputs (``out/*`` keys) and the gradients
  (``grad/*``, ``unused/*``)."""
  encoder, predictor, target = models
  enc_w, pred_w, tgt_w = (ref.wrappers.MultiSeqWrapper(encoder),
                          ref.wrappers.PredictorMultiSeqWrapper(predictor),
                          ref.wrappers.MultiSeqWrapper(target))
  dim = encoder.embed_dim
  with torch.no_grad():
    h = tgt_w([clip], gram_mode=False, training_mode=True)
    h = [torch.cat([F.layer_norm(hi[:, :, k * dim:(k + 1) * dim], (dim,))
                    for k in range(levels)], dim=2) for hi in h]
  modality = "image" if clip.shape[2] == encoder.img_temporal_dim_size else "video"
  z = enc_w([clip], [masks_enc], gram_mode=False, training_mode=True)
  z_pred, z_context = pred_w(z, [masks_enc], [masks_pred], mod=modality)
  distances = ref.compute_mask_distance([masks_pred], [masks_enc], grid_size, False)
  loss_pred = _l1(ref, torch, z_pred, h, [masks_pred])
  loss_context = _l1(ref, torch, z_context, h, [masks_enc], distances)
  lam = ref.Lambda(lambda_value=lambda_value).value(STEP)
  loss = loss_pred + lam * loss_context
  loss.backward()
  out = {"out/target_ln": h[0].numpy()}
  for i in range(len(masks_enc)):
    out[f"out/context_{i}"] = z[0][i].detach().numpy()
    out[f"out/pred_{i}"] = z_pred[0][i].detach().numpy()
    out[f"out/pred_context_{i}"] = z_context[0][i].detach().numpy()
    out[f"out/distance_{i}"] = distances[0][i].numpy()
  out["out/loss_pred"] = np.float32(loss_pred.item())
  out["out/loss_context"] = np.float32(loss_context.item())
  out["out/lambda"] = np.float32(lam)
  out["out/loss"] = np.float32(loss.item())
  for kind, module in (("encoder", encoder), ("predictor", predictor)):
    out[f"unused/{kind}"] = np.asarray(_grads(module, out, f"grad/{kind}"))
  return out


def _image_golden(ref, torch, F, golden, enc_kw, pred_kw, grid_size, levels):
  """The --image-out file: an image rank's step (its own clip, mask and lambda) and the gradient
  DDP averages over a 2-rank job of one image rank (rank 0) and one video rank (rank 1, the
  video step of ``golden``), from the weights of ``golden`` (before its AdamW step)."""
  def fresh():
    encoder = ref.vit.VisionTransformer(**enc_kw)
    predictor = ref.pred.vit_predictor(**pred_kw)
    target = ref.vit.VisionTransformer(**enc_kw)
    for kind, module in (("encoder", encoder), ("predictor", predictor), ("encoder", target)):
      module.load_state_dict({k[len(f"param/{kind}/"):]: torch.from_numpy(v)
                              for k, v in golden.items() if k.startswith(f"param/{kind}/")})
      module.eval()
    for q in target.parameters():
      q.requires_grad_(False)
    return encoder, predictor, target

  gen = torch.Generator().manual_seed(1)
  rng = np.random.default_rng(1)
  image = torch.randn(IMAGE_BATCH, 3, 1, enc_kw["img_size"][0], enc_kw["img_size"][1],
                      generator=gen)
  mask_enc, mask_pred = _masks(rng, IMAGE_BATCH, grid_size * grid_size, IMAGE_CTX, IMAGE_TGT)
  out = {"clip": image.numpy(), "mask_enc_0": mask_enc, "mask_pred_0": mask_pred}
  out.update(_rank_step(ref, torch, F, fresh(), image, [torch.from_numpy(mask_enc)],
                        [torch.from_numpy(mask_pred)], grid_size, LAMBDA_VALUE_IMG, levels))
  n_masks = len([k for k in golden if k.startswith("mask_enc_")])
  video = _rank_step(ref, torch, F, fresh(), torch.from_numpy(golden["clip"]),
                     [torch.from_numpy(golden[f"mask_enc_{i}"]) for i in range(n_masks)],
                     [torch.from_numpy(golden[f"mask_pred_{i}"]) for i in range(n_masks)],
                     grid_size, LAMBDA_VALUE, levels)
  for key, value in video.items():  # the video rank is the step of the main file, bit for bit
    assert np.array_equal(value, golden[key]), key
  # DDP: each rank's gradient divided by the world size, summed (a parameter a rank never reached
  # adds zeros: the predictor's find_unused_parameters, the encoder's static graph).
  world = 2
  n_image = int(world * RANK_RATIO)
  assert n_image == 1
  for key in [k for k in out if k.startswith("grad/")]:
    out[f"mixed/{key}"] = (out[key] / world + video[key] / world).astype(np.float32)
  out["mixed/loss"] = np.float32((float(out["out/loss"]) + float(video["out/loss"])) / world)
  out["mixed/loss_video"] = video["out/loss"]
  out["mixed/rank_ratio"] = np.float32(RANK_RATIO)
  out["step/global_step"] = np.int64(STEP)
  out["step/lambda_value_img"] = np.float32(LAMBDA_VALUE_IMG)
  out["step/lambda_value_vid"] = np.float32(LAMBDA_VALUE)
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--ref-dir", default=os.environ.get(ENV),
                 help=f"vjepa2 checkout at 204698b (default: ${ENV})")
  fixtures = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
  p.add_argument("--out", default=os.path.join(fixtures, "vjepa21_tiny_v1.npz"))
  p.add_argument("--eval-out", default=os.path.join(fixtures, "vjepa21_eval_tiny_v1.npz"))
  p.add_argument("--image-out", default=os.path.join(fixtures, "vjepa21_image_tiny_v1.npz"))
  args = p.parse_args(argv)
  if not args.ref_dir or not os.path.isfile(
      os.path.join(args.ref_dir, "app", "vjepa_2_1", "models", "vision_transformer.py")):
    p.error(f"--ref-dir (or ${ENV}) must be a vjepa2 checkout with app/vjepa_2_1/ (commit 204698b)")
  import torch  # noqa: PLC0415
  import torch.nn.functional as F  # noqa: PLC0415
  ref = _import_reference(os.path.abspath(args.ref_dir))
  torch.manual_seed(0)
  gen = torch.Generator().manual_seed(0)
  rng = np.random.default_rng(0)

  batch, frames, img, patch, tubelet, dim = 2, 4, 64, 16, 2, 48
  grid = img // patch
  n_tokens = (frames // tubelet) * grid * grid
  norm = partial(torch.nn.LayerNorm, eps=1e-6)
  enc_kw = dict(
      img_size=(img, img), patch_size=patch, num_frames=frames, tubelet_size=tubelet,
      embed_dim=dim, depth=12, num_heads=3, mlp_ratio=4.0, qkv_bias=True, norm_layer=norm,
      uniform_power=True, use_sdpa=False, use_rope=True, img_temporal_dim_size=1,
      interpolate_rope=True, modality_embedding=True)
  pred_kw = dict(
      img_size=(img, img), patch_size=patch, num_frames=frames, tubelet_size=tubelet,
      embed_dim=dim, predictor_embed_dim=32, depth=4, num_heads=2, uniform_power=True,
      use_mask_tokens=True, num_mask_tokens=2, zero_init_mask_tokens=True, use_rope=True,
      use_sdpa=False, return_all_tokens=True, interpolate_rope=True, modality_embedding=True,
      img_temporal_dim_size=1)
  encoder = ref.vit.VisionTransformer(**enc_kw)
  predictor = ref.pred.vit_predictor(**pred_kw)
  _randomise(encoder, gen, torch)
  _randomise(predictor, gen, torch)
  encoder.eval()
  predictor.eval()
  out = {}
  for name, v in _state(encoder).items():
    out[f"param/encoder/{name}"] = v
  for name, v in _state(predictor).items():
    out[f"param/predictor/{name}"] = v
  target = ref.vit.VisionTransformer(**enc_kw)
  target.load_state_dict(encoder.state_dict())
  target.eval()
  enc_w, pred_w, tgt_w = (ref.wrappers.MultiSeqWrapper(encoder),
                          ref.wrappers.PredictorMultiSeqWrapper(predictor),
                          ref.wrappers.MultiSeqWrapper(target))

  clip = torch.randn(batch, 3, frames, img, img, generator=gen)
  out["clip"] = clip.numpy()
  masks_enc, masks_pred = [], []
  for i, (n_ctx, n_tgt) in enumerate(((18, 10), (12, 14))):
    e, t = _masks(rng, batch, n_tokens, n_ctx, n_tgt)
    out[f"mask_enc_{i}"], out[f"mask_pred_{i}"] = e, t
    masks_enc.append(torch.from_numpy(e))
    masks_pred.append(torch.from_numpy(t))

  with torch.no_grad():
    out["out/encoder_full"] = encoder(clip).numpy()
    out["out/encoder_hier"] = encoder(clip, training=True).numpy()
    image = clip[:, :, :1]  # one frame: the image path (patch_embed_img, img_mod_embed)
    out["out/image_full"] = encoder(image).numpy()
    out["out/image_hier"] = encoder(image, training=True).numpy()
    out["mask_image"], _ = _masks(rng, batch, grid * grid, 9, 0)
    out["out/image_context"] = encoder(image, masks=[torch.from_numpy(out["mask_image"])],
                                       training=True).numpy()
    encoder.out_layers = [5, 11]
    out["out/encoder_layers"] = np.stack([o.numpy() for o in encoder(clip)])
    encoder.out_layers = None

  # The objective, as app/vjepa_2_1/train.py's train_step computes it (one clip-length group).
  levels = 4
  with torch.no_grad():
    h = tgt_w([clip], gram_mode=False, training_mode=True)
    h = [torch.cat([F.layer_norm(hi[:, :, k * dim:(k + 1) * dim], (dim,))
                    for k in range(levels)], dim=2) for hi in h]
  out["out/target_ln"] = h[0].numpy()
  z = enc_w([clip], [masks_enc], gram_mode=False, training_mode=True)
  z_pred, z_context = pred_w(z, [masks_enc], [masks_pred], mod="video")
  for i in range(2):
    out[f"out/context_{i}"] = z[0][i].detach().numpy()
    out[f"out/pred_{i}"] = z_pred[0][i].detach().numpy()
    out[f"out/pred_context_{i}"] = z_context[0][i].detach().numpy()

  l1 = partial(_l1, ref, torch)
  distances = ref.compute_mask_distance([masks_pred], [masks_enc], grid, False)
  for i in range(2):
    out[f"out/distance_{i}"] = distances[0][i].numpy()
  loss_pred = l1(z_pred, h, [masks_pred])
  loss_context = l1(z_context, h, [masks_enc], distances)
  lam = ref.Lambda(lambda_value=LAMBDA_VALUE).value(STEP)
  loss = loss_pred + lam * loss_context
  out["out/loss_pred"] = np.float32(loss_pred.item())
  out["out/loss_context"] = np.float32(loss_context.item())
  out["out/lambda"] = np.float32(lam)
  out["out/loss"] = np.float32(loss.item())
  loss.backward()
  for kind, module in (("encoder", encoder), ("predictor", predictor)):
    for name, prm in module.named_parameters():
      out[f"grad/{kind}/{name}"] = (np.zeros(prm.shape, np.float32) if prm.grad is None
                                    else prm.grad.numpy().copy())
    # Parameters a video step never reaches (the image path): torch's AdamW skips them (no
    # moment, no weight decay) where optax decays them; the tests compare those separately.
    out[f"unused/{kind}"] = np.asarray(sorted(n for n, q in module.named_parameters()
                                              if q.grad is None))

  groups = []
  for module in (encoder, predictor):
    named = list(module.named_parameters())
    groups.append({"params": [q for n, q in named if "bias" not in n and q.ndim != 1],
                   "weight_decay": WD})
    groups.append({"params": [q for n, q in named if "bias" in n or q.ndim == 1],
                   "weight_decay": 0.0})
  opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.999), eps=1e-8)
  opt.step()
  with torch.no_grad():
    for q, k in zip(encoder.parameters(), target.parameters()):
      k.mul_(MOMENTUM).add_(q, alpha=1 - MOMENTUM)
  for kind, module in (("encoder", encoder), ("predictor", predictor), ("target", target)):
    for name, v in _state(module).items():
      out[f"after/{kind}/{name}"] = v
  out["step/lr"], out["step/wd"], out["step/momentum"] = (np.float32(LR), np.float32(WD),
                                                          np.float32(MOMENTUM))
  out["step/global_step"], out["step/lambda_value"] = np.int64(STEP), np.float32(LAMBDA_VALUE)
  np.savez_compressed(args.out, **out)
  print(f"wrote {args.out}: {len(out)} arrays, loss {out['out/loss']:.6f} "
        f"(pred {out['out/loss_pred']:.6f}, context {out['out/loss_context']:.6f}, "
        f"lambda {lam:.6f})")

  # The frozen evaluation of configs/eval_2_1: the V-JEPA 2 encoder, the 2.1 weights (before the
  # step above) loaded as vit_encoder_multiclip.init_module loads them.
  sys.path.insert(0, os.path.abspath(args.ref_dir))
  import src.models.vision_transformer as vit2  # noqa: PLC0415
  with torch.random.fork_rng():
    eval_encoder = vit2.VisionTransformer(
        img_size=(img, img), patch_size=patch, num_frames=frames, tubelet_size=tubelet,
        embed_dim=dim, depth=12, num_heads=3, mlp_ratio=4.0, qkv_bias=True, norm_layer=norm,
        uniform_power=True, use_sdpa=False, use_rope=True)
  pretrained = {k[len("param/encoder/"):]: torch.from_numpy(v) for k, v in out.items()
                if k.startswith("param/encoder/")}
  for k, v in eval_encoder.state_dict().items():
    if k in pretrained and pretrained[k].shape != v.shape:
      pretrained[k] = v
  msg = eval_encoder.load_state_dict(pretrained, strict=False)
  eval_encoder.eval()
  with torch.no_grad():
    tokens = eval_encoder(clip).numpy()
  np.savez_compressed(args.eval_out, **{"out/tokens": tokens,
                                        "missing": np.asarray(sorted(msg.missing_keys)),
                                        "unexpected": np.asarray(sorted(msg.unexpected_keys))})
  print(f"wrote {args.eval_out}: tokens {tokens.shape}, missing {sorted(msg.missing_keys)}, "
        f"unexpected {sorted(msg.unexpected_keys)}")

  # Image ranks and the image + video mix (after everything above: it draws from its own
  # generators and builds fresh modules, so the two files above come out as before).
  image_out = _image_golden(ref, torch, F, out, enc_kw, pred_kw, grid, levels)
  np.savez_compressed(args.image_out, **image_out)
  print(f"wrote {args.image_out}: {len(image_out)} arrays, image loss {image_out['out/loss']:.6f} "
        f"(pred {image_out['out/loss_pred']:.6f}, context {image_out['out/loss_context']:.6f}, "
        f"lambda {image_out['out/lambda']:.6f}), mixed loss {image_out['mixed/loss']:.6f}")


if __name__ == "__main__":
  main()
