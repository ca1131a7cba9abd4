"""The model spec: one description of a network, saved with every checkpoint and read back by
every program; a field is added to ``ModelSpec`` and nowhere else."""
import dataclasses
import glob
import json
import os

import jax
import numpy as np
import pytest

from jepa_jax import checkpoint as ckpt_lib
from jepa_jax import cli
from jepa_jax import models
from jepa_jax.errors import ConfigError
from jepa_jax.eval import config as eval_config_lib
from jepa_jax.eval import encoder as enc_lib
from jepa_jax.finetune import config as ft_config_lib
from jepa_jax.pretrain import config as config_lib
from jepa_jax.pretrain import defaults

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}


def pretraining_configs():
  files = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")) +
                 glob.glob(os.path.join(REPO, "configs", "vjepa2*", "*.py")))
  return [f for f in files if not f.endswith("__init__.py")]


@pytest.mark.parametrize("path", pretraining_configs(), ids=os.path.basename)
def test_every_pretraining_config_spec_survives_json(path):
  spec = config_lib.model_spec(cli.load_config(path, []))
  again = models.ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
  assert again == spec
  assert models.from_spec(again)[0] == models.from_spec(spec)[0]


def test_a_spec_from_a_newer_version_is_refused_by_name():
  d = dict(models.ModelSpec(name="tiny").to_dict(), sparkle=True)
  with pytest.raises(ConfigError, match=r"\['sparkle'\].*newer version"):
    models.ModelSpec.from_dict(d)
  # an older file (a field it did not have) takes the default
  d = models.ModelSpec(name="tiny").to_dict()
  del d["vjepa21"]
  assert models.ModelSpec.from_dict(d) == models.ModelSpec(name="tiny")


def test_the_programs_model_fields_are_the_specs():
  """The pretraining config's model section holds every spec field by its name; eval's and
  fine-tuning's ``model`` are exactly the architecture fields: nothing to add elsewhere."""
  spec_fields = {f.name for f in dataclasses.fields(models.ModelSpec)}
  named = set(models.ARCHITECTURE_FIELDS + models.RUNTIME_FIELDS)
  assert named <= spec_fields and named <= set(defaults.base_config().model)
  for config in (eval_config_lib.base_eval_config(), ft_config_lib.base_finetune_config()):
    assert set(config.model) == set(models.ARCHITECTURE_FIELDS)
  # from_sections takes every one of them by name (a changed default would not show a lost field)
  changed = dict(name="small", patch_size=8, tubelet_size=1, uniform_power=False, use_rope=True,
                 scan=True, overrides={"depth": 3}, vjepa21=True, dtype="bfloat16",
                 attention="xla", remat="full")
  assert set(changed) == set(models.ARCHITECTURE_FIELDS + models.RUNTIME_FIELDS)
  spec = models.ModelSpec.from_sections(changed, 64, 8)
  assert all(getattr(spec, k) == v for k, v in changed.items()), spec


def tiny_encoder(depth):
  spec = models.ModelSpec(name="tiny", img_size=32, num_frames=4,
                          overrides=dict(TINY, depth=depth))
  encoder = models.from_spec(spec)[0]
  return spec, jax.device_get(models.init_params(encoder, jax.random.PRNGKey(0), jit=True))


def eval_config(path, **model):
  c = eval_config_lib.base_eval_config()
  c.checkpoint, c.checkpoint_key, c.encoder_dtype = path, "online", "float32"
  c.data.crop_size, c.data.num_frames = 32, 4
  c.model.update(model)
  return c


def test_readers_build_the_saved_spec_not_the_config(tmp_path):
  """A checkpoint whose config says 2 blocks but whose spec (and weights) say 3 loads with 3; the
  same files without the spec item (written before checkpoints carried one) fall back to the
  config and fail naming the parameter."""
  spec, params = tiny_encoder(depth=3)
  config = {"model": {"name": "tiny", "overrides": dict(TINY, depth=2)},
            "data": {"crop_size": 32, "num_frames": 4}}
  path = str(tmp_path / "conv")
  ckpt_lib.save_params(path, {"encoder": params}, config=config, model_spec=spec, step=1)
  assert ckpt_lib.read_model_spec(path, 1) == spec
  encoder, loaded, info = enc_lib.load_frozen_encoder(eval_config(path))
  assert encoder.depth == 3 and info["model"]["overrides"]["depth"] == 3
  np.testing.assert_array_equal(jax.tree_util.tree_leaves(loaded)[0],
                                jax.tree_util.tree_leaves(params)[0])
  # an explicit eval field wins over the saved spec
  assert enc_lib.eval_spec(eval_config(path, uniform_power=False), spec).uniform_power is False
  with pytest.raises(ConfigError, match="config.model.pred_depth is not an encoder architecture"):
    enc_lib.eval_spec(eval_config(path, pred_depth=3), spec)

  import shutil  # noqa: PLC0415
  shutil.rmtree(os.path.join(ckpt_lib.checkpoint_dir(path), "1", ckpt_lib.MODEL_SPEC))
  assert ckpt_lib.read_model_spec(path, 1).overrides["depth"] == 2
  with pytest.raises(ckpt_lib.CheckpointError, match="blocks_2.*missing|has parameter.*blocks_2"):
    enc_lib.load_frozen_encoder(eval_config(path))
