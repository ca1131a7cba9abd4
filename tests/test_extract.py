"""python -m jepa_jax.extract: the window plan, the frames read, features equal to the encoder's
(and the eval's tokens), pooling, the file layout, resuming after a kill, bad videos."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import video_files
from jepa_jax import checkpoint as ckpt_lib
from jepa_jax.extract import __main__ as extract_cli
from jepa_jax.extract import output as output_lib
from jepa_jax.extract import reading
from jepa_jax.extract import windows as window_lib
from jepa_jax.extract.run import run as extract_run
from jepa_jax.extract.settings import Settings
from jepa_jax import models
from jepa_jax.data import normalize as normalize_lib
from jepa_jax.eval import encoder as enc_lib
from jepa_jax.eval import probe as probe_lib

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}
FLAGS = ["--frames", "4", "--frame-step", "2", "--resolution", "32", "--batch-size", "3",
         "--workers", "2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """A tiny encoder checkpoint (built for 4 x 32 px clips: 2 x 2 x 2 tokens) and three coded
  videos of different lengths."""
  root = tmp_path_factory.mktemp("extract")
  enc = models.build_encoder("tiny", img_size=32, num_frames=4, patch_size=16, tubelet_size=2,
                             **TINY)
  params = jax.device_get(models.init_params(enc, jax.random.PRNGKey(3), jit=True))
  cfg = {"model": {"name": "tiny", "patch_size": 16, "tubelet_size": 2, "uniform_power": True,
                   "scan": False, "overrides": dict(TINY)}}
  ckpt = str(root / "ckpt")
  ckpt_lib.save_params(ckpt, {"encoder": params, "target": params}, config=cfg, step=1)
  videos = [video_files.write_frames(str(root / f"v{n}.mp4"), video_files.coded_frames(n))
            for n in (21, 9, 34)]
  return ckpt, params, videos


def run(tiny_fixture, out, *extra):
  ckpt, _, videos = tiny_fixture
  assert extract_cli.main(["--checkpoint", ckpt, "--out", str(out), *FLAGS, *extra, *videos]) == 0
  index = [json.loads(line) for line in open(os.path.join(out, "index.jsonl"))]
  return index, [np.load(os.path.join(out, r["file"])) for r in index]


# ----------------------------------------------------------------------------- windows


@pytest.mark.parametrize("n", [1, 5, 8, 9, 16, 17, 30, 31, 64])
@pytest.mark.parametrize("window,stride", [(8, 8), (8, 3), (8, 1), (5, 5), (12, 7)])
def test_windows_cover_the_video_as_documented(n, window, stride):
  frames = 4
  padded = window_lib.window_plan(n, frames, window, stride, "pad")
  covered = set()
  for w in padded:
    assert w.start % stride == 0 and w.end == min(w.start + window, n) and len(w.frames) == frames
    assert all(w.start <= f < w.end for f in w.frames)
    assert w.padded == sum(1 for k in range(frames) if w.start + window_lib.clip_offsets(
        window, frames)[k] > n - 1)
    covered |= set(range(w.start, w.end))
  assert covered == set(range(n))  # stride <= window: every frame lies in some window
  dropped = window_lib.window_plan(n, frames, window, stride, "drop")
  assert all(w.padded == 0 and w.end - w.start == window for w in dropped)
  assert dropped == [w for w in padded if w.end - w.start == window]
  if dropped:
    assert n - dropped[-1].end < stride  # the tail not encoded is shorter than a stride
  else:
    assert n < window


def test_windows_with_gaps_and_the_reference_clip_spacing():
  plan = window_lib.window_plan(30, 4, 8, 12, "pad")
  assert [(w.start, w.end) for w in plan] == [(0, 8), (12, 20), (24, 30)]
  assert plan[-1].frames == (24, 26, 29, 29) and plan[-1].padded == 1  # 24 + (0, 2, 5, 7)
  assert list(window_lib.clip_offsets(64, 16))[-2:] == [59, 63]  # floor(linspace(0, 64, 16)), <= 63


def test_read_windows_returns_the_planned_source_frames(tiny):
  _, _, videos = tiny
  from jepa_jax.data import sources
  src = sources.FileVideoSource([videos[2]], [-1])
  settings = Settings(frames=4, frame_step=2, resolution=32, window=8, stride=5,
                              last="pad", pool="none", layers=None, dtype="float32")
  clips, windows, n = reading.read_windows(src, 0, settings)
  assert n == 34 and clips.shape == (len(windows), 4, 32, 32, 3)
  assert windows == window_lib.window_plan(34, 4, 8, 5, "pad")
  got = [[video_files.read_code(f) for f in clip] for clip in clips]
  assert got == [list(w.frames) for w in windows]
  # In-memory videos (a TFDS source) follow the same plan.
  array = sources.ArraySource([{"video": video_files.coded_frames(30, 96, 96), "label": 2}],
                              "video")
  clips, windows, n = reading.read_windows(array, 0, settings)
  assert n == 30 and windows == window_lib.window_plan(30, 4, 8, 5, "pad")
  got = [[video_files.read_code(f) for f in clip] for clip in clips]
  assert got == [list(w.frames) for w in windows]


# ----------------------------------------------------------------------------- features


def encoder_and_params(tiny_fixture):
  _, params, _ = tiny_fixture
  enc = models.build_encoder("tiny", img_size=32, num_frames=4, patch_size=16, tubelet_size=2,
                             **TINY)
  return enc, params


def test_window_features_equal_the_encoder_on_the_same_clips(tiny, tmp_path):
  index, feats = run(tiny, tmp_path / "none", "--window", "8", "--stride", "6", "--layers", "0,1")
  enc, params = encoder_and_params(tiny)
  from jepa_jax.data import sources
  _, _, videos = tiny
  assert [r["video"] for r in index] == videos and [r["position"] for r in index] == [0, 1, 2]
  for r, f in zip(index, feats):
    src = sources.FileVideoSource([r["video"]], [-1])
    settings = Settings(4, 2, 32, 8, 6, "pad", "none", [0, 1], "float32")
    clips, windows, n = reading.read_windows(src, 0, settings)
    assert r["num_frames"] == n and r["windows"] == [w.to_json() for w in windows]
    want = enc.apply({"params": params}, normalize_lib.normalize(clips), out_layers=(0, 1))
    want = np.stack([np.asarray(x) for x in want], axis=1)  # [W, L, N, D]
    assert f.shape == tuple(r["shape"]) == (len(windows), 2, 8, 32) and f.dtype == np.float32
    np.testing.assert_allclose(f, want, atol=1e-5, rtol=1e-5)
  meta = json.load(open(tmp_path / "none" / "meta.json"))
  assert meta["token_grid"] == [2, 2, 2] and meta["layers"] == [0, 1] and meta["window"] == 8
  _, means = run(tiny, tmp_path / "mean", "--window", "8", "--stride", "6", "--layers", "0,1",
                 "--pool", "mean")
  for f, m in zip(feats, means):
    np.testing.assert_allclose(m, f.mean(axis=-2), atol=1e-5)


def test_clip_features_equal_the_eval_tokens(tiny, tmp_path):
  """Without --window: the eval's centred validation clip, so the features are the tokens the
  eval's pipeline and token function make of the same videos."""
  index, feats = run(tiny, tmp_path / "clip")
  ckpt, params, videos = tiny
  idx_file = tmp_path / "videos.csv"
  idx_file.write_text("".join(f"{v} 0\n" for v in videos))
  from jepa_jax.data import make_eval_dataset
  from jepa_jax.eval import config as config_lib
  c = config_lib.base_eval_config()
  c.data.crop_size, c.data.num_threads = 32, 1
  c.data.num_frames, c.data.frame_step = 4, 2
  ds = make_eval_dataset(c.data, str(idx_file), batch_size=3)
  batch = next(iter(ds))
  enc, _ = encoder_and_params(tiny)
  tokens = np.asarray(jax.jit(enc_lib.make_token_fn(enc))(params, batch["video"]))[:, 0]
  assert all(r["windows"] is None for r in index)
  np.testing.assert_allclose(np.stack([f[0] for f in feats]), tokens, atol=1e-5, rtol=1e-5)


