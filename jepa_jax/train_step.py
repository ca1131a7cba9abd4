"""One V-JEPA update as a pure, jitted, sharded function.

``train_step(state, batch, rng) -> (state, metrics)``:
  1. normalise the uint8 clips on device (a quarter of float32's host->device bytes);
  2. draw every mask inside jit from ``fold_in(rng, state.step)`` (deterministic, resumable, no host
     work, static shapes);
  3. loss and gradients of the online encoder + predictor (``jepa_jax.loss.vjepa_loss``);
  4. per-module clipping + AdamW (``jepa_jax.optim``), then the EMA of the target encoder with the
     momentum of this update;
  5. if the loss or a gradient is not finite, the state is returned unchanged (step included) and
     ``metrics["nonfinite"]`` is 1: a poisoned update never reaches the parameters, and the trainer
     decides whether to stop or skip.

Metrics, the collapse statistics of ``jepa_jax.monitor`` (``monitor/*``) included, are device
arrays; the trainer fetches them only when it logs (no host sync per step).
"""
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from jepa_jax import loss as loss_lib
from jepa_jax import masks as masks_lib
from jepa_jax import monitor
from jepa_jax import optim
from jepa_jax import sharding


def normalize_clips(video: jax.Array, dtype=jnp.float32) -> jax.Array:
  """uint8 clips -> ImageNet-normalised floats; float clips are taken as already normalised."""
  if video.dtype != jnp.uint8:
    return video.astype(dtype)
  from jepa_jax.data.normalize import normalize  # the data pipeline owns the constants
  return normalize(video, dtype=dtype)


def make_train_step(encoder, predictor, mask_cfgs: Sequence[masks_lib.MaskConfig],
                    optim_cfg: optim.OptimConfig, tx: optax.GradientTransformation,
                    batch_size: int, mesh: Optional[jax.sharding.Mesh] = None,
                    mask_token_ids: Optional[Sequence[int]] = None):
  """Build the (unjitted) train step. With a ``mesh``, the masks drawn inside the step are pinned
  to the batch sharding, so each device draws only its own examples' masks. ``mask_token_ids``:
  the predictor mask token of each mask (``train_state.mask_token_ids``; None = mask i, token i)."""
  apply_encoder, apply_predictor = loss_lib.model_apply_fns(encoder, predictor)
  grid = encoder.grid
  mask_cfgs = tuple(mask_cfgs)

  def train_step(state, batch, rng):
    clips = normalize_clips(batch["video"], encoder.dtype)
    masks = masks_lib.sample_masks(jax.random.fold_in(rng, state.step), batch_size, grid,
                                   mask_cfgs)
    if mesh is not None:
      masks = jax.lax.with_sharding_constraint(masks, sharding.batch_sharding(mesh))

    def loss_fn(params):
      return loss_lib.vjepa_loss(apply_encoder, apply_predictor, params, state.target_params,
                                 clips, masks, mask_token_ids)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norms = {k: optim.global_norm(v) for k, v in grads.items()}
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    momentum = optim.ema_momentum(optim_cfg, state.step)
    target = optim.ema_update(state.target_params, params["encoder"], momentum)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              target_params=target)

    finite = jnp.isfinite(loss) & jnp.all(jnp.stack([jnp.isfinite(n) for n in grad_norms.values()]))
    new_state = jax.tree_util.tree_map(lambda new, old: jnp.where(finite, new, old),
                                       new_state, state)
    hp = optim.applied_hyperparams(opt_state)
    metrics = {
        "loss": loss,
        "grad_norm/encoder": grad_norms["encoder"],
        "grad_norm/predictor": grad_norms["predictor"],
        "lr": hp["learning_rate"],
        "wd": hp["weight_decay"],
        "momentum": momentum,
        "nonfinite": (~finite).astype(jnp.int32),
    }
    for i in range(len(mask_cfgs)):
      metrics[f"loss/mask{i}"] = aux["loss_per_mask"][i]
      metrics[f"tokens/context{i}"] = aux["context_tokens"][i]
      metrics[f"tokens/target{i}"] = aux["target_tokens"][i]
    metrics.update(monitor.step_statistics(aux["targets"], aux["predictions"], masks))
    return new_state, metrics

  return train_step


def jit_train_step(train_step, mesh, state_shardings, batch_example):
  """jit with explicit shardings; the old state is donated (updated in place)."""
  batch_shardings = jax.tree_util.tree_map(lambda _: sharding.batch_sharding(mesh), batch_example)
  rep = sharding.replicated(mesh)
  return jax.jit(train_step, in_shardings=(state_shardings, batch_shardings, rep),
                 out_shardings=(state_shardings, rep), donate_argnums=(0,))


def compile_memory(train_step_jit, abstract_state, abstract_batch, rng=None) -> dict:
  """Lower and compile on abstract shapes only; report XLA's per-device memory analysis (bytes)."""
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32) if rng is None else rng
  compiled = train_step_jit.lower(abstract_state, abstract_batch, rng).compile()
  ma = compiled.memory_analysis()
  out = {name: int(getattr(ma, name, 0) or 0) for name in (
      "argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
      "alias_size_in_bytes", "generated_code_size_in_bytes")}
  out["peak_estimate_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                                + out["temp_size_in_bytes"] - out["alias_size_in_bytes"])
  return out
