"""What a reference state dict says about its model, and whether it fits the model we would build.

Works on plain numpy state dicts (reference names, wrapper prefixes stripped), so it needs no
torch. The shapes give width, channels, tubelet and patch (``patch_embed.proj.weight``), depth and
MLP ratio, the predictor's width, depth and mask-token count, and the token grid: ``pos_embed``
is matched against our sin-cos tables of every ``T' x S x S`` grid with that many tokens, in both
``uniform_power`` layouts (the table encodes the coordinates, so the match is unambiguous where N
alone is not). They do not give the number of heads (``qkv`` is ``[3D, D]`` whatever the heads):
that comes from the named size whose shapes match, or an override; ViT-g's shapes are both
V-JEPA's ``giant`` (16 heads) and V-JEPA 2's ``giant_xformers`` (22), taken for RoPE.

RoPE (``infer_rope``): an encoder without ``pos_embed`` is RoPE. Released V-JEPA 2 files carry an
unused ``pos_embed`` (the hub loader ignores it), so the predictor decides: more than V-JEPA's 2
mask tokens (10 in the released files) or an ``action_encoder`` (V-JEPA 2-AC) means RoPE; files
from ``--to-torch`` say so (``jepa_jax_use_rope``); anything else needs ``--rope`` / ``--no-rope``.
"""
import math
import re
from typing import Mapping, Optional

import jax
import numpy as np

from jepa_jax.convert.names import ConversionError, to_torch, unstack_blocks
from jepa_jax.models import VIT_SIZES, pos_embed

# Row sample used to reject candidate grids cheaply before the full-table comparison.
_SAMPLE_ROWS = 64
# Our tables and the reference's are computed the same way (float64, then cast) and agree to the
# last bit for an online encoder. Not for a target encoder: the reference's EMA update also runs
# over its (frozen) pos_embed, and x <- m*x + (1-m)*x rounds, so the table drifts (~1e-4 after
# ~90k steps in a float32 simulation of the schedule). The tolerance absorbs that drift while
# still telling grids and layouts apart, whose tables differ by O(1).
POS_ATOL = 5e-3


def _hidden(embed_dim: int, mlp_ratio: float) -> int:
  """The MLP width our ``Block`` uses (``int(d * ratio)``, as the reference)."""
  return int(embed_dim * mlp_ratio)


def mlp_ratio_for(embed_dim: int, hidden: int) -> float:
  """A ratio that gives exactly ``hidden`` under ``int(d * ratio)`` (float-rounding safe)."""
  ratio = hidden / embed_dim
  return ratio if _hidden(embed_dim, ratio) == hidden else (hidden + 0.5) / embed_dim


def num_blocks(state: Mapping, prefix: str) -> int:
  pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
  ids = {int(m.group(1)) for m in map(pattern.match, state) if m}
  if ids and ids != set(range(max(ids) + 1)):
    raise ConversionError(f"{prefix}.* has blocks {sorted(ids)}: some are missing")
  return len(ids)


def _require(state: Mapping, name: str, what: str) -> np.ndarray:
  if name not in state:
    raise ConversionError(f"the {what} state dict has no {name!r}; is this a V-JEPA {what}? "
                          f"(first keys: {sorted(state)[:5]})")
  return state[name]


def encoder_spec(state: Mapping) -> dict:
  """Width, depth, MLP hidden size, channels, patch and tubelet of an encoder state dict."""
  w = _require(state, "patch_embed.proj.weight", "encoder")
  if w.ndim != 5:
    raise ConversionError(f"patch_embed.proj.weight has shape {tuple(w.shape)}; expected a Conv3d "
                          "weight [D, C, tubelet, patch, patch] (image-only checkpoints, with a "
                          "Conv2d patch embedding, are not supported)")
  d, c, kt, kh, kw = w.shape
  if kh != kw:
    raise ConversionError(f"patch_embed.proj.weight {tuple(w.shape)}: non-square patches are not "
                          "supported")
  depth = num_blocks(state, "blocks")
  hidden = _require(state, "blocks.0.mlp.fc1.weight", "encoder").shape[0] if depth else 0
  return dict(embed_dim=int(d), depth=depth, mlp_hidden=int(hidden), in_chans=int(c),
              patch_size=int(kh), tubelet_size=int(kt))


