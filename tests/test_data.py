"""`surgery.data`: every row source built for real (HDF5, .npy, TFRecord, Parquet, image folders of JPEG,
PNG, BMP and GIF), checked against plain TensorFlow decoding; fine-tuning from a JPEG folder of
another size than the model's input, end to end; bad data exits 2 and writes nothing; and one
feed rule on every path (float64 rows into a float32 input)."""

from __future__ import annotations

import io
import json
import os
from dataclasses import replace

import h5py
import numpy as np
import pytest
from conftest import build_small_cnn, cli, run_cli, run_graph_def, tf, v1

from surgery.core.errors import DataError
from surgery.core.pieces import TensorSpec
from surgery.data import (
    VGG_MEANS,
    ArrayRows,
    ImageFolderRows,
    ParquetRows,
    TFRecordRows,
    check_feedable,
    open_labels,
    open_rows,
    preprocess,
)

SPEC = TensorSpec("images:0", "float32", (None, 8, 8, 3))
CLASSES = ["cat", "dog", "emu"]


def _encode(image: np.ndarray, fmt: str) -> bytes:
    if fmt == "jpg":
        return tf.io.encode_jpeg(image, quality=95).numpy()
    if fmt == "png":
        return tf.io.encode_png(image).numpy()
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format={"bmp": "BMP", "gif": "GIF"}[fmt])
    return buf.getvalue()


def _images(rng, n, h, w, klass):
    """uint8 images whose mean brightness tells the class (so a head can learn it)."""
    base = 60 + 70 * klass
    return np.clip(rng.normal(base, 15, (n, h, w, 3)), 0, 255).astype(np.uint8)


def _folder(root, rng, *, h=12, w=10, n=6, fmts=("jpg",), classes=CLASSES):
    for k, name in enumerate(classes):
        os.makedirs(root / name)
        for i, image in enumerate(_images(rng, n, h, w, k)):
            fmt = fmts[i % len(fmts)]
            (root / name / f"{i:03d}.{fmt}").write_bytes(_encode(image, fmt))
    return root


