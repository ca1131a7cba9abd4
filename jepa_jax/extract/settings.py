"""What to extract (``Settings``), read from the command line and checked."""
import dataclasses
import logging
from typing import Optional

from jepa_jax.errors import ConfigError

log = logging.getLogger(__name__)

POOLS = ("none", "mean", "probe")
OUT_DTYPES = ("float32", "float16")


@dataclasses.dataclass
class Settings:
  frames: int
  frame_step: int
  resolution: int
  window: int
  stride: int
  last: str
  pool: str
  layers: Optional[list]
  dtype: str


def settings_from_args(args) -> Settings:
  if args.pool == "probe" and not args.probe:
    raise ConfigError("--pool probe needs --probe PROBE_DIR (a saved attentive probe)")
  if args.probe and args.pool != "probe":
    raise ConfigError("--probe is only used with --pool probe")
  window = args.window or 0
  if (args.stride or args.last != "pad") and not window:
    raise ConfigError("--stride/--last apply to sliding windows: give --window too")
  if window and window < args.frames:
    log.warning("--window %d is shorter than --frames %d: frames repeat in each clip", window,
                args.frames)
  return Settings(frames=args.frames, frame_step=args.frame_step, resolution=args.resolution,
                  window=window, stride=(args.stride or window) if window else 0,
                  last=args.last, pool=args.pool, layers=list(args.layers or []) or None,
                  dtype=args.dtype)
