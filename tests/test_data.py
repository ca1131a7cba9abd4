"""Data pipeline pieces: index parsing, clip sampling, PyAV decoding, transforms, normalisation,
and the synthetic video set."""
import json
import os

import av
import numpy as np
import pytest

from jepa_jax.data import decode
from jepa_jax.data import normalize as normalize_lib
from jepa_jax.data import sources
from jepa_jax.data import synthetic
from jepa_jax.data import transforms

import video_files

SYNTHETIC_VIDEOS = 12


@pytest.fixture(scope="session")
def synthetic_index(tmp_path_factory):
  # ensure_synthetic is idempotent: test_data_pipeline.py asks for the same directory and reuses it.
  return synthetic.ensure_synthetic(str(tmp_path_factory.getbasetemp() / "synthetic"),
                                    SYNTHETIC_VIDEOS, seed=0)


# ---------------------------------------------------------------- sources


def test_read_index_formats(tmp_path):
  (tmp_path / "sub").mkdir()
  index = tmp_path / "sub" / "index.csv"
  index.write_text("path label\n"  # header
                   "a.mp4 3\n"
                   "\n# comment\n"
                   "dir/b.mp4\t4\n"
                   "/abs/c.mp4,5\n"
                   "d.mp4\n"
                   "my video.mp4 6\n"
                   "e.mp4 7.0\n")
  src = sources.read_index(str(index))
  root = str(tmp_path / "sub")
  assert src.paths == [f"{root}/a.mp4", f"{root}/dir/b.mp4", "/abs/c.mp4", f"{root}/d.mp4",
                       f"{root}/my video.mp4", f"{root}/e.mp4"]
  assert src.labels.tolist() == [3, 4, 5, -1, 6, 7]
  with pytest.raises(FileNotFoundError, match="video index not found"):
    sources.read_index(str(tmp_path / "nope.csv"))


def test_scan_directory(tmp_path):
  for name in ["b/x.mp4", "a.MKV", "c.txt", "b/y.webm"]:
    (tmp_path / name).parent.mkdir(exist_ok=True)
    (tmp_path / name).write_bytes(b"")
  src = sources.load_source(str(tmp_path))
  assert [os.path.relpath(p, tmp_path) for p in src.paths] == ["a.MKV", "b/x.mp4", "b/y.webm"]
  assert src.labels.tolist() == [-1, -1, -1]


# ---------------------------------------------------------------- clip sampling


def test_clip_indices_match_reference_formula():
  # Eval: centred window of 64 frames, 16 indices from linspace(start, start + 64, 16).
  idx = decode.clip_frame_indices(200, 16, 4)
  start = (200 - 64) // 2
  expected = np.clip(np.linspace(start, start + 64, 16), start, start + 63).astype(np.int64)
  np.testing.assert_array_equal(idx[0], expected)
  assert idx[0, -1] - idx[0, 0] == 63
  # Train: random start, always inside the video, same spacing.
  rng = np.random.default_rng(0)
  for _ in range(50):
    i = decode.clip_frame_indices(100, 16, 4, rng=rng)[0]
    assert 0 <= i[0] and i[-1] <= 99 and i[-1] - i[0] == 63


def test_short_video_pad_and_skip():
  # Reference padding: 20 // 4 = 5 indices over the video, then the last frame repeated.
  idx = decode.clip_frame_indices(20, 16, 4, short_policy="pad")[0]
  np.testing.assert_array_equal(idx, [0, 5, 10, 15] + [19] * 12)
  assert decode.clip_frame_indices(3, 16, 4)[0].tolist() == [2] * 16
  with pytest.raises(decode.VideoReadError) as e:
    decode.clip_frame_indices(20, 16, 4, short_policy="skip")
  assert e.value.reason == "too_short"


def test_segments_one_clip_each():
  n, s = 1000, 4
  for rng in [None, np.random.default_rng(1)]:
    idx = decode.clip_frame_indices(n, 8, 4, num_clips=s, rng=rng)
    assert idx.shape == (s, 8)
    for k in range(s):  # each clip inside its own segment
      assert k * 250 <= idx[k].min() and idx[k].max() < (k + 1) * 250
  # Overlap mode (segments shorter than a clip, video longer): evenly spaced full clips.
  idx = decode.clip_frame_indices(60, 8, 4, num_clips=3, allow_segment_overlap=True)
  assert idx[:, 0].tolist() == [0, 14, 28] and (idx[:, -1] - idx[:, 0] == 31).all()
  rng = np.random.default_rng(0)
  for _ in range(20):
    idx = decode.clip_frame_indices(60, 8, 4, num_clips=3, rng=rng, allow_segment_overlap=True)
    assert (np.diff(idx[:, 0]) >= 0).all() and idx.max() <= 59 and (idx[:, -1] - idx[:, 0] == 31).all()


