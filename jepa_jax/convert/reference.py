"""Whole-checkpoint conversion: the reference's ``.pth.tar`` files <-> jepa_jax orbax checkpoints.

Pretrained models. The reference's ``app/vjepa/train.py`` saves ``{'encoder', 'predictor',
'target_encoder', 'opt', 'scaler', 'epoch', ...}``; each model is wrapped in
``DistributedDataParallel(MultiMaskWrapper(...))``, so its keys read ``module.backbone.<name>``.
They convert to a params-only checkpoint ``{"encoder", "predictor", "target"}`` (see
``jepa_jax.checkpoint``) plus the config that rebuilds the model; the rest (optimiser...) is
ignored. The reverse writes the same structure back, with the fixed ``pos_embed`` /
``predictor_pos_embed`` buffers the reference modules hold, so ``load_state_dict(strict=True)``
accepts it, and an ``epoch`` entry, which the reference's eval reads.

Attentive probes. The reference's frozen eval saves ``{'classifier': state_dict, 'opt', 'epoch',
...}`` with a DDP ``module.`` prefix. They convert to ``<dir>/checkpoints/0/`` with items
``probe`` (the ``AttentiveClassifier`` parameter tree) and ``config`` (``{"probe": {num_classes,
num_heads, mlp_ratio, depth, num_queries, embed_dim, blocks_on}}``): the one probe layout of
``jepa_jax.checkpoint``, which probes trained by ``jepa_jax.eval`` use too, so both load with
``load_probe`` and export with ``--to-torch --kind probe``.

The functions taking state dicts need no torch (they work on numpy); only ``load_*`` / ``write_*``
of ``.pth.tar`` files import it.
"""
import contextlib
import logging
import os
from typing import Mapping, Optional

import jax
import ml_collections
import numpy as np

from jepa_jax import checkpoint as ckpt_lib
from jepa_jax import models as models_lib
from jepa_jax.config_fields import config_to_json
from jepa_jax.convert import infer
from jepa_jax.convert.names import (ConversionError, from_torch, stack_blocks, strip_prefixes,
                                    to_torch, unstack_blocks)

log = logging.getLogger(__name__)

ENCODER_PREFIX = "module.backbone."   # DistributedDataParallel(MultiMaskWrapper(encoder))
ROPE_PRED_HEADS = 12                  # V-JEPA 2's predictor heads (hub backbones.py, configs)
VJEPA2_PROBE_HEADS = 16               # classifier.num_heads of every V-JEPA 2 eval config
PROBE_PREFIX = "module."              # DistributedDataParallel(AttentiveClassifier)
PROBE = "probe"
WHICH = ("both", "target", "online")
# Top-level entry of --to-torch files: whether the model is RoPE, which an encoder that carries a
# position table and has no predictor beside it cannot tell (infer.infer_rope).
ROPE_MARKER = "jepa_jax_use_rope"
EMA_ENCODER = "ema_encoder"
# V-JEPA 2.1's released models are built at 384 px x 64 frames (src/hub/backbones.py), the clip
# its interpolated RoPE rows/columns depend on; a converted config gets it unless told otherwise.
VJEPA21_DEFAULT_CLIP = (384, 64)


# --- reference -> jepa_jax: pretrained models ------------------------------------------------

