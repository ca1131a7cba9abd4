"""Orbax checkpoints of jepa_jax, and their layout: one directory layout, each checkpoint tagged
with its kind (pretraining, fine-tuning, converted parameters, probe) and the tree of that kind.

``<workdir>/checkpoints/<step>/`` (an ``ocp.CheckpointManager`` directory) holds items:

* ``state``  - the full train state: pretraining's ``TrainState`` (online encoder + predictor, EMA
              target, optimiser, step) or fine-tuning's ``FinetuneState`` (see ``kind``).
* ``params`` - ``{"encoder", "predictor", "target"}`` parameters only; written by
              ``python -m jepa_jax.convert`` (released reference weights) and loadable anywhere a
              trainer checkpoint is.
* ``data``   - the grain iterator state (JSON) *before* the next batch the step will consume; the
              trainer's prefetcher reads ahead, so it records the state with every batch rather
              than asking the iterator at save time. A resumed run sees the next unseen batch.
* ``config`` - the run's config as JSON (the record of the run: data, recipe, model section).
* ``model_spec`` - the ``models.ModelSpec`` of the saved encoder (and predictor) as JSON
              (``ModelSpec.to_dict``): what every reader rebuilds the model from
              (``read_model_spec``), whichever program wrote the checkpoint.
* ``data_failures`` - each process's account of unreadable data entries at that batch
              (``jepa_jax.data.failures``), one file per process: ``process_<i>-of-<n>.json``.
* ``kind``   - ``{"kind": ...}``, what the checkpoint holds (``KINDS``):

  ============ ========== ===================================================================
  kind         item       tree
  ============ ========== ===================================================================
  ``pretrain`` ``state``  ``TrainState``: ``params {encoder, predictor}``, ``target_params``, ...
  ``finetune`` ``state``  ``FinetuneState``: ``params {encoder, head}``, ``opt_state``, ``step``;
                          its config's ``model`` is the encoder's resolved architecture
  ``params``   ``params`` ``{encoder, predictor, target}`` (any subset), no optimiser
  ``probe``    ``probe``  an attentive probe (below)
  ============ ========== ===================================================================

  Checkpoints written before the tag existed have no ``kind`` item; their kind is read from the
  tree (``checkpoint_kind``). ``load`` reads the parameters of any kind; resuming
  (``restore_train_state``) refuses a checkpoint of another program's kind in one line.

Attentive probes use the same layout with a ``probe`` item instead of ``state``/``params``:
``<dir>/checkpoints/<step>/{probe, config}``, the config being ``{"probe": {num_classes, num_heads,
mlp_ratio, depth, num_queries, embed_dim, blocks_on}}`` (what rebuilds the probe) and, for a probe
trained by ``jepa_jax.eval``, ``"eval"``: the protocol and encoder it was trained on (clip size,
segments, views, feature layer...), which ``predict`` and ``eval --config.train=False`` reuse;
optionally ``"class_names"`` (name i = class i; probes imported from Hugging Face carry their
``id2label``), which ``predict`` shows when no ``--labels`` is given.
``save_probe`` / ``load_probe`` write and read it, for probes trained by ``jepa_jax.eval`` and
probes converted from the reference's files (``jepa_jax.convert --kind probe``) alike.

Saves are atomic (orbax writes to a temporary directory and renames it when complete), so a run
killed mid-save leaves the previous checkpoint intact; ``latest_step`` only ever sees complete
ones. Restores check shapes against the expected tree first, so a checkpoint of another model
fails with the name of the first mismatched parameter instead of an error from deep in orbax.

A complete checkpoint can still be damaged afterwards (a truncated or deleted file, lost
metadata). ``restore_latest_train_state`` then falls back to the newest readable checkpoint, logs
which one it skipped and why, and moves the damaged one aside to ``<step>.corrupt-<UTC time>``
in the same directory (orbax ignores it; nothing is deleted). Readers of parameters (eval,
extract, predict: ``load_params`` without a step) skip it the same way, warning, but move
nothing. A checkpoint that reads well but does not fit the model is an error, never a reason to
fall back.

Paths may be relative (``jepa_jax.paths.resolve`` makes them absolute, as orbax requires) or
remote (``gs://...``).
"""
import contextlib
import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jepa_jax import paths
from jepa_jax.config_fields import config_to_json
from jepa_jax.errors import UserError

