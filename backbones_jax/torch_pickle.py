"""Read files written by ``torch.save`` / ``torch.jit.save`` without importing torch.

Public API:

* :func:`load_torch_file` -- the Python object stored by ``torch.save`` (zip format, or the
  legacy non-zip format of torch < 1.6), with every tensor rebuilt as a numpy array of the same
  dtype (fp16 stays fp16, bf16 becomes ``ml_dtypes.bfloat16``), shape, strides and offset
  honoured, and shared storages read once.
* :func:`load_state_dict` -- a flat ``{name: np.ndarray}`` from a plain state-dict file, a
  checkpoint dict wrapping one (``'state_dict'``, ``'model'``, ...), a TorchScript archive
  (``torch.jit.save``; e.g. OpenAI's CLIP ``ViT-B-16.pt``; names are the dotted module paths,
  exactly as ``module.state_dict()`` would give them) or a ``.safetensors`` file.

Only a fixed set of globals is resolved while unpickling (tensor/storage rebuilders, dtypes,
``collections.OrderedDict``, numpy array reconstruction, a few builtins), so arbitrary code in a
checkpoint cannot run. Anything else raises :class:`TorchFileError` naming the class.
"""
from __future__ import annotations

import collections
import io
import json
import os
import pickle
import re
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

try:  # numpy >= 2
  from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover
  from numpy.core import multiarray as _multiarray

__all__ = ["TorchFileError", "TorchScriptObject", "load_torch_file", "load_state_dict",
           "is_torchscript_archive"]


class TorchFileError(ValueError):
  """A file is not a torch checkpoint this reader understands (the message says why)."""


# torch storage class name -> numpy dtype.
_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
}

# torch dtype attribute name -> numpy dtype (for pickled ``torch.float16`` etc.).
_TORCH_DTYPES = {
    "float64": np.float64, "double": np.float64, "float32": np.float32, "float": np.float32,
    "float16": np.float16, "half": np.float16, "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64, "long": np.int64, "int32": np.int32, "int": np.int32,
    "int16": np.int16, "short": np.int16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
    "complex64": np.complex64, "complex128": np.complex128,
}


class _StorageType:
  """Stand-in for a ``torch.<X>Storage`` class: carries the element dtype."""

  def __init__(self, name: str, dtype: np.dtype | None):
    self.name = name
    self.dtype = dtype

  def __repr__(self):
    return f"torch.{self.name}"


class _TorchDtype:
  """Stand-in for a pickled ``torch.<dtype>`` object."""

  def __init__(self, name: str):
    if name not in _TORCH_DTYPES:
      raise TorchFileError(f"unsupported torch dtype torch.{name}")
    self.name = name
    self.np_dtype = np.dtype(_TORCH_DTYPES[name])


class _Placeholder:
  """Stand-in for harmless torch classes that only appear as arguments (Parameter, Tensor)."""

  def __init__(self, name: str):
    self.name = name

  def __call__(self, *args, **kwargs):
    raise TorchFileError(f"cannot instantiate {self.name} without torch")


class TorchScriptObject:
  """Generic object for an unknown ``__torch__.*`` class in a TorchScript archive.

  ``__setstate__`` stores the pickled attribute dict; ``_ts_class`` is the qualified class name.
  """

  _ts_class = "__torch__.?"

  def __setstate__(self, state):
    if isinstance(state, dict):
      self.__dict__.update(state)
    else:
      self.__dict__["_state"] = state

  def __repr__(self):
    return f"<TorchScriptObject {self._ts_class}>"


