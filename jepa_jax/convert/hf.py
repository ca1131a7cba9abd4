"""Hugging Face transformers' V-JEPA 2 (``VJEPA2Model``, ``VJEPA2ForVideoClassification``) <->
jepa_jax checkpoints: ``import_hf``, ``export_hf``, ``export_hf_probe``.

A transformers directory is ``config.json`` (``VJEPA2Config``) plus safetensors weights
(``safetensors_io``) holding the reference's parameters under other names, so this module only
renames (``_BLOCK``, ``_POOLER_BLOCK``, ``_MODULES``: fused ``qkv`` / ``kv`` split by rows, the
``mask_tokens.{i}`` stacked, a classifier's encoder and predictor under ``vjepa2.``) onto the names
``names`` maps to jepa_jax's trees. What maps is what transformers' V-JEPA 2 is: 3D-RoPE models
(no sin-cos option, so V-JEPA is refused), eps 1e-6, exact GELU, MLP ratio 4 and the V-JEPA 2
probe layout. Its RoPE numbers tokens on the grid of ``config.crop_size``, so the export records
the clip size the model or probe ran at. Kept, as it cannot be represented: its pooler's eps is
1e-6 where the reference's probes (and ``attentive_probe.PROBE_LN_EPS``) use 1e-5
(``tests/test_hf_convert.py`` measures the effect). ``transformers`` (``jepa_jax[hf]``) is
imported only where a directory is read or written.
"""
import json
import logging
import os
import re
from typing import Callable, Iterable, Iterator, Mapping, Optional

import numpy as np

from jepa_jax import checkpoint as ckpt_lib
from jepa_jax.config_fields import config_to_json
from jepa_jax.convert import infer, reference, safetensors_io
from jepa_jax.convert.names import ConversionError, from_torch_items
from jepa_jax.errors import MissingDependencyError

log = logging.getLogger(__name__)

MODEL_TYPE = "vjepa2"
BASE_PREFIX = "vjepa2."   # VJEPA2ForVideoClassification.base_model_prefix
MODEL_ARCH, CLASSIFIER_ARCH = "VJEPA2Model", "VJEPA2ForVideoClassification"
HF_MASK_TOKENS = "predictor.embeddings.mask_tokens"
PROBE_DIR = "probe"       # --from-hf of a classifier: the probe goes to OUT/probe
LN_EPS = 1e-6             # jepa_jax's encoders and predictors (models.layers.LN_EPS)

# Reference block module -> transformers module(s); a fused projection maps to its parts, which
# split its output rows in order.
_BLOCK = {"norm1": ("norm1",), "norm2": ("norm2",),
          "attn.qkv": ("attention.query", "attention.key", "attention.value"),
          "attn.proj": ("attention.proj",), "mlp.fc1": ("mlp.fc1",), "mlp.fc2": ("mlp.fc2",)}
_POOLER_BLOCK = {"norm1": ("layer_norm1",), "norm2": ("layer_norm2",),
                 "attn.qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                 "attn.proj": ("self_attn.out_proj",), "mlp.fc1": ("mlp.fc1",),
                 "mlp.fc2": ("mlp.fc2",)}
_XATTN, _HF_XATTN = "pooler.cross_attention_block.", "pooler.cross_attention_layer."
_MODULES = {
    "encoder": {"patch_embed.proj": ("encoder.embeddings.patch_embeddings.proj",),
                "norm": ("encoder.layernorm",)},
    "predictor": {"predictor_embed": ("predictor.embeddings.predictor_embeddings",),
                  "predictor_norm": ("predictor.layernorm",),
                  "predictor_proj": ("predictor.proj",)},
    "probe": {_XATTN + "norm1": (_HF_XATTN + "layer_norm1",),
              _XATTN + "xattn.q": (_HF_XATTN + "cross_attn.q_proj",),
              _XATTN + "xattn.kv": (_HF_XATTN + "cross_attn.k_proj",
                                    _HF_XATTN + "cross_attn.v_proj"),
              _XATTN + "norm2": (_HF_XATTN + "layer_norm2",),
              _XATTN + "mlp.fc1": (_HF_XATTN + "mlp.fc1",),
              _XATTN + "mlp.fc2": (_HF_XATTN + "mlp.fc2",),
              "linear": ("classifier",)},
}
# kind -> (reference blocks prefix, transformers blocks prefix, block table)
_BLOCKS = {"encoder": ("blocks", "encoder.layer", _BLOCK),
           "predictor": ("predictor_blocks", "predictor.layer", _BLOCK),
           "probe": ("pooler.blocks", "pooler.self_attention_layers", _POOLER_BLOCK)}
