"""One V-JEPA update as a pure, jitted, sharded function.

``train_step(state, batch, rng) -> (state, metrics)``: normalise the uint8 clips on device (a
quarter of float32's host->device bytes); draw every mask inside jit from ``fold_in(rng,
state.step)``; loss and gradients (``loss.vjepa_loss``) on the whole batch or, with
``grad_accum_steps=k``, summed over k micro-batches in a ``lax.scan``
(``accumulate_loss_and_grads``); per-module clipping + AdamW, then the EMA of the target encoder.
A non-finite loss or gradient returns the state unchanged with ``metrics["nonfinite"] = 1``
(``nonfinite.apply_if_finite``), and the loop shell decides to stop or skip. Metrics, the
``monitor/*`` collapse statistics included, stay on device until the trainer logs.
"""
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from jepa_jax import loss as loss_lib
from jepa_jax import loss_vjepa21
from jepa_jax import masks as masks_lib
from jepa_jax import nonfinite as nonfinite_lib
from jepa_jax import optim
from jepa_jax import sharding
from jepa_jax.pretrain import monitor


def normalize_clips(video: jax.Array, dtype=jnp.float32) -> jax.Array:
  """uint8 clips -> ImageNet-normalised floats; float clips are taken as already normalised."""
  if video.dtype != jnp.uint8:
    return video.astype(dtype)
  from jepa_jax.data.normalize import normalize  # the data pipeline owns the constants
  return normalize(video, dtype=dtype)


