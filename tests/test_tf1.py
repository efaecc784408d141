"""Models from the TF1 era as their authors left them (scripts/tf1_tagger.py builds one): stale
`_output_shapes`, a `checkpoint` file naming the author's machine, a prefix ending in `/`,
`is_training`/`keep_prob` placeholders, Adam. Everything is checked against plain TensorFlow
fed `is_training=False`."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
from conftest import cli, run_cli, run_graph_def, tf, v1
from tf1_tagger import build_tagger

from surgery.core.errors import SurgeryError
from surgery.core.graph import read_graph_def
from surgery.core.model import load_model
from surgery.core.names import dropped_nodes
from surgery.passes.bind import bind, take_constant_switches
from surgery.passes.freeze import freeze_model

OUT = "model/Sigmoid"
PENULTIMATE = "model/penultimate/Relu"
SET = ("--set", "is_training=false")


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    """The tagger with a `checkpoint` file that names the author's machine."""
    directory = str(tmp_path_factory.mktemp("tagger"))
    return build_tagger(directory, foreign_checkpoint_path="/home/author/tagger/model.ckpt-1200")


@pytest.fixture(scope="module")
def slash_tagger(tmp_path_factory):
    """The tagger saved with a prefix that ends in `/` (files `.index`, `.data-…`, `.meta`), no state file."""
    directory = str(tmp_path_factory.mktemp("slash"))
    built = build_tagger(os.path.join(directory, "tagger"), prefix_name="")
    os.remove(os.path.join(directory, "tagger", "checkpoint"))
    return built


def _graph_def(path):
    return read_graph_def(str(path))


def test_plain_tensorflow_refuses_the_aged_meta_graph(tagger):
    """The fixture is what the issue describes: today's import_meta_graph fails on it."""
    assert tagger["stale"] == 2
    with tf.Graph().as_default(), pytest.raises(ValueError, match="_output_shapes"):
        v1.train.import_meta_graph(tagger["prefix"] + ".meta")


