"""Mapping between the reference PyTorch state dicts and jepa_jax's Flax parameter trees.

Rules, exact both ways: Linear ``weight [out, in]`` <-> Dense ``kernel [in, out]``; Conv3d ``weight
[D, C, kt, kh, kw]`` <-> ``kernel [kt, kh, kw, C, D]``; LayerNorm ``weight`` <-> ``scale``;
``blocks.{i}.`` (and ``predictor_blocks``, ``pooler.blocks``) <-> ``stack/blocks_{i}/``; the
predictor's ``mask_tokens.{i}`` ``[1, 1, P]`` <-> rows of ``mask_tokens [n, P]``; V-JEPA 2.1's
``norms_block.{k}``, ``patch_embed_img.proj``, ``predictor_embed.{0,2}`` <-> ``norms_block_{k}``,
``patch_embed_img``, ``predictor_embed_{0,2}`` (its modality embeddings as they are). The fixed
sin-cos buffers are not parameters here: checked on import, recomputed on export. Wrapper prefixes
(``module.``, ``backbone.``) are stripped on import. Scanned models keep one ``stack/blocks/block``
subtree with a leading depth axis; ``stack_blocks`` / ``unstack_blocks`` convert.
"""
import re
from typing import Iterable, Mapping

import numpy as np

from jepa_jax.errors import UserError

WRAPPER_PREFIXES = ("module.", "backbone.")
POSITION_BUFFERS = ("pos_embed", "predictor_pos_embed")

_BLOCK_PREFIX = re.compile(r"^(?:predictor_blocks|pooler\.blocks|blocks)\.(\d+)\.(.*)$")

# Non-block modules: torch module path -> flax path (without the leaf name).
_MODULES = {
    "encoder": {"patch_embed.proj": ("patch_embed",), "norm": ("norm",),
                "patch_embed_img.proj": ("patch_embed_img",)},
    "predictor": {"predictor_embed": ("predictor_embed",), "predictor_norm": ("predictor_norm",),
                  "predictor_proj": ("predictor_proj",),
                  "predictor_embed.0": ("predictor_embed_0",),
                  "predictor_embed.2": ("predictor_embed_2",),
                  "predictor_proj_context": ("predictor_proj_context",)},
    "probe": {"pooler.cross_attention_block.norm1": ("norm1",),
              "pooler.cross_attention_block.xattn.q": ("xattn", "q"),
              "pooler.cross_attention_block.xattn.kv": ("xattn", "kv"),
              "pooler.cross_attention_block.norm2": ("norm2",),
              "pooler.cross_attention_block.mlp.fc1": ("mlp", "fc1"),
              "pooler.cross_attention_block.mlp.fc2": ("mlp", "fc2"),
              "linear": ("linear",)},
}
_BLOCK_MODULES = {"norm1": ("norm1",), "norm2": ("norm2",), "attn.qkv": ("attn", "qkv"),
                  "attn.proj": ("attn", "proj"), "mlp.fc1": ("mlp", "fc1"),
                  "mlp.fc2": ("mlp", "fc2")}
# Probe parameters the reference creates but never uses in its forward pass.
_UNUSED = {"probe": ("pooler.cross_attention_block.xattn.proj.weight",
                     "pooler.cross_attention_block.xattn.proj.bias")}
_BLOCKS_PREFIX = {"encoder": "blocks", "predictor": "predictor_blocks", "probe": "pooler.blocks"}
_LAYER_NORMS = ("norm", "norm1", "norm2", "predictor_norm")
# V-JEPA 2.1's per-level LayerNorms of the encoder and its modality embeddings (kept [1, 1, D]).
_LEVEL_NORM = re.compile(r"^norms_block\.(\d+)$")
_EMBEDDINGS = {"encoder": ("video_mod_embed", "img_mod_embed"),
               "predictor": ("video_mod_embed", "img_mod_embed")}


class ConversionError(UserError, ValueError):
  """A state dict that does not fit the named model, with the offending name."""


def strip_prefixes(state: Mapping[str, np.ndarray]) -> dict:
  out = {}
  for name, value in state.items():
    changed = True
    while changed:
      changed = False
      for prefix in WRAPPER_PREFIXES:
        if name.startswith(prefix):
          name, changed = name[len(prefix):], True
    out[name] = np.asarray(value)
  return out


def _leaf(module_path: tuple, torch_leaf: str, is_norm: bool, value: np.ndarray):
  """Flax (path, array) of one torch tensor."""
  if torch_leaf == "bias":
    return module_path + ("bias",), value
  if is_norm:
    return module_path + ("scale",), value
  if value.ndim == 5:  # Conv3d
    return module_path + ("kernel",), value.transpose(2, 3, 4, 1, 0)
  if value.ndim == 2:  # Linear
    return module_path + ("kernel",), value.T
  raise ConversionError(f"unexpected {value.ndim}-D weight at {module_path}")


