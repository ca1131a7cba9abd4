"""Reading and writing ``.pth.tar`` files; the only module of jepa_jax that imports torch.

torch is an optional dependency (``pip install 'jepa_jax[torch]'``), imported lazily here so the
rest of the package, the converter's shape logic included, works without it.

Files are read with ``torch.load(..., weights_only=True)``: tensors and plain containers only.
Unpickling arbitrary Python objects can run arbitrary code, so a file that needs it is refused
rather than trusted.
"""
import ctypes
import os
import pickle
import sys
import weakref
from typing import Any, Mapping

import numpy as np

from jepa_jax.convert.names import ConversionError
from jepa_jax.errors import MissingDependencyError

# The top-level entries of a checkpoint that hold state dicts the converter reads; everything
# else (optimiser state, scaler, epoch, ...) is left as torch loaded it and never converted.
STATE_DICT_KEYS = ("encoder", "predictor", "target_encoder", "classifier")


def import_torch():
  try:
    import torch  # noqa: PLC0415 - optional dependency, imported only by the converter
  except ImportError as e:
    raise MissingDependencyError("converting PyTorch checkpoints needs torch: pip install "
                                 "'jepa_jax[torch]' (or any CPU build of torch >= 2.2)") from e
  return torch


def load(path: str) -> dict:
  """A ``.pth.tar``'s top-level dict, with its state dicts as numpy float32/int arrays.

  A file holding a bare state dict (tensor values at the top level) is returned as is, converted.
  """
  torch = import_torch()
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ConversionError(f"{path}: no such file")
  try:
    try:
      # mmap keeps multi-GB files (the released ones carry the optimiser state) out of memory;
      # files in torch's legacy (pre-1.6, non-zip) format cannot be mapped.
      obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
      mapped = True
    except RuntimeError as e:
      if "mmap" not in str(e) and "zip" not in str(e):
        raise
      obj = torch.load(path, map_location="cpu", weights_only=True)
      mapped = False
  except pickle.UnpicklingError as e:
    first = str(e).strip().splitlines()
    raise ConversionError(
        f"{path} holds Python objects other than tensors and plain containers, and jepa_jax "
        "refuses to unpickle arbitrary objects (that can run code): "
        f"{first[-1] if first else e}. If you trust the file, re-save just its state dicts, e.g. "
        "ckpt = torch.load(path, weights_only=False); torch.save({k: ckpt[k] for k in "
        "('encoder', 'predictor', 'target_encoder') if k in ckpt}, 'clean.pth.tar')") from None
  except Exception as e:  # noqa: BLE001 - truncated/foreign files fail in many ways
    raise ConversionError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: "
                          f"{e})") from None
  if not isinstance(obj, Mapping):
    raise ConversionError(f"{path} holds a {type(obj).__name__}, not a dict of state dicts")
  if obj and all(_is_tensor(v) for v in obj.values()):
    return _to_numpy(obj, mapped)
  out = {k: (_to_numpy(v, mapped) if k in STATE_DICT_KEYS and isinstance(v, Mapping) else v)
         for k, v in obj.items()}
  if isinstance(obj.get("classifiers"), (list, tuple)):  # V-JEPA 2's eval: one per LR/WD head
    out["classifiers"] = [_to_numpy(v, mapped) for v in obj["classifiers"]]
  return out


def _is_tensor(x) -> bool:
  return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _to_numpy(state: Mapping, mapped: bool = False) -> dict:
  """numpy views of a state dict's tensors; ``mapped``: the tensors view the file's mapping."""
  out = {}
  for name, value in state.items():
    if not _is_tensor(value):
      raise ConversionError(f"state dict entry {name!r} is a {type(value).__name__}, not a tensor")
    value = value.detach().cpu()
    views_file = mapped and value.dtype == import_torch().float32
    if value.is_floating_point():
      value = value.float()  # bf16/fp16 checkpoints: our parameters are float32 (a copy)
    out[name] = value.numpy()
    if views_file:
      key = id(out[name])
      _MAPPED[key] = weakref.ref(out[name], lambda _, key=key: _MAPPED.pop(key, None))
  return out


# --- releasing the file's pages once a tensor is converted -----------------------------------
# ``load`` maps the file (torch.load(mmap=True)): a tensor's pages are read in when it is first
# used and then count in the process's memory until the mapping goes, i.e. until the whole
# conversion is done. The converter copies each tensor into its own layout and then drops the
# pages it read (``release``), so at any time it holds the converted parameters plus one tensor
# of the file, not the file as well (measured in BENCHMARKS.md).
_MAPPED: dict = {}          # id -> weakref of the arrays ``load`` returned that view the mapping
_MADV_DONTNEED = 4          # Linux; the mapping is private and never written: pages re-read on use
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def release(array: np.ndarray) -> None:
  """Drop the resident pages of the file mapping behind ``array`` (a ``load`` result); anything
  else, and any platform but Linux, is left alone. Reading ``array`` again re-reads the file."""
  ref = _MAPPED.pop(id(array), None)
  if ref is None or ref() is not array or not sys.platform.startswith("linux") or not array.size:
    return
  start = array.__array_interface__["data"][0]
  first = -(-start // _PAGE) * _PAGE                   # only pages wholly inside the tensor
  last = (start + array.nbytes) // _PAGE * _PAGE
  if last > first:
    ctypes.CDLL(None).madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first),
                              _MADV_DONTNEED)


def save(path: str, obj: Mapping[str, Any]) -> None:
  """Write a checkpoint dict; numpy arrays inside (nested) dicts become contiguous tensors."""
  torch = import_torch()

  def convert(x):
    if isinstance(x, Mapping):
      return {k: convert(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
      return [convert(v) for v in x]
    if isinstance(x, np.ndarray):
      # Copies only views that are transposed or read-only (torch wants writable memory).
      return torch.from_numpy(np.require(x, requirements=["C", "W"]))
    return x

  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  torch.save(convert(obj), path)
