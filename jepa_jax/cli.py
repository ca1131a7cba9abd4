"""The command line shared by the programs and tools: config overrides, the workdir and its log
file, logging, and errors in one line.

Overrides: ``--config.FIELD=VALUE`` sets any field, nested ones by dotted path and list entries by
index (``--config.masks[0].num_context=96``), read by the field's current type (syntax: README,
"Pretraining at scale"). ml_collections alone refuses lists and ``None`` fields;
``register_override_parsers`` (run on import) takes a Python literal for both, else a single item
as a one-element list or the text as a string. An unknown field is refused naming the closest.

Errors: one policy for every entry point. An ``errors.UserError`` (config, flag, workdir, data,
checkpoint, non-finite loss, ...) or a full disk or unwritable workdir (``explain``) ends the run
with ``"<label>: <message>"`` on stderr and exit status 1: ``run_or_fail`` for the programs with a
workdir (traceback in its log file only), ``run_or_report`` / ``run_tool`` for the tools, whose
``main`` returns the status. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import errno
import logging
import os
import re
import sys
import tempfile
import traceback
from typing import Any, Callable, NoReturn, Optional

from absl import flags
from ml_collections import config_flags
from ml_collections.config_flags import config_flags as config_flags_lib
from ml_collections.config_flags import config_path
from ml_collections.config_flags import tuple_parser

from jepa_jax import paths
from jepa_jax.errors import ConfigError, UserError

LOG_FILE = "log.txt"
# Tracebacks of the errors reported in one line: to the log file only (see ``fail``).
_TRACEBACKS = logging.getLogger("jepa_jax.traceback")
_TRACEBACKS.propagate = False
_TRACEBACKS.setLevel(logging.DEBUG)
_log_path: Optional[str] = None
_unraisable_reported = False


# --- overrides --------------------------------------------------------------------------------

class LiteralOrTextParser(flags.ArgumentParser):
  """For fields that default to None: a Python literal if the value is one, else the text."""

  def parse(self, argument):
    if not isinstance(argument, str):
      return argument
    try:
      return ast.literal_eval(argument)
    except (ValueError, SyntaxError):
      return argument

  def flag_type(self):
    return "literal or text"


class ListParser(flags.ArgumentParser):
  """For list fields: as ml_collections reads tuples (a literal, or one unquoted item)."""

  def parse(self, argument):
    return list(tuple_parser.TupleParser().parse(argument))

  def flag_type(self):
    return "list"


# The exit status of a run stopped by SIGTERM or a preemption notice after saving its checkpoint
# (EX_TEMPFAIL): launchers requeue on it (launch/README.md). Pretraining and fine-tuning both.
EXIT_PREEMPTED = 75


def register_override_parsers() -> None:
  config_flags.register_flag_parser_for_type(type(None), LiteralOrTextParser())
  config_flags.register_flag_parser_for_type(list, ListParser())


register_override_parsers()


def load_config(config_file: str, overrides=()):
  """The config of ``--config=config_file`` plus ``overrides`` (``["--config.x=1", ...]``),
  parsed exactly as the entry points parse them (for tests, notebooks and scripts)."""
  argv = ["jepa_jax", f"--config={config_file}", *overrides]
  flag_values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "config file", flag_values=flag_values,
                                           lock_config=True, sys_argv=argv)
  try:
    flag_values(argv)
  except Exception as e:  # noqa: BLE001 - the same one-line explanation as the command line
    raise ConfigError(flag_error_message(argv, e)) from e
  return holder.value


def parse_flags(argv):
  """absl's flags parser for ``app.run``, with bad flags and unknown config fields in one line."""
  try:
    rest = flags.FLAGS(argv)
    if "config" in flags.FLAGS and flags.FLAGS["config"].value is not None:
      flags.FLAGS.config.keys()  # a config file that failed to load raises on first access
    return rest
  except Exception as e:  # noqa: BLE001 - any parsing failure is the user's to fix
    _TRACEBACKS.debug("flag parsing failed", exc_info=e)
    print(f"{ConfigError.label}: {flag_error_message(argv, e)}", file=sys.stderr)
    sys.exit(1)