def _tf_decode(data: bytes, size=(8, 8)) -> np.ndarray:
    """Plain TensorFlow, as Keras' image_dataset_from_directory does it: decode, bilinear resize."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    return tf.image.resize(image, size, method="bilinear").numpy()


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """A small CNN checkpoint (float32 `images` [?, 8, 8, 3]) and its frozen `fc1` piece."""
    d = tmp_path_factory.mktemp("cnn")
    graph = tf.Graph()
    with graph.as_default():
        build_small_cnn()
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            v1.train.Saver().save(sess, str(d / "model.ckpt"))
    r = cli("freeze", d / "model.ckpt", "--outputs", "net/fc1/Relu", "--out", d / "fc1.pb")
    assert r.returncode == 0, r.stderr
    return str(d / "model.ckpt"), str(d / "fc1.pb")


# ---------------------------------------------------------------- sources

def test_hdf5_and_npy_read_in_blocks(tmp_path):
    x = np.random.default_rng(0).normal(size=(10, 8, 8, 3)).astype(np.float32)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["group/x"] = x
    np.save(tmp_path / "d.npy", x)
    for source in (open_rows(str(tmp_path / "d.h5"), "group/x"), open_rows(str(tmp_path / "d.npy"))):
        assert isinstance(source, ArrayRows) and len(source) == 10 and source.shape == x.shape
        assert source.read(3, 7).tobytes() == x[3:7].tobytes() and source.read(8, 99).shape[0] == 2
        assert check_feedable(source, SPEC) == np.float32
        source.close()
    with pytest.raises(DataError, match="did you mean group/x"):
        open_rows(str(tmp_path / "d.h5"), "group/xx")


def test_a_damaged_hdf5_chunk_is_a_data_error_naming_the_rows(tmp_path):
    """A gzip chunk whose bytes were overwritten: the rows around it read, its rows are a DataError."""
    x = np.arange(400, dtype=np.float32).reshape(100, 4)
    path = str(tmp_path / "d.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=x, chunks=(10, 4), compression="gzip")
    with h5py.File(path, "r") as f:
        info = f["x"].id.get_chunk_info_by_coord((50, 0))
    with open(path, "r+b") as f:
        f.seek(info.byte_offset)
        f.write(b"\xff" * info.size)
    with open_rows(path, "x") as source:
        assert source.read(0, 50).tobytes() == x[:50].tobytes()
        with pytest.raises(DataError, match=r"cannot read rows 45:55 of .*d\.h5:x") as e:
            source.read(45, 55)
        assert "damaged" in e.value.hint


def test_precompute_stops_at_a_damaged_chunk_and_resumes_once_mended(tmp_path):
    """Exit 2 naming the rows; the rows before them stay in OUT.partial (the message says so), and
    once the file is written again the same command resumes to the file a clean run writes."""
    from nets import write_mlp_pieces

    pieces = write_mlp_pieces(str(tmp_path / "pieces"), features=4, hidden=8, dim=3)
    x = np.random.default_rng(1).normal(size=(200, 4)).astype(np.float32)
    path = str(tmp_path / "d.h5")

    def write(damaged):
        with h5py.File(path, "w") as f:
            f.create_dataset("x", data=x, chunks=(10, 4), compression="gzip")
        if damaged:
            with h5py.File(path, "r") as f:
                info = f["x"].id.get_chunk_info_by_coord((80, 0))  # rows 80-89: none is a row the fingerprint samples
            with open(path, "r+b") as f:
                f.seek(info.byte_offset)
                f.write(b"\xff" * info.size)

    write(damaged=True)
    out = tmp_path / "e.h5"
    r = cli("precompute", pieces, "--data", path, "--key", "x", "--batch-size", 10, "--out", out)
    assert r.returncode == 2 and "cannot read rows 80:90" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "e.h5.partial" in r.stderr and not out.exists()
    write(damaged=False)
    assert cli("precompute", pieces, "--data", path, "--key", "x", "--batch-size", 10, "--out", out).returncode == 0
    r = cli("precompute", pieces, "--data", path, "--key", "x", "--batch-size", 10, "--out", tmp_path / "clean.h5")
    with h5py.File(out, "r") as a, h5py.File(tmp_path / "clean.h5", "r") as b:
        assert a["embeddings"][:].tobytes() == b["embeddings"][:].tobytes()


def test_tfrecord_lists_raw_bytes_and_images(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 8, 8, 3)).astype(np.float32)
    images = _images(rng, 7, 8, 8, 1)
    for part in range(2):  # two files: rows numbered across them
        with tf.io.TFRecordWriter(str(tmp_path / f"part-{part}.tfrecord")) as w:
            for i in range(part * 4, min(7, part * 4 + 4)):
                feature = {
                    "floats": tf.train.Feature(float_list=tf.train.FloatList(value=x[i].ravel())),
                    "raw": tf.train.Feature(bytes_list=tf.train.BytesList(value=[x[i].tobytes()])),
                    "png": tf.train.Feature(bytes_list=tf.train.BytesList(value=[_encode(images[i], "png")])),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 3])),
                    "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"row{i}".encode()])),
                }
                w.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    pattern = str(tmp_path / "part-*.tfrecord")
    for key in ("floats", "raw"):
        source = open_rows(pattern, key, spec=SPEC)
        assert isinstance(source, TFRecordRows) and source.shape == x.shape and source.boundaries() == [0, 4, 7]
        assert source.read(0, 7).tobytes() == x.tobytes()
        assert source.read(2, 6).tobytes() == x[2:6].tobytes()  # across the file boundary
    png = open_rows(pattern, "png", spec=SPEC)
    np.testing.assert_array_equal(png.read(0, 7), images.astype(np.float32))  # lossless, same size: exact
    labels = open_labels(pattern, "label", png)
    assert labels.tolist() == [i % 3 for i in range(7)]
    with pytest.raises(DataError, match="no feature 'flaots'.*did you mean floats"):
        open_rows(pattern, "flaots", spec=SPEC)
    with pytest.raises(DataError, match="not 1-D integers"):  # labels of the wrong type
        open_labels(pattern, "floats", png)
    with pytest.raises(DataError, match="cannot be fed"):  # int64 list into a float32 input
        check_feedable(open_rows(pattern, "label", spec=replace(SPEC, shape=(None,))), replace(SPEC, shape=(None,)))


def test_image_folder_every_format_decoded_and_resized(tmp_path):
    rng = np.random.default_rng(2)
    root = _folder(tmp_path / "imgs", rng, h=12, w=10, n=4, fmts=("jpg", "png", "bmp", "gif"))
    source = open_rows(str(root), spec=SPEC)
    assert isinstance(source, ImageFolderRows) and source.classes == CLASSES and source.shape == (12, 8, 8, 3)
    assert open_labels(str(root), None, source).tolist() == [0] * 4 + [1] * 4 + [2] * 4
    rows = source.read(0, len(source))
    for i, name in enumerate(source.files):
        expected = _tf_decode((root / name).read_bytes())
        np.testing.assert_array_equal(rows[i], expected)
    # one channel, as a grayscale input asks
    gray = open_rows(str(root), spec=replace(SPEC, shape=(None, 6, 5, 1)))
    assert gray.read(0, 2).shape == (2, 6, 5, 1)
    # a uint8 input fed as stored gets uint8 rows
    assert open_rows(str(root), spec=replace(SPEC, dtype="uint8")).dtype == np.uint8


def test_preprocess_options():
    x = np.array([[[0, 127.5, 255]]], np.float32)
    assert preprocess(x, "none") is x
    np.testing.assert_allclose(preprocess(x, "unit"), [[[0, 0.5, 1]]])
    np.testing.assert_allclose(preprocess(x, "inception"), [[[-1, 0, 1]]])
    np.testing.assert_allclose(preprocess(x, "vgg"), x - VGG_MEANS)
    np.testing.assert_allclose(VGG_MEANS, [123.68, 116.78, 103.94])


def test_feed_rule_is_safe_casting_plus_uint8():
    def rows(dtype):
        return np.zeros((2, 8, 8, 3), dtype)

    for ok in (np.float32, np.uint8, np.float16, np.int8):
        assert check_feedable(rows(ok), SPEC) == np.float32
    for bad in (np.float64, np.int64, np.int32):
        with pytest.raises(DataError, match="cannot be fed"):
            check_feedable(rows(bad), SPEC)
    with pytest.raises(DataError, match="does not fit"):
        check_feedable(np.zeros((2, 8, 8, 1), np.float32), SPEC)
    with pytest.raises(DataError, match="no rows"):
        check_feedable(np.zeros((0, 8, 8, 3), np.float32), SPEC)


# ---------------------------------------------------------------- Parquet, read with pyarrow

def _vectors(x):
    """Spark ML vectors as Spark stores them in Parquet: even rows dense, odd rows sparse."""
    import pyarrow as pa

    rows = []
    for i, row in enumerate(x.astype(np.float64)):
        nz = np.flatnonzero(row)
        rows.append({"type": 1, "size": None, "indices": None, "values": list(row)} if i % 2 == 0 else
                    {"type": 0, "size": len(row), "indices": list(nz.astype(np.int32)), "values": list(row[nz])})
    return pa.array(rows, pa.struct([("type", pa.int8()), ("size", pa.int32()),
                                     ("indices", pa.list_(pa.int32())), ("values", pa.list_(pa.float64()))]))


def _parquet(directory, x, **columns):
    """x's rows (flattened) in three files of odd sizes with row groups of 7 rows, as Spark lays a
    table out (`part-*` files, `_SUCCESS`, `.crc` files), plus `columns` (one value per row)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(directory)
    flat = x.reshape(len(x), -1)
    cuts = [0, 5, 23, len(x)]
    for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
        table = {"x": pa.array(list(flat[a:b])),
                 "fixed": pa.FixedSizeListArray.from_arrays(flat[a:b].ravel(), flat.shape[1]),
                 "vec": _vectors(flat[a:b]), **{f"c{j}": flat[a:b, j] for j in range(3)},
                 **{k: v[a:b] for k, v in columns.items()}}
        pq.write_table(pa.table(table), os.path.join(directory, f"part-{i:05d}.snappy.parquet"), row_group_size=7)
        open(os.path.join(directory, f".part-{i:05d}.snappy.parquet.crc"), "w").close()
    open(os.path.join(directory, "_SUCCESS"), "w").close()
    return str(directory)


