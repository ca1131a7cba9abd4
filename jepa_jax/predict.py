"""Classify videos with a frozen encoder and a saved attentive probe, or with a fine-tuned
classifier; no training.

  python -m jepa_jax.predict --checkpoint ENCODER_DIR --probe PROBE_DIR [--labels classes.txt]
      [--top-k 5] [--json OUT.json] VIDEO...
  python -m jepa_jax.predict --checkpoint FINETUNE_WORKDIR [--labels classes.txt] VIDEO...

``--probe``: an eval run's ``probes/<run>`` or a converted released probe; without it the
checkpoint must be a fine-tuning workdir, whose head classifies with the run's test protocol.
Videos are read as the eval's validation reads them (segments x views, softmax averaged), with the
protocol saved with the probe, or for a converted probe the reference's K400 one (16 x 4, 8
segments, 3 views, 224 px) unless flags say otherwise (SSv2: ``--segments 2``). ``--labels``: line
i names class i, in the order of the labels the probe was trained on; else the probe's saved names
(a converted released SSv2 or Diving48 probe carries jepa_jax's lists, ``jepa_jax/labels``; README,
"Class names of the released probes"); else class indices. Unreadable videos are reported, skipped
and counted (exit status 1 if any).
"""
import argparse
import json
import logging
import os
import sys

import numpy as np

from jepa_jax import cli, paths
from jepa_jax.errors import ConfigError, InputNotFoundError

log = logging.getLogger(__name__)

PROTOCOL_FLAGS = (("frames", "frames_per_clip"), ("frame_step", "frame_step"),
                  ("segments", "num_segments"), ("views", "num_views"),
                  ("resolution", "resolution"), ("feature_layer", "feature_layer"))


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m jepa_jax.predict", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files to classify")
  p.add_argument("--checkpoint", required=True, help="encoder: trainer workdir or converted weights")
  p.add_argument("--probe", help="probe checkpoint directory (default: the head of a fine-tuned "
                                 "--checkpoint)")
  p.add_argument("--labels", help="class names, one per line, line i = class i")
  p.add_argument("--top-k", type=int, default=5)
  p.add_argument("--checkpoint-key", choices=("target", "online"),
                 help="which encoder (default: the probe's, else target)")
  p.add_argument("--frames", type=int, help="frames per clip")
  p.add_argument("--frame-step", type=int, help="source frames between clip frames")
  p.add_argument("--segments", type=int, help="clips per video (equal segments)")
  p.add_argument("--views", type=int, help="spatial views per clip")
  p.add_argument("--resolution", type=int, help="crop size in pixels")
  p.add_argument("--feature-layer", type=cli.int_list,
                 help="0-based encoder blocks whose tokens the probe reads, comma-separated "
                      "(default: the probe's, else the encoder's output)")
  p.add_argument("--encoder-dtype", default="float32", choices=("float32", "bfloat16", "float16"))
  p.add_argument("--batch-size", type=int, default=8, help="videos per encoder pass")
  p.add_argument("--json", help="also write the predictions to this JSON file")
  args = p.parse_args(argv)
  args.checkpoint = paths.resolve(args.checkpoint)
  args.probe = paths.resolve(args.probe) if args.probe else None
  if args.top_k < 1:
    p.error("--top-k must be at least 1")
  return args


def read_label_names(path: str, num_classes: int) -> list:
  if not os.path.isfile(path):
    raise InputNotFoundError(f"--labels {path}: no such file; give a text file with one class "
                             "name per line")
  with open(path) as f:
    names = [line.strip() for line in f if line.strip()]
  if len(names) != num_classes:
    raise ConfigError(f"{path} names {len(names)} classes but the probe has {num_classes}; give "
                      "one name per line, in the order of the probe's class indices")
  return names


def class_names(labels, probe, num_classes: int):
  """The names to show: ``--labels``, else those saved with the probe (probes imported from
  Hugging Face carry their ``id2label``, converted released probes jepa_jax's list of their
  dataset), else the shipped list of the dataset a converted probe records, else None (indices
  only). Never guessed from the class count."""
  if labels:
    return read_label_names(labels, num_classes)
  if not probe:
    return None
  from jepa_jax import checkpoint as ckpt_lib  # noqa: PLC0415
  from jepa_jax import labels as labels_lib  # noqa: PLC0415
  config = ckpt_lib.read_probe_config(probe)
  saved = config.get(ckpt_lib.CLASS_NAMES)
  if saved:
    return list(saved)
  dataset = (config.get("eval") or {}).get("dataset")
  if dataset not in labels_lib.DATASETS:
    return None
  names = labels_lib.class_names(dataset)
  if names is None:
    log.info("%s", labels_lib.NOT_SHIPPED[dataset])
  elif len(names) != num_classes:
    log.warning("the probe records dataset %s but has %d classes, not %d: showing indices",
                dataset, num_classes, len(names))
    return None
  return names