def vjepa21_encoder(state: Mapping) -> Optional[dict]:
  """V-JEPA 2.1's encoder fields read from its weights (its per-level ``norms_block.{k}`` where
  V-JEPA 2 has one ``norm``), or None for a V-JEPA / V-JEPA 2 encoder. Which blocks the levels
  follow is not in the weights: V-JEPA 2.1 fixes them per depth (``models.VJEPA21_LEVELS``)."""
  levels = {int(m.group(1)) for m in map(re.compile(r"^norms_block\.(\d+)\.weight$").match, state)
            if m}
  if not levels:
    return None
  img = state.get("patch_embed_img.proj.weight")
  return dict(num_levels=len(levels), modality_embedding="video_mod_embed" in state,
              image_frames=None if img is None else int(img.shape[2]))


def predictor_spec(state: Mapping) -> dict:
  """Width, input width, depth and number of mask tokens of a predictor state dict; for V-JEPA
  2.1's also the levels it reads and predicts, their width and whether it has context outputs."""
  tokens = [k for k in state if re.match(r"^mask_tokens\.\d+$", k)]
  common = dict(pred_depth=num_blocks(state, "predictor_blocks"), num_mask_tokens=len(tokens))
  if "predictor_embed.0.weight" in state:  # V-JEPA 2.1, L > 1 levels: L*D -> D -> P
    first, second = state["predictor_embed.0.weight"], _require(
        state, "predictor_embed.2.weight", "predictor")
    d = int(first.shape[0])
    levels = int(first.shape[1]) // d
  else:
    second = _require(state, "predictor_embed.weight", "predictor")
    d, levels = int(second.shape[1]), 1
  out = dict(pred_embed_dim=int(second.shape[0]), embed_dim=d, **common)
  proj = state.get("predictor_proj.weight")
  v21 = levels > 1 or "predictor_proj_context.weight" in state or "video_mod_embed" in state
  if v21 and proj is not None:
    out_dim = int(proj.shape[0]) // levels
    out.update(levels=levels, return_context="predictor_proj_context.weight" in state,
               out_embed_dim=None if out_dim == d else out_dim)
  return out


PROBE_PROJ = "pooler.cross_attention_block.xattn.proj.weight"


def probe_spec(state: Mapping) -> dict:
  """Width, queries, depth, MLP hidden size, classes and layout of an attentive-probe state dict.

  ``blocks_on``: V-JEPA's ``CrossAttention`` has an (unused) ``proj``, V-JEPA 2's has none, and
  the two place their extra blocks differently (``models.attentive_probe``)."""
  q = _require(state, "pooler.query_tokens", "probe")
  d = int(q.shape[-1])
  hidden = _require(state, "pooler.cross_attention_block.mlp.fc1.weight", "probe").shape[0]
  return dict(embed_dim=d, num_queries=int(q.shape[1]),
              depth=1 + num_blocks(state, "pooler.blocks"),
              mlp_ratio=mlp_ratio_for(d, int(hidden)),
              num_classes=int(_require(state, "linear.weight", "probe").shape[0]),
              blocks_on="query" if PROBE_PROJ in state else "tokens")


AC_PREDICTOR_KEY = "action_encoder.weight"   # V-JEPA 2-AC's predictor (src/models/ac_predictor.py)


def predictor_evidence(predictor_state: Optional[Mapping]) -> Optional[dict]:
  """What a file's predictor says about its encoder (``infer_rope``), read from its names and
  shapes only, so a predictor jepa_jax cannot convert (V-JEPA 2-AC's) still counts."""
  if not predictor_state:
    return None
  if AC_PREDICTOR_KEY in predictor_state:
    return dict(action_conditioned=True)
  if "predictor_embed.weight" not in predictor_state and \
      "predictor_embed.0.weight" not in predictor_state:
    return None
  return predictor_spec(predictor_state)


def infer_rope(encoder_state: Mapping, pspec: Optional[dict],
               written_with_rope: Optional[bool] = None) -> tuple[Optional[bool], str]:
  """``(use_rope, why)`` from an encoder state dict, the file's predictor (``predictor_evidence``)
  and the ``jepa_jax_use_rope`` entry of ``--to-torch`` files; ``use_rope`` is None where they do
  not determine it (module docstring)."""
  if written_with_rope is not None:
    return bool(written_with_rope), "the file says so (written by jepa_jax's --to-torch)"
  if "pos_embed" not in encoder_state:
    return True, "the encoder has no pos_embed (RoPE encoders have none)"
  if pspec is not None and pspec.get("action_conditioned"):
    return True, "the file's predictor is V-JEPA 2-AC's (action_encoder)"
  if pspec is not None and pspec["num_mask_tokens"] > 2:
    return True, (f"the file's predictor has {pspec['num_mask_tokens']} mask tokens (V-JEPA 2: one "
                  "per mask and dataset; V-JEPA: 2)")
  if pspec is not None:
    return False, (f"the encoder has a pos_embed table and the file's predictor "
                   f"{pspec['num_mask_tokens']} mask tokens (V-JEPA: 2)")
  return None, ("the encoder carries a pos_embed table, which V-JEPA (sin-cos) encoders use and "
                "V-JEPA 2 (RoPE) encoders carry unused, and no predictor in the file tells them "
                "apart")


