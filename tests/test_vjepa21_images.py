"""V-JEPA 2.1's image half of pretraining (``config.images``): the config's checks, the paired
video + image batches (shapes, the account of bad entries, resumable state), and a tiny run whose
step trains the image path with ``(1 - w) * L_video + w * L_image``. The objective itself is pinned
to the reference by tests/test_vjepa21_image.py."""
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from jepa_jax import checkpoint as ckpt_lib
from jepa_jax import data
from jepa_jax.data import pipeline
from jepa_jax.data import synthetic
from jepa_jax.pretrain import config as config_lib
from jepa_jax.pretrain import defaults
from jepa_jax.pretrain import experiment
from jepa_jax.pretrain import trainer

from test_data_pipeline import SYNTHETIC_VIDEOS, assert_same, small_cfg, synthetic_index  # noqa: F401
from test_vjepa21_recipe import load_config, tiny_override


def _image_dir(tmp_path, n=5):
  rng = np.random.default_rng(0)
  folder = tmp_path / "stills"
  folder.mkdir()
  for i in range(n):
    Image.fromarray(rng.integers(0, 255, (40 + 4 * i, 48, 3), np.uint8)).save(folder / f"{i}.png")
  return folder


def _images_section(**changes):
  section = defaults.images_config()
  section.update(dict(batch_size=2, **changes))
  return section


# ---------------------------------------------------------------- the config


# configs/train_2_1/<size>/<stage>.yaml: img_data.batch_size per image GPU, nodes (x 8 GPUs).
IMAGES = {"vitb16_256px_16f": (144, 8), "vitl16_256px_16f": (72, 16),
          "vitg16_256px_16f": (72, 16), "vitgigantic16_256px_16f": (36, 32),
          "vitb16_cooldown_256px_64f": (144, 16), "vitl16_cooldown_256px_64f": (72, 32),
          "vitg16_cooldown_256px_64f": (72, 32), "vitgigantic16_cooldown_256px_64f": (36, 64)}


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_recipes_hold_the_reference_image_half(name):
  per_gpu, nodes = IMAGES[name]
  c = load_config(name)
  images = config_lib.read(c).images
  # rank_ratio 0.5: half the GPUs read images, each its own img_data.batch_size.
  assert images.batch_size == per_gpu * nodes * 8 // 2
  assert [(m.num_blocks, m.spatial_scale, m.aspect_ratio, m.temporal_scale)
          for m in images.masks] == [(10, (0.15, 0.15), (0.75, 1.5), (1.0, 1.0))]
  assert (images.lambda_value, images.loss_weight, images.grid, images.frames) == (
      0.5, 0.5, (1, 16, 16), 1)
  assert list(images.data.datasets) == ["/path/to/imagenet1k.csv"]
  c.images.batch_size = 0
  assert config_lib.read(c).images is None


@pytest.mark.parametrize("change,message", [
    (dict(batch_size=-2), "config.images.batch_size=-2 must be a number of images"),
    (dict(loss_weight=1.0), r"config.images.loss_weight=1.0 must be in \(0, 1\)"),
    (dict(lambda_value=-1.0), "config.images.lambda_value=-1.0 must be a number >= 0"),
    (dict(datasets=["imgs.csv"], datasets_weights=[0.5, 0.5]),
     "config.images.datasets_weights has 2 weights for 1 datasets"),
    (dict(masks=[dict(num_blocks=10, spatial_scale=(0.15, 0.15), num_context=999)]),
     r"config.images.masks\[0\].num_context=999"),
    (dict(masks=[]), "config.images.masks is missing or empty"),
])
def test_bad_image_fields_are_refused_in_one_line(change, message):
  c = load_config("vitl16_256px_16f")
  c.images.update(change)
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.read(c)


def test_images_need_the_21_model():
  c = defaults.base_config()
  c.images.batch_size = 8
  with pytest.raises(config_lib.ConfigError, match="config.model.vjepa21=True"):
    config_lib.read(c)


def test_image_batch_must_split_over_the_devices(tmp_path):
  c = tiny_override("vitl16_256px_16f", tmp_path)
  c.images.batch_size = 3
  c.images.masks[0].num_blocks = 2  # 10 blocks leave no context on the tiny (1, 2, 2) grid
  c.mesh.data = -1
  with pytest.raises(config_lib.ConfigError, match="config.images.batch_size=3 is not divisible"):
    experiment.validate(c, num_devices=2)


# ---------------------------------------------------------------- the batches


