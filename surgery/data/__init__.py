"""Data: one row source for every command that reads a dataset, and one feed check.

`open_rows(data, key, spec=...)` gives a `RowSource` (`len`, `shape`, `dtype`, `read(start, stop)`)
over any of:
- an HDF5 file (dataset `key`) or a `.npy` array (memory-mapped): read as stored;
- TFRecord files (a path or a glob) of `tf.train.Example`, feature `key` holding a row: a
  float/int64 list reshaped to the input's row shape, raw bytes of the input dtype, or an
  encoded image (JPEG/PNG/BMP/GIF, told by its signature) decoded like a folder's images;
- Parquet (a file or a directory of them, read with pyarrow): `key` an array column, a Spark ML
  vector column, or numeric columns `a,b,c`; rows numbered as Spark numbers them;
- an image folder: one sub-directory per class, labels by sorted directory name (as Keras'
  `image_dataset_from_directory` and TF Hub's retrain.py do); JPEG, PNG, BMP and GIF files,
  decoded to the input's channel count and resized (bilinear) to its height and width.
Rows are read in blocks on demand, never all at once.

`preprocess`: `none` feeds rows as stored (images as decoded, 0..255 — Keras' convention: the
model rescales), `vgg` subtracts the ImageNet channel means, `inception` scales 0..255 to
[-1, 1], `unit` to [0, 1]. The default is `none` for every source: the graph was trained on
its own preprocessing, which only the user knows.

`check_feedable(rows, spec)` is the one rule every command applies before feeding: rows of the
input's shape, and a dtype numpy casts `safe`ly to the input's (uint8 → float included), so the
same data gets the same answer from `finetune`, local `precompute` and `--runner beam`.
"""

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

tf = tfcompat.tf

PREPROCESS = ("none", "vgg", "inception", "unit")
DEFAULT_PREPROCESS = "none"
VGG_MEANS = np.array([123.68, 116.78, 103.94], np.float32)  # ImageNet RGB means, as TF-slim's vgg_preprocessing
PARQUET_EXTENSIONS = (".parquet", ".parq")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
TFRECORD_EXTENSIONS = (".tfrecord", ".tfrecords", ".tfr")
_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF87a", b"GIF89a", b"BM")


# ---------------------------------------------------------------- the feed check

def spec_of(tensor) -> dict:
    """`{name, dtype, shape}` of a graph tensor (unknown dims None), as `check_feedable` takes it."""
    shape = None if tensor.shape.rank is None else tensor.shape.as_list()
    return {"name": tensor.name, "dtype": tensor.dtype.base_dtype.name, "shape": shape}


def check_feedable(rows, spec: dict, where: str = "", *, every_row: bool = True) -> np.dtype:
    """The numpy dtype to feed `rows` (an array or a `RowSource`) to input `spec` as, or
    `DataError`: no rows, a fixed batch size, another row shape, a dtype that numpy does not
    cast `safe`ly (uint8 → float is safe; float64 → float32 is not), or (`every_row`) a
    malformed row found by `RowSource.check_rows`."""
    where = where or getattr(rows, "where", "the data")
    shape, dtype = tuple(rows.shape), np.dtype(rows.dtype)
    want = np.dtype(tf.as_dtype(spec["dtype"]).as_numpy_dtype)
    described = f"{where} {list(shape)} {dtype}"
    if len(shape) < 1 or shape[0] == 0:
        raise DataError(f"{described} has no rows", "pass a dataset with one row per item")
    want_shape = spec.get("shape")
    if want_shape is not None:
        if want_shape and want_shape[0] is not None:
            raise DataError(f"input {spec['name']} has a fixed batch size {want_shape[0]}",
                            "freeze the graph with a [None, ...] input to run it in batches")
        row, want_row = shape[1:], want_shape[1:]
        if len(row) != len(want_row) or any(w is not None and w != r for r, w in zip(row, want_row)):
            raise DataError(f"{described} does not fit input {spec['name']} {shape_str(want_shape)}",
                            "pass the dataset this graph was built for, or another input tensor")
    if dtype == want or (dtype.kind != "O" and (np.can_cast(dtype, want, "safe")
                                              or (dtype == np.uint8 and want.kind == "f"))):
        if every_row and isinstance(rows, RowSource):
            rows.check_rows()
        return want
    raise DataError(f"{described} cannot be fed to input {spec['name']} ({want.name}) without losing values",
                    f"convert the data to {want.name}" + (" or use --preprocess none" if want.kind in "iu" else ""))


