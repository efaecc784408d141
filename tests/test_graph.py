"""The GraphDef toolkit (`surgery.core.graph`), one verb at a time, on graphs of three to five nodes;
where a graph runs, its numbers are checked against plain TensorFlow."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_graph_def, tf, v1

from surgery.core import graph as g
from surgery.core.errors import CutError, ModelLoadError, OutputError

X = np.array([[-1.0, 0.5, 2.0], [3.0, -4.0, 0.0]], np.float32)


def small():
    """x ─► a = x·2 ─► b = Identity(a) ─► c = Relu(b), with a control edge a ─► c; `two` is a Const."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 3], name="x")
        a = tf.multiply(x, tf.constant(2.0, name="two"), name="a")
        b = tf.identity(a, name="b")
        with tf.control_dependencies([a.op]):
            tf.nn.relu(b, name="c")
    return graph.as_graph_def(), graph


def names(graph_def):
    return [n.name for n in graph_def.node]


def inputs(graph_def, name):
    return list(next(n for n in graph_def.node if n.name == name).input)


def test_index_lists_data_and_control_consumers():
    gd, _ = small()
    index = g.Index(gd)
    assert index["a"].op == "Mul" and "zzz" not in index
    assert [(n.name, slot) for n, slot in index.consumers("a")] == [("b", 0)]
    assert [n.name for n in index.control_consumers("a")] == ["c"]
    assert [(n.name, slot) for n, slot in index.consumers("two")] == [("a", 1)]
    assert [n.name for n, _ in index.tensor_consumers("a:0")] == ["b"]
    assert index.tensor_consumers("a:1") == []
    assert index.inputs("c") == ["b", "^a"] and index.inputs("c", control=False) == ["b"]


def test_ancestors_with_stop_and_without_control_edges():
    gd, graph = small()
    assert g.ancestors(gd, ["c"]) == {"c", "b", "a", "x", "two"}
    assert g.ancestors(gd, ["c:0"], stop=["b:0"]) == {"c", "a", "x", "two"}  # through the control edge only
    assert g.ancestors(gd, ["c:0"], stop=["b:0"], control=False) == {"c"}
    assert g.ancestors(gd, ["b:0"], stop=["b:0"]) == set()
    assert g.ancestors(gd, ["missing", "a"]) == {"a", "x", "two"}
    assert g.ancestors(gd, ["c"], where=lambda name: name != "a") == {"c", "b"}
    # the same walk over an imported tf.Graph, roots given as tensors
    assert g.ancestors(graph, [graph.get_tensor_by_name("c:0")], stop=["a:0"]) == {"c", "b", "a", "x", "two"}
    assert g.ancestors(graph, [graph.get_tensor_by_name("b:0")], stop=["a:0"]) == {"b"}


def test_descendants_follow_data_edges_and_respect_where():
    gd, _ = small()
    assert g.descendants(gd, ["x"]) == {"x", "a", "b", "c"}
    assert g.descendants(gd, ["x"], where=lambda name: name != "b") == {"x", "a"}
    assert g.descendants(gd, ["two"], control=True) == {"two", "a", "b", "c"}


def test_replace_uses_rewires_data_inputs_only_where_asked():
    gd, _ = small()
    out = g.replace_uses(gd, {"b:0": "a:0"})
    assert inputs(out, "c") == ["a", "^a"] and inputs(gd, "c") == ["b", "^a"]  # the input is not changed
    np.testing.assert_allclose(run_graph_def(out, {"x:0": X}, "c:0"), np.maximum(X * 2, 0))
    # the Const `two` feeds `c` instead of `b`: only in the nodes named
    out = g.replace_uses(gd, {"b": "two:0"}, only={"c"})
    assert inputs(out, "c") == ["two", "^a"]
    assert run_graph_def(out, {"x:0": X}, "c:0") == 2.0


def test_bypass_removes_identities_and_moves_their_control_edges():
    gd, _ = small()
    gd.node.add(name="d", op="NoOp", input=["^b"])
    out = g.bypass(gd, lambda n: n.op == "Identity")
    assert "b" not in names(out)
    assert inputs(out, "c") == ["a", "^a"] and inputs(out, "d") == ["^a"]
    np.testing.assert_allclose(run_graph_def(out, {"x:0": X}, "c:0"), np.maximum(X * 2, 0))
    kept = g.bypass(gd, lambda n: n.op == "Identity", keep={"b"})
    assert "b" in names(kept)


def test_bypass_follows_chains():
    gd, _ = small()
    chained = g.replace_uses(gd, {"b:0": "b2:0"})
    node = chained.node.add(name="b2", op="Identity", input=["b"])
    node.attr["T"].type = tf.float32.as_datatype_enum
    out = g.bypass(chained, lambda n: n.op == "Identity")
    assert inputs(out, "c") == ["a", "^a"]


