"""Pictures of sampled masks, one row per clip and mask config, one column per time step:

    python -m jepa_jax.masks_plot --config=configs/demo.py --out masks.png [--num 4] [--seed 0]
    python -m jepa_jax.masks_plot --grid=8,14,14 --out masks.png   # the two pretraining masks

Each token is coloured by what the static-shape step made of it (context seen, context dropped
by K, target predicted, target dropped by K; ``jepa_jax.masks``).
"""
from typing import Sequence

import jax
import numpy as np

from jepa_jax import masks as masks_lib
from jepa_jax.pretrain import config as config_lib

_COLOURS = ("#2b83ba", "#abd9e9", "#d7191c", "#fdae61")  # ctx kept, ctx dropped, tgt kept, tgt dropped
_LABELS = ("context (seen)", "context dropped by K", "target (predicted)", "target dropped by K")


def token_classes(masks: masks_lib.Masks, target: jax.Array) -> np.ndarray:
  """Per token: 0 context kept, 1 context dropped by the static step, 2 target kept, 3 target dropped."""
  target = np.asarray(target)
  batch_size, shape = target.shape[0], target.shape[1:]
  flat = target.reshape(batch_size, -1)
  kept = np.zeros_like(flat)
  rows = np.arange(batch_size)[:, None]
  for idx, valid in ((masks.context, masks.context_valid), (masks.target, masks.target_valid)):
    idx, valid = np.asarray(idx), np.asarray(valid)
    kept[np.broadcast_to(rows, idx.shape)[valid], idx[valid]] = True
  classes = np.where(flat, 2, 0) + np.where(kept, 0, 1)
  return classes.reshape((batch_size,) + shape)


def plot_masks(key, grid: masks_lib.Grid, cfgs: Sequence[masks_lib.MaskConfig], num: int,
               out: str) -> None:
  """Draws ``num`` clips' masks, one row per example and config, one column per time step."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.colors import ListedColormap
  from matplotlib.patches import Patch

  T = grid[0]
  drawn = jax.jit(masks_lib.sample_with_grids, static_argnums=(1, 2, 3))(key, num, tuple(grid), tuple(cfgs))
  rows = [(i, j) for i in range(num) for j in range(len(cfgs))]
  fig, axes = plt.subplots(len(rows), T, figsize=(1.3 * T + 2.5, 1.4 * len(rows) + 0.8), squeeze=False)
  cmap = ListedColormap(_COLOURS)
  for r, (i, j) in enumerate(rows):
    masks, target = drawn[j]
    classes = token_classes(masks, target)[i]
    for t in range(T):
      ax = axes[r, t]
      ax.imshow(classes[t], cmap=cmap, vmin=-0.5, vmax=3.5, interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(f"t={t}", fontsize=8)
    cfg = cfgs[j]
    name = (f"tube r={cfg.ratio}" if cfg.kind == "random_tube"
            else f"{cfg.num_blocks}x{cfg.spatial_scale[1]:g}" + (f" causal {cfg.max_temporal_keep:g}"
                                                                 if cfg.max_temporal_keep < 1 else ""))
    n_ctx = int(masks.context_valid[i].sum())
    n_tgt = int(masks.target_valid[i].sum())
    axes[r, 0].set_ylabel(f"clip {i}, mask {j}\n{name}\nctx {n_ctx}/{masks.context.shape[1]}\n"
                          f"tgt {n_tgt}/{masks.target.shape[1]}", fontsize=7)
  fig.legend(handles=[Patch(color=c, label=l) for c, l in zip(_COLOURS, _LABELS)],
             loc="lower center", ncol=4, fontsize=8)
  fig.tight_layout(rect=(0, 0.05, 1, 1))
  fig.savefig(out, dpi=100)
  plt.close(fig)


def _main(argv):
  from absl import flags
  from jepa_jax import cli
  del argv
  cli.run_or_fail(lambda: _plot_from_flags(flags.FLAGS))


def _plot_from_flags(FLAGS):
  if FLAGS.config is not None:
    grid, cfgs = config_lib.token_grid(FLAGS.config), config_lib.mask_configs(FLAGS.config)
  else:
    grid, cfgs = tuple(int(g) for g in FLAGS.grid.split(",")), masks_lib.pretrain_configs()
  plot_masks(jax.random.key(FLAGS.seed), grid, cfgs, FLAGS.num, FLAGS.out)
  print(f"wrote {FLAGS.out}: grid {grid}, {len(cfgs)} mask configs, sizes "
        f"{[masks_lib.static_sizes(grid, c) for c in cfgs]}")


def _cli():
  # Flags are defined here, not at import, so importing this module never touches absl's global
  # flag registry (the trainer defines its own --config).
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "config file with data/model/masks fields")
  flags.DEFINE_string("out", "masks.png", "output image")
  flags.DEFINE_integer("num", 4, "clips to draw")
  flags.DEFINE_integer("seed", 0, "PRNG seed")
  flags.DEFINE_string("grid", "8,14,14", "T',H',W' token grid when no --config is given")
  app.run(_main)


if __name__ == "__main__":
  _cli()
