"""HDF5 datasets and `.npy` arrays as row sources, and writing HDF5 datasets."""

from __future__ import annotations

import difflib
import os

import numpy as np

from ..core.errors import DataError
from .preprocess import DEFAULT_PREPROCESS
from .source import RowSource


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


def write_dataset(f, name: str, data: np.ndarray) -> None:
    """Write `data` as dataset `name` of the open `h5py.File` `f`; strings and bytes as HDF5 strings."""
    import h5py

    if data.dtype == object or data.dtype.kind == "U":
        data = np.asarray([x.decode() if isinstance(x, bytes) else str(x) for x in data], dtype=object)
        f.create_dataset(name, data=data, dtype=h5py.string_dtype())
    else:
        f.create_dataset(name, data=data)