# ---------------------------------------------------------------- decoding


def test_decode_returns_exact_frames(tmp_path):
  n = 300
  path = video_files.write_frames(str(tmp_path / "coded.mp4"), video_files.coded_frames(n))
  for seed in range(8):  # random starts: most need a seek past several keyframes
    clips = decode.read_video_clips(path, 16, 4, num_clips=2, rng=np.random.default_rng(seed))
    expected = decode.clip_frame_indices(n, 16, 4, 2, np.random.default_rng(seed))
    got = np.array([[video_files.read_code(f) for f in clip] for clip in clips])
    np.testing.assert_array_equal(got, expected)
  eval_clips = decode.read_video_clips(path, 8, 4, num_clips=3)
  assert eval_clips.shape == (3, 8, 48, 48, 3) and eval_clips.dtype == np.uint8
  got = [[video_files.read_code(f) for f in clip] for clip in eval_clips]
  np.testing.assert_array_equal(got, decode.clip_frame_indices(n, 8, 4, 3))


def test_decode_variable_frame_rate_by_timestamp(tmp_path):
  files = video_files.make_bad_files(str(tmp_path), _tiny_mp4(tmp_path))
  with av.open(files["vfr"]) as c:
    stream = c.streams.video[0]
    fps = float(stream.average_rate)
    shown = [(f.time, video_files.read_code(f.to_ndarray(format="rgb24"))) for f in c.decode(stream)]
  times = np.array([t for t, _ in shown])
  assert np.ptp(np.diff(times)) > 0.02  # really variable
  clip = decode.read_video_clips(files["vfr"], 8, 4, rng=np.random.default_rng(3))[0]
  idx = decode.clip_frame_indices(len(shown), 8, 4, rng=np.random.default_rng(3))[0]
  for frame, i in zip(clip, idx):  # the frame on screen at time i / fps
    on_screen = np.searchsorted(times, times[0] + i / fps + 1e-6, side="right") - 1
    assert video_files.read_code(frame) == shown[on_screen][1]


def test_decode_odd_sizes_and_pixel_formats(tmp_path):
  files = video_files.make_bad_files(str(tmp_path), _tiny_mp4(tmp_path))
  clip = decode.read_video_clips(files["yuv444p_odd"], 8, 2)
  assert clip.shape == (1, 8, 51, 75, 3) and clip.dtype == np.uint8
  gray = decode.read_video_clips(files["gray"], 8, 4)[0]  # mkv without a frame count
  assert gray.shape == (8, 48, 48, 3)
  assert [video_files.read_code(f) for f in gray] == decode.clip_frame_indices(80, 8, 4)[0].tolist()
  short = decode.read_video_clips(files["three_frames"], 8, 4)[0]  # padded with the last frame
  assert [video_files.read_code(f) for f in short] == [2] * 8


