"""Time the reference PyTorch V-JEPA train step, as facebookresearch/jepa's app/vjepa/train.py runs it.

    JEPA_REF_DIR=/path/to/jepa python bench/reference_step.py \
        --ref-config configs/pretrain/vitl16.yaml --batch-size 24 --steps 20

The reference is imported at run time from a checkout given by ``JEPA_REF_DIR`` (or ``--ref-dir``);
nothing of it is copied into this project. Its own modules build everything: the models
(``app.vjepa.utils.init_video_model``, with the config's ``use_sdpa``), the AdamW param groups,
LR / WD schedules and GradScaler (``init_opt``), the multi-block mask collator with its batch
trimming (``src.masks.multiblock3d.MaskCollator``: every clip of a batch keeps the batch
minimum of context and target tokens) and ``apply_masks``. One timed step does what train.py's
``train_step`` does, in its order: both schedulers step; under ``autocast`` (the config's dtype,
bf16 for the paper configs) the target encoder runs without gradients, its output is
layer-normed and gathered at the target masks, the context encoder and predictor run once per
mask, the L1 loss (``loss_exp`` 1) and the predictor-variance term are computed; then
``scaler.scale(loss).backward()``, ``unscale_``, per-module gradient clipping (encoder and
predictor separately, ``clip_grad``; train.py clips after the warm-up epochs, i.e. for 260 of
its 300), ``scaler.step`` / ``update``, ``zero_grad``, and the EMA of the target encoder; the
loss is read back to the host (``float(loss)``). With ``--loggers`` (default, as train.py) the
per-step statistics train.py computes are included too (``grad_logger`` and ``adamw_logger``, one
host sync per parameter tensor, and the input variance).

Not timed, as in a training run where they overlap with the GPU: data loading and decoding, and
the mask collator (it runs in train.py's loader workers; here it is called ahead of the timed
steps, one batch of masks per step). The clips are made once on the device (a real run copies
each batch from pinned memory); each step copies its masks to the device, as train.py does.
The models are wrapped in ``DistributedDataParallel`` (``static_graph=True``) on a one-process
group, as train.py wraps them, unless ``--no-ddp``.

Prints one line of JSON: median and minimum step time, clips/s, the mean trimmed context and
target lengths per mask, model FLOPs per step by the count of ``jepa_jax.flops`` (with those
lengths), MFU where the device's peak is known, and the peak GPU memory
(``torch.cuda.max_memory_allocated``). Figures and the side-by-side table: BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

REF_ENV = "JEPA_REF_DIR"


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--ref-dir", default=os.environ.get(REF_ENV),
                 help=f"checkout of facebookresearch/jepa (default: ${REF_ENV})")
  p.add_argument("--ref-config", default="configs/pretrain/vitl16.yaml",
                 help="the reference's pretraining YAML, relative to --ref-dir or absolute")
  p.add_argument("--batch-size", type=int, default=None, help="clips per GPU (default: the YAML's)")
  p.add_argument("--steps", type=int, default=20, help="timed steps")
  p.add_argument("--warmup", type=int, default=3, help="untimed steps first (cudnn.benchmark)")
  p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
  p.add_argument("--no-loggers", dest="loggers", action="store_false",
                 help="leave out train.py's per-step grad/AdamW/input statistics")
  p.add_argument("--no-ddp", dest="ddp", action="store_false",
                 help="no DistributedDataParallel wrapper")
  p.add_argument("--no-clip", dest="clip", action="store_false",
                 help="no gradient clipping (train.py's first `warmup` epochs)")
  # Size overrides, for a quick run on a CPU (tests) or other resolutions.
  p.add_argument("--model-name", default=None, help="e.g. vit_tiny (default: the YAML's)")
  p.add_argument("--crop-size", type=int, default=None)
  p.add_argument("--num-frames", type=int, default=None)
  p.add_argument("--pred-depth", type=int, default=None)
  p.add_argument("--pred-embed-dim", type=int, default=None)
  p.add_argument("--dtype", default=None, help="bfloat16 | float16 | float32 (default: the YAML's)")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  if args.steps < 1 or args.warmup < 0:
    p.error("--steps must be >= 1 and --warmup >= 0")
  return args


def time_steps(step: Callable[[int], object], steps: int, warmup: int,
               sync: Callable[[], None] = lambda: None) -> dict:
  """Run ``step(i)`` ``warmup + steps`` times, ``sync()`` after each; time the last ``steps``.

  Returns ``{"times": [...], "step_s": median, "min_step_s", "first_step_s", "step_cpu_s"}``
  (seconds); the first step (any warm-up cost) is reported apart. ``step_cpu_s``: the median of
  this process's CPU time per timed step (all its threads), which other jobs on a shared machine
  do not inflate.
  """
  times, cpu = [], []
  first = None
  for i in range(warmup + steps):
    t0, c0 = time.perf_counter(), time.process_time()
    step(i)
    sync()
    dt = time.perf_counter() - t0
    if i == 0:
      first = dt
    if i >= warmup:
      times.append(dt)
      cpu.append(time.process_time() - c0)
  return {"times": times, "step_s": statistics.median(times), "min_step_s": min(times),
          "first_step_s": first, "step_cpu_s": statistics.median(cpu)}


def load_reference(ref_dir: str) -> SimpleNamespace:
  """Import the reference's modules from the checkout ``ref_dir`` (its ``app`` and ``src``)."""
  if not ref_dir or not os.path.isdir(os.path.join(ref_dir, "app", "vjepa")):
    raise SystemExit(f"--ref-dir / ${REF_ENV} must be a checkout of facebookresearch/jepa "
                     f"(with app/vjepa/); got {ref_dir!r}")
  sys.path.insert(0, os.path.abspath(ref_dir))
  ref = SimpleNamespace(
      utils=importlib.import_module("app.vjepa.utils"),
      multiblock=importlib.import_module("src.masks.multiblock3d"),
      masks_utils=importlib.import_module("src.masks.utils"),
      logging=importlib.import_module("src.utils.logging"))
  # The reference logs to stdout (model summaries included); stdout is for our one JSON line.
  for handler in logging.getLogger().handlers:
    if getattr(handler, "stream", None) is sys.stdout:
      handler.setStream(sys.stderr)
  return ref