def make_train_step(encoder, predictor, mask_cfgs: Sequence[masks_lib.MaskConfig],
                    optim_cfg: optim.OptimConfig, tx: optax.GradientTransformation,
                    batch_size: int, mesh: Optional[jax.sharding.Mesh] = None,
                    mask_token_ids: Optional[Sequence[int]] = None, grad_accum_steps: int = 1,
                    param_shardings=None, min_fsdp_size: int = sharding.DEFAULT_MIN_FSDP_SIZE,
                    context_loss: Optional[loss_vjepa21.ContextLossConfig] = None,
                    images=None):
  """Build the (unjitted) train step. With a ``mesh``, the masks drawn inside the step are pinned
  to the batch sharding, so each device draws only its own examples' masks. ``mask_token_ids``:
  the predictor mask token of each mask (``config.mask_token_ids``; None = mask i, token i).
  ``grad_accum_steps``: micro-batches per update (``batch_size`` must be divisible by it times
  the devices; ``experiment.validate`` checks). ``context_loss``: V-JEPA 2.1's objective
  (``loss_vjepa21.vjepa21_loss``: four-level targets plus the context loss, lambda read at the
  state's step) for its models; None = V-JEPA's. ``images``: V-JEPA 2.1's image half
  (``config.ImageSettings``: batch size, masks, grid, lambda and gradient weight), read from
  ``batch["image"]`` ``[B_img, 1, H, W, C]``; the loss is ``loss_vjepa21.image_video_loss``."""
  grid = encoder.grid
  mask_cfgs = tuple(mask_cfgs)
  if context_loss is None:
    apply_encoder, apply_predictor = loss_lib.model_apply_fns(encoder, predictor)
  else:
    apply_encoder, apply_predictor = loss_vjepa21.model_apply_fns(encoder, predictor)
    if grad_accum_steps != 1:  # accumulation re-weights the predictor loss of each mask only
      raise ValueError("the V-JEPA 2.1 loss does not support gradient accumulation yet; set "
                       "config.grad_accum_steps=1")
  if images is not None:
    if context_loss is None:
      raise ValueError("image batches need the V-JEPA 2.1 loss (config.model.vjepa21=True)")
    _, apply_image_predictor = loss_vjepa21.model_apply_fns(encoder, predictor, image=True)

  def train_step(state, batch, rng):
    # Masks are drawn for the whole global batch, whatever grad_accum_steps: every clip gets the
    # mask it would get without accumulation.
    masks = masks_lib.sample_masks(jax.random.fold_in(rng, state.step), batch_size, grid,
                                   mask_cfgs)
    image_masks = None
    if images is not None:  # a key of their own: the video masks stay those of a video-only run
      image_masks = masks_lib.sample_masks(
          jax.random.fold_in(jax.random.fold_in(rng, state.step), 1), images.batch_size,
          images.grid, images.masks)
    if mesh is not None:
      masks = jax.lax.with_sharding_constraint(masks, sharding.batch_sharding(mesh))
      if image_masks is not None:
        image_masks = jax.lax.with_sharding_constraint(image_masks, sharding.batch_sharding(mesh))

    def loss_fn(params, video, masks):
      clips = normalize_clips(video, encoder.block.dtype)  # accumulating: one micro-batch at a time
      if images is not None:
        loss, both = loss_vjepa21.image_video_loss(
            apply_encoder, apply_predictor, apply_image_predictor, params, state.target_params,
            clips, masks, normalize_clips(batch["image"], encoder.block.dtype), image_masks,
            state.step, context_loss, image_lambda=images.lambda_value,
            image_weight=images.loss_weight, video_grid=grid, image_grid=images.grid,
            levels=len(encoder.levels), mask_token_ids=mask_token_ids)
        aux, image_aux = both["video"], both["image"]
        aux.pop("context_loss_per_mask")
        aux["image"] = {"loss": image_aux["loss"], "loss/pred": image_aux["loss_pred"],
                        "loss/context": image_aux["loss_context"],
                        "lambda": image_aux["lambda"]}
        for i in range(len(images.masks)):
          aux["image"][f"tokens/context{i}"] = image_aux["context_tokens"][i]
          aux["image"][f"tokens/target{i}"] = image_aux["target_tokens"][i]
        aux["video_loss"] = aux.pop("loss")
      elif context_loss is None:
        loss, aux = loss_lib.vjepa_loss(apply_encoder, apply_predictor, params,
                                        state.target_params, clips, masks, mask_token_ids)
      else:
        loss, aux = loss_vjepa21.vjepa21_loss(
            apply_encoder, apply_predictor, params, state.target_params, clips, masks, state.step,
            context_loss, grid=grid, levels=len(encoder.levels), mask_token_ids=mask_token_ids)
        aux.pop("context_loss_per_mask")
      # Summarised where they are made: the step carries scalars, not the [B, N, D] targets (with
      # accumulation, the statistics are averages over micro-batches of B/k clips).
      targets, preds = jax.lax.stop_gradient((aux.pop("targets"), aux.pop("predictions")))
      return loss, {**aux, "monitor": monitor.step_statistics(targets, preds, masks)}

    if grad_accum_steps == 1:
      (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch["video"],
                                                                     masks)
    else:
      loss, aux, grads = accumulate_loss_and_grads(loss_fn, state.params, batch["video"], masks,
                                                   grad_accum_steps, mesh, param_shardings)
    grad_norms = {k: optim.global_norm(v) for k, v in grads.items()}
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    momentum = optim.ema_momentum(optim_cfg, state.step)
    target = optim.ema_update(state.target_params, params["encoder"], momentum)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              target_params=target)

    new_state, nonfinite = nonfinite_lib.apply_if_finite(new_state, state, loss, grad_norms)
    hp = optim.applied_hyperparams(opt_state)
    metrics = {
        "loss": loss,
        "grad_norm/encoder": grad_norms["encoder"],
        "grad_norm/predictor": grad_norms["predictor"],
        "lr": hp["learning_rate"],
        "wd": hp["weight_decay"],
        "momentum": momentum,
        "nonfinite": nonfinite,
    }
    for i in range(len(mask_cfgs)):
      metrics[f"loss/mask{i}"] = aux["loss_per_mask"][i]
      metrics[f"tokens/context{i}"] = aux["context_tokens"][i]
      metrics[f"tokens/target{i}"] = aux["target_tokens"][i]
    for key, name in (("loss_pred", "loss/pred"), ("loss_context", "loss/context"),
                      ("lambda", "context_lambda"), ("video_loss", "loss/video")):
      if key in aux:  # V-JEPA 2.1: its two losses and the lambda weighting the second
        metrics[name] = aux[key]
    for key, value in aux.get("image", {}).items():  # V-JEPA 2.1's image half
      metrics["loss/image" if key == "loss" else f"image/{key}"] = value
    metrics.update(aux["monitor"])
    return new_state, metrics

  # Traced with the activation rules active: every activation stays split over the batch.
  return sharding.with_activation_sharding(train_step, mesh, min_fsdp_size)


