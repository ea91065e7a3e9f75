"""Reader for the IDX format of (Fashion-)MNIST, plain or gzip-compressed.

Layout: 2 zero bytes, dtype code (0x08 = uint8), ndim, then ndim big-endian int32 sizes, then the data.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from crrelu_lightning.data.errors import CorruptDataError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path, refetch: str = "") -> torch.Tensor:
    """Read an IDX file (``.gz`` decompressed on the fly) into a tensor of its stored shape.

    A damaged file raises ``CorruptDataError`` naming it; ``refetch`` (a command) is appended as the fix.
    """
    path = Path(path)
    fix = f" Re-fetch it with: {refetch}" if refetch else ""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # truncated or garbled .gz
        raise CorruptDataError(f"{path} is damaged ({type(e).__name__}: {e}).{fix}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise CorruptDataError(f"{path} is damaged: not an IDX file (bad magic {data[:4]!r}).{fix}")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise CorruptDataError(f"{path} is damaged: header cut short ({len(data)} bytes).{fix}")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    itemsize = np.dtype(_DTYPES[data[2]]).itemsize
    if (len(data) - offset) != int(np.prod(shape)) * itemsize:
        raise CorruptDataError(
            f"{path} is damaged: header says shape {shape} but the file holds {(len(data) - offset) // itemsize} "
            f"values (truncated?).{fix}")
    arr = np.frombuffer(data, dtype=_DTYPES[data[2]], offset=offset)
    return torch.from_numpy(arr.reshape(shape).astype(arr.dtype.newbyteorder("="), copy=True))
