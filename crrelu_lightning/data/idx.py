"""Reader for the IDX format of (Fashion-)MNIST, plain or gzip-compressed.

Layout: 2 zero bytes, dtype code (0x08 = uint8), ndim, then ndim big-endian int32 sizes, then the data.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> torch.Tensor:
    """Read an IDX file (``.gz`` decompressed on the fly) into a tensor of its stored shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic {data[:4]!r})")
    ndim = data[3]
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    arr = np.frombuffer(data, dtype=_DTYPES[data[2]], offset=offset)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {arr.size} values")
    return torch.from_numpy(arr.reshape(shape).astype(arr.dtype.newbyteorder("="), copy=True))