def named_sizes(spec: dict, use_rope: bool = False) -> list:
  """Named sizes (``VIT_SIZES``) whose width, depth and MLP match an encoder spec, the family's
  own first: V-JEPA 2's ``*_xformers`` sizes for RoPE checkpoints, the others otherwise."""
  names = [n for n, s in VIT_SIZES.items()
           if s["embed_dim"] == spec["embed_dim"] and s["depth"] == spec["depth"]
           and _hidden(s["embed_dim"], s["mlp_ratio"]) == spec["mlp_hidden"]]
  return sorted(names, key=lambda n: n.endswith("_xformers") != use_rope)


def describe(spec: dict) -> str:
  names = named_sizes(spec)
  patch = "".join(f", {k.split('_')[0]} {spec[k]}" for k in ("patch_size", "tubelet_size")
                  if k in spec)
  return (f"embed_dim {spec['embed_dim']}, depth {spec['depth']}, MLP hidden {spec['mlp_hidden']}"
          f"{patch} (" + (f"= vit_{names[0]}" if names else "no named size") + ")")


def heads_for_width(embed_dim: int) -> Optional[int]:
  """Heads of V-JEPA's named sizes of this width, if they agree (its probe uses the encoder's)."""
  heads = {s["num_heads"] for n, s in VIT_SIZES.items()
           if s["embed_dim"] == embed_dim and not n.endswith("_xformers")}
  return heads.pop() if len(heads) == 1 else None


def resolve_size(spec: dict, model: Optional[str] = None,
                 overrides: Optional[dict] = None, use_rope: bool = False) -> tuple[str, dict]:
  """``(size name, overrides)`` for ``config.model`` that fit an encoder spec, or a ConversionError.

  ``model`` is a named size (``vit_huge`` or ``huge``); ``overrides`` explicit ``embed_dim``,
  ``depth``, ``num_heads``, ``mlp_ratio`` values that replace the named size's. Without ``model``
  the named size is inferred from the shapes; a checkpoint of no named size needs ``num_heads``.
  """
  overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
  if model is None:
    matches = named_sizes(spec, use_rope)
    if matches:
      model = matches[0]
    elif "num_heads" in overrides:
      # Any name works as the base once every field is overridden; take the nearest width.
      model = min(VIT_SIZES, key=lambda n: abs(VIT_SIZES[n]["embed_dim"] - spec["embed_dim"]))
      overrides = dict(embed_dim=spec["embed_dim"], depth=spec["depth"],
                       mlp_ratio=mlp_ratio_for(spec["embed_dim"], spec["mlp_hidden"]), **overrides)
    else:
      raise ConversionError(
          f"the checkpoint's encoder ({describe(spec)}) matches no named size, and the number of "
          "attention heads cannot be read from shapes; pass --num-heads H (and --model NAME "
          "--embed-dim/--depth if you want to name it)")
  name = model[4:] if model.startswith("vit_") else model
  if name not in VIT_SIZES:
    raise ConversionError(f"unknown model {model!r}; choose one of "
                          f"{sorted('vit_' + n for n in VIT_SIZES)}")
  want = dict(VIT_SIZES[name], **overrides)
  label = f"vit_{name}" + (f" with overrides {overrides}" if overrides else "")
  fix = (f"the checkpoint is {describe(spec)}; pass the matching --model (or none, to infer it), "
         "or override --embed-dim/--depth/--num-heads")
  if want["embed_dim"] != spec["embed_dim"]:
    raise ConversionError(
        f"checkpoint does not fit {label}: encoder parameter patch_embed.proj.weight has shape "
        f"{_conv_shape(spec, spec['embed_dim'])} in the checkpoint but "
        f"{_conv_shape(spec, want['embed_dim'])} in {label}; {fix}")
  if want["depth"] != spec["depth"]:
    raise ConversionError(
        f"checkpoint does not fit {label}: the encoder has {spec['depth']} blocks (blocks.0 .. "
        f"blocks.{spec['depth'] - 1}) but {label} has {want['depth']}; {fix}")
  if _hidden(want["embed_dim"], want["mlp_ratio"]) != spec["mlp_hidden"]:
    d = spec["embed_dim"]
    raise ConversionError(
        f"checkpoint does not fit {label}: encoder parameter blocks.0.mlp.fc1.weight has shape "
        f"({spec['mlp_hidden']}, {d}) in the checkpoint but "
        f"({_hidden(d, want['mlp_ratio'])}, {d}) in {label}; {fix}")
  if want["embed_dim"] % want["num_heads"]:
    raise ConversionError(f"num_heads {want['num_heads']} does not divide the width "
                          f"{want['embed_dim']}; pass a --num-heads that does")
  minimal = {k: v for k, v in overrides.items() if VIT_SIZES[name].get(k) != v}
  return name, minimal


