"""Records from local dataset files, with every unreadable one accounted for.

``iter_records(path)`` yields ``(line, record)`` from JSON Lines (``.jsonl``, and ``.json`` files that
hold one object per line, as SHP does), gzip-compressed or not, and from Parquet (``.parquet``, through
the optional ``pyarrow``; ``line`` is then the 1-based row). A line that is not JSON yields the
exception instead of a record, so the caller decides whether to skip it.

``BadRecords`` collects ``file:line: reason`` for the records a parser refused and applies the policy:
``on_error="raise"`` stops at the first; ``"skip"`` skips them and warns once with a summary
(count, fraction, per file, the first few locations), and still stops when more than
``max_bad_fraction`` of the records are bad or when nothing valid is left (a mostly malformed dataset
is an error whatever ``on_error`` says).
"""
from __future__ import annotations

import gzip
import json
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, List, Tuple, Union

SHOWN = 10  # locations listed in a warning or error


class MalformedRecordError(ValueError):
    """A record that cannot be parsed, or a dataset with too many of them."""


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _iter_parquet(path: Path) -> Iterator[Tuple[int, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # optional extra
        raise ImportError(
            f"reading {path} needs pyarrow: pip install 'crrelu-lightning[parquet]' (or pip install pyarrow), "
            "or convert the file to JSON Lines"
        ) from e
    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for rec in batch.to_pylist():
            row += 1
            yield row, rec


def iter_records(path: Union[str, Path]) -> Iterator[Tuple[int, Any]]:
    """``(line, record)`` for every non-blank line (or Parquet row); undecodable JSON yields the error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    if path.name.endswith(".parquet"):
        yield from _iter_parquet(path)
        return
    try:
        with _open_text(path) as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as e:
                    yield lineno, MalformedRecordError(f"not JSON ({e.msg} at column {e.colno})")
    except (OSError, EOFError, UnicodeDecodeError) as e:  # truncated gzip, binary file, ...
        raise MalformedRecordError(f"{path}: cannot be read as {'gzip ' if path.suffix == '.gz' else ''}"
                                   f"UTF-8 JSON Lines ({type(e).__name__}: {e}); re-download or re-export it") from e


class BadRecords:
    """Bookkeeping and policy for refused records of one dataset split (see module docstring)."""

    def __init__(self, what: str, on_error: str = "skip", max_bad_fraction: float = 0.1) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        self.what, self.on_error, self.max_bad_fraction = what, on_error, max_bad_fraction
        self.seen = 0
        self.locations: List[str] = []
        self.per_file: Counter = Counter()

    def ok(self) -> None:
        self.seen += 1

    def bad(self, path: Path, line: int, reason: str) -> None:
        self.seen += 1
        where = f"{path}:{line}: {reason}"
        if self.on_error == "raise":
            raise MalformedRecordError(f"malformed {self.what} record at {where} (on_error: skip skips such records)")
        self.locations.append(where)
        self.per_file[str(path)] += 1

    def _summary(self) -> str:
        n = len(self.locations)
        files = ", ".join(f"{f}: {c}" for f, c in self.per_file.most_common())
        shown = "; ".join(self.locations[:SHOWN]) + (f"; ... ({n - SHOWN} more)" if n > SHOWN else "")
        return (f"{n} of {self.seen} {self.what} records ({100.0 * n / max(1, self.seen):.1f} %) are malformed "
                f"[per file: {files}]: {shown}")

    def finish(self, n_valid: int, sources: str) -> None:
        """Warn about skipped records; raise when nothing valid is left or too many are bad."""
        n = len(self.locations)
        if n_valid == 0:
            detail = self._summary() if n else f"{self.seen} records read"
            raise MalformedRecordError(f"no valid {self.what} pairs in {sources}: {detail}")
        if n and n / self.seen > self.max_bad_fraction:
            raise MalformedRecordError(
                f"{self._summary()} — more than max_bad_fraction={self.max_bad_fraction}; is this the right "
                f"format for {sources}? (raise max_bad_fraction to accept it)")
        if n:
            warnings.warn(f"{self._summary()}; skipped them (on_error: skip)", stacklevel=3)