# Same tensor, same name on both sides.
_SAME = {"encoder": (), "predictor": (), "probe": ("pooler.query_tokens",)}
# transformers' top-level module of each kind's parameters (a classifier's others sit under
# ``vjepa2.``).
_KIND_OF_MODULE = {"encoder": "encoder", "predictor": "predictor", "pooler": "probe",
                   "classifier": "probe"}


# --- names -----------------------------------------------------------------------------------

def _hf_modules(module: str, kind: str) -> Optional[tuple]:
  ref_blocks, hf_blocks, table = _BLOCKS[kind]
  m = re.match(rf"^{re.escape(ref_blocks)}\.(\d+)\.(.+)$", module)
  if m:
    parts = table.get(m.group(2))
    return None if parts is None else tuple(f"{hf_blocks}.{m.group(1)}.{p}" for p in parts)
  return _MODULES[kind].get(module)


def _reference_module(module: str, kind: str) -> Optional[tuple[str, int, int]]:
  """``(reference module, part, parts)`` of a transformers module, or None."""
  ref_blocks, hf_blocks, table = _BLOCKS[kind]
  m = re.match(rf"^{re.escape(hf_blocks)}\.(\d+)\.(.+)$", module)
  if m:
    inverse = {p: (ref, i, len(parts)) for ref, parts in table.items() for i, p in enumerate(parts)}
    found = inverse.get(m.group(2))
    return None if found is None else (f"{ref_blocks}.{m.group(1)}.{found[0]}",) + found[1:]
  for ref, parts in _MODULES[kind].items():
    if module in parts:
      return ref, parts.index(module), len(parts)
  return None


def to_hf(state: Mapping[str, np.ndarray], kind: str) -> dict:
  """A reference state dict (no wrapper prefixes) of ``kind`` -> transformers names. Fused
  projections are split into row blocks, which are views: nothing is copied but the mask
  tokens' stack."""
  out, mask_tokens = {}, {}
  for name, value in state.items():
    if kind == "predictor" and re.fullmatch(r"mask_tokens\.\d+", name):
      mask_tokens[int(name.split(".")[1])] = value
      continue
    if name in _SAME[kind]:
      out[name] = value
      continue
    module, _, leaf = name.rpartition(".")
    targets = _hf_modules(module, kind)
    if targets is None:
      raise ConversionError(f"{kind} parameter {name} has no counterpart in transformers' "
                            "V-JEPA 2; only V-JEPA 2 (RoPE) models and probes map onto it")
    for target, part in zip(targets, np.split(value, len(targets), axis=0)):
      out[f"{target}.{leaf}"] = part
  if mask_tokens:
    out[HF_MASK_TOKENS] = np.stack([np.reshape(mask_tokens[i], (1, 1, -1))
                                    for i in range(len(mask_tokens))])
  return out


def _grouped(names: Iterable[str], kind: str) -> tuple[dict, Optional[str]]:
  """transformers names of one kind -> ``{reference name: [its parts' names, in order]}`` and
  the mask-token tensor's name (predictor), refusing names that have no reference counterpart
  and fused projections with a part missing."""
  groups, mask_tokens = {}, None
  for name in names:
    if kind == "predictor" and name == HF_MASK_TOKENS:
      mask_tokens = name
      continue
    if name in _SAME[kind]:
      groups[name] = [name]
      continue
    module, _, leaf = name.rpartition(".")
    found = _reference_module(module, kind)
    if found is None:
      raise ConversionError(f"tensor {name} is not one of transformers' V-JEPA 2 {kind} "
                            "parameters this converter knows; is this a VJEPA2Model or "
                            "VJEPA2ForVideoClassification directory?")
    ref_module, part, parts = found
    groups.setdefault(f"{ref_module}.{leaf}", [None] * parts)[part] = name
  for ref, parts in groups.items():
    if None in parts:
      have = [p for p in parts if p is not None]
      raise ConversionError(f"{have[0]} comes without the other parts of {ref} "
                            f"({len(parts)} projections, {len(have)} present); the weights are "
                            "incomplete")
  return dict(sorted(groups.items(), key=lambda kv: infer._natural(kv[0]))), mask_tokens