def _full_decode_at(path, num_frames, frame_step, num_clips, seed):
  """The ground truth: decode every frame from the start (no seek, no skipping) and take, for
  each clip time, the frame on screen (the last one whose time is not after it)."""
  with av.open(path) as c:
    stream, n, fps, start = decode.probe(c)
    eps = min(0.25 / fps, 2 * float(stream.time_base) + 1e-6)
    decoded = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(stream)]
  times = np.array([t for t, _ in decoded])
  rng = None if seed is None else np.random.default_rng(seed)
  idx = decode.clip_frame_indices(n, num_frames, frame_step, num_clips, rng)
  pick = np.maximum(np.searchsorted(times, start + idx / fps + eps, side="right") - 1, 0)
  return np.stack([[decoded[i][1] for i in clip] for clip in pick])


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
  """Camera-like H.264 with B-frames (3, pyramid), in several container/timestamp flavours."""
  d = tmp_path_factory.mktemp("footage")
  files = {
      "gop30_b3": video_files.write_footage(str(d / "gop30.mp4"), 96, 64, 160, keyint=30,
                                        preset="veryfast"),
      "gop250_b3": video_files.write_footage(str(d / "gop250.mp4"), 96, 64, 200, keyint=250,
                                         preset="veryfast", seed=1),
      "short": video_files.write_footage(str(d / "short.mp4"), 96, 64, 40, keyint=12,
                                     preset="veryfast", seed=2),
  }
  # Irregular timestamps with B-frames: the same footage muxed with jittered millisecond times.
  rng = np.random.default_rng(0)
  pts = np.concatenate([[0], np.cumsum(rng.integers(20, 50, 119))])
  frames = np.stack([f.to_ndarray(format="rgb24") for f in av.open(files["gop30_b3"]).decode(video=0)])
  files["vfr_b3"] = video_files.write_frames(str(d / "vfr.mp4"), frames[:120], pts_ms=pts)
  files["mkv_ms"] = str(d / "ms.mkv")  # 1/1000 s time base: pts rounded to the millisecond
  with av.open(files["gop30_b3"]) as src, av.open(files["mkv_ms"], "w") as dst:
    out = dst.add_stream_from_template(src.streams.video[0])
    for pkt in src.demux(video=0):
      if pkt.dts is not None:
        pkt.stream = out
        dst.mux(pkt)
  return files


@pytest.mark.parametrize("name,threads", [("gop30_b3", 1), ("gop250_b3", 1), ("gop250_b3", 0),
                                          ("short", 1), ("vfr_b3", 1), ("mkv_ms", 1)])
def test_seeked_decode_equals_full_decode(footage, name, threads):
  """Seeking to the keyframe before each clip and not decoding unneeded non-reference frames
  returns, pixel for pixel, the frames a full decode from the start shows: random clips (some
  near the end), eval clips (several segments per video), a video shorter than a clip; also
  with libavcodec's frame threads."""
  path = footage[name]
  for seed in range(6):
    for frames, step, clips in ((16, 4, 1), (8, 2, 1), (16, 2, 1)):
      got = decode.read_video_clips(path, frames, step, clips, np.random.default_rng(seed),
                                    threads=threads)
      np.testing.assert_array_equal(got, _full_decode_at(path, frames, step, clips, seed),
                                    err_msg=f"{name} seed {seed} {frames}x{step}")
  for clips in (1, 3):
    got = decode.read_video_clips(path, 16, 4, clips, threads=threads)
    np.testing.assert_array_equal(got, _full_decode_at(path, 16, 4, clips, None))


def test_seeked_decode_skips_work_and_falls_back_when_unsafe(footage, monkeypatch):
  """Non-reference frames are really skipped (fewer frames come out of the decoder than a plain
  decode), and a skipped frame that would have been on screen triggers a plain decode."""
  path = footage["gop250_b3"]
  calls = []
  real = decode._decode_span

  def spy(*args, skip_unneeded):
    calls.append(skip_unneeded)
    return real(*args, skip_unneeded=skip_unneeded)

  monkeypatch.setattr(decode, "_decode_span", spy)
  decoded_counts = {}
  for skip in (True, False):
    with av.open(path) as c:
      stream, n, fps, start = decode.probe(c)
      times = start + decode.clip_frame_indices(n, 16, 4, 1, np.random.default_rng(5))[0] / fps
      count = [0]
      original = stream.codec_context.decode

      def counting(packet=None, _orig=original):
        frames = _orig(packet)
        count[0] += len(frames)
        return frames

      monkeypatch.setattr(type(stream.codec_context), "decode",
                          lambda self, packet=None: counting(packet), raising=False)
      real(c, stream, times, fps, first_clip=True, skip_unneeded=skip)
      monkeypatch.undo()
      monkeypatch.setattr(decode, "_decode_span", spy)
      decoded_counts[skip] = count[0]
  assert decoded_counts[True] < 0.8 * decoded_counts[False], decoded_counts
  # A dropped packet between the chosen frame and its time must be caught.
  with pytest.raises(decode._InexactSkip):
    decode._check_nothing_needed_was_dropped([1.02], [1.0], np.array([1.05]), 0.001, 0.001)
  decode._check_nothing_needed_was_dropped([0.9, 1.2], [1.0], np.array([1.05]), 0.001, 0.001)


@pytest.mark.parametrize("name,clips,frames,step", [("gop250_b3", 1, 16, 4), ("gop30_b3", 3, 8, 2),
                                                     ("short", 2, 16, 4)])
