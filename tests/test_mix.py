"""Mixing models: two checkpointed graphs in one graph, each restoring its own weights; frozen
pieces composed back; a Keras 3 MobileNetV2 SavedModel cut at its global average pooling."""

import os

import numpy as np
import pytest
from conftest import run_graph_def, tf, v1

from surgery import RestoreError, SurgeryError, freeze_graph, freeze_model, load_model, resolve_tensor
from surgery.passes.mix import compose_frozen, mix_models


def _save_mlp(directory, seed):
    """A second model with the SAME variable names as the small CNN (`net/...`): `features` [?, 5] → `out`."""
    os.makedirs(directory, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(seed)
        x = v1.placeholder(tf.float32, [None, 5], name="features")
        with v1.variable_scope("net"):
            w = v1.get_variable("fc1/weights", [5, 3])
            b = v1.get_variable("fc1/biases", [3], initializer=v1.random_normal_initializer())
        out = tf.identity(tf.tanh(tf.matmul(x, w) + b), name="out")
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            prefix = v1.train.Saver().save(sess, os.path.join(directory, "mlp.ckpt"))
            probe = np.random.default_rng(5).normal(size=(4, 5)).astype(np.float32)
            values = {v.op.name: sess.run(v) for v in v1.global_variables()}
            np.testing.assert_allclose(sess.run(out, {x: probe}), _mlp_reference(values, probe), rtol=1e-5)
            return prefix, values


def _mlp_reference(values, feed):
    return np.tanh(feed @ values["net/fc1/weights"] + values["net/fc1/biases"])


@pytest.fixture(scope="module")
def mlp_ckpt(tmp_path_factory):
    prefix, values = _save_mlp(str(tmp_path_factory.mktemp("mlp")), seed=7)
    return prefix, values


def test_two_models_mixed_run_with_their_own_weights(small_ckpt, mlp_ckpt, sample_images):
    cnn_prefix, cnn_probs, _ = small_ckpt
    mlp_prefix, mlp_values = mlp_ckpt
    mixed = mix_models(cnn_prefix, mlp_prefix, connect={"features": "probs"}, scopes=("cnn", "mlp"))
    assert {v.op.name for v in mixed.variables("mlp")} == {"mlp/net/fc1/weights", "mlp/net/fc1/biases"}
    with v1.Session(graph=mixed.graph) as sess:
        counts = mixed.restore(sess)
        assert counts["mlp"] == 2 and counts["cnn"] >= 6  # the CNN's Adam slots come along
        got = sess.run(mixed.tensor("mlp/out"), {mixed.tensor("cnn/images"): sample_images})
        # both "net/fc1/weights" exist, each with its own checkpoint's values
        (cnn_w,) = [sess.run(v) for v in mixed.variables("cnn") if v.op.name == "cnn/net/fc1/weights"]
    np.testing.assert_allclose(cnn_w, tf.train.load_variable(cnn_prefix, "net/fc1/weights"))
    np.testing.assert_allclose(got, _mlp_reference(mlp_values, cnn_probs), rtol=1e-5, atol=1e-6)

    frozen = mixed.freeze("mlp/out")
    assert [t.name for t in frozen.inputs] == ["cnn/images:0"]
    np.testing.assert_allclose(run_graph_def(frozen.graph_def, {"cnn/images:0": sample_images}, "mlp/out:0"), got,
                               rtol=1e-6)


def test_mix_checks_dtype_shape_and_scopes(small_ckpt, mlp_ckpt):
    with pytest.raises(SurgeryError, match="cannot feed 'features:0'"):
        mix_models(small_ckpt[0], mlp_ckpt[0], connect={"features": "net/fc1/Relu"})
    with pytest.raises(SurgeryError, match="two different names"):
        mix_models(small_ckpt[0], mlp_ckpt[0], connect={"features": "probs"}, scopes=("a", "a"))


def test_mix_restore_names_a_missing_variable(small_ckpt, tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 5], name="features")
        w = v1.get_variable("head/weights", [5, 2])
        tf.matmul(x, w, name="out")
        v1.train.export_meta_graph(str(tmp_path / "head.meta"))
    with graph.as_default(), v1.Session() as sess:  # a checkpoint that lacks head/weights
        other = v1.get_variable("other", [1])
        sess.run(other.initializer)
        v1.train.Saver([other]).save(sess, str(tmp_path / "head"), write_meta_graph=False)
    mixed = mix_models(small_ckpt[0], str(tmp_path / "head"), connect={"features": "probs"})
    with v1.Session(graph=mixed.graph) as sess, pytest.raises(RestoreError, match="'head/weights'"):
        mixed.restore(sess)