def _storage_view(storage: np.ndarray, offset: int, size, stride) -> np.ndarray:
  """Rebuilds a tensor (a copy) from its flat storage, element offset, shape and strides."""
  size = tuple(int(s) for s in size)
  stride = tuple(int(s) for s in stride)
  if len(size) != len(stride):
    raise TorchFileError(f"tensor with size {size} but stride {stride}")
  if any(s == 0 for s in size):
    return np.zeros(size, storage.dtype)
  last = offset + sum((n - 1) * st for n, st in zip(size, stride))
  if offset < 0 or last >= storage.size or any(st < 0 for st in stride):
    raise TorchFileError(
        f"tensor (offset {offset}, size {size}, stride {stride}) does not fit in its storage "
        f"of {storage.size} elements: the file is truncated or corrupt")
  item = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(
      storage[offset:], shape=size, strides=tuple(st * item for st in stride))
  return np.array(view, copy=True)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata
  return _storage_view(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
  del requires_grad, backward_hooks, metadata
  if isinstance(dtype, _TorchDtype) and storage.dtype != dtype.np_dtype:
    storage = storage.view(np.uint8).view(dtype.np_dtype)
  return _storage_view(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
  del requires_grad, backward_hooks, unused
  return data


def _rebuild_from_type_v2(func, new_type, args, state):
  del new_type, state
  return func(*args)


def _rebuild_device_tensor_from_numpy(data, dtype, device, requires_grad):
  del device, requires_grad
  if isinstance(dtype, _TorchDtype):
    return np.asarray(data, dtype=dtype.np_dtype)
  return np.asarray(data)


def _identity_first(value, *unused):
  del unused
  return value


_TORCH_FUNCS = {
    ("torch._utils", "_rebuild_tensor"): lambda s, o, size, stride: _storage_view(s, o, size, stride),
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._utils", "_rebuild_device_tensor_from_numpy"): _rebuild_device_tensor_from_numpy,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch._tensor", "_rebuild_from_type"): lambda func, new_type, args, state: func(*args),
    ("torch.nn.parameter", "Parameter"): _Placeholder("torch.nn.Parameter"),
    ("torch", "Tensor"): _Placeholder("torch.Tensor"),
    ("torch", "Size"): tuple,
    ("torch", "device"): str,
    ("torch.jit._pickle", "restore_type_tag"): _identity_first,
    ("torch.jit._pickle", "build_intlist"): list,
    ("torch.jit._pickle", "build_doublelist"): list,
    ("torch.jit._pickle", "build_boollist"): list,
    ("torch.jit._pickle", "build_tensorlist"): list,
    ("torch.jit._pickle", "build_tensor_from_id"): _Placeholder("torch.jit._pickle.build_tensor_from_id"),
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "range"): range,
    ("__builtin__", "set"): set,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
}


class _Unpickler(pickle.Unpickler):
  """Restricted unpickler mapping torch globals to numpy reconstructions."""

  def __init__(self, file, load_storage, torchscript: bool = False, overrides=None):
    super().__init__(file, encoding="latin1")
    self._overrides = overrides or {}
    self._load_storage = load_storage
    self._torchscript = torchscript
    self._ts_classes: dict[str, type] = {}

  def find_class(self, module, name):
    key = (module, name)
    if key in self._overrides:
      return self._overrides[key]
    if key in _TORCH_FUNCS:
      return _TORCH_FUNCS[key]
    if module == "torch" and name.endswith("Storage"):
      return _StorageType(name, _STORAGE_DTYPES.get(name))
    if module in ("torch.storage",) and name in ("UntypedStorage", "TypedStorage",
                                                 "_LegacyStorage"):
      return _StorageType(name, np.dtype(np.uint8))
    if module == "torch" and name in _TORCH_DTYPES:
      return _TorchDtype(name)
    if module.startswith("__torch__") and self._torchscript:
      qual = f"{module}.{name}"
      if qual not in self._ts_classes:
        self._ts_classes[qual] = type(name, (TorchScriptObject,), {"_ts_class": qual})
      return self._ts_classes[qual]
    if module.startswith("__torch__"):
      raise TorchFileError(
          f"found TorchScript class {module}.{name} outside a TorchScript archive")
    raise TorchFileError(
        f"the file stores a pickled Python object of class {module}.{name}, which this "
        "torch-free reader will not execute. Re-save only tensors/containers, e.g. "
        "torch.save(model.state_dict(), path)")

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
      raise TorchFileError(f"unsupported persistent id {pid!r}")
    return self._load_storage(pid)