# ---------------------------------------------------------------- preprocessing

def preprocess_mode(how: str | None) -> str:
    """`how` checked against PREPROCESS (None: the default), or `DataError`."""
    how = how or DEFAULT_PREPROCESS
    if how not in PREPROCESS:
        raise DataError(f"--preprocess {how} is not one of {', '.join(PREPROCESS)}", "e.g. --preprocess vgg")
    return how


def preprocess(rows: np.ndarray, how: str | None) -> np.ndarray:
    """Rows scaled as `how` says (see the module docstring); `none` returns them unchanged."""
    how = preprocess_mode(how)
    if how == "none":
        return rows
    x = rows.astype(np.float32, copy=False)
    if how == "vgg":
        means = VGG_MEANS if x.ndim and x.shape[-1] == 3 else np.float32(VGG_MEANS.mean())
        return x - means
    if how == "inception":
        return x / np.float32(127.5) - np.float32(1.0)
    return x / np.float32(255.0)


def is_image(data: bytes) -> bool:
    return data.startswith(_IMAGE_SIGNATURES)


def decode_image(data: bytes, size, channels: int | None, dtype: np.dtype, where: str) -> np.ndarray:
    """One encoded image → [height, width, channels] of `dtype` (float32 or uint8), resized
    bilinearly to `size` (height, width) when it differs; None dims keep the image's own."""
    try:
        image = tf.io.decode_image(data, channels=channels or 0, expand_animations=False).numpy()
    except (tf.errors.OpError, ValueError) as e:
        msg = (getattr(e, "message", None) or str(e)).strip().splitlines()[0][:120]
        raise DataError(f"cannot decode image {where}: {msg}",
                        "remove or re-encode it (JPEG, PNG, BMP or GIF)") from e
    h, w = (size or (None, None))[:2]
    h, w = h or image.shape[0], w or image.shape[1]
    if (h, w) != image.shape[:2]:
        image = tf.image.resize(image, (h, w), method="bilinear").numpy()
        if dtype == np.uint8:
            image = np.clip(np.round(image), 0, 255)
    return image.astype(dtype, copy=False)


def image_target(spec: dict | None, how: str) -> tuple:
    """(size, channels, dtype) images are decoded to for input `spec`: uint8 only for an integer
    input fed as stored, else float32."""
    shape = (spec or {}).get("shape") or [None, None, None, None]
    if len(shape) != 4:
        raise DataError(f"input {spec['name']} takes rows of shape {shape_str(shape[1:])}, not images",
                        "feed images to an input shaped [batch, height, width, channels]")
    integer = spec is not None and np.dtype(tf.as_dtype(spec["dtype"]).as_numpy_dtype).kind in "iu"
    dtype = np.dtype(np.uint8) if integer and (how or DEFAULT_PREPROCESS) == "none" else np.dtype(np.float32)
    return tuple(shape[1:3]), shape[3], dtype


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


def hdf5_datasets(h5file) -> list[str]:
    """Every dataset path in an open `h5py.File`, in visiting order."""
    import h5py

    keys = []
    h5file.visititems(lambda name, obj: keys.append(name) if isinstance(obj, h5py.Dataset) else None)
    return keys


