"""Export / TF2 benchmark: a Keras 3 MobileNetV2 SavedModel flattened by `load_model` (functions
inlined, variables restored from the SavedModel's checkpoint, run in a tf.compat.v1 Session)
against plain TensorFlow serving the same SavedModel (`tf.saved_model.load(...).signatures`).

Rows: load time (flatten vs tf.saved_model.load) and batch inference time, medians."""

from __future__ import annotations

import os
import tempfile

import numpy as np
from bench import median_time


def run(quick: bool = False) -> list:
    import keras

    from surgery import load_model
    from surgery.core.tfcompat import tf

    v1 = tf.compat.v1
    size, batch = (64, 8) if quick else (128, 32)
    keras.utils.set_random_seed(0)
    net = keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3), alpha=0.35, classes=10)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = os.path.join(tmp, "mobilenet")
        net.export(directory, verbose=False)
        x = np.random.default_rng(0).uniform(-1, 1, size=(batch, size, size, 3)).astype(np.float32)
        repeats = 3 if quick else 5

        t_flat = median_time(lambda: load_model(directory), repeats)
        t_tf = median_time(lambda: tf.saved_model.load(directory), repeats)
        rows.append({"benchmark": "export", "metric": f"load MobileNetV2 {size}px SavedModel",
                     "surgery": t_flat, "baseline": t_tf, "ratio": t_flat / t_tf, "unit": "s"})

        model = load_model(directory)
        sig = model.signature_defs["serving_default"]
        serving = tf.saved_model.load(directory).signatures["serving_default"]
        x_tf = tf.constant(x)
        want = serving(keras_tensor=x_tf)["output_0"].numpy()
        t_tf = median_time(lambda: serving(keras_tensor=x_tf)["output_0"].numpy(), repeats * 2)
        saver = model.saver()
        with v1.Session(graph=model.graph) as sess:
            saver.restore(sess, model.checkpoint)
            fetch, feed = sig.outputs["output_0"].name, sig.inputs["keras_tensor"].name
            got = sess.run(fetch, {feed: x})
            assert np.allclose(got, want, atol=1e-4), "flattened graph disagrees with the SavedModel"
            sess.run(fetch, {feed: x})
            t_flat = median_time(lambda: sess.run(fetch, {feed: x}), repeats * 2)
        rows.append({"benchmark": "export", "metric": f"infer batch {batch} ({size}px), flattened vs signature",
                     "surgery": t_flat * 1000, "baseline": t_tf * 1000, "ratio": t_flat / t_tf, "unit": "ms"})
    return rows
