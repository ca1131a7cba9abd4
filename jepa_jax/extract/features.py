"""The encoder side: the encoder (and probe) of a checkpoint, and the jitted feature function
from uint8 clips to the features written."""
from typing import Optional


def build_feature_fn(encoder, settings, probe=None):
  """Jitted ``(encoder params, probe params, uint8 [B, T, H, W, C]) -> float32 features [B, ...]``."""
  import flax.linen as nn  # noqa: PLC0415
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  from jepa_jax.data import clips as clips_lib  # noqa: PLC0415
  from jepa_jax.data import normalize as normalize_lib  # noqa: PLC0415
  from jepa_jax.eval import encoder as enc_lib  # noqa: PLC0415
  layers = enc_lib.feature_layers(encoder, settings.layers or None)

  if settings.pool == "probe":
    token_fn = enc_lib.make_token_fn(encoder, settings.layers or None)

    def fn(enc_params, probe_params, clips):
      tokens = token_fn(enc_params, clips_lib.batch_of(clips))[:, 0]  # its one view
      pooled = []

      def keep_classifier_input(next_fun, args, kwargs, context):
        if context.module.name == "linear" and context.method_name == "__call__":
          pooled.append(args[0])
        return next_fun(*args, **kwargs)

      with nn.intercept_methods(keep_classifier_input):
        probe.apply({"params": probe_params}, tokens)
      return pooled[0].astype(jnp.float32)
  else:
    def fn(enc_params, probe_params, clips):
      del probe_params
      x = normalize_lib.normalize(clips, encoder.block.dtype)
      out = encoder.apply({"params": enc_params}, x, out_layers=layers)
      tokens = jnp.stack(out, axis=1) if layers and len(layers) > 1 else (
          out[0] if layers else out)
      if settings.pool == "mean":
        tokens = jnp.mean(tokens.astype(jnp.float32), axis=-2)
      return jax.lax.stop_gradient(tokens).astype(jnp.float32)

  return jax.jit(fn)


def load_models(args, settings):
  """``(encoder, encoder params, encoder info, probe module or None, probe params or None)``."""
  from jepa_jax.eval import config as config_lib  # noqa: PLC0415
  from jepa_jax.eval import encoder as enc_lib  # noqa: PLC0415
  c = config_lib.base_eval_config()
  c.checkpoint, c.checkpoint_key = args.checkpoint, args.checkpoint_key
  c.encoder_dtype = args.encoder_dtype
  c.data.num_frames, c.data.frame_step = settings.frames, settings.frame_step
  c.data.crop_size = settings.resolution
  encoder, params, info = enc_lib.load_frozen_encoder(c)
  probe = probe_params = None
  if settings.pool == "probe":
    probe, probe_params, settings.layers = load_probe(args.probe, encoder, settings.layers)
  return encoder, params, info, probe, probe_params


def load_probe(probe_dir: str, encoder, layers: Optional[list]):
  """``(probe module, probe params, layers)``: a saved attentive probe and the encoder blocks it
  reads (``layers`` if given, else those it was trained on, else None: the encoder's output)."""
  from jepa_jax import checkpoint as ckpt_lib  # noqa: PLC0415
  from jepa_jax.eval import probe as probe_lib  # noqa: PLC0415
  probe, probe_params, _, _ = probe_lib.load_saved_probe(probe_dir, encoder.embed_dim, "float32")
  if layers is None:
    trained = (ckpt_lib.read_probe_config(probe_dir).get("eval") or {}).get("protocol") or {}
    layer = trained.get("feature_layer")
    layers = ([layer] if isinstance(layer, int) else list(layer)) if layer is not None else None
  return probe, probe_params, layers
