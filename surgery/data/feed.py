"""The feed check: one rule, applied by every command before it feeds rows to a graph."""

from __future__ import annotations

import numpy as np

from ..core import tfcompat
from ..core.errors import DataError
from ..core.graph import shape_str
from .source import RowSource

tf = tfcompat.tf


# ---------------------------------------------------------------- the feed check

def check_feedable(rows, spec, where: str = "", *, every_row: bool = True) -> np.dtype:
    """The numpy dtype to feed `rows` (an array or a `RowSource`) to input `spec` (a `TensorSpec`) as, or
    `DataError`: no rows, a fixed batch size, another row shape, a dtype that numpy does not
    cast `safe`ly (uint8 → float is safe; float64 → float32 is not), or (`every_row`) a
    malformed row found by `RowSource.check_rows`."""
    where = where or getattr(rows, "where", "the data")
    shape, dtype = tuple(rows.shape), np.dtype(rows.dtype)
    want = np.dtype(tf.as_dtype(spec.dtype).as_numpy_dtype)
    described = f"{where} {list(shape)} {dtype}"
    if len(shape) < 1 or shape[0] == 0:
        raise DataError(f"{described} has no rows", "pass a dataset with one row per item")
    want_shape = spec.shape
    if want_shape is not None:
        if want_shape and want_shape[0] is not None:
            raise DataError(f"input {spec.name} has a fixed batch size {want_shape[0]}",
                            "freeze the graph with a [None, ...] input to run it in batches")
        row, want_row = shape[1:], want_shape[1:]
        if len(row) != len(want_row) or any(w is not None and w != r for r, w in zip(row, want_row)):
            raise DataError(f"{described} does not fit input {spec.name} {shape_str(want_shape)}",
                            "pass the dataset this graph was built for, or another input tensor")
    if dtype == want or (dtype.kind != "O" and (np.can_cast(dtype, want, "safe")
                                              or (dtype == np.uint8 and want.kind == "f"))):
        if every_row and isinstance(rows, RowSource):
            rows.check_rows()
        return want
    raise DataError(f"{described} cannot be fed to input {spec.name} ({want.name}) without losing values",
                    f"convert the data to {want.name}" + (" or use --preprocess none" if want.kind in "iu" else ""))