def reference_items(names: Iterable[str], read: Callable[[str], np.ndarray], kind: str
                    ) -> Iterator[tuple[str, np.ndarray]]:
  """``(reference name, array)`` of one kind's transformers tensors, each read (``read``) when
  its pair is asked for: a fused projection is the concatenation of its parts, the mask tokens
  are the rows of their tensor. Names are checked before anything is read."""
  groups, mask_tokens = _grouped(names, kind)
  for ref, parts in groups.items():
    yield ref, read(parts[0]) if len(parts) == 1 else np.concatenate(
        [read(p) for p in parts], axis=0)
  if mask_tokens is not None:
    tokens = read(mask_tokens)
    for i in range(tokens.shape[0]):
      yield f"mask_tokens.{i}", tokens[i]


def reference_shapes(shapes: Mapping[str, tuple], kind: str) -> dict:
  """``reference_items`` as zero-stride views (shapes without data), for the converter's
  inference and checks (``reference.convert_state_dicts``)."""
  groups, mask_tokens = _grouped(shapes, kind)
  zeros = lambda shape: np.broadcast_to(np.zeros((), np.float32), tuple(shape))  # noqa: E731
  out = {ref: zeros((sum(shapes[p][0] for p in parts),) + tuple(shapes[parts[0]][1:]))
         for ref, parts in groups.items()}
  if mask_tokens is not None:
    for i in range(shapes[mask_tokens][0]):
      out[f"mask_tokens.{i}"] = zeros(shapes[mask_tokens][1:])
  return out


def split_kinds(names: Iterable[str]) -> dict:
  """transformers tensor names -> ``{kind: [names]}`` (``encoder``, ``predictor``, ``probe``),
  the classifier's ``vjepa2.`` prefix stripped."""
  kinds: dict = {}
  for name in names:
    bare = name[len(BASE_PREFIX):] if name.startswith(BASE_PREFIX) else name
    kind = _KIND_OF_MODULE.get(bare.split(".", 1)[0])
    if kind is None:
      raise ConversionError(f"tensor {name} belongs to no part of transformers' V-JEPA 2 "
                            "(encoder, predictor, pooler, classifier)")
    kinds.setdefault(kind, {})[bare] = name
  return kinds


# --- transformers -> jepa_jax ----------------------------------------------------------------

def import_transformers():
  try:
    import transformers  # noqa: PLC0415 - optional dependency, the --to-hf/--from-hf paths only
  except ImportError as e:
    raise MissingDependencyError("converting to or from Hugging Face needs transformers: pip "
                                 "install 'jepa_jax[hf]' (or pip install transformers)") from e
  return transformers


def read_config(directory: str):
  """The ``VJEPA2Config`` of a directory, refused in one line when jepa_jax cannot represent it."""
  path = os.path.join(os.fspath(directory), "config.json")
  if not os.path.isfile(path):
    raise ConversionError(f"{directory} has no config.json; give a transformers model directory "
                          "(save_pretrained's output, or a hub download such as "
                          "facebook/vjepa2-vitl-fpc64-256)")
  with open(path) as f:
    model_type = json.load(f).get("model_type")
  if model_type != MODEL_TYPE:
    raise ConversionError(f"{path} has model_type {model_type!r}; --from-hf reads transformers' "
                          f"V-JEPA 2 models (model_type {MODEL_TYPE!r}, VJEPA2Model or "
                          "VJEPA2ForVideoClassification)")
  try:
    config = import_transformers().VJEPA2Config.from_pretrained(os.fspath(directory))
  except (OSError, ValueError, TypeError) as e:
    first = str(e).strip().splitlines()
    raise ConversionError(f"{path}: transformers cannot read it as a VJEPA2Config "
                          f"({type(e).__name__}: {first[0] if first else ''})") from None
  unsupported = [
      ("patch_size", config.patch_size, isinstance(config.patch_size, int),
       "jepa_jax's patches are square (one int)"),
      ("hidden_act", config.hidden_act, config.hidden_act == "gelu",
       "jepa_jax's MLPs use the exact GELU ('gelu')"),
      ("qkv_bias", config.qkv_bias, bool(config.qkv_bias),
       "jepa_jax's attention has q/k/v biases"),
      ("layer_norm_eps", config.layer_norm_eps, config.layer_norm_eps == LN_EPS,
       f"jepa_jax's encoder and predictor LayerNorms use eps {LN_EPS}"),
      ("pred_mlp_ratio", config.pred_mlp_ratio, float(config.pred_mlp_ratio) == 4.0,
       "jepa_jax's predictor has MLP ratio 4, the reference's vit_predictor's")]
  for field, value, ok, why in unsupported:
    if not ok:
      raise ConversionError(f"{path}: {field}={value!r} cannot be represented in jepa_jax ({why}); "
                            "only models with the V-JEPA 2 reference's settings convert")
  return config