def read_config(args) -> dict:
  import yaml
  path = args.ref_config
  if not os.path.isabs(path):
    path = os.path.join(args.ref_dir, path)
  with open(path) as f:
    cfg = yaml.safe_load(f)
  data, model, meta = cfg["data"], cfg["model"], cfg["meta"]
  for key, value in (("batch_size", args.batch_size), ("crop_size", args.crop_size),
                     ("num_frames", args.num_frames)):
    if value is not None:
      data[key] = value
  for key, value in (("model_name", args.model_name), ("pred_depth", args.pred_depth),
                     ("pred_embed_dim", args.pred_embed_dim)):
    if value is not None:
      model[key] = value
  if args.dtype is not None:
    meta["dtype"] = args.dtype
  return cfg


REF_COMMIT_FILE = "REF_COMMIT"


def _git_commit(path: str):
  """The checkout's commit: its ``REF_COMMIT`` file (an exported copy, as bench/gpu_ref_checkout.sh
  makes, has no .git), else git's HEAD where ``path`` is a repository's top level; None otherwise
  (a copy inside another repository, e.g. ``.ref/jepa`` in this one, would report that one's)."""
  marker = os.path.join(path, REF_COMMIT_FILE)
  if os.path.isfile(marker):
    with open(marker) as f:
      return f.read().strip() or None
  try:
    top, commit = subprocess.run(["git", "-C", path, "rev-parse", "--show-toplevel", "HEAD"],
                                 capture_output=True, text=True, check=True).stdout.split()
  except (OSError, subprocess.CalledProcessError, ValueError):
    return None
  return commit if os.path.realpath(top) == os.path.realpath(path) else None


def _one_process_group(device):
  import torch.distributed as dist
  if dist.is_initialized():
    return
  os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
  os.environ.setdefault("MASTER_PORT", "29517")
  dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