log = logging.getLogger(__name__)

STATE, PARAMS, DATA, CONFIG, PROBE = "state", "params", "data", "config", "probe"
DATA_FAILURES = "data_failures"
KIND = "kind"
MODEL_SPEC = "model_spec"
PARAM_KEYS = ("encoder", "predictor", "target")
PRETRAIN, FINETUNE = "pretrain", "finetune"
KINDS = (PRETRAIN, FINETUNE, PARAMS, PROBE)
# What each program that writes a kind is called, for the errors that name one.
_PROGRAM = {PRETRAIN: "a pretraining (python -m jepa_jax.main)",
            FINETUNE: "a fine-tuning (python -m jepa_jax.finetune)",
            PARAMS: "a parameters-only (converted weights)", PROBE: "an attentive-probe"}


class _UnreadableMetadataWarning(logging.Filter):
  """orbax logs an ERROR holding the whole file (several lines of it) each time it meets a
  checkpoint metadata file that is not JSON, then reads the checkpoint without it (twice for one
  resume). Instead: one warning line per file, naming it."""

  _MESSAGES = {"Failed to json parse Metadata file": "is not JSON",
               "Failed to read Metadata file": "cannot be read"}

  def __init__(self):
    super().__init__()
    self._seen = set()

  def filter(self, record):
    what = next((v for k, v in self._MESSAGES.items()
                 if isinstance(record.msg, str) and record.msg.startswith(k)), None)
    if what is None or "/orbax/" not in record.pathname.replace(os.sep, "/"):
      return True
    path = str(record.args[0]) if record.args else "?"
    if path in self._seen:
      return False
    self._seen.add(path)
    record.msg = "Ignored checkpoint metadata file %s: it %s (%s); the checkpoint is read without it"
    record.args = (path, what, " ".join(str(record.args[-1]).split()) if record.args else "")
    record.levelno, record.levelname = logging.WARNING, "WARNING"
    return True


# orbax logs through absl's logger; a filter there applies to every handler (console, log file).
logging.getLogger("absl").addFilter(_UnreadableMetadataWarning())


class _MissingItemMetadataWarning(logging.Filter):
  """orbax's warning for an item whose metadata file is missing ('Item "state" was found in the
  checkpoint, but could not be restored. Please provide a CheckpointHandlerRegistry...'): it
  advises a registry, while the checkpoint is damaged, which ``restore_train_state`` reports."""

  def filter(self, record):
    return not (isinstance(record.msg, str) and
                record.msg.startswith('Item "%s" was found in the checkpoint, but could not'))


@contextlib.contextmanager
def _quiet_missing_item_metadata():
  quiet = _MissingItemMetadataWarning()
  logging.getLogger("absl").addFilter(quiet)
  try:
    yield
  finally:
    logging.getLogger("absl").removeFilter(quiet)


class CheckpointError(UserError, RuntimeError):
  """A checkpoint that cannot be used; the message names the checkpoint and what to do."""
  label = "Checkpoint error"


class CorruptCheckpointError(CheckpointError):
  """A checkpoint whose files cannot be read (truncated or deleted files, lost metadata)."""


def checkpoint_dir(path: str) -> str:
  """Accept a workdir, its ``checkpoints`` directory, or an explicit step directory's parent."""
  path = paths.resolve(path)
  if paths.is_remote(path):
    return path.rstrip("/") + ("" if path.rstrip("/").endswith("checkpoints") else "/checkpoints")
  candidate = os.path.join(path, "checkpoints")
  return candidate if os.path.isdir(candidate) else path


class PerProcessJsonHandler(ocp.CheckpointHandler):
  """JSON that differs between processes: each writes ``process_<i>-of-<n>.json`` (orbax's JSON
  handler writes process 0's only). Read back with ``read_per_process``."""

  def save(self, directory: epath.Path, item=None, args=None):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / _process_file(jax.process_index(), jax.process_count())).write_text(
        json.dumps(args.item if args is not None else item))

  def restore(self, directory: epath.Path, item=None, args=None):
    del item, args
    return _read_process_files(directory)