def _conv_shape(spec: dict, d: int) -> tuple:
  return (d, spec["in_chans"], spec["tubelet_size"], spec["patch_size"], spec["patch_size"])


# --- token grid from the position table ------------------------------------------------------

def grid_candidates(num_tokens: int, patch_size: int, tubelet_size: int,
                    img_size: Optional[int] = None, num_frames: Optional[int] = None) -> list:
  """``(T', S)`` with ``T' * S * S = num_tokens``, restricted by the sizes given."""
  out = []
  for s in range(1, math.isqrt(num_tokens) + 1):
    if num_tokens % (s * s):
      continue
    t = num_tokens // (s * s)
    if img_size is not None and img_size != s * patch_size:
      continue
    if num_frames is not None and num_frames != t * tubelet_size:
      continue
    out.append((t, s))
  return out


def _table_rows(embed_dim: int, grid: tuple, uniform_power: bool, rows: np.ndarray) -> np.ndarray:
  """Rows of ``pos_embed.sincos_3d(embed_dim, grid, uniform_power)`` without building all of it."""
  _, h_size, w_size = grid
  t, h, w = rows // (h_size * w_size), (rows // w_size) % h_size, rows % w_size
  dt, dh, dw = pos_embed.axis_dims(embed_dim, uniform_power)
  table = np.concatenate([pos_embed.sincos_1d(dt, t), pos_embed.sincos_1d(dh, h),
                          pos_embed.sincos_1d(dw, w)], axis=1)
  return table[:, :embed_dim].astype(np.float32)


# A RoPE model's weights do not depend on the clip size; without a table to read it from, the
# converted config gets V-JEPA 2's pretraining clip (the eval/training config sets its own).
ROPE_DEFAULT_CLIP = (256, 16)


def infer_rope_grid(table: Optional[np.ndarray], patch_size: int, tubelet_size: int,
                    img_size: Optional[int] = None, num_frames: Optional[int] = None):
  """``(img_size, num_frames, uniform_power, how)`` for a RoPE checkpoint: its ``pos_embed`` (the
  released V-JEPA 2 files carry one, unused) is read if it is one of our sin-cos tables, else
  ignored; sizes given win, the rest defaults to ``ROPE_DEFAULT_CLIP``."""
  if table is not None:
    try:
      img, frames, up = infer_grid(table, patch_size, tubelet_size, img_size, num_frames)
      return img, frames, up, "read from its (unused) pos_embed table"
    except ConversionError:
      pass
  img = ROPE_DEFAULT_CLIP[0] if img_size is None else img_size
  frames = ROPE_DEFAULT_CLIP[1] if num_frames is None else num_frames
  how = "given" if img_size is not None and num_frames is not None else \
      f"default {ROPE_DEFAULT_CLIP[0]} px x {ROPE_DEFAULT_CLIP[1]} frames where not given"
  return img, frames, True, how