def eval_config(args, trained: dict):
  """The eval config of the protocol: flags, else the probe's training run, else the defaults."""
  from jepa_jax.eval import config as config_lib  # noqa: PLC0415
  c = config_lib.base_eval_config()
  protocol = dict(trained.get("protocol") or {})
  values = {}
  for flag, key in PROTOCOL_FLAGS:
    given = getattr(args, flag)
    values[key] = given if given is not None else protocol.get(key)
  c.checkpoint = args.checkpoint
  c.checkpoint_key = args.checkpoint_key or trained.get("checkpoint_key") or "target"
  c.encoder_dtype = args.encoder_dtype
  c.data.num_frames = values["frames_per_clip"] or c.data.num_frames
  c.data.frame_step = values["frame_step"] or c.data.frame_step
  c.num_segments = values["num_segments"] or c.num_segments
  c.num_views = values["num_views"] or c.num_views
  c.data.crop_size = values["resolution"] or c.data.crop_size
  layer = values["feature_layer"]
  c.feature_layer = (layer[0] if len(layer) == 1 else list(layer)) if isinstance(
      layer, (list, tuple)) else layer
  c.view_aggregation = protocol.get("view_aggregation", c.view_aggregation)
  return c, ("the probe's training run" if protocol else
             "defaults (the reference's K400 protocol; a converted probe records none)")


def load_clips(path: str, config) -> np.ndarray:
  """uint8 ``[S, V, T, H, W, C]``: the eval's validation views of one video (centred clips)."""
  from jepa_jax.data import decode, transforms  # noqa: PLC0415
  d = config.data
  clips = decode.read_video_clips(path, d.num_frames, d.frame_step, config.num_segments, None,
                                  d.short_video_policy, d.eval_allow_segment_overlap)
  return np.stack([transforms.eval_views(c, d.crop_size, config.num_views) for c in clips])


def make_predict_fn(encoder, probe, config):
  """Jitted ``(encoder params, probe params, uint8 [B, S, V, T, H, W, C]) -> probabilities [B, C]``."""
  import jax  # noqa: PLC0415
  from jepa_jax.eval import encoder as enc_lib  # noqa: PLC0415
  from jepa_jax.eval import probe as probe_lib  # noqa: PLC0415
  token_fn = enc_lib.make_token_fn(encoder, config.feature_layer)

  def predict(enc_params, probe_params, pixels):
    logits = probe_lib.view_logits(probe.apply, probe_params, token_fn(enc_params, pixels))
    scores = probe_lib.aggregate_views(logits, config.view_aggregation)
    return scores if config.view_aggregation == "softmax" else jax.nn.softmax(scores, axis=-1)

  return jax.jit(predict)


def probe_classifier(args):
  """``(eval config, classify, params, num_classes)`` of a frozen encoder + saved probe; ``classify``
  is jitted ``(params, uint8 [B, S, V, T, H, W, C]) -> probabilities [B, C]``."""
  from jepa_jax import checkpoint as ckpt_lib  # noqa: PLC0415
  from jepa_jax.eval import encoder as enc_lib  # noqa: PLC0415
  from jepa_jax.eval import probe as probe_lib  # noqa: PLC0415
  trained = ckpt_lib.read_probe_config(args.probe).get("eval") or {}
  config, source = eval_config(args, trained)
  encoder, enc_params, _ = enc_lib.load_frozen_encoder(config)
  probe, probe_params, saved, _ = probe_lib.load_saved_probe(args.probe, encoder.embed_dim,
                                                                  "float32")
  fn = make_predict_fn(encoder, probe, config)
  return config, source, (lambda p, x: fn(*p, x)), (enc_params, probe_params), \
      int(saved["num_classes"])