@ocp.args.register_with_handler(PerProcessJsonHandler, for_save=True)
@dataclasses.dataclass
class PerProcessJsonSave(ocp.args.CheckpointArgs):
  item: Any


@ocp.args.register_with_handler(PerProcessJsonHandler, for_restore=True)
@dataclasses.dataclass
class PerProcessJsonRestore(ocp.args.CheckpointArgs):
  pass


def _process_file(index: int, count: int) -> str:
  return f"process_{index}-of-{count}.json"


def _read_process_files(directory: epath.Path) -> dict:
  """{file name: JSON} of the per-process files in ``directory``."""
  return {p.name: json.loads(p.read_text()) for p in directory.glob("process_*-of-*.json")}


def read_per_process(manager, step: int, item: str):
  """``(this process's JSON or None, every process's)`` of a ``PerProcessJsonHandler`` item of
  checkpoint ``step``. This process's is the file of the same index and process count: after a
  restart on another number of processes it is None and the caller combines the others. A
  missing item reads as ``(None, [])``; unreadable files likewise, with a warning."""
  directory = epath.Path(manager.directory) / str(step) / item
  if not directory.exists():
    return None, []
  try:
    files = _read_process_files(directory)
  except (OSError, ValueError) as e:
    log.warning("Ignored %s of checkpoint %d in %s: %s", item, step, manager.directory, _short(e))
    return None, []
  return files.get(_process_file(jax.process_index(), jax.process_count())), list(files.values())


def make_manager(directory: str, *, save_every: int = 1, keep: Optional[int] = 3,
                 keep_period: Optional[int] = None, async_save: bool = True,
                 read_only: bool = False, ocdbt: bool = True) -> ocp.CheckpointManager:
  """``ocdbt=False``: parameters-only checkpoints are written one array per directory instead of
  in OCDBT's shared files, whose writer holds every encoded array until it commits (a second
  copy of the model: ``save_params``); either layout reads back the same."""
  directory = paths.resolve(directory)
  handlers = {STATE: ocp.PyTreeCheckpointHandler(),
              PARAMS: ocp.StandardCheckpointHandler(use_ocdbt=ocdbt),
              PROBE: ocp.StandardCheckpointHandler(),
              CONFIG: ocp.JsonCheckpointHandler(), DATA: ocp.JsonCheckpointHandler(),
              KIND: ocp.JsonCheckpointHandler(), MODEL_SPEC: ocp.JsonCheckpointHandler(),
              DATA_FAILURES: PerProcessJsonHandler()}
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=save_every, max_to_keep=keep, keep_period=keep_period,
      enable_async_checkpointing=async_save, read_only=read_only, create=not read_only)
  return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def save(manager: ocp.CheckpointManager, step: int, *, state=None, params=None, probe=None,
         data_state=None, config=None, data_failures=None, kind: Optional[str] = None,
         model_spec=None, force: bool = False) -> bool:
  """Save whichever items are given; returns whether a save was started.

  ``model_spec``: a ``models.ModelSpec`` (or its ``to_dict``), saved as ``MODEL_SPEC``.
  ``kind`` (``KINDS``) is recorded with a ``state``, ``params`` or ``probe``; without it, a
  ``state`` is pretraining's (fine-tuning passes ``FINETUNE``) and the others their own kind."""
  items = {}
  if kind is None:
    kind = PRETRAIN if state is not None else PARAMS if params is not None else \
        PROBE if probe is not None else None
  elif kind not in KINDS:
    raise ValueError(f"checkpoint kind must be one of {KINDS}, got {kind!r}")
  if kind is not None:
    items[KIND] = ocp.args.JsonSave({"kind": kind})
  if state is not None:
    items[STATE] = ocp.args.PyTreeSave(state)
  if params is not None:
    items[PARAMS] = ocp.args.StandardSave(params)
  if probe is not None:
    items[PROBE] = ocp.args.StandardSave(probe)
  if data_state is not None:
    items[DATA] = ocp.args.JsonSave(data_state)
  if config is not None:
    items[CONFIG] = ocp.args.JsonSave(config_to_json(config))
  if model_spec is not None:
    items[MODEL_SPEC] = ocp.args.JsonSave(
        model_spec if isinstance(model_spec, dict) else model_spec.to_dict())
  if data_failures is not None:
    items[DATA_FAILURES] = PerProcessJsonSave(data_failures)
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


