"""The frozen encoder: loading it from a checkpoint, and turning clips into probe tokens.

Multi-clip, multi-view layout (evals/video_classification_frozen/utils.py: ClipAggregation with
``attend_across_segments=True``): a batch ``[B, S, V, T, H, W, C]`` (S temporal segments, V spatial
views) is flattened to ``B*S*V`` clips, the encoder runs once on all of them, and for every view
the tokens of the S segments are concatenated in segment order: ``[B, V, S*N, D]``. The probe then
sees one sequence per (example, view); the views' predictions are averaged at test time.

Images (evals/image_classification_frozen): the image is repeated along time to fill the clip,
``[B, H, W, C] -> [B, 1, 1, T, H, W, C]``, so the same video encoder and probe apply.
"""
import logging
from typing import Callable, Optional

import einops
import jax
import jax.numpy as jnp

from jepa_jax import checkpoint as ckpt_lib
from jepa_jax import models
from jepa_jax import paths
from jepa_jax.data import clips as clips_lib
from jepa_jax.data import normalize as normalize_lib
from jepa_jax.errors import ConfigError

log = logging.getLogger(__name__)

CHECKPOINT_KEYS = {"target": "target", "online": "encoder", "encoder": "encoder"}


def eval_spec(config, saved: Optional[models.ModelSpec]) -> models.ModelSpec:
  """The encoder to evaluate: the checkpoint's spec (``checkpoint.read_model_spec``), every
  architecture field ``config.model`` sets (not None) on top, at the eval's clip size, frames,
  dtype and attention; no predictor. A field ``config.model`` may set is a field of
  ``ModelSpec`` (``models.ARCHITECTURE_FIELDS``), so a new one is added there only."""
  if config.encoder_dtype not in models.DTYPES:
    raise ConfigError(f"config.encoder_dtype must be one of {sorted(models.DTYPES)}, "
                      f"got {config.encoder_dtype!r}")
  given = config.model.to_dict() if hasattr(config.model, "to_dict") else dict(config.model or {})
  explicit = {k: v for k, v in given.items() if v is not None}
  unknown = sorted(set(explicit) - set(models.ARCHITECTURE_FIELDS))
  if unknown:
    raise ConfigError(f"config.model.{unknown[0]} is not an encoder architecture field; "
                      f"config.model takes {', '.join(models.ARCHITECTURE_FIELDS)}")
  if saved is None and not explicit.get("name"):
    raise ConfigError(
        f"cannot tell the encoder's architecture: checkpoint {config.checkpoint!r} carries no "
        "model spec or config. Set config.model.name (and config.model.overrides, patch_size, "
        "tubelet_size) to the architecture the weights were trained with.")
  base = saved.to_dict() if saved is not None else {}
  spec = models.ModelSpec.from_sections(dict(base, **explicit), config.data.crop_size,
                                        config.data.num_frames)
  return spec.replace(dtype=config.encoder_dtype, attention=config.attention, remat="none")


def build_eval_encoder(spec: models.ModelSpec) -> models.VisionTransformer:
  """The encoder of ``eval_spec`` (positions are fixed sin-cos, so they follow the eval's grid;
  every trained parameter keeps its shape). V-JEPA 2.1 encoders output their last level;
  ``feature_layer`` may name any of their levels (``models.VJEPA21_LEVELS``), each through its own
  LayerNorm."""
  encoder, _ = models.from_spec(spec)
  return encoder


def load_frozen_encoder(config, seed: Optional[int] = None, on_host: bool = False):
  """``(encoder module, params, info)`` for ``config.checkpoint``; ``on_host``: the parameters as
  numpy, for a caller that places them itself (fine-tuning shards them).

  ``info`` holds the checkpoint path, key and step and the architecture, for results.json.
  Raises ``checkpoint.CheckpointError`` naming the first parameter when the checkpoint does not
  fit the architecture.
  """
  path = config.checkpoint
  key = config.checkpoint_key
  if key not in CHECKPOINT_KEYS:
    raise ConfigError(f"config.checkpoint_key must be 'target' (EMA encoder) or 'online', got "
                      f"{key!r}")
  if not path:
    raise ConfigError("config.checkpoint is empty: give a trainer workdir / converted-weights "
                      "directory, or 'random' for a randomly initialised encoder")
  if path == "random":
    spec = eval_spec(config, None)
    encoder = build_eval_encoder(spec)
    s = config.seed if seed is None else seed
    params = models.init_params(encoder, jax.random.PRNGKey(s), jit=True)
    if on_host:
      params = jax.device_get(params)
    return encoder, params, dict(checkpoint="random", checkpoint_key=None, step=0, init_seed=s,
                                 model=spec.to_dict())
  encoder, params, info, _, _ = load_checkpoint_encoder(config)
  return encoder, (params if on_host else jax.tree_util.tree_map(jnp.asarray, params)), info


