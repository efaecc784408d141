"""Freeze: a frozen graph answers like the checkpoint, holds no variables or training nodes."""

import numpy as np
import pytest
from conftest import run_cli, tf, v1

from surgery import CutError, freeze_model, load_model, write_graph_def
from surgery.errors import OutputError
from surgery.names import VARIABLE_OP_TYPES


def _run_graph_def(graph_def, feeds, fetch):
    g = tf.Graph()
    with g.as_default():
        tf.import_graph_def(graph_def, name="")
    with v1.Session(graph=g) as sess:
        return sess.run(fetch, feeds)


@pytest.mark.parametrize("fixture", ["small_ckpt", "small_ref_ckpt"])
def test_frozen_answers_like_the_checkpoint(request, fixture, sample_images):
    prefix, expected, tf_frozen = request.getfixturevalue(fixture)
    frozen = freeze_model(load_model(prefix), "probs")
    ops = {n.op for n in frozen.graph_def.node}
    assert not ops & (VARIABLE_OP_TYPES | {"Assign", "AssignVariableOp", "SaveV2", "RestoreV2", "ReadVariableOp"})
    assert not any(n.name.startswith(("save", "gradients", "Adam")) for n in frozen.graph_def.node)
    got = _run_graph_def(frozen.graph_def, {"images:0": sample_images}, "probs:0")
    np.testing.assert_array_equal(got, expected)
    ref = _run_graph_def(tf_frozen, {"images:0": sample_images}, "probs:0")
    np.testing.assert_array_equal(got, ref)  # same as TensorFlow's own freeze
    assert frozen.inputs == [{"name": "images:0", "dtype": "float32", "shape": [None, 8, 8, 3]}]
    assert frozen.outputs == [{"name": "probs:0", "dtype": "float32", "shape": [None, 5]}]


def test_inputs_cut_into_placeholders(small_ckpt, sample_images):
    prefix, expected, _ = small_ckpt
    model = load_model(prefix)
    with v1.Session(graph=model.graph) as sess:
        v1.train.Saver().restore(sess, prefix)
        fc1 = sess.run("net/fc1/Relu:0", {"images:0": sample_images})
    frozen = freeze_model(model, "probs", inputs="net/fc1/Relu")
    assert frozen.inputs == [{"name": "net/fc1/Relu:0", "dtype": "float32", "shape": [None, 16]}]
    assert not any(n.name.startswith("net/conv1") for n in frozen.graph_def.node)
    got = _run_graph_def(frozen.graph_def, {"net/fc1/Relu:0": fc1}, "probs:0")
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_refreeze_a_frozen_graph(small_frozen_pb, small_ckpt, sample_images):
    frozen = freeze_model(load_model(small_frozen_pb[0]), "net/fc2/logits")
    assert "probs" not in {n.name for n in frozen.graph_def.node}
    logits = _run_graph_def(frozen.graph_def, {"images:0": sample_images}, "net/fc2/logits:0")
    np.testing.assert_allclose(tf.nn.softmax(logits).numpy(), small_ckpt[1], rtol=1e-5)


def test_cut_that_leaves_another_output_of_the_op_used(tmp_path):
    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tf.float32, [None, 4], name="x")
        a, b = tf.split(x, 2, axis=1, name="halves")
        tf.add(a, b, name="out")
    gd_path = tmp_path / "g.pb"
    gd_path.write_bytes(g.as_graph_def().SerializeToString())
    with pytest.raises(CutError, match="halves:1"):
        freeze_model(load_model(str(gd_path)), "out", inputs="halves:0")


def test_meta_without_checkpoint_is_refused(tmp_path, small_ckpt):
    import shutil

    shutil.copy(small_ckpt[0] + ".meta", tmp_path / "lonely.meta")
    with pytest.raises(Exception, match="no checkpoint"):
        freeze_model(load_model(str(tmp_path / "lonely.meta")), "probs")


def test_write_is_atomic_and_refuses_over_2gb(tmp_path, small_frozen_pb):
    import surgery.freeze as freeze

    gd = load_model(small_frozen_pb[0]).graph_def
    target = tmp_path / "out.pb"
    target.write_bytes(b"previous")
    old_limit = freeze.MAX_GRAPHDEF_BYTES
    freeze.MAX_GRAPHDEF_BYTES = 100  # stand-in for 2 GB: the check runs before any byte is written
    try:
        with pytest.raises(OutputError, match="over the 2 GB limit"):
            write_graph_def(gd, str(target))
    finally:
        freeze.MAX_GRAPHDEF_BYTES = old_limit
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.pb"]
    write_graph_def(gd, str(target))
    assert target.read_bytes() == gd.SerializeToString()


def test_cli_freeze_round_trip(tmp_path, small_ckpt, sample_images):
    prefix, expected, _ = small_ckpt
    out = tmp_path / "frozen.pbtxt"
    r = run_cli("freeze", prefix, "--outputs", "probs:0", "--text", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "images:0" in r.stdout and "probs:0" in r.stdout
    gd = load_model(str(out)).graph_def
    np.testing.assert_array_equal(_run_graph_def(gd, {"images:0": sample_images}, "probs:0"), expected)


def test_cli_freeze_typo(tmp_path, small_ckpt):
    r = run_cli("freeze", small_ckpt[0], "--outputs", "prob", "--out", tmp_path / "x.pb")
    assert r.returncode == 2
    assert "'probs'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.pb").exists()