def _item_names(manager, step) -> set:
  path = os.path.join(os.fspath(manager.directory), str(step))
  try:
    return {n for n in os.listdir(path) if not n.startswith("_")}
  except OSError:
    return set()


def check_shapes(saved_meta, expected, where: str) -> None:
  """Raise CheckpointError naming the first parameter whose presence or shape differs."""
  saved = _flat_shapes(saved_meta)
  want = _flat_shapes(expected)
  # Name a model parameter rather than its optimiser moment when both differ.
  for path in sorted(set(want) | set(saved), key=lambda p: (p.startswith("opt_state"), p)):
    if path not in saved:
      raise CheckpointError(f"{where}: parameter {path} is missing from the checkpoint (shape "
                            f"{want[path]} expected); it was written for a different model/config")
    if path not in want:
      raise CheckpointError(f"{where}: checkpoint has parameter {path} {saved[path]} that this "
                            "model does not; it was written for a different model/config")
    if tuple(saved[path]) != tuple(want[path]):
      raise CheckpointError(f"{where}: parameter {path} has shape {tuple(saved[path])} in the "
                            f"checkpoint but {tuple(want[path])} in this model; check config.model "
                            "(size, patch/tubelet, crop, frames, scan) against the checkpoint's config")


def _flat_shapes(tree) -> dict:
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if leaf is None or not hasattr(leaf, "shape"):
      continue
    out[jax.tree_util.keystr(path, simple=True, separator="/")] = tuple(leaf.shape)
  return out


def _state_metadata(manager, step: int, where: str):
  """The tree metadata of the ``state`` item (None if orbax has none)."""
  try:
    with _quiet_missing_item_metadata():
      return manager.item_metadata(step)[STATE]
  except Exception as e:  # noqa: BLE001 - any failure here means an unreadable checkpoint
    raise CorruptCheckpointError(f"{where} is unreadable ({_short(e)})") from e


def _read_kind(manager, step: int, names: set, where: str, state_meta=None) -> str:
  """The kind of checkpoint ``step``: its ``kind`` item, else (checkpoints written before the
  tag) what its items and the ``state`` tree hold."""
  if KIND in names:
    try:
      kind = manager.restore(step, args=ocp.args.Composite(
          **{KIND: ocp.args.JsonRestore()}))[KIND]["kind"]
    except Exception as e:  # noqa: BLE001 - the files are what is wrong
      raise CorruptCheckpointError(f"{where}: its kind item is unreadable ({_short(e)})") from e
    if kind not in KINDS:
      raise CheckpointError(f"{where} is of kind {kind!r}, which this jepa_jax does not read "
                            f"(it reads {', '.join(KINDS)}); use the version that wrote it")
    return kind
  if PROBE in names:
    return PROBE
  if PARAMS in names:
    return PARAMS
  if STATE in names:
    meta = _state_metadata(manager, step, where) if state_meta is None else state_meta
    if meta is None:
      raise CorruptCheckpointError(f"{where}: the metadata of its train state is missing")
    params = meta.get("params") if hasattr(meta, "get") else None
    if "target_params" in meta:
      return PRETRAIN
    if hasattr(params, "keys") and "head" in params:
      return FINETUNE
    raise CheckpointError(f"{where} holds a train state of neither pretraining nor fine-tuning "
                          f"(top-level entries {sorted(meta)})")
  if not names:
    raise CorruptCheckpointError(f"{where} holds no items")
  raise CheckpointError(f"{where} holds neither a train state nor parameters "
                        f"(items: {sorted(names)})")


