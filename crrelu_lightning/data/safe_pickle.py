"""A restricted unpickler for data files that are pickles (the official CIFAR batches).

``pickle.load`` imports and calls whatever the file names, so a crafted "data_batch_1" can run any code.
``load_restricted`` admits only what the official files hold: builtin containers (dict, list, tuple, set),
bytes/str/numbers, and numpy arrays (``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``,
``numpy.dtype``); any other global is refused *before* it is imported or called.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Union

ALLOWED_GLOBALS = frozenset({
    # numpy arrays, as Python-2 numpy (numpy.core) and numpy 2 (numpy._core) pickle them
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol >= 5
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    # protocol-2 pickles written by Python 3 encode bytes as _codecs.encode(str, "latin1"); pure function
    ("_codecs", "encode"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
})


class UnsafePickleError(pickle.UnpicklingError):
    """The file asks to import something a data file never needs; nothing of it was run."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path, **kwargs) -> None:
        super().__init__(file, **kwargs)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module.replace("__builtin__", "builtins"), name) in ALLOWED_GLOBALS:  # Python 2's name for builtins
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self._path}: the pickle asks for {module}.{name}, which a dataset file never contains; refused "
            f"without importing or running it. The file is not an official data file (it may be crafted): "
            f"replace it with the official one."
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._path}: persistent ids are not allowed in a dataset file")


def load_restricted(path: Union[str, Path], encoding: str = "bytes") -> Any:
    """Unpickle ``path`` admitting only builtin containers, bytes/str/numbers and numpy arrays.

    Raises ``UnsafePickleError`` (a ``pickle.UnpicklingError``) naming the file and the refused global.
    ``encoding="bytes"`` reads Python-2 pickles (the official CIFAR files) with their str keys as bytes.
    """
    path = Path(path)
    with open(path, "rb") as f:
        return _RestrictedUnpickler(f, path, encoding=encoding).load()
