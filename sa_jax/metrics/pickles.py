"""Reading the pickles stable-audio-metrics ships (its KL_passt reference probabilities,
`load/passt_kld/*.pkl`) without running arbitrary code and without torch.

Those files are `pickle.dump({id: torch.Tensor (527,)})`. A tensor pickled that way is
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`,
and its storage is `torch.storage._load_from_bytes(b)`, where `b` is torch's legacy (non-zip)
`torch.save` of the storage: pickles of a magic number, a protocol version and system info, one
pickle whose only content is a persistent id ('storage', torch.<Type>Storage, key, 'cpu', numel,
None), a pickle of the list of keys, then per key the element count (int64, little-endian) and the
raw elements.

`safe_load` unpickles with a whitelist: dicts, lists, tuples, str, numbers, `collections.OrderedDict`,
NumPy arrays and scalars (not of object dtype), and the two torch names above, which are answered by
NumPy stand-ins here (so a tensor comes back as a NumPy array). Any other global is refused.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np

from sa_jax.errors import CheckpointError

# torch's legacy storage classes -> NumPy dtypes (little-endian, as torch writes them on x86/ARM)
_STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "LongStorage": "<i8",
    "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _StorageType:
    """What `torch.<Type>Storage` unpickles to inside a storage's bytes: its NumPy dtype."""

    def __init__(self, name: str):
        self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


class _Restricted(pickle.Unpickler):
    def __init__(self, file, what: str, storage_types: bool = False):
        super().__init__(file)
        self.what, self.storage_types = what, storage_types

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_tensor"):
            return _rebuild_tensor
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return lambda data: _load_storage(data, self.what)
        if self.storage_types and module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
            import importlib

            try:
                return getattr(importlib.import_module("numpy._core.multiarray"), name)
            except ImportError:       # NumPy 1.x
                return getattr(importlib.import_module("numpy.core.multiarray"), name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        raise CheckpointError(f"{self.what} asks for {module}.{name}; only plain data (dicts, lists, strings, numbers, "
                           "NumPy arrays, torch tensors) is read from a pickle")


def _rebuild_tensor(storage, offset, size, stride, *unused):
    """A tensor as a NumPy array (a copy of its view of the storage)."""
    if not isinstance(storage, np.ndarray):
        raise CheckpointError(f"a tensor's storage unpickled to {type(storage).__name__}, not an array")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    empty = not all(size)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if offset < 0 or any(s < 0 for s in stride) or (not empty and last >= len(storage)):
        raise CheckpointError(f"a tensor of size {size}, stride {stride}, offset {offset} does not fit its storage of "
                           f"{len(storage)} elements")
    item = storage.itemsize
    return np.lib.stride_tricks.as_strided(storage[offset:], size, tuple(s * item for s in stride)).copy()


def _load_storage(data: bytes, what: str) -> np.ndarray:
    """torch.storage._load_from_bytes: a legacy `torch.save` of one storage -> its elements."""
    if not isinstance(data, bytes):
        raise CheckpointError(f"{what}: a tensor storage holds {type(data).__name__}, not bytes")
    f = io.BytesIO(data)

    def plain():
        return _Restricted(f, what, storage_types=True).load()

    try:
        magic, protocol, _ = plain(), plain(), plain()
        if magic != _LEGACY_MAGIC or protocol != 1001:
            raise CheckpointError(f"{what}: a tensor storage is not in torch's legacy format (magic {magic!r})")
        ids = []
        unpickler = _Restricted(f, what, storage_types=True)
        unpickler.persistent_load = lambda pid: ids.append(pid) or len(ids) - 1
        root = unpickler.load()
        keys = plain()
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{what}: a tensor storage cannot be read ({type(e).__name__}: {e})") from None
    if len(ids) != 1 or root != 0:
        raise CheckpointError(f"{what}: a tensor storage should hold one storage, found {len(ids)}")
    pid = ids[0]
    if (not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage" or not isinstance(pid[1], _StorageType)
            or not isinstance(keys, list) or keys != [pid[2]]):
        raise CheckpointError(f"{what}: unexpected tensor storage record {pid!r}")
    if len(pid) > 5 and pid[5] is not None:
        raise CheckpointError(f"{what}: tensor storages that are views of others are not supported")
    dtype = pid[1].dtype
    count = np.frombuffer(f.read(8), "<i8")
    if len(count) != 1 or count[0] != pid[4]:
        raise CheckpointError(f"{what}: a tensor storage's length does not match its record")
    raw = f.read(int(count[0]) * dtype.itemsize)
    if len(raw) != int(count[0]) * dtype.itemsize:
        raise CheckpointError(f"{what}: a tensor storage is truncated")
    return np.frombuffer(raw, dtype).astype(dtype.newbyteorder("="))


def safe_load(path: str | Path, what: str | None = None):
    """Unpickle `path` allowing only plain data (see the module doc); torch tensors become NumPy arrays."""
    path = Path(path)
    what = what or str(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} does not exist")
    with open(path, "rb") as f:
        try:
            obj = _Restricted(f, what).load()
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"{what} is not a readable pickle ({type(e).__name__}: {e})") from None
    _check_plain(obj, what)
    return obj


def _check_plain(obj, what: str, depth: int = 0) -> None:
    if depth > 20:
        raise CheckpointError(f"{what} nests deeper than 20 levels")
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biufc":
            raise CheckpointError(f"{what} holds an array of dtype {obj.dtype}; only numeric arrays are read")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, what, depth + 1)
            _check_plain(v, what, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check_plain(v, what, depth + 1)
    elif not isinstance(obj, (str, bytes, int, float, bool, type(None), np.generic)):
        raise CheckpointError(f"{what} holds a {type(obj).__name__}; only plain data is read")