def convert_state_dicts(checkpoint: Mapping, model: Optional[str] = None, *,
                        img_size: Optional[int] = None, num_frames: Optional[int] = None,
                        patch_size: Optional[int] = None, tubelet_size: Optional[int] = None,
                        embed_dim: Optional[int] = None, depth: Optional[int] = None,
                        num_heads: Optional[int] = None, encoder_only: bool = False,
                        use_rope: Optional[bool] = None, pred_num_heads: Optional[int] = None,
                        as_vjepa2: bool = False):
  """A reference checkpoint dict (numpy state dicts) -> ``(params, config)``.

  Args:
    checkpoint: ``{'encoder', 'predictor', 'target_encoder', ...}`` as in the released files (any
      of the three may be missing, at least one encoder must be there), or one bare encoder state
      dict. Values are numpy arrays; wrapper prefixes are stripped.
    model: named size (``vit_large``, ``huge``, ...); inferred from the shapes when omitted.
    img_size, num_frames: the clip size; read from the ``pos_embed`` table when omitted.
    patch_size, tubelet_size: read from ``patch_embed``; given values are checked.
    embed_dim, depth, num_heads: explicit overrides of the named size.
    encoder_only: ignore the predictor.
    use_rope: V-JEPA 2's 3D RoPE model; inferred when None (``infer.infer_rope``). RoPE models
      ignore the file's ``pos_embed`` entries (as the reference's hub loader does) and read the
      clip size from them only if they are a sin-cos table.
    pred_num_heads: the predictor's heads (None: 12 for RoPE models -- V-JEPA 2's -- else the
      encoder's).
    as_vjepa2: a V-JEPA 2.1 file read into the V-JEPA 2 encoder, as the reference's frozen
      evaluation of 2.1 checkpoints does (``vjepa2_eval_state``): what probes trained by its
      ``configs/eval_2_1`` were trained on. Encoder only.

  Returns:
    ``params``: ``{"encoder", "target"[, "predictor"]}`` unscanned float32 numpy trees; a missing
    online/target encoder is a copy of the other (the reference starts its target as a copy).
    ``config``: ``jepa_jax.pretrain.defaults.base_config()`` with the model and clip fields set.

  Raises:
    ConversionError: the checkpoint does not fit (the message names the parameter and the fix).
  """
  groups = _model_groups(checkpoint)
  reference = groups.get("target_encoder", groups.get("encoder"))
  spec = infer.encoder_spec(reference)
  for flag, value, key in (("--patch-size", patch_size, "patch_size"),
                           ("--tubelet-size", tubelet_size, "tubelet_size")):
    if value is not None and value != spec[key]:
      raise ConversionError(
          f"{flag} {value} does not fit the checkpoint: encoder parameter patch_embed.proj.weight "
          f"has shape {tuple(reference['patch_embed.proj.weight'].shape)} ([D, C, tubelet, patch, "
          f"patch]), i.e. {key.replace('_', ' ')} {spec[key]}; drop the flag or pass {spec[key]}")
  use_predictor = "predictor" in groups and not encoder_only
  if use_predictor and infer.AC_PREDICTOR_KEY in groups["predictor"]:
    raise ConversionError(
        "the predictor is V-JEPA 2-AC's action-conditioned one (action_encoder, state_encoder), "
        "which jepa_jax does not implement; convert the encoder alone with --encoder-only (it is "
        "a RoPE encoder, which the file's predictor tells the converter)")
  pspec = infer.predictor_spec(groups["predictor"]) if use_predictor else None
  if pspec is not None and pspec["num_mask_tokens"] == 0:
    raise ConversionError("the predictor has no mask_tokens (trained with use_mask_tokens=False); "
                          "jepa_jax's predictor always uses them. Convert the encoders alone with "
                          "--encoder-only")
  v21 = infer.vjepa21_encoder(reference)
  if as_vjepa2:
    if v21 is None:
      raise ConversionError("--as-vjepa2 reads a V-JEPA 2.1 file (norms_block.* entries) as the "
                            "reference's configs/eval_2_1 do; this file has none: drop the flag")
    groups = {g: vjepa2_eval_state(s) for g, s in groups.items() if g != "predictor"}
    reference = groups.get("target_encoder", groups.get("encoder"))
    use_predictor, pspec = False, None
    log.info("read as the V-JEPA 2 encoder (--as-vjepa2): 2.1's level norms, modality and image "
             "embeddings dropped, an untrained final LayerNorm, V-JEPA 2's RoPE")
  mlp_ratio = None
  if v21 is not None:
    if use_rope is False:
      raise ConversionError("--no-rope: this is a V-JEPA 2.1 encoder (norms_block.*), which is "
                            "RoPE-only; drop --no-rope")
    log.info("V-JEPA 2.1 model: the encoder has %d per-level norms_block LayerNorms%s%s",
             v21["num_levels"], ", modality embeddings" if v21["modality_embedding"] else "",
             ", an image patch embedding" if v21["image_frames"] else "")
    use_rope = True
    if v21["num_levels"] != 4 and spec["depth"] in models_lib.VJEPA21_LEVELS:
      raise ConversionError(f"the encoder has {v21['num_levels']} norms_block entries; V-JEPA 2.1 "
                            "builds 4 (one per level)")
    if spec["depth"] not in models_lib.VJEPA21_LEVELS:
      raise ConversionError(f"a V-JEPA 2.1 encoder of depth {spec['depth']}: the reference defines "
                            "its output levels for depth 12, 24, 40 or 48 only, so which blocks "
                            "they follow is unknown")
    mlp_ratio = _vjepa21_mlp_ratio(spec) if model is None else None
    if mlp_ratio is not None:
      model = next(n for n, z in models_lib.VIT_SIZES.items() if n.endswith("_xformers")
                   and (z["embed_dim"], z["depth"]) == (spec["embed_dim"], spec["depth"]))
  if use_rope is None:
    # The file's predictor is evidence even when it is not converted (--encoder-only).
    evidence = pspec if use_predictor else infer.predictor_evidence(groups.get("predictor"))
    use_rope, why = infer.infer_rope(reference, evidence, checkpoint.get(ROPE_MARKER))
    if use_rope is None:
      raise ConversionError(f"{why}; pass --rope for a V-JEPA 2 encoder (vitl.pt, vitg.pt, ...) "
                            "or --no-rope for a V-JEPA one")
    log.info("%s model: %s (override with --rope / --no-rope)",
             "V-JEPA 2 RoPE" if use_rope else "V-JEPA sin-cos", why)
  wanted = dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads)
  if v21 is not None and mlp_ratio is not None:
    wanted["mlp_ratio"] = mlp_ratio
  name, overrides = infer.resolve_size(spec, model, wanted, use_rope=use_rope)
  if v21 is not None:
    img = VJEPA21_DEFAULT_CLIP[0] if img_size is None else img_size
    frames = VJEPA21_DEFAULT_CLIP[1] if num_frames is None else num_frames
    uniform_power = True
    log.info("clip size %d px x %d frames: %s", img, frames,
             "given" if img_size and num_frames else
             "V-JEPA 2.1's released 384 px x 64 frames where not given (--img-size/--num-frames)")
    if pred_num_heads is None:
      pred_num_heads = ROPE_PRED_HEADS
  elif use_rope:
    img, frames, uniform_power, how = infer.infer_rope_grid(
        reference.get("pos_embed"), spec["patch_size"], spec["tubelet_size"], img_size,
        num_frames)
    log.info("clip size %d px x %d frames: %s", img, frames, how)
    if pred_num_heads is None:
      pred_num_heads = ROPE_PRED_HEADS
  else:
    img, frames, uniform_power = infer.infer_grid(
        reference.get("pos_embed"), spec["patch_size"], spec["tubelet_size"], img_size,
        num_frames)
  config = _config(name, overrides, spec, img, frames, uniform_power, pspec, use_rope=use_rope,
                   pred_num_heads=pred_num_heads, v21=None if as_vjepa2 else v21)

  from jepa_jax import models  # noqa: PLC0415 - heavy, only needed here
  from jepa_jax.pretrain import config as config_lib  # noqa: PLC0415
  num_masks = pspec["num_mask_tokens"] if pspec else 2
  encoder, predictor = models.from_spec(config_lib.model_spec(config, num_masks=num_masks))
  abstract = _abstract_params(encoder, predictor)
  label = f"vit_{name}" + (f" with overrides {overrides}" if overrides else "") + \
      (" (RoPE)" if use_rope else "")
  hint = f" (the checkpoint is {infer.describe(spec)})"
  enc_shapes = infer.torch_shapes(abstract["encoder"], "encoder")
  params = {}
  for group, key in (("encoder", "encoder"), ("target_encoder", "target")):
    if group in groups:
      infer.check_state(groups[group], enc_shapes, group, label, hint)
      if use_rope:
        if "pos_embed" in groups[group]:
          log.info("%s.pos_embed ignored: a RoPE encoder has no position table (the reference's "
                   "hub loader skips it too, loading with strict=False)", group)
      else:
        drift = infer.check_table(groups[group].get("pos_embed"),
                                  np.asarray(encoder.position_table()), "pos_embed", group)
        if drift > 1e-6:
          log.info("%s.pos_embed is %.1e from the exact sin-cos table (the reference's EMA rounds "
                   "its frozen table); jepa_jax uses the exact table", group, drift)
      params[key] = from_torch(groups[group], "encoder", leaf_fn=_own_copy)
  if use_predictor:
    pred_label = f"{label}'s predictor (width {pspec['pred_embed_dim']}, depth " \
                 f"{pspec['pred_depth']}, {num_masks} mask tokens)"
    infer.check_state(groups["predictor"], infer.torch_shapes(abstract["predictor"], "predictor"),
                      "predictor", pred_label, hint)
    if not use_rope:
      infer.check_table(groups["predictor"].get("predictor_pos_embed"),
                        np.asarray(predictor.position_table()), "predictor_pos_embed", "predictor")
    params["predictor"] = from_torch(groups["predictor"], "predictor", leaf_fn=_own_copy)
  for have, missing in (("encoder", "target"), ("target", "encoder")):
    if missing not in params:
      log.warning("the checkpoint has no %s; using a copy of the %s", missing, have)
      params[missing] = jax.tree_util.tree_map(np.copy, params[have])
  return params, config