def test_parquet_rows_read_in_blocks_across_files_and_row_groups(tmp_path):
    """An array column, a fixed-size list, Spark ML vectors (dense and sparse) and scalar columns
    all give the rows as written, in file order; a block straddles files and row groups; flat rows
    take the input's shape; ids and labels come back as written; a pickled source reopens."""
    import pickle

    x = np.random.default_rng(0).normal(size=(40, 8, 8, 3)).astype(np.float32)
    ids = np.array([f"item-{i}" for i in range(40)], dtype=object)
    path = _parquet(tmp_path / "t.parquet", x, id=ids, label=np.arange(40) % 3)
    rows = open_rows(path, "x", spec=SPEC)
    assert isinstance(rows, ParquetRows) and rows.shape == (40, 8, 8, 3) and rows.dtype == np.float32
    assert len(rows.files) == 3  # _SUCCESS and the .crc files are not data
    assert np.array_equal(rows.read(0, 40), x) and np.array_equal(rows.read(3, 31), x[3:31])
    flat = x.reshape(40, -1)
    assert np.array_equal(open_rows(path, "fixed").read(0, 40), flat)
    vec = open_rows(path, "vec")
    assert vec.dtype == np.float64 and np.array_equal(vec.read(0, 40), flat.astype(np.float64))
    assert np.array_equal(open_rows(path, "c0, c1,c2").read(4, 9), flat[4:9, :3])
    from surgery.data import rows_with_ids

    with_ids = rows_with_ids(path, "x", "id")
    assert list(with_ids.read_ids(3, 7)) == list(ids[3:7]) and with_ids.num_rows == 40
    assert np.array_equal(open_labels(path, "label", rows), np.arange(40) % 3)  # finetune's --y
    assert np.array_equal(pickle.loads(pickle.dumps(rows)).read(20, 25), x[20:25])
    one = _parquet(tmp_path / "one", x[:4])  # a single file, named by path
    assert np.array_equal(open_rows(os.path.join(one, "part-00000.snappy.parquet"), "x").read(0, 4), flat[:4])


