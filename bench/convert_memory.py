"""Peak memory of ``python -m jepa_jax.convert --from-torch`` on a file of a released model's size.

  python bench/convert_memory.py --size giant_xformers --dir /tmp/convert_memory
  python bench/convert_memory.py --format hf --size large --dir /tmp/convert_memory

``--format hf``: the same for ``--from-hf`` on a transformers ``VJEPA2Model`` directory of that
size (a RoPE encoder and the 12-block predictor; ``config.json`` + one ``model.safetensors``, random
float32 values written tensor by tensor), then for ``--to-hf`` of the converted checkpoint back
into a directory.

writes ``DIR/model.pt`` with the names and shapes of V-JEPA 2's released files for that size
(``encoder``, ``target_encoder`` with the ``pos_embed`` entries they carry, a 12-block predictor
of width 384 with 10 mask tokens; random values, float32), converts it in a subprocess under
``/usr/bin/time -v`` and prints the file size, the converter's peak resident set size (file pages
it maps included) and their ratio as JSON. ``--size large`` etc. for the other sizes (sin-cos
sizes get V-JEPA's layout: a 2-token predictor, exact tables). The file is written tensor by
tensor through file-backed tensors, so writing it needs little memory either.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys


def model_shapes(size: str, overrides=None, rope=None) -> dict:
  """``{group: {name: shape}}`` of a released file of ``size`` (jepa_jax's own export names);
  ``rope`` None: the ``*_xformers`` sizes are V-JEPA 2's RoPE ones."""
  from jepa_jax import models  # noqa: PLC0415
  from jepa_jax.pretrain import config as config_lib  # noqa: PLC0415
  from jepa_jax.convert import infer, reference  # noqa: PLC0415
  rope = size.endswith("_xformers") if rope is None else rope
  tokens = 10 if rope else 2
  config = reference._config(size, dict(overrides or {}), dict(patch_size=16, tubelet_size=2, in_chans=3), 256, 16,
                             True, dict(pred_embed_dim=384, pred_depth=12, num_mask_tokens=tokens),
                             use_rope=rope, pred_num_heads=12 if rope else None)
  encoder, predictor = models.from_spec(config_lib.model_spec(config, num_masks=tokens))
  abstract = reference._abstract_params(encoder, predictor)
  enc = infer.torch_shapes(abstract["encoder"], "encoder")
  tokens_per_clip = (16 // 2) * (256 // 16) ** 2
  enc["pos_embed"] = (1, tokens_per_clip, enc["norm.weight"][0])
  pred = infer.torch_shapes(abstract["predictor"], "predictor")
  pred["predictor_pos_embed"] = (1, tokens_per_clip, 384)
  return {"encoder": enc, "target_encoder": enc, "predictor": pred}, config


def write_file(path: str, size: str, overrides=None) -> int:
  """Write the file (see the module docstring); returns its size in bytes."""
  import torch  # noqa: PLC0415
  from jepa_jax.models import pos_embed  # noqa: PLC0415
  shapes, config = model_shapes(size, overrides)
  scratch = path + ".scratch"
  os.makedirs(scratch, exist_ok=True)
  gen = torch.Generator().manual_seed(0)
  ckpt, n = {}, 0
  for group, names in shapes.items():
    ckpt[group] = {}
    for name, shape in names.items():
      numel = 1
      for d in shape:
        numel *= d
      # A tensor backed by its own file: its pages are page cache, not this process's memory.
      t = torch.from_file(os.path.join(scratch, str(n)), shared=True, size=numel).view(shape)
      n += 1
      if name.endswith("pos_embed"):
        grid = (config.data.num_frames // 2, config.data.crop_size // 16, config.data.crop_size // 16)
        t.copy_(torch.from_numpy(pos_embed.sincos_3d(shape[-1], grid, True)[None]))
      else:
        t.uniform_(-0.02, 0.02, generator=gen)
      ckpt[group]["module.backbone." + name] = t
  ckpt["epoch"] = 0
  torch.save(ckpt, path)
  shutil.rmtree(scratch)
  return os.path.getsize(path)


class _Random:
  """A tensor made when written (``safetensors_io.write`` asks for shape and dtype first)."""

  def __init__(self, shape, rng):
    self.shape, self.dtype, self._rng = tuple(shape), "float32", rng

  def __array__(self, dtype=None, copy=None):
    import numpy as np  # noqa: PLC0415
    return self._rng.uniform(-0.02, 0.02, self.shape).astype(dtype or np.float32)


def write_hf_dir(directory: str, size: str) -> int:
  """A transformers VJEPA2Model directory of ``size`` (module docstring); returns the weights'
  bytes."""
  import numpy as np  # noqa: PLC0415
  import transformers  # noqa: PLC0415
  from jepa_jax.convert import hf, safetensors_io  # noqa: PLC0415
  shapes, config = model_shapes(size, rope=True)
  zeros = lambda group: {k: np.broadcast_to(np.float32(0), v) for k, v in shapes[group].items()
                         if not k.endswith("pos_embed")}  # noqa: E731
  state = dict(hf.to_hf(zeros("target_encoder"), "encoder"),
               **hf.to_hf(zeros("predictor"), "predictor"))
  rng = np.random.default_rng(0)
  os.makedirs(directory, exist_ok=True)
  safetensors_io.write(os.path.join(directory, safetensors_io.WEIGHTS_NAME),
                       {k: _Random(v.shape, rng) for k, v in state.items()})
  fields = hf._model_fields(config, num_masks=10)
  transformers.VJEPA2Config(architectures=[hf.MODEL_ARCH], **fields).save_pretrained(directory)
  return os.path.getsize(os.path.join(directory, safetensors_io.WEIGHTS_NAME))


def peak_rss_of_conversion(path: str, out: str, flags=("--from-torch",)) -> int:
  """Peak RSS in bytes of converting ``path`` into ``out`` (``/usr/bin/time -v``); ``flags``:
  the direction (``--from-torch``, ``--from-hf``, ``--to-hf``)."""
  shutil.rmtree(out, ignore_errors=True)
  if flags[0] == "--to-hf":
    argv = ["--to-hf", out, "--ckpt", path]
  else:
    argv = [flags[0], path, "--out", out]
  proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "jepa_jax.convert", *argv],
                        capture_output=True, text=True,
                        check=False, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  if proc.returncode != 0:
    raise SystemExit(proc.stderr[-3000:])
  return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) * 1024


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--size", default="giant_xformers")
  p.add_argument("--dir", required=True)
  p.add_argument("--keep", action="store_true", help="keep the file and the converted checkpoint")
  p.add_argument("--format", choices=("torch", "hf"), default="torch")
  args = p.parse_args()
  os.makedirs(args.dir, exist_ok=True)
  if args.format == "hf":
    source = os.path.join(args.dir, f"hf-{args.size}")
    file_bytes = write_hf_dir(source, args.size)
    converted, back = os.path.join(args.dir, "converted-hf"), os.path.join(args.dir, "back-hf")
    for direction, path, out in (("--from-hf", source, converted), ("--to-hf", converted, back)):
      peak = peak_rss_of_conversion(path, out, (direction,))
      print(json.dumps(dict(size=args.size, direction=direction,
                            file_gib=round(file_bytes / 2**30, 3),
                            peak_rss_gib=round(peak / 2**30, 3),
                            ratio=round(peak / file_bytes, 3))))
    if not args.keep:
      for d in (source, converted, back):
        shutil.rmtree(d, ignore_errors=True)
    return
  path = os.path.join(args.dir, f"{args.size}.pt")
  file_bytes = os.path.getsize(path) if os.path.exists(path) else write_file(path, args.size)
  out = os.path.join(args.dir, "converted")
  peak = peak_rss_of_conversion(path, out)
  print(json.dumps(dict(size=args.size, file_gib=round(file_bytes / 2**30, 3),
                        peak_rss_gib=round(peak / 2**30, 3), ratio=round(peak / file_bytes, 3))))
  if not args.keep:
    os.remove(path)
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
  main()