def test_frozen_pieces_compose_back(small_ckpt, sample_images):
    model = load_model(small_ckpt[0])
    offline = freeze_model(model, "net/fc1/Relu")
    online = freeze_model(model, "probs", inputs="net/fc1/Relu")
    whole = compose_frozen(offline, online, connect={"net/fc1/Relu": "net/fc1/Relu"}, outputs="probs")
    got = run_graph_def(whole.graph_def, {whole.inputs[0].name: sample_images}, whole.outputs[0].name)
    np.testing.assert_allclose(got, small_ckpt[1], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- Keras 3 MobileNetV2

@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    """Keras 3 MobileNetV2 (alpha 0.35, 96×96, random weights) exported as a TF2 SavedModel:
    (directory, images, the Keras model's own predictions)."""
    from keras_models import export_saved_model, mobilenet_v2

    net = mobilenet_v2(size=96, classes=10, seed=0)
    directory = export_saved_model(net, tmp_path_factory.mktemp("mobilenet"))
    images = np.random.default_rng(0).uniform(-1, 1, size=(3, 96, 96, 3)).astype(np.float32)
    return directory, images, np.asarray(net(images, training=False))


def test_mobilenet_split_at_global_average_pooling_composes_back(mobilenet):
    directory, images, expected = mobilenet
    model = load_model(directory)
    assert model.format == "saved_model_tf2"
    # Keras numbers layer scopes per process (global_average_pooling2d_1, _1_1, ...): find the op.
    (mean,) = [op.name for op in model.graph.get_operations()
               if "global_average_pooling2d" in op.name and op.name.endswith("/Mean")]
    gap = resolve_tensor(model.graph, mean)
    assert "global_average_pooling2d" in gap.name and gap.shape.as_list() == [None, 1280]
    output = model.signature_defs["serving_default"].outputs["output_0"].name
    read = model.read_variable
    offline = freeze_graph(model.graph, [gap.name], read_variable=read)
    online = freeze_graph(model.graph, [output], inputs=[gap.name], read_variable=read)
    assert [t.name for t in online.inputs] == [gap.name]

    def run(frozen, feed):
        return run_graph_def(frozen.graph_def, {frozen.inputs[0].name: feed}, frozen.outputs[0].name)

    # one frozen graph's output fed into the other, in two sessions and composed into one graph
    np.testing.assert_allclose(run(online, run(offline, images)), expected, atol=1e-4)
    whole = compose_frozen(offline, online, connect={gap.name: gap.name}, outputs=output)
    np.testing.assert_allclose(run(whole, images), expected, atol=1e-4)


def test_recipe_mixes_and_matches_two_sessions(small_ckpt, mlp_ckpt, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "mix_recipe", os.path.join(os.path.dirname(__file__), "..", "recipes", "mix_models.py"))
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    out = tmp_path / "mixed.pb"
    assert recipe.main([small_ckpt[0], mlp_ckpt[0], "--connect", "features=probs", "--outputs", "out",
                        "--scopes", "cnn,mlp", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "mlp: 2 variables" in text and "max |difference| = 0 " in text
    assert load_model(str(out)).graph.get_tensor_by_name("mlp/out:0") is not None
