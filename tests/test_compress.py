"""Compressed cuts (`split --cut-dtype float16|int8`): on a trained classifier the offline piece
emits what the numpy formulas give, precompute stores half or a quarter of the bytes, the online
piece answers from the compressed rows as from their float values, and the answers keep the
original's top-1 class (int8 ≥ 98%, float16 ≥ 99.9%); the pieces export and serve as before."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
from conftest import cli, run_graph_def, tf, v1
from nets import trained_classifier

from surgery.core.graph import read_graph_def
from surgery.passes.compress import dequantize, int8_ranges, quantize, roundtrip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_classifier(str(tmp_path_factory.mktemp("trained")))


def _original(prefix, x, fetch="probs:0"):
    graph = tf.Graph()
    with graph.as_default(), v1.Session() as sess:
        v1.train.import_meta_graph(prefix + ".meta").restore(sess, prefix)
        return sess.run(fetch, {"x:0": x})


def _run(*args):
    r = cli(*args)
    return r.returncode, r.stdout + r.stderr


def _split(prefix, data, out, *extra):
    code, text = _run("split", prefix, "--cut", "hidden", "--outputs", "probs", "--out", out, *extra)
    assert code == 0, text
    with open(os.path.join(out, "manifest.json")) as f:
        return json.load(f)


def test_int8_ranges_hold_the_data_and_keep_zeros_exact():
    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(size=(300, 5, 6)), 0).astype(np.float32)  # a ReLU's output: many zeros
    x[..., 1] = 0.0  # a dead channel
    x[..., 2] = -np.abs(x[..., 2]) - 1.0  # a negative-only channel
    scale, zero_point = int8_ranges(x)
    assert scale.shape == zero_point.shape == (6,) and scale[1] == 1.0
    back = dequantize(quantize(x, scale, zero_point), scale, zero_point)
    assert np.all(np.abs(back - x) <= scale / 2 + 1e-6)  # within half a step everywhere in range
    assert np.array_equal(back[x == 0], x[x == 0])  # zeros exact
    assert np.array_equal(roundtrip(x, "int8", scale, zero_point), back)
    big = np.full((1, 6), 1e6, np.float32)
    assert quantize(big, scale, zero_point).tolist() == [[127] * 6]  # past the range: saturates, never wraps
    assert quantize(-big, scale, zero_point).tolist() == [[-128] * 6]


@pytest.mark.parametrize("dtype, ratio, agreement", [("float16", 0.5, 0.999), ("int8", 0.25, 0.98)])
def test_a_compressed_cut_stores_less_and_keeps_the_answers(trained, tmp_path, dtype, ratio, agreement):
    prefix, data = trained
    with h5py.File(data, "r") as f:
        test_x = f["test_x"][:]
    float_dir, dir_ = str(tmp_path / "float"), str(tmp_path / dtype)
    _split(prefix, data, float_dir)
    manifest = _split(prefix, data, dir_, "--cut-dtype", dtype, "--calibration", f"{data}:x",
                      "--verify", "500", "--verify-data", f"{data}:test_x")
    (cut,) = manifest["cut"]
    assert cut["dtype"] == dtype and manifest["pieces"]["online"]["inputs"][0]["dtype"] == dtype
    assert manifest["pieces"]["offline"]["outputs"][0] == {"name": cut["offline_output"], "dtype": dtype,
                                                          "shape": [None, 32]}
    v = manifest["verification"]
    assert v["passed"] and v["max_abs_diff"] <= 1e-5  # the float path through the written pieces
    assert v["compressed"]["dtype"] == dtype and v["compressed"]["agreement"] >= agreement

    # the offline piece computes the numpy formulas on the float cut, bit for bit
    offline = read_graph_def(os.path.join(dir_, "offline.pb"))
    hidden, sent = run_graph_def(offline, {"x:0": test_x}, [cut["tensor"], cut["offline_output"]])
    assert np.array_equal(hidden, _original(prefix, test_x, cut["tensor"]))
    if dtype == "int8":
        scale, zero_point = np.float32(cut["scale"]), np.float32(cut["zero_point"])
        assert len(scale) == 32
        assert np.array_equal(sent, quantize(hidden, scale, zero_point))
    else:
        scale = zero_point = None
        assert np.array_equal(sent, hidden.astype(np.float16))

    # precompute stores that dtype: half or a quarter of the float bytes
    for d in (float_dir, dir_):
        code, text = _run("precompute", d, "--data", data, "--key", "test_x", "--out", d + ".h5", "-q")
        assert code == 0, text
    with h5py.File(float_dir + ".h5", "r") as f, h5py.File(dir_ + ".h5", "r") as g:
        assert g["embeddings"].dtype == np.dtype(dtype)
        assert g["embeddings"].nbytes == ratio * f["embeddings"].nbytes
        assert np.array_equal(g["embeddings"][:], sent)
        stored = g["embeddings"][:]

    # the online piece answers from the stored rows as from their float values, and keeps the answers
    online = read_graph_def(os.path.join(dir_, "online.pb"))
    (probs,) = run_graph_def(online, {cut["placeholder"]: stored}, ["probs:0"])
    (same,) = run_graph_def(online, {cut["dequantized"]: roundtrip(hidden, dtype, scale, zero_point)}, ["probs:0"])
    np.testing.assert_allclose(probs, same, atol=1e-6)
    expected = _original(prefix, test_x)
    assert np.mean(probs.argmax(1) == expected.argmax(1)) >= agreement

    from surgery.runners.serve import OnlineServer

    with OnlineServer(dir_, dir_ + ".h5") as server:  # serving feeds the stored rows by row number
        np.testing.assert_allclose(server.score([3, 7]), probs[[3, 7]], atol=1e-6)


def test_compressed_pieces_export_and_run_on_beam(trained, tmp_path):
    prefix, data = trained
    dir_ = str(tmp_path / "int8")
    _split(prefix, data, dir_, "--cut-dtype", "int8", "--calibration", f"{data}:x")
    code, text = _run("export", dir_, "--onnx", str(tmp_path / "onnx"))
    assert code == 0 and "online.onnx" in text, text
    code, text = _run("precompute", dir_, "--data", data, "--key", "test_x", "--runner", "beam",
                     "--out", str(tmp_path / "beam.h5"), "-q")
    assert code == 0, text
    code, text = _run("precompute", dir_, "--data", data, "--key", "test_x", "--out", str(tmp_path / "local.h5"), "-q")
    with h5py.File(tmp_path / "beam.h5", "r") as b, h5py.File(tmp_path / "local.h5", "r") as loc:
        assert b["embeddings"].dtype == np.int8 and np.array_equal(b["embeddings"][:], loc["embeddings"][:])


def test_refusals_exit_2_and_write_nothing(trained, tmp_path):
    prefix, data = trained
    out = str(tmp_path / "p")
    code, text = _run("split", prefix, "--cut", "hidden", "--outputs", "probs", "--cut-dtype", "int8", "--out", out)
    assert code == 2 and "--calibration" in text and not os.path.exists(out)
    code, text = _run("split", prefix, "--cut", "hidden", "--outputs", "probs", "--cut-dtype", "int8",
                     "--calibration", f"{data}:y", "--out", out)
    assert code == 2 and "calibration" in text and not os.path.exists(out), text
