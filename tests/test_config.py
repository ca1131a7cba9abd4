"""The config layer: one reader of the ConfigDict (typed settings), one model factory, one check."""
import pathlib
import re

import jax.numpy as jnp
import pytest

from jepa_jax import cli, masks, models, sharding
from jepa_jax.eval import encoder as eval_encoder
from jepa_jax.pretrain import config as config_lib
from jepa_jax.pretrain import experiment

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


@pytest.mark.parametrize("override, message", [
    ("masks[0].num_context=96", "config.masks[0].num_context=96 must be in [1, 64]: the 4x4x4 "
     "token grid"),
    ("masks[1].num_target=65", "config.masks[1].num_target=65 must be in [1, 64]"),
    ("masks[0].num_context=0", "config.masks[0].num_context=0 must be a positive integer"),
    ("masks[0].num_target=2.5", "config.masks[0].num_target=2.5 must be a positive integer"),
    ("masks[0].num_context=abc", "config.masks[0].num_context='abc' must be a positive integer"),
    ("masks[0].num_blocks=0", "config.masks[0].num_blocks=0 must be an integer >= 1"),
    ("masks[0].spatial_scale=(0.3,0.2)", "config.masks[0].spatial_scale=(0.3, 0.2) must be a "
     "(min, max) pair of numbers with min <= max"),
    ("masks[0].spatial_scale=(0.1,0.2,0.3)", "config.masks[0].spatial_scale=(0.1, 0.2, 0.3) must "
     "be a (min, max) pair"),
    ("masks[1].spatial_scale=1.5", "config.masks[1].spatial_scale=(1.5, 1.5) must lie in [0, 1]"),
    ("masks[0].temporal_scale=(-0.1,0.5)", "config.masks[0].temporal_scale=(-0.1, 0.5) must lie "
     "in [0, 1]"),
    ("masks[0].aspect_ratio=(0,1)", "config.masks[0].aspect_ratio=(0.0, 1.0) must be positive"),
    ("masks[0].max_temporal_keep=0", "config.masks[0].max_temporal_keep=0.0 must be in (0, 1]"),
    ("masks[0].ratio=1.5", "config.masks[0].ratio=1.5 must be in [0, 1]"),
    ("masks[0].kind=tube", "config.masks[0].kind='tube' must be one of multiblock, random_tube"),
    ("masks[1].subset=last", "config.masks[1].subset='last' must be one of random, first"),
    ("model.num_mask_tokens=-1", "config.model.num_mask_tokens=-1 must be a positive integer"),
    ("model.mask_token_per=clip", "config.model.mask_token_per must be 'mask' or 'clip_length'"),
])
def test_every_mask_field_is_checked_with_the_config(override, message):
  """Each of these used to pass the config reader and fail later, inside tracing (a traceback),
  or not at all; now ``read`` refuses it in one line naming the field and the valid range."""
  with pytest.raises(config_lib.ConfigError) as info:
    config_lib.read(demo_config(f"--config.{override}"))
  assert str(info.value).startswith(message), str(info.value)
  assert "\n" not in str(info.value)


@pytest.mark.parametrize("entry, message", [
    ({"max_keep": 10}, "config.masks[0].max_keep=10 is not supported; use num_context"),
    ({"full_complement": True}, "config.masks[0].full_complement=True is not supported"),
    ({"num_blokcs": 2}, "config.masks[0]: unknown mask config keys ['num_blokcs']"),
])
def test_reference_mask_keys_are_checked_with_the_config(entry, message):
  config = demo_config()
  with config.unlocked():
    config.masks = [entry, *config.masks[1:]]
  with pytest.raises(config_lib.ConfigError) as info:
    config_lib.read(config)
  assert str(info.value).startswith(message), str(info.value)
  # The reference's defaults are accepted.
  with config.unlocked():
    config.masks = [{"max_keep": None, "full_complement": False}, *config.masks[1:]]
  assert config_lib.read(config).masks[0] == masks.MaskConfig()


@pytest.mark.parametrize("data,fsdp,message", [
    (-1, 8, "config.mesh.fsdp=8 does not divide the 4 devices; use one of [1, 2, 4]"),
    (3, -1, "config.mesh.data=3 does not divide the 4 devices; use one of [1, 2, 4]"),
    (-1, 0, "config.mesh.fsdp=0 does not divide the 4 devices"),
    (2, 4, "config.mesh data=2 x fsdp=4 does not cover the 4 devices"),
    (-1, -1, "at most one of data/fsdp may be -1"),
])
def test_a_mesh_the_devices_cannot_hold_names_the_field_and_the_choices(data, fsdp, message):
  # Before: fsdp 8 on 4 devices said "data=0 x fsdp=8 ...; set config.mesh.data=-1" when data
  # already was -1: the field to change is fsdp.
  with pytest.raises(ValueError, match=re.escape(message)):
    sharding.mesh_shape(data, fsdp, num_devices=4)
  assert sharding.mesh_shape(-1, 2, num_devices=4) == (2, 2)
  assert sharding.mesh_shape(1, -1, num_devices=4) == (1, 4)
