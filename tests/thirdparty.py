"""Graphs built the way other projects build them, not the way surgery writes them.

Each builder writes one model into a directory and returns a `Case`: the path to hand to a
command, the feeds and fetches to check it with plain TensorFlow, and what the case is about.
They reproduce the shapes of graphs that broke earlier versions: unknown-rank convolution
inputs, shapes kept only in `_output_shapes`, functional `If`/`While`, V1-format checkpoints,
an `Assign` hung on the output, a shapeless boolean training switch, a graph that is a single
`Const`, a graph without inputs, a TF Serving-style SavedModel fed through `tf.Example`, the
`half_plus_two` model of TF Serving's examples, and a TF-slim-style training graph.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from surgery.core import tfcompat

tf = tfcompat.tf
v1 = tf.compat.v1


@dataclasses.dataclass
class Case:
    name: str
    path: str                      # what a user passes as MODEL
    feeds: dict                    # tensor name → array (names as in the graph)
    outputs: list                  # tensor names to fetch
    expected: dict                 # tensor name → array, from plain TensorFlow
    about: str = ""


def _rng():
    return np.random.default_rng(0)


def _save(sess, directory, name="model.ckpt", **saver_kwargs):
    os.makedirs(directory, exist_ok=True)
    return v1.train.Saver(**saver_kwargs).save(sess, os.path.join(directory, name))


def _write_pb(graph_def, path):
    with open(path, "wb") as f:
        f.write(graph_def.SerializeToString())
    return path


def unknown_rank_conv(directory):
    """A convolution whose input placeholder was declared with no shape at all (TF-slim demos)."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, shape=None, name="input")
        w = v1.get_variable("conv/weights", [3, 3, 3, 4])
        h = tf.nn.relu(tf.nn.conv2d(x, w, [1, 1, 1, 1], "SAME"), name="conv/Relu")
        feat = tf.reduce_mean(h, axis=[1, 2], name="pool")
        out = tf.matmul(feat, v1.get_variable("logits/kernel", [4, 2]), name="out")
        xs = _rng().normal(size=(2, 6, 6, 3)).astype(np.float32)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            prefix = _save(sess, directory)
            expected = sess.run(out, {x: xs})
    return Case("unknown_rank_conv", prefix, {"input:0": xs}, ["out:0"], {"out:0": expected},
                "input placeholder of unknown rank feeding conv2d")


def output_shapes_only(directory):
    """A frozen graph whose input keeps its shape only in `_output_shapes` (old exporters)."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 8, 8, 3], name="images")
        w = tf.constant(_rng().normal(size=(3, 3, 3, 2)).astype(np.float32), name="w")
        out = tf.reduce_mean(tf.nn.conv2d(x, w, [1, 1, 1, 1], "VALID"), axis=[1, 2], name="out")
        gd = graph.as_graph_def(add_shapes=True)
        xs = _rng().normal(size=(3, 8, 8, 3)).astype(np.float32)
        with v1.Session() as sess:
            expected = sess.run(out, {x: xs})
    for node in gd.node:
        if node.op == "Placeholder":
            node.attr["shape"].shape.unknown_rank = True
            node.attr["shape"].shape.ClearField("dim")
    path = _write_pb(gd, os.path.join(directory, "model.pb"))
    return Case("output_shapes_only", path, {"images:0": xs}, ["out:0"], {"out:0": expected},
                "placeholder shape only in _output_shapes")


def functional_control_flow(directory):
    """A checkpointed graph with functional `If` and `While` (control flow v2, as TF2 writes it)."""
    from tensorflow.python.ops import cond_v2, while_v2  # the ops TF2 emits; built here on purpose

    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 4], name="x")
        w = v1.get_variable("w", [4, 4], use_resource=True)
        h = tf.matmul(x, w.read_value())
        flag = tf.reduce_sum(h) > 0.0
        y = cond_v2.cond_v2(flag, lambda: h * 2.0, lambda: h - 1.0, name="cond")
        _, y = while_v2.while_loop(lambda i, v: i < 3, lambda i, v: (i + 1, v * 0.5 + 1.0),
                                   [tf.constant(0), y])
        out = tf.identity(y, name="out")
        xs = _rng().normal(size=(2, 4)).astype(np.float32)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            prefix = _save(sess, directory)
            expected = sess.run(out, {x: xs})
    return Case("functional_control_flow", prefix, {"x:0": xs}, ["out:0"], {"out:0": expected},
                "StatelessIf/While with a function library")


def v1_checkpoint(directory):
    """A V1-format checkpoint: `model.ckpt` + `model.ckpt.meta`, no `.index` (TF 0.x/1.0 era)."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 3], name="x")
        w = v1.get_variable("dense/kernel", [3, 2], use_resource=False)
        b = v1.get_variable("dense/bias", [2], initializer=v1.ones_initializer(), use_resource=False)
        out = tf.nn.softmax(tf.matmul(x, w) + b, name="probs")
        xs = _rng().normal(size=(4, 3)).astype(np.float32)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            prefix = _save(sess, directory, write_version=v1.train.SaverDef.V1)
            expected = sess.run(out, {x: xs})
    return Case("v1_checkpoint", prefix, {"x:0": xs}, ["probs:0"], {"probs:0": expected},
                "V1 checkpoint without .index")