def test_remove_drops_nodes_and_control_edges_on_them():
    gd, _ = small()
    out = g.remove(gd, ["a"])
    assert "a" not in names(out)
    assert inputs(out, "c") == ["b"] and inputs(out, "b") == ["a"]  # the data use is the caller's


def test_drop_control_edges_keeps_the_nodes():
    gd, _ = small()
    out = g.drop_control_edges(gd, ["a"])
    assert names(out) == names(gd) and inputs(out, "c") == ["b"] and inputs(gd, "c") == ["b", "^a"]


def test_cut_makes_typed_shaped_placeholders_and_returns_the_name_map():
    gd, graph = small()
    out, names_map = g.cut(gd, [graph.get_tensor_by_name("a:0")])
    assert names_map == {"a:0": "a:0"}  # output 0 is fed under its own name
    ph = next(n for n in out.node if n.name == "a")
    assert ph.op == "Placeholder" and ph.attr["dtype"].type == tf.float32.as_datatype_enum
    assert tf.TensorShape(ph.attr["shape"].shape).as_list() == [None, 3]
    assert inputs(out, "c") == ["b"]  # the control edge on the cut op goes
    out = g.prune(out, ["c:0"])
    assert sorted(names(out)) == ["a", "b", "c"]
    feed = np.array([[1.0, -2.0, 3.0]], np.float32)
    np.testing.assert_allclose(run_graph_def(out, {"a:0": feed}, "c:0"), np.maximum(feed, 0))


def test_cut_by_name_and_a_placeholder_stays():
    gd, _ = small()
    out, names_map = g.cut(gd, ["b", "x:0"])
    assert names_map == {"b:0": "b:0", "x:0": "x:0"}
    assert next(n for n in out.node if n.name == "x").op == "Placeholder"
    b = next(n for n in out.node if n.name == "b")
    assert b.op == "Placeholder" and tf.TensorShape(b.attr["shape"].shape).as_list() == [None, 3]


def test_cut_of_a_second_output_gets_its_own_placeholder():
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [4], name="x")
        parts = tf.split(x, 2, name="s")
        tf.add(parts[0], parts[1], name="y")
    gd = graph.as_graph_def()
    out, names_map = g.cut(gd, ["s:0", "s:1"])  # the op goes, so every output it feeds is cut
    assert names_map == {"s:0": "s:0", "s:1": "s_1:0"}
    out = g.prune(out, ["y"])
    assert sorted(names(out)) == ["s", "s_1", "y"]
    got = run_graph_def(out, {"s:0": np.array([1.0, 2.0], np.float32), "s_1:0": np.array([10.0, 20.0], np.float32)},
                        "y:0")
    np.testing.assert_allclose(got, [11.0, 22.0])


def test_prune_keeps_what_outputs_need_and_names_a_bad_output():
    gd, _ = small()
    assert sorted(names(g.prune(gd, ["a:0"]))) == ["a", "two", "x"]
    assert sorted(names(g.prune(gd, ["c"]))) == ["a", "b", "c", "two", "x"]
    with pytest.raises(CutError, match="nope"):
        g.prune(gd, ["nope:0"])


def test_rename_nodes_and_scopes_with_every_reference():
    gd, _ = small()
    out = g.rename(gd, {"a": "scaled", "b": "copy"})
    assert names(out) == ["x", "two", "scaled", "copy", "c"]
    assert inputs(out, "c") == ["copy", "^scaled"]
    np.testing.assert_allclose(run_graph_def(out, {"x:0": X}, "c:0"), np.maximum(X * 2, 0))
    graph = tf.Graph()
    with graph.as_default():
        with tf.name_scope("net"):
            x = v1.placeholder(tf.float32, [2], name="x")
            y = tf.square(x, name="y")
        tf.identity(y, name="out")
    out = g.rename(graph.as_graph_def(), {"net/": "tower/"})
    assert names(out) == ["tower/x", "tower/y", "out"]
    np.testing.assert_allclose(run_graph_def(out, {"tower/x:0": [2.0, 3.0]}, "out:0"), [4.0, 9.0])


def test_toposort_puts_inputs_first_and_keeps_graph_order_otherwise():
    gd, _ = small()
    shuffled = g.empty_like(gd)
    shuffled.node.extend(reversed(gd.node))  # c, b, a, two, x
    out = g.toposort(shuffled)
    assert names(out) == ["two", "x", "a", "b", "c"]
    np.testing.assert_allclose(run_graph_def(out, {"x:0": X}, "c:0"), np.maximum(X * 2, 0))
    assert names(g.toposort(gd)) == names(gd)


