"""Every MODEL form loads into one Model; bad paths and files are plain ModelLoadErrors."""

import os

import numpy as np
import pytest
from conftest import SMALL_CNN_PARAMS, tf, v1

from surgery import ModelLoadError, load_model


def _run(model, feed, fetch="probs:0"):
    """Run a loaded model's graph with its checkpoint restored (or as is when frozen)."""
    with v1.Session(graph=model.graph) as sess:
        if model.checkpoint:
            v1.train.Saver().restore(sess, model.checkpoint)
        return sess.run(fetch, {"images:0": feed})


def test_checkpoint_prefix_meta_and_directory(small_ckpt, sample_images):
    prefix, expected, _ = small_ckpt
    for path, fmt in [(prefix, "checkpoint"), (prefix + ".meta", "meta_graph"),
                      (os.path.dirname(prefix), "checkpoint_dir"), (prefix + ".index", "checkpoint")]:
        model = load_model(path)
        assert model.format == fmt, path
        assert model.checkpoint == prefix
        assert {v.name for v in model.variables()} >= {"net/conv1/weights", "net/fc2/biases"}
        np.testing.assert_allclose(_run(model, sample_images), expected, rtol=1e-6)


def test_checkpoint_keys_follow_the_saver(small_ckpt):
    model = load_model(small_ckpt[0])
    keys = model.checkpoint_keys()
    assert keys["net/fc1/weights"] == "net/fc1/weights"
    np.testing.assert_array_equal(model.read_variable("net/fc1/weights"),
                                  tf.train.load_variable(small_ckpt[0], "net/fc1/weights"))


def test_frozen_pb_and_pbtxt(small_frozen_pb, small_ckpt, sample_images):
    for path, fmt in zip(small_frozen_pb, ("frozen_pb", "frozen_pbtxt")):
        model = load_model(path)
        assert model.format == fmt and model.is_frozen and model.checkpoint is None
        assert model.variables() == []
        np.testing.assert_allclose(_run(model, sample_images), small_ckpt[1], rtol=1e-6)


def test_tf1_saved_model(small_saved_model, sample_images):
    directory, expected = small_saved_model
    model = load_model(directory)
    assert model.format == "saved_model"
    assert "serving_default" in model.signature_defs
    assert model.checkpoint == os.path.join(directory, "variables", "variables")
    np.testing.assert_allclose(_run(model, sample_images), expected, rtol=1e-6)


def test_tf1_saved_model_wrong_tag(small_saved_model):
    with pytest.raises(ModelLoadError, match="no meta graph tagged 'train'.*serve"):
        load_model(small_saved_model[0], tag_set="train")


def test_keras_saved_model_loads(keras_saved_model):
    model = load_model(keras_saved_model[0])
    assert model.format == "saved_model_tf2"
    assert sum(v.num_elements for v in model.variables()) == keras_saved_model[1]


def test_variable_shapes_of_ref_variables(small_ref_ckpt):
    model = load_model(small_ref_ckpt[0])
    shapes = {v.name: v.shape for v in model.variables()}
    assert shapes["net/conv1/weights"] == (3, 3, 3, 4)
    assert {v.op_type for v in model.variables()} == {"VariableV2"}
    assert sum(v.num_elements for v in model.variables()) == SMALL_CNN_PARAMS


@pytest.mark.parametrize("content,message", [
    (b"", "is empty"),
    (b"\x00\xffgarbage that is not a protobuf" * 10, "not a valid GraphDef|could not be imported"),
])
def test_bad_pb_files(tmp_path, content, message):
    path = tmp_path / "model.pb"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=message):
        load_model(str(path))


def test_truncated_pb(tmp_path, small_frozen_pb):
    data = open(small_frozen_pb[0], "rb").read()
    path = tmp_path / "cut.pb"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="cut.pb"):
        load_model(str(path))


def test_broken_pbtxt(tmp_path):
    path = tmp_path / "broken.pbtxt"
    path.write_text("node { name: 'a' op: ")
    with pytest.raises(ModelLoadError, match="not a valid GraphDef"):
        load_model(str(path))


def test_missing_path_suggests_close_names(tmp_path):
    (tmp_path / "model.pb").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="no such file") as e:
        load_model(str(tmp_path / "modle.pb"))
    assert "model.pb" in e.value.hint


def test_directory_with_no_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match="holds no model"):
        load_model(str(tmp_path))


def test_checkpoint_missing_data_shard(tmp_path, small_ckpt):
    import shutil

    prefix = small_ckpt[0]
    for f in os.listdir(os.path.dirname(prefix)):
        if f.startswith(os.path.basename(prefix) + ".") and ".data-" not in f:
            shutil.copy(os.path.join(os.path.dirname(prefix), f), tmp_path / f)
    with pytest.raises(ModelLoadError, match="missing its data shard"):
        load_model(str(tmp_path / os.path.basename(prefix)))


def test_checkpoint_without_meta(tmp_path, small_ckpt):
    import shutil

    prefix = small_ckpt[0]
    for f in os.listdir(os.path.dirname(prefix)):
        if f.startswith(os.path.basename(prefix) + ".") and not f.endswith(".meta"):
            shutil.copy(os.path.join(os.path.dirname(prefix), f), tmp_path / f)
    with pytest.raises(ModelLoadError, match="no .meta graph"):
        load_model(str(tmp_path / os.path.basename(prefix)))


def test_unknown_op_is_a_load_error(tmp_path):
    gd = v1.GraphDef()
    node = gd.node.add()
    node.name, node.op = "x", "NoSuchOpAnywhere"
    path = tmp_path / "unknown.pb"
    path.write_bytes(gd.SerializeToString())
    with pytest.raises(ModelLoadError, match="could not be imported"):
        load_model(str(path))
