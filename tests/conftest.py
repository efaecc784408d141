"""Shared fixtures: small real TensorFlow graphs and checkpoints in every model format.

Everything is built here, in seconds; nothing is downloaded. `run_cli` runs the real
console entry point in a subprocess, as a user would.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from surgery.core import tfcompat  # noqa: E402

tf = tfcompat.tf
v1 = tf.compat.v1


def run_cli(*args, cwd=None, timeout=300):
    """Run `python -m surgery ARGS` in a fresh process; returns CompletedProcess (text)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "surgery", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


def cli(*args):
    """Run `surgery ARGS` in this process (fast: TensorFlow is already imported).

    Same result shape as `run_cli`; use `run_cli` where a separate process matters.
    """
    import contextlib
    import io

    from surgery.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse usage errors
            code = e.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def run_graph_def(graph_def, feeds, fetches):
    """Plain TensorFlow: import a GraphDef with name="" and run it once."""
    g = tf.Graph()
    with g.as_default():
        tf.import_graph_def(graph_def, name="")
    with v1.Session(graph=g) as sess:
        return sess.run(fetches, feeds)


def build_small_cnn(resource: bool = True, seed: int = 0):
    """A tiny CNN in the default graph: `images` [?, 8, 8, 3] → `net/fc2/logits` → `probs`.
    Returns (images, probs). Variables are ref (`VariableV2`) when `resource=False`."""
    v1.set_random_seed(seed)
    images = v1.placeholder(tf.float32, [None, 8, 8, 3], name="images")
    with v1.variable_scope("net", use_resource=resource):
        w = v1.get_variable("conv1/weights", [3, 3, 3, 4])
        b = v1.get_variable("conv1/biases", [4], initializer=v1.random_normal_initializer())
        h = tf.nn.relu(tf.nn.conv2d(images, w, [1, 1, 1, 1], "SAME") + b, name="conv1/Relu")
        h = tf.reshape(h, [-1, 8 * 8 * 4], name="flatten")
        w1 = v1.get_variable("fc1/weights", [256, 16])
        b1 = v1.get_variable("fc1/biases", [16], initializer=v1.random_normal_initializer())
        fc1 = tf.nn.relu(tf.matmul(h, w1) + b1, name="fc1/Relu")
        w2 = v1.get_variable("fc2/weights", [16, 5])
        b2 = v1.get_variable("fc2/biases", [5])
        logits = tf.add(tf.matmul(fc1, w2), b2, name="fc2/logits")
    probs = tf.nn.softmax(logits, name="probs")
    return images, probs


SMALL_CNN_PARAMS = 3 * 3 * 3 * 4 + 4 + 256 * 16 + 16 + 16 * 5 + 5


@pytest.fixture(scope="session")
def sample_images():
    return np.random.default_rng(0).normal(size=(6, 8, 8, 3)).astype(np.float32)


def _save_small_cnn(directory: str, resource: bool, with_training: bool):
    os.makedirs(directory, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        images, probs = build_small_cnn(resource=resource)
        if with_training:
            labels = v1.placeholder(tf.int64, [None], name="labels")
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=labels, logits=graph.get_tensor_by_name("net/fc2/logits:0")), name="loss")
            v1.train.AdamOptimizer(0.01).minimize(loss, global_step=v1.train.get_or_create_global_step())
        saver = v1.train.Saver()
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            prefix = saver.save(sess, os.path.join(directory, "model.ckpt"), global_step=100)
            x = np.random.default_rng(0).normal(size=(6, 8, 8, 3)).astype(np.float32)
            expected = sess.run(probs, {images: x})
            frozen = v1.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(), ["probs"])
    return prefix, expected, frozen


@pytest.fixture(scope="session")
def small_ckpt(tmp_path_factory):
    """Resource-variable CNN with Adam slots: (prefix, expected probs on sample_images, TF-frozen GraphDef)."""
    return _save_small_cnn(str(tmp_path_factory.mktemp("small_ckpt")), resource=True, with_training=True)


@pytest.fixture(scope="session")
def small_ref_ckpt(tmp_path_factory):
    """Same CNN with ref (`VariableV2`) variables, as TF1-era checkpoints have."""
    return _save_small_cnn(str(tmp_path_factory.mktemp("small_ref_ckpt")), resource=False, with_training=False)


@pytest.fixture(scope="session")
def small_frozen_pb(tmp_path_factory, small_ckpt):
    """TensorFlow's own frozen GraphDef of the small CNN, binary and text."""
    d = tmp_path_factory.mktemp("frozen")
    _, _, frozen = small_ckpt
    pb, pbtxt = str(d / "frozen.pb"), str(d / "frozen.pbtxt")
    tf.io.write_graph(frozen, str(d), "frozen.pb", as_text=False)
    tf.io.write_graph(frozen, str(d), "frozen.pbtxt", as_text=True)
    return pb, pbtxt


@pytest.fixture(scope="session")
def small_saved_model(tmp_path_factory):
    """A TF1 SavedModel (builder API) of the small CNN with a serving_default signature."""
    d = str(tmp_path_factory.mktemp("sm") / "model")
    graph = tf.Graph()
    with graph.as_default():
        images, probs = build_small_cnn(resource=False)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(d)
            sig = v1.saved_model.predict_signature_def({"images": images}, {"probs": probs})
            builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": sig})
            builder.save()
            expected = sess.run(probs, {images: np.random.default_rng(0).normal(size=(6, 8, 8, 3)).astype(np.float32)})
    return d, expected


@pytest.fixture(scope="session")
def keras_saved_model(tmp_path_factory):
    """A Keras 3 SavedModel (`model.export`) of a small functional CNN: (dir, keras param count)."""
    import keras

    d = str(tmp_path_factory.mktemp("keras") / "exported")
    inputs = keras.Input((16, 16, 3), name="pixels")
    x = keras.layers.Conv2D(8, 3, activation="relu", name="block1_conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(4, activation="softmax", name="classifier")(x)
    model = keras.Model(inputs, outputs)
    model.export(d, verbose=False)
    return d, model.count_params()