def test_probe_pooling_is_the_classifier_input(tiny, tmp_path):
  ckpt, params, videos = tiny
  probe = probe_lib.probe_from_config(dict(num_classes=5, num_heads=2, mlp_ratio=4.0, depth=1,
                                           num_queries=1, embed_dim=32, blocks_on="query"))
  probe_params = probe_lib.init_probe_params(probe, 32, 0)
  saved = dict(num_classes=5, num_heads=2, mlp_ratio=4.0, depth=1, num_queries=1, embed_dim=32,
               blocks_on="query")
  ckpt_lib.save_probe(tmp_path / "probe", jax.device_get(probe_params), saved)
  index, pooled = run(tiny, tmp_path / "pooled", "--pool", "probe", "--probe",
                      str(tmp_path / "probe"))
  _, tokens = run(tiny, tmp_path / "tokens")
  for p, t in zip(pooled, tokens):
    assert p.shape == (1, 32)
    logits = probe.apply({"params": probe_params}, jnp.asarray(t))
    lin = probe_params["linear"]
    np.testing.assert_allclose(p @ np.asarray(lin["kernel"]) + np.asarray(lin["bias"]), logits,
                               atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- behaviour


def test_killed_and_restarted_extraction_gives_the_same_files(tiny, tmp_path, monkeypatch):
  flags = ["--window", "8", "--stride", "4", "--dtype", "float16"]
  run(tiny, tmp_path / "whole", *flags)
  # Killed after the second video's array was renamed into place, before its index line, with
  # a half-written line and a stray temporary file left behind.
  real_write = output_lib.Output.write
  calls = []

  def dying_write(self, position, name, record, features):
    calls.append(position)
    if len(calls) == 2:
      path = os.path.join(self.out, name)
      np.save(path, features)
      with open(os.path.join(self.out, "index.jsonl"), "a") as f:
        f.write('{"position": 1, "vid')
      open(os.path.join(self.out, "features", "x.npy.tmp"), "w").write("partial")
      raise KeyboardInterrupt
    return real_write(self, position, name, record, features)

  monkeypatch.setattr(output_lib.Output, "write", dying_write)
  with pytest.raises(KeyboardInterrupt):
    run(tiny, tmp_path / "resumed", *flags)
  monkeypatch.setattr(output_lib.Output, "write", real_write)
  assert len(open(tmp_path / "resumed" / "index.jsonl").read().splitlines()) == 2  # 1 + cut line
  run(tiny, tmp_path / "resumed", *flags)
  whole, resumed = tmp_path / "whole", tmp_path / "resumed"
  assert open(whole / "index.jsonl").read() == open(resumed / "index.jsonl").read()
  assert open(whole / "meta.json").read() == open(resumed / "meta.json").read()
  names = sorted(os.listdir(whole / "features"))
  assert names == sorted(n for n in os.listdir(resumed / "features") if not n.endswith(".tmp"))
  for n in names:
    assert open(whole / "features" / n, "rb").read() == open(resumed / "features" / n, "rb").read()
  # A third run finds everything done.
  ckpt, _, videos = tiny
  counts = extract_run(extract_cli.parse_args(["--checkpoint", ckpt, "--out", str(resumed), *FLAGS,
                                           *flags, *videos]))
  assert counts == dict(done=0, skipped_done=3, failed=0, windows=0)


def test_bad_videos_are_skipped_and_counted_and_settings_are_checked(tiny, tmp_path, capsys):
  ckpt, _, videos = tiny
  bad = tmp_path / "bad.mp4"
  bad.write_bytes(b"\x00" * 100)
  args = ["--checkpoint", ckpt, "--out", str(tmp_path / "o"), *FLAGS]
  assert extract_cli.main(args + [videos[0], str(bad), videos[1]]) == 0
  assert "2 videos extracted (2 windows), 0 already done, 1 unreadable" in capsys.readouterr().out
  failures = [json.loads(x) for x in open(tmp_path / "o" / "failures.jsonl")]
  assert [f["video"] for f in failures] == [str(bad)]
  assert extract_cli.main(args + ["--resolution", "32", videos[0]]) == 1
  assert "other settings" in capsys.readouterr().err
  assert extract_cli.main(args + ["--pool", "probe", videos[0]]) == 1
  assert "--probe" in capsys.readouterr().err


def test_empty_and_corrupt_files_give_the_pipelines_message(tiny, tmp_path):
  """Both of extract's reads (the centred clip, and the whole decode of --window) go through
  data/decode.py, so an empty or corrupt file is refused with the reason and detail the
  training and eval pipelines give (their ``VideoReadError``); the --window read had its own
  decoder, which opened an empty file and reported PyAV's error instead of ``empty_file``."""
  from jepa_jax.data import decode  # noqa: PLC0415
  ckpt, _, videos = tiny
  empty, corrupt = tmp_path / "empty.mp4", tmp_path / "corrupt.mp4"
  empty.write_bytes(b"")
  corrupt.write_bytes(b"\x00\x01 not a video" * 20)
  pipeline = {}
  for path in (empty, corrupt):
    with pytest.raises(decode.VideoReadError) as e:
      decode.read_video_clips(str(path), 4, 2)
    pipeline[str(path)] = str(e.value)
  assert pipeline[str(empty)] == "empty_file: zero bytes"
  assert pipeline[str(corrupt)].startswith("open_error: ")
  for k, extra in enumerate(([], ["--window", "8"])):
    out = tmp_path / f"o{k}"
    assert extract_cli.main(["--checkpoint", ckpt, "--out", str(out), *FLAGS, *extra, videos[1],
                         str(empty), str(corrupt)]) == 0
    failures = {f["video"]: f["error"] for f in map(json.loads, open(out / "failures.jsonl"))}
    assert failures == pipeline, extra


def test_a_damaged_newest_checkpoint_is_skipped_as_the_trainer_does(tiny, tmp_path, caplog):
  """eval and extract read the encoder through ``load_frozen_encoder``: with the newest
  checkpoint damaged they use the previous readable one and warn naming the skipped one, as the
  trainer does (they stopped with "checkpoint 2 ... is unreadable"); nothing is moved."""
  import logging
  import shutil
  source, params, videos = tiny
  ckpt = tmp_path / "ckpt"
  shutil.copytree(source, ckpt)
  other = jax.tree_util.tree_map(lambda x: x + 1, params)
  cfg = ckpt_lib.read_config(str(ckpt))
  ckpt_lib.save_params(str(ckpt), {"encoder": other, "target": other}, config=cfg, step=2)
  data = sorted((ckpt / "checkpoints" / "2" / "params").glob("ocdbt.process_0/d/*"),
                key=lambda p: p.stat().st_size)[-1]
  data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])
  out = tmp_path / "out"
  with caplog.at_level(logging.WARNING, logger="jepa_jax.checkpoint"):
    assert extract_cli.main(["--checkpoint", str(ckpt), "--out", str(out), *FLAGS, videos[0]]) == 0
  warnings = [r.getMessage() for r in caplog.records if r.name == "jepa_jax.checkpoint"]
  assert len(warnings) == 1 and warnings[0].startswith("Skipped checkpoint 2: checkpoint 2 in "), \
      warnings
  assert warnings[0].endswith("; using checkpoint 1") and "\n" not in warnings[0]
  assert json.load(open(out / "meta.json"))["checkpoint"] == str(ckpt)
  _, loaded, info = enc_lib.load_frozen_encoder(_eval_config(str(ckpt)))
  assert info["step"] == 1
  for x, y in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert sorted(p.name for p in (ckpt / "checkpoints").iterdir()) == ["1", "2"]  # moved nothing


