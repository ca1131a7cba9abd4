"""Checks of one config field each: the value as its type, or a ``ConfigError`` naming the field
and what it is for. The programs' config readers (``pretrain/config.py``, ``eval/settings.py``,
``finetune/settings.py``) share them, so a field is refused in the same words everywhere. And
``config_to_json``, the one plain-JSON form of a config (what checkpoints and logs record)."""
import math

import numpy as np

from jepa_jax.errors import ConfigError


def config_to_json(tree):
  """A (nested) ConfigDict, mapping, list or tuple as plain JSON values: mappings as dicts with
  string keys, sequences (lists of ConfigDicts such as ``config.masks`` included) as lists,
  numpy values as numbers and lists; any other leaf as its ``str``."""
  if hasattr(tree, "to_dict"):
    tree = tree.to_dict()
  if hasattr(tree, "items"):
    return {str(k): config_to_json(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [config_to_json(v) for v in tree]
  if isinstance(tree, (np.generic, np.ndarray)):
    return tree.tolist()
  if tree is None or isinstance(tree, (bool, int, float, str)):
    return tree
  return str(tree)


def positive_int(value, field: str, what: str, optional: bool = False):
  """``value`` as an int > 0 (or None when ``optional``); ConfigError naming ``field``."""
  if optional and value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    extra = ", or None" if optional else ""
    raise ConfigError(f"{field}={value!r} must be a positive integer{extra} ({what})")
  return int(value)


def non_negative_int(value, field: str, what: str) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise ConfigError(f"{field}={value!r} must be an integer >= 0 ({what})")
  return int(value)


def number(value, field: str, what: str, optional: bool = False, minimum: float = -math.inf):
  if optional and value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= minimum:
    bound = f" >= {minimum:g}" if minimum > -math.inf else ""
    raise ConfigError(f"{field}={value!r} must be a number{bound} ({what})")
  return value  # as written: results.json records the protocol as the config gave it


def one_of(value, field: str, allowed) -> str:
  if value not in allowed:
    raise ConfigError(f"{field} must be one of {list(allowed)}, got {value!r}")
  return value


def ints(values, field: str, what: str) -> tuple[int, ...]:
  if isinstance(values, (int, str)) or not all(
      isinstance(v, int) and not isinstance(v, bool) for v in values):
    raise ConfigError(f"{field}={values!r} must be a list of integers ({what}), e.g. '(0, 1, 2)'")
  return tuple(int(v) for v in values)