def checkpoint_kind(path: str, step: Optional[int] = None) -> str:
  """The kind (``KINDS``) of checkpoint ``step`` of a workdir or checkpoints directory; without
  ``step``, of the newest readable one (as ``load`` reads)."""
  directory = checkpoint_dir(path)
  manager = make_manager(directory, read_only=True, async_save=False)

  def read(s):
    return _read_kind(manager, s, _item_names(manager, s), f"checkpoint {s} in {directory}")

  if step is not None:
    return read(step)
  found = newest_readable(manager, read)
  if found is None:
    raise CheckpointError(f"no checkpoint found in {directory}")
  return found[0]


def restore_train_state(manager: ocp.CheckpointManager, step: int, abstract_state,
                        kind: str = PRETRAIN):
  """Restore ``(train state, data state or None)``; the state lands on the shardings carried by
  ``abstract_state`` (``jax.ShapeDtypeStruct`` leaves with ``sharding``), so a checkpoint saved on
  one mesh restores onto any other.

  Raises ``CorruptCheckpointError`` when the checkpoint's files cannot be read and
  ``CheckpointError`` when it is not a train state of ``kind`` (pretraining's or fine-tuning's)
  or does not fit ``abstract_state``.
  """
  where = f"checkpoint {step} in {manager.directory}"
  names = _item_names(manager, step)
  start_from = ("set config.checkpoint to it (the encoder to fine-tune)" if kind == FINETUNE
                else "use config.init_from")
  if STATE not in names:
    if PARAMS in names:
      raise CheckpointError(f"{where} has no train state (items: {sorted(names)}); to start from "
                            f"converted weights {start_from} instead of resuming")
    raise CorruptCheckpointError(f"{where} has no train state (items: {sorted(names)})")
  meta = _state_metadata(manager, step, where)
  found = _read_kind(manager, step, names, where, meta)
  if found != kind:
    start = (f"; to fine-tune its encoder, {start_from}" if found == PRETRAIN and kind == FINETUNE
             else "")
    raise CheckpointError(f"{where} is {_PROGRAM[found]} checkpoint, which {_PROGRAM[kind]} run "
                          f"cannot resume: give this run another --workdir{start}")
  if meta is not None:
    check_shapes(meta, abstract_state, where)
  items = {STATE: ocp.args.PyTreeRestore(
      item=abstract_state, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state))}
  if DATA in names:
    items[DATA] = ocp.args.JsonRestore()
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**items))
  except Exception as e:  # noqa: BLE001 - the shapes fit, so the files are what is wrong
    raise CorruptCheckpointError(f"{where} could not be read ({_short(e)})") from e
  return restored[STATE], (restored[DATA] if DATA in names else None)


def restore_latest_train_state(manager: ocp.CheckpointManager, abstract_state,
                               kind: str = PRETRAIN):
  """``(state, data state, step)`` from the newest readable checkpoint, or ``None`` if there is
  no checkpoint.

  Unreadable newer checkpoints are skipped with one warning each and moved aside (module
  docstring) once an older one has been read; if none can be read, nothing is moved and
  ``CheckpointError`` lists them. A checkpoint of another model raises ``CheckpointError``.
  """
  found = newest_readable(manager,
                          lambda step: restore_train_state(manager, step, abstract_state, kind))
  if found is None:
    return None
  (state, data_state), step, skipped = found
  for bad, error in skipped:
    moved = _move_aside(manager, bad)
    log.warning("Skipped checkpoint %d: %s; moved it to %s and resumed from checkpoint %d",
                bad, error, moved, step)
  if skipped:
    manager.reload()
  return state, data_state, step


def newest_readable(manager: ocp.CheckpointManager, read: Callable[[int], Any]):
  """``(read(step), step, [(skipped step, its error), ...])`` for the newest step that ``read``
  reads without ``CorruptCheckpointError``; ``None`` if there is no checkpoint. If none can be
  read, ``CheckpointError`` lists them; any other error of ``read`` is raised as it is."""
  skipped = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      value = read(step)
    except CorruptCheckpointError as e:
      skipped.append((step, e))
      continue
    return value, step, skipped
  if skipped:
    listed = "; ".join(str(e) for _, e in skipped)
    raise CheckpointError(f"no checkpoint in {manager.directory} can be read: {listed}. Move that "
                          "directory away to start afresh")
  return None