def _storage_dtype(storage_type) -> np.dtype:
  if isinstance(storage_type, _StorageType):
    if storage_type.dtype is None:
      raise TorchFileError(f"unsupported storage type {storage_type}")
    return storage_type.dtype
  if isinstance(storage_type, _TorchDtype):
    return storage_type.np_dtype
  raise TorchFileError(f"unsupported storage type {storage_type!r}")


class _ZipArchive:
  """A torch zip archive (torch.save >= 1.6 or torch.jit.save)."""

  def __init__(self, path: str):
    self.zip = zipfile.ZipFile(path)
    names = self.zip.namelist()
    pkls = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if not pkls:
      raise TorchFileError(f"{path} is a zip file but not a torch archive (no <root>/data.pkl)")
    self.root = pkls[0].split("/")[0]
    self.names = set(names)
    order = self._read_opt("byteorder")
    self.byteorder = (order.decode().strip() if order else "little")
    self._cache: dict[tuple[str, str], np.ndarray] = {}

  def _read_opt(self, rel: str) -> bytes | None:
    full = f"{self.root}/{rel}"
    return self.zip.read(full) if full in self.names else None

  def has(self, rel: str) -> bool:
    return f"{self.root}/{rel}" in self.names

  def storage_loader(self, folder: str):
    def load(pid):
      _, storage_type, key, _location, numel = pid[:5]
      dtype = _storage_dtype(storage_type)
      cache_key = (folder, str(key))
      if cache_key not in self._cache:
        raw = self._read_opt(f"{folder}/{key}")
        if raw is None:
          raise TorchFileError(f"storage {folder}/{key} is missing from the archive")
        self._cache[cache_key] = np.frombuffer(raw, dtype=np.uint8)
      raw = self._cache[cache_key]
      if isinstance(storage_type, _StorageType) and storage_type.name in (
          "UntypedStorage", "TypedStorage", "_LegacyStorage"):
        return raw
      nbytes = int(numel) * dtype.itemsize
      if raw.size < nbytes:
        raise TorchFileError(f"storage {folder}/{key} has {raw.size} bytes, expected {nbytes}")
      arr = raw[:nbytes].view(dtype.newbyteorder("<" if self.byteorder == "little" else ">"))
      return arr.astype(dtype, copy=False) if arr.dtype.byteorder == ">" else arr
    return load

  def unpickle(self, pkl: str, folder: str, torchscript: bool = False):
    data = self._read_opt(pkl)
    if data is None:
      raise TorchFileError(f"{pkl} missing from the archive")
    return _Unpickler(io.BytesIO(data), self.storage_loader(folder), torchscript).load()


def is_torchscript_archive(path: str | os.PathLike) -> bool:
  """Whether ``path`` is a zip written by ``torch.jit.save`` (has constants.pkl and code/)."""
  path = os.fspath(path)
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as z:
    names = z.namelist()
  return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _LazyStorage:
  """A legacy-format storage whose bytes come after the object pickle."""

  def __init__(self, dtype: np.dtype):
    self.dtype = dtype
    self.array: np.ndarray | None = None


class _LazyTensor:
  """A legacy-format tensor waiting for its storage."""

  def __init__(self, storage: _LazyStorage, offset, size, stride, dtype=None):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
    self.dtype = dtype

  def build(self) -> np.ndarray:
    arr = self.storage.array
    if self.dtype is not None and arr.dtype != self.dtype.np_dtype:
      arr = arr.view(np.uint8).view(self.dtype.np_dtype)
    return _storage_view(arr, self.offset, self.size, self.stride)


def _lazy_v2(storage, offset, size, stride, *unused):
  del unused
  return _LazyTensor(storage, offset, size, stride)