def test_inspect_shows_the_real_output_and_the_training_switches(tagger):
    r = cli("inspect", os.path.dirname(tagger["prefix"]), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    outputs = [t["name"] for t in doc["outputs"]]
    assert f"{OUT}:0" in outputs and len(outputs) <= 3, outputs
    assert not any(k in n for n in outputs for k in ("Switch", "Merge", "pred_id", "switch_t", "switch_f"))
    switches = {s["name"]: s["set"] for s in doc["training_switches"]}
    assert switches["is_training"] == "--set is_training=false"
    assert switches["keep_prob"] == "--set keep_prob=1.0"
    text = cli("inspect", os.path.dirname(tagger["prefix"])).stdout
    assert "--set is_training=false" in text and "<unknown rank>" in text


def test_verbose_names_each_dropped_attribute(tagger):
    r = run_cli("-v", "inspect", tagger["prefix"])
    assert r.returncode == 0
    assert "_output_shapes" in r.stderr


def test_freeze_with_set_has_one_placeholder_and_no_switches(tagger, tmp_path):
    out = tmp_path / "tagger.pb"
    r = cli("freeze", os.path.dirname(tagger["prefix"]), "--outputs", OUT, *SET, "--optimize", "--out", out)
    assert r.returncode == 0, r.stderr
    gd = _graph_def(out)
    assert [n.name for n in gd.node if n.op == "Placeholder"] == ["x"]
    assert not [n for n in gd.node if n.op in ("Switch", "Merge", "If", "StatelessIf")]
    got = run_graph_def(gd, {"x:0": tagger["x"]}, f"{OUT}:0")
    np.testing.assert_allclose(got, tagger["expected"], atol=1e-5)


def test_freeze_without_optimize_also_keeps_only_the_taken_branch(tagger):
    model = bind(load_model(tagger["prefix"]), {"is_training": "false", "keep_prob": "1.0"})
    frozen = freeze_model(model, OUT)
    assert [t.name for t in frozen.inputs] == ["x:0"]
    assert not [n for n in frozen.graph_def.node if n.op in ("Switch", "Merge")]
    got = run_graph_def(frozen.graph_def, {"x:0": tagger["x"]}, f"{OUT}:0")
    np.testing.assert_allclose(got, tagger["expected"], atol=1e-5)


def test_split_feeds_the_cut_alone_and_precompute_equals_plain_tensorflow(tagger, tmp_path):
    pieces, emb, data = tmp_path / "pieces", tmp_path / "emb.h5", tmp_path / "x.h5"
    r = cli("split", tagger["prefix"], "--cut", PENULTIMATE, "--outputs", OUT, *SET, "--out", pieces)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((pieces / "manifest.json").read_text())
    assert [t["name"] for t in manifest["pieces"]["online"]["inputs"]] == [f"{PENULTIMATE}:0"]
    assert [t["name"] for t in manifest["pieces"]["offline"]["inputs"]] == ["x:0"]
    assert manifest["source"]["set"] == {"is_training": False}
    assert "boolNone" not in r.stdout
    with h5py.File(data, "w") as f:
        f["x"] = tagger["x"]
    r = cli("precompute", pieces, "--data", data, "--key", "x", "--out", emb)
    assert r.returncode == 0, r.stderr
    with h5py.File(emb) as f:
        np.testing.assert_allclose(f["embeddings"][:], tagger["penultimate"], atol=1e-5)
    online = _graph_def(pieces / "online.pb")
    got = run_graph_def(online, {f"{PENULTIMATE}:0": tagger["penultimate"]}, f"{OUT}:0")
    np.testing.assert_allclose(got, tagger["expected"], atol=1e-5)


def test_precompute_binds_a_model_directly(tagger, tmp_path):
    data, emb = tmp_path / "x.h5", tmp_path / "emb.h5"
    with h5py.File(data, "w") as f:
        f["x"] = tagger["x"]
    r = cli("precompute", tagger["prefix"], "--outputs", PENULTIMATE, *SET, "--set", "keep_prob=1",
            "--data", data, "--key", "x", "--out", emb)
    assert r.returncode == 0, r.stderr
    with h5py.File(emb) as f:
        np.testing.assert_allclose(f["embeddings"][:], tagger["penultimate"], atol=1e-5)


def test_finetune_a_new_head_on_the_penultimate_layer(tagger, tmp_path):
    """Labels linear in the penultimate layer (as fed is_training=False): the head must learn them."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((tagger["penultimate"].shape[1], 3))
    y = np.argmax(tagger["penultimate"] @ w, axis=1)
    data = tmp_path / "task.h5"
    with h5py.File(data, "w") as f:
        f["x"], f["y"] = tagger["x"], y
    out = tmp_path / "ft"
    r = cli("finetune", tagger["prefix"], "--at", PENULTIMATE, *SET, "--head", "dense:3", "--data", data,
            "--x", "x", "--y", "y", "--epochs", "40", "--lr", "0.05", "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["val_accuracy"] >= 0.85, doc["val_accuracy"]
    frozen = _graph_def(out / "frozen.pb")
    assert [n.name for n in frozen.node if n.op == "Placeholder"] == ["x"]
    assert not [n for n in frozen.node if n.op in ("Switch", "Merge")]


@pytest.mark.parametrize("which", ["tagger", "slash_tagger"])
def test_prefix_ending_in_slash_and_foreign_checkpoint_paths_load(which, request, tmp_path):
    built = request.getfixturevalue(which)
    directory = os.path.dirname(built["prefix"]) if which == "tagger" else built["prefix"]
    for model in {directory, built["prefix"]}:
        r = cli("freeze", model, "--outputs", OUT, *SET, "--out", tmp_path / "f.pb")
        assert r.returncode == 0, (model, r.stderr)
        got = run_graph_def(_graph_def(tmp_path / "f.pb"), {"x:0": built["x"]}, f"{OUT}:0")
        np.testing.assert_allclose(got, built["expected"], atol=1e-5)
    r = cli("restore", built["prefix"], "--from", directory, "--out", tmp_path / "r" / "model.ckpt")
    assert r.returncode == 0, r.stderr
    r = cli("export", directory, "--outputs", OUT, *SET, "--saved-model", tmp_path / "sm")
    assert r.returncode == 0, r.stderr
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    got = loaded.signatures["serving_default"](tf.constant(built["x"]))
    np.testing.assert_allclose(next(iter(got.values())).numpy(), built["expected"], atol=1e-5)


def test_set_refuses_a_non_placeholder_or_a_wrong_value(tagger, tmp_path):
    out = tmp_path / "f.pb"
    r = cli("freeze", tagger["prefix"], "--outputs", OUT, "--set", f"{OUT}=1", "--out", out)
    assert r.returncode == 2 and "not a placeholder" in r.stderr and "is_training" in r.stderr
    r = cli("freeze", tagger["prefix"], "--outputs", OUT, "--set", "is_training=maybe", "--out", out)
    assert r.returncode == 2 and "'is_training' is a bool placeholder" in r.stderr
    r = cli("freeze", tagger["prefix"], "--outputs", OUT, "--set", "keep_prob=high", "--out", out)
    assert r.returncode == 2 and "float32 placeholder" in r.stderr
    r = cli("freeze", tagger["prefix"], "--outputs", OUT, "--set", "is_training", "--out", out)
    assert r.returncode == 2 and "T=VALUE" in r.stderr
    assert not out.exists()


def _rewrite_meta(prefix: str, edit) -> None:
    meta = v1.MetaGraphDef()
    with open(prefix + ".meta", "rb") as f:
        meta.ParseFromString(f.read())
    edit(meta.graph_def)
    with open(prefix + ".meta", "wb") as f:
        f.write(meta.SerializeToString())


def test_optimizer_ops_this_tensorflow_lacks_are_left_out(tmp_path):
    built = build_tagger(str(tmp_path / "t"), steps=5)

    def age(gd):
        for node in gd.node:
            if node.op == "ApplyAdam":
                node.op = "ApplyAdamV0"  # removed since: not in this TensorFlow's registry
            elif node.op == "FusedBatchNormGradV3" and node.name.endswith("FusedBatchNormV3_grad/FusedBatchNormGradV3"):
                node.input.append("x")  # changed arity: the NodeDef no longer matches the op
    _rewrite_meta(built["prefix"], age)
    model = load_model(built["prefix"])
    dropped = dropped_nodes(model.graph)
    assert any("ApplyAdamV0" in why for why in dropped.values())
    assert "train_op" in dropped  # it waited on the updates
    frozen = freeze_model(bind(model, {"is_training": False}), OUT)
    got = run_graph_def(frozen.graph_def, {"x:0": built["x"]}, f"{OUT}:0")
    np.testing.assert_allclose(got, built["expected"], atol=1e-5)
    r = cli("freeze", built["prefix"], "--outputs", "train_op", "--out", tmp_path / "f.pb")
    assert r.returncode == 2
    assert "ApplyAdamV0" in r.stderr and "1.12.0" in r.stderr
    r = run_cli("-v", "inspect", built["prefix"])  # a process of its own: -v sets up logging once
    assert r.returncode == 0 and "left out" in r.stderr


def test_a_model_op_this_tensorflow_lacks_is_refused_by_name(tmp_path):
    built = build_tagger(str(tmp_path / "t"), steps=5)

    def age(gd):
        for node in gd.node:
            if node.name == "model/Sigmoid":
                node.op = "HardSigmoidV0"
    _rewrite_meta(built["prefix"], age)
    r = cli("freeze", built["prefix"], "--outputs", OUT, "--out", tmp_path / "f.pb")
    assert r.returncode == 2
    assert "HardSigmoidV0" in r.stderr and "TensorFlow 1.12.0" in r.stderr
    assert not (tmp_path / "f.pb").exists()


# ---------------------------------------------------------------- the binding pass on small graphs

def _v1_cond_graph():
    graph = tf.Graph()
    v2 = v1.control_flow_v2_enabled()
    v1.disable_control_flow_v2()
    try:
        with graph.as_default():
            x = v1.placeholder(tf.float32, [None, 3], name="x")
            flag = v1.placeholder(tf.bool, [], name="flag")
            y = tf.cond(flag, lambda: x * 2.0, lambda: x - 1.0)
            tf.cond(tf.logical_not(flag), lambda: y + 10.0, lambda: y * 3.0, name="outer")
            tf.identity(tf.cond(flag, lambda: y, lambda: y * 0.5) + 1.0, name="out")
    finally:
        if v2:
            v1.enable_control_flow_v2()
    return graph


@pytest.mark.parametrize("value", [True, False])
def test_constant_switches_keep_the_taken_branch(value):
    """Nested and negated v1 conds: the pass gives plain TensorFlow's answer, with no Switch/Merge."""
    graph = _v1_cond_graph()
    model = load_model(graph)
    bound = bind(model, {"flag": value})
    ops = {n.op for n in bound.graph_def.node}
    assert not ops & {"Switch", "Merge"}
    assert "flag" not in [n.name for n in bound.graph_def.node if n.op == "Placeholder"]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with v1.Session(graph=graph) as sess:
        expected = sess.run(["outer/Merge:0", "out:0"], {"x:0": x, "flag:0": value})
    with v1.Session(graph=bound.graph) as sess:
        got = sess.run(["outer/Merge:0", "out:0"], {"x:0": x})
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def test_functional_if_and_case_take_their_branch():
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None], name="x")
        flag = v1.placeholder_with_default(True, [], name="flag")
        k = v1.placeholder(tf.int32, [], name="k")
        y = tf.cond(flag, lambda: x + 1.0, lambda: x - 1.0)
        tf.identity(tf.switch_case(k, [lambda: y * 2.0, lambda: y * 3.0, lambda: y * 4.0]), name="out")
    bound = bind(load_model(graph), {"flag": "false", "k": "1"})
    assert not {n.op for n in bound.graph_def.node} & {"If", "StatelessIf", "Case", "StatelessCase"}
    with v1.Session(graph=bound.graph) as sess:
        np.testing.assert_allclose(sess.run("out:0", {"x:0": [1.0, 2.0]}), [0.0, 3.0])


