"""Encoder features of your own videos, written to files any tool can read.

  python -m jepa_jax.extract --checkpoint DIR --out OUT SOURCE... [--pool none|mean|probe]
      [--probe PROBE_DIR] [--layers K[,K...]] [--frames 16 --frame-step 4 --resolution 224]
      [--window W [--stride S] [--last pad|drop]] [--batch-size 8] [--dtype float32|float16]

SOURCE: video or image files (an image is a clip repeated along time), directories, index files
or ``tfds:name@split``. ``--checkpoint``: a workdir or converted weights (the EMA target encoder
unless ``--checkpoint-key online``), rebuilt for ``--frames`` x ``--resolution`` clips.

Clips: without ``--window``, one per video, the eval's centred validation clip. With ``--window W``
(source frames, default ``frames * frame_step``), windows start at 0, S, 2S, ... (``--stride S``,
default W) while they fit; if the video goes on past the last, one more starts at the next stride
position, kept with the last frame repeated (``--last pad``) or left out (``drop``). A window's
clip is ``--frames`` frames spread over it as the reference samples a clip.

Per window: every token ``[N, D]`` (``--pool none``, (t, h, w) order), their mean ``[D]``, or a
saved probe's pooled query ``[D]`` (``--pool probe``); ``--layers`` adds a leading ``[L]`` axis
(each block's output through the final LayerNorm, as the eval's ``feature_layer``).

OUT: ``meta.json`` (checkpoint, settings, token grid; a rerun with other settings is refused),
``features/<position>_<name>.npy`` per video (``[num_windows, ...]``), ``index.jsonl`` (one line
per finished video, with its windows' source frames) and ``failures.jsonl`` (unreadable videos,
skipped). A video is done once its index line is written, after its array is renamed into place,
so rerunning after an interruption gives the files of an uninterrupted run. Every field:
docs/tools.md.
"""
