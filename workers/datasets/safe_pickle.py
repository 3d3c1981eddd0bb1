"""Reading pickle files that should hold only data (CIFAR-10's python batches).

``pickle.load`` runs whatever callable a file names, so a "dataset" dropped into a data root could
execute code on every Ray worker that opens it. ``load_data_pickle`` resolves only the globals a
NumPy array needs to be rebuilt; any other global (``os.system``, ``builtins.eval``, a class) is
refused with ``UnsafePickleError`` before it is called.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

# (module, name) pairs that rebuild ndarrays and dtypes (NumPy 2 moved ``core`` to ``_core``;
# protocol 5 rebuilds arrays through ``numeric._frombuffer``), and the builtins protocol-2 pickles
# written by Python 3 name to rebuild ``bytes`` / ``bytearray`` (``_codecs.encode``, ``__builtin__``).
_ALLOWED = (
    frozenset(
        (module, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    )
    | frozenset((module, "_frombuffer") for module in ("numpy.core.numeric", "numpy._core.numeric"))
    | frozenset((module, name) for module in ("builtins", "__builtin__") for name in ("bytes", "bytearray"))
    | frozenset({("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")})
)


class UnsafePickleError(pickle.UnpicklingError):
    """The file names a global that plain data does not need."""


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickleError(f"refused to load global {module}.{name}: only NumPy arrays and plain data")


def loads_data_pickle(payload: bytes, *, encoding: str = "latin1") -> Any:
    return _DataOnlyUnpickler(io.BytesIO(payload), encoding=encoding).load()


def load_data_pickle(path: Path, *, encoding: str = "latin1") -> Any:
    """Unpickle ``path`` allowing only data; raises UnsafePickleError naming the file otherwise."""
    try:
        return loads_data_pickle(Path(path).read_bytes(), encoding=encoding)
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
