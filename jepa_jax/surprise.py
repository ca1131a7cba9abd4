"""A surprise timeline: how badly the predictor predicts each stretch of a video.

  python -m jepa_jax.surprise --checkpoint PRETRAIN_WORKDIR --out OUT [--stride S] [--future K |
      --config-mask I [--seed 0]] [--last drop|pad] VIDEO...

The checkpoint's clip (``config.data``) slides over each video every ``--stride`` source frames
(default: one token time step), read as ``extract --window`` reads a window. Each window's error is
the training loss of that clip and one mask (``loss.vjepa_loss``, against the EMA target): with
``--future K`` (default: half the clip's token time steps) the last K time steps are predicted from
every earlier token, "what comes next?"; with ``--config-mask I`` mask ``I`` of the pretraining
config is drawn once from ``--seed`` for every window. A high error marks what the model did not
expect (a cut, something appearing, motion reversing). Needs the predictor: a pretraining workdir
or converted weights that include it. Writes ``<position>_<name>.json`` (settings, per-window
errors) and ``.png`` per video to OUT; fields in docs/tools.md.
"""
import argparse
import json
import logging
import os
import sys
from typing import Optional

import numpy as np

from jepa_jax import cli
from jepa_jax import paths
from jepa_jax.errors import ConfigError
from jepa_jax.extract import reading
from jepa_jax.extract.settings import Settings

log = logging.getLogger(__name__)


def future_masks(grid, future: int):
  """``Masks`` (batch 1): the tokens of the last ``future`` time steps of ``grid`` as targets,
  every earlier token as context (tokens in (time, height, width) order)."""
  import jax.numpy as jnp  # noqa: PLC0415
  from jepa_jax import masks as masks_lib  # noqa: PLC0415
  t, h, w = grid
  if not 0 < future < t:
    raise ConfigError(f"--future {future} must leave context: between 1 and {t - 1} of the clip's "
                      f"{t} token time steps")
  split = (t - future) * h * w
  context, target = jnp.arange(split)[None], jnp.arange(split, t * h * w)[None]
  return masks_lib.Masks(context, jnp.ones(context.shape, bool), target,
                         jnp.ones(target.shape, bool))


def load_model(checkpoint: str):
  """``(saved config, encoder, predictor, params {"encoder", "predictor"}, target params, info)``
  of a checkpoint with a predictor."""
  import ml_collections  # noqa: PLC0415
  from jepa_jax import checkpoint as ckpt_lib  # noqa: PLC0415
  from jepa_jax.pretrain import config as config_lib  # noqa: PLC0415
  from jepa_jax import models  # noqa: PLC0415
  loaded = ckpt_lib.load(checkpoint)
  missing = [k for k in ("encoder", "predictor", "target") if k not in loaded.params]
  if missing:
    raise ckpt_lib.CheckpointError(
        f"{checkpoint} ({loaded.kind} checkpoint) has no {'/'.join(missing)} parameters; the "
        "surprise needs a pretraining workdir (encoder, predictor and EMA target)")
  saved = ckpt_lib.read_config(checkpoint, loaded.step)
  if not saved.get("data") or not saved.get("model"):
    raise ckpt_lib.CheckpointError(f"{checkpoint} carries no pretraining config (model, data); "
                                   "give the workdir of a jepa_jax pretraining run")
  config = ml_collections.ConfigDict(saved)
  # The spec saved with the checkpoint; one written before checkpoints carried it has the
  # pretraining config that made it.
  spec = ckpt_lib.read_model_spec(checkpoint, loaded.step, saved)
  if spec is None or spec.predictor is None:
    spec = config_lib.model_spec(config)
  encoder, predictor = models.from_spec(spec)
  where = f"checkpoint {loaded.step} of {checkpoint}"
  ckpt_lib.check_shapes(loaded.params["target"], models.abstract_params(encoder), where)
  params = {"encoder": loaded.params["encoder"], "predictor": loaded.params["predictor"]}
  info = dict(checkpoint=checkpoint, step=int(loaded.step), kind=loaded.kind)
  return config, encoder, predictor, params, loaded.params["target"], info


