"""The one clip layout ``[B, S, V, T, H, W, C]`` and its helpers (``data.clips``)."""
import numpy as np
import pytest

from jepa_jax import data
from jepa_jax.data import clips as clips_lib


def test_spec_of_a_data_section_and_its_shape():
  cfg = data.default_data_config()
  cfg.num_frames, cfg.frame_step, cfg.crop_size = 8, 3, 64
  spec = data.ClipSpec.of(cfg, segments=2, views=3)
  assert spec == data.ClipSpec(frames=8, frame_step=3, size=64, segments=2, views=3)
  assert spec.shape(5) == (5, 2, 3, 8, 64, 64, 3)


def test_flatten_is_example_then_segment_then_view_and_unflatten_inverts_it():
  video = np.arange(2 * 3 * 4).reshape(2, 3, 4, 1, 1, 1, 1)  # value = (b * 3 + s) * 4 + v
  flat = clips_lib.flatten(video)
  assert flat.shape == (24, 1, 1, 1, 1) and flat[:, 0, 0, 0, 0].tolist() == list(range(24))
  per_clip = flat[:, 0, 0, 0]  # [B*S*V, 1]: one output per clip
  again = clips_lib.unflatten(per_clip, 2, 3, 4)
  assert again.shape == (2, 12, 1) and again[1, :, 0].tolist() == list(range(12, 24))


def test_single_clips_in_and_out_of_the_batch_layout():
  clips = np.zeros((5, 4, 8, 8, 3), np.uint8)
  batch = clips_lib.batch_of(clips)
  assert batch.shape == (5, 1, 1, 4, 8, 8, 3)
  assert clips_lib.single(batch).shape == clips.shape
  with pytest.raises(ValueError, match=r"one clip per example.*\(5, 2, 1, 4, 8, 8, 3\)"):
    clips_lib.single(np.zeros((5, 2, 1, 4, 8, 8, 3)))
  with pytest.raises(ValueError, match=r"expected clips \[B, T, H, W, C\]"):
    clips_lib.batch_of(batch)
