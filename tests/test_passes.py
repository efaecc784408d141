"""The GraphDef passes built on `surgery.core.graph`, each on a graph of a few nodes, numbers checked
against plain TensorFlow: freeze's `strip_training_nodes`, optimize's `fix_training_flags`,
splice's `find_boundary` + `insert_boundary`."""

from __future__ import annotations

import numpy as np
from conftest import run_graph_def, tf, v1

from surgery.passes.freeze import strip_training_nodes
from surgery.passes.optimize import fix_training_flags
from surgery.passes.splice import find_boundary, insert_boundary

X = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32)
W = np.array([[2.0, 0.0], [1.0, -1.0]], np.float32)


def test_strip_training_nodes_splices_out_reads_and_checks():
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 2], name="x")
        with tf.device("/cpu:0"):
            w = tf.identity(tf.constant(W, name="w"), name="w/read")
        y = tf.debugging.check_numerics(tf.matmul(x, w, name="mm"), "bad", name="check")
        tf.identity(y, name="y")
    gd = graph.as_graph_def()
    out = strip_training_nodes(gd, protected={"y"}, constants={"w"})
    ops = {n.name: n for n in out.node}
    assert "w/read" not in ops and "check" not in ops and "y" in ops
    assert list(ops["mm"].input) == ["x", "w"] and not any(n.device for n in out.node)
    np.testing.assert_allclose(run_graph_def(out, {"x:0": X}, "y:0"), X @ W)
    kept = strip_training_nodes(gd, protected={"w/read"}, constants={"w"})
    assert "w/read" in {n.name for n in kept.node}


def test_fix_training_flags_sets_unfed_switches_to_their_default():
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 2], name="x")
        training = v1.placeholder_with_default(True, [], name="training")
        tf.where(training, x * 2.0, x, name="y")
    gd = graph.as_graph_def()
    out = fix_training_flags(gd)
    assert {n.name: n.op for n in out.node}["training"] == "Const"
    np.testing.assert_allclose(run_graph_def(out, {"x:0": X}, "y:0"), X * 2)
    kept = fix_training_flags(gd, keep=["training:0"])
    assert {n.name: n.op for n in kept.node}["training"] == "PlaceholderWithDefault"
    np.testing.assert_allclose(run_graph_def(kept, {"x:0": X, "training:0": False}, "y:0"), X)


def test_find_and_insert_boundary_below_an_opened_layer():
    """x ─► h = relu(x·w1) ─► at = h·w2: opening w2 puts the boundary on h, below `at`."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 2], name="x")
        h = tf.nn.relu(tf.matmul(x, tf.constant(W, name="w1")), name="h")
        tf.matmul(h, tf.constant(W.T, name="w2"), name="at")
    gd = graph.as_graph_def()
    assert find_boundary(gd, "at:0", []) == (["at:0"], set())
    boundary, region = find_boundary(gd, "at:0", ["w2"])
    assert boundary == ["h:0"] and region == {"w2", "at"}
    out, bottlenecks = insert_boundary(gd, boundary, region, {"h:0": (h.dtype, h.shape)}, "head")
    assert bottlenecks == ["head/bottleneck:0"]
    ops = {n.name: n for n in out.node}
    assert ops["head/boundary/stop_gradient"].op == "StopGradient" and list(ops["at"].input)[0].startswith("head/")
    expected = np.maximum(X @ W, 0) @ W.T
    np.testing.assert_allclose(run_graph_def(out, {"x:0": X}, "at:0"), expected)  # end to end by default
    cached = np.ones((2, 2), np.float32)
    np.testing.assert_allclose(run_graph_def(out, {"head/bottleneck:0": cached}, "at:0"), cached @ W.T)
