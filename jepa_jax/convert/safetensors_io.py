"""Reading and writing safetensors weights as Hugging Face model directories hold them: one
``model.safetensors``, or the shards a ``model.safetensors.index.json`` names.

The format is an 8-byte little-endian header length, a JSON header (each tensor's dtype, shape and
byte range; ``__metadata__``) padded to 8 bytes, then the tensors back to back. Why not the
``safetensors`` library: it maps the whole file, and every page read stays in memory until it is
closed (a copy of the model beside the converted one, ``bench/convert_memory.py --format hf``), and
its ``save_file`` needs every tensor contiguous at once. Here both directions stream one tensor at
a time. The tests read and write with transformers, i.e. with that library.
"""
import json
import os
from typing import Mapping, Optional

import ml_dtypes
import numpy as np

from jepa_jax.convert.names import ConversionError

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
# What transformers' save_pretrained records; from_pretrained refuses other "format" values.
METADATA = {"format": "pt"}
_WRITE_DTYPES = {np.dtype(np.float32): "F32"}
# Floating dtypes read (and converted to float32): what model weights are stored in.
_READ_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "F64": np.dtype("<f8"),
                "BF16": np.dtype(ml_dtypes.bfloat16)}
_MAX_HEADER = 100 << 20  # the format's own limit on the header's size


def read_header(path: str) -> tuple[dict, int]:
  """``({name: {dtype, shape, data_offsets}}, offset of the data)`` of a safetensors file, checked
  against the file's size."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    length = int.from_bytes(f.read(8), "little")
    if not 0 < length <= min(_MAX_HEADER, size - 8):
      raise ConversionError(f"{path} is not a safetensors file (header length {length})")
    try:
      header = json.loads(f.read(length))
    except ValueError as e:
      raise ConversionError(f"{path}: unreadable safetensors header ({e})") from None
  header.pop("__metadata__", None)
  data = 8 + length
  for name, entry in header.items():
    dtype = _READ_DTYPES.get(entry.get("dtype"))
    begin, end = entry.get("data_offsets", (0, -1))
    if dtype is None:
      raise ConversionError(f"{path}: tensor {name} has dtype {entry.get('dtype')}; model "
                            f"weights in {sorted(_READ_DTYPES)} are read")
    if end - begin != int(np.prod(entry["shape"], dtype=np.int64)) * dtype.itemsize or \
        data + end > size:
      raise ConversionError(f"{path}: tensor {name}'s bytes {begin}..{end} do not fit its shape "
                            f"{entry['shape']} or the file; the file is damaged or truncated")
  return header, data


class WeightFiles:
  """The tensors of a model directory: ``shapes`` (name -> shape, from the headers) and
  ``read(name)`` (a float32 array in its own memory). Use as a context manager."""

  def __init__(self, directory: str):
    self.directory = os.fspath(directory)
    self._where, self.shapes = {}, {}
    for f in _weight_files(self.directory):
      path = os.path.join(self.directory, f)
      header, data = read_header(path)
      for name, entry in header.items():
        if name in self._where:
          raise ConversionError(f"tensor {name} is in both {self._where[name][0]} and {path}; "
                                "keep one copy of each tensor")
        self._where[name] = (path, data + entry["data_offsets"][0],
                             _READ_DTYPES[entry["dtype"]], tuple(entry["shape"]))
        self.shapes[name] = tuple(entry["shape"])
    self._files = {}

  def read(self, name: str) -> np.ndarray:
    path, offset, dtype, shape = self._where[name]
    if path not in self._files:
      self._files[path] = open(path, "rb")  # noqa: SIM115 - closed by close()
    f = self._files[path]
    f.seek(offset)
    count = int(np.prod(shape, dtype=np.int64))
    value = np.fromfile(f, dtype=dtype, count=count).reshape(shape)
    return value if value.dtype == np.float32 else value.astype(np.float32)

  def close(self):
    for f in self._files.values():
      f.close()
    self._files.clear()

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
    if dtype not in _WRITE_DTYPES:
      raise ConversionError(f"{name}: dtype {dtype} (the converter writes float32)")
    size = int(np.prod(value.shape, dtype=np.int64)) * dtype.itemsize
    header[name] = {"dtype": _WRITE_DTYPES[dtype], "shape": [int(d) for d in value.shape],
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
