"""Keras and TF2 models built the way Keras and TF Serving users build them.

Each builder returns the in-memory `keras.Model` (or `tf.Module`) beside the files it wrote, so a
test can compare surgery's answer with Keras's own `predict` and intermediate-layer outputs.
Nothing is downloaded: `keras.applications` models are built with `weights=None`.
"""

from __future__ import annotations

import os

import numpy as np

from surgery.core import tfcompat

tf = tfcompat.tf


def mini_xception(num_classes=3, size=16, seed=0):
    """A small Xception-style classifier: separable convolutions, BatchNorm, residual `add` layers."""
    import keras

    keras.utils.set_random_seed(seed)
    layers = keras.layers
    inputs = keras.Input((size, size, 3), name="image")
    x = layers.Conv2D(8, 3, strides=2, padding="same", name="stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    for i, filters in enumerate((8, 16)):
        residual = layers.Conv2D(filters, 1, padding="same", name=f"res{i}_proj")(x)
        y = layers.SeparableConv2D(filters, 3, padding="same", name=f"block{i}_sepconv1")(x)
        y = layers.BatchNormalization(name=f"block{i}_bn1")(y)
        y = layers.Activation("relu", name=f"block{i}_relu")(y)
        y = layers.SeparableConv2D(filters, 3, padding="same", name=f"block{i}_sepconv2")(y)
        y = layers.BatchNormalization(name=f"block{i}_bn2")(y)
        x = layers.Add(name=f"add_{i}")([y, residual])
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs, name="mini_xception")
    # Non-trivial BatchNorm statistics, as a trained model has.
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.1, n).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, n).astype(np.float32))
    return model


def multi_output(size=8):
    """One input, three named outputs (`contour`, `note`, `onset`), as a music-transcription model has."""
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((size,), name="audio")
    h = keras.layers.Dense(16, activation="relu", name="trunk")(inputs)
    outputs = {name: keras.layers.Dense(k, name=name)(h) for name, k in (("contour", 4), ("note", 3), ("onset", 2))}
    return keras.Model(inputs, outputs, name="transcriber")


def sample_inputs(model, n=4, seed=0):
    shape = (n,) + tuple(model.inputs[0].shape[1:])
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def save_keras(model, directory, name="model.keras"):
    path = os.path.join(str(directory), name)
    model.save(path)
    return path


def save_legacy_h5(model, directory, name="model.h5"):
    """Keras' legacy HDF5 full-model file (`model.save("x.h5")`), as Keras 2 users hold them:
    `save_keras` under an `.h5` name (Keras picks the format by the extension)."""
    return save_keras(model, directory, name)


def save_weights_h5(model, directory, name="model.weights.h5"):
    """A weights-only HDF5 file: no model config, so no graph to load."""
    path = os.path.join(str(directory), name)
    model.save_weights(path)
    return path


def export_saved_model(model, directory, name="exported"):
    """`model.export`: the TF2 SavedModel Keras 3 writes for TF Serving."""
    path = os.path.join(str(directory), name)
    model.export(path, verbose=False)
    return path


def lambda_h5(directory, marker_path):
    """A legacy `.h5` whose Lambda layer writes `marker_path` when its code runs.

    Loading such a file with safe_mode off executes the marshalled bytecode; surgery must refuse it.
    """
    import keras

    marker = str(marker_path)

    def touch_and_double(x):
        open(marker, "w").write("lambda ran")
        return x * 2.0

    inputs = keras.Input((3,), name="x")
    outputs = keras.layers.Lambda(touch_and_double, name="sneaky")(inputs)
    model = keras.Model(inputs, outputs)
    path = os.path.join(str(directory), "lambda.h5")
    model.save(path)
    if os.path.exists(marker):
        os.remove(marker)  # building the model traced the function once; the test starts clean
    return path


def module_without_serving_default(directory):
    """A `tf.Module` SavedModel with signatures `b`, `w` and `train` but no `serving_default`."""

    class Linear(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(np.arange(6, dtype=np.float32).reshape(3, 2), name="w")
            self.b = tf.Variable(np.ones(2, np.float32), name="b")

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def apply_b(self, x):
            return {"y": tf.matmul(x, self.w) + self.b}

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def apply_w(self, x):
            return {"y": tf.matmul(x, self.w)}

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def train(self, x):
            self.b.assign_add(tf.ones(2))
            return {"loss": tf.reduce_sum(tf.matmul(x, self.w))}

    module = Linear()
    path = os.path.join(str(directory), "no_default")
    tf.saved_model.save(module, path, signatures={"b": module.apply_b, "w": module.apply_w, "train": module.train})
    return path, module


def mobilenet_v2(size=32, alpha=0.35, classes=5, seed=2):
    """keras.applications.MobileNetV2 with random weights (nothing downloaded)."""
    import keras

    keras.utils.set_random_seed(seed)
    return keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha, weights=None, classes=classes)