def _move_aside(manager, step: int) -> str:
  """Rename step ``step``'s directory to ``<step>.corrupt-<UTC time>`` (process 0 only)."""
  src = epath.Path(manager.directory) / str(step)
  dst = src.parent / f"{step}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
  if jax.process_index() == 0:
    try:
      src.rename(dst)
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(f"checkpoint {step} in {manager.directory} cannot be read and could "
                            f"not be moved aside ({_short(e)}); move or delete it to resume from "
                            "the previous one") from e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # noqa: PLC0415
    multihost_utils.sync_global_devices(f"jepa_jax_move_aside_{step}")
  return os.fspath(dst)


def _short(e: BaseException, limit: int = 300) -> str:
  """``Type: first line of the message``, at most ``limit`` characters."""
  lines = str(e).strip().splitlines()
  text = f"{type(e).__name__}: {lines[0] if lines else ''}"
  return text if len(text) <= limit else text[:limit - 3] + "..."


def read_config(path: str, step: Optional[int] = None) -> dict:
  """The JSON config saved with a checkpoint (``{}`` if none)."""
  directory = checkpoint_dir(path)
  manager = make_manager(directory, read_only=True, async_save=False)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f"no checkpoint found in {directory}; give a trainer workdir or a "
                          "converted-weights directory")
  if CONFIG not in _item_names(manager, step):
    return {}
  return manager.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[CONFIG]


def read_model_spec(path: str, step: int, saved_config: Optional[dict] = None):
  """The ``models.ModelSpec`` of checkpoint ``step``: its ``model_spec`` item, or for a checkpoint
  written before checkpoints carried one, the spec its ``config`` implies (the ``model`` section
  by field name, the ``data`` section's crop and frames). None when neither names an
  architecture.
  ``saved_config``: the config already read (``read_config``), to spare a second read."""
  from jepa_jax.models.spec import ModelSpec  # noqa: PLC0415 - importing checkpoint builds no model
  directory = checkpoint_dir(path)
  manager = make_manager(directory, read_only=True, async_save=False)
  if MODEL_SPEC in _item_names(manager, step):
    try:
      saved = manager.restore(step, args=ocp.args.Composite(
          **{MODEL_SPEC: ocp.args.JsonRestore()}))[MODEL_SPEC]
    except Exception as e:  # noqa: BLE001 - the files are what is wrong
      raise CorruptCheckpointError(f"the model spec of checkpoint {step} in {directory} is "
                                   f"unreadable ({_short(e)})") from e
    return ModelSpec.from_dict(saved)
  config = read_config(path, step) if saved_config is None else saved_config
  model, data = dict(config.get("model") or {}), dict(config.get("data") or {})
  if not model.get("name"):
    return None
  return ModelSpec.from_sections(model, data.get("crop_size", 224), data.get("num_frames", 16))


@dataclasses.dataclass(frozen=True)
class Loaded:
  """The parameters of one checkpoint of any kind that holds an encoder, as numpy.

  ``params``: ``{"encoder", "predictor", "target"}`` (any subset) for ``pretrain`` and ``params``
  checkpoints; ``{"encoder", "head"}`` for ``finetune`` ones (the fine-tuned encoder and its
  classification head)."""
  kind: str
  params: dict
  step: int


def load(path: str, step: Optional[int] = None,
         groups: Optional[Sequence[str]] = None) -> Loaded:
  """The parameters of a pretraining, fine-tuning or converted checkpoint (``Loaded``).

  Reads only the parameter arrays of a train state (not the optimiser moments). Without ``step``,
  the newest readable checkpoint: a damaged newer one is skipped with a warning naming it, as the
  trainer does (``newest_readable``), but left where it is (readers move nothing). ``groups``:
  read only these of ``PARAM_KEYS`` (and ``head``), those the checkpoint has; None reads all (an
  export of one encoder need not hold the other in memory).
  """
  directory = checkpoint_dir(path)
  if not paths.is_remote(directory) and not os.path.exists(directory):
    raise CheckpointError(f"checkpoint directory {directory} does not exist")
  manager = make_manager(directory, read_only=True, async_save=False)
  if step is not None:
    return _read_params(manager, step, directory, groups)
  found = newest_readable(manager, lambda s: _read_params(manager, s, directory, groups))
  if found is None:
    raise CheckpointError(f"no complete checkpoint in {directory}")
  loaded, step, skipped = found
  for bad, error in skipped:
    log.warning("Skipped checkpoint %d: %s; using checkpoint %d", bad, error, step)
  return loaded