def test_paired_batches_shapes_account_and_state(synthetic_index, tmp_path):  # noqa: F811
  stills = _image_dir(tmp_path)
  (stills / "broken.png").write_bytes(b"not a png")
  cfg = small_cfg(datasets=[synthetic_index])
  tracker = pipeline.FailureTracker(max_failure_fraction=0.9)
  ds = data.make_pretrain_dataset(cfg, batch_size=2, seed=0, failure_tracker=tracker,
                                  images=_images_section(datasets=[str(stills)]),
                                  image_batch_size=3)
  it = iter(ds)
  batches = [next(it) for _ in range(4)]
  b = batches[0]
  assert b["video"].shape == (2, 8, 32, 32, 3) and b["image"].shape == (3, 1, 32, 32, 3)
  assert b["image"].dtype == np.uint8 and b["image"].std() > 5
  # The account covers videos then images; image entries are numbered after the videos.
  assert b["index"].shape == b["bad_reads"].shape == (5,) and b["bad_entries"].shape[0] == 5
  assert (b["index"][:2] < SYNTHETIC_VIDEOS).all() and (b["index"][2:] >= SYNTHETIC_VIDEOS).all()
  assert tracker.sources == [[synthetic_index, SYNTHETIC_VIDEOS], [str(stills), 6]]
  # The unreadable still is replaced and named in the account, as a bad video would be.
  assert "decode_error" in tracker.failures
  named = np.concatenate([x["bad_entries"].reshape(-1) for x in batches])
  broken = SYNTHETIC_VIDEOS + sorted(os.listdir(stills)).index("broken.png")
  assert set(named[named >= 0].tolist()) == {broken}
  # Both streams resume exactly: the same iterator rewound, and a fresh pipeline.
  state = it.get_state()
  assert set(state) == {"video", "image"}
  expected = [next(it) for _ in range(2)]
  fresh = iter(data.make_pretrain_dataset(cfg, batch_size=2, seed=0,
                                          images=_images_section(datasets=[str(stills)]),
                                          image_batch_size=3))
  fresh.set_state(json.loads(json.dumps(state)))  # as the checkpoint stores it
  for x, y in zip(expected, [next(fresh) for _ in range(2)]):
    assert_same(x, y)
  with pytest.raises(data.DataPipelineError, match="video-only run's"):
    fresh.set_state(state["video"])


def test_synthetic_stills_and_image_index(tmp_path):
  index = synthetic.ensure_synthetic_images(str(tmp_path / "syn_images"), 4, seed=3)
  assert synthetic.ensure_synthetic_images(str(tmp_path / "syn_images"), 4, seed=3) == index
  src = data.sources.load_image_source(index)
  assert src.kind == "image" and len(src) == 4 and src.get(0)[0].ndim == 3
  assert all(src.label(i) in (0, 1, 2) for i in range(4))  # the shape
  with pytest.raises(config_lib.ConfigError, match="num_images=4"):
    synthetic.ensure_synthetic_images(str(tmp_path / "syn_images"), 5, seed=3)


def test_image_sources_in_the_video_list_are_refused(tmp_path):
  stills = _image_dir(tmp_path)
  index = tmp_path / "stills.csv"
  index.write_text("".join(f"{p} 0\n" for p in sorted(stills.iterdir())))
  for spec in (stills, index):  # a directory of images, an index of image files
    with pytest.raises(data.DataPipelineError, match="move it to config.images.datasets"):
      next(iter(data.make_pretrain_dataset(small_cfg(datasets=[str(spec)]), batch_size=1)))
  src = data.sources.load_image_source(str(index))  # an index of image files is an image source
  assert src.kind == "image" and len(src) == 5


# ---------------------------------------------------------------- a run


@pytest.mark.slow
def test_tiny_run_trains_the_image_path_and_resumes_both_streams(tmp_path):
  """Two steps of the tiny ViT-L recipe with synthetic stills: the step's loss is the weighted
  sum of the two halves, the image-only parameters move (a video-only run leaves them to weight
  decay), and the checkpoint holds both streams' positions."""
  c = tiny_override("vitl16_256px_16f", tmp_path)
  c.data.synthetic_num_videos = 4
  c.images.update(dict(batch_size=2, synthetic_num_images=6, loss_weight=0.25, lambda_value=0.3))
  c.images.masks[0].num_blocks = 2
  c.optim.update(dict(epochs=1, ipe=2, warmup=0, weight_decay=0.0, final_weight_decay=0.0))
  c.log_every = 1
  c.checkpoint.update(dict(every=2, async_save=False))
  workdir = str(tmp_path / "run")
  exp = experiment.build(c, devices=jax.devices()[:1])
  initial = jax.device_get(exp.init_state(jax.random.PRNGKey(c.seed)).params["encoder"])
  trainer.train(c, workdir, exp)
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  rows = [r for r in rows if "loss" in r]  # the step rows (not the run's summary rows)
  # What tests/test_vjepa21_recipe.py's video-only two-step run checked, now with images: the
  # lambda ramp (lambda_end 2) and each half's loss.
  assert [r["context_lambda"] for r in rows] == [0.0, 0.25]
  assert all(np.isfinite(r["loss"]) and r["loss/context"] > 0 for r in rows)
  last = rows[-1]
  assert last["loss"] == pytest.approx(0.75 * last["loss/video"] + 0.25 * last["loss/image"],
                                       rel=1e-5)
  assert last["image/lambda"] == pytest.approx(0.3 * last["context_lambda"] / 0.5)
  # Each image mask's tokens per image: context and target of the 2x2 grid.
  assert last["image/tokens/context0"] + last["image/tokens/target0"] <= 4
  assert min(last["image/tokens/context0"], last["image/tokens/target0"]) >= 1
  assert last["loss/video"] == pytest.approx(last["loss/pred"] + last["context_lambda"]
                                             * last["loss/context"], rel=1e-5)
  assert os.path.isfile(os.path.join(str(tmp_path / "syn") + "_images", "index.csv"))
  manager = ckpt_lib.make_manager(os.path.join(workdir, "checkpoints"))
  state, data_state, step = ckpt_lib.restore_latest_train_state(manager, exp.sharded_abstract_state)
  assert step == 2 and set(data_state) == {"video", "image"}
  encoder = jax.device_get(state.params["encoder"])
  assert encoder["video_mod_embed"].shape == (1, 1, 24)
  for name in ("patch_embed_img", "img_mod_embed"):
    moved = jax.tree_util.tree_map(lambda a, b: float(np.abs(a - b).max()), encoder[name],
                                   initial[name])
    assert max(jax.tree_util.tree_leaves(moved)) > 0, name