def test_take_constant_switches_leaves_graphs_without_constant_predicates_alone():
    gd = _v1_cond_graph().as_graph_def()
    assert take_constant_switches(gd) is gd


def test_set_values_follow_the_placeholder_shape():
    graph = tf.Graph()
    with graph.as_default():
        s = v1.placeholder(tf.float32, [3], name="scale")
        x = v1.placeholder(tf.float32, [None, 3], name="x")
        tf.identity(x * s, name="out")
    model = load_model(graph)
    with v1.Session(graph=bind(model, {"scale": "1,2,3"}).graph) as sess:
        np.testing.assert_allclose(sess.run("out:0", {"x:0": np.ones((1, 3))}), [[1, 2, 3]])
    with v1.Session(graph=bind(model, {"scale": "2"}).graph) as sess:  # one value fills a known shape
        np.testing.assert_allclose(sess.run("out:0", {"x:0": np.ones((1, 3))}), [[2, 2, 2]])
    with pytest.raises(SurgeryError, match=r"shape \[3\]"):
        bind(model, {"scale": "1,2"})


def test_split_verifies_a_graph_that_takes_strings(tmp_path):
    """A TF1 SavedModel fed serialized strings (as TF Serving's half_plus_three is): the
    verification child carries string feeds."""
    export = str(tmp_path / "sm")
    graph = tf.Graph()
    with graph.as_default():
        text = v1.placeholder(tf.string, [None], name="text")
        x = tf.strings.to_number(text, name="x")
        a = v1.get_variable("a", initializer=0.5, use_resource=False)
        y = tf.identity(tf.multiply(a, x, name="Mul") + 3.0, name="y")
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(export)
            sig = v1.saved_model.predict_signature_def({"text": text}, {"y": y})
            builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": sig})
            builder.save()
    r = cli("split", export, "--cut", "Mul:0", "--outputs", "y:0", "--out", tmp_path / "p")
    assert r.returncode == 2 and "--verify-data" in r.stderr  # no random strings: refused, never exit 1
    rows = tmp_path / "text.h5"  # variable-length strings: h5py reads them as a numpy object array
    with h5py.File(rows, "w") as f:
        f.create_dataset("text", data=np.array([b"1.5", b"-2", b"40"], dtype=object), dtype=h5py.string_dtype())
    r = cli("split", export, "--cut", "Mul:0", "--outputs", "y:0", "--verify", "3", "--verify-data", rows,
            "--out", tmp_path / "p")
    assert r.returncode == 0, r.stderr
    assert "verified on 3 given inputs" in r.stdout