def _finetuned_model(saved: dict) -> dict:
  """A fine-tuning checkpoint's config with its encoder's architecture, for fine-tuning
  checkpoints without a model spec. Those written before fine-tuning saved the resolved
  architecture hold the fine-tuning config's ``model``, whose
  unset fields came from the checkpoint it started from (``saved["checkpoint"]``): read there."""
  model = dict(saved.get("model") or {})
  source = saved.get("checkpoint")
  if model.get("name") or not source or source == "random":
    return saved
  base = dict(ckpt_lib.read_config(source).get("model") or {})
  base.update({k: v for k, v in model.items() if v is not None})
  return dict(saved, model=base)


def load_checkpoint_encoder(config):
  """``(encoder module, encoder params (numpy), info, checkpoint.Loaded, saved config)`` of the checkpoint
  ``config.checkpoint`` of any kind (``checkpoint.KINDS``): a fine-tuning checkpoint's encoder is
  its one fine-tuned encoder, whichever ``config.checkpoint_key``; ``Loaded.params["head"]`` is
  its classifier."""
  path, key = paths.resolve(config.checkpoint), config.checkpoint_key
  # The parameters first: without checkpoint_step, a damaged newest checkpoint is skipped (with a
  # warning), and the config must be the one saved with the parameters read.
  loaded = ckpt_lib.load(path, config.checkpoint_step)
  tree, step = loaded.params, loaded.step
  saved_config = ckpt_lib.read_config(path, step)
  spec = eval_spec(config, ckpt_lib.read_model_spec(
      path, step, _finetuned_model(saved_config) if loaded.kind == ckpt_lib.FINETUNE
      else saved_config))
  encoder = build_eval_encoder(spec)
  group = "encoder" if loaded.kind == ckpt_lib.FINETUNE else CHECKPOINT_KEYS[key]
  if group not in tree:
    raise ckpt_lib.CheckpointError(
        f"checkpoint {path} has no '{group}' parameters (has {sorted(tree)}); "
        "use config.checkpoint_key='online' or 'target' accordingly")
  params = tree[group]
  which = "fine-tuned" if loaded.kind == ckpt_lib.FINETUNE else key
  where = f"{which} encoder of checkpoint {step} in {ckpt_lib.checkpoint_dir(path)}"
  ckpt_lib.check_shapes(params, models.abstract_params(encoder), where)
  log.info("loaded the %s encoder (%s, %d blocks) from step %d of %s", which, spec.name,
           encoder.depth, step, path)
  info = dict(checkpoint=path, checkpoint_key=key, step=int(step), model=spec.to_dict(),
              kind=loaded.kind)
  return encoder, params, info, loaded, saved_config


def feature_layers(encoder: models.VisionTransformer, feature_layer) -> tuple:
  """``config.feature_layer`` as 0-based block indices: None (the final output) -> (), an int k ->
  (k,), a list -> every one of them (V-JEPA 2's "multilevel" probe: the LN'd tokens of several
  blocks, e.g. ViT-L's [17, 19, 21, 23], concatenated into one token sequence)."""
  if feature_layer is None:
    return ()
  listed = feature_layer if isinstance(feature_layer, (list, tuple)) else [feature_layer]
  return tuple(int(k) % encoder.depth for k in listed)


def make_token_fn(encoder: models.VisionTransformer, feature_layer=None) -> Callable:
  """``(params, pixels) -> tokens [B, V, S*N, D]`` for uint8 videos ``[B, S, V, T, H, W, C]`` or
  images ``[B, H, W, C]``; frozen (``stop_gradient``), in the encoder's dtype. Jit it (or call it
  inside a jitted step): the parameters are an argument, never baked-in constants."""
  out_layers = feature_layers(encoder, feature_layer)

  def token_fn(params, pixels):
    def encode(clips):
      out = encoder.apply({"params": params}, clips, out_layers=out_layers)
      if out_layers:  # one sequence of every layer's tokens (the probe is order-invariant)
        out = out[0] if len(out) == 1 else jnp.concatenate(out, axis=1)
      return jax.lax.stop_gradient(out)

    clips = as_clips(pixels, encoder.num_frames)
    return clips_to_tokens(encode, clips, encoder.block.dtype)

  return token_fn


def as_clips(pixels, num_frames: int):
  """uint8 pixels as ``[B, S, V, T, H, W, C]``: videos pass through, images ``[B, H, W, C]`` are
  repeated along time to fill the clip (the reference's image eval)."""
  if pixels.ndim == 7:
    return pixels
  if pixels.ndim != 4:
    raise ValueError(f"expected videos [B, S, V, T, H, W, C] or images [B, H, W, C], "
                     f"got shape {pixels.shape}")
  b, h, w, c = pixels.shape
  return jnp.broadcast_to(pixels[:, None, None, None], (b, 1, 1, num_frames, h, w, c))


def clips_to_tokens(encode: Callable, clips, dtype=jnp.float32):
  """uint8 ``[B, S, V, T, H, W, C]`` -> probe tokens ``[B, V, S*N, D]`` (segment-major order).

  ``encode`` maps normalised clips ``[B*S*V, T, H, W, C]`` to ``[B*S*V, N, D]``; every clip is
  encoded in one call, so the work is one big batch on the accelerator.
  """
  b, s, v = clips.shape[:3]
  x = normalize_lib.normalize(clips_lib.flatten(clips), dtype)
  return einops.rearrange(encode(x), "(b s v) n d -> b v (s n) d", b=b, s=s, v=v)