class ArrayRows(RowSource):
    """Row slices of an HDF5 dataset or a `.npy` file (memory-mapped); opened once, closed at the end."""

    def __init__(self, path: str, key: str | None = None, *, preprocess: str | None = None, what: str = "data"):
        self.path, self.key, self._file = os.path.abspath(path), key, None
        self.preprocess = preprocess or DEFAULT_PREPROCESS
        if not os.path.isfile(path):
            raise DataError(f"no such {what} file: {path}", "check the path given with --data")
        if path.endswith(".npy"):
            self.kind, self.key = "npy", None
            try:
                self.array = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise DataError(f"{path} is not a readable .npy array: {e}", "write it with numpy.save") from e
        else:
            self.kind = "hdf5"
            self._open_hdf5(path, key)
        self.shape, self.dtype = tuple(self.array.shape), self.array.dtype
        if self.preprocess != "none":
            self.dtype = np.dtype(np.float32)

    def _open_hdf5(self, path: str, key: str | None) -> None:
        import h5py

        try:
            self._file = h5py.File(path, "r")
        except OSError as e:
            raise DataError(f"{path} is not a readable HDF5 file",
                            "pass an .h5 file, a .npy array, TFRecord files or an image folder with --data") from e
        keys = hdf5_datasets(self._file)
        if key not in keys:
            self.close()
            close = difflib.get_close_matches(key or "", keys, n=3, cutoff=0.4)
            raise DataError(f"{path} has no dataset '{key}'",
                            ("did you mean " + ", ".join(close) + "?") if close else
                            "datasets there: " + (", ".join(keys[:10]) or "(none)"))
        self.array = self._file[key]

    def _read(self, start: int, stop: int) -> np.ndarray:
        try:
            return np.asarray(self.array[start:stop])
        except OSError as e:  # a damaged chunk (h5py), a truncated .npy under the memory map
            raise DataError(f"cannot read rows {start}:{stop} of {self.where}: {e}",
                            "the file is damaged: write it again") from e

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self):  # Beam ships sources to workers: reopen there
        return {"args": (self.path, self.key), "preprocess": self.preprocess}

    def __setstate__(self, state):
        self.__init__(*state["args"], preprocess=state["preprocess"])


class TFRecordRows(RowSource):
    """Feature `key` of the `tf.train.Example`s in TFRecord files (sorted glob). Records are
    counted once; reading on from where the last read stopped continues the open file."""

    kind = "tfrecord"

    def __init__(self, pattern: str, key: str, *, spec: dict | None = None, preprocess: str | None = None):
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
        row_shape = (self.spec or {}).get("shape")
        row_shape = list(row_shape[1:]) if row_shape else None
        want = np.dtype(tf.as_dtype(self.spec["dtype"]).as_numpy_dtype) if self.spec else None
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


