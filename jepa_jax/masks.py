"""V-JEPA masks drawn inside jit: 3D multi-block, causal multi-block and random tube.

``sample_masks(key, batch_size, grid, cfgs)`` returns one :class:`Masks` per :class:`MaskConfig`:
int32 context ``[B, K_ctx]`` and target ``[B, K_tgt]`` indices with validity masks, tokens numbered
row-major on the (T', H', W') grid; a pure function of the key with static shapes, so it runs in
the jitted step without host work or recompiles. ``static_sizes`` gives K, ``check_context``
refuses configs that leave no context, ``pretrain_configs`` gives the paper's two.

Sampling follows the reference (``src/masks/multiblock3d.py``, ``random_tube.py``): one block size
per batch and config, ``num_blocks`` blocks per clip at uniform positions, their union the target
(with ``max_temporal_keep < 1`` also every time step from the cut on); random_tube keeps
``int(H'W' (1 - ratio))`` spatial positions as context over all time. Sizes are clipped so no
target is empty. Where the reference redraws an empty context in a host loop, such clips take the
first non-empty of ``NUM_RETRIES`` (8) batched redraws (under ``lax.cond``: free when none is
empty), and if all fail one random token before the cut becomes context, a bounded fallback.

Static shapes (the decision; README, "Deliberate differences"): the reference trims every clip to
the batch minimum, keeping the FIRST sorted indices, so shapes change per step and context leans
to early frames. Here K is fixed per config: the mean per-clip count from a deterministic host
Monte Carlo of the same sampler (seed 0, 1024 sizes x 8 clips, cached) rounded up to a multiple of
8, unless ``num_context`` / ``num_target`` say otherwise. With the mean, about half the clips fit
whole and the rest lose a few random tokens, so the model sees close to the reference's per-clip
masks while padding (wasted compute) stays small. A longer clip keeps a uniformly random subset
(``subset="first"``: the reference's rule, for comparisons); a shorter one is padded with repeats
of its own indices of the same set, marked invalid, so even a consumer that ignores validity never
sees a target token in its context.

Row contract: valid entries first, ascending, then padding; at least one valid context and one
valid target token; the two disjoint; without subsetting or padding their union is the grid.
Measured sizes: BENCHMARKS.md, "Static mask sizes"; pictures: ``python -m jepa_jax.masks_plot``.
"""
import dataclasses
import functools
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("multiblock", "random_tube")
SUBSETS = ("random", "first")

# Fresh placements tried at once for clips whose first draw left no context (see module docstring).
NUM_RETRIES = 8
# The deterministic Monte Carlo estimate behind the default K (see module docstring).
_MC_SEED = 0
_MC_BLOCK_SIZES = 1024
_MC_CLIPS_PER_SIZE = 8

Grid = tuple[int, int, int]


class MaskFieldError(ValueError):
  """An impossible value of one ``MaskConfig`` field: ``field=value requirement``. The config
  reader names the entry (``config.masks[0].num_blocks=0 must be an integer >= 1``)."""

  def __init__(self, field: str, value: Any, requirement: str):
    self.field, self.value, self.requirement = field, value, requirement
    super().__init__(f"{field}={value!r} {requirement}" if field else f"{value!r} {requirement}")