def assign_on_output(directory):
    """The output carries an `AssignAdd` as a control dependency: running it changes the answer."""
    graph = tf.Graph()
    with graph.as_default():
        counter = v1.get_variable("counter", [], initializer=v1.constant_initializer(3.0), use_resource=False)
        bump = v1.assign_add(counter, 1.0, name="bump")
        with tf.control_dependencies([bump]):
            out = tf.identity(counter, name="out")
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            prefix = _save(sess, directory)
            expected = sess.run(out)  # 4.0: the bump ran first
    return Case("assign_on_output", prefix, {}, ["out:0"], {"out:0": np.float32(expected)},
                "stateful AssignAdd on the output's control path")


def shapeless_bool_switch(directory):
    """A training switch `is_train` declared with no shape, used by dropout through `tf.cond`."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 6], name="x")
        is_train = v1.placeholder_with_default(False, shape=None, name="is_train")
        w = v1.get_variable("fc/w", [6, 6])
        h = tf.nn.relu(tf.matmul(x, w), name="fc/Relu")
        h = tf.cond(is_train, lambda: tf.nn.dropout(h, rate=0.5), lambda: h)
        w2 = v1.get_variable("out/w", [6, 2])
        out = tf.matmul(h, w2, name="logits")
        xs = _rng().normal(size=(3, 6)).astype(np.float32)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            prefix = _save(sess, directory)
            expected = sess.run(out, {x: xs})
    return Case("shapeless_bool_switch", prefix, {"x:0": xs}, ["logits:0"], {"logits:0": expected},
                "bool switch without a shape; cut at fc/Relu")


def const_only(directory):
    """A frozen graph that is one `Const` (a lookup table exported on its own)."""
    value = np.arange(6, dtype=np.float32).reshape(2, 3)
    graph = tf.Graph()
    with graph.as_default():
        tf.constant(value, name="table")
    path = _write_pb(graph.as_graph_def(), os.path.join(directory, "table.pb"))
    return Case("const_only", path, {}, ["table:0"], {"table:0": value}, "a single Const")


def no_inputs(directory):
    """A checkpointed graph with variables but no placeholder: the output is computed from weights."""
    graph = tf.Graph()
    with graph.as_default():
        w = v1.get_variable("w", [2, 2])
        out = tf.reduce_sum(w * 2.0, axis=0, name="out")
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            prefix = _save(sess, directory)
            expected = sess.run(out)
    return Case("no_inputs", prefix, {}, ["out:0"], {"out:0": expected}, "no placeholders")


def tf_example_saved_model(directory):
    """A TF1 SavedModel whose signature takes serialized `tf.Example`s (Estimator-style export)."""
    path = os.path.join(directory, "sm")
    graph = tf.Graph()
    with graph.as_default():
        serialized = v1.placeholder(tf.string, [None], name="tf_example")
        feats = v1.io.parse_example(serialized, {"x": v1.io.FixedLenFeature([3], tf.float32)})
        x = tf.identity(feats["x"], name="x")
        w = v1.get_variable("linear/w", [3, 1])
        y = tf.identity(tf.matmul(x, w), name="y")
        xs = _rng().normal(size=(2, 3)).astype(np.float32)
        examples = np.array([tf.train.Example(features=tf.train.Features(feature={
            "x": tf.train.Feature(float_list=tf.train.FloatList(value=row))})).SerializeToString() for row in xs],
            dtype=object)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            expected = sess.run(y, {serialized: examples})
            builder = v1.saved_model.Builder(path)
            sig = v1.saved_model.predict_signature_def({"inputs": serialized}, {"outputs": y})
            builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": sig})
            builder.save()
    return Case("tf_example_saved_model", path, {"tf_example:0": examples}, ["y:0"], {"y:0": expected},
                "signature input is serialized tf.Example")


def half_plus_two(directory):
    """TF Serving's `saved_model_half_plus_two_cpu` example, rebuilt: y = 0.5 x + 2 with a Saver."""
    path = os.path.join(directory, "half_plus_two")
    graph = tf.Graph()
    with graph.as_default():
        a = v1.Variable(0.5, name="a", use_resource=False)
        b = v1.Variable(2.0, name="b", use_resource=False)
        x = v1.placeholder(tf.float32, [None], name="x")
        y = tf.add(tf.multiply(a, x), b, name="y")
        xs = np.array([1.0, 2.0, 5.0], np.float32)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(path)
            sig = v1.saved_model.predict_signature_def({"x": x}, {"y": y})
            builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": sig})
            builder.save()
    return Case("half_plus_two", path, {"x:0": xs}, ["y:0"], {"y:0": 0.5 * xs + 2.0}, "TF Serving example")