def build_step(ref, cfg: dict, args, device):
  """The reference's models, optimiser and collator, and a ``step(i)`` closure like train.py's."""
  import torch
  import torch.nn.functional as F

  data, model, opt, loss_cfg = cfg["data"], cfg["model"], cfg["optimization"], cfg["loss"]
  dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(cfg["meta"]["dtype"].lower())
  mixed = dtype is not None
  batch_size = int(data["batch_size"])
  torch.manual_seed(args.seed)
  torch.backends.cudnn.benchmark = True
  encoder, predictor = ref.utils.init_video_model(
      device=device, patch_size=data["patch_size"], num_frames=data["num_frames"],
      tubelet_size=data["tubelet_size"], model_name=model["model_name"],
      crop_size=data["crop_size"], pred_depth=model["pred_depth"],
      pred_embed_dim=model["pred_embed_dim"], uniform_power=model.get("uniform_power", True),
      use_mask_tokens=model.get("use_mask_tokens", True), num_mask_tokens=len(cfg["mask"]),
      zero_init_mask_tokens=model.get("zero_init_mask_tokens", True),
      use_sdpa=cfg["meta"].get("use_sdpa", False))
  target_encoder = copy.deepcopy(encoder)
  optimizer, scaler, scheduler, wd_scheduler = ref.utils.init_opt(
      encoder=encoder, predictor=predictor, wd=float(opt["weight_decay"]),
      final_wd=float(opt["final_weight_decay"]), start_lr=opt["start_lr"], ref_lr=opt["lr"],
      final_lr=opt["final_lr"], iterations_per_epoch=opt["ipe"], warmup=opt["warmup"],
      num_epochs=opt["epochs"], ipe_scale=opt.get("ipe_scale", 1.0), mixed_precision=mixed,
      betas=tuple(opt.get("betas", (0.9, 0.999))), eps=opt.get("eps", 1e-8))
  if scaler is not None and device.type != "cuda":
    scaler = torch.amp.GradScaler(device.type)  # the reference builds a CUDA-only one
  if args.ddp:
    from torch.nn.parallel import DistributedDataParallel
    _one_process_group(device)
    encoder = DistributedDataParallel(encoder, static_graph=True)
    predictor = DistributedDataParallel(predictor, static_graph=True)
    target_encoder = DistributedDataParallel(target_encoder)
  for p in target_encoder.parameters():
    p.requires_grad = False

  collator = ref.multiblock.MaskCollator(
      crop_size=data["crop_size"], num_frames=data["num_frames"], patch_size=data["patch_size"],
      tubelet_size=data["tubelet_size"], cfgs_mask=cfg["mask"])
  # One batch of masks per step, drawn ahead (train.py draws them in its loader workers).
  total = args.warmup + args.steps
  mask_batches = [collator([0] * batch_size)[1:] for _ in range(total)]
  clips = torch.randn(batch_size, 3, data["num_frames"], data["crop_size"], data["crop_size"],
                      device=device)
  apply_masks = ref.masks_utils.apply_masks
  ema = opt["ema"]
  momentum = iter([ema[0] + i * (ema[1] - ema[0]) / (opt["ipe"] * opt["epochs"] * opt["ipe_scale"])
                   for i in range(total)])
  loss_exp, reg_coeff, clip_grad = loss_cfg["loss_exp"], loss_cfg["reg_coeff"], opt["clip_grad"]

  def step(i):
    masks_enc = [m.to(device, non_blocking=True) for m in mask_batches[i][0]]
    masks_pred = [m.to(device, non_blocking=True) for m in mask_batches[i][1]]
    scheduler.step()
    wd_scheduler.step()
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=mixed):
      with torch.no_grad():
        h = target_encoder(clips)
        h = F.layer_norm(h, (h.size(-1),))
        h = apply_masks(h, masks_pred, concat=False)
      z = predictor(encoder(clips, masks_enc), h, masks_enc, masks_pred)
      loss_jepa = sum(torch.mean(torch.abs(zi - hi) ** loss_exp) / loss_exp
                      for zi, hi in zip(z, h)) / len(masks_pred)
      pstd_z = sum(torch.sqrt(zi.var(dim=1) + 0.0001) for zi in z) / len(z)
      loss_reg = torch.mean(F.relu(1.0 - pstd_z))
    loss = loss_jepa + reg_coeff * loss_reg
    if scaler is not None:
      scaler.scale(loss).backward()
      scaler.unscale_(optimizer)
    else:
      loss.backward()
    if clip_grad is not None and args.clip:
      torch.nn.utils.clip_grad_norm_(encoder.parameters(), clip_grad)
      torch.nn.utils.clip_grad_norm_(predictor.parameters(), clip_grad)
    if scaler is not None:
      scaler.step(optimizer)
      scaler.update()
    else:
      optimizer.step()
    if args.loggers:
      ref.logging.grad_logger(encoder.named_parameters())
      ref.logging.grad_logger(predictor.named_parameters())
    optimizer.zero_grad()
    if args.loggers:
      ref.logging.adamw_logger(optimizer)
    m = next(momentum)
    with torch.no_grad():
      for q, k in zip(encoder.parameters(), target_encoder.parameters()):
        k.data.mul_(m).add_((1.0 - m) * q.detach().data)
    out = (float(loss), float(loss_jepa), float(loss_reg))
    if args.loggers:
      flat = clips.view(clips.shape[0], -1)
      float(flat.var(dim=1).mean(dim=0)), float(torch.min(flat.var(dim=1)))
    return out

  lengths = [[(int(e.shape[1]), int(p.shape[1])) for e, p in zip(*mb)] for mb in mask_batches]
  return step, lengths