def _eval_config(checkpoint):
  from jepa_jax.eval import config as config_lib
  c = config_lib.base_eval_config()
  c.checkpoint = checkpoint
  c.data.num_frames, c.data.crop_size = 4, 32
  return c


def test_images_are_clips_of_the_image_repeated_as_the_image_eval_makes_them(tiny, tmp_path):
  """Image files and directories: each image is one clip, the eval's view of it repeated along
  time (``as_clips``), so its tokens are those of the eval's token function on the image."""
  from PIL import Image
  ckpt, params, videos = tiny
  rng = np.random.default_rng(0)
  folder = tmp_path / "folder"
  (folder / "sub").mkdir(parents=True)
  colour = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
  grey = rng.integers(0, 256, (48, 36), dtype=np.uint8)
  Image.fromarray(colour).save(folder / "a.png")
  Image.fromarray(grey).save(folder / "sub" / "b.png")
  os.symlink(videos[1], folder / "v.mp4")
  single = tmp_path / "single.png"
  Image.fromarray(colour[::-1]).save(single)
  broken = tmp_path / "broken.jpg"
  broken.write_bytes(b"not a jpeg")
  out = tmp_path / "out"
  assert extract_cli.main(["--checkpoint", ckpt, "--out", str(out), *FLAGS, "--window", "8",
                       str(single), str(broken), videos[0], str(folder)]) == 0
  index = [json.loads(line) for line in open(out / "index.jsonl")]
  # Order: the files as given, then the folder's videos, then its images (sorted).
  assert [(r["position"], os.path.basename(r["video"])) for r in index] == [
      (0, "single.png"), (2, os.path.basename(videos[0])), (3, "v.mp4"), (4, "a.png"),
      (5, "b.png")]
  assert [json.loads(x)["video"] for x in open(out / "failures.jsonl")] == [str(broken)]
  images = {r["position"]: r for r in index if r["video"].endswith(".png")}
  assert all(r["windows"] is None and r["num_frames"] == 1 and r["shape"] == [1, 8, 32]
             for r in images.values())
  assert index[1]["windows"] is not None  # the videos keep their windows
  from jepa_jax.data import transforms
  enc, _ = encoder_and_params(tiny)
  views = np.stack([transforms.eval_image(x, 32) for x in (colour[::-1], colour, grey)])
  assert views.shape == (3, 32, 32, 3)
  want = np.asarray(jax.jit(enc_lib.make_token_fn(enc))(params, views))[:, 0]
  got = np.stack([np.load(out / images[p]["file"])[0] for p in (0, 4, 5)])
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