def _lazy_v3(storage, offset, size, stride, requires_grad, backward_hooks, dtype, *unused):
  del requires_grad, backward_hooks, unused
  return _LazyTensor(storage, offset, size, stride, dtype)


def _resolve_lazy(obj, memo: dict):
  if isinstance(obj, _LazyTensor):
    if id(obj) not in memo:
      memo[id(obj)] = obj.build()
    return memo[id(obj)]
  if isinstance(obj, collections.OrderedDict):
    return collections.OrderedDict((k, _resolve_lazy(v, memo)) for k, v in obj.items())
  if isinstance(obj, dict):
    return {k: _resolve_lazy(v, memo) for k, v in obj.items()}
  if isinstance(obj, list):
    return [_resolve_lazy(v, memo) for v in obj]
  if isinstance(obj, tuple):
    return tuple(_resolve_lazy(v, memo) for v in obj)
  return obj


def _load_legacy(f) -> Any:
  """torch.save with _use_new_zipfile_serialization=False (and torch < 1.6).

  Layout: pickles of (magic, protocol, sys_info, object, storage keys), then for each key an
  int64 element count and the raw bytes. Tensors are rebuilt lazily once storages are read.
  """
  try:
    magic = pickle.load(f)
  except Exception as e:  # noqa: BLE001
    raise TorchFileError("not a torch file (neither a torch zip archive nor a legacy torch "
                         "pickle)") from e
  if magic != _LEGACY_MAGIC:
    raise TorchFileError("not a torch file: a pickle without torch's legacy magic number")
  protocol = pickle.load(f)
  if protocol != 1001:
    raise TorchFileError(f"unsupported legacy torch protocol version {protocol}")
  pickle.load(f)  # sys_info
  storages: dict[str, _LazyStorage] = {}

  def load_storage(pid):
    _, storage_type, key, _location, _numel, view_metadata = pid
    if view_metadata is not None:
      raise TorchFileError("legacy storage views are not supported; re-save with torch>=1.6")
    if str(key) not in storages:
      storages[str(key)] = _LazyStorage(_storage_dtype(storage_type))
    return storages[str(key)]

  overrides = {("torch._utils", "_rebuild_tensor"): _lazy_v2,
               ("torch._utils", "_rebuild_tensor_v2"): _lazy_v2,
               ("torch._utils", "_rebuild_tensor_v3"): _lazy_v3}
  result = _Unpickler(f, load_storage, overrides=overrides).load()
  keys = pickle.load(f)
  for key in keys:
    storage = storages[str(key)]
    (numel,) = struct.unpack("<q", f.read(8))
    nbytes = numel * storage.dtype.itemsize
    buf = f.read(nbytes)
    if len(buf) != nbytes:
      raise TorchFileError(f"legacy storage {key} is truncated")
    storage.array = np.frombuffer(buf, dtype=storage.dtype)
  return _resolve_lazy(result, {})