# What V-JEPA 2.1's encoder has and V-JEPA 2's does not (vit_encoder_multiclip's strict=False load
# leaves them out; tests/test_vjepa21_convert.py checks the list against the reference's own load).
VJEPA21_ONLY_PREFIXES = ("norms_block.", "patch_embed_img.")
VJEPA21_ONLY_KEYS = ("video_mod_embed", "img_mod_embed")


def vjepa2_eval_state(state: Mapping) -> dict:
  """A V-JEPA 2.1 encoder state dict as the reference's ``configs/eval_2_1`` load it
  (``evals/video_classification_frozen/modelcustom/vit_encoder_multiclip.py``: the V-JEPA 2
  encoder, ``load_state_dict(strict=False)``): the 2.1-only entries dropped, and V-JEPA 2's final
  ``norm``, which the file lacks, at its initial value (weight 1, bias 0)."""
  kept = {k: v for k, v in state.items()
          if not k.startswith(VJEPA21_ONLY_PREFIXES) and k not in VJEPA21_ONLY_KEYS}
  width = int(state["patch_embed.proj.weight"].shape[0])
  kept.setdefault("norm.weight", np.ones(width, np.float32))
  kept.setdefault("norm.bias", np.zeros(width, np.float32))
  return kept


def _vjepa21_mlp_ratio(spec: dict):
  """V-JEPA 2.1's ViT-G builds its MLP ratio 64/13 (hidden 8192) where V-JEPA 2's, and so our
  ``gigantic_xformers``, has 4 (its misspelt keyword): the MLP ratio to override a named
  ``*_xformers`` size of the same width and depth with, or None when a named size fits as is."""
  if infer.named_sizes(spec, True):
    return None
  same = [n for n, z in models_lib.VIT_SIZES.items() if n.endswith("_xformers")
          and (z["embed_dim"], z["depth"]) == (spec["embed_dim"], spec["depth"])]
  return infer.mlp_ratio_for(spec["embed_dim"], spec["mlp_hidden"]) if same else None


