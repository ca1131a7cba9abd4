"""python -m jepa_jax.surprise: each window's error is the training loss's L1 between the
predictor's output and the EMA target's layer-normed tokens, on the windows extract reads."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax import checkpoint as ckpt_lib
from jepa_jax import loss as loss_lib
from jepa_jax import masks as masks_lib
from jepa_jax import models
from jepa_jax import surprise
from jepa_jax.data import normalize as normalize_lib
from jepa_jax.data import sources
from jepa_jax.extract import reading
from jepa_jax.extract.settings import Settings
from jepa_jax.pretrain import config as config_lib
from jepa_jax.pretrain import defaults
from jepa_jax.pretrain import train_state
import video_files
from test_extract import TINY


def random_tree(abstract, seed):
  """Random parameters of ``abstract``'s shapes (any values serve an equality test): drawn in
  numpy, without compiling the initialisers."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda path, a: ((1.0 if "scale" in jax.tree_util.keystr(path) else 0.0)
                       + 0.1 * rng.standard_normal(a.shape)).astype(a.dtype), abstract)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """``(checkpoint, config, encoder, predictor, params, target params, video)``: a
  pretraining-like checkpoint (encoder, predictor, a different target; the full config) of a tiny
  model for 4 x 32 px clips at step 2 (a 2 x 2 x 2 token grid), and a 34-frame video at 30 fps."""
  root = tmp_path_factory.mktemp("surprise")
  c = defaults.base_config()
  c.model.name, c.model.overrides, c.model.dtype = "tiny", dict(TINY), "float32"
  c.model.pred_embed_dim, c.model.pred_depth = 16, 1
  c.data.crop_size, c.data.num_frames, c.data.frame_step = 32, 4, 2
  encoder, predictor = models.from_spec(config_lib.model_spec(c))
  abstract = jax.eval_shape(lambda k: train_state.init_params(encoder, predictor, k),
                            jax.random.PRNGKey(0))
  params, target = random_tree(abstract, 0), random_tree(abstract["encoder"], 1)
  ckpt = str(root / "ckpt")
  ckpt_lib.save_params(ckpt, {**params, "target": target}, config=ckpt_lib.config_to_json(c),
                       step=2)
  video = video_files.write_frames(str(root / "v34.mp4"), video_files.coded_frames(34))
  return ckpt, c, encoder, predictor, params, target, video


def direct_errors(pretrained, video, context, target_idx, token, stride):
  """The L1 of the loss's definition, written out: |predictor(context tokens) - LN(target)|, per
  window (indices ``[K]``, the same for every window)."""
  _, c, encoder, predictor, params, target, _ = pretrained
  settings = Settings(4, 2, 32, 8, stride, "drop", "none", None, "float32")
  clips, windows, _ = reading.read_windows(sources.FileVideoSource([video], [-1]), 0, settings)

  @jax.jit
  def errors(x):
    ctx_idx = jnp.broadcast_to(context, (len(x), len(context)))
    tgt_idx = jnp.broadcast_to(target_idx, (len(x), len(target_idx)))
    ctx = encoder.apply({"params": params["encoder"]}, x, token_idx=ctx_idx)
    pred = predictor.apply({"params": params["predictor"]}, ctx, ctx_idx, tgt_idx, token)
    want = loss_lib.target_layer_norm(encoder.apply({"params": target}, x))
    want = jnp.take_along_axis(want, tgt_idx[..., None], axis=1)
    return jnp.mean(jnp.abs(pred - want), axis=(1, 2))

  return windows, np.asarray(errors(normalize_lib.normalize(jnp.asarray(clips))))


def test_window_errors_are_the_training_loss_of_each_window(pretrained, tmp_path):
  ckpt, video = pretrained[0], pretrained[-1]
  assert surprise.main(["--checkpoint", ckpt, "--out", str(tmp_path / "o"), "--batch-size", "3",
                        video]) == 0
  record = json.load(open(tmp_path / "o" / "0000000_v34.json"))
  # Default: windows of the clip's 8 source frames every token time step (2 x 2 frames); the
  # last token time step predicted from the first. 7 windows, 3 at a time: the last batch padded.
  windows, want = direct_errors(pretrained, video, jnp.arange(4), jnp.arange(4, 8), 0, 4)
  assert len(windows) == 7 and record["fps"] == 30.0 and record["step"] == 2
  assert record["mask"] == dict(kind="future", future_steps=1, context_tokens=4, target_tokens=4,
                                mask_token=0)
  assert [(w["start_frame"], w["end_frame"], w["padded"]) for w in record["windows"]] == [
      (w.start, w.end, 0) for w in windows]
  np.testing.assert_allclose([w["start_s"] for w in record["windows"]],
                             [w.start / 30 for w in windows])
  got = np.array([w["error"] for w in record["windows"]])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert np.ptp(got) > 1e-4  # the windows differ
  assert (tmp_path / "o" / "0000000_v34.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

  # A mask of the pretraining config, drawn once from the seed, with that mask's token.
  assert surprise.main(["--checkpoint", ckpt, "--out", str(tmp_path / "m"), "--config-mask", "1",
                        "--seed", "3", "--stride", "13", video]) == 0
  record = json.load(open(tmp_path / "m" / "0000000_v34.json"))
  cfg = config_lib.mask_configs(pretrained[1], (2, 2, 2))[1]
  m = jax.jit(masks_lib.sample_masks, static_argnums=(1, 2, 3))(jax.random.PRNGKey(3), 1,
                                                                (2, 2, 2), (cfg,))[0]
  # The static-shape mask's padding left out: the tokens it keeps.
  context, target = (np.asarray(i)[0][np.asarray(v)[0]] for i, v in (
      (m.context, m.context_valid), (m.target, m.target_valid)))
  assert record["mask"]["context_tokens"] == len(context) and 0 < len(target) < 8
  _, want = direct_errors(pretrained, video, context, target, 1, 13)
  np.testing.assert_allclose([w["error"] for w in record["windows"]], want, rtol=1e-5, atol=1e-6)


def test_checkpoints_without_a_predictor_and_impossible_masks_are_refused(pretrained, tmp_path,
                                                                          capsys):
  ckpt, video = pretrained[0], pretrained[-1]
  encoder_only = str(tmp_path / "encoder_only")
  ckpt_lib.save_params(encoder_only, {"encoder": pretrained[4]["encoder"],
                                      "target": pretrained[5]}, config=ckpt_lib.read_config(ckpt))
  assert surprise.main(["--checkpoint", encoder_only, "--out", str(tmp_path / "a"), video]) == 1
  assert "no predictor parameters" in capsys.readouterr().err
  assert surprise.main(["--checkpoint", ckpt, "--out", str(tmp_path / "b"), "--future", "2",
                        video]) == 1
  assert "--future 2 must leave context" in capsys.readouterr().err