def build_error_fn(encoder, predictor, masks, mask_token: int):
  """Jitted ``(params, target params, uint8 clips [W, T, H, W, C]) -> [W]``: the training loss
  of each clip on its own with ``masks`` (batch 1)."""
  import jax  # noqa: PLC0415
  from jepa_jax import loss as loss_lib  # noqa: PLC0415
  from jepa_jax.data import normalize as normalize_lib  # noqa: PLC0415
  apply_encoder, apply_predictor = loss_lib.model_apply_fns(encoder, predictor)

  def one(params, target_params, clip):
    x = normalize_lib.normalize(clip[None], encoder.block.dtype)
    loss, _ = loss_lib.vjepa_loss(apply_encoder, apply_predictor, params, target_params, x,
                                  (masks,), (mask_token,))
    return loss

  return jax.jit(jax.vmap(one, in_axes=(None, None, 0)))


def window_errors(error_fn, params, target_params, clips: np.ndarray, batch: int) -> np.ndarray:
  """``error_fn`` over ``clips`` ``batch`` windows at a time (the last batch padded to the same
  shape, so one program is compiled)."""
  out = []
  for i in range(0, len(clips), batch):
    chunk = clips[i:i + batch]
    padded = np.concatenate([chunk, np.zeros((batch - len(chunk),) + chunk.shape[1:],
                                             chunk.dtype)])
    out.append(np.asarray(error_fn(params, target_params, padded))[:len(chunk)])
  return np.concatenate(out)


def video_fps(src, j) -> Optional[float]:
  """The frame rate of item ``j`` of a video-file source (None for in-memory videos)."""
  if not hasattr(src, "path"):
    return None
  import av  # noqa: PLC0415
  from jepa_jax.data import decode  # noqa: PLC0415
  with av.open(src.path(j), metadata_errors="ignore") as container:
    fps = decode.probe(container)[2]
  return fps or None