def flag_error_message(argv, error: BaseException) -> str:
  """One line for a failed flag parse: the unknown config field and its closest matches, the
  config file that cannot be loaded, or the parser's own message."""
  config_file, overrides = _config_args(argv)
  if config_file is not None:
    try:
      config = config_flags_lib.ConfigFileFlagParser("config").parse(config_file)
      config.keys()  # an unloadable file gives an object that raises on any access
    except Exception as e:  # noqa: BLE001
      return (f"cannot load --config={config_file} ({_last_line(e)}); give the path of a config "
              "file, relative to the working directory (e.g. configs/demo.py)")
    for path in overrides:
      unknown = unknown_field_message(config, path)
      if unknown:
        return unknown
  return _last_line(error)


def unknown_field_message(config, path: str) -> Optional[str]:
  """``None`` if ``config.<path>`` exists, else one line naming it and the closest fields."""
  try:
    parts = config_path.split(path)
  except ValueError:
    return f"cannot read the field path --config.{path}"
  node, where = config, "config"
  for part in parts:
    keys = _keys(node)
    if isinstance(part, int) and isinstance(node, (list, tuple)):
      if not -len(node) <= part < len(node):
        return f"{where} has {len(node)} entries; --config.{path} indexes entry {part}"
      node, where = node[part], f"{where}[{part}]"
      continue
    if keys is None or part not in keys:
      close = difflib.get_close_matches(str(part), [str(k) for k in keys or ()], n=3, cutoff=0.6)
      hint = (f"; did you mean {' or '.join(f'{where}.{c}' for c in close)}?" if close else
              f"; {where} has: {', '.join(sorted(map(str, keys)))}" if keys else "")
      origin = "" if f"config.{path}" == f"{where}.{part}" else f" (in --config.{path})"
      return f"unknown config field {where}.{part}{origin}{hint}"
    node, where = node[part], f"{where}.{part}"
  return None


def _keys(node):
  if hasattr(node, "keys"):
    return list(node.keys())
  return None


def _config_args(argv) -> tuple[Optional[str], list[str]]:
  """(the --config file, the override paths) of a command line."""
  config_file, overrides = None, []
  args = list(argv[1:])
  for i, arg in enumerate(args):
    m = re.match(r"^--?config(=(.*))?$", arg)
    if m:
      config_file = m.group(2) if m.group(1) else (args[i + 1] if i + 1 < len(args) else None)
      continue
    m = re.match(r"^--?config\.([^=]+)", arg)
    if m:
      overrides.append(m.group(1))
  return config_file, overrides


def _last_line(error: BaseException) -> str:
  """A one-line form of an error message (the last line of an embedded traceback)."""
  lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
  if not lines:
    return type(error).__name__
  if any(ln.startswith("Traceback") for ln in lines):
    return lines[-1]
  return " ".join(lines)