def _model_groups(checkpoint: Mapping) -> dict:
  """The encoder/predictor/target state dicts of a checkpoint, prefixes stripped."""
  if not isinstance(checkpoint, Mapping):
    raise ConversionError(f"expected a dict of state dicts, got {type(checkpoint).__name__}")
  for key in ("classifier", "classifiers"):  # V-JEPA's eval saves one probe, V-JEPA 2's a list
    if key in checkpoint:
      raise ConversionError(f"this is an attentive-probe file ({key!r}), not a pretrained model; "
                            "convert it with --kind probe")
  keys = ("encoder", "predictor", "target_encoder")
  if EMA_ENCODER in checkpoint and "target_encoder" not in checkpoint:
    # V-JEPA 2.1's distilled files keep their EMA encoder as ``ema_encoder`` (src/hub/backbones.py
    # loads it as the model); it is the target encoder here.
    checkpoint = dict(checkpoint, target_encoder=checkpoint[EMA_ENCODER])
  if any(k in checkpoint for k in keys):
    groups = {k: strip_prefixes(checkpoint[k]) for k in keys if k in checkpoint}
  elif checkpoint and all(isinstance(v, np.ndarray) for v in checkpoint.values()):
    groups = {"target_encoder": strip_prefixes(checkpoint)}  # a bare encoder state dict
    if "pooler.query_tokens" in groups["target_encoder"]:
      raise ConversionError("this is a bare attentive-probe state dict (pooler.query_tokens), not "
                            "a pretrained model; convert it with --kind probe")
    if "predictor_embed.weight" in groups["target_encoder"]:
      raise ConversionError("this is a bare predictor state dict; a predictor needs its encoder: "
                            "convert the training checkpoint holding both")
  else:
    raise ConversionError(f"no encoder state dict in the checkpoint (top-level keys: "
                          f"{sorted(checkpoint)}); expected the reference's 'encoder' / "
                          "'target_encoder' / 'predictor' entries")
  if "encoder" not in groups and "target_encoder" not in groups:
    raise ConversionError("the checkpoint has a predictor but no encoder or target_encoder")
  return groups


def _config(name, overrides, spec, img, frames, uniform_power, pspec, use_rope: bool = False,
            pred_num_heads: Optional[int] = None,
            v21: Optional[dict] = None) -> ml_collections.ConfigDict:
  from jepa_jax.pretrain.defaults import base_config  # noqa: PLC0415
  config = ml_collections.ConfigDict(config_to_json(base_config()))
  m = config.model
  m.name, m.patch_size, m.tubelet_size = name, spec["patch_size"], spec["tubelet_size"]
  # The precision of the weights as released: a model built from this config reproduces the
  # reference's float32 outputs. Runs pick their own compute dtype (config.model.dtype of the
  # training config that starts from these weights, eval/finetune's encoder_dtype,
  # extract/predict's --encoder-dtype); base_config's bfloat16 would cost 1e-2 here.
  m.dtype = "float32"
  m.uniform_power = bool(uniform_power)
  m.use_rope = bool(use_rope)
  m.pred_num_heads = pred_num_heads
  m.overrides = dict(overrides)
  if spec["in_chans"] != 3:
    m.overrides["in_chans"] = spec["in_chans"]
  if v21 is not None:  # the 2.1 architecture, with what the file has or lacks of its parts
    m.vjepa21 = True
    m.overrides.update(modality_embedding=v21["modality_embedding"],
                       image_frames=v21["image_frames"])
    if pspec is not None:
      m.pred_levels = pspec.get("levels", 1)
      m.pred_out_embed_dim = pspec.get("out_embed_dim")
      m.pred_return_context = bool(pspec.get("return_context", False))
  if pspec is not None:
    m.pred_embed_dim, m.pred_depth = pspec["pred_embed_dim"], pspec["pred_depth"]
    if use_rope:  # V-JEPA 2: one token per (mask, dataset); a group's masks share its token
      m.num_mask_tokens = pspec["num_mask_tokens"]
      m.mask_token_per = "clip_length"
    elif pspec["num_mask_tokens"] != len(config.masks):
      log.warning("the predictor has %d mask tokens but config.masks has %d masks: give the "
                  "trainer that many masks to fine-tune it", pspec["num_mask_tokens"],
                  len(config.masks))
  config.data.crop_size, config.data.num_frames = int(img), int(frames)
  return config


def _abstract_params(encoder, predictor) -> dict:
  """Parameter shapes (unscanned names come from ``infer.torch_shapes`` either way). Traced with
  scanned blocks: tracing one block instead of 40 makes this ~depth times faster."""
  from jepa_jax.pretrain import train_state  # noqa: PLC0415
  # einsum attention: shapes do not depend on it, and a cudnn setting must not fail on CPU.
  fast = dict(scan=True, attention="einsum", remat="none")
  encoder = encoder.clone(block=encoder.block.replace(**fast))
  predictor = predictor.clone(block=predictor.block.replace(**fast))
  return jax.eval_shape(lambda k: train_state.init_params(encoder, predictor, k),
                        jax.random.PRNGKey(0))


def _own_copy(converted: np.ndarray, source: np.ndarray) -> np.ndarray:
  """A parameter in its own contiguous float32 memory, after which the file's pages behind
  ``source`` are dropped (``torch_io.release``): conversion holds one tensor of the file at a
  time, and the checkpoint writer needs no copies of its own (``save_converted``). Zero-stride
  views (shape-only trees of tests and size checks) stay views: a copy would allocate them."""
  if 0 in converted.strides and converted.size > 1:
    return np.asarray(converted, np.float32)
  out = np.ascontiguousarray(converted, np.float32)
  if not np.may_share_memory(out, source):
    from jepa_jax.convert import torch_io  # noqa: PLC0415 - only arrays it mapped are released
    torch_io.release(source)
  return out


def _float32(tree):
  # Keeps float32 arrays as they are (no copy), so abstract-shape tests stay allocation-free.
  return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), tree)


# --- jepa_jax -> reference: pretrained models ------------------------------------------------