def reference_flops(cfg: dict, lengths) -> tuple[int, int]:
  """Model FLOPs per step (mean over the steps' trimmed lengths) and the token count, by
  ``jepa_jax.flops`` (the count our MFU uses), for the reference's model and masks."""
  from jepa_jax import flops
  from jepa_jax.pretrain import config as config_lib, defaults  # noqa: PLC0415
  data, model = cfg["data"], cfg["model"]
  c = defaults.base_config()
  c.batch_size = int(data["batch_size"])
  c.model.name = model["model_name"].replace("vit_", "")
  c.model.patch_size, c.model.tubelet_size = data["patch_size"], data["tubelet_size"]
  c.model.pred_depth, c.model.pred_embed_dim = model["pred_depth"], model["pred_embed_dim"]
  c.data.crop_size, c.data.num_frames = data["crop_size"], data["num_frames"]
  c.masks = [defaults.mask_config(m["num_blocks"], m["spatial_scale"][0]) for m in cfg["mask"]]
  totals, cache = [], {}
  for per_mask in lengths:
    key = tuple(per_mask)
    if key not in cache:
      for mc, (k_ctx, k_tgt) in zip(c.masks, per_mask):
        mc.num_context, mc.num_target = k_ctx, k_tgt
      cache[key] = flops.train_step_flops(config_lib.read(c))
    totals.append(cache[key]["total"])
  return int(statistics.mean(totals)), cache[key]["tokens"]


def main(argv=None):
  args = parse_args(argv)
  ref = load_reference(args.ref_dir)
  import torch

  from jepa_jax import flops as flops_lib
  device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
  cfg = read_config(args)
  step, lengths = build_step(ref, cfg, args, device)
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
  if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
  timing = time_steps(step, args.steps, args.warmup, sync)
  timed = lengths[args.warmup:]
  flops_per_step, tokens = reference_flops(cfg, timed)
  batch_size = int(cfg["data"]["batch_size"])
  kind = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
  peak = flops_lib.peak_tflops(kind)
  tflops = flops_per_step / timing["step_s"] / 1e12
  out = {
      "bench": "reference_step",
      "ref_config": args.ref_config,
      "ref_commit": _git_commit(args.ref_dir),
      "model": cfg["model"]["model_name"],
      "dtype": cfg["meta"]["dtype"],
      "sdpa": bool(cfg["meta"].get("use_sdpa", False)),
      "batch_size": batch_size,
      "crop_size": cfg["data"]["crop_size"],
      "num_frames": cfg["data"]["num_frames"],
      "ddp": args.ddp, "loggers": args.loggers, "clip": args.clip,
      "device_kind": kind,
      "steps": args.steps,
      "first_step_s": round(timing["first_step_s"], 4),
      "step_s": round(timing["step_s"], 4),
      "min_step_s": round(timing["min_step_s"], 4),
      "step_cpu_s": round(timing["step_cpu_s"], 4),
      "clips_per_s": round(batch_size / timing["step_s"], 3),
      "context_tokens": [round(statistics.mean(s[i][0] for s in timed), 1)
                         for i in range(len(timed[0]))],
      "target_tokens": [round(statistics.mean(s[i][1] for s in timed), 1)
                        for i in range(len(timed[0]))],
      "tokens": tokens,
      "model_flops_per_step": flops_per_step,
      "tflops_per_s": round(tflops, 4),
      "mfu": None if peak is None else round(tflops / peak, 4),
      "peak_memory_gib": (round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                          if device.type == "cuda" else None),
      "torch": torch.__version__,
  }
  print(json.dumps(out))


if __name__ == "__main__":
  main()
