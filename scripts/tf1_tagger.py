"""A TF1-era training graph as its author left it: `python scripts/tf1_tagger.py --out tagger`.

Built the way 2017-era research code did: `tf.compat.v1.layers` with v1 control flow
(`Switch`/`Merge`), batch norm and dropout behind `tf.cond` on an `is_training` bool
placeholder, a `keep_prob` float placeholder, Adam, and a `tf.train.Saver`. The MetaGraphDef
is then aged as TF 1.x wrote it: `FusedBatchNormGrad`'s reserve-space outputs carry the
`_output_shapes` TF 1.x recorded, which today's TensorFlow rejects at import. Small: one
`build_tagger` call takes about a second. The README's "Models from the TF1 era" and
tests/test_tf1.py use it; `--out DIR` also writes `DIR-task.h5` (`x`, and labels `y` that are
linear in the penultimate layer) to fine-tune a new head on.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import h5py
import numpy as np

from surgery.core import tfcompat

tf = tfcompat.tf
v1 = tf.compat.v1

FEATURES = 12
HIDDEN = 8
CLASSES = 3


def tagger_data(n: int = 600, seed: int = 0):
    """Rows `x` [n, 12] and labels `y` [n] (three classes)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, FEATURES)).astype(np.float32)
    y = (np.argmax(x[:, :CLASSES] + 0.3 * x[:, CLASSES:2 * CLASSES], axis=1)).astype(np.int64)
    return x, y


def _dense(x, units: int, name: str, activation=None):
    """`tf.layers.dense` as TF 1.x built it (Keras 3 no longer provides `tf.compat.v1.layers`)."""
    with v1.variable_scope(name):
        kernel = v1.get_variable("kernel", [x.shape[-1], units], initializer=v1.glorot_uniform_initializer(), use_resource=False)
        bias = v1.get_variable("bias", [units], initializer=v1.zeros_initializer(), use_resource=False)
        y = tf.nn.bias_add(tf.matmul(x, kernel), bias)
        return activation(y) if activation is not None else y


def _batch_norm(x, training, name: str, momentum: float = 0.9):
    """`tf.layers.batch_normalization(training=is_training, fused=True)` as TF 1.12 built it:
    a `tf.cond` between the training kernel (batch statistics) and the inference kernel (moving
    statistics), and moving-average updates behind another cond, in UPDATE_OPS."""
    channels = x.shape[-1]
    with v1.variable_scope(name):
        gamma = v1.get_variable("gamma", [channels], initializer=v1.ones_initializer(), use_resource=False)
        beta = v1.get_variable("beta", [channels], initializer=v1.zeros_initializer(), use_resource=False)
        mean = v1.get_variable("moving_mean", [channels], initializer=v1.zeros_initializer(), trainable=False, use_resource=False)
        var = v1.get_variable("moving_variance", [channels], initializer=v1.ones_initializer(), trainable=False, use_resource=False)
        y, batch_mean, batch_var = tf.cond(
            training,
            lambda: v1.nn.fused_batch_norm(x, gamma, beta, epsilon=1e-3, is_training=True),
            lambda: v1.nn.fused_batch_norm(x, gamma, beta, mean, var, epsilon=1e-3, is_training=False))
        decay = tf.cond(training, lambda: tf.constant(1 - momentum), lambda: tf.constant(0.0))
        v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, v1.assign_sub(mean, (mean - batch_mean) * decay))
        v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, v1.assign_sub(var, (var - batch_var) * decay))
        return y


def _build_graph(seed: int):
    """x → dense → batch norm (fused, is_training) → relu → dropout (tf.cond) → dense 'penultimate'
    → logits → sigmoid; a loss and Adam's train op. v1 control flow, as TF 1.x built it."""
    graph = tf.Graph()
    v2_flow = v1.control_flow_v2_enabled()
    v1.disable_control_flow_v2()
    try:
        with graph.as_default():
            v1.set_random_seed(seed)
            x = v1.placeholder(tf.float32, [None, FEATURES], name="x")
            labels = v1.placeholder(tf.int64, [None], name="labels")
            is_training = v1.placeholder(tf.bool, [], name="is_training")
            keep_prob = v1.placeholder(tf.float32, name="keep_prob")  # unknown rank, as old code left it
            with v1.variable_scope("model"):
                h = _dense(x, 16, "dense_in")
                h = tf.reshape(h, [-1, 1, 1, 16])  # NHWC, so the fused kernel runs (as conv nets did)
                h = _batch_norm(h, is_training, "bn")
                h = tf.nn.relu(tf.reshape(h, [-1, 16]))
                h = tf.cond(is_training, lambda: tf.nn.dropout(h, rate=1 - keep_prob), lambda: h)
                penultimate = _dense(h, HIDDEN, "penultimate", tf.nn.relu)
                logits = _dense(penultimate, CLASSES, "logits")
                tf.sigmoid(logits, name="Sigmoid")
            loss = v1.losses.sparse_softmax_cross_entropy(labels, logits)
            with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
                train_op = v1.train.AdamOptimizer(0.01).minimize(loss, name="train_op")
            saver = v1.train.Saver()
    finally:
        if v2_flow:
            v1.enable_control_flow_v2()
    return graph, x, labels, is_training, keep_prob, train_op, saver


