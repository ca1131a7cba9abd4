"""The V-JEPA 2.1 recipe: configs/vjepa21/* against the reference's configs/train_2_1/*.yaml
(204698b), each building its full-size model abstractly, and one train step of a tiny override
through the experiment (the 2.1 loss in the existing train step)."""
import pathlib
import runpy
import sys

import jax
import pytest

from jepa_jax import models
from jepa_jax.pretrain import config as config_lib
from jepa_jax.pretrain import experiment

REPO = pathlib.Path(__file__).resolve().parents[1]

# configs/train_2_1/<size>/<stage>.yaml: model, global batch (per GPU x nodes x 8), frames,
# predictor depth, epochs, warm-up, final LR, weight_distance_loss, lambda_progressive.
REFERENCE = {
    "vitb16_256px_16f": ("base", 48 * 8 * 8, 16, 12, 1000, 40, 6e-4, True, True),
    "vitl16_256px_16f": ("large", 24 * 16 * 8, 16, 24, 1000, 40, 6e-4, True, True),
    "vitg16_256px_16f": ("giant_xformers", 24 * 16 * 8, 16, 24, 1000, 40, 6e-4, True, True),
    "vitgigantic16_256px_16f": ("gigantic_xformers", 12 * 32 * 8, 16, 24, 1000, 40, 6e-4, True,
                                True),
    "vitb16_cooldown_256px_64f": ("base", 24 * 16 * 8, 64, 12, 40, 0, 1e-6, False, False),
    "vitl16_cooldown_256px_64f": ("large", 12 * 32 * 8, 64, 24, 40, 0, 1e-6, False, False),
    "vitg16_cooldown_256px_64f": ("giant_xformers", 12 * 32 * 8, 64, 24, 40, 0, 1e-6, False,
                                  False),
    "vitgigantic16_cooldown_256px_64f": ("gigantic_xformers", 6 * 64 * 8, 64, 24, 40, 0, 1e-6,
                                         False, False),
}
HIDDEN = {"base": 3072, "large": 4096, "giant_xformers": 6144, "gigantic_xformers": 8192}


def load_config(name):
  if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
  return runpy.run_path(str(REPO / "configs" / "vjepa21" / f"{name}.py"))["get_config"]()


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_configs_hold_the_reference_numbers(name):
  model, batch, frames, pred_depth, epochs, warmup, final_lr, distance, ramp = REFERENCE[name]
  c = load_config(name)
  m, d, o = c.model, c.data, c.optim
  assert (m.name, c.batch_size, d.crop_size, d.num_frames) == (model, batch, 256, frames)
  assert list(d.dataset_fpcs) == [frames] * 3 and d.fps == 4 and c.seed == 239
  assert list(d.datasets_weights) == [0.335, 0.100, 0.565]
  assert (o.epochs, o.ipe, o.ipe_scale, o.warmup) == (epochs, 300, 1.25, warmup)
  assert (o.start_lr, o.lr, o.final_lr) == (1e-4, 6e-4, final_lr)
  assert (o.weight_decay, o.final_weight_decay, tuple(o.ema)) == (0.04, 0.04, (0.99925, 0.99925))
  assert [(mc.num_blocks, tuple(mc.spatial_scale)) for mc in c.masks] == [(8, (0.15, 0.15)),
                                                                          (2, (0.7, 0.7))]
  assert (m.pred_depth, m.pred_embed_dim, m.pred_num_heads) == (pred_depth, 384, 12)
  settings = config_lib.read(c)
  loss = settings.context_loss
  assert (loss.lambda_value, loss.lambda_start, loss.lambda_end) == (0.5, 15_000, 30_000)
  assert (loss.weight_distance, loss.lambda_progressive, loss.loss_exp) == (distance, ramp, 1.0)
  assert settings.mask_token_ids == (0, 0)
  encoder, predictor = models.from_spec(settings.model)
  assert encoder.rope_interleaved and encoder.interpolate_rope and encoder.modality_embedding
  assert encoder.image_frames == 1 and encoder.levels == models.VJEPA21_LEVELS[encoder.depth]
  assert int(encoder.embed_dim * encoder.block.mlp_ratio) == HIDDEN[model]
  assert (predictor.levels, predictor.return_context, predictor.num_mask_tokens) == (4, True, 6)
  assert predictor.rope_interleaved and predictor.rope_base_grid == 16
  assert predictor.modality_embedding and predictor.block.num_heads == 12


