"""Convert V-JEPA weights between the reference's PyTorch files, Hugging Face and jepa_jax.

  python -m jepa_jax.convert --from-torch FILE.pth.tar --out DIR [--model vit_huge]
      [--img-size 224 --num-frames 16] [--rope | --no-rope] [--encoder-only] [--as-vjepa2]
  python -m jepa_jax.convert --from-torch PROBE.pth.tar --kind probe --out DIR [--probe-index 0]
      [--dataset k400|ssv2|diving48|none]
  python -m jepa_jax.convert --to-torch --ckpt WORKDIR_OR_DIR --out FILE.pth.tar
      [--which both|target|online] [--step N] [--kind probe]
  python -m jepa_jax.convert --to-hf DIR --ckpt WORKDIR_OR_DIR [--which target|online]
      [--encoder-only] [--kind probe [--encoder ENCODER_DIR] [--labels classes.txt]]
  python -m jepa_jax.convert --from-hf DIR --out OUT
  python -m jepa_jax.convert --to-torch --resumable --ckpt WORKDIR --out FILE.pth.tar
  python -m jepa_jax.convert --from-torch FILE.pth.tar --resumable --config CONFIG.py --out WORKDIR

--from-torch writes a params-only checkpoint (DIR/checkpoints/0); what the shapes and position
table determine (size, grid, RoPE) is inferred and any flag given is checked against the file.
--to-hf writes what transformers' VJEPA2Model / VJEPA2ForVideoClassification load (3D-RoPE models
only); --from-hf reads such a directory, a classifier's probe going to OUT/probe. --resumable
carries the AdamW state both ways, so a pretraining run resumes on the other side. Examples and
caveats: README, "Using Meta's released V-JEPA weights" and "Hugging Face transformers".
"""
import argparse
import sys

