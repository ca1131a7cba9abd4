"""Label smoothing and mixup / cutmix for video clips, as pure functions of explicit PRNG keys.

The recipe is timm's ``Mixup`` in its ``batch`` mode, which VideoMAE's fine-tuning uses
(``mixup 0.8, cutmix 1.0, prob 1.0, switch_prob 0.5``): one mixing weight ``lam`` per batch, every
clip mixed with the clip at the mirrored batch position (``x[::-1]``), and targets mixed with the
same weight. Mixup: ``lam ~ Beta(a, a)``, ``lam x + (1 - lam) x[::-1]``. Cutmix: a box of area
about ``(1 - lam) H W`` is pasted from the mirrored clip, the same box in every frame, and ``lam``
is then corrected to the area actually kept (the box is clipped at the borders).
"""
import jax
import jax.numpy as jnp


def smooth_targets(labels, num_classes: int, smoothing: float):
  """``[B]`` int labels -> ``[B, C]`` targets: ``1 - smoothing + smoothing / C`` on the label and
  ``smoothing / C`` elsewhere (timm's ``mixup_target``/``LabelSmoothingCrossEntropy``)."""
  off = smoothing / num_classes
  return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * (1.0 - smoothing) + off


def cutmix_box(key, lam, height: int, width: int):
  """A box ``(y0, y1, x0, x1)`` of side ratio ``sqrt(1 - lam)`` centred uniformly at random,
  clipped at the borders (timm's ``rand_bbox``)."""
  k_y, k_x = jax.random.split(key)
  cut = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * cut).astype(jnp.int32)
  cut_w = jnp.floor(width * cut).astype(jnp.int32)
  cy = jax.random.randint(k_y, (), 0, height)
  cx = jax.random.randint(k_x, (), 0, width)
  y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  return y0, y1, x0, x1


def box_mask(box, height: int, width: int):
  """``[H, W]`` bool, True inside the box."""
  y0, y1, x0, x1 = box
  ys = jnp.arange(height)[:, None]
  xs = jnp.arange(width)[None, :]
  return (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)


def mix(key, clips, targets, *, mixup_alpha: float, cutmix_alpha: float, prob: float = 1.0,
        switch_prob: float = 0.5):
  """Mixup or cutmix of a batch. ``clips`` ``[B, T, H, W, C]``, ``targets`` ``[B, K]`` (soft).

  Returns ``(clips, targets, lam)``; ``lam`` is the weight of each clip's own target (1 when no
  mixing was drawn). With both alphas > 0, cutmix is chosen with ``switch_prob``.
  """
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return clips, targets, jnp.ones((), jnp.float32)
  k_apply, k_switch, k_mix, k_cut, k_box = jax.random.split(key, 5)
  apply = jax.random.uniform(k_apply) < prob
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(k_switch) < switch_prob
  else:
    use_cutmix = jnp.asarray(cutmix_alpha > 0)
  lam_mix = jax.random.beta(k_mix, mixup_alpha, mixup_alpha) if mixup_alpha > 0 else 1.0
  lam_cut = jax.random.beta(k_cut, cutmix_alpha, cutmix_alpha) if cutmix_alpha > 0 else 1.0
  h, w = clips.shape[2], clips.shape[3]
  inside = box_mask(cutmix_box(k_box, lam_cut, h, w), h, w)
  lam_cut = 1.0 - jnp.mean(inside.astype(jnp.float32))  # the area actually kept
  flipped = clips[::-1]
  lam_mix_x = jnp.asarray(lam_mix, jnp.float32).astype(clips.dtype)
  mixed = lam_mix_x * clips + (1 - lam_mix_x) * flipped
  cut = jnp.where(inside[None, None, :, :, None], flipped, clips)
  out = jnp.where(use_cutmix, cut, mixed)
  lam = jnp.where(use_cutmix, lam_cut, jnp.asarray(lam_mix, jnp.float32))
  out = jnp.where(apply, out, clips)
  lam = jnp.where(apply, lam, 1.0).astype(jnp.float32)
  return out, lam * targets + (1.0 - lam) * targets[::-1], lam
