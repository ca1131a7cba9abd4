"""``python -m jepa_jax.extract``: the command line (the package docstring says what it does)."""
import argparse
import sys

import jepa_jax.extract
from jepa_jax import cli, paths
from jepa_jax.extract.run import run
from jepa_jax.extract.settings import OUT_DTYPES, POOLS


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m jepa_jax.extract",
                              description=jepa_jax.extract.__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("sources", nargs="+", metavar="SOURCE",
                 help="video or image files, directories, index files or tfds:name@split")
  p.add_argument("--checkpoint", required=True, help="trainer workdir or converted weights")
  p.add_argument("--checkpoint-key", choices=("target", "online"), default="target")
  p.add_argument("--out", required=True, help="output directory (resumable)")
  p.add_argument("--pool", choices=POOLS, default="none")
  p.add_argument("--probe", help="--pool probe: a saved attentive probe's directory")
  p.add_argument("--layers", type=cli.int_list,
                 help="0-based encoder blocks, comma-separated, e.g. 17,19,21,23 (default: output)")
  p.add_argument("--frames", type=int, default=16, help="frames per clip")
  p.add_argument("--frame-step", type=int, default=4, help="source frames between clip frames")
  p.add_argument("--resolution", type=int, default=224, help="crop size in pixels")
  p.add_argument("--window", type=int, help="sliding windows of this many source frames")
  p.add_argument("--stride", type=int, help="source frames between window starts (default: window)")
  p.add_argument("--last", choices=("pad", "drop"), default="pad",
                 help="a last, partial window: padded with the last frame, or dropped")
  p.add_argument("--batch-size", type=int, default=8,
                 help="clips per encoder pass (rounded up to a multiple of the devices)")
  p.add_argument("--workers", type=int, default=4, help="decoding threads")
  p.add_argument("--dtype", choices=OUT_DTYPES, default="float32", help="stored dtype")
  p.add_argument("--encoder-dtype", choices=("float32", "bfloat16", "float16"), default="float32")
  p.add_argument("--tfds-data-dir", help="where prepared TFDS datasets are")
  args = p.parse_args(argv)
  args.checkpoint, args.out = paths.resolve(args.checkpoint), paths.resolve(args.out)
  args.probe = paths.resolve(args.probe) if args.probe else None
  return args


def main(argv=None) -> int:
  args, counts, status = cli.run_tool(parse_args, run, argv)
  if status:
    return status
  print(f"{counts['done']} videos extracted ({counts['windows']} windows), "
        f"{counts['skipped_done']} already done, {counts['failed']} unreadable: {args.out}")
  return 0


if __name__ == "__main__":
  cli.install_unraisablehook()  # a skipped damaged checkpoint: no echoes of its failed reads
  sys.exit(main())