def test_parquet_bad_columns_and_rows_are_data_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = np.random.default_rng(1).normal(size=(30, 4)).astype(np.float32)
    names = np.array([f"n{i}" for i in range(30)], dtype=object)
    tags = pa.array([["a", "b"]] * 30)
    ragged = pa.array([[1.0] * (4 + (i == 17)) for i in range(30)], pa.list_(pa.float32()))
    nulls = pa.array([None if i == 11 else [1.0] * 4 for i in range(30)], pa.list_(pa.float32()))
    path = _parquet(tmp_path / "t.parquet", x, name=names, tags=tags, ragged=ragged, nulls=nulls)
    for key, words in [("featurs", "has no column 'featurs'"), ("tags", "column 'tags'"),
                       ("c0,name", "column 'name'"), ("", "needs the column")]:
        with pytest.raises(DataError, match=words):
            open_rows(path, key)
    with pytest.raises(DataError, match="did you mean"):
        open_rows(path, "fixd")
    for key, words in [("ragged", "is ragged: row 17 holds 5 values, the first row 4"), ("nulls", "null")]:
        source = open_rows(path, key)  # found before any compute, by the feed check
        with pytest.raises(DataError, match=words):
            check_feedable(source, TensorSpec("x:0", "float32", (None, 4)))
    for other in ({"y": pa.array([[1.0] * 4])}, {"x": pa.array([["a"] * 4])}):  # a file of another table
        pq.write_table(pa.table(other), str(tmp_path / "t.parquet" / "part-8.parquet"))
        with pytest.raises(DataError, match="part-8.parquet .*column 'x'.*one table"):
            open_rows(path, "x")
    os.remove(tmp_path / "t.parquet" / "part-8.parquet")
    pq.write_table(pa.table({"x": pa.array([[1.0]])}), str(tmp_path / "t.parquet" / "part-9.parquet"))
    with open(tmp_path / "t.parquet" / "part-9.parquet", "r+b") as f:
        f.truncate(20)  # a truncated file among good ones
    with pytest.raises(DataError, match="not readable Parquet"):
        open_rows(path, "x")
    with pytest.raises(DataError, match="no such data"):
        open_rows(str(tmp_path / "missing.parquet"), "x")