def load_torch_file(path: str | os.PathLike) -> Any:
  """Loads a ``torch.save`` file without torch: tensors become numpy arrays (dtype preserved).

  Args:
    path: a file written by ``torch.save`` (zip or legacy format).

  Returns:
    The saved Python object (dicts, lists, OrderedDicts, numbers...) with tensors as numpy
    arrays. For TorchScript archives use :func:`load_state_dict`.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    TorchFileError: the file is not a torch checkpoint, or pickles a class that would need torch.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no such torch file: {path}")
  if zipfile.is_zipfile(path):
    arc = _ZipArchive(path)
    if arc.has("constants.pkl") and is_torchscript_archive(path):
      raise TorchFileError(
          f"{path} is a TorchScript archive (torch.jit.save); use load_state_dict() for it")
    return arc.unpickle("data.pkl", "data")
  with open(path, "rb") as f:
    return _load_legacy(f)


def _parse_torchscript_code(arc: _ZipArchive) -> dict[str, set[str]]:
  """Maps TorchScript class qualnames to their declared parameter + buffer names."""
  out: dict[str, set[str]] = {}
  prefix = f"{arc.root}/code/"
  for name in arc.names:
    if not (name.startswith(prefix) and name.endswith(".py")):
      continue
    module = name[len(prefix):-3].replace("/", ".")
    text = arc.zip.read(name).decode("utf-8", errors="replace")
    for m in re.finditer(r"^class (\w+)\(Module\):\n((?:  .*\n?)*)", text, flags=re.M):
      body = m.group(2)
      names: set[str] = set()
      for field in ("__parameters__", "__buffers__"):
        fm = re.search(rf"^  {field} = \[(.*?)\]", body, flags=re.M)
        if fm:
          names.update(re.findall(r'"([^"]*)"', fm.group(1)))
      out[f"{module}.{m.group(1)}"] = names
  return out


def _walk_torchscript(obj: TorchScriptObject, declared: dict[str, set[str]], prefix: str,
                      out: dict[str, np.ndarray]):
  names = declared.get(obj._ts_class)
  for key, value in obj.__dict__.items():
    if isinstance(value, np.ndarray):
      if names is None or key in names:
        out[prefix + key] = value
    elif isinstance(value, TorchScriptObject):
      _walk_torchscript(value, declared, f"{prefix}{key}.", out)


_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "params")


def _flat_arrays(obj) -> dict[str, np.ndarray] | None:
  if not isinstance(obj, dict) or not obj:
    return None
  arrays = {k: v for k, v in obj.items() if isinstance(v, np.ndarray)}
  # A state dict holds tensors (plus, rarely, metadata such as ints); require mostly arrays.
  if len(arrays) == 0 or len(arrays) < len(obj) / 2 or not all(isinstance(k, str) for k in obj):
    return None
  return dict(arrays)


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
  dtypes = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
            "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
            "BOOL": np.bool_}
  with open(path, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
    data = f.read()
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info["dtype"] not in dtypes:
      raise TorchFileError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    arr = np.frombuffer(data[start:end], dtype=np.dtype(dtypes[info["dtype"]]).newbyteorder("<"))
    out[name] = arr.reshape(info["shape"]).copy()
  return out


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Loads a flat ``{name: np.ndarray}`` state dict from a torch or safetensors file.

  Handles: a plain ``torch.save(model.state_dict())`` file (zip or legacy), a checkpoint dict
  wrapping one under ``'state_dict'``/``'model_state_dict'``/``'model'``/``'module'``/``'net'``,
  a TorchScript archive (``torch.jit.save``; parameters and buffers of the module tree under
  their dotted names), and ``.safetensors``. Names are returned unchanged (no prefix stripping).

  Raises:
    FileNotFoundError: ``path`` does not exist.
    TorchFileError: the file holds no recognisable state dict (the message lists its top keys).
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no such checkpoint file: {path}")
  if path.endswith(".safetensors"):
    return _load_safetensors(path)
  if is_torchscript_archive(path):
    arc = _ZipArchive(path)
    root = arc.unpickle("data.pkl", "data", torchscript=True)
    if not isinstance(root, TorchScriptObject):
      raise TorchFileError(f"{path}: TorchScript data.pkl does not hold a module object")
    out: dict[str, np.ndarray] = {}
    _walk_torchscript(root, _parse_torchscript_code(arc), "", out)
    if not out:
      raise TorchFileError(f"{path}: TorchScript module has no tensors")
    return out
  obj = load_torch_file(path)
  flat = _flat_arrays(obj)
  if flat is not None:
    return flat
  if isinstance(obj, dict):
    for key in _WRAPPER_KEYS:
      if key in obj:
        flat = _flat_arrays(obj[key])
        if flat is not None:
          return flat
    keys = list(obj)[:10]
    raise TorchFileError(
        f"{path}: a dict without a state dict in it (top-level keys {keys}); expected "
        f"name->tensor entries or one of the wrapper keys {list(_WRAPPER_KEYS)}")
  raise TorchFileError(f"{path}: holds a {type(obj).__name__}, not a state dict")