def int_list(text: str) -> list:
  """argparse type of a comma-separated list of integers (``--layers 17,19,21``)."""
  try:
    return [int(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


# --- logging ----------------------------------------------------------------------------------

class _QuietLibraries(logging.Filter):
  """Keep orbax's per-save INFO chatter off the console so progress lines stay readable, and,
  once the log file is open, orbax's errors that carry a traceback: orbax logs those where an
  exception passes through it (a failed asynchronous save logs four of them), and the exception
  then reaches the entry point, which reports it in one line (``fail``). Warnings still pass."""

  def filter(self, record):
    if "/orbax/" not in record.pathname:
      return True
    return record.levelno >= logging.WARNING and not (record.exc_info and _log_path)


class _ConsoleHandler(logging.StreamHandler):
  """The console handler of every entry point: INFO and up on whatever ``sys.stderr`` is when a
  record is written (so a redirected or captured stderr gets it too)."""

  def __init__(self):
    super().__init__()
    self.addFilter(_QuietLibraries())
    self.setFormatter(_console_formatter())

  @property
  def stream(self):
    return sys.stderr

  @stream.setter
  def stream(self, value):
    del value  # always the current sys.stderr


def _console_formatter() -> logging.Formatter:
  """absl's line format (``I1205 12:00:00.000000 123 file.py:10] message``); once the log file
  is open, a record's traceback goes there only and the console line names the file."""
  from absl import logging as absl_logging  # noqa: PLC0415

  class ConsoleFormatter(absl_logging.PythonFormatter):

    def format(self, record):
      if not (record.exc_info and _log_path):
        return super().format(record)
      # The record is shared with the log file's handler, which runs after this one in the same
      # thread: hide the traceback only while formatting this line.
      saved = record.exc_info, record.exc_text
      record.exc_info, record.exc_text = None, None
      try:
        return f"{super().format(record)} [traceback in {_log_path}]"
      finally:
        record.exc_info, record.exc_text = saved

  return ConsoleFormatter()


_console: Optional[_ConsoleHandler] = None


def _writes_to_console(handler: logging.Handler) -> bool:
  from absl import logging as absl_logging  # noqa: PLC0415
  if isinstance(handler, (absl_logging.ABSLHandler, _ConsoleHandler)):
    return True
  return (isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
          and getattr(handler, "stream", None) in (sys.stderr, sys.__stderr__))


def setup_logging(library_warnings: bool = True) -> None:
  """The one console logging set-up of every entry point (main, eval, finetune, extract, predict,
  convert, aot): INFO progress on stderr, without orbax's per-save chatter; once the log file is
  open, library tracebacks go there only (the console keeps their first line).

  Works whatever is installed already: libraries install root handlers before the entry point
  runs (absl's first log call does ``logging.basicConfig()``, at WARNING, when orbax is
  imported), which makes ``logging.basicConfig`` a silent no-op. Handlers writing to stderr are
  replaced by this one; others (log files, pytest's capture) stay. Idempotent: ``absl.app.run``
  installs its own handler, so the absl entry points call it again in ``main``.
  ``library_warnings=False``: absl-logged warnings (orbax's, for every read-only checkpoint
  manager) are dropped, for the tools that only read checkpoints.
  """
  global _console
  root = logging.getLogger()
  for handler in list(root.handlers):
    if _writes_to_console(handler):
      root.removeHandler(handler)
  if _console is None:
    _console = _ConsoleHandler()
  root.addHandler(_console)
  root.setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.INFO if library_warnings else logging.ERROR)
  install_unraisablehook()


def install_unraisablehook() -> None:
  """Route the errors Python ignores (``_unraisablehook``); the entry points that read or write
  checkpoints call it (``setup_logging`` does)."""
  sys.unraisablehook = _unraisablehook


def _closed_loop_callback(unraisable) -> bool:
  """Whether ``unraisable`` is a tensorstore callback into an event loop orbax has closed.

  orbax runs each restore and save in a fresh asyncio loop (``asyncio_utils.run_sync``:
  ``run_until_complete`` then ``close``). When one read or write fails (a damaged checkpoint, a
  full disk), the gather ends at once and the loop is closed while tensorstore's other reads
  and writes are still in flight; as each of them completes, its callback calls the closed
  loop's ``call_soon_threadsafe``, which raises "Event loop is closed" in a tensorstore thread,
  where Python can only ignore it. The failure itself has been raised and handled (a fallback
  to an older checkpoint, or a one-line error); these echoes of it say nothing more.
  """
  if unraisable.exc_type is not RuntimeError or str(unraisable.exc_value) != "Event loop is closed":
    return False
  frames = traceback.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
  return any(f.name == "call_soon_threadsafe" for f in frames)


def _unraisablehook(unraisable, _default=sys.unraisablehook):
  """Errors Python ignores (raised in callbacks nobody waits for) go to the log file once it is
  open, and the console gets one line the first time; tensorstore's callbacks into a closed
  loop (``_closed_loop_callback``) go to the log file only, or nowhere when there is none."""
  global _unraisable_reported
  if _closed_loop_callback(unraisable):
    _TRACEBACKS.debug("ignored tensorstore callback into a closed event loop", exc_info=(
        unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback))
    return None
  if _log_path is None:
    return _default(unraisable)
  _TRACEBACKS.debug("ignored error%s", f" in {unraisable.object!r}" if unraisable.object else "",
                    exc_info=(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback))
  if not _unraisable_reported:
    _unraisable_reported = True
    print(f"Ignored errors in library callbacks (first: {unraisable.exc_type.__name__}: "
          f"{unraisable.exc_value}) [tracebacks in {_log_path}]", file=sys.stderr)


# --- the workdir and its log file -------------------------------------------------------------

class WorkdirError(UserError, RuntimeError):
  """The workdir cannot be created or written."""
  label = "Workdir error"


def prepare_workdir(workdir: str, process_index: int = 0) -> str:
  """Create ``workdir`` (absolute or remote) and start the log file; returns the log's path.

  The log holds everything printed plus the tracebacks of one-line errors. Process k > 0 writes
  ``log.process<k>.txt``. A remote workdir keeps its log in the local temporary directory.
  """
  name = LOG_FILE if process_index == 0 else f"log.process{process_index}.txt"
  if paths.is_remote(workdir):
    log_path = os.path.join(tempfile.gettempdir(), f"jepa_jax-{os.getpid()}-{name}")
  else:
    try:
      os.makedirs(workdir, exist_ok=True)
    except FileExistsError:
      raise WorkdirError(f"--workdir={workdir} is a file, not a directory; choose another "
                         "--workdir") from None
    except OSError as e:
      raise WorkdirError(f"cannot create --workdir={workdir} ({_os_reason(e)}); choose a "
                         "writable location for --workdir") from e
    if not os.path.isdir(workdir):
      raise WorkdirError(f"--workdir={workdir} is not a directory; choose another --workdir")
    log_path = os.path.join(workdir, name)
  try:
    add_log_file(log_path)
  except OSError as e:
    raise WorkdirError(f"cannot write to --workdir={workdir} ({_os_reason(e)}); choose a "
                       "writable location for --workdir") from e
  return log_path


class _LogFile(logging.FileHandler):
  """A log file that drops what it cannot write (a full disk) instead of printing tracebacks."""

  def handleError(self, record):
    del record


def add_log_file(path: str) -> None:
  """Append every log record (INFO and up) and the one-line errors' tracebacks to ``path``."""
  global _log_path
  handler = _LogFile(path, encoding="utf-8")
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
  logging.getLogger().addHandler(handler)
  _TRACEBACKS.addHandler(handler)
  _log_path = path


def _os_reason(e: OSError) -> str:
  return e.strerror or str(e)


# --- errors in one line -----------------------------------------------------------------------

_DISK_FULL = ("No space left on device", "Disk quota exceeded")


def explain(error: BaseException, workdir: Optional[str] = None) -> Optional[str]:
  """The one-line message for an error the user can act on (a ``UserError``, or one raised
  ``from`` a ``UserError``; a full disk; an unwritable workdir); ``None`` for anything else (a
  bug). A bug raised while a ``UserError`` was being handled stays a bug: only explicit causes
  (``raise ... from``) lead to a ``UserError``."""
  cause = error
  while cause is not None:
    if isinstance(cause, UserError):
      return f"{cause.label}: {_last_line(cause)}"
    cause = cause.__cause__
  chain = _chain(error)
  for e in chain:
    full = _disk_full(e)
    if full:
      where = full if full != "?" else (workdir or "the output directory")
      return (f"Disk full: no space left on the device holding {where}; free some space (or "
              "choose another --workdir) and run the same command again: it resumes from the "
              "last complete checkpoint")
  for e in chain:
    if (isinstance(e, OSError) and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
        and workdir and str(e.filename or "").startswith(workdir)):
      return (f"Workdir error: cannot write {e.filename} ({_os_reason(e)}); choose a writable "
              "--workdir")
  return None


def _chain(error: BaseException) -> list:
  seen, out = set(), []
  e = error
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    out.append(e)
    e = e.__cause__ or e.__context__
  return out


def _disk_full(e: BaseException) -> Optional[str]:
  """The path that could not be written for lack of space ('?' if unknown), or None."""
  if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
    return e.filename or "?"
  text = str(e)
  if any(marker in text for marker in _DISK_FULL):
    # tensorstore (orbax) names the file in quotes: Failed writing: "/path/...": No space left
    m = re.search(r'"(/[^"]+)"', text)
    return m.group(1) if m else "?"
  return None


def fail(message: str, error: Optional[BaseException] = None) -> NoReturn:
  """End the process: ``message`` as the last line on stderr, exit status 1; the traceback of
  ``error`` goes to the log file only.

  Library threads (orbax's asynchronous writes, the summary writer) may still print while the
  interpreter shuts down; that output is sent to the log file too, so the message stays last.
  """
  if error is not None:
    _TRACEBACKS.debug("%s", message, exc_info=error)
  for handler in logging.getLogger().handlers + _TRACEBACKS.handlers:
    try:
      handler.flush()
    except Exception:  # noqa: BLE001 - a full disk must not hide the message
      pass
  try:
    sys.stdout.flush()
    sys.stderr.flush()
  except Exception:  # noqa: BLE001
    pass
  original = os.dup(2)
  try:
    sink = os.open(_log_path or os.devnull, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
  except OSError:
    sink = os.open(os.devnull, os.O_WRONLY)
  os.dup2(sink, 2)
  os.close(sink)
  os.write(original, (" ".join(message.split()) + "\n").encode())
  os.close(original)
  sys.exit(1)


def start_program(config_flag, workdir_flag, resolve_paths: Callable, holds: str,
                  validate: Optional[Callable] = None, workdir_field: Optional[str] = None):
  """The programs' start (pretrain, eval, finetune), in this order: logging (here: absl.app.run
  installs its own handler before calling main), ``jax.distributed``, the config's relative paths
  made absolute, ``validate(config)`` (errors in one line, before anything is written), then the
  workdir (``start_workdir``; ``holds`` says what goes there; without ``--workdir``, the config's
  ``workdir_field`` if given). Returns ``(config, workdir, log path, what validate returned)``."""
  setup_logging()
  from jepa_jax import distributed  # noqa: PLC0415 - its flags are the entry point's
  distributed.initialize_from_flags()
  import jax  # noqa: PLC0415 - after jax.distributed
  config = config_flag.value
  resolve_paths(config)
  validated = run_or_fail(lambda: validate(config)) if validate is not None else None
  workdir = paths.resolve(workdir_flag.value or (config.get(workdir_field) if workdir_field
                                                  else None))
  log_path = start_workdir(workdir, holds, jax.process_index())
  return config, workdir, log_path, validated


def start_workdir(workdir: Optional[str], holds: str, process_index: int = 0) -> str:
  """The entry points' workdir step: refuse a missing ``--workdir`` (saying what it ``holds``),
  create it and start the log file (``prepare_workdir``); returns the log's path."""
  if not workdir:
    fail(f"{ConfigError.label}: --workdir is required (where {holds} go)")
  return run_or_fail(lambda: prepare_workdir(workdir, process_index), workdir)


def run_or_fail(fn: Callable[[], Any], workdir: Optional[str] = None):
  """``fn()`` under the error policy, for the programs (main, eval, finetune, aot): an error
  ``explain`` recognises ends the process with its one line (``fail``, exit status 1, the
  traceback in the log file); any other error is a bug and keeps its traceback."""
  try:
    return fn()
  except Exception as e:  # noqa: BLE001 - user errors in one line, bugs keep their traceback
    message = explain(e, workdir)
    if message is None:
      raise
    fail(message, e)


def run_or_report(fn: Callable[[], Any], workdir: Optional[str] = None) -> tuple[Any, int]:
  """``fn()`` under the same policy, for the tools whose ``main`` returns an exit status
  (extract, predict, convert, visualize, surprise): ``(result, 0)``, or ``(None, 1)`` after the
  error's one line on stderr; any other error is a bug and keeps its traceback."""
  try:
    return fn(), 0
  except Exception as e:  # noqa: BLE001 - user errors in one line, bugs keep their traceback
    message = explain(e, workdir)
    if message is None:
      raise
    _TRACEBACKS.debug("%s", message, exc_info=e)
    print(" ".join(message.split()), file=sys.stderr)
    return None, 1


def exit_if_preempted(results: dict) -> None:
  """A training run that returned ``preempted_at_step`` (``loop.run`` saved and stopped on
  SIGTERM or a preemption notice): say so and exit with ``EXIT_PREEMPTED``, so that a launcher
  requeues it. Pretraining and fine-tuning both."""
  if "preempted_at_step" in results:
    logging.warning("Preempted at step %d; the checkpoint is saved: run the same command to "
                    "resume", results["preempted_at_step"])
    raise SystemExit(EXIT_PREEMPTED)


def run_tool(parse_args: Callable, run: Callable, argv=None) -> tuple[Any, Any, int]:
  """The start of a tool's ``main`` (extract, predict, convert, visualize, surprise): console
  logging without orbax's warnings (it warns for every read-only checkpoint manager), the tool's
  flags, then ``run(args)`` under ``run_or_report``; returns ``(args, result, status)``."""
  setup_logging(library_warnings=False)
  args = parse_args(argv)
  result, status = run_or_report(lambda: run(args))
  return args, result, status


def files_command(parse_args: Callable, run: Callable, argv=None) -> int:
  """``main`` of a command that reads inputs and writes files (``visualize``, ``surprise``):
  ``run(parse_args(argv))`` returns ``{"written": [paths], "unreadable": count}``. A user error
  (a flag's value, the checkpoint, a missing file) is one line on stderr, exit status 1
  (``run_or_report``); else the written paths are printed, and the status is 1 if some inputs
  were unreadable (logged as they were met)."""
  _, result, status = run_tool(parse_args, run, argv)
  if status:
    return status
  print("\n".join(result["written"]))
  if result["unreadable"]:
    print(f"{result['unreadable']} unreadable (logged above)", file=sys.stderr)
    return 1
  return 0
