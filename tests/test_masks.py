"""Tests of jepa_jax.masks: the row contract, static shapes under jit, the mask kinds, and the
statistics against the reference's measured counts (tests/fixtures/mask_stats_224x16.json)."""
import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from jepa_jax import masks as M
from jepa_jax.pretrain import config as config_lib

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
GRID = (8, 14, 14)
N = math.prod(GRID)
SHORT, LONG = M.pretrain_configs()
CAUSAL = M.MaskConfig(num_blocks=8, spatial_scale=(0.15, 0.15), max_temporal_keep=0.375)  # [6] of 16
TUBE = M.MaskConfig(kind="random_tube", ratio=0.9)

sample = jax.jit(M.sample_with_grids, static_argnums=(1, 2, 3))


def _np(tree):
  return jax.tree.map(np.asarray, tree)


def check_contract(masks: M.Masks, target_grid, cfg, grid=GRID):
  """Every property of the module docstring's row contract, row by row."""
  masks, target_grid = _np(masks), np.asarray(target_grid)
  batch_size, num_tokens = target_grid.shape[0], math.prod(grid)
  flat = target_grid.reshape(batch_size, num_tokens)
  k_ctx, k_tgt = M.static_sizes(grid, cfg)
  assert masks.context.shape == masks.context_valid.shape == (batch_size, k_ctx)
  assert masks.target.shape == masks.target_valid.shape == (batch_size, k_tgt)
  assert masks.context.dtype == masks.target.dtype == np.int32
  assert masks.context_valid.dtype == masks.target_valid.dtype == bool
  for b in range(batch_size):
    sets = {}
    for name, idx, valid, members in (("context", masks.context[b], masks.context_valid[b], ~flat[b]),
                                      ("target", masks.target[b], masks.target_valid[b], flat[b])):
      n = int(valid.sum())
      assert n >= 1, f"row {b}: no valid {name} token"
      assert n == min(int(members.sum()), len(idx)), f"row {b}: {name} kept {n} of {members.sum()}"
      assert valid[:n].all() and not valid[n:].any(), f"row {b}: valid {name} entries not first"
      assert (np.diff(idx[:n]) > 0).all(), f"row {b}: valid {name} not strictly ascending"
      assert ((0 <= idx) & (idx < num_tokens)).all()
      assert members[idx[:n]].all(), f"row {b}: {name} index outside its set"
      assert np.isin(idx[n:], idx[:n]).all(), f"row {b}: {name} padding is not a valid {name} index"
      sets[name] = set(idx.tolist())  # padding included: repeats of valid entries
    assert not sets["context"] & sets["target"], f"row {b}: context and target overlap"


# Configs drawn together (one compile per group: XLA:CPU compiles dominate this file's time).
MAIN = (SHORT, LONG, CAUSAL, TUBE)
EXTRA = (
    M.MaskConfig(num_blocks=2, spatial_scale=(0.7, 0.7), num_context=40, num_target=300),  # subsets
    M.MaskConfig(num_blocks=8, spatial_scale=(0.15, 0.15), num_context=1000, num_target=N),  # pads
    M.MaskConfig(num_blocks=3, spatial_scale=(0.1, 0.5), temporal_scale=(0.25, 0.75)),  # ranges
    M.MaskConfig(num_blocks=2, spatial_scale=(0.7, 0.7), subset="first"),
)
SEEDS = range(4)


@pytest.fixture(scope="module")
def drawn():
  """{(group, seed): ((Masks, target grids) per config)} for batches of 32."""
  return {(name, seed): _np(sample(jax.random.key(seed), 32, GRID, group))
          for name, group in (("main", MAIN), ("extra", EXTRA)) for seed in SEEDS}


@pytest.mark.parametrize("group, i", [("main", i) for i in range(4)] + [("extra", i) for i in range(4)],
                         ids=["short", "long", "causal", "tube", "subset", "pad", "ranges", "first"])
def test_row_contract(drawn, group, i):
  cfg = (MAIN if group == "main" else EXTRA)[i]
  for seed in SEEDS:
    masks, grids = drawn[group, seed][i]
    check_contract(masks, grids, cfg)


def test_frequent_empty_context_is_redrawn():
  # 4 blocks of half a 4x4 frame over all time leave no context in a good share of first draws.
  grid = (2, 4, 4)
  cfg = M.MaskConfig(num_blocks=4, spatial_scale=(0.5, 0.5), aspect_ratio=(1.0, 1.0))
  for seed in range(5):
    ((masks, grids),) = sample(jax.random.key(seed), 64, grid, (cfg,))
    check_contract(masks, grids, cfg, grid)
    assert (~np.asarray(grids)).sum(axis=(1, 2, 3)).min() >= 2  # redrawn, not the 1-token fallback