def plot(path: str, record: dict) -> None:
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  wins = record["windows"]
  timed = all(w["start_s"] is not None for w in wins)
  x = [w["start_s"] if timed else w["start_frame"] for w in wins]
  fig, ax = plt.subplots(figsize=(7, 2.6))
  ax.plot(x, [w["error"] for w in wins], marker="o", markersize=3)
  ax.set_xlabel("window start (s)" if timed else "window start (frame)")
  ax.set_ylabel("prediction error (L1)")
  ax.set_title(os.path.basename(record["video"]), fontsize=9)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def run(args) -> dict:
  """The timelines (module docstring); returns ``{"written": [paths], "unreadable": count}``."""
  import jax  # noqa: PLC0415
  from jepa_jax import checkpoint as ckpt_lib  # noqa: PLC0415
  from jepa_jax.pretrain import config as config_lib  # noqa: PLC0415
  from jepa_jax import masks as masks_lib  # noqa: PLC0415
  from jepa_jax.data import decode  # noqa: PLC0415
  config, encoder, predictor, params, target_params, info = load_model(args.checkpoint)
  d = config.data
  grid = encoder.grid
  if args.config_mask is not None:
    cfgs = config_lib.mask_configs(config, grid)
    if not 0 <= args.config_mask < len(cfgs):
      raise ConfigError(f"--config-mask {args.config_mask}: the config has {len(cfgs)} masks "
                        f"(0..{len(cfgs) - 1})")
    masks = jax.jit(masks_lib.sample_masks, static_argnums=(1, 2, 3))(
        jax.random.PRNGKey(args.seed), 1, tuple(grid), (cfgs[args.config_mask],))[0]
    token = config_lib.mask_token_ids(config)[args.config_mask]
    mask_info = dict(kind="config", index=args.config_mask, seed=args.seed,
                     config=ckpt_lib.config_to_json(config)["masks"][args.config_mask])
  else:
    future = args.future if args.future is not None else max(1, grid[0] // 2)
    masks = future_masks(grid, future)
    token = config_lib.mask_token_ids(config)[0]
    mask_info = dict(kind="future", future_steps=future)
  mask_info.update(context_tokens=int(np.sum(masks.context_valid)),
                   target_tokens=int(np.sum(masks.target_valid)), mask_token=int(token))
  window = d.num_frames * d.frame_step
  stride = args.stride or d.frame_step * encoder.tubelet_size
  settings = Settings(frames=d.num_frames, frame_step=d.frame_step,
                              resolution=d.crop_size, window=window, stride=stride,
                              last=args.last, pool="none", layers=None, dtype="float32")
  error_fn = build_error_fn(encoder, predictor, masks, token)
  params, target_params = jax.device_put((params, target_params))
  os.makedirs(args.out, exist_ok=True)
  written, unreadable = [], 0
  for position, src, j in reading.items_of(reading.open_sources(args.videos)):
    video = reading.describe(src, j)
    try:
      clips, windows, n = reading.read_windows(src, j, settings)
      fps = args.fps or video_fps(src, j)
    except decode.VideoReadError as e:
      log.error("cannot read %s: %s", video, e)
      unreadable += 1
      continue
    if not windows:
      raise ConfigError(f"{video} is an image; the surprise timeline needs a video")
    errors = window_errors(error_fn, params, target_params, clips, args.batch_size)
    record = dict(video=video, **info, num_frames=n, fps=fps,
                  clip=dict(frames=d.num_frames, frame_step=d.frame_step,
                            resolution=d.crop_size, window=window, stride=stride, last=args.last),
                  mask=mask_info,
                  windows=[dict(start_frame=w.start, end_frame=w.end,
                                start_s=(w.start / fps) if fps else None, padded=w.padded,
                                error=float(e))
                           for w, e in zip(windows, errors)])
    stem = os.path.join(args.out, os.path.splitext(os.path.basename(
        reading.file_name(position, src, j)))[0])
    with open(stem + ".json", "w") as f:
      json.dump(record, f, indent=1)
    plot(stem + ".png", record)
    written += [stem + ".json", stem + ".png"]
    log.info("%s: %d windows, error %.4f..%.4f", video, len(errors), errors.min(), errors.max())
  return dict(written=written, unreadable=unreadable)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m jepa_jax.surprise", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("videos", nargs="+", metavar="VIDEO",
                 help="video files, directories, index files or tfds:name@split")
  p.add_argument("--checkpoint", required=True, help="a pretraining workdir")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--stride", type=int, help="source frames between window starts "
                                            "(default: one token time step)")
  p.add_argument("--last", choices=("drop", "pad"), default="drop",
                 help="a last, partial window: left out, or padded with the last frame")
  masks = p.add_mutually_exclusive_group()
  masks.add_argument("--future", type=int,
                     help="predict the last K token time steps (default: half the clip's)")
  masks.add_argument("--config-mask", type=int, help="use mask I of the pretraining config")
  p.add_argument("--seed", type=int, default=0, help="--config-mask: the mask's draw")
  p.add_argument("--fps", type=float, help="the videos' frame rate (default: read from each)")
  p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
  args = p.parse_args(argv)
  if (args.stride is not None and args.stride < 1) or args.batch_size < 1:
    p.error("--stride and --batch-size must be positive")
  args.checkpoint, args.out = paths.resolve(args.checkpoint), paths.resolve(args.out)
  return args


def main(argv=None) -> int:
  return cli.files_command(parse_args, run, argv)


if __name__ == "__main__":
  cli.install_unraisablehook()  # a skipped damaged checkpoint: no echoes of its failed reads
  sys.exit(main())
