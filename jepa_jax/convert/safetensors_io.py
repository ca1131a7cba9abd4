"""Reading and writing safetensors weights as Hugging Face model directories hold them.

Reading uses the ``safetensors`` library (an optional dependency, imported here only): one
``model.safetensors``, or the shards a ``model.safetensors.index.json`` names (large hub
models). Tensors are read one at a time, when asked for, so a conversion holds one of the file's
tensors at a time; shapes come from the headers without reading any data.

Writing streams: the header (names, dtypes, shapes, offsets) is computed from the arrays' shapes,
then each tensor is made contiguous and written, one at a time. ``safetensors.numpy.save_file``
needs every tensor contiguous in memory at once, i.e. a transposed copy of the whole model beside
the parameters it was made from. The layout written is the format's (little-endian 8-byte header
length, a JSON header padded to 8 bytes, the tensors back to back in header order); the tests read
the files back with the ``safetensors`` library and load them with transformers.
"""
import json
import os
from typing import Mapping, Optional

import numpy as np

from jepa_jax.convert.names import ConversionError

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
# What transformers' save_pretrained records; from_pretrained refuses other "format" values.
METADATA = {"format": "pt"}
_DTYPE_NAMES = {np.dtype(np.float32): "F32"}


def import_safetensors():
  try:
    import safetensors  # noqa: PLC0415 - optional dependency, only the --from-hf/--to-hf paths
  except ImportError as e:
    raise ImportError("reading Hugging Face weights needs safetensors: pip install "
                      "'jepa_jax[hf]' (or pip install safetensors)") from e
  return safetensors


class WeightFiles:
  """The tensors of a model directory: ``shapes`` (name -> shape, from the headers) and
  ``read(name)`` (a float32 array in its own memory). Use as a context manager."""

  def __init__(self, directory: str):
    import_safetensors()
    from safetensors import safe_open  # noqa: PLC0415
    self.directory = os.fspath(directory)
    files = _weight_files(self.directory)
    self._handles = {f: safe_open(os.path.join(self.directory, f), framework="np") for f in files}
    self._where, self.shapes = {}, {}
    for f, handle in self._handles.items():
      for name in handle.keys():
        if name in self._where:
          raise ConversionError(f"tensor {name} is in both {self._where[name]} and {f} of "
                                f"{self.directory}; keep one copy of each tensor")
        self._where[name] = f
        self.shapes[name] = tuple(handle.get_slice(name).get_shape())

  def read(self, name: str) -> np.ndarray:
    value = self._handles[self._where[name]].get_tensor(name)
    return value if value.dtype == np.float32 else value.astype(np.float32)

  def close(self):
    self._handles.clear()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _weight_files(directory: str) -> list:
  if not os.path.isdir(directory):
    raise ConversionError(f"{directory}: no such directory; give the directory holding "
                          "config.json and the safetensors weights (e.g. huggingface-cli "
                          "download facebook/vjepa2-vitl-fpc64-256 --local-dir DIR)")
  index = os.path.join(directory, INDEX_NAME)
  if os.path.isfile(index):
    with open(index) as f:
      weight_map = json.load(f).get("weight_map") or {}
    files = sorted(set(weight_map.values()))
    missing = [f for f in files if not os.path.isfile(os.path.join(directory, f))]
    if not files or missing:
      raise ConversionError(f"{index} names shards {missing or files} that are not in "
                            f"{directory}; download every shard it lists")
    return files
  if os.path.isfile(os.path.join(directory, WEIGHTS_NAME)):
    return [WEIGHTS_NAME]
  found = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
  if len(found) == 1:
    return found
  others = sorted(f for f in os.listdir(directory) if f.endswith((".bin", ".pt", ".pth")))
  raise ConversionError(
      f"{directory} has no {WEIGHTS_NAME} (nor {INDEX_NAME} with its shards)"
      + (f" but {others}: jepa_jax reads the safetensors weights only; download those, or load "
         "the model in transformers and save_pretrained() it" if others else
         f"; found {found or 'no safetensors files'}"))


def write(path: str, tensors: Mapping[str, np.ndarray],
          metadata: Optional[Mapping[str, str]] = None) -> int:
  """Write ``tensors`` (float32 arrays or views of them, any strides) as one safetensors file,
  tensor by tensor; returns the bytes of tensor data written."""
  header, offset = {}, 0
  for name in sorted(tensors):
    value = tensors[name]
    dtype = np.dtype(value.dtype)
    if dtype not in _DTYPE_NAMES:
      raise ConversionError(f"{name}: dtype {dtype} (the converter writes float32)")
    size = int(np.prod(value.shape, dtype=np.int64)) * dtype.itemsize
    header[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": [int(d) for d in value.shape],
                    "data_offsets": [offset, offset + size]}
    offset += size
  header["__metadata__"] = dict(METADATA if metadata is None else metadata)
  text = json.dumps(header, separators=(",", ":")).encode()
  text += b" " * (-len(text) % 8)  # the format's alignment of the data that follows
  with open(path, "wb") as f:
    f.write(len(text).to_bytes(8, "little"))
    f.write(text)
    for name in sorted(tensors):
      # '<f4': the format is little-endian; a no-op copy-free view on little-endian machines
      # unless the array is transposed, which is the one copy made, one tensor at a time.
      f.write(np.ascontiguousarray(tensors[name], dtype="<f4").data)
  return offset
