"""V-JEPA 2.1's image ranks against the reference (vjepa21_image_tiny_v1.npz, made by
bench/make_vjepa21_golden.py --image-out, with the weights and video step of vjepa21_tiny_v1.npz):
one-frame clips through the encoder's image path, the predictor with its image modality
embedding, targets and distance weights on the 1 x 4 x 4 grid, lambda_value_img, both losses, the
image rank's gradients; and the gradient DDP averages over one image rank and one video rank
(``loss_vjepa21.image_video_loss``). Each shown to fail with the video predictor or lambda."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax import loss_vjepa21 as l21
import test_vjepa21 as t21
from test_vjepa21 import ATOL, FIXTURE, Masks, masks_of, run_once

golden21, tiny21 = t21.golden21, t21.tiny21  # test_vjepa21's fixtures, used here by those names

IMAGE_FIXTURE = FIXTURE.parent / "vjepa21_image_tiny_v1.npz"


@pytest.fixture(scope="module")
def golden_img():
  with np.load(IMAGE_FIXTURE) as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def image_inputs(golden_img, tiny21):
  enc = tiny21[0]
  images = jnp.asarray(golden_img["clip"].transpose(0, 2, 3, 4, 1))  # [B, 1, H, W, C]
  masks = [Masks(jnp.asarray(golden_img["mask_enc_0"], jnp.int32),
                 jnp.asarray(golden_img["mask_pred_0"], jnp.int32))]
  cfg = l21.ContextLossConfig(lambda_value=float(golden_img["step/lambda_value_img"]))
  return images, masks, int(golden_img["step/global_step"]), cfg, enc.grid_of(1)


def image_loss_fn(tiny21, image_inputs, image=True, cfg=None):
  enc, pred, params, _ = tiny21
  images, masks, step, image_cfg, grid = image_inputs
  apply_encoder, apply_predictor = l21.model_apply_fns(enc, pred, image=image)
  return lambda p: l21.vjepa21_loss(apply_encoder, apply_predictor, p, params["encoder"], images,
                                    masks, step, cfg or image_cfg, grid=grid, levels=4)


@pytest.fixture(scope="module")
def image_loss_and_grads(tiny21, image_inputs):
  return run_once(jax.value_and_grad(image_loss_fn(tiny21, image_inputs), has_aux=True),
                  tiny21[2])


# --- image-rank forward ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image_outputs(tiny21, image_inputs):
  """Context features and both predictor outputs, with and without the image modality embedding."""
  enc, pred, params, _ = tiny21
  images, masks, _, _, _ = image_inputs
  ctx_idx, tgt_idx = masks[0].context, masks[0].target

  def run(ep, pp, images):
    ctx = enc.apply({"params": ep}, images, token_idx=ctx_idx, hierarchical=True)
    out = {"context_0": ctx}
    out["pred_0"], out["pred_context_0"] = pred.apply({"params": pp}, ctx, ctx_idx, tgt_idx, 0,
                                                      image=True)
    out["video_pred_0"], out["video_pred_context_0"] = pred.apply({"params": pp}, ctx, ctx_idx,
                                                                  tgt_idx, 0)
    return out

  return jax.tree_util.tree_map(np.asarray,
                                run_once(run, params["encoder"], params["predictor"], images))


def test_image_context_and_predictor_match_reference(golden_img, image_outputs):
  """Gathered one-frame tokens (patch_embed_img, img_mod_embed, four levels) and the predictor's
  predictions / context predictions with mask token 0 and its img_mod_embed (forward_context's
  ``mod="image"``)."""
  for key in ("context_0", "pred_0", "pred_context_0"):
    np.testing.assert_allclose(image_outputs[key], golden_img[f"out/{key}"], atol=ATOL,
                               err_msg=key)


def test_predictor_image_embedding_matters(golden_img, image_outputs):
  """The predictor's video modality embedding on image tokens misses the reference by far."""
  for key in ("pred_0", "pred_context_0"):
    assert np.abs(image_outputs[f"video_{key}"] - golden_img[f"out/{key}"]).max() > 100 * ATOL


def test_image_targets_and_distances_match_reference(golden_img, tiny21, image_inputs,
                                                      image_loss_and_grads):
  """Targets: the one-frame clip through the EMA encoder, each level layer-normed; distance
  weights on the 1 x 4 x 4 image grid."""
  (_, aux), _ = image_loss_and_grads
  np.testing.assert_allclose(np.asarray(aux["targets"]), golden_img["out/target_ln"], atol=ATOL)
  _, masks, _, _, grid = image_inputs
  assert tuple(grid) == (1, 4, 4)
  np.testing.assert_allclose(np.asarray(l21.distance_weights(masks[0].context, masks[0].target,
                                                             grid)),
                             golden_img["out/distance_0"], rtol=1e-6)