def infer_grid(table: Optional[np.ndarray], patch_size: int, tubelet_size: int,
               img_size: Optional[int] = None, num_frames: Optional[int] = None,
               uniform_power: Optional[bool] = None) -> tuple[int, int, bool]:
  """``(img_size, num_frames, uniform_power)`` whose sin-cos table equals the checkpoint's.

  ``table`` is the checkpoint's ``pos_embed`` (``[1, N, D]`` or ``[N, D]``); without one the sizes
  must be given. Sizes given are checked, not trusted: a table matching none of them is refused.
  """
  if table is None:
    if img_size is None or num_frames is None:
      raise ConversionError("the checkpoint has no pos_embed table to read the resolution and "
                            "frame count from; pass --img-size and --num-frames")
    return img_size, num_frames, True if uniform_power is None else uniform_power
  table = np.asarray(table, np.float32).reshape(-1, table.shape[-1])
  n, d = table.shape
  candidates = grid_candidates(n, patch_size, tubelet_size, img_size, num_frames)
  if not candidates:
    given = ", ".join(f"{k} {v}" for k, v in (("--img-size", img_size),
                                              ("--num-frames", num_frames)) if v is not None)
    raise ConversionError(
        f"pos_embed has {n} tokens, which no square grid with {given} gives (patch "
        f"{patch_size}, tubelet {tubelet_size}); drop or correct the flag, or let the table decide")
  rows = np.unique(np.linspace(0, n - 1, min(n, _SAMPLE_ROWS)).astype(np.int64))
  powers = (True, False) if uniform_power is None else (uniform_power,)
  matches = []
  for t, s in candidates:
    for up in powers:
      if np.allclose(_table_rows(d, (t, s, s), up, rows), table[rows], atol=POS_ATOL):
        if np.allclose(pos_embed.sincos_3d(d, (t, s, s), up), table, atol=POS_ATOL):
          matches.append((s * patch_size, t * tubelet_size, up))
  if not matches:
    grids = ", ".join(f"{t}x{s}x{s}" for t, s in candidates)
    raise ConversionError(
        f"the checkpoint's pos_embed [{n}, {d}] matches none of our fixed 3D sin-cos tables "
        f"(grids {grids}, uniform_power {' or '.join(map(str, powers))}); its positions are not "
        "the reference's sin-cos ones, so jepa_jax cannot reproduce this model")
  if len(matches) > 1:
    raise ConversionError(f"pos_embed fits several grids {matches} (img_size, num_frames, "
                          "uniform_power); pass --img-size and --num-frames")
  return matches[0]


def check_table(table: Optional[np.ndarray], ours: np.ndarray, name: str, where: str) -> float:
  """Refuse a position buffer that differs from the table our model will compute; returns the
  largest deviation (EMA rounding drift in target encoders, see ``POS_ATOL``)."""
  if table is None:
    return 0.0
  table = np.asarray(table, np.float32)
  ours = np.asarray(ours).reshape(table.shape) if table.size == ours.size else None
  if ours is None or not np.allclose(table, ours, atol=POS_ATOL):
    raise ConversionError(f"{where} {name} {tuple(table.shape)} differs from the sin-cos table of "
                          "the encoder's grid; the checkpoint mixes models of different grids")
  return float(np.max(np.abs(table - ours))) if table.size else 0.0


# --- expected names and shapes ---------------------------------------------------------------

def zero_views(abstract):
  """``jax.ShapeDtypeStruct`` leaves -> zero-stride numpy views: shapes for ``to_torch`` without
  allocating (a giant model's tree costs bytes, not gigabytes)."""
  return jax.tree_util.tree_map(
      lambda s: np.broadcast_to(np.zeros((), np.dtype(s.dtype)), s.shape), abstract)


def torch_shapes(abstract_params, kind: str) -> dict:
  """Reference names -> shapes of a Flax tree of ``ShapeDtypeStruct`` (or arrays)."""
  tree = unstack_blocks(zero_views(abstract_params))
  return {k: tuple(v.shape) for k, v in to_torch(tree, kind).items()}


def check_state(state: Mapping, expected: dict, what: str, label: str, hint: str = "") -> None:
  """Refuse a state dict whose names or shapes differ from ``expected``, naming the first one."""
  order = sorted(set(expected) | set(state), key=_natural)
  for name in order:
    if name in ("pos_embed", "predictor_pos_embed"):
      continue  # fixed buffers, checked by value
    if name not in state:
      raise ConversionError(f"checkpoint does not fit {label}: {what} parameter {name} "
                            f"{expected[name]} is missing from the checkpoint{hint}")
    if name not in expected:
      raise ConversionError(f"checkpoint does not fit {label}: the checkpoint's {what} has "
                            f"{name} {tuple(state[name].shape)}, which {label} does not{hint}")
    if tuple(state[name].shape) != tuple(expected[name]):
      raise ConversionError(
          f"checkpoint does not fit {label}: {what} parameter {name} has shape "
          f"{tuple(state[name].shape)} in the checkpoint but {tuple(expected[name])} in "
          f"{label}{hint}")


def _natural(name: str):
  """Sort ``blocks.10`` after ``blocks.9`` so the first reported mismatch is the first layer."""
  return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
