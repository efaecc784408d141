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

from .arrays import ArrayRows, hdf5_datasets, write_dataset
from .feed import check_feedable
from .images import IMAGE_EXTENSIONS, ImageFolderRows, decode_image
from .open import RowsWithIds, open_ids, open_labels, open_rows, rows_with_ids
from .parquet import PARQUET_EXTENSIONS, ParquetRows, is_parquet, parquet_files
from .preprocess import DEFAULT_PREPROCESS, PREPROCESS, VGG_MEANS, preprocess, preprocess_mode
from .source import ListRows, RowSource, flat_row_shape
from .tfrecord import TFRECORD_EXTENSIONS, TFRecordRows, is_tfrecord

__all__ = ["RowSource", "ArrayRows", "TFRecordRows", "ParquetRows", "ImageFolderRows", "ListRows", "RowsWithIds",
           "open_rows", "open_ids", "open_labels", "rows_with_ids", "check_feedable", "flat_row_shape",
           "preprocess", "preprocess_mode", "decode_image", "is_parquet", "is_tfrecord", "parquet_files",
           "hdf5_datasets", "write_dataset", "PREPROCESS", "DEFAULT_PREPROCESS", "VGG_MEANS", "IMAGE_EXTENSIONS",
           "PARQUET_EXTENSIONS", "TFRECORD_EXTENSIONS"]