def _class_names(config) -> Optional[list]:
  """id2label in index order, or None where it is transformers' placeholder (LABEL_i)."""
  id2label = {int(k): v for k, v in (config.id2label or {}).items()}
  names = [id2label.get(i, f"LABEL_{i}") for i in range(len(id2label))]
  return None if names == [f"LABEL_{i}" for i in range(len(names))] else names


def import_hf(directory: str, out: str) -> dict:
  """A transformers ``VJEPA2Model`` / ``VJEPA2ForVideoClassification`` directory -> a jepa_jax
  converted-weights checkpoint in ``out`` (encoder and target: the one encoder; the predictor if
  the file has one) and, for a classifier, a probe checkpoint in ``out/probe`` with its class
  names. Tensor by tensor: shapes are checked from the headers first, then each tensor is read,
  converted into its own memory and dropped. Returns what was written, for reporting."""
  import_transformers()
  hf_config = read_config(directory)
  for path in (out, os.path.join(out, PROBE_DIR)):  # before anything is written
    reference._fresh_checkpoints_dir(path)
  with safetensors_io.WeightFiles(directory) as files:
    kinds = split_kinds(files.shapes)
    if "encoder" not in kinds:
      raise ConversionError(f"{directory} holds no encoder weights (encoder.*); is it a V-JEPA 2 "
                            "model directory?")
    shapes = {kind: reference_shapes({bare: files.shapes[full] for bare, full in names.items()},
                                     kind) for kind, names in kinds.items()}
    groups = {"encoder": shapes["encoder"], "target_encoder": shapes["encoder"]}
    if "predictor" in shapes:
      groups["predictor"] = shapes["predictor"]
    # Inference and checks on shapes alone: the model config, or a one-line refusal.
    _, config = reference.convert_state_dicts(
        groups, use_rope=True, num_heads=hf_config.num_attention_heads,
        pred_num_heads=hf_config.pred_num_attention_heads, img_size=hf_config.crop_size,
        num_frames=hf_config.frames_per_clip, encoder_only="predictor" not in shapes)
    probe_config = None
    if "probe" in shapes:
      _, probe_config = reference.convert_probe_state_dict(
          shapes["probe"], num_heads=hf_config.num_attention_heads)

    def convert(kind):
      names = kinds[kind]
      return from_torch_items(reference_items(names, lambda bare: files.read(names[bare]), kind),
                              kind, leaf_fn=reference._own_copy)

    encoder = convert("encoder")
    params = {"encoder": encoder, "target": encoder}
    if "predictor" in kinds:
      params["predictor"] = convert("predictor")
    written = {"model": reference.save_converted(out, params, config), "config": config,
               "predictor": "predictor" in params}
    del params, encoder
    if probe_config is not None:
      probe = convert("probe")
      names = _class_names(hf_config)
      written["probe"] = ckpt_lib.save_probe(os.path.join(out, PROBE_DIR), probe, probe_config,
                                             class_names=names)
      written["probe_config"], written["class_names"] = probe_config, names
      log.info("the probe's LayerNorms run at eps %g in jepa_jax, as the reference's probes "
               "were trained; transformers' pooler runs them at %g, so logits differ slightly "
               "(hf.py)", _probe_ln_eps(), hf_config.layer_norm_eps)
  return written


def _probe_ln_eps() -> float:
  from jepa_jax.models import attentive_probe  # noqa: PLC0415
  return attentive_probe.PROBE_LN_EPS


# --- jepa_jax -> transformers ----------------------------------------------------------------