def _set(tree: dict, path: tuple, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  if path[-1] in tree:
    raise ConversionError(f"duplicate parameter {'/'.join(path)}")
  tree[path[-1]] = value


def from_torch(state: Mapping[str, np.ndarray], kind: str, leaf_fn=None) -> dict:
  """Reference state dict (``kind``: encoder | predictor | probe) -> unscanned Flax params.

  ``leaf_fn(converted, source)``, if given, makes each parameter from its (transposed) view of the
  source tensor, as soon as that tensor is reached: the converter copies it into its own memory
  there and lets the file's pages go (``reference._own_copy``), tensor by tensor."""
  return from_torch_items(strip_prefixes(state).items(), kind, leaf_fn)


def from_torch_items(items: Iterable[tuple[str, np.ndarray]], kind: str, leaf_fn=None) -> dict:
  """``from_torch`` on ``(reference name, array)`` pairs (no wrapper prefixes) taken one at a
  time: a generator that reads each tensor when asked (``hf.reference_items``) keeps one source
  tensor in memory at a time."""
  leaf_fn = leaf_fn or (lambda converted, source: converted)
  params: dict = {}
  mask_tokens = {}
  for name, value in items:
    if name in POSITION_BUFFERS:
      continue
    if name in _UNUSED.get(kind, ()):
      continue
    if kind == "predictor" and name.startswith("mask_tokens."):
      mask_tokens[int(name.split(".")[1])] = leaf_fn(value.reshape(-1), value)
      continue
    if kind == "probe" and name == "pooler.query_tokens":
      _set(params, ("query_tokens",), leaf_fn(value, value))
      continue
    if name in _EMBEDDINGS.get(kind, ()):
      _set(params, (name,), leaf_fn(value, value))
      continue
    module, _, torch_leaf = name.rpartition(".")
    level = _LEVEL_NORM.match(module) if kind == "encoder" else None
    m = _BLOCK_PREFIX.match(name)
    if m and name.startswith(_BLOCKS_PREFIX[kind] + "."):
      block_module, _, torch_leaf = m.group(2).rpartition(".")
      if block_module not in _BLOCK_MODULES:
        raise ConversionError(f"unknown parameter {name!r} in a {kind} state dict")
      path = ("stack", f"blocks_{m.group(1)}") + _BLOCK_MODULES[block_module]
      is_norm = block_module in _LAYER_NORMS
    elif level:
      path, is_norm = (f"norms_block_{level.group(1)}",), True
    elif module in _MODULES[kind]:
      path = _MODULES[kind][module]
      is_norm = path[-1] in _LAYER_NORMS
    else:
      raise ConversionError(f"unknown parameter {name!r} in a {kind} state dict "
                            f"(is this really a {kind} checkpoint?)")
    leaf_path, converted = _leaf(path, torch_leaf, is_norm, value)
    _set(params, leaf_path, leaf_fn(converted, value))
  if mask_tokens:
    params["mask_tokens"] = np.stack([mask_tokens[i] for i in range(len(mask_tokens))])
  return params


def to_torch(params, kind: str) -> dict:
  """Unscanned Flax params -> reference state dict (no prefixes, no position buffers)."""
  params = _plain(params)
  inverse = {v: k for k, v in _MODULES[kind].items()}
  block_inverse = {v: k for k, v in _BLOCK_MODULES.items()}
  out = {}
  flat = _flatten(params)
  for path, value in flat.items():
    if kind == "predictor" and path == ("mask_tokens",):
      for i, row in enumerate(value):
        out[f"mask_tokens.{i}"] = row.reshape(1, 1, -1)
      continue
    if kind == "probe" and path == ("query_tokens",):
      out["pooler.query_tokens"] = value
      continue
    if len(path) == 1 and path[0] in _EMBEDDINGS.get(kind, ()):
      out[path[0]] = value
      continue
    module_path, leaf = path[:-1], path[-1]
    if module_path[:1] == ("stack",):
      block = module_path[1]
      if not block.startswith("blocks_"):
        raise ConversionError("scanned parameters: call unstack_blocks() before to_torch()")
      module = f"{_BLOCKS_PREFIX[kind]}.{block[7:]}.{block_inverse[module_path[2:]]}"
    elif len(module_path) == 1 and module_path[0].startswith("norms_block_"):
      module = f"norms_block.{module_path[0][len('norms_block_'):]}"
    else:
      module = inverse[module_path]
    if leaf == "bias":
      out[f"{module}.bias"] = value
    elif leaf == "scale":
      out[f"{module}.weight"] = value
    elif value.ndim == 5:
      out[f"{module}.weight"] = value.transpose(4, 3, 0, 1, 2)
    else:
      out[f"{module}.weight"] = value.T
  if kind == "probe":
    d = out["pooler.query_tokens"].shape[-1]
    out["pooler.cross_attention_block.xattn.proj.weight"] = np.zeros((d, d), np.float32)
    out["pooler.cross_attention_block.xattn.proj.bias"] = np.zeros((d,), np.float32)
  return out


def unstack_blocks(params) -> dict:
  """Scanned layout (``stack/blocks/block`` [depth, ...]) -> ``stack/blocks_{i}``."""
  params = _plain(params)
  stack = params.get("stack", {})
  if "blocks" not in stack:
    return params
  block = stack.pop("blocks")["block"]
  depth = _flatten(block)[next(iter(_flatten(block)))].shape[0]
  for i in range(depth):
    stack[f"blocks_{i}"] = _map(lambda x, i=i: x[i], block)
  return params


def stack_blocks(params) -> dict:
  """``stack/blocks_{i}`` -> scanned layout ``stack/blocks/block`` with a leading depth axis."""
  params = _plain(params)
  stack = params.get("stack", {})
  names = sorted((k for k in stack if k.startswith("blocks_")), key=lambda k: int(k[7:]))
  if not names:
    return params
  blocks = [stack.pop(k) for k in names]
  stack["blocks"] = {"block": _map(lambda *xs: np.stack(xs), *blocks)}
  return params


def _plain(tree):
  if hasattr(tree, "items"):
    return {k: _plain(v) for k, v in tree.items()}
  return np.asarray(tree)


def _flatten(tree, prefix=()):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _map(fn, *trees):
  first = trees[0]
  if isinstance(first, dict):
    return {k: _map(fn, *(t[k] for t in trees)) for k in first}
  return fn(*trees)
