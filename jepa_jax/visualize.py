"""Pictures of what an encoder sees: its tokens' first 3 principal components as colours, and a
saved attentive probe's attention over the tokens, beside the frames.

  python -m jepa_jax.visualize --checkpoint DIR --out OUT [--fit SOURCE]... [--basis FILE.npz]
      [--probe PROBE_DIR] [--layer K] [--frames 16 --frame-step 4 --resolution 224] [--zoom 2]
      SOURCE...

SOURCE, ``--fit`` (repeatable) and ``--checkpoint`` are what extract reads, each clip encoded as
extract does without ``--window`` (clip settings default to the checkpoint's training config).
Colours: the tokens (output, or block ``--layer``'s) on the first 3 principal components of the
``--fit`` clips' tokens (default: the clips shown), each scaled so its 1st..99th percentile spans
0..255; the basis is saved to ``--basis`` when fitted and read from it without ``--fit``, so runs
share one colour map. Attention (``--probe``: an eval run's ``probes/<run>`` or its workdir): the
probe's cross-attention over one clip's tokens, averaged over heads and queries. Writes
``<position>_<name>`` ``.png``, ``.gif`` and ``.npz`` per clip to OUT (docs/tools.md).
"""
import argparse
import dataclasses
import logging
import os
import sys
from typing import Optional

import numpy as np

from jepa_jax import cli
from jepa_jax import paths
from jepa_jax.errors import ConfigError
from jepa_jax.extract import features, reading
from jepa_jax.extract.settings import Settings

log = logging.getLogger(__name__)

PERCENTILES = (1.0, 99.0)
GAP = 2  # pixels between the pictures of the grid


# ---------------------------------------------------------------------------------------------
# The colour basis (pure)


@dataclasses.dataclass(frozen=True)
class Basis:
  mean: np.ndarray        # [D]
  components: np.ndarray  # [3, D], orthonormal rows, the largest |loading| of each positive
  lo: np.ndarray          # [3] projections mapped to 0
  hi: np.ndarray          # [3] projections mapped to 1


def fit_basis(tokens: np.ndarray) -> Basis:
  """The first 3 principal components of ``tokens [M, D]`` and their colour scales."""
  x = np.asarray(tokens, np.float64).reshape(-1, tokens.shape[-1])
  if x.shape[0] < 4 or x.shape[1] < 3:
    raise ConfigError(f"cannot fit 3 colour components to {x.shape[0]} tokens of width "
                      f"{x.shape[1]}; give more clips to --fit")
  mean = x.mean(axis=0)
  _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
  comps = vt[:3]
  biggest = comps[np.arange(3), np.argmax(np.abs(comps), axis=1)]
  comps = comps * np.sign(biggest)[:, None]
  proj = (x - mean) @ comps.T
  lo, hi = np.percentile(proj, PERCENTILES, axis=0)
  return Basis(mean, comps, lo, np.maximum(hi, lo + 1e-12))


def colours(basis: Basis, tokens: np.ndarray) -> np.ndarray:
  """``tokens [..., D]`` as RGB in 0..1, ``[..., 3]``."""
  proj = (np.asarray(tokens, np.float64) - basis.mean) @ basis.components.T
  return np.clip((proj - basis.lo) / (basis.hi - basis.lo), 0.0, 1.0)