def _model_fields(config, num_masks: Optional[int]) -> dict:
  """``VJEPA2Config`` fields of the model ``config`` builds (with its predictor's fields if
  ``num_masks``, its mask tokens, is given), refused where transformers has no way to say it."""
  from jepa_jax import models  # noqa: PLC0415
  from jepa_jax.pretrain import config as config_lib  # noqa: PLC0415
  import ml_collections  # noqa: PLC0415
  config = ml_collections.ConfigDict(config_to_json(config))
  encoder, predictor = models.from_spec(config_lib.model_spec(config, num_masks=num_masks))
  height, width = encoder.clip_shape()[2:4]
  if height != width:
    raise ConversionError(f"the model's clips are {height}x{width} px; transformers' VJEPA2Config "
                          "has one crop_size (square clips): set config.data.crop_size to one "
                          "int")
  fields = dict(patch_size=encoder.patch_size, crop_size=int(height),
                frames_per_clip=encoder.num_frames, tubelet_size=encoder.tubelet_size,
                hidden_size=encoder.embed_dim, in_chans=encoder.in_chans,
                num_attention_heads=encoder.block.num_heads, num_hidden_layers=encoder.depth,
                mlp_ratio=float(encoder.block.mlp_ratio), layer_norm_eps=LN_EPS, qkv_bias=True,
                hidden_act="gelu", dtype="float32")
  if num_masks is not None:
    fields.update(pred_hidden_size=predictor.predictor_embed_dim,
                  pred_num_attention_heads=predictor.block.num_heads,
                  pred_num_hidden_layers=predictor.depth,
                  pred_num_mask_tokens=predictor.num_mask_tokens,
                  pred_mlp_ratio=float(predictor.block.mlp_ratio),
                  pred_zero_init_mask_tokens=bool(predictor.zero_init_mask_tokens))
  return fields


def _model_state(ckpt: str, step: Optional[int], which: str, encoder_only: bool, flag: str):
  """``(transformers-named state, VJEPA2Config fields)`` of a jepa_jax model checkpoint."""
  if which not in ("target", "online"):
    raise ConversionError(f"--which {which}: a transformers VJEPA2Model holds one encoder; pass "
                          "--which target (the EMA encoder, default) or --which online")
  # One encoder is written: the other is not read (a second copy of the model in memory).
  groups = ("target" if which == "target" else "encoder", "predictor")
  _, params, config = reference.load_model_checkpoint(ckpt, step, "--to-hf", groups)
  if not (config.get("model") or {}).get("use_rope"):
    raise ConversionError(
        f"{flag} {ckpt} is a V-JEPA model with fixed sin-cos position embeddings; transformers' "
        "VJEPA2Config has only V-JEPA 2's 3D RoPE (no absolute positions), so it cannot be "
        "represented: export it with --to-torch instead")
  prefix = reference.ENCODER_PREFIX
  states = {group: {k[len(prefix):]: v for k, v in sd.items()}
            for group, sd in reference.export_torch(params, config, which).items()}
  has_predictor = "predictor" in states and not encoder_only
  if "predictor" not in states and not encoder_only:
    raise ConversionError(f"{flag} {ckpt} has no predictor, which a transformers VJEPA2Model "
                          "holds; pass --encoder-only to write the encoder alone (transformers "
                          "then initialises a predictor at random and reports its keys missing)")
  num_masks = sum(k.startswith("mask_tokens.") for k in states["predictor"]) if has_predictor \
      else None
  fields = _model_fields(config, num_masks)
  out = to_hf(states["target_encoder"], "encoder")
  if has_predictor:
    out.update(to_hf(states["predictor"], "predictor"))
  return out, fields


def _write(directory: str, state: Mapping, fields: dict, architecture: str) -> str:
  transformers = import_transformers()
  directory = os.fspath(directory)
  os.makedirs(directory, exist_ok=True)
  existing = [f for f in os.listdir(directory) if f.endswith(".safetensors") or f in (
      "config.json", safetensors_io.INDEX_NAME)]
  if existing:
    raise ConversionError(f"{directory} already holds {sorted(existing)}; choose another "
                          "directory or delete them")
  config = transformers.VJEPA2Config(architectures=[architecture], **fields)
  path = os.path.join(directory, safetensors_io.WEIGHTS_NAME)
  safetensors_io.write(path, state)
  config.save_pretrained(directory)
  return path


def export_hf(ckpt: str, directory: str, which: str = "target", step: Optional[int] = None,
              encoder_only: bool = False) -> dict:
  """A jepa_jax model checkpoint (trainer workdir, converted or fine-tuned) -> a directory that
  ``transformers.VJEPA2Model.from_pretrained`` loads with no missing or unexpected keys. Returns
  the ``VJEPA2Config`` fields written."""
  import_transformers()  # before reading a checkpoint it could not write
  state, fields = _model_state(ckpt, step, which, encoder_only, "--ckpt")
  _write(directory, state, fields, MODEL_ARCH)
  return fields


def read_labels(path: str, num_classes: int) -> list:
  from jepa_jax.predict import read_label_names  # noqa: PLC0415 - the one label-file reader
  try:
    return read_label_names(path, num_classes)
  except (OSError, ValueError) as e:
    raise ConversionError(f"--labels: {e}") from None


