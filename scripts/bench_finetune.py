"""Fine-tuning at fc7 on the demo model and data: time per epoch through the whole graph vs on
cached bottlenecks, and surgery's per-epoch time against the same recipe in plain TensorFlow.

    python scripts/bench.py finetune [--quick]

Rows (medians over epochs):
  - epoch through the graph: surgery (`finetune`, no cache) vs plain TF (import_meta_graph,
    stop_gradient(fc7), a dense layer, Adam on it) — the overhead of the library;
  - epoch on cached bottlenecks vs through the graph (surgery both) — what the cache buys;
  - a whole run (import, restore, evaluate, train, export) with the cache vs without;
  - a small digits-style CNN (8x8x1, 1,800 rows): 300 cached epochs vs 300 through the graph,
    summed epoch seconds (after start-up);
  - TF-slim `vgg_16` (138M parameters, a 553 MB checkpoint built in /tmp with random weights) at
    `fc7`, `dense:5`, 8 images, `--cache-bottlenecks`, each run a fresh `surgery finetune`
    process: what 10 more epochs cost (11 epochs minus 1) and the run's peak RSS, each against a
    hand-written raw-TF process (restore, fc7 of the 8 images, a head-only loop on them).

    python scripts/bench_finetune.py [--quick] [--vgg16-only]
"""

from __future__ import annotations

import json
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
    """Per-epoch seconds of `surgery.runners.finetune.finetune` and the total wall time of the call."""
    from surgery.runners.finetune import finetune

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

    from surgery.core.tfcompat import tf

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


def _digits_cnn(d: str) -> tuple[str, str]:
    """A small CNN on 8x8 'digits' (class templates + noise, 1,800 rows); (checkpoint, data.h5)."""
    import h5py
    import numpy as np

    from surgery.core.tfcompat import tf

    v1 = tf.compat.v1
    rng = np.random.default_rng(0)
    templates = rng.uniform(0, 16, (10, 8, 8, 1))
    y = rng.integers(0, 10, 1800)
    x = np.clip(templates[y] + rng.normal(0, 4, (1800, 8, 8, 1)), 0, 16).astype(np.float32)
    data = os.path.join(d, "digits.h5")
    with h5py.File(data, "w") as f:
        f["x"], f["y"] = x, y
    graph = tf.Graph()
    with graph.as_default():
        images = v1.placeholder(tf.float32, [None, 8, 8, 1], name="input")
        net = images
        for i, width in enumerate((16, 32)):
            w = v1.get_variable(f"cnn/conv{i}/weights", [3, 3, int(net.shape[-1]), width])
            net = tf.nn.relu(tf.nn.conv2d(net, w, 1, "SAME"))
        net = tf.reshape(net, [-1, 8 * 8 * 32])
        w = v1.get_variable("cnn/fc1/weights", [8 * 8 * 32, 64])
        tf.nn.relu(tf.matmul(net, w), name="fc1")
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            prefix = v1.train.Saver().save(sess, os.path.join(d, "cnn", "model.ckpt"))
    return prefix, data


def digits_rows(epochs: int = 300) -> list:
    from surgery.runners.finetune import finetune

    with tempfile.TemporaryDirectory() as d:
        prefix, data = _digits_cnn(d)
        seconds = {}
        for cache in (False, True):
            result = finetune(prefix, at="fc1", head="dense:10", data=data, x_key="x", y_key="y",
                              out=os.path.join(d, f"ft{cache}"), epochs=epochs, batch_size=64, lr=1e-3,
                              cache_bottlenecks=cache, progress=False)
            seconds[cache] = sum(r["seconds"] for r in result.history)
    return [{"benchmark": "finetune", "metric": f"digits CNN, {epochs} epochs cached vs through the graph",
             "surgery": seconds[True], "baseline": seconds[False], "ratio": seconds[True] / seconds[False],
             "unit": "s"}]


VGG16_DIR = os.path.join(tempfile.gettempdir(), "surgery-bench-vgg16")

_BUILD_VGG16 = """
import os, sys
import numpy as np, h5py
sys.path.insert(0, {scripts!r})
from surgery.core.tfcompat import tf
from nets import vgg_16
v1 = tf.compat.v1
g = tf.Graph()
with g.as_default():
    vgg_16(aliases=True)
    with v1.Session() as s:
        s.run(v1.global_variables_initializer())
        v1.train.Saver().save(s, os.path.join({d!r}, "model.ckpt"))
rng = np.random.default_rng(0)
with h5py.File(os.path.join({d!r}, "images.h5"), "w") as f:
    f["x"] = rng.integers(0, 256, (8, 224, 224, 3), dtype=np.uint8)
    f["y"] = np.arange(8) % 5
"""