class ImageFolderRows(RowSource):
    """An image folder: each sub-directory a class (labels by sorted name), each image a row."""

    kind = "images"

    def __init__(self, directory: str, *, spec: dict | None = None, preprocess: str | None = None):
        self.path = os.path.abspath(directory)
        self.preprocess = preprocess or DEFAULT_PREPROCESS
        self.spec = spec
        self.classes = sorted(d for d in os.listdir(directory) if os.path.isdir(os.path.join(directory, d))
                              and not d.startswith("."))
        if not self.classes:
            raise DataError(f"{directory} has no class sub-directories",
                            "put the images of each class in their own sub-directory (DIR/cat/1.jpg, DIR/dog/2.jpg)")
        self.files, labels = [], []
        for label, name in enumerate(self.classes):
            found = sorted(os.path.join(root, f)[len(self.path) + 1:]
                           for root, _, files in os.walk(os.path.join(self.path, name))
                           for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise DataError(f"class folder {os.path.join(directory, name)} holds no images",
                                "add JPEG, PNG, BMP or GIF files to it, or remove it")
            self.files.extend(found)
            labels.extend([label] * len(found))
        self._labels = np.asarray(labels, np.int64)
        self.size, self.channels, self.image_dtype = image_target(spec, self.preprocess)
        first = self._read(0, 1)
        self.shape = (len(self.files), *first.shape[1:])
        self.dtype = np.dtype(np.float32) if self.preprocess != "none" else first.dtype

    def _read(self, start: int, stop: int) -> np.ndarray:
        rows = []
        for name in self.files[start:stop]:
            path = os.path.join(self.path, name)
            with open(path, "rb") as f:
                rows.append(decode_image(f.read(), self.size, self.channels, self.image_dtype, path))
        shapes = {r.shape for r in rows}
        if len(shapes) > 1:
            raise DataError(f"images in {self.path} have different sizes {sorted(shapes)[:2]} and the input fixes none",
                            "feed an input with a fixed height and width, or resize the images")
        return np.stack(rows)

    def labels(self) -> np.ndarray:
        return self._labels

    def fingerprint(self, samples: int = 16) -> str:
        stats = [(f, os.stat(os.path.join(self.path, f)).st_size, os.stat(os.path.join(self.path, f)).st_mtime_ns)
                 for f in self.files]
        return hashlib.sha256(repr((stats, self.shape, self.dtype.str, self.preprocess)).encode()).hexdigest()

    def describe(self) -> dict:
        return {**super().describe(), "classes": self.classes}


class ListRows(RowSource):
    """Rows held in memory (an image folder's file names as ids)."""

    kind = "list"

    def __init__(self, values, path: str = "", key: str | None = None):
        self.array = np.asarray(values)
        self.path, self.key = path, key
        self.shape, self.dtype = self.array.shape, self.array.dtype

    def _read(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop]


def flat_row_shape(spec: dict | None, length: int, where: str) -> list:
    """Flat rows of `length` values → the row shape of input `spec` (a [batch, k] input, or no
    spec: [length]); images stored flattened come back [H, W, C]."""
    shape = (spec or {}).get("shape")
    if shape is None or len(shape) == 2:
        return [length]
    dims = shape[1:]
    if any(d is None for d in dims) or int(np.prod(dims)) != length:
        raise DataError(f"{where} holds {length} values a row; input {spec['name']} takes rows of "
                        f"{['?' if d is None else d for d in dims]}",
                        "store each row flattened to exactly that many values")
    return list(dims)


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

    def __init__(self, path: str, key: str | None, *, spec: dict | None = None, ids: bool = False,
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


def is_tfrecord(data: str) -> bool:
    return data.endswith(TFRECORD_EXTENSIONS) or any(c in data for c in "*?[")


def open_rows(data: str, key: str | None = None, *, spec: dict | None = None, preprocess: str | None = None,
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


__all__ = ["RowSource", "ArrayRows", "TFRecordRows", "ParquetRows", "is_parquet", "ImageFolderRows", "ListRows",
           "open_rows", "open_ids",
           "open_labels", "check_feedable", "preprocess", "preprocess_mode", "spec_of", "PREPROCESS", "VGG_MEANS"]


class RowsWithIds:
    """A `RowSource` (rows) and its ids, by their arguments: opened in the driver to count and
    check the rows, and again inside each worker of Beam or Spark (an open file does not travel).
    `bind(spec)` (anything with `.input`) shapes rows for the graph's input and applies
    `check_feedable` once, in the driver; given the input `spec` up front, the files open once."""

    def __init__(self, data: str, key: str | None, ids: str | None = None, *, preprocess: str | None = None,
                 spec: dict | None = None):
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
        if spec.input != self.spec:
            self.close()  # reopened for the input's shape
            self.spec = spec.input
        self.feed_dtype = check_feedable(self._rows(), spec.input, every_row=every_row).str

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
                  spec: dict | None = None) -> RowsWithIds:
    """The CLI's --data/--key/--ids as rows with ids: anything `open_rows` reads (shaped for the
    input `spec` when given)."""
    return RowsWithIds(data, None if data.endswith(".npy") else key, ids, preprocess=preprocess, spec=spec)


def write_dataset(f, name: str, data: np.ndarray) -> None:
    """Write `data` as dataset `name` of the open `h5py.File` `f`; strings and bytes as HDF5 strings."""
    import h5py

    if data.dtype == object or data.dtype.kind == "U":
        data = np.asarray([x.decode() if isinstance(x, bytes) else str(x) for x in data], dtype=object)
        f.create_dataset(name, data=data, dtype=h5py.string_dtype())
    else:
        f.create_dataset(name, data=data)