def test_precompute_reads_parquet_as_it_reads_hdf5_locally_and_on_beam(tmp_path, cnn):
    """The same rows as Parquet (flattened, with string ids) and as HDF5: the same embeddings, from
    the local runner and from Beam (its workers reopen the Parquet source by path)."""
    _, pb = cnn
    x = np.random.default_rng(2).normal(size=(37, 8, 8, 3)).astype(np.float32)
    ids = np.array([f"item-{i}" for i in range(37)], dtype=object)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"] = x
        f.create_dataset("ids", data=ids, dtype=h5py.string_dtype())
    path = _parquet(tmp_path / "d.parquet", x, item_id=ids)
    runs = [(tmp_path / "d.h5", "ids", "local", "h.h5"), (path, "item_id", "local", "p.h5"),
            (path, "item_id", "beam", "b.h5")]
    for data, id_key, runner, out in runs:
        r = cli("precompute", pb, "--data", data, "--key", "x", "--ids", id_key, "--batch-size", "8",
                "--runner", runner, "--out", tmp_path / out)
        assert r.returncode == 0, r.stderr
    with h5py.File(tmp_path / "h.h5", "r") as f:
        expected = f["embeddings"][()]
    for out in ("p.h5", "b.h5"):
        with h5py.File(tmp_path / out, "r") as f:
            assert np.array_equal(f["embeddings"][()], expected), out
            assert [i.decode() for i in f["ids"][()]] == list(ids), out


# ---------------------------------------------------------------- precompute reads them all

def test_local_precompute_reads_tfrecord_and_folders_like_beam(tmp_path, cnn):
    _, pb = cnn
    root = _folder(tmp_path / "imgs", np.random.default_rng(3), h=9, w=11, n=3, fmts=("png",))
    graph_def = tf.compat.v1.GraphDef.FromString(open(pb, "rb").read())
    source = open_rows(str(root), spec=SPEC, preprocess="unit")
    expected = run_graph_def(graph_def, {"images:0": source.read(0, len(source))}, "net/fc1/Relu:0")
    for runner in ("local", "beam"):
        out = tmp_path / f"{runner}.h5"
        r = cli("precompute", pb, "--data", root, "--preprocess", "unit", "--ids", "files", "--runner", runner,
                "--batch-size", "4", "--out", out)
        assert r.returncode == 0, r.stderr
        with h5py.File(out, "r") as f:
            np.testing.assert_allclose(f["embeddings"][()], expected, rtol=1e-5, atol=1e-6)
            ids = [i.decode() if isinstance(i, bytes) else i for i in f["ids"][()]]
        assert ids == source.files
    x = np.random.default_rng(4).normal(size=(5, 8, 8, 3)).astype(np.float32)
    with tf.io.TFRecordWriter(str(tmp_path / "x.tfrecord")) as w:
        for row in x:
            w.write(tf.train.Example(features=tf.train.Features(feature={
                "x": tf.train.Feature(float_list=tf.train.FloatList(value=row.ravel()))})).SerializeToString())
    r = cli("precompute", pb, "--data", tmp_path / "x.tfrecord", "--key", "x", "--out", tmp_path / "tfr.h5")
    assert r.returncode == 0, r.stderr
    with h5py.File(tmp_path / "tfr.h5", "r") as f:
        np.testing.assert_allclose(f["embeddings"][()], run_graph_def(graph_def, {"images:0": x}, "net/fc1/Relu:0"),
                                   rtol=1e-5, atol=1e-6)