def export_torch(params: Mapping, config, which: str = "both") -> dict:
  """``{"encoder", "predictor", "target"}`` params + their config -> reference state dicts.

  Returns ``{"encoder", "target_encoder"[, "predictor"]}`` of numpy arrays under the released
  files' names (``module.backbone.`` prefixes, ``pos_embed`` buffers included). ``which``: ``both``
  writes the online encoder as ``encoder`` and the EMA target as ``target_encoder``, as the
  reference does; ``target`` / ``online`` writes that one encoder under both keys, so a reference
  tool reads it whatever its ``checkpoint_key``.
  """
  if which not in WHICH:
    raise ValueError(f"which must be one of {WHICH}, got {which!r}")
  from jepa_jax import models  # noqa: PLC0415
  from jepa_jax.pretrain import config as config_lib  # noqa: PLC0415
  config = ml_collections.ConfigDict(config_to_json(config)) if not isinstance(
      config, ml_collections.ConfigDict) else config
  if not config.get("model") or not config.get("data"):
    raise ConversionError("the checkpoint's config has no model/data section, so the model (and "
                          "its position tables) cannot be rebuilt; convert a checkpoint written by "
                          "jepa_jax's trainer or converter")
  params = {k: unstack_blocks(v) for k, v in params.items()}
  if "encoder" not in params and "target" not in params:
    raise ConversionError(f"no encoder in the parameters (groups: {sorted(params)})")
  online = params.get("encoder", params.get("target"))
  target = params.get("target", online)
  chosen = {"both": (online, target), "target": (target, target), "online": (online, online)}
  num_masks = params["predictor"]["mask_tokens"].shape[0] if "predictor" in params else 2
  encoder, predictor = models.from_spec(config_lib.model_spec(config, num_masks=num_masks))
  abstract = _abstract_params(encoder, predictor)
  label = f"the model of the checkpoint's config (vit_{config.model.name}, " \
          f"overrides {dict(config.model.get('overrides', {}) or {})})"
  out = {}
  for group, tree in zip(("encoder", "target_encoder"), chosen[which]):
    state = to_torch(tree, "encoder")
    infer.check_state(state, infer.torch_shapes(abstract["encoder"], "encoder"), group, label)
    if not encoder.use_rope:  # RoPE modules hold no table: strict=True loads would refuse one
      state["pos_embed"] = np.asarray(encoder.position_table())[None]
    out[group] = {ENCODER_PREFIX + k: v for k, v in state.items()}
  if "predictor" in params:
    state = to_torch(params["predictor"], "predictor")
    infer.check_state(state, infer.torch_shapes(abstract["predictor"], "predictor"), "predictor",
                      label)
    if not predictor.use_rope:
      state["predictor_pos_embed"] = np.asarray(predictor.position_table())[None]
    out["predictor"] = {ENCODER_PREFIX + k: v for k, v in state.items()}
  return out


# --- probes ----------------------------------------------------------------------------------

def convert_probe_state_dict(checkpoint: Mapping, num_heads: Optional[int] = None,
                             model: Optional[str] = None, probe_index: int = 0):
  """A reference probe checkpoint -> ``(params, probe_config)``.

  V-JEPA saves ``{'classifier': state_dict}``; V-JEPA 2 ``{'classifiers': [state_dict, ...]}``
  (one per LR/WD setting its eval trains in parallel; ``probe_index`` picks one, 0 as the
  reference's inference does); a bare state dict is taken as is. The layout (``blocks_on``) is read
  from the names (``infer.probe_spec``). Heads (not in the shapes) come from ``num_heads``, else
  V-JEPA 2 probes use 16 (every released V-JEPA 2 eval config), V-JEPA ones the encoder's: from
  the named size ``model``, else from the named size of the probe's width."""
  if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("classifiers"), (list, tuple)):
    probes = checkpoint["classifiers"]
    if not 0 <= probe_index < len(probes):
      raise ConversionError(f"--probe-index {probe_index}: the file holds {len(probes)} probes "
                            f"(0 .. {len(probes) - 1})")
    checkpoint = {"classifier": probes[probe_index]}
  models_in_file = [k for k in ("encoder", "target_encoder", "predictor")
                    if isinstance(checkpoint, Mapping) and k in checkpoint]
  if models_in_file:
    raise ConversionError(f"this is a pretrained-model file ({', '.join(models_in_file)}), not an "
                          "attentive probe; convert it without --kind probe")
  state = checkpoint.get("classifier", checkpoint) if isinstance(checkpoint, Mapping) else None
  if not isinstance(state, Mapping) or not state or not all(
      isinstance(v, np.ndarray) for v in state.values()):
    keys = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
    raise ConversionError(f"no probe state dict found ({keys}); the reference's eval saves it "
                          "under 'classifier' (V-JEPA) or 'classifiers' (V-JEPA 2)")
  state = strip_prefixes(state)
  if "patch_embed.proj.weight" in state:
    raise ConversionError("this is a bare encoder state dict (patch_embed), not an attentive "
                          "probe; convert it without --kind probe")
  spec = infer.probe_spec(state)
  if num_heads is None and spec["blocks_on"] == "tokens":
    num_heads = VJEPA2_PROBE_HEADS
  if num_heads is None and model is not None:
    from jepa_jax.models import size_spec  # noqa: PLC0415
    num_heads = size_spec(model)["num_heads"]
  if num_heads is None:
    num_heads = infer.heads_for_width(spec["embed_dim"])
  if num_heads is None:
    raise ConversionError(f"the probe's width {spec['embed_dim']} is no named size's, so its "
                          "number of heads is unknown; pass --num-heads (the encoder's heads)")
  probe_config = dict(spec, num_heads=int(num_heads))
  expected = _probe_layout(infer.torch_shapes(_abstract_probe(probe_config), "probe"),
                           probe_config)
  infer.check_state(state, expected, "probe", f"an attentive probe {probe_config}")
  return _float32(from_torch(state, "probe")), probe_config