from jepa_jax import cli, labels, paths
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
  direction.add_argument("--to-hf", metavar="DIR",
                         help="write a jepa_jax checkpoint (--ckpt) as a transformers V-JEPA 2 "
                              "model directory")
  direction.add_argument("--from-hf", metavar="DIR",
                         help="transformers V-JEPA 2 model directory (config.json + safetensors) "
                              "to convert into a jepa_jax checkpoint")
  p.add_argument("--out", help="output directory (--from-torch, --from-hf) or .pth.tar file "
                               "(--to-torch)")
  p.add_argument("--kind", choices=("model", "probe"), default="model",
                 help="pretrained encoder/predictor/target (default) or attentive probe")
  p.add_argument("--model", help="named size, e.g. vit_large, vit_huge (inferred if omitted)")
  for flag, what in (("--img-size", "crop size in pixels"), ("--num-frames", "frames per clip"),
                     ("--patch-size", "spatial patch"), ("--tubelet-size", "temporal patch"),
                     ("--embed-dim", "override: width"), ("--depth", "override: blocks"),
                     ("--num-heads", "override: attention heads")):
    p.add_argument(flag, type=int, help=f"{what} (inferred/checked from the file if omitted)")
  p.add_argument("--encoder-only", action="store_true",
                 help="ignore the predictor (--to-hf: write the encoder alone, for checkpoints "
                      "without a predictor)")
  p.add_argument("--rope", action=argparse.BooleanOptionalAction, default=None,
                 help="V-JEPA 2 3D-RoPE model (default: inferred from the file)")
  p.add_argument("--as-vjepa2", action="store_true",
                 help="--from-torch, a V-JEPA 2.1 file: read its encoder into the V-JEPA 2 "
                      "encoder as the reference's configs/eval_2_1 do (strict=False), to run "
                      "probes trained by them; docs/vjepa21.md")
  p.add_argument("--pred-num-heads", type=int,
                 help="predictor heads (default: 12 for RoPE models, else the encoder's)")
  p.add_argument("--probe-index", type=int, default=0,
                 help="--kind probe: which of a V-JEPA 2 file's probes (one per LR/WD setting)")
  p.add_argument("--dataset", choices=(*labels.DATASETS, "none"),
                 help="--from-torch --kind probe: the dataset of a released probe, whose shipped "
                      "class names (jepa_jax/labels) are saved with it for predict and --to-hf "
                      "(default: inferred when the class count and the file name agree, e.g. "
                      "ssv2-probe.pth.tar with 174 classes; 'none': save no names)")
  p.add_argument("--ckpt", help="--to-torch/--to-hf: jepa_jax workdir or checkpoint directory "
                                "(the probe's, with --kind probe)")
  p.add_argument("--which", choices=reference.WHICH,
                 help="--to-torch: 'both' (default) writes the online encoder as 'encoder' and "
                      "the EMA target as 'target_encoder' (as the reference); 'target'/'online' "
                      "writes that encoder under both keys. --to-hf: the one encoder to write, "
                      "'target' (default) or 'online'")
  p.add_argument("--step", type=int, help="--to-torch/--to-hf: checkpoint step (default: latest)")
  p.add_argument("--encoder", help="--to-hf --kind probe: the encoder's checkpoint (default: the "
                                   "one the probe was trained on, if it records it)")
  p.add_argument("--labels", help="--to-hf --kind probe: class names, one per line, line i = "
                                  "class i (default: the probe's saved names, else class_i)")
  p.add_argument("--resumable", action="store_true",
                 help="pretraining checkpoints with their AdamW state, to resume on the other side")
  p.add_argument("--config", help="--from-torch --resumable: the training config of the run to "
                                  "resume (configs/*.py)")
  args = p.parse_args(argv)
  if args.as_vjepa2 and not (args.from_torch and args.kind == "model" and not args.resumable):
    p.error("--as-vjepa2 is for --from-torch of a V-JEPA 2.1 model file (not --kind probe, "
            "--resumable, --to-torch or Hugging Face)")
  if args.resumable and args.kind == "probe":
    p.error("--resumable is for pretraining checkpoints, not probes")
  if args.from_torch and args.resumable and not args.config:
    p.error("--from-torch --resumable needs --config CONFIG.py: the training config of the run "
            "that will resume from it")
  if (args.to_torch or args.to_hf) and not args.ckpt:
    p.error(f"{'--to-torch' if args.to_torch else '--to-hf'} needs --ckpt WORKDIR_OR_DIR")
  if (args.from_torch or args.from_hf) and args.ckpt:
    p.error("--ckpt is for --to-torch/--to-hf; --from-torch/--from-hf take the file or directory "
            "itself")
  if args.to_hf and args.out:
    p.error("--to-hf DIR names the output directory; drop --out")
  if not args.to_hf and not args.out:
    p.error("--out is needed: the output directory (--from-torch, --from-hf) or .pth.tar file "
            "(--to-torch)")
  if args.to_hf or args.from_hf:
    wrong = [f for f, v in (("--resumable", args.resumable), ("--probe-index", args.probe_index),
                            ("--rope", args.rope is not None)) if v]
    if args.from_hf and args.kind == "probe":
      wrong.append("--kind probe (a VJEPA2ForVideoClassification directory is read as one)")
    if wrong:
      p.error(f"{', '.join(wrong)}: not used with --to-hf/--from-hf")
  if args.which == "both" and args.to_hf:
    p.error("--which both: a transformers VJEPA2Model holds one encoder; pass --which target "
            "(the default) or --which online")
  if (args.encoder or args.labels) and not (args.to_hf and args.kind == "probe"):
    p.error("--encoder and --labels are for --to-hf --kind probe")
  if args.dataset and not (args.from_torch and args.kind == "probe"):
    p.error("--dataset is for --from-torch --kind probe (the dataset of a released probe)")
  if args.to_torch and args.which is None:
    args.which = "both"
  # Relative paths are taken from the working directory (orbax needs them absolute).
  for name in ("from_torch", "ckpt", "out", "to_hf", "from_hf", "encoder"):
    setattr(args, name, paths.resolve(getattr(args, name)))
  return args


def main(argv=None) -> int:
  _, _, status = cli.run_tool(parse_args, convert, argv)
  return status