def finetuned_classifier(args):
  """``probe_classifier``'s tuple for a fine-tuning checkpoint: its encoder and head, with the
  protocol of its test (``Finetuner.scores``)."""
  import dataclasses  # noqa: PLC0415
  import jax  # noqa: PLC0415
  from jepa_jax import checkpoint as ckpt_lib  # noqa: PLC0415
  from jepa_jax.eval import encoder as enc_lib  # noqa: PLC0415
  from jepa_jax.finetune import model as ft_model  # noqa: PLC0415
  from jepa_jax.finetune import run as ft_run  # noqa: PLC0415
  from jepa_jax.finetune import settings as ft_settings  # noqa: PLC0415
  if args.feature_layer is not None:
    raise ConfigError("--feature-layer chooses the tokens a probe reads; a fine-tuned head reads "
                      "the encoder's output: drop it, or give --probe")
  saved = ckpt_lib.read_config(args.checkpoint)
  data = saved.get("data") or {}
  protocol = dict(frames_per_clip=data.get("num_frames"), frame_step=data.get("frame_step"),
                  num_segments=saved.get("test_segments"), num_views=saved.get("test_views"),
                  resolution=data.get("crop_size"),
                  view_aggregation=saved.get("view_aggregation", "softmax"))
  config, _ = eval_config(args, {"protocol": protocol})
  source = "the fine-tuning run's test"
  encoder, enc_params, _, loaded, saved = enc_lib.load_checkpoint_encoder(config)
  head_params = loaded.params["head"]
  num_classes = int(saved.get("num_classes") or ft_model.head_num_classes(head_params))
  ft_config = dataclasses.replace(ft_settings.read_saved(saved),
                                  view_aggregation=config.view_aggregation)
  head = ft_model.build_head(ft_config, num_classes, encoder.embed_dim, encoder.block.num_heads)
  ft = ft_run.Finetuner(ft_config, encoder, head, num_classes)
  aggregation = config.view_aggregation

  def classify(params, pixels):
    scores = ft.scores(params, pixels)
    return scores if aggregation == "softmax" else jax.nn.softmax(scores, axis=-1)

  return config, source, classify, {"encoder": enc_params, "head": head_params}, num_classes


def predict(args) -> tuple[list, list]:
  """``(predictions, failures)``: per readable video ``{video, top: [{class, name, prob}]}``;
  per unreadable one ``(video, reason)``."""
  from jepa_jax import checkpoint as ckpt_lib  # noqa: PLC0415
  from jepa_jax.data import decode  # noqa: PLC0415
  from jepa_jax.eval.placement import Placer  # noqa: PLC0415
  if args.probe:
    config, source, classify, params, num_classes = probe_classifier(args)
  else:
    kind = ckpt_lib.checkpoint_kind(args.checkpoint)
    if kind != ckpt_lib.FINETUNE:
      raise ConfigError(f"--probe is needed: {args.checkpoint} is a {kind} checkpoint, an encoder "
                        "without a classifier; give --probe PROBE_DIR, or a fine-tuning workdir "
                        "as --checkpoint")
    config, source, classify, params, num_classes = finetuned_classifier(args)
  names = class_names(args.labels, args.probe, num_classes)
  log.info("protocol from %s: %d segments x %d views of %d frames at step %d, %d px", source,
           config.num_segments, config.num_views, config.data.num_frames, config.data.frame_step,
           config.data.crop_size)
  placer = Placer()
  params = placer.replicate(params)
  k = min(args.top_k, num_classes)
  predictions, failures = [], []
  batch, batch_paths = [], []

  def flush():
    x = np.stack(batch + [np.zeros_like(batch[0])] * (args.batch_size - len(batch)))
    probs = placer.gather(classify(params, placer.batch(x)))[:len(batch)]
    for video, p in zip(batch_paths, probs):
      top = np.argsort(-p, kind="stable")[:k]
      predictions.append(dict(video=video, top=[
          dict({"class": int(i), "prob": float(p[i])}, **({"name": names[i]} if names else {}))
          for i in top]))
    batch.clear()
    batch_paths.clear()

  for video in args.videos:
    try:
      batch.append(load_clips(paths.resolve(video), config))
      batch_paths.append(video)
    except decode.VideoReadError as e:
      log.error("cannot read %s: %s", video, e)
      failures.append((video, str(e)))
      continue
    if len(batch) == args.batch_size:
      flush()
  if batch:
    flush()
  return predictions, failures


def format_predictions(predictions: list) -> str:
  lines = []
  for pred in predictions:
    lines.append(pred["video"])
    for rank, t in enumerate(pred["top"], 1):
      name = f"  {t['name']}" if "name" in t else ""
      lines.append(f"  {rank}. class {t['class']:>4d}  p={t['prob']:.4f}{name}")
  return "\n".join(lines)


def main(argv=None) -> int:
  args, result, status = cli.run_tool(parse_args, predict, argv)
  if status:
    return status
  predictions, failures = result
  print(format_predictions(predictions))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(predictions=predictions, failures=[dict(video=v, error=r) for v, r in failures]),
                f, indent=1)
  if failures:
    print(f"{len(failures)} of {len(args.videos)} videos could not be read (logged above)",
          file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  cli.install_unraisablehook()  # a skipped damaged checkpoint: no echoes of its failed reads
  sys.exit(main())
