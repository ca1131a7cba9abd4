"""The one user-error type. Every entry point reports a ``UserError`` (anywhere in an exception's
cause chain) as one line, ``"<label>: <message>"`` (``cli.run_or_fail``, ``cli.run_or_report``);
any other exception is a bug in jepa_jax and keeps its traceback.

Raise a ``UserError`` subclass where a condition is the user's to fix (a config field, a flag,
an input file, a checkpoint, the data, the workdir, a missing optional dependency), with a
message that names the thing and the fix. Raise plain ``ValueError``/``KeyError``/... for
broken invariants of jepa_jax's own code: those must show their traceback.
"""


class UserError(Exception):
  """An error the user can act on; the message names the thing and the fix."""
  label = "error"


class ConfigError(UserError, ValueError):
  """An impossible config field or command-line flag value; the message names it and the fix."""
  label = "Config error"


class MissingDependencyError(UserError, ImportError):
  """An optional package that the requested feature needs is not installed (says what to
  install)."""


class InputNotFoundError(UserError, FileNotFoundError):
  """A file or directory the user named (an index, a labels file, a probe) does not exist."""
