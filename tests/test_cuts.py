"""`surgery cuts`: every tensor that alone separates the inputs from the outputs, checked against a
brute-force separation test on VGG-, ResNet- and Inception-style graphs and a two-tower model;
FLOPs against TensorFlow's profiler; every listed cut splits and composes back."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import cli, run_graph_def, tf, v1

from surgery import load_model, split_model, write_split
from surgery.core import graph as g
from surgery.core.errors import SurgeryError
from surgery.passes.cuts import cuts, separating_tensors

RNG = np.random.default_rng(0)


def _w(*shape):
    return tf.constant(RNG.normal(size=shape, scale=0.3).astype(np.float32))


def _conv(x, c_in, c_out, name):
    with tf.name_scope(name):
        return tf.nn.relu(tf.nn.conv2d(x, _w(3, 3, c_in, c_out), 1, "SAME") + _w(c_out), name="relu")


def _head(x, name="probs"):
    flat = tf.reshape(x, [-1, int(np.prod(x.shape[1:]))])
    return tf.nn.softmax(tf.matmul(flat, _w(flat.shape[1], 5)), name=name)


def vgg():
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 8, 8, 3], name="images")
        h = _conv(x, 3, 4, "conv1")
        h = tf.nn.max_pool2d(h, 2, 2, "VALID", name="pool1")
        h = _conv(h, 4, 8, "conv2")
        h = tf.nn.max_pool2d(h, 2, 2, "VALID", name="pool2")
        _head(h)
    return graph.as_graph_def()


def resnet():
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 8, 8, 3], name="images")
        h = _conv(x, 3, 4, "stem")
        for unit in range(2):
            with tf.name_scope(f"unit{unit}"):
                r = _conv(h, 4, 4, "a")
                r = tf.nn.conv2d(r, _w(3, 3, 4, 4), 1, "SAME", name="b")
                h = tf.nn.relu(tf.add(h, r), name="out")
        _head(tf.reduce_mean(h, [1, 2], keepdims=True, name="gap"))
    return graph.as_graph_def()


def inception():
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 8, 8, 3], name="images")
        h = _conv(x, 3, 4, "stem")
        with tf.name_scope("mixed"):
            b1 = _conv(h, 4, 2, "branch1")
            b2 = _conv(_conv(h, 4, 2, "branch2a"), 2, 2, "branch2b")
            b3 = tf.nn.avg_pool2d(h, 3, 1, "SAME", name="branch3")
            h = tf.concat([b1, b2, b3], axis=3, name="concat")
        _head(_conv(h, 8, 4, "top"))
    return graph.as_graph_def()


def two_tower():
    graph = tf.Graph()
    with graph.as_default():
        item = v1.placeholder(tf.float32, [None, 6], name="item_features")
        user = v1.placeholder(tf.float32, [None, 4], name="user_features")
        with tf.name_scope("item_tower"):
            i = tf.nn.relu(tf.matmul(item, _w(6, 8)))
            i = tf.matmul(i, _w(8, 3), name="embedding")
        with tf.name_scope("user_tower"):
            u = tf.matmul(tf.nn.relu(tf.matmul(user, _w(4, 8))), _w(8, 3), name="embedding")
        tf.sigmoid(tf.reduce_sum(i * u, axis=1), name="score")
    return graph.as_graph_def()


def brute_force(graph_def, inputs: list, outputs: list) -> list:
    """Tensors whose removal leaves no output reachable from the inputs: each tried alone."""
    needed = g.ancestors(graph_def, outputs)
    edges = [(g.tensor_name(i), n.name) for n in graph_def.node if n.name in needed
             for i in n.input if not i.startswith("^")]

    def reached(blocked):
        seen, stack = set(), [t.split(":")[0] for t in inputs]
        while stack:
            op = stack.pop()
            if op not in seen:
                seen.add(op)
                stack.extend(c for t, c in edges if t.split(":")[0] == op and t != blocked)
        return seen

    live = reached(None)
    tensors = sorted({t for t, _ in edges if t.split(":")[0] in live} - set(inputs) - set(outputs))
    return [t for t in tensors if not any(o.split(":")[0] in reached(t) for o in outputs)]


@pytest.mark.parametrize("build", [vgg, resnet, inception])
def test_separating_tensors_match_a_brute_force_search(build):
    gd = build()
    found = separating_tensors(gd, ["images:0"], ["probs:0"])
    assert sorted(found) == sorted(brute_force(gd, ["images:0"], ["probs:0"]))
    order = [n.name for n in gd.node]
    assert found == sorted(found, key=lambda t: order.index(t.split(":")[0])), "in graph order"


def test_resnet_cuts_are_block_boundaries_never_inside_a_unit():
    found = separating_tensors(resnet(), ["images:0"], ["probs:0"])
    inside = [t for t in found if t.startswith("unit") and not t.split(":")[0].endswith(("/out", "/Add"))]
    assert not inside, inside
    assert {"stem/relu:0", "unit0/out:0", "unit1/out:0"} <= set(found)


def test_inception_cuts_skip_the_branches():
    found = separating_tensors(inception(), ["images:0"], ["probs:0"])
    assert "mixed/concat:0" in found and not [t for t in found if "branch" in t]


def _model(gd, tmp_path, name="m.pb"):
    path = str(tmp_path / name)
    with open(path, "wb") as f:
        f.write(gd.SerializeToString())
    return path


def test_flops_add_up_and_match_tensorflows_profiler(tmp_path):
    gd = vgg()
    report = cuts(_model(gd, tmp_path), "probs")
    one = tf.Graph()
    with one.as_default():
        x = v1.placeholder(tf.float32, [1, 8, 8, 3], name="images")
        tf.import_graph_def(gd, input_map={"images:0": x}, name="")
    opts = v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    assert report["total"]["flops"] == v1.profiler.profile(one, options=opts).total_float_ops > 0
    params = 3 * 3 * 3 * 4 + 4 + 3 * 3 * 4 * 8 + 8 + 2 * 2 * 8 * 5
    assert report["total"]["params"] == params
    for c in report["cuts"]:
        assert c.offline["flops"] + c.online["flops"] == report["total"]["flops"], c.tensor
        assert c.offline["params"] + c.online["params"] == report["total"]["params"], c.tensor
    first, last = report["cuts"][0], report["cuts"][-1]
    assert (first.kind, first.offline["flops"]) == ("all online", 0)
    assert (last.kind, last.online["flops"]) == ("all offline", 0)
    pool2 = next(c for c in report["cuts"] if c.tensor == "pool2:0")
    assert pool2.shape == [None, 2, 2, 8]
    assert pool2.bytes_per_row == {"float32": 128, "float16": 64, "int8": 32}


def test_a_head_behind_a_placeholder_with_default_is_counted(tmp_path):
    """A fine-tuned head reads its bottleneck through a PlaceholderWithDefault declared [?, n]:
    its FLOPs count as the profiler counts them when the default flows (the demo's fc7 head)."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 6], name="x")
        h = v1.placeholder_with_default(tf.nn.relu(tf.matmul(x, _w(6, 4))), [None, 4], name="bottleneck")
        tf.matmul(h, _w(4, 3), name="logits")
    report = cuts(_model(graph.as_graph_def(), tmp_path), "logits")
    assert "flops_unknown" not in report
    at = next(c for c in report["cuts"] if c.tensor == "bottleneck:0")
    assert at.online["flops"] == 2 * 4 * 3  # the head's MatMul, batch 1


def test_pareto_front_is_bytes_against_online_flops(tmp_path):
    report = cuts(_model(vgg(), tmp_path), "probs")
    rows = [(c.bytes_per_row["float32"], c.online["flops"], c.pareto) for c in report["cuts"]]
    for b, f, pareto in rows:
        dominated = any(b2 <= b and f2 <= f and (b2, f2) != (b, f) for b2, f2, _ in rows)
        assert pareto == (not dominated)
    assert any(p for *_, p in rows) and not all(p for *_, p in rows)


@pytest.mark.parametrize("build", [vgg, resnet, inception])
def test_every_listed_cut_splits_and_composes(build, tmp_path):
    path = _model(build(), tmp_path)
    model = load_model(path)
    x = RNG.normal(size=(3, 8, 8, 3)).astype(np.float32)
    expected = run_graph_def(model.graph_def, {"images:0": x}, "probs:0")
    for n, c in enumerate(c for c in cuts(path, "probs")["cuts"] if c.kind == "cut"):
        split = split_model(model, c.tensor, "probs")
        write_split(model, split, str(tmp_path / f"p{n}"), verify=2)
        (mid,) = run_graph_def(split.offline.graph_def, {"images:0": x}, [c.tensor])
        got = run_graph_def(split.online.graph_def, {split.online.cut[c.tensor]: mid}, "probs:0")
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_two_towers_list_each_branch_cut(tmp_path):
    report = cuts(_model(two_tower(), tmp_path), "score")
    branch = {c.tensor for c in report["cuts"] if c.kind == "branch"}
    assert {"item_tower/embedding:0", "user_tower/embedding:0"} <= branch
    joint = [c.tensor for c in report["cuts"] if c.kind == "cut"]
    assert joint and all(not t.startswith(("item_tower", "user_tower")) for t in joint), "only where the towers meet"
    model = load_model(str(tmp_path / "m.pb"))
    split = split_model(model, "item_tower/embedding", "score")
    assert [i.name for i in split.live_inputs] == ["user_features:0"]


def test_cuts_cli_json_table_and_refusals(tmp_path):
    path = _model(resnet(), tmp_path)
    r = cli("cuts", path, "--outputs", "probs", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc) >= {"total", "cuts"} and set(doc["total"]) == {"flops", "params"}
    assert set(doc["cuts"][1]) >= {"tensor", "layer", "dtype", "shape", "bytes_per_row", "offline", "online", "pareto"}
    r = cli("cuts", path, "--outputs", "probs")
    assert r.returncode == 0 and "unit0/out:0" in r.stdout and "all online" in r.stdout and "*" in r.stdout
    r = cli("cuts", path, "--outputs", "prbos")
    assert r.returncode == 2 and "probs" in r.stderr and "Traceback" not in r.stderr


def test_measure_times_the_shrinking_and_pareto_cuts_and_prices_compression(tmp_path):
    import h5py

    path = _model(vgg(), tmp_path)
    images = RNG.normal(size=(100, 8, 8, 3)).astype(np.float32)
    with h5py.File(tmp_path / "rows.h5", "w") as f:
        f["images"] = images
    r = cli("cuts", path, "--outputs", "probs", "--measure", "--data", tmp_path / "rows.h5", "--batch-size", 16,
            "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    measured = {c["tensor"]: c["measured"] for c in doc["cuts"] if c["measured"]}
    assert {"pool1:0", "pool2:0"} <= set(measured)  # where the rows shrink
    assert "conv1/relu:0" not in measured and not any(c["measured"] for c in doc["cuts"] if c["kind"] != "cut")
    pool2 = measured["pool2:0"]
    assert pool2["batch_size"] == 16 and pool2["offline_ms"] > 0 and pool2["online_ms"] > 0
    assert pool2["rows_compared"] == 100
    # the reported price of crossing as int8 is what the numpy formulas give on the same rows
    from surgery.passes.compress import int8_ranges, roundtrip

    gd = g.read_graph_def(path)
    (cut,) = run_graph_def(gd, {"images:0": images}, ["pool2:0"])
    graph = tf.Graph()
    with graph.as_default():
        ph = v1.placeholder(tf.float32, [None, 2, 2, 8])
        tf.import_graph_def(gd, input_map={"pool2:0": ph}, name="")
        with v1.Session(graph=graph) as sess:
            float_probs = sess.run("probs:0", {ph: cut})
            int8_probs = sess.run("probs:0", {ph: roundtrip(cut, "int8", *int8_ranges(cut))})
    # the rows are drawn in a fixed random order; the agreement is over the same set
    assert pool2["int8"]["agreement"] == np.mean(int8_probs.argmax(1) == float_probs.argmax(1))
    np.testing.assert_allclose(pool2["int8"]["max_abs_diff"], np.abs(int8_probs - float_probs).max(), rtol=1e-5)
    r = cli("cuts", path, "--outputs", "probs", "--measure")
    assert r.returncode == 0 and "ms/row" in r.stdout and "--data FILE" in r.stdout
    r = cli("cuts", path, "--outputs", "probs", "--data", tmp_path / "rows.h5")
    assert r.returncode == 2 and "--measure" in r.stderr


def test_plot_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = _model(vgg(), tmp_path)
    r = cli("cuts", path, "--outputs", "probs", "--plot", tmp_path / "cuts.png", "-q")
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "cuts.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_outputs_that_do_not_depend_on_the_inputs_are_refused():
    graph = tf.Graph()
    with graph.as_default():
        v1.placeholder(tf.float32, [None, 2], name="x")
        tf.identity(tf.constant([1.0]), name="y")
    with pytest.raises(SurgeryError, match="do not depend on the inputs"):
        separating_tensors(graph.as_graph_def(), ["x:0"], ["y:0"])


def test_keras_layer_names_are_shown(tmp_path):
    keras = pytest.importorskip("keras")
    inp = keras.Input((6,), name="features")
    h = keras.layers.Dense(8, activation="relu", name="hidden")(inp)
    out = keras.layers.Dense(3, name="logits")(h)
    path = str(tmp_path / "m.keras")
    keras.Model(inp, out).save(path)
    report = cuts(path, "logits")
    layers = {c.layer: c for c in report["cuts"] if c.layer and c.kind == "cut"}
    assert list(layers) == ["hidden"] and layers["hidden"].shape == [None, 8]
    assert os.path.exists(path)