def age_meta_graph(meta_path: str) -> int:
    """Write `_output_shapes` into the MetaGraphDef as TF 1.x did: every node gets them, and
    `FusedBatchNormGrad*`'s reserve-space outputs (#3, #4) are recorded with the channel count, which today's
    shape function contradicts ("Dimension 0 in both shapes must be equal"). Returns how many
    nodes were made stale."""
    meta = v1.MetaGraphDef()
    with open(meta_path, "rb") as f:
        meta.ParseFromString(f.read())
    stale = 0
    for node in meta.graph_def.node:
        if node.op.startswith("FusedBatchNormGrad") and "_output_shapes" in node.attr:
            shapes = node.attr["_output_shapes"].list.shape
            for i in (3, 4):
                if i < len(shapes):
                    shapes[i].Clear()
                    shapes[i].dim.add(size=shapes[1].dim[0].size)
            stale += 1
    meta.meta_info_def.tensorflow_version = "1.12.0"
    meta.meta_info_def.tensorflow_git_version = "v1.12.0-0-ga6d8ffae09"
    with open(meta_path, "wb") as f:
        f.write(meta.SerializeToString())
    return stale


def build_tagger(directory: str, *, steps: int = 150, seed: int = 0, prefix_name: str = "model.ckpt",
                 foreign_checkpoint_path: str | None = None) -> dict:
    """Train the tagger a little and save it in `directory` as TF 1.12 left it.

    `prefix_name=""` saves with a prefix that ends in `/` (files `.index`, `.data-…`, `.meta`).
    `foreign_checkpoint_path` writes a `checkpoint` file naming the author's machine instead.
    Returns {prefix, x, y, expected (Sigmoid at is_training=False), penultimate, stale}.
    """
    os.makedirs(directory, exist_ok=True)
    graph, x_ph, labels_ph, is_training, keep_prob, train_op, saver = _build_graph(seed)
    x, y = tagger_data()
    prefix = os.path.join(directory, prefix_name)
    with v1.Session(graph=graph) as sess:
        sess.run(v1.global_variables_initializer())
        rng = np.random.default_rng(seed)
        for _ in range(steps):
            idx = rng.integers(0, len(x), 64)
            sess.run(train_op, {x_ph: x[idx], labels_ph: y[idx], is_training: True, keep_prob: 0.8})
        # add_shapes: TF 1.x's export_meta_graph recorded `_output_shapes` on every node
        saver.save(sess, prefix, write_meta_graph=False)
        v1.train.export_meta_graph(prefix + ".meta", graph=graph, clear_devices=True, saver_def=saver.as_saver_def(),
                                   graph_def=graph.as_graph_def(add_shapes=True))
        feeds = {x_ph: x, is_training: False, keep_prob: 1.0}
        expected, penultimate = sess.run(["model/Sigmoid:0", "model/penultimate/Relu:0"], feeds)
    stale = age_meta_graph(prefix + ".meta")
    if foreign_checkpoint_path is not None:
        with open(os.path.join(directory, "checkpoint"), "w") as f:
            f.write(f'model_checkpoint_path: "{foreign_checkpoint_path}"\n'
                    f'all_model_checkpoint_paths: "{foreign_checkpoint_path}"\n')
    return {"prefix": prefix, "x": x, "y": y, "expected": expected, "penultimate": penultimate, "stale": stale}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for model.ckpt* and checkpoint")
    args = parser.parse_args(argv)
    built = build_tagger(args.out, foreign_checkpoint_path="/home/author/tagger/model.ckpt-1200")
    w = np.random.default_rng(1).standard_normal((HIDDEN, CLASSES))
    task = args.out.rstrip("/") + "-task.h5"
    with h5py.File(task, "w") as f:
        f["x"], f["y"] = built["x"], np.argmax(built["penultimate"] @ w, axis=1)
    print(f"wrote {args.out}/ (a TF 1.12-style training graph: stale _output_shapes, is_training, Adam) and {task}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