def slim_training_graph(directory):
    """A TF-slim-style training graph: truncated-normal initializers, loss, summaries, an optimizer,
    a `cond` on a training flag. The real output is `logits`; `inspect` must not drown it."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 5], name="x")
        labels = v1.placeholder(tf.int64, [None], name="labels")
        training = v1.placeholder_with_default(False, [], name="is_training")
        w = v1.Variable(v1.truncated_normal([5, 8], stddev=0.1), name="fc1/weights")
        b = v1.Variable(v1.zeros([8]), name="fc1/biases")
        h = tf.nn.relu(tf.matmul(x, w) + b)
        h = tf.cond(training, lambda: tf.nn.dropout(h, rate=0.2), lambda: h)
        w2 = v1.Variable(v1.random_uniform([8, 3], -0.1, 0.1), name="fc2/weights")
        logits = tf.matmul(h, w2, name="logits")
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        v1.summary.scalar("loss", loss)
        v1.train.GradientDescentOptimizer(0.1).minimize(loss, global_step=v1.train.get_or_create_global_step())
        xs = _rng().normal(size=(4, 5)).astype(np.float32)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            prefix = _save(sess, directory)
            expected = sess.run(logits, {x: xs})
    return Case("slim_training_graph", prefix, {"x:0": xs}, ["logits:0"], {"logits:0": expected},
                "training graph; the real output is logits")


BUILDERS = [unknown_rank_conv, output_shapes_only, functional_control_flow, v1_checkpoint, assign_on_output,
            shapeless_bool_switch, const_only, no_inputs, tf_example_saved_model, half_plus_two,
            slim_training_graph]


def build_all(root) -> dict[str, Case]:
    """Every case, each in its own sub-directory of `root`."""
    cases = {}
    for build in BUILDERS:
        d = os.path.join(str(root), build.__name__)
        os.makedirs(d, exist_ok=True)
        cases[build.__name__] = build(d)
    return cases