def test_decode_copies_each_clip_once(footage, name, clips, frames, step):
  """The read allocates its result once and nothing else of that size: the frames go from
  libswscale's output straight into their slots (stacking the frames, then the clips, held two
  more copies of the clip). numpy's allocations are what tracemalloc sees; PyAV's own frame
  buffers are not numpy's and do not count."""
  import tracemalloc
  path = footage[name]
  decode.read_video_clips(path, frames, step, clips, np.random.default_rng(0))  # warm caches
  tracemalloc.start()
  try:
    got = decode.read_video_clips(path, frames, step, clips, np.random.default_rng(1))
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert got.flags.c_contiguous and got.flags.owndata
  assert peak < 1.25 * got.nbytes, (peak, got.nbytes)
  np.testing.assert_array_equal(got, _full_decode_at(path, frames, step, clips, 1))


def test_decode_without_length_in_header(footage, monkeypatch):
  """A container whose header gives neither a frame count nor a duration is decoded whole and
  indexed; that path fills the same single array, a frame taken by several slots (padding)
  identical in each."""
  path = footage["short"]  # 40 frames
  with av.open(path) as c:
    full = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
  real_probe = decode.probe
  monkeypatch.setattr(decode, "probe", lambda c: real_probe(c)[:1] + (0,) + real_probe(c)[2:])
  for frames, step, clips in ((8, 4, 1), (8, 2, 2), (16, 4, 1)):  # the last one pads
    got = decode.read_video_clips(path, frames, step, clips)
    idx = decode.clip_frame_indices(len(full), frames, step, clips)
    np.testing.assert_array_equal(got, np.stack([[full[i] for i in clip] for clip in idx]))
    assert got.flags.owndata


@pytest.mark.parametrize("kind,reason", [
    ("truncated", "open_error"), ("random_bytes", "open_error"), ("text", "open_error"),
    ("empty", "empty_file"), ("missing", "missing")])
def test_decode_bad_files_raise_with_reason(tmp_path, kind, reason):
  files = video_files.make_bad_files(str(tmp_path), _tiny_mp4(tmp_path))
  with pytest.raises(decode.VideoReadError) as e:
    decode.read_video_clips(files[kind], 8, 4)
  assert e.value.reason == reason


def _tiny_mp4(tmp_path):
  return video_files.write_frames(str(tmp_path / "tiny.mp4"), video_files.coded_frames(60, 32, 32))


# ---------------------------------------------------------------- transforms


def test_random_resized_crop_params_in_range():
  rng = np.random.default_rng(0)
  for _ in range(300):
    top, left, h, w = transforms.random_resized_crop_params(rng, 120, 160, (0.3, 1.0), (0.75, 1.35))
    assert 0 <= top and top + h <= 120 and 0 <= left and left + w <= 160
    assert 0.3 * 0.8 <= h * w / (120 * 160) <= 1.0 + 1e-9
    assert 0.7 <= w / h <= 1.45  # rounding of small sides
  # Fallback: a 1 x 100 image cannot host any sampled crop: centred crop at the max ratio.
  assert transforms.random_resized_crop_params(rng, 1, 100, (0.9, 1.0), (0.75, 1.35)) == (0, 49, 1, 1)


def test_train_transform_same_crop_on_all_frames():
  rng = np.random.default_rng(0)
  frame = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
  clip = np.stack([frame] * 4)
  outs = [transforms.train_transform(clip, np.random.default_rng(s), 32) for s in range(10)]
  for out in outs:
    assert out.shape == (4, 32, 32, 3) and out.dtype == np.uint8
    assert all((out[t] == out[0]).all() for t in range(4))
  assert len({o.tobytes() for o in outs}) == 10  # crops differ between draws
  # Same rng -> same output (no hidden global randomness).
  a = transforms.train_transform(clip, np.random.default_rng(5), 32)
  np.testing.assert_array_equal(a, outs[5])


def test_flip_happens_about_half_the_time():
  clip = np.zeros((1, 10, 10, 3), np.uint8)
  clip[:, :, :5] = 255  # left half white; scale 1, ratio 1 -> the whole frame
  flips = [transforms.train_transform(clip, np.random.default_rng(s), 10, (1, 1), (1, 1))[0, 0, 0, 0] == 0
           for s in range(200)]
  assert 70 < sum(flips) < 130