_RAW_VGG16 = """
import os, sys, time
import numpy as np, h5py
from surgery.core.tfcompat import tf
v1 = tf.compat.v1
d = {d!r}
with h5py.File(os.path.join(d, "images.h5"), "r") as f:
    x, y = f["x"][:], f["y"][:]
graph = tf.Graph()
with graph.as_default():
    saver = v1.train.import_meta_graph(os.path.join(d, "model.ckpt.meta"))
    fc7 = graph.get_tensor_by_name("fc7:0")
    features = v1.placeholder(tf.float32, [None, 4096])
    w = v1.get_variable("new/w", [4096, 5], initializer=v1.glorot_uniform_initializer())
    b = v1.get_variable("new/b", [5], initializer=v1.zeros_initializer())
    labels = v1.placeholder(tf.int64, [None])
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=features @ w + b))
    train = v1.train.AdamOptimizer(1e-3, name="NewAdam").minimize(loss, var_list=[w, b])
    with v1.Session() as sess:
        sess.run(v1.variables_initializer([v for v in v1.global_variables() if not v.name.startswith("vgg_16/")]))
        saver.restore(sess, os.path.join(d, "model.ckpt"))
        cached = sess.run(fc7, {{"input:0": x}})
        train_idx = np.random.default_rng(0).permutation(len(x))[2:]
        t0 = time.perf_counter()
        for epoch in range(10):
            order = np.random.default_rng(epoch).permutation(train_idx)
            sess.run([train, loss], {{features: cached[order], labels: y[order]}})
        print("EPOCHS10", time.perf_counter() - t0)
"""


def _run_measured(args) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB, stdout) of `python ARGS` in a fresh process (wait4's rusage)."""
    import subprocess

    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        p = subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE, stderr=err)
        out = p.stdout.read()
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        if status:
            err.seek(0)
            raise RuntimeError(err.read().decode()[-2000:])
    return wall, usage.ru_maxrss / 1024, out.decode()


def vgg16_rows(repeats: int = 2) -> list:
    """VGG-16 at fc7, cached: 10 more epochs and peak RSS, against the raw-TF head-only loop."""
    import shutil

    os.makedirs(VGG16_DIR, exist_ok=True)
    if not os.path.exists(os.path.join(VGG16_DIR, "images.h5")):
        _run_measured(["-c", _BUILD_VGG16.format(scripts=HERE, d=VGG16_DIR)])
    out = os.path.join(VGG16_DIR, "ft")

    def surgery_run(epochs):
        shutil.rmtree(out, ignore_errors=True)
        return _run_measured(["-m", "surgery", "finetune", os.path.join(VGG16_DIR, "model.ckpt"), "--at", "fc7",
                              "--head", "dense:5", "--data", os.path.join(VGG16_DIR, "images.h5"), "--x", "x",
                              "--y", "y", "--cache-bottlenecks", "--epochs", str(epochs), "--out", out])

    one, eleven, raw, recorded = [], [], [], []
    for _ in range(repeats):
        one.append(surgery_run(1))
        eleven.append(surgery_run(11))
        with open(os.path.join(out, "manifest.json")) as f:  # the epochs' own seconds, as finetune records them
            recorded.append(sum(r["seconds"] for r in json.load(f)["finetune"]["history"][1:]))
        raw.append(_run_measured(["-c", _RAW_VGG16.format(d=VGG16_DIR)]))
    _check_backbone_bit_for_bit(os.path.join(VGG16_DIR, "model.ckpt"), os.path.join(out, "model.ckpt"))
    more = statistics.median(e[0] for e in eleven) - statistics.median(o[0] for o in one)
    raw10 = statistics.median(float(r[2].split("EPOCHS10")[1]) for r in raw)
    peak = max(r[1] for r in one + eleven)
    raw_peak = statistics.median(r[1] for r in raw)
    return [
        {"benchmark": "finetune", "metric": "vgg_16 fc7 cached: 10 more epochs (11 minus 1, whole processes)",
         "surgery": more, "baseline": raw10, "ratio": more / raw10, "unit": "s"},
        {"benchmark": "finetune", "metric": "vgg_16 fc7 cached: epochs 2-11 as recorded in the manifest",
         "surgery": statistics.median(recorded), "baseline": raw10, "ratio": statistics.median(recorded) / raw10,
         "unit": "s"},
        {"benchmark": "finetune", "metric": "vgg_16 fc7 cached: peak RSS of the run (vs raw TF restore+fc7+loop)",
         "surgery": peak, "baseline": raw_peak, "ratio": peak / raw_peak, "unit": "MB"},
        {"benchmark": "finetune", "metric": "vgg_16 fc7 cached: whole 1-epoch run (vs raw TF, which writes nothing)",
         "surgery": statistics.median(o[0] for o in one), "baseline": statistics.median(r[0] for r in raw),
         "ratio": statistics.median(o[0] for o in one) / statistics.median(r[0] for r in raw), "unit": "s"},
    ]


def _check_backbone_bit_for_bit(pretrained: str, written: str) -> None:
    from surgery.core.tfcompat import tf

    before, after = tf.compat.v1.train.NewCheckpointReader(pretrained), tf.compat.v1.train.NewCheckpointReader(written)
    for name in before.get_variable_to_shape_map():
        if not (before.get_tensor(name) == after.get_tensor(name)).all():
            raise AssertionError(f"{name} differs from the pretrained checkpoint")


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
    rows = [] if "--vgg16-only" in sys.argv else run(quick="--quick" in sys.argv) + digits_rows()
    for row in rows + vgg16_rows(repeats=1 if "--quick" in sys.argv else 2):
        print(row, flush=True)