def _build_probe(probe_config: Mapping):
  from jepa_jax.models import build_probe  # noqa: PLC0415
  return build_probe(**{k: v for k, v in probe_config.items() if k != "embed_dim"})


def _probe_layout(state: dict, probe_config: Mapping) -> dict:
  """V-JEPA 2's cross-attention has no (unused) ``proj``: drop the one ``to_torch`` writes."""
  if probe_config.get("blocks_on", "query") == "tokens":
    return {k: v for k, v in state.items() if not k.startswith(
        "pooler.cross_attention_block.xattn.proj.")}
  return state


def _abstract_probe(probe_config: Mapping):
  from jepa_jax import models  # noqa: PLC0415
  return models.abstract_params(_build_probe(probe_config), probe_config["embed_dim"])


def export_probe(params: Mapping, probe_config: Mapping) -> dict:
  """Probe params -> ``{'classifier': state dict}`` with the reference eval's ``module.`` names."""
  state = _probe_layout(to_torch(unstack_blocks(params), "probe"), probe_config)
  expected = _probe_layout(infer.torch_shapes(_abstract_probe(probe_config), "probe"),
                           probe_config)
  infer.check_state(state, expected, "probe",
                    f"the probe of the checkpoint's config {dict(probe_config)}")
  state = {PROBE_PREFIX + k: v for k, v in state.items()}
  if probe_config.get("blocks_on", "query") == "tokens":  # V-JEPA 2's eval saves a list
    return {"classifiers": [state]}
  return {"classifier": state}


def save_probe(directory: str, params: Mapping, probe_config: Mapping, step: int = 0, *,
               class_names=None, eval_info: Optional[dict] = None) -> str:
  """Write ``<directory>/checkpoints/<step>/{probe,config}`` (``checkpoint.save_probe``, the one
  probe layout), with ``class_names`` and ``eval_info`` (a released probe's ``{"dataset": ...}``)
  if given; returns the checkpoints directory."""
  _fresh_checkpoints_dir(directory)
  return ckpt_lib.save_probe(directory, params, config_to_json(probe_config), step=step,
                             class_names=class_names, eval_info=eval_info)


def load_probe(path: str, step: Optional[int] = None):
  """``(params, probe_config)`` of a probe checkpoint: converted, or trained by ``jepa_jax.eval``
  (``checkpoint.load_probe``)."""
  return ckpt_lib.load_probe(path, step)


# --- files -----------------------------------------------------------------------------------

def _fresh_checkpoints_dir(directory: str) -> str:
  path = os.path.join(os.fspath(directory), "checkpoints")
  if os.path.isdir(path) and os.listdir(path):
    raise ConversionError(f"{path} already holds checkpoints; choose another --out or delete it")
  return path


def load_torch_checkpoint(path: str, model: Optional[str] = None, **kwargs):
  """``(params, config)`` of a reference ``.pth.tar`` (see ``convert_state_dicts`` for kwargs)."""
  from jepa_jax.convert import torch_io  # noqa: PLC0415
  return convert_state_dicts(torch_io.load(path), model, **kwargs)


def load_torch_probe(path: str, num_heads: Optional[int] = None, model: Optional[str] = None,
                     probe_index: int = 0):
  """``(params, probe_config)`` of a reference probe ``.pth.tar`` / ``.pt``."""
  from jepa_jax.convert import torch_io  # noqa: PLC0415
  return convert_probe_state_dict(torch_io.load(path), num_heads=num_heads, model=model,
                                  probe_index=probe_index)


def _converted_spec(params: Mapping, config):
  """The spec of converted weights: their config's model, the predictor's mask tokens as the
  file has them (None without a predictor)."""
  from jepa_jax.pretrain import config as config_lib  # noqa: PLC0415
  config = ml_collections.ConfigDict(config_to_json(config)) if not isinstance(
      config, ml_collections.ConfigDict) else config
  if "predictor" not in params:
    return config_lib.model_spec(config).replace(predictor=None)
  return config_lib.model_spec(config, num_masks=params["predictor"]["mask_tokens"].shape[0])


def save_converted(directory: str, params: Mapping, config) -> str:
  """Params-only orbax checkpoint (step 0) + config, loadable with ``checkpoint.load_params``."""
  _fresh_checkpoints_dir(directory)
  with _numpy_leaves_written_in_place():
    return ckpt_lib.save_params(directory, dict(params), config=config_to_json(config), step=0,
                                low_memory=True, model_spec=_converted_spec(params, config))


@contextlib.contextmanager
def _numpy_leaves_written_in_place():
  """orbax deep-copies every numpy leaf before writing it (against changes during an
  asynchronous save): a second copy of a whole model. The converter's save is synchronous and
  its arrays are its own, so for its duration numpy leaves are written from where they are."""
  import orbax.checkpoint as ocp  # noqa: PLC0415
  previous = ocp.type_handlers.get_type_handler(np.ndarray)
  ocp.type_handlers.register_type_handler(
      np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False), override=True)
  try:
    yield
  finally:
    ocp.type_handlers.register_type_handler(np.ndarray, previous, override=True)