def test_clear_devices_in_place():
    gd, _ = small()
    gd.node[2].device = "/device:GPU:0"
    gd.node[2].attr["_class"].list.s.append(b"loc:@x")
    assert g.clear_devices(gd) is gd
    assert all(not n.device and "_class" not in n.attr for n in gd.node)


def test_graph_def_files_round_trip_binary_text_and_streamed(tmp_path):
    gd, _ = small()
    size = g.write_graph_def(gd, str(tmp_path / "g.pb"))
    assert size == gd.ByteSize() and (tmp_path / "g.pb").read_bytes() == gd.SerializeToString()
    assert g.read_graph_def(str(tmp_path / "g.pb")) == gd
    g.write_graph_def(gd, str(tmp_path / "g.pbtxt"), text=True)
    assert g.read_graph_def(str(tmp_path / "g.pbtxt")) == gd  # text by the suffix

    # a large constant streamed from its array equals TensorFlow's own encoding
    value = np.arange(40_000, dtype=np.float32).reshape(200, 200)
    stub = v1.NodeDef(name="w", op="Const")
    stub.attr["dtype"].type = tf.float32.as_datatype_enum
    data = b"".join(bytes(c) for c in g.const_node_chunks(stub, value))
    parsed = v1.GraphDef()
    parsed.ParseFromString(data)
    np.testing.assert_array_equal(tf.make_ndarray(parsed.node[0].attr["value"].tensor), value)


def test_reading_a_bad_file_is_a_plain_error(tmp_path):
    (tmp_path / "junk.pb").write_bytes(b"\xff\xff\xff not a proto")
    with pytest.raises(ModelLoadError, match="not a valid GraphDef"):
        g.read_graph_def(str(tmp_path / "junk.pb"))
    (tmp_path / "empty.pb").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="is empty"):
        g.read_graph_def(str(tmp_path / "empty.pb"))
    with pytest.raises(ModelLoadError, match="cannot read"):
        g.read_graph_def(str(tmp_path / "missing.pb"))
    gd, _ = small()
    two = next(n for n in gd.node if n.name == "two")
    two.attr["value"].tensor.tensor_shape.dim.add(size=2**20)
    two.attr["value"].tensor.tensor_shape.dim.add(size=2**20)
    (tmp_path / "hostile.pb").write_bytes(gd.SerializeToString())
    with pytest.raises(ModelLoadError, match="declares"):
        g.read_graph_def(str(tmp_path / "hostile.pb"))


def test_write_refuses_over_the_limit_and_leaves_nothing(tmp_path, monkeypatch):
    gd, _ = small()
    monkeypatch.setattr(g, "MAX_GRAPHDEF_BYTES", 10)
    with pytest.raises(OutputError, match="2 GB"):
        g.write_graph_def(gd, str(tmp_path / "g.pb"))
    assert list(tmp_path.iterdir()) == []


def test_graph_from_def_and_tensor_spec():
    from surgery.core.pieces import TensorSpec

    gd, _ = small()
    graph = g.graph_from_def(gd)
    spec = TensorSpec.of(graph.get_tensor_by_name("a:0"))
    assert spec == TensorSpec("a:0", "float32", (None, 3)) and spec.op == "a"
    assert spec.as_dict() == {"name": "a:0", "dtype": "float32", "shape": [None, 3]}
    assert TensorSpec.from_dict(spec.as_dict()) == spec
    with v1.Session(graph=graph) as sess:
        np.testing.assert_allclose(sess.run("c:0", {"x:0": X}), np.maximum(X * 2, 0))


def test_likely_output_nodes_ignore_machinery_consumers():
    gd, _ = small()
    assert g.likely_output_nodes(gd) == ["c"]
    gd.node.add(name="save/SaveV2", op="SaveV2", input=["c"])  # a saver reading c leaves c an output
    assert g.likely_output_nodes(gd) == ["c"]
    gd.node.add(name="d", op="Neg", input=["c"])
    assert g.likely_output_nodes(gd) == ["d"]


def test_grappler_folds_constants_and_keeps_the_answer():
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [2], name="x")
        k = tf.add(tf.constant(1.0), tf.constant(2.0), name="k")
        tf.multiply(x, k, name="y")
    out = g.grappler(graph.as_graph_def(), ["x:0"], ["y:0"], passes=("constfold",))
    assert "Add" not in {n.op for n in out.node}
    np.testing.assert_allclose(run_graph_def(out, {"x:0": [1.0, 2.0]}, "y:0"), [3.0, 6.0])