def test_impossible_context_falls_back_to_one_token():
  # A block as large as the grid can never leave context: the reference would loop for ever.
  cfg = M.MaskConfig(num_blocks=1, spatial_scale=(1.0, 1.0), aspect_ratio=(1.0, 1.0),
                     max_temporal_keep=0.5, num_context=8, num_target=N)
  ((masks, grids),) = sample(jax.random.key(0), 16, GRID, (cfg,))
  check_contract(masks, grids, cfg)
  context = ~np.asarray(grids)
  assert (context.sum(axis=(1, 2, 3)) == 1).all()
  assert not context[:, GRID[0] // 2:].any()


def test_union_covers_grid_without_subsetting():
  cfgs = tuple(dataclasses.replace(c, num_context=N, num_target=N) for c in (SHORT, LONG, CAUSAL, TUBE))
  for seed in range(3):
    for cfg, (masks, grids) in zip(cfgs, sample(jax.random.key(seed), 16, GRID, cfgs)):
      masks = _np(masks)
      check_contract(masks, grids, cfg)
      for b in range(16):
        ctx = masks.context[b][masks.context_valid[b]]
        tgt = masks.target[b][masks.target_valid[b]]
        assert len(ctx) + len(tgt) == N
        assert sorted(np.concatenate([ctx, tgt]).tolist()) == list(range(N))


def test_static_shapes_and_single_trace(drawn):
  traces = []

  def step(key):
    traces.append(1)  # runs only while tracing
    return M.sample_masks(key, 32, GRID, (SHORT, LONG))

  step = jax.jit(step)
  shapes = set()
  for i in range(50):
    out = step(jax.random.key(i))
    shapes.add(tuple((m.context.shape, m.target.shape) for m in out))
    if i in SEEDS:  # adding configs (CAUSAL, TUBE) after these does not change their masks
      for mine, (other, _) in zip(out, drawn["main", i][:2]):
        for u, v in zip(mine, other):
          np.testing.assert_array_equal(np.asarray(u), v)
  assert len(traces) == 1
  assert shapes == {tuple(((32, k_ctx), (32, k_tgt)) for k_ctx, k_tgt in
                          (M.static_sizes(GRID, SHORT), M.static_sizes(GRID, LONG)))}


def test_default_sizes():
  # The documented defaults at 224 px x 16 frames (module docstring) and the exact tube sizes.
  assert M.static_sizes(GRID, SHORT) == (592, 984)
  assert M.static_sizes(GRID, LONG) == (296, 1280)
  assert M.static_sizes(GRID, TUBE) == (19 * 8, (196 - 19) * 8)
  for cfg in (SHORT, LONG, CAUSAL):
    k_ctx, k_tgt = M.static_sizes(GRID, cfg)
    assert k_ctx % 8 == 0 and k_tgt % 8 == 0
  assert M.static_sizes(GRID, M.MaskConfig(num_context=100, num_target=7)) == (100, 7)
  with pytest.raises(ValueError):
    M.static_sizes(GRID, M.MaskConfig(num_context=N + 1))
  np.testing.assert_array_equal(M.count_distribution(GRID, LONG), M.count_distribution(GRID, LONG))


def test_causal_context_before_cut(drawn):
  cut = int(GRID[0] * CAUSAL.max_temporal_keep)
  assert cut == 3
  for seed in SEEDS:
    masks, grids = drawn["main", seed][2]
    t = masks.context // (GRID[1] * GRID[2])
    assert (t < cut).all()  # padding repeats valid context, so it too
    assert grids[:, cut:].all()  # everything after the cut is target
    assert (~grids[:, :cut]).any(axis=(1, 2, 3)).all()


def test_random_tube(drawn):
  keep = int(196 * (1 - 0.9))
  masks, grids = drawn["main", 0][3]
  assert masks.context_valid.all() and masks.target_valid.all()  # exact sizes: no padding
  assert (grids == grids[:, :1]).all()  # the same spatial pattern at every time step
  assert ((~grids[:, 0]).sum(axis=(1, 2)) == keep).all()
  spatial = masks.context.reshape(32, GRID[0], keep) % 196
  assert (spatial == spatial[:, :1]).all()
  assert len({tuple(s) for s in spatial[:, 0]}) == 32  # clips differ


def test_deterministic_given_key(drawn):
  again = _np(sample(jax.random.key(1), 32, GRID, MAIN))
  for (x, gx), (y, gy), (z, _) in zip(drawn["main", 1], again, drawn["main", 2]):
    np.testing.assert_array_equal(gx, gy)
    for u, v in zip(x, y):
      np.testing.assert_array_equal(u, v)
    assert not np.array_equal(x.context, z.context)


def test_random_subset_has_no_early_frame_bias():
  # Long-range context spans every time step equally; a small K must keep that balance, while
  # the reference's "first" rule keeps only the first frames.
  small = M.MaskConfig(num_blocks=2, spatial_scale=(0.7, 0.7), num_context=16)
  first = M.MaskConfig(num_blocks=2, spatial_scale=(0.7, 0.7), num_context=16, subset="first")
  (m_rand, _), (m_first, _) = sample(jax.random.key(0), 256, GRID, (small, first))
  per_t = np.bincount(np.asarray(m_rand.context).ravel() // 196, minlength=8) / (256 * 16)
  assert np.abs(per_t - 1 / 8).max() < 0.02, per_t
  per_t_first = np.bincount(np.asarray(m_first.context).ravel() // 196, minlength=8) / (256 * 16)
  assert per_t_first[0] > 0.9


def test_statistics_match_reference():
  """Per-clip target coverage before the static step vs the reference (4800 clips, batches of 24)."""
  ref = json.loads((FIXTURES / "mask_stats_224x16.json").read_text())
  assert ref["grid"] == list(GRID)
  # 200 batches of 24, each with its own block sizes, as the reference's run. A python loop over
  # one jitted batch is faster than vmap here: under vmap the empty-context lax.cond becomes a
  # select, so the retries would be computed for every batch.
  batches = [_np(sample(key, 24, GRID, (SHORT, LONG)))
             for key in jax.random.split(jax.random.key(2024), 200)]
  for i, name in enumerate(("short_range", "long_range")):
    masks = jax.tree.map(lambda *x: np.concatenate(x), *[b[i][0] for b in batches])
    grids = np.concatenate([b[i][1] for b in batches])
    target = grids.reshape(4800, N).sum(axis=1)
    want = ref[name]["per_clip_target"]
    assert abs(target.mean() - want["mean"]) <= 0.02 * N, (name, target.mean(), want["mean"])
    assert abs(target.std() - want["std"]) <= 0.2 * want["std"], (name, target.std(), want["std"])
    # What the model sees after the static step (documented in the module docstring).
    seen_ctx = float(np.asarray(masks.context_valid).sum(-1).mean())
    seen_tgt = float(np.asarray(masks.target_valid).sum(-1).mean())
    print(f"{name}: target {target.mean():.0f} +/- {target.std():.0f} (ref {want['mean']:.0f} +/- "
          f"{want['std']:.0f}); seen ctx {seen_ctx:.0f} tgt {seen_tgt:.0f} (ref batch-24 "
          f"{ref[name]['batch24_context_len']['mean']:.0f} / {ref[name]['batch24_target_len']['mean']:.0f})")
    assert seen_ctx > ref[name]["batch24_context_len"]["mean"]
    assert seen_tgt > ref[name]["batch24_target_len"]["mean"]


def _config_dict():
  config = ml_collections.ConfigDict()
  config.data = ml_collections.ConfigDict(dict(crop_size=64, num_frames=8))
  config.model = ml_collections.ConfigDict(dict(patch_size=16, tubelet_size=2))
  config.masks = [
      ml_collections.ConfigDict(dict(kind="multiblock", num_blocks=8, spatial_scale=[0.15, 0.15],
                                     temporal_scale=[1.0, 1.0], aspect_ratio=[0.75, 1.5],
                                     max_temporal_keep=1.0, max_keep=None, full_complement=False)),
      ml_collections.ConfigDict(dict(num_blocks=2, spatial_scale=[0.7, 0.7], num_context=8)),
  ]
  return config


def test_config_helpers():
  config = _config_dict()
  assert config_lib.token_grid(config) == (4, 4, 4)
  cfgs = config_lib.mask_configs(config)
  assert cfgs[0] == SHORT
  assert cfgs[1] == M.MaskConfig(num_blocks=2, spatial_scale=(0.7, 0.7), num_context=8)
  hash(cfgs)  # static jit argument
  with pytest.raises(ValueError, match="unknown"):
    M.MaskConfig.from_dict({"num_blokcs": 2})
  with pytest.raises(ValueError):
    M.MaskConfig(kind="tubes")
  with pytest.raises(ValueError):
    config_lib.mask_configs(ml_collections.ConfigDict(dict(masks=[])))


CONFIG_FILE = '''
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.data = ml_collections.ConfigDict(dict(crop_size=64, num_frames=8))
  config.model = ml_collections.ConfigDict(dict(patch_size=16, tubelet_size=2))
  config.masks = [
      ml_collections.ConfigDict(dict(num_blocks=8, spatial_scale=[0.15, 0.15])),
      ml_collections.ConfigDict(dict(num_blocks=2, spatial_scale=[0.7, 0.7], max_temporal_keep=0.5)),
      ml_collections.ConfigDict(dict(kind="random_tube", ratio=0.75)),
  ]
  return config
'''


def test_cli(tmp_path):
  (tmp_path / "cfg.py").write_text(CONFIG_FILE)
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  root = pathlib.Path(__file__).parents[1]
  runs = {tmp_path / "a.png": [f"--config={tmp_path / 'cfg.py'}", "--num", "2"],
          tmp_path / "b.png": ["--grid=8,14,14", "--num", "1", "--seed", "3"]}
  # Both at once: each run is mostly import and XLA compile time.
  procs = {out: subprocess.Popen([sys.executable, "-m", "jepa_jax.masks_plot", *args, f"--out={out}"],
                                 cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
           for out, args in runs.items()}
  for out, proc in procs.items():
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr[-3000:]
    assert out.stat().st_size > 1000