def load_params(path: str, step: Optional[int] = None) -> tuple[dict, int]:
  """``(params, step)`` of ``load``."""
  loaded = load(path, step)
  return loaded.params, loaded.step


def _numpy_restore_args(wanted):
  return jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)


def _read_params(manager, step: int, directory: str,
                 groups: Optional[Sequence[str]] = None) -> Loaded:
  names = _item_names(manager, step)
  where = f"checkpoint {step} in {directory}"
  want = (lambda group: True) if groups is None else (lambda group: group in groups)
  try:
    kind = _read_kind(manager, step, names, where)
    if kind == PROBE:
      raise CheckpointError(f"{where} is an attentive probe, which holds no encoder; give the "
                            "encoder's checkpoint here and the probe as the probe")
    if kind == PARAMS and groups is None:
      tree = manager.restore(step, args=ocp.args.Composite(
          **{PARAMS: ocp.args.StandardRestore()}))[PARAMS]
      params = {k: tree[k] for k in PARAM_KEYS if k in tree}
    elif kind == PARAMS:
      # The item's own handler restores whole trees only; a PyTree handler reads part of it.
      meta = manager.item_metadata(step)[PARAMS]
      wanted = {k: meta[k] for k in PARAM_KEYS if k in meta and want(k)}
      params = {}
      if wanted:
        with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as reader:
          params = reader.restore(epath.Path(directory) / str(step) / PARAMS,
                                  args=ocp.args.PyTreeRestore(
                                      item=wanted, restore_args=_numpy_restore_args(wanted),
                                      partial_restore=True))
    else:
      meta = manager.item_metadata(step)[STATE]
      wanted = {}
      chosen = {k: v for k, v in meta["params"].items() if want(k)}
      if chosen:
        wanted["params"] = chosen
      if kind == PRETRAIN and want("target"):
        wanted["target_params"] = meta["target_params"]
      tree = manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.PyTreeRestore(
          item=wanted, restore_args=_numpy_restore_args(wanted), partial_restore=True)}))[
              STATE] if wanted else {}
      # encoder, predictor (pretraining) or encoder, head (fine-tuning)
      params = dict(tree.get("params", {}))
      if "target_params" in tree:
        params["target"] = tree["target_params"]
  except CheckpointError:
    raise
  except Exception as e:  # noqa: BLE001 - the files are what is wrong
    raise CorruptCheckpointError(f"{where} is unreadable ({_short(e)})") from e
  return Loaded(kind, jax.tree_util.tree_map(np.asarray, params), step)


def save_params(directory: str, params: dict, config: Any = None, step: int = 0,
                low_memory: bool = False, model_spec=None) -> str:
  """Write a parameters-only checkpoint (the converter's output). ``low_memory``: without OCDBT
  (``make_manager``), so writing holds nothing beyond ``params`` but a few buffers."""
  missing = [k for k in params if k not in PARAM_KEYS]
  if missing:
    raise ValueError(f"unexpected parameter groups {missing}; expected a subset of {PARAM_KEYS}")
  directory = paths.resolve(directory)
  directory = checkpoint_dir(directory) if os.path.isdir(os.path.join(directory, "checkpoints")) \
      else os.path.join(directory, "checkpoints")
  manager = make_manager(directory, async_save=False, keep=None, ocdbt=not low_memory)
  save(manager, step, params=params, config=config, model_spec=model_spec, force=True)
  manager.wait_until_finished()
  manager.close()
  return directory


# --- attentive probes (module docstring) -----------------------------------------------------

CLASS_NAMES = "class_names"  # config entry of a probe: its classes' names, index order
PROBE_CONFIG_KEYS = ("num_classes", "num_heads", "mlp_ratio", "depth", "num_queries", "embed_dim",
                     "blocks_on")


