"""A model described by value: ``ModelSpec`` -> ``from_spec`` -> (encoder, predictor).

Pretraining, eval, the converter and the benchmarks all describe the network they want with a
``ModelSpec`` (the config layer, ``jepa_jax.pretrain.config``, makes one from a ConfigDict) and build it
with ``from_spec``, so a model field is interpreted in one place.
"""
import dataclasses
from typing import Any, Mapping, Optional

import jax.numpy as jnp

from jepa_jax.config_fields import config_to_json
from jepa_jax.errors import ConfigError
from jepa_jax.models.predictor import Predictor
from jepa_jax.models.vit import VisionTransformer, build_encoder, size_spec, vjepa21_fields

# Compute dtypes by name. float16 is the V-JEPA 2 eval's autocast dtype (its RoPE angles are then
# rounded in float16 too); pretraining refuses it (no loss scaling), see jepa_jax.pretrain.config.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class PredictorSpec:
  """The pretraining predictor. ``num_heads`` None = the encoder's (V-JEPA); V-JEPA 2 uses 12."""
  depth: int = 12
  embed_dim: int = 384
  num_heads: Optional[int] = None
  num_mask_tokens: int = 2
  zero_init_mask_tokens: bool = True
  # V-JEPA 2.1: encoder levels read and predicted (None = all of the encoder's, 1 for the
  # distilled models), width of each predicted level (None = the encoder's; the distilled models
  # predict their teacher's), and the context outputs of its dense loss (``predict_all``).
  levels: Optional[int] = None
  out_embed_dim: Optional[int] = None
  return_context: bool = False


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """The encoder (and optionally its predictor) by value.

  ``name``: a size of ``VIT_SIZES`` (or the reference's ``vit_large[_rope]``); ``overrides``: any
  encoder or block field on top of it (``{"embed_dim": 96, "depth": 2, "num_heads": 4}``).
  ``use_rope`` None leaves it to the name (``_rope`` suffix) and the overrides. ``dtype``: a key
  of ``DTYPES``. ``vjepa21``: the V-JEPA 2.1 architecture (``vit.vjepa21_fields`` of the depth,
  under any explicit overrides).
  """
  name: str
  img_size: Any = 224
  num_frames: int = 16
  patch_size: int = 16
  tubelet_size: int = 2
  uniform_power: bool = True
  use_rope: Optional[bool] = None
  dtype: str = "float32"
  attention: str = "auto"
  remat: str = "none"
  scan: bool = False
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  predictor: Optional[PredictorSpec] = None
  vjepa21: bool = False

  def replace(self, **changes) -> "ModelSpec":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    """Plain JSON (what checkpoints save: ``checkpoint.MODEL_SPEC``); ``from_dict`` inverts it."""
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    out["img_size"] = list(self.img_size) if isinstance(self.img_size, (tuple, list)) \
        else self.img_size
    out["overrides"] = config_to_json(dict(self.overrides or {}))
    out["predictor"] = None if self.predictor is None else dataclasses.asdict(self.predictor)
    return out

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ModelSpec":
    """The spec of ``to_dict``; a field this version does not know is an error (the file was
    written by a newer jepa_jax), a missing one takes its default (an older one)."""
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise ConfigError(f"model spec has fields {unknown} this jepa_jax does not know; it was "
                        "written by a newer version: upgrade jepa_jax to read it")
    d = dict(d)
    if isinstance(d.get("img_size"), list):
      d["img_size"] = tuple(d["img_size"])
    d["overrides"] = _overrides(d.get("overrides"))
    if d.get("predictor") is not None:
      d["predictor"] = PredictorSpec(**d["predictor"])
    return cls(**d)

  @classmethod
  def from_sections(cls, model: Mapping[str, Any], img_size: Any, num_frames: int,
                    predictor: Optional[PredictorSpec] = None) -> "ModelSpec":
    """A spec from a config's ``model`` section, whose fields carry ``ModelSpec``'s names (the
    pretraining config, the eval/fine-tuning ``model`` override, the config of a checkpoint
    saved before checkpoints carried their spec): a field the section lacks or leaves None
    keeps the default, so a new field is added here and nowhere else."""
    fields = {k: model[k] for k in ARCHITECTURE_FIELDS + RUNTIME_FIELDS
              if k in model and model[k] is not None}
    if "overrides" in fields:
      fields["overrides"] = _overrides(fields["overrides"])
    return cls(img_size=img_size, num_frames=num_frames, predictor=predictor, **fields)


def _overrides(x) -> dict:
  """``overrides`` with sequences as tuples (module fields must hash), whatever wrote them."""
  return {k: tuple(v) if isinstance(v, list) else v for k, v in config_to_json(x or {}).items()}


