"""Parquet files and directories as row sources (read with pyarrow)."""

from __future__ import annotations

import bisect
import difflib
import glob
import os

import numpy as np

from ..core.errors import DataError
from .preprocess import DEFAULT_PREPROCESS
from .source import RowSource, flat_row_shape


PARQUET_EXTENSIONS = (".parquet", ".parq")


def parquet_files(path: str) -> list[str]:
    """The data files of a Parquet file or directory in Spark's order: every file below it whose name
    does not start with `_` or `.` (`_SUCCESS`, `.crc`), sorted by path."""
    if os.path.isfile(path):
        return [os.path.abspath(path)]
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(("_", "."))]
        found += [os.path.join(root, f) for f in files if not f.startswith(("_", "."))]
    return sorted(os.path.abspath(f) for f in found)


def is_parquet(data: str) -> bool:
    """A local Parquet file, or a directory holding `.parquet` files."""
    if data.endswith(PARQUET_EXTENSIONS):
        return True
    return os.path.isdir(data) and bool(glob.glob(os.path.join(data, "**", "*.parquet"), recursive=True))


def _is_vector(t) -> bool:
    """Spark ML's VectorUDT as Parquet stores it: struct<type, size, indices, values>."""
    import pyarrow as pa

    return pa.types.is_struct(t) and sorted(f.name for f in t) == ["indices", "size", "type", "values"]


def _numbers(t) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _same_type(a, b) -> bool:
    """Equal Arrow types, list element names aside (pyarrow writes `item`, Spark `element`)."""
    if hasattr(a, "value_type") and hasattr(b, "value_type"):
        return type(a) is type(b) and _same_type(a.value_type, b.value_type)
    return a == b


def _text(t) -> bool:
    import pyarrow as pa

    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)


def _list_values(col):
    """A list array's (lengths, values of its rows only): `.values` ignores a slice's offset."""
    offsets = col.offsets.to_numpy()
    return np.diff(offsets), col.values.slice(offsets[0], offsets[-1] - offsets[0])


def _check_lengths(lengths: np.ndarray, width: int | None, start: int, where: str) -> int:
    """The row width (`width`, or the first row's when None), or `DataError` naming a ragged row."""
    width = (int(lengths[0]) if len(lengths) else 0) if width is None else width
    bad = np.flatnonzero(lengths != width)
    if len(bad):
        raise DataError(f"{where} is ragged: row {start + int(bad[0])} holds {int(lengths[bad[0]])} values, "
                        f"the first row {width}", "give every row the same number of values")
    return width


def _dense_vectors(col, start: int, width: int | None, where: str) -> np.ndarray:
    """Spark ML vectors (type 1 dense: `values`; type 0 sparse: `size`, `indices`, `values`) as
    float64 rows [n, width]."""
    fields = dict(zip([f.name for f in col.type], col.flatten()))
    if col.null_count or fields["type"].null_count:
        raise DataError(f"{where} has null rows in rows {start}:{start + len(col)}",
                        "fill or drop them before precomputing")
    dense = fields["type"].to_numpy(zero_copy_only=False) == 1
    counts, values = _list_values(fields["values"])
    _, indices = _list_values(fields["indices"])
    sizes = fields["size"].fill_null(0).to_numpy(zero_copy_only=False)
    lengths = np.where(dense, counts, sizes)
    width = _check_lengths(lengths, width, start, where)
    row = np.repeat(np.arange(len(col)), counts)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    column = np.arange(len(row)) - starts  # a dense row's values in order
    sparse_at = np.flatnonzero(~dense[row])
    column[sparse_at] = indices.to_numpy(zero_copy_only=False)
    out = np.zeros((len(col), width))
    out[row, column] = values.to_numpy(zero_copy_only=False)
    return out


