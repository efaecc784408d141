"""TFRecord files of `tf.train.Example` as row sources."""

from __future__ import annotations

import bisect
import difflib
import glob
import hashlib
import os

import numpy as np

from ..core import tfcompat
from ..core.errors import DataError
from ..core.graph import shape_str
from .images import decode_image, image_target, is_image
from .preprocess import DEFAULT_PREPROCESS
from .source import RowSource

tf = tfcompat.tf


TFRECORD_EXTENSIONS = (".tfrecord", ".tfrecords", ".tfr")


class TFRecordRows(RowSource):
    """Feature `key` of the `tf.train.Example`s in TFRecord files (sorted glob). Records are
    counted once; reading on from where the last read stopped continues the open file."""

    kind = "tfrecord"

    def __init__(self, pattern: str, key: str, *, spec=None, preprocess: str | None = None):
        self.pattern, self.key, self.spec = pattern, key, spec
        self.preprocess = preprocess or DEFAULT_PREPROCESS
        self.files = sorted(glob.glob(pattern)) or ([pattern] if os.path.isfile(pattern) else [])
        if not self.files:
            raise DataError(f"no TFRecord files match {pattern}", "check the path or glob given with --data")
        self.files = [os.path.abspath(p) for p in self.files]
        self.path = self.files[0] if len(self.files) == 1 else os.path.abspath(pattern)
        try:
            counts = [sum(1 for _ in tf.compat.v1.io.tf_record_iterator(p)) for p in self.files]
        except Exception as e:
            raise DataError(f"cannot read TFRecords from {pattern}: {str(e).splitlines()[0][:160]}",
                            "pass TFRecord files of serialized tf.train.Example") from e
        self.offsets = [0, *np.cumsum(counts).tolist()]
        self._cursor = None  # (file index, next record number, iterator)
        if not self.offsets[-1]:
            raise DataError(f"{pattern} holds no records", "pass TFRecord files of serialized tf.train.Example")
        first = self._parse(next(self._records(0, 1)), 0)
        self.shape, self.dtype = (int(self.offsets[-1]), *first.shape), first.dtype
        if self.preprocess != "none":
            self.dtype = np.dtype(np.float32)

    def boundaries(self) -> list:
        """Row numbers where files start (and the total): a shard never crosses a file."""
        return self.offsets

    def _records(self, start: int, stop: int):
        i = bisect.bisect_right(self.offsets, start) - 1
        local = start - self.offsets[i]
        if self._cursor is None or self._cursor[:2] != (i, local):
            it = iter(tf.compat.v1.io.tf_record_iterator(self.files[i]))
            for _ in range(local):
                next(it)
            self._cursor = (i, local, it)
        for n in range(start, stop):
            i, local, it = self._cursor
            if local >= self.offsets[i + 1] - self.offsets[i]:
                i, local, it = i + 1, 0, iter(tf.compat.v1.io.tf_record_iterator(self.files[i + 1]))
            record = next(it)
            self._cursor = (i, local + 1, it)
            yield tf.train.Example.FromString(record)

    def _feature(self, example, key: str, row: int):
        features = example.features.feature
        if key not in features:
            close = difflib.get_close_matches(key, list(features), n=3, cutoff=0.4)
            raise DataError(f"record {row} of {self.pattern} has no feature '{key}'",
                            ("did you mean " + ", ".join(close) + "?") if close else
                            "features there: " + (", ".join(sorted(features)) or "(none)"))
        feat = features[key]
        kind = feat.WhichOneof("kind")
        if kind is None:
            raise DataError(f"feature '{key}' of record {row} in {self.pattern} is empty", "store one value list per row")
        return kind, getattr(feat, kind).value

    def _parse(self, example, row: int) -> np.ndarray:
        kind, values = self._feature(example, self.key, row)
        row_shape = self.spec.shape if self.spec is not None else None
        row_shape = list(row_shape[1:]) if row_shape else None
        want = np.dtype(tf.as_dtype(self.spec.dtype).as_numpy_dtype) if self.spec else None
        where = f"feature '{self.key}' of record {row} in {self.pattern}"
        if kind == "bytes_list":
            if len(values) == 1 and is_image(values[0]):
                size, channels, dtype = image_target(self.spec, self.preprocess)
                return decode_image(values[0], size, channels, dtype, where)
            if want is None:  # no input to shape it for (ids): the bytes themselves
                return np.asarray(values[0] if len(values) == 1 else b"".join(values))
            if want.kind not in "fiub":
                raise DataError(f"{where} holds bytes that are not an image, for a {want or 'non-numeric'} input",
                                "store encoded images, or numbers as a float_list / int64_list")
            raw = b"".join(values)
            size = int(np.prod([d for d in row_shape or [] if d is not None] or [1])) * want.itemsize
            if len(raw) % want.itemsize or (row_shape and None not in row_shape and len(raw) != size):
                raise DataError(f"{where} holds {len(raw)} bytes: not an image, nor one row of {want.name} "
                                f"{shape_str(row_shape or [])}", "store encoded images, or whole rows of raw values")
            value = np.frombuffer(raw, dtype=want)
        else:
            value = np.asarray(values, dtype=np.float32 if kind == "float_list" else np.int64)
        if row_shape is None:
            return value.reshape(()) if value.size == 1 and not row_shape else value
        shape = [d if d is not None else -1 for d in row_shape]
        try:
            return value.reshape(shape)
        except ValueError as e:
            raise DataError(f"{where} has {value.size} values, which do not make a row of shape "
                            f"{shape_str(row_shape)}", "store one whole row per record") from e

    def _read(self, start: int, stop: int) -> np.ndarray:
        return np.stack([self._parse(ex, start + k) for k, ex in enumerate(self._records(start, stop))])

    def fingerprint(self, samples: int = 16) -> str:
        """sha256 of the files' names, sizes and times, the feature and the row count (reading
        sample rows would walk whole files)."""
        stats = [(p, os.path.getsize(p), os.stat(p).st_mtime_ns) for p in self.files]
        return hashlib.sha256(repr((stats, self.key, self.shape, self.dtype.str, self.preprocess)).encode()).hexdigest()

    def describe(self) -> dict:
        return {**super().describe(), "files": self.files}

    def __getstate__(self):
        return {**self.__dict__, "_cursor": None}


def is_tfrecord(data: str) -> bool:
    return data.endswith(TFRECORD_EXTENSIONS) or any(c in data for c in "*?[")