def test_config_refuses_unknown_loss_keys():
  c = load_config("vitl16_256px_16f")
  c.loss.lambda_vid = 0.5
  with pytest.raises(config_lib.ConfigError, match="config.loss.lambda_vid"):
    config_lib.read(c)


def tiny_override(name, tmp_path):
  """Recipe ``name`` with a 2-block, 24-wide encoder (levels 0 and 1) on 32-px, 4-frame clips."""
  c = load_config(name)
  c.batch_size = 2
  c.model.update(dict(name="tiny", dtype="float32", remat="none", scan=False, pred_depth=1,
                      pred_embed_dim=24, pred_num_heads=2))
  c.model.overrides = {"embed_dim": 24, "depth": 2, "num_heads": 2, "levels": (0, 1)}
  c.data.crop_size, c.data.num_frames = 32, 4
  c.data.datasets, c.data.datasets_weights, c.data.dataset_fpcs = [], [1.0], [4]
  c.data.synthetic_dir = str(tmp_path / "syn")
  c.images.update(dict(batch_size=0, datasets=[]))  # video only (tests/test_vjepa21_images.py)
  c.loss.update(dict(lambda_start=0, lambda_end=2))  # lambda 0.25 at step 1
  c.mesh.fsdp, c.mesh.data = 1, 1
  c.init_from = None
  return c


def test_tiny_override_step_lowers(tmp_path, name="vitl16_256px_16f"):
  """The experiment builds the 2.1 models and loss from the recipe and its train step traces and
  lowers (what the one-step run below also compiles and runs)."""
  exp = experiment.build(tiny_override(name, tmp_path), devices=jax.devices()[:1])
  assert exp.encoder.levels == (0, 1) and exp.predictor.return_context
  state = jax.eval_shape(exp.init_state, jax.random.PRNGKey(0))
  lowered = exp.train_step.lower(state, exp.abstract_batch(), jax.random.PRNGKey(1))
  assert "loss/context" in str(lowered.out_info)


def test_gradient_accumulation_is_refused_with_the_21_loss():
  """Accumulation re-weights each mask's predictor loss only, which would drop the context loss:
  refused in one line naming the field."""
  from jepa_jax import loss_vjepa21, optim
  from jepa_jax.pretrain import train_step
  enc = models.build_encoder("tiny", img_size=32, num_frames=4, embed_dim=24, depth=2,
                             num_heads=2, **models.vjepa21_fields(2, levels=(0, 1)))
  pred = models.build_predictor(enc, embed_dim=24, depth=1, num_heads=2, return_context=True)
  with pytest.raises(ValueError, match="config.grad_accum_steps=1"):
    train_step.make_train_step(enc, pred, (), optim.OptimConfig(), None, 4, grad_accum_steps=2,
                               context_loss=loss_vjepa21.ContextLossConfig())


@pytest.mark.parametrize("field,value,message", [
    ("grad_accum_steps", 2, "config.grad_accum_steps=2: the V-JEPA 2.1 loss does not support"),
    ("loss.lambda_end", 10, "config.loss.lambda_end=10 must be after config.loss.lambda_start"),
])
def test_21_loss_settings_are_refused_when_the_config_is_read(field, value, message):
  """Checked with the rest of the config (a one-line config error before anything is built),
  not at trace time."""
  from jepa_jax.errors import ConfigError
  from jepa_jax.pretrain import config as config_lib
  c = load_config("vitl16_256px_16f")
  if field == "grad_accum_steps":
    c.grad_accum_steps = value
  else:
    c.loss.lambda_end = value
    c.loss.lambda_start = 20
  with pytest.raises(ConfigError, match=message):
    config_lib.context_loss_config(c)
