"""The row source every reader implements, and rows held in memory."""

from __future__ import annotations

import hashlib

import numpy as np

from ..core.errors import DataError
from .preprocess import DEFAULT_PREPROCESS, preprocess


# ---------------------------------------------------------------- sources

class RowSource:
    """Rows of one dataset, read in blocks. `shape` is (rows, *row shape); `classes` the class
    names in label order where the source defines labels (an image folder)."""

    kind = ""
    path = ""
    key = None
    classes = None
    preprocess = DEFAULT_PREPROCESS

    @property
    def where(self) -> str:
        return f"{self.path}:{self.key}" if self.key else self.path

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        return preprocess(self._read(start, min(stop, len(self))), self.preprocess)

    def _read(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def labels(self) -> np.ndarray | None:
        return None

    def check_rows(self) -> None:
        """Find malformed rows now, before any compute, or raise `DataError`. Only a source whose
        rows can be malformed one by one (Parquet: null and ragged rows) reads anything."""

    def fingerprint(self, samples: int = 16) -> str:
        """sha256 of shape, dtype and a few rows spread over the data: cheap, and it changes when
        the data is regenerated, reordered or resized (not a proof that no row changed)."""
        h = hashlib.sha256(f"{self.shape}|{self.dtype.str}|{self.preprocess}".encode())
        for i in sorted({int(i) for i in np.linspace(0, len(self) - 1, samples)} if len(self) else ()):
            row = np.asarray(self._read(i, i + 1))
            h.update(row.tobytes() if row.dtype != object else repr(row.tolist()).encode())
        return h.hexdigest()

    def describe(self) -> dict:
        return {"kind": self.kind, "path": self.path, "key": self.key, "rows": len(self),
                "preprocess": self.preprocess}

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ListRows(RowSource):
    """Rows held in memory (an image folder's file names as ids)."""

    kind = "list"

    def __init__(self, values, path: str = "", key: str | None = None):
        self.array = np.asarray(values)
        self.path, self.key = path, key
        self.shape, self.dtype = self.array.shape, self.array.dtype

    def _read(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop]


def flat_row_shape(spec, length: int, where: str) -> list:
    """Flat rows of `length` values → the row shape of input `spec` (a [batch, k] input, or no
    spec: [length]); images stored flattened come back [H, W, C]."""
    shape = spec.shape if spec is not None else None
    if shape is None or len(shape) == 2:
        return [length]
    dims = shape[1:]
    if any(d is None for d in dims) or int(np.prod(dims)) != length:
        raise DataError(f"{where} holds {length} values a row; input {spec.name} takes rows of "
                        f"{['?' if d is None else d for d in dims]}",
                        "store each row flattened to exactly that many values")
    return list(dims)
