"""Opening a dataset by path: rows, ids and labels from any source kind."""

from __future__ import annotations

import os

import numpy as np

from ..core.errors import DataError
from .arrays import ArrayRows
from .feed import check_feedable
from .images import ImageFolderRows
from .parquet import ParquetRows, is_parquet
from .preprocess import preprocess_mode
from .source import ListRows, RowSource
from .tfrecord import TFRecordRows, is_tfrecord


def open_rows(data: str, key: str | None = None, *, spec=None, preprocess: str | None = None,
              what: str = "data") -> RowSource:
    """`--data`/`--key` as a `RowSource`: Parquet (key: the column(s)), an image folder (key unused),
    a `.npy`, TFRecord files (key: the feature) or an HDF5 file (key: the dataset). `spec` (the
    input's `{name, dtype, shape}`) shapes Parquet and TFRecord rows and decoded images."""
    data = os.fspath(data)
    preprocess_mode(preprocess)
    if is_parquet(data):
        if not os.path.exists(data):
            raise DataError(f"no such {what} file or directory: {data}", "check the path given with --data")
        return ParquetRows(data, key, spec=spec, preprocess=preprocess)
    if os.path.isdir(data):
        return ImageFolderRows(data, spec=spec, preprocess=preprocess)
    if is_tfrecord(data):
        if not key:
            raise DataError(f"TFRecord data {data} needs the feature to read", "name it with --key / --x")
        return TFRecordRows(data, key, spec=spec, preprocess=preprocess)
    if not os.path.exists(data):
        raise DataError(f"no such {what} file or directory: {data}",
                        "pass an HDF5 file, a .npy, TFRecord files or an image folder")
    if not data.endswith(".npy") and not key:
        raise DataError(f"HDF5 data {data} needs the dataset to read", "name it with --key / --x")
    return ArrayRows(data, key, preprocess=preprocess, what=what)


def open_ids(data: str, ids: str, rows: RowSource) -> RowSource:
    """The `--ids` source beside `rows`: a dataset / feature of the same data, a second `.npy`,
    or for an image folder its files' relative paths (any `--ids` value)."""
    if isinstance(rows, ImageFolderRows):
        return ListRows(rows.files, rows.path, "files")
    if isinstance(rows, TFRecordRows):
        return TFRecordRows(data, ids)
    if isinstance(rows, ParquetRows):
        return ParquetRows(rows.path, ids, ids=True)
    source = open_rows(ids, what="ids") if data.endswith(".npy") else open_rows(data, ids)
    if source.shape[:1] != rows.shape[:1] or len(source.shape) > 2:
        source.close()
        raise DataError(f"ids {ids} {list(source.shape)} do not match data {rows.where} {list(rows.shape)}",
                        "pass one id per row of the data")
    return source


def open_labels(data: str, key: str | None, rows: RowSource, *, training: bool = True) -> np.ndarray:
    """Integer class ids, one per row of `rows`: an image folder's directory labels, else the
    dataset / feature / Parquet column / second `.npy` named by `key` (`--y`)."""
    if isinstance(rows, ImageFolderRows):
        y = rows.labels()
        if training and len(rows.classes) < 2:
            raise DataError(f"{rows.path} has only one class folder ({rows.classes[0]})",
                            "training needs at least two classes: one sub-directory per class")
        return y
    if not key:
        raise DataError(f"--y is needed to read labels from {data}", "name the labels' dataset or feature with --y")
    if isinstance(rows, ParquetRows):
        source = ParquetRows(rows.path, key, ids=True)  # one scalar column, 1-D
    else:
        source = open_rows(key, what="labels") if data.endswith(".npy") else open_rows(data, key)
    with source:
        y = source.read(0, len(source))
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"labels {source.where} are {y.dtype} of shape {list(y.shape)}, not 1-D integers",
                        "store one integer class id per row")
    if len(y) != len(rows):
        raise DataError(f"{rows.where} has {len(rows)} rows but labels {source.where} have {len(y)}",
                        "inputs and labels must have one row each per example")
    return y


class RowsWithIds:
    """A `RowSource` (rows) and its ids, by their arguments: opened in the driver to count and
    check the rows, and again inside each worker of Beam or Spark (an open file does not travel).
    `bind(spec)` shapes rows for the graph's input (a `TensorSpec`) and applies
    `check_feedable` once, in the driver; given the input `spec` up front, the files open once."""

    def __init__(self, data: str, key: str | None, ids: str | None = None, *, preprocess: str | None = None,
                 spec=None):
        self.data = data if any(c in data for c in "*?[") else os.path.abspath(data)
        self.key, self.ids, self.preprocess = key, ids, preprocess
        self.spec, self.feed_dtype, self._open = spec, None, None
        self.num_rows = len(self._rows())
        if ids:
            self._ids()

    def __getstate__(self):
        return {**self.__dict__, "_open": None}

    def _rows(self):
        if self._open is None:
            self._open = {"rows": open_rows(self.data, self.key, spec=self.spec, preprocess=self.preprocess)}
        return self._open["rows"]

    def _ids(self):
        rows = self._rows()
        if "ids" not in self._open:
            self._open["ids"] = open_ids(self.data, self.ids, rows)
        return self._open["ids"]

    def bind(self, spec, every_row: bool = True) -> None:
        """Shape and type the rows for input `spec` (a `TensorSpec`), checked as `check_feedable` checks."""
        if spec != self.spec:
            self.close()  # reopened for the input's shape
            self.spec = spec
        self.feed_dtype = check_feedable(self._rows(), spec, every_row=every_row).str

    def fingerprints(self) -> tuple[str, str]:
        """The local runner's provenance fingerprints of the rows and of the ids ("" without ids)."""
        return self._rows().fingerprint(), (self._ids().fingerprint() if self.ids else "")

    def close(self) -> None:
        """Close the files opened so far (they reopen on the next read)."""
        for opened in (self._open or {}).values():
            opened.close()
        self._open = None

    def describe(self) -> dict:
        rows = self._rows()
        return {**rows.describe(), "ids": self.ids, "rows": self.num_rows}

    def boundaries(self) -> list:
        return getattr(self._rows(), "boundaries", lambda: [0, self.num_rows])()

    def read(self, start: int, stop: int) -> np.ndarray:
        rows = self._rows().read(start, stop)
        return rows if self.feed_dtype is None else rows.astype(self.feed_dtype, copy=False)

    def read_ids(self, start: int, stop: int):
        return self._ids().read(start, stop) if self.ids else None


def rows_with_ids(data: str, key: str | None, ids: str | None = None, *, preprocess: str | None = None,
                  spec=None) -> RowsWithIds:
    """The CLI's --data/--key/--ids as rows with ids: anything `open_rows` reads (shaped for the
    input `spec` when given)."""
    return RowsWithIds(data, None if data.endswith(".npy") else key, ids, preprocess=preprocess, spec=spec)
