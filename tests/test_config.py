"""The config layer: one reader of the ConfigDict (typed settings), one model factory, one check."""
import pathlib

import jax.numpy as jnp
import pytest

from jepa_jax import cli, experiment, masks, models
from jepa_jax import config as config_lib
from jepa_jax.eval import encoder as eval_encoder

REPO = pathlib.Path(__file__).resolve().parents[1]


def demo_config(*overrides):
  return cli.load_config(str(REPO / "configs" / "demo.py"), list(overrides))


def test_read_gives_typed_settings_that_build_the_models():
  settings = config_lib.read(demo_config())
  assert isinstance(settings.model, models.ModelSpec)
  assert settings.masks == masks.pretrain_configs()  # the demo keeps the paper's two masks
  assert settings.mask_token_ids == (0, 1) and settings.model.predictor.num_mask_tokens == 2
  encoder, predictor = models.from_spec(settings.model)
  assert encoder.grid == settings.grid == predictor.grid
  assert encoder.block.dtype == models.DTYPES[settings.model.dtype]
  # An encoder alone (eval) is the same call without a predictor spec.
  alone, none = models.from_spec(settings.model.replace(predictor=None))
  assert none is None and alone == encoder


def test_one_dtype_table_for_pretraining_and_eval():
  assert not hasattr(eval_encoder, "DTYPES")
  with pytest.raises(ValueError, match="dtype must be one of"):
    models.from_spec(models.ModelSpec("tiny", img_size=32, num_frames=4, dtype="float8"))
  enc, _ = models.from_spec(models.ModelSpec("tiny", img_size=32, num_frames=4, dtype="float16"))
  assert enc.block.dtype == jnp.float16  # the V-JEPA 2 eval's dtype; pretraining refuses it


def test_the_grid_is_checked_once_with_the_callers_field_names():
  with pytest.raises(config_lib.ConfigError, match=r"config.data.crop_size=60 is not divisible "
                     r"by config.model.patch_size=16"):
    config_lib.read(demo_config("--config.data.crop_size=60"))
  with pytest.raises(ValueError, match=r"^img_size=60 is not divisible by patch_size=16"):
    models.token_grid(60, 4, 16, 2)


def test_build_reads_the_config_once(monkeypatch):
  calls = []
  read = config_lib.read
  monkeypatch.setattr(config_lib, "read", lambda c: calls.append(1) or read(c))
  config = demo_config("--config.batch_size=1", "--config.mesh.data=1")
  import jax
  exp = experiment.build(config, devices=jax.devices()[:1])
  assert len(calls) == 1 and exp.settings.batch_size == 1
