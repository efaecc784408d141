"""Every private TensorFlow API surgery uses lives in `surgery/core/tfcompat.py`; each is exercised here
on a tiny graph, so a TensorFlow release that moves or changes one fails this file by name."""

from __future__ import annotations

import os
import re

import numpy as np
from conftest import tf, v1

from surgery.core import tfcompat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_replace_variables_by_constants_turns_ref_and_resource_variables_into_consts():
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [2], name="x")
        ref = v1.Variable([1.0, 2.0], name="ref", use_resource=False)
        res = v1.Variable([3.0, 4.0], name="res", use_resource=True)
        tf.identity(x * ref + res, name="y")
    gd = v1.graph_util.extract_sub_graph(graph.as_graph_def(), ["y"])
    variables = {n.name: n for n in gd.node if n.op in ("VariableV2", "VarHandleOp")}
    converted = tfcompat.replace_variables_by_constants(gd, variables)
    ops = {n.name: n.op for n in converted.node}
    assert ops["ref"] == "Const" and ops["res"] == "Const"
    assert "ReadVariableOp" not in ops.values() and "VarHandleOp" not in ops.values()
    value = tf.make_ndarray(next(n for n in converted.node if n.name == "res").attr["value"].tensor)
    assert value.shape == () and value.dtype == np.float32  # the stand-in the caller replaces


def test_control_flow_context_and_ref_dtypes():
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.disable_control_flow_v2()
        try:
            p = v1.placeholder(tf.bool, [], name="p")
            out = tf.cond(p, lambda: tf.constant(1.0, name="one"), lambda: tf.constant(2.0))
        finally:
            tf.compat.v1.enable_control_flow_v2()
        inside = graph.get_operation_by_name("cond/one")
        assert tfcompat.control_flow_context(inside) is not None
        assert tfcompat.control_flow_context(out.op) is None
        ref = v1.Variable(1.0, use_resource=False)
    assert tfcompat.is_ref_dtype(ref.value().op.inputs[0].dtype) and not tfcompat.is_ref_dtype(tf.float32)


def test_tensor_content_types():
    assert tfcompat.has_tensor_content(tf.float32) and tfcompat.has_tensor_content(tf.int64)
    assert not tfcompat.has_tensor_content(tf.string)


def test_optimize_graph_runs_grappler():
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2

    graph = tf.Graph()
    with graph.as_default():
        tf.add(tf.constant(1.0), tf.constant(2.0), name="k")
    meta = v1.train.export_meta_graph(graph_def=graph.as_graph_def(), graph=graph)
    fetch = meta_graph_pb2.CollectionDef()
    fetch.node_list.value.append("k:0")
    meta.collection_def["train_op"].CopyFrom(fetch)
    config = config_pb2.ConfigProto()
    config.graph_options.rewrite_options.optimizers.append("constfold")
    config.graph_options.rewrite_options.min_graph_nodes = -1
    out = tfcompat.optimize_graph(config, meta)
    assert [n.op for n in out.node if n.name == "k"] == ["Const"]


def test_no_private_tensorflow_api_outside_tfcompat():
    """`tensorflow.python` imports and TensorFlow objects' `._private` members stay in tfcompat.py
    (precompute's and train's callable-from-options session path is the one known exception)."""
    private = re.compile(r"tensorflow\.python|\b(op|ctc|tensor_util|dtype|sess|session)\._[a-z]")
    allowed = {"tfcompat.py"}
    found = []
    for name in sorted(os.listdir(os.path.join(ROOT, "surgery"))):
        if not name.endswith(".py") or name in allowed:
            continue
        with open(os.path.join(ROOT, "surgery", name), encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if private.search(line) and "_make_callable_from_options" not in line:
                    found.append(f"{name}:{n}: {line.strip()}")
    assert not found, "private TensorFlow APIs outside tfcompat.py:\n" + "\n".join(found)


def test_save_slice_info_of_a_partitioned_variable():
    graph = tf.Graph()
    with graph.as_default():
        parts = list(v1.get_variable("w", [4, 2], partitioner=v1.fixed_size_partitioner(2)))
        plain = v1.get_variable("b", [2])
    infos = [tfcompat.save_slice_info(p) for p in parts]
    assert [i.full_name for i in infos] == ["w", "w"]
    assert [list(i.var_offset) for i in infos] == [[0, 0], [2, 0]] and list(infos[0].var_shape) == [2, 2]
    assert tfcompat.save_slice_info(plain) is None


def test_fold_batch_norms_folds_into_the_conv_and_keeps_the_numbers():
    from conftest import run_graph_def

    from surgery.core.graph import toposort

    rng = np.random.default_rng(0)
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [1, 4, 4, 2], name="x")
        conv = tf.nn.conv2d(x, tf.constant(rng.standard_normal((3, 3, 2, 3)), tf.float32), 1, "SAME", name="conv")
        stats = [tf.constant(v, tf.float32) for v in rng.uniform(0.5, 1.5, (4, 3))]
        y, _, _ = v1.nn.fused_batch_norm(conv, *stats, is_training=False, name="bn")
        tf.identity(y, name="y")
    gd = graph.as_graph_def()
    folded = tfcompat.fold_batch_norms(gd)
    assert not any(n.op.startswith("FusedBatchNorm") for n in folded.node)
    feed = {"x:0": rng.standard_normal((1, 4, 4, 2)).astype(np.float32)}
    np.testing.assert_allclose(run_graph_def(toposort(folded), feed, "y:0"), run_graph_def(gd, feed, "y:0"), rtol=1e-4,
                               atol=1e-5)