def test_float64_rows_get_one_answer_from_every_path(tmp_path, cnn):
    """float64 rows for a float32 input: refused alike by local precompute, Beam and finetune."""
    ckpt, pb = cnn
    x = np.random.default_rng(5).normal(size=(12, 8, 8, 3))  # float64
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"], f["y"] = x, np.arange(12) % 3
    runs = {
        "local": cli("precompute", pb, "--data", tmp_path / "d.h5", "--key", "x", "--out", tmp_path / "l.h5"),
        "beam": cli("precompute", pb, "--data", tmp_path / "d.h5", "--key", "x", "--runner", "beam",
                    "--out", tmp_path / "b.h5"),
        "finetune": cli("finetune", ckpt, "--at", "net/fc1/Relu", "--head", "dense:3", "--data", tmp_path / "d.h5",
                        "--x", "x", "--y", "y", "--epochs", "1", "--out", tmp_path / "ft"),
    }
    for name, r in runs.items():
        assert r.returncode == 2, (name, r.stderr)
        assert "float64" in r.stderr and "cannot be fed to input images:0 (float32)" in r.stderr, (name, r.stderr)
    assert sorted(os.listdir(tmp_path)) == ["d.h5"]


# ---------------------------------------------------------------- fine-tuning from a folder

def test_finetune_from_a_jpeg_folder_of_another_size(tmp_path, cnn):
    ckpt, _ = cnn
    root = _folder(tmp_path / "photos", np.random.default_rng(6), h=20, w=14, n=10, fmts=("jpg",))
    out = tmp_path / "ft"
    r = run_cli("finetune", ckpt, "--at", "net/fc1/Relu", "--head", "dense:3", "--data", root,
                "--preprocess", "unit", "--epochs", "20", "--batch-size", "8", "--lr", "0.05", "--val-split", "0",
                "--out", out)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["finetune"]["classes"] == CLASSES and manifest["finetune"]["preprocess"] == "unit"
    # the frozen graph, fed the decoded, resized, scaled images as plain TF makes them, learned the classes
    piece = manifest["pieces"]["model"]
    graph_def = tf.compat.v1.GraphDef.FromString((out / piece["graph"]).read_bytes())
    files = sorted((root / c / f, k) for k, c in enumerate(CLASSES) for f in os.listdir(root / c))
    x = np.stack([_tf_decode(p.read_bytes()) / 255.0 for p, _ in files]).astype(np.float32)
    probs = run_graph_def(graph_def, {piece["inputs"][0]["name"]: x}, piece["outputs"][0]["name"])
    assert (probs.argmax(1) == [k for _, k in files]).mean() >= 0.9


def _tfrecord_with(path, feature):
    with tf.io.TFRecordWriter(str(path)) as w:
        for i in range(4):
            w.write(tf.train.Example(features=tf.train.Features(feature=feature(i))).SerializeToString())


