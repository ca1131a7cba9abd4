"""Convert V-JEPA weights between the reference's PyTorch files and jepa_jax checkpoints.

Reference -> jepa_jax (a params-only orbax checkpoint + config in DIR/checkpoints/0):

  python -m jepa_jax.convert --from-torch vith16.pth.tar --out DIR [--model vit_huge]
      [--img-size 224 --num-frames 16 --patch-size 16 --tubelet-size 2]
      [--embed-dim D --depth L --num-heads H] [--encoder-only]
  python -m jepa_jax.convert --from-torch vitg.pt --out DIR        (V-JEPA 2: RoPE inferred)
      [--rope | --no-rope] [--pred-num-heads 12]
  python -m jepa_jax.convert --from-torch k400-probe.pth.tar --kind probe --out DIR
      [--num-heads H | --model vit_huge] [--probe-index 0]

Everything the shapes and the position table determine is inferred; flags given are checked
against the file, and a file that does not fit is refused with the parameter, both shapes and the
fix.

jepa_jax -> reference (a .pth.tar in the released files' structure):

  python -m jepa_jax.convert --to-torch --ckpt WORKDIR_OR_DIR --out FILE.pth.tar
      [--which both|target|online] [--step N]
  python -m jepa_jax.convert --to-torch --kind probe --ckpt DIR --out FILE.pth.tar

Resuming a run on the other side (pretraining checkpoints with their AdamW state):

  python -m jepa_jax.convert --to-torch --resumable --ckpt WORKDIR --out FILE.pth.tar
      (adds 'opt', 'epoch' and 'scaler': the reference's load_checkpoint resumes from it)
  python -m jepa_jax.convert --from-torch FILE.pth.tar --resumable --config CONFIG.py --out WORKDIR
      (then: python -m jepa_jax.main --config=CONFIG.py --workdir=WORKDIR resumes)
"""
import argparse
import sys

from jepa_jax import cli, paths
from jepa_jax.convert import reference
from jepa_jax.convert.names import ConversionError


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m jepa_jax.convert", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  direction = p.add_mutually_exclusive_group(required=True)
  direction.add_argument("--from-torch", metavar="FILE.pth.tar",
                         help="reference checkpoint to convert into a jepa_jax checkpoint")
  direction.add_argument("--to-torch", action="store_true",
                         help="write a jepa_jax checkpoint (--ckpt) as a reference .pth.tar")
  p.add_argument("--out", required=True,
                 help="output directory (--from-torch) or .pth.tar file (--to-torch)")
  p.add_argument("--kind", choices=("model", "probe"), default="model",
                 help="pretrained encoder/predictor/target (default) or attentive probe")
  p.add_argument("--model", help="named size, e.g. vit_large, vit_huge (inferred if omitted)")
  for flag, what in (("--img-size", "crop size in pixels"), ("--num-frames", "frames per clip"),
                     ("--patch-size", "spatial patch"), ("--tubelet-size", "temporal patch"),
                     ("--embed-dim", "override: width"), ("--depth", "override: blocks"),
                     ("--num-heads", "override: attention heads")):
    p.add_argument(flag, type=int, help=f"{what} (inferred/checked from the file if omitted)")
  p.add_argument("--encoder-only", action="store_true", help="ignore the predictor")
  p.add_argument("--rope", action=argparse.BooleanOptionalAction, default=None,
                 help="V-JEPA 2 3D-RoPE model (default: inferred from the file)")
  p.add_argument("--pred-num-heads", type=int,
                 help="predictor heads (default: 12 for RoPE models, else the encoder's)")
  p.add_argument("--probe-index", type=int, default=0,
                 help="--kind probe: which of a V-JEPA 2 file's probes (one per LR/WD setting)")
  p.add_argument("--ckpt", help="--to-torch: jepa_jax workdir or checkpoint directory")
  p.add_argument("--which", choices=reference.WHICH, default="both",
                 help="--to-torch: 'both' writes the online encoder as 'encoder' and the EMA "
                      "target as 'target_encoder' (as the reference); 'target'/'online' writes "
                      "that encoder under both keys")
  p.add_argument("--step", type=int, help="--to-torch: checkpoint step (default: latest)")
  p.add_argument("--resumable", action="store_true",
                 help="pretraining checkpoints with their AdamW state, to resume on the other side")
  p.add_argument("--config", help="--from-torch --resumable: the training config of the run to "
                                  "resume (configs/*.py)")
  args = p.parse_args(argv)
  if args.resumable and args.kind == "probe":
    p.error("--resumable is for pretraining checkpoints, not probes")
  if args.from_torch and args.resumable and not args.config:
    p.error("--from-torch --resumable needs --config CONFIG.py: the training config of the run "
            "that will resume from it")
  if args.to_torch and not args.ckpt:
    p.error("--to-torch needs --ckpt WORKDIR_OR_DIR")
  if args.from_torch and args.ckpt:
    p.error("--ckpt is for --to-torch; --from-torch takes the file itself")
  # Relative paths are taken from the working directory (orbax needs them absolute).
  for name in ("from_torch", "ckpt", "out"):
    setattr(args, name, paths.resolve(getattr(args, name)))
  return args


