"""Encoder features of your own videos, written to files any tool can read.

  python -m jepa_jax.extract --checkpoint DIR --out OUT SOURCE... [--pool none|mean|probe]
      [--probe PROBE_DIR] [--layers K[,K...]] [--frames 16 --frame-step 4 --resolution 224]
      [--window W [--stride S] [--last pad|drop]] [--batch-size 8] [--dtype float32|float16]

SOURCE: video or image files, directories (scanned for videos and images), index files
(``path [label]`` per line) or ``tfds:name@split`` (videos or images). ``--checkpoint``: a
trainer workdir or converted weights; the EMA target encoder unless ``--checkpoint-key online``.
The encoder is rebuilt for ``--frames`` x ``--resolution`` clips (positions follow the grid).

What is encoded, per video (an image is one clip, the image repeated along time as the frozen
image eval does, resized and centre-cropped as below, with or without ``--window``):

* without ``--window``: one clip of ``--frames`` frames at ``--frame-step``, centred in the video
  (the eval's validation clip; a short video is padded with its last frame), resized so its short
  side is 256/224 of the crop and centre-cropped to ``--resolution``;
* with ``--window W``: sliding windows over the whole video. A window covers ``W`` source frames
  (default ``frames * frame_step``) and its clip is ``--frames`` frames spread over them as the
  reference samples a clip (``floor(linspace(start, start + W, frames))``, at most
  ``start + W - 1``). Windows start at frames 0, S, 2S, ... (``--stride S``, default W) while they
  fit in the video. If the last of them ends before the video does (or the video is shorter than
  W), one more window starts at the next stride position: ``--last pad`` (default) keeps it,
  repeating the video's last frame for the frames past its end, ``--last drop`` leaves it out. So
  with pad and S <= W every frame of the video lies in some window; with drop the tail after the
  last full window is not encoded; with S > W the frames between windows are skipped.

What is written, per window (float32 unless ``--dtype float16``):

* ``--pool none``: every token, ``[N, D]`` (N = t x h x w tokens in (time, height, width) order,
  the grid in meta.json); with several ``--layers``, ``[L, N, D]``;
* ``--pool mean``: the tokens' mean, ``[D]`` (``[L, D]`` with several layers);
* ``--pool probe --probe DIR``: the pooled query of a saved attentive probe (its classifier's
  input), ``[D]``, over one window's tokens (a probe trained on S segments saw S clips' tokens
  at once); the probe reads the layers it was trained on (or ``--layers``).

``--layers``: 0-based encoder blocks; each block's output goes through the encoder's final
LayerNorm, as the eval's ``feature_layer`` does. Default: the encoder's output.

Output layout of OUT (readable with numpy alone):

* ``meta.json``: the checkpoint, encoder, settings, token grid and layout, written first; a rerun
  with other settings into the same OUT is refused;
* ``features/<position>_<name>.npy``: one array per video, ``[num_windows, *per-window shape]``
  (``num_windows`` = 1 without ``--window``);
* ``index.jsonl``: one JSON line per finished video: ``position`` (in the source list),
  ``video``, ``label``, ``file``, ``shape``, ``dtype``, ``num_frames`` (frames decoded; -1 for a
  file without ``--window``, which is not decoded whole; 1 for an image) and ``windows`` (null
  without ``--window`` and for images): per window ``start``/``end`` (the source frames it
  covers, end exclusive, clipped to the video), ``frames`` (the source frames its clip shows) and
  ``padded`` (how many of them repeat the last frame);
* ``failures.jsonl``: one line per unreadable video (``video``, ``error``), skipped and counted.

Resumable: a video counts as done once its line is in index.jsonl (written after its array, which
is renamed into place whole), so rerunning the same command after an interruption skips what is
done and rewrites only what was not finished; the files are the same as an uninterrupted run's.
Batched (windows of several videos per encoder pass, batches padded to one shape so one program
is compiled) and split over every local device; decoding runs in ``--workers`` threads ahead of
the encoder. Single process.
"""