def write_torch_checkpoint(ckpt: str, out: str, which: str = "both",
                           step: Optional[int] = None, resumable: bool = False) -> dict:
  """A jepa_jax checkpoint (trainer workdir or converted) -> a ``.pth.tar`` in the released
  structure; returns the written dict's state-dict names -> shapes, for reporting.

  ``resumable``: a pretraining checkpoint with what the reference's ``load_checkpoint`` reads to
  resume (``resumable_entries``): its AdamW state, ``epoch`` and a ``scaler``."""
  from jepa_jax.convert import torch_io  # noqa: PLC0415
  loaded, params, config = load_model_checkpoint(ckpt, step, "--to-torch")
  step = loaded.step
  state_dicts = export_torch(params, config, which)
  # 'epoch' is read (for logging) by the reference eval's load_pretrained.
  extra = dict(epoch=0)
  if resumable:
    if loaded.kind != ckpt_lib.PRETRAIN or which != "both":
      raise ConversionError(f"--resumable needs a pretraining checkpoint written with --which both "
                            f"(this one is {loaded.kind!r}, --which {which}): only it has the "
                            "optimiser state the reference resumes with")
    extra = resumable_entries(ckpt, step, config, state_dicts)
  torch_io.save(out, dict(state_dicts, jepa_jax_step=int(step), **extra,
                          **{ROPE_MARKER: bool((config.get("model") or {}).get("use_rope"))}))
  return state_dicts


def load_model_checkpoint(ckpt: str, step: Optional[int], direction: str,
                          groups: Optional[tuple] = None):
  """``(loaded, params, config)`` of a jepa_jax model checkpoint for export (``direction``, the
  flag, names the fix when ``ckpt`` is a probe). A fine-tuning checkpoint gives its one encoder
  (no EMA target, no predictor; the head has no place in a pretrained model's file) and the
  pretraining config ``export_torch`` rebuilds it from. ``groups``: read only these parameter
  groups (``checkpoint.load``), or the other encoder where the checkpoint has none of them."""
  try:
    loaded = ckpt_lib.load(ckpt, step, groups)
    if groups is not None and not {"encoder", "target"} & set(loaded.params):
      loaded = ckpt_lib.load(ckpt, loaded.step, tuple(groups) + ("encoder", "target"))
  except ckpt_lib.CheckpointError as e:
    if _kind(ckpt, step) == ckpt_lib.PROBE:
      raise ConversionError(f"--ckpt {ckpt} is an attentive probe, not a model; export it with "
                            f"{direction} --kind probe") from e
    raise
  params, config = loaded.params, ckpt_lib.read_config(ckpt, loaded.step)
  if loaded.kind == ckpt_lib.FINETUNE:
    params, config = {"encoder": params["encoder"]}, finetuned_model_config(config)
  return loaded, params, config


# A fresh torch.cuda.amp.GradScaler's state: the reference's pretraining (mixed precision) builds
# one and load_checkpoint loads 'scaler' into it; jepa_jax trains without loss scaling.
FRESH_GRAD_SCALER = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                     "growth_interval": 2000, "_growth_tracker": 0}


def _experiment(config):
  from jepa_jax.pretrain import experiment  # noqa: PLC0415
  config = ml_collections.ConfigDict(config_to_json(config))
  config.mesh.data, config.mesh.fsdp = 1, 1  # conversion runs on one device
  return experiment.build(config, devices=jax.devices()[:1])


