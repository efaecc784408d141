"""Per-request latency of a split's online piece against the whole graph (batch 1).

The point of `surgery split` is that a request no longer runs the backbone: the online piece
is fed precomputed cut tensors. Baseline: the whole model frozen by TensorFlow's own
`convert_variables_to_constants`, run per request on the raw inputs; surgery: the online piece
written by `split_model`/`write_split`, fed the offline piece's output plus live inputs.
Both in plain `tf.compat.v1.Session`s in the same run; medians of many runs after a warm-up.

    python scripts/bench.py split [--quick]
"""

from __future__ import annotations

import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from bench import median_time  # noqa: E402
from nets import two_tower, vgg  # noqa: E402

from surgery import load_model  # noqa: E402
from surgery.core.tfcompat import tf  # noqa: E402
from surgery.passes.split import import_piece, split_model, write_split  # noqa: E402

v1 = tf.compat.v1


def _demo_vgg():
    """The demo's VGG (scripts/build_vgg.py sizes): uint8 32×32 → fc7 [128] → 10 classes."""
    images = v1.placeholder(tf.uint8, [None, 32, 32, 3], name="input")
    x = tf.cast(images, tf.float32) / 255.0 - 0.5
    tf.nn.softmax(vgg(x, 10, blocks=(2, 2, 2), widths=(16, 32, 64), fc_width=128, scope="vgg"), name="predictions")
    return {"input:0": np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3)).astype(np.uint8)}


def _vgg16():
    """Full VGG-16 at 224×224, 1000 classes (138M parameters): fc7 is 4096 wide."""
    images = v1.placeholder(tf.float32, [None, 224, 224, 3], name="input")
    tf.nn.softmax(vgg(images, 1000), name="predictions")
    return {"input:0": np.random.default_rng(0).normal(size=(1, 224, 224, 3)).astype(np.float32)}


def _two_tower():
    two_tower(item_features=256, user_features=32, dim=64, tower_width=1024)
    rng = np.random.default_rng(0)
    return {"item_features:0": rng.normal(size=(1, 256)).astype(np.float32),
            "user_features:0": rng.normal(size=(1, 32)).astype(np.float32)}


def _case(name, build, cut, output, repeats):
    with tempfile.TemporaryDirectory() as tmp:
        graph = tf.Graph()
        with graph.as_default():
            v1.set_random_seed(0)
            feeds = build()
            with v1.Session() as sess:
                sess.run(v1.global_variables_initializer())
                prefix = v1.train.Saver().save(sess, os.path.join(tmp, "model.ckpt"))
                whole_gd = v1.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(),
                                                                        [output.split(":")[0]])
        model = load_model(prefix)
        split = split_model(model, cut, output)
        write_split(model, split, os.path.join(tmp, "pieces"), verify=1)
        offline = _session(os.path.join(tmp, "pieces", "offline.pb"))
        online = _session(os.path.join(tmp, "pieces", "online.pb"))
        whole = _session(whole_gd)
        offline_feeds = {i.name: feeds[i.name] for i in split.offline_inputs}
        cut_values = offline.run([c["tensor"] for c in split.cut], offline_feeds)
        online_feeds = {c["placeholder"]: v for c, v in zip(split.cut, cut_values)}
        online_feeds.update({i.name: feeds[i.name] for i in split.live_inputs})

        def run_online():
            return online.run(output, online_feeds)

        def run_whole():
            return whole.run(output, feeds)

        np.testing.assert_allclose(run_online(), run_whole(), rtol=1e-4, atol=1e-5)
        for _ in range(5):
            run_online(), run_whole()
        t_online = median_time(run_online, repeats)
        t_whole = median_time(run_whole, repeats)
        for s in (offline, online, whole):
            s.close()
    return {"benchmark": "split", "metric": f"{name} online/whole, batch 1",
            "surgery": t_online * 1e3, "baseline": t_whole * 1e3, "ratio": t_online / t_whole, "unit": "ms",
            "online_nodes": len(split.online.graph_def.node), "repeats": repeats}


def _session(graph_def_or_path):
    return v1.Session(graph=import_piece(graph_def_or_path))


def run(quick: bool = False) -> list:
    repeats = 50 if quick else 300
    rows = [_case("demo VGG @fc7", _demo_vgg, "fc7", "predictions:0", repeats),
            _case("two-tower @item emb", _two_tower, "item_tower/embedding", "score:0", repeats)]
    if not quick:
        rows.append(_case("VGG-16 224px @fc7", _vgg16, "vgg_16/fc7/Relu", "predictions:0", 30))
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