def main(argv=None) -> int:
  cli.setup_logging(library_warnings=False)  # orbax warns for every read-only manager
  args = parse_args(argv)
  try:
    if args.from_torch and args.kind == "probe":
      params, probe_config = reference.load_torch_probe(args.from_torch, args.num_heads,
                                                        args.model, args.probe_index)
      path = reference.save_probe(args.out, params, probe_config)
      print(f"wrote probe {probe_config} to {path}")
    elif args.from_torch and args.resumable:
      try:
        run_config = cli.load_config(args.config)
      except ValueError as e:  # one line naming the file and the fix (cli.flag_error_message)
        raise ConversionError(f"--config: {e}") from None
      step = reference.save_resumable(
          args.from_torch, run_config, args.out, model=args.model,
          img_size=args.img_size, num_frames=args.num_frames, embed_dim=args.embed_dim,
          depth=args.depth, num_heads=args.num_heads, use_rope=args.rope,
          pred_num_heads=args.pred_num_heads)
      print(f"wrote a pretraining checkpoint at step {step} to {args.out}: python -m "
            f"jepa_jax.main --config={args.config} --workdir={args.out} resumes it")
    elif args.from_torch:
      params, config = reference.load_torch_checkpoint(
          args.from_torch, args.model, img_size=args.img_size, num_frames=args.num_frames,
          patch_size=args.patch_size, tubelet_size=args.tubelet_size, embed_dim=args.embed_dim,
          depth=args.depth, num_heads=args.num_heads, encoder_only=args.encoder_only,
          use_rope=args.rope, pred_num_heads=args.pred_num_heads)
      path = reference.save_converted(args.out, params, config)
      m, d = config.model, config.data
      positions = "3D RoPE" if m.use_rope else f"sin-cos uniform_power {m.uniform_power}"
      heads = f", {m.pred_num_heads} heads" if m.pred_num_heads else ""
      print(f"wrote {sorted(params)} of vit_{m.name} (overrides {dict(m.overrides)}, patch "
            f"{m.patch_size}, tubelet {m.tubelet_size}, {positions}, "
            f"predictor {m.pred_embed_dim}x{m.pred_depth}{heads}) for "
            f"{d.num_frames}x{d.crop_size}px clips to {path}")
    elif args.kind == "probe":
      reference.write_torch_probe(args.ckpt, args.out, args.step)
      print(f"wrote {args.out}")
    else:
      states = reference.write_torch_checkpoint(args.ckpt, args.out, args.which, args.step,
                                                resumable=args.resumable)
      extra = "opt, epoch, scaler" if args.resumable else "epoch"
      print(f"wrote {sorted(states)} (+ {extra}) to {args.out}")
  except (ConversionError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except Exception as e:  # noqa: BLE001 - checkpoint errors carry their own actionable message
    from jepa_jax.checkpoint import CheckpointError  # noqa: PLC0415
    from jepa_jax.experiment import ConfigError  # noqa: PLC0415 - --resumable's training config
    if isinstance(e, (CheckpointError, ConfigError)):
      print(f"error: {e}", file=sys.stderr)
      return 1
    raise
  return 0


if __name__ == "__main__":
  sys.exit(main())
