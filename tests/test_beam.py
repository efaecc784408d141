"""`surgery.runners.beam` and `precompute --runner beam`: the offline piece on Apache Beam's DirectRunner
gives exactly what a plain TensorFlow batch loop gives, whatever the number of workers.

Needs the `beam` extra (`pip install 'surgery[beam]'`); those tests skip without it. The last
test checks the message a user without the extra gets, and runs everywhere.
"""

from __future__ import annotations

import hashlib
import os
import sys

import h5py
import numpy as np
import pytest
from conftest import ROOT, cli, tf, v1

ROWS, FEATURES, BATCH = 600, 12, 64


@pytest.fixture
def beam(monkeypatch):
    """apache_beam, with this worktree importable in the DirectRunner's worker processes."""
    mod = pytest.importorskip("apache_beam")
    monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return mod


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory):
    """A split directory whose offline piece is a small MLP `x` [?, 12] → `emb` [?, 8]."""
    from nets import write_mlp_pieces

    return write_mlp_pieces(str(tmp_path_factory.mktemp("pieces")), features=FEATURES, hidden=32, dim=8, seed=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """HDF5 with `x` (float32 rows) and string ids `ids`, plus the same rows as .npy."""
    d = tmp_path_factory.mktemp("data")
    x = np.random.default_rng(0).normal(size=(ROWS, FEATURES)).astype(np.float32)
    ids = np.array([f"item-{i:04d}" for i in range(ROWS)], dtype=object)
    with h5py.File(d / "data.h5", "w") as f:
        f["x"] = x
        f.create_dataset("ids", data=ids, dtype=h5py.string_dtype())
    np.save(d / "x.npy", x)
    return str(d / "data.h5"), str(d / "x.npy"), x, ids


def plain_tf_loop(split_dir, x, batch_size=BATCH):
    """The reference: import the offline .pb and run it batch by batch, as anyone would."""
    gd = v1.GraphDef()
    with open(os.path.join(split_dir, "offline.pb"), "rb") as f:
        gd.ParseFromString(f.read())
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(gd, name="")
    with v1.Session(graph=graph) as sess:
        return np.concatenate([sess.run("emb:0", {"x:0": x[i:i + batch_size]}) for i in range(0, len(x), batch_size)])


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def direct(workers):
    return {"direct_num_workers": workers, "direct_running_mode": "multi_processing"}


def test_beam_equals_plain_tensorflow_and_workers_do_not_matter(beam, split_dir, data, tmp_path):
    from surgery.runners.beam import HDF5Source, ShardedTable, merge_shards, run_precompute

    h5, _, x, ids = data
    expected = plain_tf_loop(split_dir, x)
    merged = {}
    for workers in (1, 2):
        index = run_precompute(split_dir, HDF5Source(h5, "x", "ids"), str(tmp_path / f"w{workers}"),
                               batch_size=BATCH, rows_per_shard=150, beam_options=direct(workers))
        merged[workers] = merge_shards(index, str(tmp_path / f"merged{workers}.h5"))
        with h5py.File(merged[workers], "r") as f:
            assert np.array_equal(f["embeddings"][:], expected)
            assert [s.decode() for s in f["ids"][:]] == list(ids)
    assert sha(merged[1]) == sha(merged[2])

    table = ShardedTable(index)
    assert len(table) == ROWS  # 150 rows per shard rounded up to the 64-row grid: 192
    assert [(s["start"], s["stop"]) for s in table.shards] == [(0, 192), (192, 384), (384, 576), (576, 600)]
    assert np.array_equal(table.read_all()["embeddings"], expected)
    got = table.lookup(["item-0599", "item-0000", "item-0200"])["embeddings"]
    assert np.array_equal(got, expected[[599, 0, 200]])
    with pytest.raises(Exception, match="item-9999"):
        table.lookup(["item-9999"])


def test_beam_equals_the_local_precompute(beam, split_dir, data, tmp_path):
    """Issue 10's bar: the Beam path and `surgery precompute` (local) store identical embeddings."""
    from surgery import precompute
    from surgery.runners.beam import HDF5Source, merge_shards, run_precompute

    h5, _, _, ids = data
    local = tmp_path / "local.h5"
    precompute(split_dir, h5, "x", str(local), ids="ids", batch_size=BATCH, progress=False)
    index = run_precompute(split_dir, HDF5Source(h5, "x", "ids"), str(tmp_path / "shards"), batch_size=BATCH,
                           rows_per_shard=200, beam_options=direct(1))
    merged = merge_shards(index, str(tmp_path / "beam.h5"))
    with h5py.File(local, "r") as a, h5py.File(merged, "r") as b:
        assert np.array_equal(a["embeddings"][:], b["embeddings"][:])
        assert [v.decode() if isinstance(v, bytes) else v for v in a["ids"][:]] == \
            [v.decode() if isinstance(v, bytes) else v for v in b["ids"][:]]
        assert a.attrs["graph_sha256"] == b.attrs["graph_sha256"]


def test_rerun_resumes_without_duplicates(beam, split_dir, data, tmp_path):
    from surgery.runners.beam import HDF5Source, merge_shards, run_precompute

    h5, _, x, _ = data
    shards = tmp_path / "shards"
    index = run_precompute(split_dir, HDF5Source(h5, "x", "ids"), str(shards), batch_size=BATCH, rows_per_shard=256)
    first = sha(merge_shards(index, str(tmp_path / "a.h5")))
    files = sorted(os.listdir(shards))
    shard_files = [f for f in files if f.startswith("shard-")]
    assert len(shard_files) == 3 and "index.json" in files
    kept = shards / shard_files[0]
    kept_mtime = os.stat(kept).st_mtime_ns
    os.remove(shards / shard_files[-1])  # as if a worker died mid-run
    index = run_precompute(split_dir, HDF5Source(h5, "x", "ids"), str(shards), batch_size=BATCH, rows_per_shard=256)
    assert sorted(os.listdir(shards)) == files  # same names, nothing extra, no temporaries left
    assert os.stat(kept).st_mtime_ns == kept_mtime  # finished shards were not recomputed
    assert sha(merge_shards(index, str(tmp_path / "b.h5"))) == first


def test_npy_and_tfrecord_sources(beam, split_dir, data, tmp_path):
    from surgery.runners.beam import NpySource, ShardedTable, TFRecordSource, run_precompute

    _, npy, x, _ = data
    expected = plain_tf_loop(split_dir, x)
    index = run_precompute(split_dir, NpySource(npy), str(tmp_path / "npy"), batch_size=BATCH, rows_per_shard=300)
    assert np.array_equal(ShardedTable(index).read_all()["embeddings"], expected)

    # Two TFRecord files of 300 examples each; 300 is not on the 64-row grid, so compare with the
    # plain loop run per file, which is what the shards do.
    for part in range(2):
        with tf.io.TFRecordWriter(str(tmp_path / f"part-{part}.tfrecord")) as w:
            for i in range(part * 300, (part + 1) * 300):
                ex = tf.train.Example(features=tf.train.Features(feature={
                    "x": tf.train.Feature(float_list=tf.train.FloatList(value=x[i])),
                    "id": tf.train.Feature(int64_list=tf.train.Int64List(value=[1000 + i]))}))
                w.write(ex.SerializeToString())
    index = run_precompute(split_dir, TFRecordSource(str(tmp_path / "part-*.tfrecord"), "x", "id"),
                           str(tmp_path / "tfr"), batch_size=BATCH, rows_per_shard=1000)
    table = ShardedTable(index)
    per_file = np.concatenate([plain_tf_loop(split_dir, x[:300]), plain_tf_loop(split_dir, x[300:])])
    assert np.allclose(table.read_all()["embeddings"], expected, atol=1e-5)
    assert np.array_equal(table.read_all()["embeddings"], per_file)
    assert np.array_equal(table.lookup([1599, 1000])["embeddings"], per_file[[599, 0]])


def test_cli_runner_beam(beam, split_dir, data, tmp_path):
    h5, _, x, _ = data
    out = tmp_path / "emb.h5"
    r = cli("precompute", split_dir, "--data", h5, "--key", "x", "--ids", "ids", "--runner", "beam",
            "--batch-size", BATCH, "--outputs", "emb=vectors", "--out", out,
            "--beam-option", "direct_num_workers=2", "--beam-option", "direct_running_mode=multi_threading")
    assert r.returncode == 0, r.stderr
    with h5py.File(out, "r") as f:
        assert sorted(f) == ["ids", "vectors"]
        assert np.array_equal(f["vectors"][:], plain_tf_loop(split_dir, x))
    assert os.path.exists(str(out) + ".shards/index.json")

    r = cli("precompute", split_dir, "--data", h5, "--key", "nope", "--runner", "beam", "--out", tmp_path / "x.h5")
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "x.h5")


def test_runner_beam_without_the_extra_says_how_to_install(monkeypatch, split_dir, data, tmp_path):
    h5 = data[0]
    monkeypatch.setitem(sys.modules, "apache_beam", None)  # `import apache_beam` now raises ImportError
    r = cli("precompute", split_dir, "--data", h5, "--key", "x", "--runner", "beam", "--out", tmp_path / "e.h5")
    assert r.returncode == 2
    assert "pip install 'surgery[beam]'" in r.stderr and "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "e.h5")
