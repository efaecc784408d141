"""Restore: surgery's planned restore against plain TensorFlow doing the same transplant.

A TF-slim `vgg_16`-named checkpoint is restored into the same network built under `net/`
(all but fc8). Baseline: the hand-written `tf.compat.v1.train.Saver({old_name: variable})`
a user would write, built and run once. Each run starts from a fresh initialised target
graph (not timed); timed is building the restore ops and running them. Medians.
"""

from __future__ import annotations

import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from nets import vgg  # noqa: E402

from surgery.core import tfcompat  # noqa: E402
from surgery.passes.restore import plan_restore, restore_into_session  # noqa: E402

tf = tfcompat.tf
v1 = tf.compat.v1


def _build(num_classes, widths, fc_width, outer=None):
    images = v1.placeholder(tf.float32, [None, 32, 32, 3], name="input")
    kwargs = dict(widths=widths, fc_width=fc_width, scope="vgg_16")
    if outer:
        with v1.variable_scope(outer):
            vgg(images, num_classes, **kwargs)
    else:
        vgg(images, num_classes, **kwargs)


def _fresh_target(widths, fc_width):
    """A new graph and session holding the initialised target network: every timed restore
    starts from the same state, building its restore ops as a first restore must."""
    g = tf.Graph()
    with g.as_default():
        _build(5, widths, fc_width, outer="net")
        sess = v1.Session(graph=g)
        sess.run(v1.global_variables_initializer())
    return g, sess


def _timed(widths, fc_width, restore_fn, repeats):
    """Median time of `restore_fn(graph, sess)` over fresh targets (set-up not timed)."""
    import statistics
    import time

    times = []
    for _ in range(repeats):
        g, sess = _fresh_target(widths, fc_width)
        with g.as_default():
            t0 = time.perf_counter()
            restore_fn(g, sess)
            times.append(time.perf_counter() - t0)
        sess.close()
    return statistics.median(times)


def run(quick: bool = False) -> list[dict]:
    widths = (16, 32, 64, 128, 128) if quick else (64, 128, 256, 512, 512)
    fc_width = 256 if quick else 1024
    repeats = 3 if quick else 5
    rows = []
    with tempfile.TemporaryDirectory() as d:
        g = tf.Graph()
        with g.as_default():
            _build(1000, widths, fc_width)
            params = sum(v.shape.num_elements() for v in v1.global_variables() if "/fc8/" not in v.op.name)
            with v1.Session() as sess:
                sess.run(v1.global_variables_initializer())
                source = v1.train.Saver().save(sess, os.path.join(d, "vgg_16.ckpt"))
        kwargs = dict(maps=["vgg_16/=net/vgg_16/"], exclude=["fc8"])

        def plain(g, sess):  # what a user writes by hand
            variables = [v for v in v1.global_variables() if "/fc8/" not in v.op.name]
            v1.train.Saver({v.op.name[len("net/"):]: v for v in variables}).restore(sess, source)

        def ours(method):
            return lambda g, sess: restore_into_session(sess, plan_restore(g, source, **kwargs), method=method)

        base = _timed(widths, fc_width, plain, repeats)
        label = f"vgg_16 {params / 1e6:.1f}M params"
        for metric, fn in (("plan + selective Saver (default)", ours("saver")),
                           ("plan + init_from_checkpoint", ours("assignment_map")),
                           ("plan + direct assignment (HDF5 path)", ours("assign")),
                           ("planning only", lambda g, sess: plan_restore(g, source, **kwargs))):
            value = _timed(widths, fc_width, fn, repeats)
            rows.append({"benchmark": "restore", "metric": f"{metric}, {label}", "surgery": value,
                         "baseline": base, "ratio": value / base, "unit": "s"})
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
