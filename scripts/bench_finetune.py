"""Fine-tuning at fc7 on the demo model and data: time per epoch through the whole graph vs on
cached bottlenecks, and surgery's per-epoch time against the same recipe in plain TensorFlow.

    python scripts/bench.py finetune [--quick]

Rows (medians over epochs):
  - epoch through the graph: surgery (`finetune`, no cache) vs plain TF (import_meta_graph,
    stop_gradient(fc7), a dense layer, Adam on it) — the overhead of the library;
  - epoch on cached bottlenecks vs through the graph (surgery both) — what the cache buys;
  - a whole run (import, restore, evaluate, train, export) with the cache vs without.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

MODEL = os.path.join(ROOT, "data", "models", "vgg")
DATA = os.path.join(ROOT, "data", "shapes.h5")
BATCH, LR = 64, 0.01


def _surgery_epochs(epochs: int, cache: bool) -> tuple[list, float]:
    """Per-epoch seconds of `surgery.train.finetune` and the total wall time of the call."""
    from surgery.train import finetune

    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        result = finetune(MODEL, at="fc7", head="dense:5", data=DATA, x_key="target/x", y_key="target/y",
                          out=os.path.join(d, "ft"), epochs=epochs, batch_size=BATCH, lr=LR, val_split=0.2,
                          cache_bottlenecks=cache, progress=False)
        total = time.perf_counter() - t0
    return [r["seconds"] for r in result.history], total


def _plain_tf_epochs(epochs: int) -> list:
    """The same recipe written by hand in TensorFlow; per-epoch seconds."""
    import h5py
    import numpy as np

    from surgery.tfcompat import tf

    v1 = tf.compat.v1
    with h5py.File(DATA, "r") as f:
        x, y = f["target/x"][:], f["target/y"][:]
    train_idx = np.random.default_rng(0).permutation(len(x))[len(x) // 5:]
    graph = tf.Graph()
    times = []
    with graph.as_default():
        saver = v1.train.import_meta_graph(os.path.join(MODEL, "model.ckpt.meta"))
        features = tf.stop_gradient(graph.get_tensor_by_name("fc7:0"))
        w = v1.get_variable("new/w", [int(features.shape[-1]), 5], initializer=v1.glorot_uniform_initializer())
        b = v1.get_variable("new/b", [5], initializer=v1.zeros_initializer())
        labels = v1.placeholder(tf.int64, [None])
        logits = tf.matmul(features, w) + b
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        train = v1.train.AdamOptimizer(LR, name="NewAdam").minimize(loss, var_list=[w, b])
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            saver.restore(sess, os.path.join(MODEL, "model.ckpt"))
            for epoch in range(epochs):
                t0 = time.perf_counter()
                order = np.random.default_rng(epoch).permutation(train_idx)
                for i in range(0, len(order), BATCH):
                    idx = order[i:i + BATCH]
                    sess.run([train, loss], {"input:0": x[idx], labels: y[idx]})
                times.append(time.perf_counter() - t0)
    return times


def run(quick: bool = False) -> list:
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    epochs = 3 if quick else 5
    plain = statistics.median(_plain_tf_epochs(epochs))
    graph_epochs, graph_total = _surgery_epochs(epochs, cache=False)
    cached_epochs, cached_total = _surgery_epochs(epochs, cache=True)
    through = statistics.median(graph_epochs)
    cached = statistics.median(cached_epochs)
    return [
        {"benchmark": "finetune", "metric": "epoch through the graph (vs plain TF)", "surgery": through,
         "baseline": plain, "ratio": through / plain, "unit": "s"},
        {"benchmark": "finetune", "metric": "epoch on cached fc7 (vs through the graph)", "surgery": cached,
         "baseline": through, "ratio": cached / through, "unit": "s"},
        {"benchmark": "finetune", "metric": f"whole {epochs}-epoch run, cached vs not", "surgery": cached_total,
         "baseline": graph_total, "ratio": cached_total / graph_total, "unit": "s"},
    ]


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