def _bad_sources(tmp_path):
    rng = np.random.default_rng(7)
    empty = _folder(tmp_path / "empty", rng, n=2)
    for f in os.listdir(empty / "dog"):
        os.remove(empty / "dog" / f)
    broken = _folder(tmp_path / "broken", rng, n=2)
    (broken / "dog" / "001.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    one = _folder(tmp_path / "one", rng, n=3, classes=["cat"])
    floats = lambda i: tf.train.Feature(float_list=tf.train.FloatList(value=np.zeros(192)))  # noqa: E731 - a one-line key, read where it is used
    _tfrecord_with(tmp_path / "nolabel.tfrecord", lambda i: {"x": floats(i)})
    _tfrecord_with(tmp_path / "badlabel.tfrecord", lambda i: {"x": floats(i), "y": floats(i)})
    _tfrecord_with(tmp_path / "badx.tfrecord", lambda i: {
        "x": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"abc"])),
        "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 2]))})
    return {
        "empty class folder": (["--data", empty], "holds no images"),
        "undecodable image": (["--data", broken], "cannot decode image " + str(broken / "dog" / "001.jpg")),
        "one class": (["--data", one], "only one class folder"),
        "missing feature": (["--data", tmp_path / "nolabel.tfrecord", "--x", "x", "--y", "y"], "no feature 'y'"),
        "wrong-typed label": (["--data", tmp_path / "badlabel.tfrecord", "--x", "x", "--y", "y"], "not 1-D integers"),
        "wrong-typed input": (["--data", tmp_path / "badx.tfrecord", "--x", "x", "--y", "y"], "not an image"),
        "missing key": (["--data", tmp_path / "nolabel.tfrecord", "--x", "xx", "--y", "y"], "did you mean x"),
    }


def test_bad_data_exits_2_and_writes_nothing(tmp_path, cnn):
    ckpt, _ = cnn
    data = tmp_path / "data"
    data.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    cases = _bad_sources(data)
    # cached, the images stream through the backbone once: a bad one is found mid-pass, still nothing is left
    cases["undecodable image, cached"] = (cases["undecodable image"][0] + ["--cache-bottlenecks", "--head", "dense:3"],
                                          cases["undecodable image"][1])
    for case, (args, words) in cases.items():
        r = cli("finetune", ckpt, "--at", "net/fc1/Relu", "--head", "dense:2", *args, "--epochs", "1",
                "--out", work / "ft")
        assert r.returncode == 2, (case, r.stderr)
        assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, \
            (case, r.stderr)
        assert os.listdir(work) == [], case


def test_an_image_folder_is_refused_for_an_input_that_is_not_an_image(tmp_path):
    """#33's first papercut: a cut piece's input [None, 6, 6, 80] is not an image; the folder is
    refused naming that shape, before any image is decoded (not a decoder error about channels)."""
    root = tmp_path / "imgs"
    _folder(root, np.random.default_rng(0), n=2)
    with pytest.raises(DataError, match=r"takes rows of shape \[6, 6, 80\], not images"):
        open_rows(str(root), spec=TensorSpec("online_in:0", "float32", (None, 6, 6, 80)))
    r = cli("precompute", _piece_with_input(tmp_path, (None, 6, 6, 80)), "--data", root, "--out", tmp_path / "e.h5")
    assert r.returncode == 2 and "not images" in r.stderr and "channels" not in r.stderr.split("(")[0]


def _piece_with_input(tmp_path, shape) -> str:
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, shape, name="online_in")
        tf.reduce_mean(x, axis=[1, 2, 3], name="out")
    path = str(tmp_path / "piece.pb")
    with open(path, "wb") as f:
        f.write(graph.as_graph_def().SerializeToString())
    return path


def test_image_folder_ids_are_relative_paths_in_row_order_and_the_help_says_so(tmp_path):
    """#33's fifth papercut: --ids on an image folder stores each image's relative path, in row order."""
    root = _folder(tmp_path / "imgs", np.random.default_rng(0), n=2)
    out = tmp_path / "e.h5"
    r = cli("precompute", _piece_with_input(tmp_path, (None, 8, 8, 3)), "--data", root, "--ids", "path",
            "--out", out)
    assert r.returncode == 0, r.stderr
    with h5py.File(out, "r") as f:
        ids = [i.decode() if isinstance(i, bytes) else i for i in f["ids"][:]]
    assert ids == sorted(ids) and ids == [f"{c}/{i:03d}.jpg" for c in CLASSES for i in range(2)]
    assert "relative to the folder" in " ".join(cli("precompute", "--help").stdout.split())