def _adam_state(opt_state):
  import optax  # noqa: PLC0415
  found = [x for x in jax.tree_util.tree_leaves(
      opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
      if isinstance(x, optax.ScaleByAdamState)]
  if len(found) != 1:
    raise ConversionError("the optimiser state holds no single Adam state (not make_optimizer's)")
  return found[0]


def resumable_entries(ckpt: str, step: int, config, state_dicts: Mapping) -> dict:
  """``opt`` (Adam's moments in ``torch.optim.AdamW.state_dict()`` layout, ``optimizer``),
  ``epoch`` (``step // config.optim.ipe``: the reference resumes at the start of that epoch and
  steps its schedulers ``epoch * ipe`` times) and ``scaler`` of a pretraining checkpoint."""
  from jepa_jax import optim  # noqa: PLC0415
  from jepa_jax.convert import optimizer  # noqa: PLC0415
  exp = _experiment(config)
  manager = ckpt_lib.make_manager(ckpt_lib.checkpoint_dir(ckpt), read_only=True, async_save=False)
  state, _ = ckpt_lib.restore_train_state(manager, step, exp.sharded_abstract_state)
  manager.close()
  adam = _adam_state(state.opt_state)
  moments = {name: {kind: to_torch(unstack_blocks(jax.device_get(tree[kind])), kind)
                    for kind in ("encoder", "predictor")}
             for name, tree in (("mu", adam.mu), ("nu", adam.nu))}
  hyper = dict(state.opt_state[1].hyperparams, **optim.applied_hyperparams(state.opt_state))
  states = {kind: {k[len(ENCODER_PREFIX):]: v for k, v in state_dicts[group].items()}
            for kind, group in (("encoder", "encoder"), ("predictor", "predictor"))}
  opt = optimizer.export_adamw(states, moments["mu"], moments["nu"], int(adam.count), hyper)
  return dict(opt=opt, epoch=int(step) // int(exp.optim_cfg.ipe), scaler=dict(FRESH_GRAD_SCALER))


def save_resumable(path: str, config, out: str, **kwargs) -> int:
  """A reference training checkpoint (``encoder``, ``predictor``, ``target_encoder``, ``opt``) ->
  a jepa_jax pretraining checkpoint in ``out/checkpoints`` that ``python -m jepa_jax.main
  --config=<the same config> --workdir=out`` resumes: parameters, EMA target, Adam's moments and
  count; the step is the count (the updates made). ``config``: the run's training config (its
  model must fit the file; ``kwargs`` as ``convert_state_dicts``). Returns the step."""
  from jepa_jax.convert import optimizer, torch_io  # noqa: PLC0415
  import optax  # noqa: PLC0415
  checkpoint = torch_io.load(path)
  if "opt" not in checkpoint or not isinstance(checkpoint["opt"], Mapping):
    raise ConversionError(f"{path} has no optimiser state ('opt'): convert it without --resumable "
                          "(and start a run from it with --config.init_from)")
  params, _ = convert_state_dicts(checkpoint, **kwargs)
  groups = _model_groups(checkpoint)
  mu, nu, count = optimizer.import_adamw(checkpoint["opt"], {
      "encoder": groups["encoder"], "predictor": groups["predictor"]})
  from jepa_jax.pretrain import config as config_lib  # noqa: PLC0415
  from jepa_jax.pretrain import train_state  # noqa: PLC0415
  exp = _experiment(config)
  scan = bool(config.model.get("scan"))
  layout = (lambda tree: stack_blocks(tree)) if scan else (lambda tree: tree)
  new_params = {k: layout(params[k]) for k in ("encoder", "predictor")}
  new_mu = {k: layout(from_torch(mu[k], k)) for k in ("encoder", "predictor")}
  new_nu = {k: layout(from_torch(nu[k], k)) for k in ("encoder", "predictor")}
  want = jax.tree_util.tree_map(lambda s: s.shape, exp.abstract_state.params)
  for name, tree in (("parameters", new_params), ("Adam moments", new_mu)):
    if jax.tree_util.tree_map(np.shape, tree) != want:
      raise ConversionError(f"the file's {name} do not fit the model of the given config; pass the "
                            "config of the run to resume (its model, scan and mask tokens)")
  state = train_state.TrainState.create(params=new_params, tx=exp.tx,
                                        target_params=layout(params["target"]))
  opt_state = optax.tree_utils.tree_set(state.opt_state, mu=new_mu, nu=new_nu)
  opt_state = jax.tree_util.tree_map_with_path(
      lambda p, x: np.full_like(x, count) if getattr(p[-1], "name", None) == "count" else x,
      opt_state)
  step_dtype = exp.abstract_state.step.dtype
  state = state.replace(step=np.asarray(count, step_dtype), opt_state=opt_state)
  directory = os.path.join(os.fspath(out), "checkpoints")
  _fresh_checkpoints_dir(out)
  manager = ckpt_lib.make_manager(directory, async_save=False, keep=None)
  ckpt_lib.save(manager, count, state=state, config=config,
                model_spec=config_lib.model_spec(config), force=True)
  manager.wait_until_finished()
  manager.close()
  return count


def finetuned_model_config(saved: Mapping) -> ml_collections.ConfigDict:
  """A fine-tuning checkpoint's config (``model``: the encoder's resolved architecture, ``data``:
  the fine-tuning clips) as the pretraining config ``export_torch`` rebuilds the model from."""
  arch, data = dict(saved.get("model") or {}), dict(saved.get("data") or {})
  if not arch.get("name") or not data.get("crop_size"):
    raise ConversionError("the fine-tuning checkpoint's config does not name its encoder's "
                          "architecture (written before jepa_jax saved it); fine-tune again, or "
                          "convert the pretrained checkpoint it started from")
  overrides = dict(arch.get("overrides") or {})
  spec = dict(patch_size=arch["patch_size"], tubelet_size=arch["tubelet_size"],
              in_chans=overrides.pop("in_chans", 3))
  return _config(arch["name"], overrides, spec, data["crop_size"], data["num_frames"],
                 arch.get("uniform_power", True), None, bool(arch.get("use_rope")))


def write_torch_probe(ckpt: str, out: str, step: Optional[int] = None) -> dict:
  from jepa_jax.convert import torch_io  # noqa: PLC0415
  params, probe_config = load_probe_checkpoint(ckpt, step)
  state_dicts = export_probe(params, probe_config)
  torch_io.save(out, dict(state_dicts, epoch=0))
  return state_dicts


def load_probe_checkpoint(ckpt: str, step: Optional[int] = None):
  """``load_probe`` for export: a model checkpoint given as the probe names the fix."""
  try:
    return load_probe(ckpt, step)
  except ckpt_lib.CheckpointError as e:
    if _kind(ckpt, step) not in (None, ckpt_lib.PROBE):
      raise ConversionError(f"--ckpt {ckpt} is a model checkpoint, not an attentive probe; export "
                            "it without --kind probe") from e
    raise


def _kind(ckpt: str, step: Optional[int]) -> Optional[str]:
  """The checkpoint's kind (``checkpoint.checkpoint_kind``), None if it cannot be read: only to
  name the right flag after a failed load."""
  try:
    return ckpt_lib.checkpoint_kind(ckpt, step)
  except Exception:  # noqa: BLE001 - the original error is reported instead
    return None