def split_micro_batches(x: jax.Array, k: int, mesh: Optional[jax.sharding.Mesh] = None):
  """``[B, ...] -> [k, B/k, ...]``; micro-batch j holds clips ``j, j+k, j+2k, ...``.

  Why this layout: the batch axis is split over the devices in contiguous blocks of B/devices
  clips, and ``B % (k * devices) == 0``, so reshaping to ``[B/k, k, ...]`` keeps every row on its
  device, and moving the k axis in front is a local transpose: each micro-batch is spread over
  all the devices, each holding B/(k * devices) of its own clips. Contiguous micro-batches
  (``reshape(k, B/k)``) would put micro-batch j on a few devices only, and XLA would move
  clips between devices to re-split it.
  """
  b = x.shape[0]
  out = jnp.moveaxis(x.reshape((b // k, k) + x.shape[1:]), 1, 0)
  if mesh is not None:
    out = jax.lax.with_sharding_constraint(
        out, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, sharding.BATCH_AXES)))
  return out


def _valid_targets(m) -> jax.Array:
  """Valid target tokens of a :class:`masks.Masks` (the l1 loss's denominator, over features)."""
  if m.target_valid is None:
    return jnp.asarray(m.target.size, jnp.float32)
  return jnp.sum(m.target_valid.astype(jnp.float32))


def accumulate_loss_and_grads(loss_fn: Callable, params, video: jax.Array, masks, k: int,
                              mesh: Optional[jax.sharding.Mesh] = None, param_shardings=None):
  """The whole-batch ``(loss, aux, grads)`` of ``loss_fn(params, video, masks) -> (loss, aux)``,
  computed k micro-batches at a time in a ``lax.scan``: the activations of one micro-batch live
  at a time, the gradients are summed in float32.

  Each mask's loss is a mean over the batch's valid target tokens, and micro-batches hold
  different numbers of them (static mask sizes pad some clips), so micro-batch j's loss of mask i
  enters weighted by its share of mask i's valid target tokens: the weighted sum is exactly the
  whole-batch loss, and its gradient the whole-batch gradient. The other aux entries are per-clip
  means, averaged over the (equal-sized) micro-batches.
  """
  totals = [_valid_targets(m) for m in masks]
  micro_video = split_micro_batches(video, k, mesh)
  micro_masks = jax.tree_util.tree_map(lambda x: split_micro_batches(x, k, mesh), masks)

  def weighted_loss(p, v, ms):
    _, aux = loss_fn(p, v, ms)
    share = jnp.stack([_valid_targets(m) / t for m, t in zip(ms, totals)])
    per_mask = aux["loss_per_mask"] * share
    return jnp.mean(per_mask), (per_mask, aux)

  def body(acc, xs):
    if mesh is not None:  # sharding propagation is weak inside loops: restate the batch split
      xs = jax.lax.with_sharding_constraint(xs, sharding.batch_sharding(mesh))
    p = params
    if param_shardings is not None:
      p = jax.lax.with_sharding_constraint(p, param_shardings)
    (loss, (per_mask, aux)), grads = jax.value_and_grad(weighted_loss, has_aux=True)(p, *xs)
    if param_shardings is not None:
      grads = jax.lax.with_sharding_constraint(grads, param_shardings)
    acc = jax.tree_util.tree_map(lambda a, g: a + g.astype(jnp.float32), acc, grads)
    return acc, (loss, per_mask, aux)

  zeros = jax.tree_util.tree_map(lambda p: jnp.zeros_like(p, jnp.float32), params)
  if param_shardings is not None:
    zeros = jax.lax.with_sharding_constraint(zeros, param_shardings)
  grads, (losses, per_mask, aux) = jax.lax.scan(body, zeros, (micro_video, micro_masks))
  aux = jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), aux)
  aux["loss_per_mask"] = jnp.sum(per_mask, axis=0)
  return jnp.sum(losses), aux, grads


def jit_train_step(train_step, mesh, state_shardings, batch_example,
                   min_fsdp_size: int = sharding.DEFAULT_MIN_FSDP_SIZE):
  """jit with explicit shardings, traced with ``mesh`` declared (``sharding.with_activation_sharding``:
  the activation rules and the per-shard Pallas attention read it); the old state is donated
  (updated in place)."""
  train_step = sharding.with_activation_sharding(train_step, mesh, min_fsdp_size)
  batch_shardings = jax.tree_util.tree_map(lambda _: sharding.batch_sharding(mesh), batch_example)
  rep = sharding.replicated(mesh)
  return jax.jit(train_step, in_shardings=(state_shardings, batch_shardings, rep),
                 out_shardings=(state_shardings, rep), donate_argnums=(0,))


def compile_memory(train_step_jit, abstract_state, abstract_batch, rng=None) -> dict:
  """Lower and compile on abstract shapes only; report XLA's per-device memory analysis (bytes)."""
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32) if rng is None else rng
  return memory_analysis(train_step_jit.lower(abstract_state, abstract_batch, rng).compile())


def memory_analysis(compiled) -> dict:
  """XLA's per-device memory analysis of a compiled executable, in bytes, and the peak it implies
  (arguments + outputs + temporaries - aliased)."""
  ma = compiled.memory_analysis()
  out = {name: int(getattr(ma, name, 0) or 0) for name in (
      "argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
      "alias_size_in_bytes", "generated_code_size_in_bytes")}
  out["peak_estimate_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                                + out["temp_size_in_bytes"] - out["alias_size_in_bytes"])
  return out