class ParquetRows(RowSource):
    """Columns of a Parquet file or directory, read with pyarrow: `key` is an array column (a list
    of numbers, or a Spark ML vector), or numeric columns `a,b,c` (a row of their values); with
    `ids=True`, one scalar column (1-D). Rows are numbered as Spark numbers them (files by path,
    rows in file order), so the local runner and `--runner spark` give row k the same number. A
    read decodes only the row groups it touches and keeps the last one, so sequential blocks
    decode each group once. Null and ragged rows are found by `check_rows` (one pass over the
    key columns, before any compute) and again where they are read."""

    kind = "parquet"

    def __init__(self, path: str, key: str | None, *, spec=None, ids: bool = False,
                 preprocess: str | None = None):
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise DataError(f"{path} is Parquet, and reading Parquet needs pyarrow",
                            "pip install pyarrow (or the extra: pip install 'surgery[spark]')") from e
        self.path, self.spec, self.preprocess = os.path.abspath(path), spec, preprocess or DEFAULT_PREPROCESS
        self.files = parquet_files(path)
        if not self.files:
            raise DataError(f"no Parquet files in {path}", "pass a Parquet file or a directory of them with --data")
        try:  # the footers only: a catalogue of thousands of files must not hold thousands open
            self._meta = [pq.read_metadata(f) for f in self.files]
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(f"{path} is not readable Parquet: {str(e).splitlines()[0][:200]}",
                            "pass a Parquet file or a directory of them with --data") from e
        self._open_file = (None, None)  # (file index, pq.ParquetFile): the one being read
        schema = self._meta[0].schema.to_arrow_schema()
        self.columns = [c.strip() for c in (key or "").split(",") if c.strip()]
        if not self.columns:
            raise DataError(f"Parquet data {path} needs the column to read",
                            "name it with --key (an array column, or A,B,..)")
        for c in self.columns:
            if c not in schema.names:
                close = difflib.get_close_matches(c, schema.names, n=3, cutoff=0.4)
                raise DataError(f"{path} has no column '{c}'", ("did you mean " + ", ".join(close) + "?") if close
                                else "columns there: " + ", ".join(schema.names[:12]))
        self.key = ",".join(self.columns)
        types = [schema.field(c).type for c in self.columns]
        for name, meta in zip(self.files[1:], self._meta[1:]):  # one table: the same columns in every file
            other = meta.schema.to_arrow_schema()
            for c, t in zip(self.columns, types):
                if c not in other.names or not _same_type(other.field(c).type, t):
                    held = (f"holds column '{c}' as {other.field(c).type}" if c in other.names
                            else f"has no column '{c}'")
                    raise DataError(f"{name} {held}, unlike {self.files[0]} ({t})",
                                    "pass the files of one table (one schema) with --data")
        self._mode = "ids" if ids else "columns"
        if ids:
            if len(types) != 1 or not (_numbers(types[0]) or _text(types[0])):
                raise DataError(f"id column '{self.key}' of {path} holds {types[0]}",
                                "pass a column with one scalar id per row")
            dtype = np.dtype(object) if _text(types[0]) else np.dtype(types[0].to_pandas_dtype())
        elif len(types) == 1 and not _numbers(types[0]):
            t = types[0]
            if _is_vector(t):
                self._mode, dtype = "vector", np.dtype(np.float64)
            elif hasattr(t, "value_type") and _numbers(t.value_type):
                self._mode, dtype = "list", np.dtype(t.value_type.to_pandas_dtype())
            else:
                raise DataError(f"column '{self.key}' of {path} holds {t}, not numbers",
                                "pass an array<float>/vector column, or numeric columns as a comma list with --key")
        else:
            for c, t in zip(self.columns, types):
                if not _numbers(t):
                    raise DataError(f"column '{c}' of {path} holds {t}, not a number",
                                    "list only numeric columns with --key A,B,..")
            dtype = np.result_type(*[np.dtype(t.to_pandas_dtype()) for t in types])
        self._groups = [(i, g) for i, meta in enumerate(self._meta) for g in range(meta.num_row_groups)]
        self.offsets = [0, *np.cumsum([self._meta[i].row_group(g).num_rows for i, g in self._groups]).tolist()]
        self._cached = (None, None)
        self.dtype, self._width = dtype, None
        rows = int(self.offsets[-1])
        if ids:
            self.shape = (rows,)
        else:
            self._width = len(self._flat(0, 1)[0]) if rows else len(self.columns)
            where = f"column '{self.key}' of {self.path}"
            self.shape = (rows, *flat_row_shape(spec, self._width, where))
        if self.preprocess != "none":
            self.dtype = np.dtype(np.float32)

    def _group(self, k: int):
        if self._cached[0] != k:
            import pyarrow.parquet as pq

            i, g = self._groups[k]
            try:
                if self._open_file[0] != i:
                    self.close()
                    self._open_file = (i, pq.ParquetFile(self.files[i]))
                table = self._open_file[1].read_row_group(g, columns=self.columns)
            except (OSError, ValueError) as e:
                raise DataError(f"cannot read row group {g} of {self.files[i]}: {str(e).splitlines()[0][:200]}",
                                "the file is damaged: write it again") from e
            self._cached = (k, table)
        return self._cached[1]

    def _table(self, start: int, stop: int):
        """Rows [start, stop) as one Arrow table of the key columns."""
        import pyarrow as pa

        parts = []
        k = bisect.bisect_right(self.offsets, start) - 1
        while start < stop:
            lo, hi = self.offsets[k], self.offsets[k + 1]
            if hi > start:
                parts.append(self._group(k).slice(start - lo, min(stop, hi) - start))
                start = min(stop, hi)
            k += 1
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    def _flat(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as [n, values a row], or DataError naming the null or ragged row."""
        import pyarrow as pa

        table = self._table(start, stop)
        where = f"column '{self.key}' of {self.path}"
        if self._mode == "columns":
            if any(table.column(c).null_count for c in self.columns):
                raise DataError(f"{where} has null values in rows {start}:{stop}",
                                "fill or drop them before precomputing")
            return np.stack([table.column(c).to_numpy() for c in self.columns], axis=1).astype(self.dtype, copy=False)
        col = table.column(0).combine_chunks()
        if self._mode == "vector":
            return _dense_vectors(col, start, self._width, where)
        if col.null_count or col.flatten().null_count:
            raise DataError(f"{where} has null rows or null values in rows {start}:{stop}",
                            "fill or drop them before precomputing")
        if pa.types.is_fixed_size_list(col.type):
            lengths, values = np.full(len(col), col.type.list_size), col.flatten()
        else:
            lengths, values = _list_values(col)
        width = _check_lengths(lengths, self._width, start, where)
        return values.to_numpy(zero_copy_only=False).reshape(len(lengths), width)

    def check_rows(self) -> None:
        if self._mode != "ids":
            for lo, hi in zip(self.offsets, self.offsets[1:]):
                self._flat(lo, hi)

    def _read(self, start: int, stop: int) -> np.ndarray:
        if stop <= start:
            return np.empty((0, *self.shape[1:]), self.dtype)
        if self._mode == "ids":
            return self._table(start, stop).column(0).to_numpy(zero_copy_only=False)
        return self._flat(start, stop).reshape(stop - start, *self.shape[1:])

    def describe(self) -> dict:
        return {**super().describe(), "files": self.files}

    def close(self) -> None:
        if self._open_file[1] is not None:
            self._open_file[1].close()
        self._open_file = (None, None)

    def __getstate__(self):  # Beam ships sources to workers: reopen there
        return {"args": (self.path, self.key), "spec": self.spec, "ids": self._mode == "ids",
                "preprocess": self.preprocess}

    def __setstate__(self, state):
        self.__init__(*state["args"], spec=state["spec"], ids=state["ids"], preprocess=state["preprocess"])