def test_image_loss_matches_reference(golden_img, image_loss_and_grads):
  """lambda_value_img at the same step of the ramp (0.3 * 5000 / 15000), both losses, total."""
  (loss, aux), _ = image_loss_and_grads
  t21.check_losses(loss, aux, golden_img)


def test_image_loss_needs_image_lambda_and_embedding(golden_img, tiny21, image_inputs):
  """The video lambda (0.5) or the video predictor embedding on an image rank misses the loss."""
  ref = float(golden_img["out/loss"])
  video_cfg = dataclasses.replace(image_inputs[3],
                                  lambda_value=float(golden_img["step/lambda_value_vid"]))
  for fn in (image_loss_fn(tiny21, image_inputs, cfg=video_cfg),
             image_loss_fn(tiny21, image_inputs, image=False)):
    loss, _ = run_once(fn, tiny21[2])
    assert abs(float(loss) - ref) > 1e-4 * abs(ref), float(loss)


def test_image_grads_match_reference(golden_img, image_loss_and_grads):
  """Every encoder and predictor gradient of the image rank (the video patch embedding, both
  video modality embeddings and mask token 1 get none)."""
  assert {"patch_embed.proj.weight", "video_mod_embed"} <= set(golden_img["unused/encoder"])
  t21.assert_grads_match(image_loss_and_grads[1], golden_img, "grad", atol_floor=1e-3)


# --- image + video ranks -----------------------------------------------------------------------

def mixed_loss_fn(golden21, golden_img, tiny21, image_inputs, image_lambda=None,
                  image_weight=None):
  enc, pred, params, clip = tiny21
  images, image_masks, step, image_cfg, image_grid = image_inputs
  apply_encoder, apply_predictor = l21.model_apply_fns(enc, pred)
  _, apply_image_predictor = l21.model_apply_fns(enc, pred, image=True)
  video_masks = [Masks(*masks_of(golden21, i)) for i in range(2)]
  cfg = l21.ContextLossConfig(lambda_value=float(golden_img["step/lambda_value_vid"]))
  assert int(golden21["step/global_step"]) == step
  if image_lambda is None:
    image_lambda = image_cfg.lambda_value
  if image_weight is None:
    image_weight = float(golden_img["mixed/rank_ratio"])
  return lambda p: l21.image_video_loss(
      apply_encoder, apply_predictor, apply_image_predictor, p, params["encoder"], clip,
      video_masks, images, image_masks, step, cfg, image_lambda=image_lambda,
      image_weight=image_weight, video_grid=enc.grid, image_grid=image_grid, levels=4)


@pytest.fixture(scope="module")
def mixed_loss_and_grads(golden21, golden_img, tiny21, image_inputs):
  fn = mixed_loss_fn(golden21, golden_img, tiny21, image_inputs)
  return run_once(jax.value_and_grad(fn, has_aux=True), tiny21[2])


def test_mixed_loss_matches_reference(golden_img, mixed_loss_and_grads):
  """0.5 * (image-rank loss + video-rank loss), and each rank's loss inside it."""
  (loss, aux), _ = mixed_loss_and_grads
  for ours, key in ((loss, "mixed/loss"), (aux["image"]["loss_pred"] + aux["image"]["lambda"]
                                           * aux["image"]["loss_context"], "out/loss"),
                    (aux["video"]["loss_pred"] + aux["video"]["lambda"]
                     * aux["video"]["loss_context"], "mixed/loss_video")):
    ref = float(golden_img[key])
    assert abs(float(ours) - ref) <= 2e-6 * abs(ref), (key, float(ours), ref)


def test_mixed_grads_match_reference(golden_img, mixed_loss_and_grads):
  """The gradient DDP averages over rank 0 (images) and rank 1 (video): every parameter,
  the ones only one rank reaches (the two patch embeddings, the modality embeddings) included."""
  t21.assert_grads_match(mixed_loss_and_grads[1], golden_img, "mixed/grad", atol_floor=1e-3)


@pytest.mark.parametrize("change", [dict(image_lambda="vid"), dict(image_weight=0.25)])
def test_mixed_loss_needs_image_lambda_and_weight(golden21, golden_img, tiny21, image_inputs,
                                                  change):
  """The video lambda on the image rank, or another image share, misses the mixed loss."""
  if change.get("image_lambda") == "vid":
    change = dict(image_lambda=float(golden_img["step/lambda_value_vid"]))
  fn = mixed_loss_fn(golden21, golden_img, tiny21, image_inputs, **change)
  loss, _ = run_once(fn, tiny21[2])
  ref = float(golden_img["mixed/loss"])
  assert abs(float(loss) - ref) > 1e-4 * abs(ref), float(loss)