# What the trained weights depend on (a checkpoint's spec fixes them; an eval or fine-tuning
# config may restate them under ``model``), and what each program chooses for its own run.
ARCHITECTURE_FIELDS = ("name", "patch_size", "tubelet_size", "uniform_power", "use_rope", "scan",
                       "overrides", "vjepa21")
RUNTIME_FIELDS = ("dtype", "attention", "remat")


def dtype_of(name: str, field: str = "dtype", allowed=tuple(DTYPES)):
  """The jnp dtype called ``name``, one of ``allowed`` (a subset of ``DTYPES``, the one table of
  dtype names); otherwise a ValueError naming the config ``field`` and the choices."""
  if name not in allowed or name not in DTYPES:
    raise ConfigError(f"{field} must be one of {sorted(allowed)}, got {name!r}")
  return DTYPES[name]


def encoder_from_spec(spec: ModelSpec) -> VisionTransformer:
  overrides = dict(spec.overrides or {})
  if spec.use_rope is not None:
    overrides.setdefault("use_rope", bool(spec.use_rope))
  if spec.vjepa21:
    depth = overrides.get("depth", size_spec(spec.name)["depth"])
    overrides = dict(vjepa21_fields(depth, overrides.get("levels")), **overrides)
    overrides["levels"] = tuple(overrides["levels"])
  return build_encoder(
      spec.name, img_size=spec.img_size, num_frames=spec.num_frames, patch_size=spec.patch_size,
      tubelet_size=spec.tubelet_size, uniform_power=spec.uniform_power,
      dtype=dtype_of(spec.dtype), attention=spec.attention, remat=spec.remat, scan=spec.scan,
      **overrides)


def build_predictor(encoder: VisionTransformer, embed_dim: int = 384, depth: int = 12,
                    num_mask_tokens: int = 2, zero_init_mask_tokens: bool = True,
                    num_heads: Optional[int] = None, levels: Optional[int] = None,
                    out_embed_dim: Optional[int] = None,
                    return_context: bool = False) -> Predictor:
  """The predictor matching ``encoder`` (same grid, positions, dtype and kernels).

  ``num_heads``: the predictor's own head count (V-JEPA 2's ``pred_num_heads``); None = the
  encoder's, as in V-JEPA. The MLP ratio is 4 whatever the encoder's: the reference's
  ``vit_predictor`` fixes it (a ViT-g's predictor has hidden 4 x 384, not 48/11 x 384).
  V-JEPA 2.1 encoders (with ``levels``) give a predictor with their RoPE layout, modality
  embeddings, and ``levels`` (None = as many as the encoder's) levels in and out."""
  block = encoder.block.replace(num_heads=encoder.block.num_heads if num_heads is None
                                else num_heads, mlp_ratio=4.0)
  if levels is None:
    levels = max(1, len(encoder.levels))
  return Predictor(grid=encoder.grid, embed_dim=encoder.embed_dim, predictor_embed_dim=embed_dim,
                   depth=depth, block=block, uniform_power=encoder.uniform_power,
                   use_rope=encoder.use_rope, num_mask_tokens=num_mask_tokens,
                   zero_init_mask_tokens=zero_init_mask_tokens, levels=levels,
                   out_embed_dim=out_embed_dim, return_context=return_context,
                   modality_embedding=(encoder.modality_embedding
                                       and encoder.image_frames is not None),
                   rope_interleaved=encoder.rope_interleaved,
                   rope_base_grid=encoder.rope_base_grid)


def from_spec(spec: ModelSpec) -> tuple[VisionTransformer, Optional[Predictor]]:
  """``(encoder, predictor)``; the predictor is None when ``spec.predictor`` is.

  Raises ValueError (unknown size or dtype, a width the heads do not divide, a clip the patches
  do not tile) with a message that names the field."""
  encoder = encoder_from_spec(spec)
  if encoder.embed_dim % encoder.block.num_heads:
    raise ConfigError(f"width {encoder.embed_dim} is not divisible by num_heads "
                      f"{encoder.block.num_heads}; change overrides.num_heads or embed_dim")
  encoder.grid  # noqa: B018 - checks that patches and tubelets tile the clip (vit.token_grid)
  p = spec.predictor
  if p is None:
    return encoder, None
  return encoder, build_predictor(encoder, embed_dim=p.embed_dim, depth=p.depth,
                                  num_mask_tokens=p.num_mask_tokens,
                                  zero_init_mask_tokens=p.zero_init_mask_tokens,
                                  num_heads=p.num_heads, levels=p.levels,
                                  out_embed_dim=p.out_embed_dim,
                                  return_context=p.return_context)