def export_hf_probe(probe_ckpt: str, directory: str, encoder_ckpt: Optional[str] = None,
                    which: Optional[str] = None, step: Optional[int] = None,
                    labels: Optional[str] = None, encoder_only: bool = False) -> dict:
  """A jepa_jax attentive probe and its encoder -> a directory that
  ``transformers.VJEPA2ForVideoClassification.from_pretrained`` loads with no missing or
  unexpected keys, with ``id2label``: from ``labels`` (one name per line), else the names saved
  with the probe, else ``class_i``.

  ``encoder_ckpt`` defaults to the encoder the probe was trained on (recorded by
  ``jepa_jax.eval``), at that step; ``which`` to that run's ``checkpoint_key``, else the target.
  The clip size written is the probe's protocol's (transformers' RoPE numbers tokens on it).
  Returns the ``VJEPA2Config`` fields written."""
  import_transformers()
  params, probe_config = reference.load_probe_checkpoint(probe_ckpt, step)
  trained = ckpt_lib.read_probe_config(probe_ckpt, step).get("eval") or {}
  protocol = trained.get("protocol") or {}
  encoder_step = None
  if encoder_ckpt is None:
    encoder_ckpt, encoder_step = trained.get("checkpoint"), trained.get("step")
    if not encoder_ckpt:
      raise ConversionError("the probe does not record the encoder it was trained on (converted "
                            "probes do not); pass --encoder ENCODER_DIR")
  which = which or trained.get("checkpoint_key") or "target"
  p = dict(probe_config)
  layout = [("blocks_on", p["blocks_on"], p["blocks_on"] == "tokens",
             "V-JEPA's probe runs its extra blocks on the query after pooling; transformers' "
             "pooler (V-JEPA 2's) runs them on the tokens before"),
            ("num_queries", p["num_queries"], p["num_queries"] == 1,
             "transformers' pooler has one query token"),
            ("mlp_ratio", p["mlp_ratio"], float(p["mlp_ratio"]) == 4.0,
             "transformers' pooler MLPs have ratio 4")]
  for field, value, ok, why in layout:
    if not ok:
      raise ConversionError(f"the probe's {field} is {value!r}, which transformers' "
                            f"VJEPA2ForVideoClassification cannot represent ({why}); export it "
                            "with --to-torch --kind probe instead")
  feature_layer = protocol.get("feature_layer")
  state, fields = _model_state(encoder_ckpt, encoder_step, which, encoder_only, "--encoder")
  depth = fields["num_hidden_layers"]
  if feature_layer is not None and [int(k) % depth for k in np.atleast_1d(feature_layer)] != [
      depth - 1]:
    raise ConversionError(f"the probe reads the tokens of block(s) {feature_layer} "
                          "(config.feature_layer); transformers' classifier pools the encoder's "
                          "last output only, so it cannot be represented")
  if p["embed_dim"] != fields["hidden_size"] or p["num_heads"] != fields["num_attention_heads"]:
    raise ConversionError(
        f"the probe has width {p['embed_dim']} and {p['num_heads']} heads but the encoder width "
        f"{fields['hidden_size']} and {fields['num_attention_heads']} heads; transformers' "
        "pooler uses the encoder's heads (num_attention_heads), so this probe cannot be "
        "represented: export it with --to-torch --kind probe instead")
  if labels:
    names = read_labels(labels, p["num_classes"])
  else:
    names = ckpt_lib.probe_class_names(probe_ckpt, step) or [
        f"class_{i}" for i in range(p["num_classes"])]
  # The reference's names, checked against the probe its config builds (V-JEPA 2 layout: a list).
  (probe_state,) = reference.export_probe(params, probe_config)["classifiers"]
  probe_state = {k[len(reference.PROBE_PREFIX):]: v for k, v in probe_state.items()}
  state = {BASE_PREFIX + k: v for k, v in state.items()}
  state.update(to_hf(probe_state, "probe"))
  fields.update(num_pooler_layers=p["depth"] - 1,
                id2label={i: n for i, n in enumerate(names)},
                label2id={n: i for i, n in enumerate(names)})
  if protocol.get("resolution"):
    fields["crop_size"] = int(protocol["resolution"])
  if protocol.get("frames_per_clip"):
    fields["frames_per_clip"] = int(protocol["frames_per_clip"])
  _write(directory, state, fields, CLASSIFIER_ARCH)
  log.warning("transformers' pooler runs its LayerNorms at the encoder's eps %g where this probe "
              "was trained with %g (the reference's); its logits differ slightly (hf.py)",
              LN_EPS, _probe_ln_eps())
  return fields
