"""Images: decoding and resizing, and image folders as row sources."""

from __future__ import annotations

import hashlib
import os

import numpy as np

from ..core import tfcompat
from ..core.errors import DataError
from ..core.graph import shape_str
from .preprocess import DEFAULT_PREPROCESS
from .source import RowSource

tf = tfcompat.tf


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF87a", b"GIF89a", b"BM")


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


def image_target(spec, how: str) -> tuple:
    """(size, channels, dtype) images are decoded to for input `spec`: uint8 only for an integer
    input fed as stored, else float32."""
    shape = (spec.shape if spec is not None else None) or (None, None, None, None)
    if len(shape) != 4 or shape[3] not in (None, 1, 3, 4):  # decoded images have 1, 3 or 4 channels
        raise DataError(f"input {spec.name} takes rows of shape {shape_str(shape[1:])}, not images "
                        "([height, width, 1, 3 or 4 channels]), so an image folder cannot feed it",
                        "feed this piece the rows it takes (HDF5, .npy, Parquet: e.g. what `precompute` of the "
                        "offline piece wrote), or images to the piece whose input is the image")
    integer = spec is not None and np.dtype(tf.as_dtype(spec.dtype).as_numpy_dtype).kind in "iu"
    dtype = np.dtype(np.uint8) if integer and (how or DEFAULT_PREPROCESS) == "none" else np.dtype(np.float32)
    return tuple(shape[1:3]), shape[3], dtype


class ImageFolderRows(RowSource):
    """An image folder: each sub-directory a class (labels by sorted name), each image a row."""

    kind = "images"

    def __init__(self, directory: str, *, spec=None, preprocess: str | None = None):
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