def probe_dataset(flag, num_classes: int, filename: str):
  """``(dataset or None, class names or None, one line saying which)`` of a reference probe
  file: ``--dataset`` (checked against the class count), else ``labels.dataset_of_probe``."""
  if flag == "none":
    return None, None, "class names: none saved (--dataset none); predict shows class indices"
  if flag:
    want = labels.DATASETS[flag][0]
    if num_classes != want:
      raise ConversionError(f"--dataset {flag}: {labels.TITLES[flag]} has {want} classes but the "
                            f"probe has {num_classes}; pass the probe's dataset, or --dataset none")
    dataset, why = flag, f"--dataset {flag}"
  else:
    dataset, why = labels.dataset_of_probe(num_classes, filename)
  if dataset is None:
    return None, None, f"class names: none saved ({why}); predict shows class indices"
  names = labels.class_names(dataset)
  if names is None:
    return dataset, None, (f"dataset {dataset} ({why}); class names: none saved. "
                           f"{labels.NOT_SHIPPED[dataset]}")
  return dataset, names, (f"class names: jepa_jax's {labels.TITLES[dataset]} list saved with the "
                          f"probe ({why}; sources: jepa_jax/labels/README.md); predict --labels "
                          "overrides them")


def convert(args) -> None:
  if args.to_hf or args.from_hf:
    _hf(args)
  elif args.from_torch and args.kind == "probe":
    params, probe_config = reference.load_torch_probe(args.from_torch, args.num_heads,
                                                      args.model, args.probe_index)
    dataset, names, note = probe_dataset(args.dataset, probe_config["num_classes"],
                                         args.from_torch)
    path = reference.save_probe(args.out, params, probe_config, class_names=names,
                                eval_info={"dataset": dataset} if dataset else None)
    print(f"wrote probe {probe_config} to {path}")
    print(note)
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
        use_rope=args.rope, pred_num_heads=args.pred_num_heads, as_vjepa2=args.as_vjepa2)
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


def _hf(args) -> None:
  from jepa_jax.convert import hf  # noqa: PLC0415 - imports nothing optional until it runs
  if args.from_hf:
    written = hf.import_hf(args.from_hf, args.out)
    m, d = written["config"].model, written["config"].data
    predictor = (f", predictor {m.pred_embed_dim}x{m.pred_depth}, {m.pred_num_heads} heads"
                 if written["predictor"] else ", no predictor")
    print(f"wrote vit_{m.name} (overrides {dict(m.overrides)}, 3D RoPE{predictor}) for "
          f"{d.num_frames}x{d.crop_size}px clips to {written['model']}")
    if "probe" in written:
      names = written["class_names"]
      print(f"wrote probe {written['probe_config']} "
            f"({'with ' + str(len(names)) + ' class names' if names else 'no class names'}) to "
            f"{written['probe']}: python -m jepa_jax.predict --checkpoint {args.out} --probe "
            f"{args.out}/{hf.PROBE_DIR} VIDEO")
    return
  if args.kind == "probe":
    fields = hf.export_hf_probe(args.ckpt, args.to_hf, encoder_ckpt=args.encoder,
                                which=args.which, step=args.step, labels=args.labels,
                                encoder_only=args.encoder_only)
    arch = f"{hf.CLASSIFIER_ARCH} ({len(fields['id2label'])} classes)"
  else:
    fields = hf.export_hf(args.ckpt, args.to_hf, which=args.which or "target", step=args.step,
                          encoder_only=args.encoder_only)
    arch = hf.MODEL_ARCH
  print(f"wrote {arch}: hidden {fields['hidden_size']}, {fields['num_hidden_layers']} layers, "
        f"{fields['num_attention_heads']} heads, {fields['frames_per_clip']}x"
        f"{fields['crop_size']}px clips to {args.to_hf}: transformers.{arch.split()[0]}"
        f".from_pretrained({args.to_hf!r}) loads it")


if __name__ == "__main__":
  sys.exit(main())