def test_eval_views():
  clip = np.zeros((2, 100, 150, 3), np.uint8)
  clip[..., 0] = np.arange(150, dtype=np.uint8)[None, None, :]  # column index in red
  one = transforms.eval_views(clip, 64, 1)  # short side -> int(64 * 256 / 224) = 73, centre 64
  assert one.shape == (1, 2, 64, 64, 3)
  three = transforms.eval_views(clip, 64, 3)  # short side -> 64, long 96: crops at 0, 16, 32
  assert three.shape == (3, 2, 64, 64, 3)
  left_edges = three[:, 0, 32, 0, 0].astype(int)
  assert left_edges[0] < left_edges[1] < left_edges[2]
  assert abs(left_edges[2] - 32 * 150 / 96) < 3


def test_normalize():
  import jax.numpy as jnp
  x = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 4, 3), dtype=np.uint8)
  mean, std = np.array(normalize_lib.IMAGENET_MEAN), np.array(normalize_lib.IMAGENET_STD)
  expected = (x / 255.0 - mean) / std
  out = normalize_lib.normalize(x)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)
  assert normalize_lib.normalize(x, jnp.bfloat16).dtype == jnp.bfloat16


# ---------------------------------------------------------------- synthetic set


def test_synthetic_set_files(synthetic_index):
  root = os.path.dirname(synthetic_index)
  meta = json.load(open(os.path.join(root, "metadata.json")))
  assert meta["num_videos"] == SYNTHETIC_VIDEOS and len(meta["videos"]) == SYNTHETIC_VIDEOS
  assert len(meta["class_names"]["motion"]) == 16
  idx = sources.read_index(synthetic_index)
  assert len(idx) == SYNTHETIC_VIDEOS and idx.labels.max() < 16
  for attr in synthetic.ATTRIBUTES:
    full = sources.read_index(os.path.join(root, f"index_{attr}.csv"))
    train = sources.read_index(os.path.join(root, f"train_{attr}.csv"))
    val = sources.read_index(os.path.join(root, f"val_{attr}.csv"))
    assert set(train.paths).isdisjoint(val.paths) and len(val) > 0
    assert sorted(train.paths + val.paths) == sorted(full.paths)
    assert full.labels.tolist() == [v[attr] for v in meta["videos"]]
  v = meta["videos"][0]
  with av.open(os.path.join(root, v["path"])) as c:
    s = c.streams.video[0]
    assert (s.codec_context.name, s.format.name) == ("h264", "yuv420p")
    assert (s.width, s.height, s.frames) == (v["width"], v["height"], v["num_frames"])
    assert float(s.average_rate) == 30
  for v in meta["videos"]:
    assert 96 <= v["height"] <= 160 and v["width"] % 2 == 0 and 150 <= v["num_frames"] <= 400


def test_ensure_synthetic_idempotent(synthetic_index, tmp_path):
  root = os.path.dirname(synthetic_index)
  mtime = os.path.getmtime(os.path.join(root, "metadata.json"))
  assert synthetic.ensure_synthetic(root, SYNTHETIC_VIDEOS, seed=0) == synthetic_index
  assert os.path.getmtime(os.path.join(root, "metadata.json")) == mtime
  with pytest.raises(ValueError, match="num_videos=12"):
    synthetic.ensure_synthetic(root, SYNTHETIC_VIDEOS + 1, seed=0)
  # No temporary directories left next to the set.
  assert [d for d in os.listdir(os.path.dirname(root)) if ".tmp-" in d] == []


@pytest.mark.parametrize("direction", range(4))
def test_synthetic_motion_direction_visible(direction):
  attrs = synthetic.sample_attributes(np.random.default_rng(direction))
  attrs.update(direction=direction, speed=1, speed_px=1.5, num_frames=6, height=96, width=96,
               start=[48.0, 48.0])
  frames = synthetic.render_video(attrs).astype(np.float32)
  colour = synthetic._COLOURS[attrs["colour"]]
  centroids = []
  for f in frames:
    ys, xs = np.nonzero(np.abs(f - colour).sum(-1) < 30)
    centroids.append((xs.mean(), ys.mean()))
  dx, dy = np.subtract(centroids[-1], centroids[0])
  expected = synthetic._DIRECTIONS[direction] * 1.5 * 5
  assert abs(dx - expected[0]) < 2 and abs(dy - expected[1]) < 2