def save_basis(path: str, basis: Basis, layer: Optional[int] = None) -> None:
  """``basis`` as ``.npz``, with the block whose tokens it was fitted on (-1: the output)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with paths.atomic_write(path, "wb") as f:
    np.savez(f, **dataclasses.asdict(basis), layer=-1 if layer is None else layer)


def load_basis(path: str, width: int, layer: Optional[int] = None) -> Basis:
  """The basis in ``path``, checked against the tokens it will colour."""
  with np.load(path) as f:
    basis = Basis(**{k.name: f[k.name] for k in dataclasses.fields(Basis)})
    fitted = int(f["layer"]) if "layer" in f else -1
  if basis.mean.shape != (width,):
    raise ConfigError(f"--basis {path} was fitted on {basis.mean.shape[0]}-wide tokens but this "
                      f"encoder makes {width}-wide ones; fit a new one with --fit")
  if fitted != (-1 if layer is None else layer):
    name = lambda k: "the output" if k == -1 else f"block {k}"  # noqa: E731
    raise ConfigError(f"--basis {path} was fitted on {name(fitted)}'s tokens, not "
                      f"{name(-1 if layer is None else layer)}'s; give the same --layer or fit a "
                      "new basis with --fit")
  return basis


# ---------------------------------------------------------------------------------------------
# Pictures (pure)


def per_frame(grid_values: np.ndarray, num_frames: int, patch: int) -> np.ndarray:
  """Token-grid values ``[t, h, w, C]`` as per-frame pictures ``[T, h*patch, w*patch, C]``: each
  frame shows its tubelet's tokens, each token a ``patch`` x ``patch`` square."""
  t = grid_values.shape[0]
  tubelet = num_frames // t
  up = np.repeat(np.repeat(grid_values, patch, axis=1), patch, axis=2)
  return up[np.arange(num_frames) // tubelet]


def heat(values: np.ndarray, frames: np.ndarray, alpha: float = 0.7) -> np.ndarray:
  """``values [T, H, W]`` (>= 0) as an inferno heat map laid over uint8 ``frames [T, H, W, 3]``."""
  from matplotlib import colormaps  # noqa: PLC0415
  scaled = values / max(float(values.max()), 1e-12)
  rgb = colormaps["inferno"](scaled)[..., :3] * 255.0
  return np.round(alpha * rgb + (1 - alpha) * frames.astype(np.float64)).astype(np.uint8)


def to_uint8(rgb01: np.ndarray) -> np.ndarray:
  return np.round(np.asarray(rgb01) * 255.0).astype(np.uint8)


def grid_picture(rows: list, zoom: int = 1) -> np.ndarray:
  """``rows`` of uint8 ``[T, H, W, 3]`` as one picture: one row each, frames left to right."""
  t, h, w, _ = rows[0].shape
  out = np.full((len(rows) * (h + GAP) - GAP, t * (w + GAP) - GAP, 3), 255, np.uint8)
  for r, row in enumerate(rows):
    for i in range(t):
      out[r * (h + GAP):r * (h + GAP) + h, i * (w + GAP):i * (w + GAP) + w] = row[i]
  return zoomed(out, zoom)


def animation_frames(rows: list, zoom: int = 1) -> list:
  """One picture per clip frame: that frame of every row, side by side."""
  t, h, w, _ = rows[0].shape
  out = []
  for i in range(t):
    pic = np.full((h, len(rows) * (w + GAP) - GAP, 3), 255, np.uint8)
    for r, row in enumerate(rows):
      pic[:, r * (w + GAP):r * (w + GAP) + w] = row[i]
    out.append(zoomed(pic, zoom))
  return out


def zoomed(picture: np.ndarray, zoom: int) -> np.ndarray:
  return np.repeat(np.repeat(picture, zoom, axis=0), zoom, axis=1) if zoom > 1 else picture


def write_pictures(stem: str, rows: list, zoom: int, fps: float) -> list:
  """``stem.png`` (the grid) and ``stem.gif`` (the animation); returns their paths."""
  from PIL import Image  # noqa: PLC0415
  Image.fromarray(grid_picture(rows, zoom)).save(stem + ".png")
  frames = [Image.fromarray(f) for f in animation_frames(rows, zoom)]
  frames[0].save(stem + ".gif", save_all=True, append_images=frames[1:],
                 duration=int(round(1000 / fps)), loop=0)
  return [stem + ".png", stem + ".gif"]


# ---------------------------------------------------------------------------------------------
# The models


def build_attention_fn(encoder, probe, layers: Optional[list]):
  """Jitted ``(encoder params, probe params, uint8 [B, T, H, W, C]) -> [B, heads, queries, S]``:
  the probe's cross-attention weights over the ``S`` tokens it reads (one clip's)."""
  import einops  # noqa: PLC0415
  import flax.linen as nn  # noqa: PLC0415
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  from jepa_jax.data import clips as clips_lib  # noqa: PLC0415
  from jepa_jax.eval import encoder as enc_lib  # noqa: PLC0415
  token_fn = enc_lib.make_token_fn(encoder, layers)
  heads = probe.block.num_heads

  def fn(enc_params, probe_params, clips):
    tokens = token_fn(enc_params, clips_lib.batch_of(clips))[:, 0]  # its one view
    kept = {}

    def keep_projections(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      module = context.module
      if (context.method_name == "__call__" and module.name in ("q", "kv")
          and getattr(module.parent, "name", None) == "xattn"):
        kept[module.name] = out
      return out

    with nn.intercept_methods(keep_projections):
      probe.apply({"params": probe_params}, tokens)
    q = einops.rearrange(kept["q"], "b n (h d) -> b h n d", h=heads).astype(jnp.float32)
    k = einops.rearrange(kept["kv"], "b s (kv h d) -> kv b h s d", kv=2, h=heads)[0]
    logits = jnp.einsum("bhnd,bhsd->bhns", q, k.astype(jnp.float32)) * q.shape[-1] ** -0.5
    return jax.nn.softmax(logits, axis=-1)

  return jax.jit(fn)


def probe_dir(path: str) -> str:
  """A saved probe's directory: ``path`` itself, or the one probe of an eval workdir
  (``path/probes/<run>``)."""
  runs = os.path.join(path, "probes")
  if os.path.isdir(os.path.join(path, "checkpoints")) or not os.path.isdir(runs):
    return path
  found = sorted(os.listdir(runs))
  if len(found) != 1:
    raise ConfigError(f"{path} holds {len(found)} probes ({', '.join(found)}); give one of them: "
                      f"--probe {os.path.join(runs, found[0] if found else '<run>')}")
  return os.path.join(runs, found[0])


def checkpoint_clip(checkpoint: str) -> dict:
  """``{frames, frame_step, resolution}`` of the checkpoint's training config (those it has)."""
  from jepa_jax import checkpoint as ckpt_lib  # noqa: PLC0415
  data = ckpt_lib.read_config(checkpoint).get("data") or {}
  return {k: data.get(v) for k, v in (("frames", "num_frames"), ("frame_step", "frame_step"),
                                      ("resolution", "crop_size")) if data.get(v)}


def settings_of(args) -> Settings:
  clip = dict(frames=16, frame_step=4, resolution=224)
  clip.update(checkpoint_clip(args.checkpoint))
  clip.update({k: getattr(args, k) for k in clip if getattr(args, k) is not None})
  return Settings(window=0, stride=0, last="pad", pool="none",
                          layers=None if args.layer is None else [args.layer], dtype="float32",
                          **clip)


def iter_clips(specs: list, settings, failed: list, tfds_data_dir=None):
  """``(name, uint8 clip [T, R, R, 3])`` of each video (image) of ``specs``, read one at a time;
  unreadable ones are logged, appended to ``failed`` and left out."""
  from jepa_jax.data import decode  # noqa: PLC0415
  for position, src, j in reading.items_of(reading.open_sources(specs, tfds_data_dir)):
    try:
      clips, _, _ = reading.read_windows(src, j, settings)
    except decode.VideoReadError as e:
      log.error("cannot read %s: %s", reading.describe(src, j), e)
      failed.append(reading.describe(src, j))
      continue
    yield os.path.splitext(os.path.basename(reading.file_name(position, src, j)))[0], clips[0]


# ---------------------------------------------------------------------------------------------
# The run


def run(args) -> dict:
  """Visualise (module docstring); returns ``{"written": [paths], "unreadable": count}``."""
  import jax  # noqa: PLC0415
  settings = settings_of(args)
  encoder, enc_params, _, _, _ = features.load_models(args, settings)
  t, h, w = encoder.grid
  feature_fn = features.build_feature_fn(encoder, settings)

  def tokens_of(clip):
    return np.asarray(jax.device_get(feature_fn(enc_params, None, clip[None])))[0]

  unreadable = []
  shown = [(name, clip, tokens_of(clip))
           for name, clip in iter_clips(args.sources, settings, unreadable, args.tfds_data_dir)]
  if args.basis and os.path.exists(args.basis) and not args.fit:
    basis = load_basis(args.basis, encoder.embed_dim, args.layer)
    log.info("colours: the basis in %s", args.basis)
  else:
    # The fit clips' tokens are held in memory (N x D floats per clip): tens of clips, not
    # thousands.
    if args.fit:
      fit = [tokens_of(clip) for _, clip in iter_clips(args.fit, settings, [], args.tfds_data_dir)]
    else:
      fit = [tokens for _, _, tokens in shown]
    if not fit:
      raise ConfigError("no readable clip to fit the colour basis on")
    basis = fit_basis(np.concatenate(fit))
    if args.basis:
      save_basis(args.basis, basis, args.layer)
      log.info("colours: a basis fitted on %d clips, written to %s", len(fit), args.basis)

  attention_fn = None
  if args.probe:
    probe, probe_params, layers = features.load_probe(probe_dir(args.probe), encoder,
                                                     settings.layers)
    attention_fn = build_attention_fn(encoder, probe, layers)

  os.makedirs(args.out, exist_ok=True)
  written = []
  for name, clip, tokens in shown:
    pca = colours(basis, tokens).reshape(t, h, w, 3)
    rows = [clip, to_uint8(per_frame(pca, len(clip), encoder.patch_size))]
    arrays = dict(frames=clip, pca=pca)
    if attention_fn is not None:
      weights = np.asarray(jax.device_get(attention_fn(enc_params, probe_params, clip[None])))[0]
      attention = weights.mean(axis=(0, 1)).reshape(-1, t, h, w).sum(axis=0)
      rows.append(heat(per_frame(attention[..., None], len(clip), encoder.patch_size)[..., 0],
                       clip))
      arrays["attention"] = attention
    stem = os.path.join(args.out, name)
    written += write_pictures(stem, rows, args.zoom, args.fps)
    np.savez(stem + ".npz", **arrays)
    written.append(stem + ".npz")
  return dict(written=written, unreadable=len(unreadable))


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m jepa_jax.visualize", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("sources", nargs="+", metavar="SOURCE",
                 help="video or image files, directories, index files or tfds:name@split")
  p.add_argument("--checkpoint", required=True, help="trainer workdir or converted weights")
  p.add_argument("--checkpoint-key", choices=("target", "online"), default="target")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--fit", action="append", metavar="SOURCE",
                 help="fit the colour basis on this (repeatable; default: on the SOURCEs)")
  p.add_argument("--basis", help="the colour basis .npz: read if it exists and no --fit is given, "
                                 "else written")
  p.add_argument("--probe", help="a saved attentive probe: also draw its attention")
  p.add_argument("--layer", type=int, help="0-based encoder block whose tokens are coloured "
                                           "(default: the output)")
  p.add_argument("--frames", type=int, help="frames per clip (default: the checkpoint's)")
  p.add_argument("--frame-step", type=int, help="source frames between clip frames")
  p.add_argument("--resolution", type=int, help="crop size in pixels")
  p.add_argument("--zoom", type=int, default=1, help="enlarge the pictures this many times")
  p.add_argument("--fps", type=float, default=4.0, help="animation frames per second")
  p.add_argument("--encoder-dtype", choices=("float32", "bfloat16", "float16"), default="float32")
  p.add_argument("--tfds-data-dir", help="where prepared TFDS datasets are")
  args = p.parse_args(argv)
  if args.zoom < 1 or args.fps <= 0:
    p.error("--zoom must be at least 1 and --fps positive")
  args.checkpoint, args.out = paths.resolve(args.checkpoint), paths.resolve(args.out)
  args.probe = paths.resolve(args.probe) if args.probe else None
  args.basis = paths.resolve(args.basis) if args.basis else None
  return args


def main(argv=None) -> int:
  return cli.files_command(parse_args, run, argv)


if __name__ == "__main__":
  cli.install_unraisablehook()  # a skipped damaged checkpoint: no echoes of its failed reads
  sys.exit(main())