def save_probe(directory: str, params, probe_config: dict, *, eval_info: Optional[dict] = None,
               step: int = 0, overwrite: bool = False,
               class_names: Optional[Sequence[str]] = None) -> str:
  """Write ``<directory>/checkpoints/<step>/{probe, config}``; returns the checkpoints directory.

  ``probe_config`` must hold exactly ``PROBE_CONFIG_KEYS``; ``eval_info`` (optional) is stored
  beside it as ``config["eval"]``, ``class_names`` (optional, name i = class index i) as
  ``config["class_names"]`` (``probe_class_names``). An existing probe there is an error unless
  ``overwrite``.
  """
  if set(probe_config) != set(PROBE_CONFIG_KEYS):
    raise ValueError(f"probe_config must have the keys {PROBE_CONFIG_KEYS}, got {sorted(probe_config)}")
  path = epath.Path(paths.resolve(os.fspath(directory))) / "checkpoints"
  if path.exists() and list(path.iterdir()):
    if not overwrite:
      raise CheckpointError(f"{path} already holds checkpoints; choose another directory or "
                            "delete it")
    if jax.process_index() == 0:
      path.rmtree()
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # noqa: PLC0415
      multihost_utils.sync_global_devices(f"jepa_jax_save_probe_{path}")
  config = {PROBE: {k: probe_config[k] for k in PROBE_CONFIG_KEYS}}
  if eval_info is not None:
    config["eval"] = eval_info
  if class_names is not None:
    if len(class_names) != probe_config["num_classes"]:
      raise ValueError(f"{len(class_names)} class names for a probe of "
                       f"{probe_config['num_classes']} classes")
    config[CLASS_NAMES] = [str(n) for n in class_names]
  manager = make_manager(os.fspath(path), async_save=False, keep=None)
  save(manager, step, probe=jax.tree_util.tree_map(np.asarray, params), config=config, force=True)
  manager.wait_until_finished()
  manager.close()
  return os.fspath(path)


def read_probe_config(path: str, step: Optional[int] = None) -> dict:
  """The whole JSON config of a probe checkpoint: ``{"probe": ..., ["eval": ...],
  ["class_names": ...]}``."""
  manager, step = _probe_step(path, step)
  config = manager.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[CONFIG]
  manager.close()
  return config


def probe_class_names(path: str, step: Optional[int] = None) -> Optional[list]:
  """The class names saved with a probe (``save_probe(class_names=...)``), or None."""
  names = read_probe_config(path, step).get(CLASS_NAMES)
  return list(names) if names else None


def load_probe(path: str, step: Optional[int] = None) -> tuple[dict, dict]:
  """``(params as numpy, probe_config)`` of a probe checkpoint (``save_probe``): one trained by
  ``jepa_jax.eval`` (``<eval workdir>/probes/<run>``) or converted from the reference's files."""
  manager, step = _probe_step(path, step)
  restored = manager.restore(step, args=ocp.args.Composite(**{
      PROBE: ocp.args.StandardRestore(), CONFIG: ocp.args.JsonRestore()}))
  manager.close()
  params = jax.tree_util.tree_map(np.asarray, restored[PROBE])
  return params, dict(restored[CONFIG][PROBE])


def _probe_step(path: str, step: Optional[int]):
  directory = checkpoint_dir(path)
  if not paths.is_remote(directory) and not os.path.isdir(directory):
    raise CheckpointError(f"probe checkpoint directory {directory} does not exist; give the "
                          "directory a probe was saved to (an eval run's probes/<run>, or "
                          "python -m jepa_jax.convert --kind probe --out DIR)")
  manager = make_manager(directory, read_only=True, async_save=False)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f"no complete checkpoint in {directory}")
  names = _item_names(manager, step)
  if PROBE not in names:
    raise CheckpointError(f"checkpoint {step} in {directory} holds no probe (items: "
                          f"{sorted(names)}); give a probe directory, not an encoder's")
  if CONFIG not in names:
    raise CheckpointError(f"probe checkpoint {step} in {directory} has no config, so the probe "
                          "cannot be rebuilt")
  return manager, step