def _is_number(x) -> bool:
  return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _is_int(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _range(name: str, value) -> tuple[float, float]:
  """A ``(min, max)`` field as two floats; a single number (or a one-element list, as
  ``--config.masks[0].spatial_scale=0.2`` gives) is a point range."""
  pair = ((value,) if _is_number(value) else
          tuple(value) if isinstance(value, (list, tuple, np.ndarray)) else ())
  pair = pair * 2 if len(pair) == 1 else pair
  if len(pair) != 2 or not all(_is_number(v) and math.isfinite(v) for v in pair) \
      or not pair[0] <= pair[1]:
    raise MaskFieldError(name, value, "must be a (min, max) pair of numbers with min <= max")
  return float(pair[0]), float(pair[1])


@dataclasses.dataclass(frozen=True)
class MaskConfig:
  """One mask type. Field names are the reference's config keys (``cfgs_mask`` entries)."""
  kind: str = "multiblock"            # "multiblock" | "random_tube"
  num_blocks: int = 8
  spatial_scale: tuple[float, float] = (0.15, 0.15)
  temporal_scale: tuple[float, float] = (1.0, 1.0)
  aspect_ratio: tuple[float, float] = (0.75, 1.5)
  max_temporal_keep: float = 1.0      # < 1: causal, context only from the first frames
  ratio: float = 0.9                  # random_tube: fraction of spatial positions masked
  num_context: int | None = None      # static K_ctx override
  num_target: int | None = None       # static K_tgt override
  subset: str = "random"              # clips with > K tokens: "random" subset | "first" K indices

  def __post_init__(self):
    # Lists (from YAML / ConfigDict) become tuples so that the config stays hashable, which jit
    # needs for a static argument; a single number means a point range.
    for name in ("spatial_scale", "temporal_scale", "aspect_ratio"):
      object.__setattr__(self, name, _range(name, getattr(self, name)))
    if self.kind not in KINDS:
      raise MaskFieldError("kind", self.kind, f"must be one of {', '.join(KINDS)}")
    if self.subset not in SUBSETS:
      raise MaskFieldError("subset", self.subset, f"must be one of {', '.join(SUBSETS)}")
    if not _is_int(self.num_blocks) or self.num_blocks < 1:
      raise MaskFieldError("num_blocks", self.num_blocks, "must be an integer >= 1")
    for name in ("spatial_scale", "temporal_scale"):
      lo, hi = getattr(self, name)
      if lo < 0 or hi > 1:
        raise MaskFieldError(name, getattr(self, name), "must lie in [0, 1]")
    if self.aspect_ratio[0] <= 0:
      raise MaskFieldError("aspect_ratio", self.aspect_ratio, "must be positive")
    if not _is_number(self.max_temporal_keep) or not 0 < self.max_temporal_keep <= 1:
      raise MaskFieldError("max_temporal_keep", self.max_temporal_keep, "must be in (0, 1]")
    if not _is_number(self.ratio) or not 0 <= self.ratio <= 1:
      raise MaskFieldError("ratio", self.ratio, "must be in [0, 1]")
    for name in ("num_context", "num_target"):
      k = getattr(self, name)
      if k is not None and (not _is_int(k) or k < 1):
        raise MaskFieldError(name, k, "must be a positive integer (tokens), or None for the "
                             "default size")

  @classmethod
  def from_dict(cls, d: Any) -> "MaskConfig":
    """From a dict or ``ml_collections.ConfigDict`` with this class's field names.

    The reference's ``max_keep: null`` and ``full_complement: false`` are accepted (they are its
    defaults and change nothing); any other unknown key is an error, so typos do not pass silently.
    """
    if not hasattr(d, "keys"):
      raise MaskFieldError("", d, "must be a dict of mask fields (see jepa_jax.masks.MaskConfig)")
    d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
    max_keep = d.pop("max_keep", None)
    if max_keep is not None:
      raise MaskFieldError("max_keep", max_keep, "is not supported; use num_context to fix the "
                           "context size (or max_keep=None)")
    full_complement = d.pop("full_complement", False)
    if full_complement:
      raise MaskFieldError("full_complement", full_complement, "is not supported; set it to False")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
      raise ValueError(f"unknown mask config keys {unknown}; known: {sorted(fields)}")
    return cls(**d)


class Masks(NamedTuple):
  """One mask type for a batch; see the module docstring for the row contract."""
  context: jax.Array        # int32 [B, K_ctx]
  context_valid: jax.Array  # bool  [B, K_ctx]
  target: jax.Array         # int32 [B, K_tgt]
  target_valid: jax.Array   # bool  [B, K_tgt]


def pretrain_configs() -> tuple[MaskConfig, MaskConfig]:
  """The two V-JEPA pretraining masks: short-range (8 blocks x 0.15) and long-range (2 x 0.7)."""
  return (MaskConfig(num_blocks=8, spatial_scale=(0.15, 0.15)),
          MaskConfig(num_blocks=2, spatial_scale=(0.7, 0.7)))


# ------------------------------------------------------------------------------------------------
# Geometry shared by the JAX sampler and the numpy Monte Carlo (``xp`` is jnp or np).


def _scaled_floor(xp, n: int, lo: float, hi: float, u):
  """``floor(n * s)``, ``s ~ U(lo, hi)`` from the uniform ``u``.

  A point range is computed in Python float64 like the reference, so that e.g. 0.29 * 100 floors
  to 28 as there, not to 29 as float32 would round it.
  """
  if lo == hi:
    return xp.asarray(math.floor(n * lo))
  return xp.floor(n * (lo + u * (hi - lo)))


def _block_size(xp, grid: Grid, cfg: MaskConfig, u):
  """(t, h, w) int scalars of one batch's blocks from three uniforms ``u``."""
  T, H, W = grid
  t = xp.clip(_scaled_floor(xp, T, *cfg.temporal_scale, u[0]), 1, T)
  keep = _scaled_floor(xp, H * W, *cfg.spatial_scale, u[1])
  lo, hi = cfg.aspect_ratio
  a = lo + u[2] * (hi - lo)
  # round() is round-half-even in Python, numpy and jnp alike.
  h = xp.clip(xp.round(xp.sqrt(keep * a)), 1, H)
  w = xp.clip(xp.round(xp.sqrt(keep / a)), 1, W)
  return tuple(v.astype(xp.int32) for v in (t, h, w))


def _causal_cut(T: int, cfg: MaskConfig) -> int:
  """Context may only use time steps ``t < cut`` (the reference's ``max_context_duration``)."""
  return max(1, int(T * cfg.max_temporal_keep))


def _block_union(xp, size, starts, grid: Grid, cut: int):
  """Target grid: union of blocks of ``size`` at ``starts`` (3 int arrays ``[..., nb]``).

  Built from 1D interval tests broadcast to 3D, so it is a single fused elementwise op + reduction.
  Returns bool ``[..., T, H, W]``; with ``cut < T`` all of ``t >= cut`` is target as well.
  """
  T, H, W = grid
  inside = []
  for n, s, length in zip((T, H, W), starts, size):
    pos = xp.arange(n)
    end = s + length  # length: a scalar, or per-batch sizes broadcastable to s (the Monte Carlo)
    inside.append((pos >= s[..., None]) & (pos < end[..., None]))  # [..., nb, n]
  cover = inside[0][..., :, None, None] & inside[1][..., None, :, None] & inside[2][..., None, None, :]
  target = cover.any(axis=-4)
  if cut < T:
    target = target | (xp.arange(T) >= cut)[:, None, None]
  return target


# ------------------------------------------------------------------------------------------------
# JAX sampling.


def _random_fields(key, shapes):
  """Uniform floats in [0, 1) of the given shapes from ONE ``random.bits`` call.

  Every separate random call adds a threefry graph that XLA:CPU takes ~0.3-1 s to compile, so the
  sampler draws all it needs at once and slices it (24-bit floats, like ``jax.random.uniform``'s
  23-bit mantissa trick).
  """
  sizes = [math.prod(s) for s in shapes]
  bits = jax.random.bits(key, (sum(sizes),), jnp.uint32)
  out, offset = [], 0
  for shape, size in zip(shapes, sizes):
    out.append((bits[offset:offset + size] >> 8).astype(jnp.float32).reshape(shape) * 2.0**-24)
    offset += size
  return out


def _multiblock_grids(key, batch_size: int, grid: Grid, cfg: MaskConfig) -> jax.Array:
  T, H, W = grid
  nb = cfg.num_blocks
  u_size, u_first, u_retry, u_fallback = _random_fields(
      key, [(3,), (3, batch_size, nb), (3, NUM_RETRIES, batch_size, nb), (3, batch_size)])
  size = _block_size(jnp, grid, cfg, u_size)
  cut = _causal_cut(T, cfg)

  def uniform_int(u, n):
    # floor(u * n) rather than randint with a traced bound: a far smaller graph (faster compiles),
    # and with 2^24 levels of u the bias is below 1e-6 for any grid.
    return jnp.minimum(jnp.floor(u * n).astype(jnp.int32), n - 1)

  def draw(u):
    starts = [uniform_int(ui, n - s + 1) for ui, n, s in zip(u, grid, size)]
    return _block_union(jnp, size, starts, grid, cut)

  def no_context(target):
    return target.all(axis=(-3, -2, -1))

  def redraw(target):
    empty = no_context(target)                                     # [B]
    tries = draw(u_retry)                                          # [R, B, T, H, W]
    ok = ~no_context(tries)                                        # [R, B]
    first_ok = jnp.argmax(ok, axis=0)                              # 0 if none, then patched
    chosen = tries[first_ok, jnp.arange(batch_size)]               # [B, T, H, W]
    # Guaranteed fallback: one random token before the causal cut becomes context.
    ft, fh, fw = (uniform_int(ui, n) for ui, n in zip(u_fallback, (cut, H, W)))
    hit = ((jnp.arange(T)[None, :, None, None] == ft[:, None, None, None])
           & (jnp.arange(H)[None, None, :, None] == fh[:, None, None, None])
           & (jnp.arange(W)[None, None, None, :] == fw[:, None, None, None]))
    chosen = chosen & ~(hit & ~ok.any(axis=0)[:, None, None, None])
    return jnp.where(empty[:, None, None, None], chosen, target)

  target = draw(u_first)
  return jax.lax.cond(no_context(target).any(), redraw, lambda x: x, target)


def _tube_grids(key, batch_size: int, grid: Grid, cfg: MaskConfig) -> jax.Array:
  T, H, W = grid
  keep = min(max(int(H * W * (1.0 - cfg.ratio)), 1), H * W - 1)
  order = jnp.argsort(jax.random.uniform(key, (batch_size, H * W)), axis=1)
  rows = jnp.arange(batch_size)[:, None]
  context = jnp.zeros((batch_size, H * W), bool).at[rows, order[:, :keep]].set(True)
  return jnp.broadcast_to(~context.reshape(batch_size, 1, H, W), (batch_size, T, H, W))


def target_grids(key, batch_size: int, grid: Grid, cfg: MaskConfig) -> jax.Array:
  """Boolean target grids ``[B, T', H', W']`` before the static-shape step (context = complement).

  Every clip has at least one context token (empty contexts are redrawn, see module docstring).
  """
  grid = tuple(int(g) for g in grid)
  if cfg.kind == "random_tube":
    return _tube_grids(key, batch_size, grid, cfg)
  return _multiblock_grids(key, batch_size, grid, cfg)


def _fixed_rows(chosen, count, k: int, num_tokens: int):
  """Sort the first ``min(count, k)`` chosen indices per row and pad with repeats of them."""
  slot = jnp.arange(k)
  n_valid = jnp.minimum(count, k)[:, None]
  valid = slot < n_valid
  # Valid entries to the front, ascending; the rest after (they are overwritten below).
  ordered = jnp.sort(jnp.where(valid, chosen, chosen + num_tokens), axis=1)
  ordered = jnp.where(ordered < num_tokens, ordered, ordered - num_tokens)
  # Padding slot j repeats valid entry j mod n_valid: indices of the same set of the same clip.
  src = jnp.where(valid, slot, slot % jnp.maximum(n_valid, 1))
  return jnp.take_along_axis(ordered, src, axis=1).astype(jnp.int32), valid


def masks_from_grids(key, target: jax.Array, k_context: int, k_target: int,
                     subset: str = "random") -> Masks:
  """The static-shape step: boolean target grids ``[B, ...]`` -> :class:`Masks` of fixed K."""
  batch_size = target.shape[0]
  target = target.reshape(batch_size, -1)
  num_tokens = target.shape[1]
  context = ~target
  n_context = context.sum(axis=1)
  n_target = num_tokens - n_context
  idx_bits = max(1, (num_tokens - 1).bit_length())
  rand_bits = 31 - idx_bits
  if rand_bits < 8:
    raise ValueError(f"{num_tokens} tokens are too many for the packed sort keys")
  idx = jnp.arange(num_tokens, dtype=jnp.uint32)
  low = jnp.uint32((1 << idx_bits) - 1)
  if subset == "random":
    # One sort serves both sets: context tokens first and target tokens last, each in a random
    # order; the first K of each are then a uniformly random K-subset (or the whole set). The key
    # packs (is-target bit, random bits, token) into one uint32, since a plain sort is much faster
    # than an argsort on CPU. Equal random bits (p = 2^-rand_bits per pair) are broken by the
    # token index shifted by a random per-row offset, so even ties favour no frame.
    bits = jax.random.bits(key, (batch_size, num_tokens + 1), jnp.uint32)  # one threefry graph
    rand = bits[:, :num_tokens] >> (32 - rand_bits)
    offset = bits[:, num_tokens:] % num_tokens  # bias <= N / 2^32: irrelevant for a tie-break
    rotated = (idx + offset) % num_tokens
    packed = (target.astype(jnp.uint32) << 31) | (rand << idx_bits) | rotated
    order = ((jnp.sort(packed, axis=1) & low) + num_tokens - offset) % num_tokens
    ctx_chosen = order[:, :k_context]
    tgt_chosen = order[:, ::-1][:, :k_target]
  elif subset == "first":
    ctx_chosen = jnp.sort((target.astype(jnp.uint32) << 31) | idx, axis=1)[:, :k_context] & low
    tgt_chosen = jnp.sort((context.astype(jnp.uint32) << 31) | idx, axis=1)[:, :k_target] & low
  else:
    raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
  ctx_chosen, tgt_chosen = ctx_chosen.astype(jnp.int32), tgt_chosen.astype(jnp.int32)
  ctx, ctx_valid = _fixed_rows(ctx_chosen, n_context, k_context, num_tokens)
  tgt, tgt_valid = _fixed_rows(tgt_chosen, n_target, k_target, num_tokens)
  return Masks(ctx, ctx_valid, tgt, tgt_valid)


def sample_with_grids(key, batch_size: int, grid: Grid, cfgs: Sequence[MaskConfig]):
  """Like :func:`sample_masks`, also returning each config's pre-static target grids."""
  grid = tuple(int(g) for g in grid)
  out = []
  for k, cfg in zip(jax.random.split(key, len(cfgs)), cfgs):
    k_grid, k_static = jax.random.split(k)
    target = target_grids(k_grid, batch_size, grid, cfg)
    k_ctx, k_tgt = static_sizes(grid, cfg)
    out.append((masks_from_grids(k_static, target, k_ctx, k_tgt, cfg.subset), target))
  return tuple(out)


def sample_masks(key, batch_size: int, grid: Grid, cfgs: Sequence[MaskConfig]) -> tuple[Masks, ...]:
  """One :class:`Masks` per config for a batch of clips; jit with ``batch_size, grid, cfgs`` static.

  The key is split once per config, so adding a config does not change the earlier ones' masks.
  """
  return tuple(m for m, _ in sample_with_grids(key, batch_size, grid, cfgs))


# ------------------------------------------------------------------------------------------------
# Host-side Monte Carlo for the default static sizes.


def count_distribution(grid: Grid, cfg: MaskConfig, num_block_sizes: int = _MC_BLOCK_SIZES,
                       clips_per_size: int = _MC_CLIPS_PER_SIZE, seed: int = _MC_SEED,
                       fallback: bool = True) -> np.ndarray:
  """Per-clip context counts of ``cfg`` from a deterministic numpy run of the same sampler.

  ``num_block_sizes`` block sizes (one per simulated batch) x ``clips_per_size`` clips; empty
  contexts are redrawn like in :func:`target_grids`. Returns int ``[num_block_sizes * clips]``;
  a clip still empty after the redraws counts the fallback's one token, or 0 with
  ``fallback=False``.
  """
  grid = tuple(int(g) for g in grid)
  T, H, W = grid
  if cfg.kind == "random_tube":
    keep = min(max(int(H * W * (1.0 - cfg.ratio)), 1), H * W - 1)
    return np.full(num_block_sizes * clips_per_size, keep * T)
  rng = np.random.default_rng(seed)
  cut = _causal_cut(T, cfg)
  # Block sizes of all simulated batches at once, shaped [S, 1, 1] to broadcast over clips, blocks.
  sizes = [np.broadcast_to(v, (num_block_sizes,))[:, None, None]
           for v in _block_size(np, grid, cfg, rng.random((3, num_block_sizes)))]

  def context_counts(sizes):
    starts = [rng.integers(0, n - s + 1, size=s.shape[:1] + (clips_per_size, cfg.num_blocks))
              for n, s in zip(grid, sizes)]
    return (~_block_union(np, sizes, starts, grid, cut)).sum(axis=(-3, -2, -1))  # [S, C]

  # Chunks keep the [chunk, C, nb, T, H, W] intermediate small.
  chunk = max(1, 2**22 // (clips_per_size * cfg.num_blocks * T * H * W))
  counts = np.concatenate([context_counts([s[i:i + chunk] for s in sizes])
                           for i in range(0, num_block_sizes, chunk)])
  for _ in range(NUM_RETRIES):  # redraw empty contexts, each with its own batch's block size
    rows, _cols = np.nonzero(counts == 0)
    if not len(rows):
      break
    redrawn = context_counts([s[rows] for s in sizes])  # [len(rows), C]: keep one per row
    counts[counts == 0] = redrawn[:, 0]
  if fallback:
    counts = np.maximum(counts, 1)  # the fallback's single context token
  return counts.ravel()


@functools.lru_cache(maxsize=None)
def _monte_carlo_counts(grid: Grid, cfg: MaskConfig) -> np.ndarray:
  return count_distribution(grid, cfg, fallback=False)


def no_context_fraction(grid: Grid, cfg: MaskConfig) -> float:
  """The fraction of clips whose blocks cover the whole grid in the first draw and in all
  ``NUM_RETRIES`` redraws, i.e. that get the fallback's single context token (Monte Carlo of
  :func:`count_distribution`, deterministic). The reference would redraw them for as long as it
  takes, or for ever when every placement covers the grid."""
  if cfg.kind != "multiblock":
    return 0.0
  geometry = dataclasses.replace(cfg, num_context=None, num_target=None, subset="random")
  return float(np.mean(_monte_carlo_counts(tuple(int(g) for g in grid), geometry) == 0))


# A multi-block mask may leave no context in at most this fraction of clips (after the redraws).
# The paper's masks: 0% at 224 px, 0.2% on the demo's 4x4x4 grid.
MAX_NO_CONTEXT_FRACTION = 0.05


def check_context(grid: Grid, cfgs: Sequence[MaskConfig]) -> None:
  """Refuse a mask that leaves no context too often (ValueError naming ``masks[i]``).

  The rule: a multi-block mask's blocks may cover the whole token grid, leaving no context, in
  at most ``MAX_NO_CONTEXT_FRACTION`` of clips after the sampler's redraws (first draw plus
  ``NUM_RETRIES``), measured by the deterministic Monte Carlo that also sizes the static masks.
  Those clips get one context token (the reference redraws until some context is left, for ever
  when one block covers the grid). It is a fraction, not "always": the block size is drawn per
  batch, and several blocks smaller than the grid can almost always cover it together (8 blocks
  of spatial_scale 1 on a 4x4 grid: 98% of clips), while rare full covers are harmless (the
  paper's long-range mask on the demo's 4x4x4 grid: 0.2%). A random-tube mask needs one unmasked
  position per frame.
  """
  for i, mc in enumerate(cfgs):
    if mc.kind == "random_tube":
      if int(grid[1] * grid[2] * (1 - mc.ratio)) < 1:
        raise ValueError(f"masks[{i}] leaves no context token (ratio={mc.ratio} masks every "
                         f"position of the {grid[1]}x{grid[2]} grid); lower ratio")
      continue
    empty = no_context_fraction(grid, mc)
    if empty > MAX_NO_CONTEXT_FRACTION:
      raise ValueError(
          f"masks[{i}] leaves no context in {100 * empty:.0f}% of clips: its "
          f"{mc.num_blocks} blocks (spatial_scale {mc.spatial_scale}, temporal_scale "
          f"{mc.temporal_scale}) cover the whole {tuple(grid)} token grid even after "
          f"{NUM_RETRIES} redraws (at most {100 * MAX_NO_CONTEXT_FRACTION:.0f}% "
          "allowed); lower spatial_scale/temporal_scale or num_blocks")


@functools.lru_cache(maxsize=None)
def _default_sizes(grid: Grid, cfg: MaskConfig) -> tuple[int, int]:
  num_tokens = math.prod(grid)
  ctx = np.maximum(_monte_carlo_counts(grid, cfg), 1)
  if cfg.kind == "random_tube":
    return int(ctx[0]), num_tokens - int(ctx[0])

  def round_up(x):
    return int(min(num_tokens, max(8, 8 * math.ceil(x / 8))))

  return round_up(ctx.mean()), round_up(num_tokens - ctx.mean())


def static_sizes(grid: Grid, cfg: MaskConfig) -> tuple[int, int]:
  """(K_ctx, K_tgt) of ``cfg`` on ``grid``: the overrides, else the defaults of the module docstring."""
  grid = tuple(int(g) for g in grid)
  num_tokens = math.prod(grid)
  k_ctx, k_tgt = cfg.num_context, cfg.num_target
  if k_ctx is None or k_tgt is None:  # the Monte Carlo only when a default is needed
    geometry = dataclasses.replace(cfg, num_context=None, num_target=None, subset="random")
    default_ctx, default_tgt = _default_sizes(grid, geometry)
    k_ctx = default_ctx if k_ctx is None else k_ctx
    k_tgt = default_tgt if k_tgt is None else k_tgt
  for name, k in (("num_context", k_ctx), ("num_target", k_tgt)):
    if not 1 <= k <= num_tokens:
      raise MaskFieldError(name, k, f"must be in [1, {num_tokens}]: the {'x'.join(map(str, grid))} "
                           "token grid has that many tokens")
  return int(k_ctx), int(k_tgt)
