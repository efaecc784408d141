"""Runtimes benchmark (`surgery export --tflite/--onnx`): the same frozen piece answered by LiteRT and
onnxruntime against TensorFlow's `sess.run` (a `make_callable`), one request (batch 1) at a time,
one thread each; and each file's size against the frozen `.pb`.

Pieces: the issue's 64-1024-1024-48 MLP and a Keras MobileNetV2 (alpha 0.35, random weights)
frozen by `surgery`. Rows: per-request latency (median ms) and size (KiB), ratio = runtime / TF."""

from __future__ import annotations

import os
import tempfile

import numpy as np
from bench import median_time


def _mlp_piece():
    from surgery.core.tfcompat import tf
    from surgery.exporters.runtimes import Piece

    v1 = tf.compat.v1
    rng = np.random.default_rng(0)
    graph = tf.Graph()
    with graph.as_default():
        h = x = v1.placeholder(tf.float32, [None, 64], name="features")
        for i, (a, b) in enumerate([(64, 1024), (1024, 1024), (1024, 48)]):
            w = tf.constant((rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32))
            h = tf.matmul(h, w, name=f"dense{i}")
            h = tf.nn.relu(h) if i < 2 else tf.nn.softmax(h, name="scores")
    return Piece("mlp", graph.as_graph_def(), [{"name": x.name, "dtype": "float32", "shape": [None, 64]}],
                 [{"name": "scores:0", "dtype": "float32", "shape": [None, 48]}])


def _mobilenet_piece(tmp: str, size: int):
    import keras

    from surgery.exporters.runtimes import load_pieces

    keras.utils.set_random_seed(0)
    net = keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3), alpha=0.35, classes=10)
    net.export(os.path.join(tmp, "mobilenet"), verbose=False)
    (piece,), _ = load_pieces(os.path.join(tmp, "mobilenet"), outputs=["output_0"])
    piece.name = f"MobileNetV2 {size}px"
    return piece


def run(quick: bool = False) -> list:
    from surgery.exporters.runtimes import convert_piece, request_runner

    rows = []
    repeats = 50 if quick else 200
    with tempfile.TemporaryDirectory() as tmp:
        for piece in (_mlp_piece(), _mobilenet_piece(tmp, 64 if quick else 96)):
            x = np.random.default_rng(1).normal(size=[256, *piece.inputs[0].shape[1:]]).astype(np.float32)
            np.save(os.path.join(tmp, "rows.npy"), x)
            pb_bytes = piece.graph_def.ByteSize()
            tf_answer = request_runner("tensorflow", None, piece)
            one = [x[:1]]
            tf_answer(one)
            t_tf = median_time(lambda: tf_answer(one), repeats)
            for fmt, quantize in (("tflite", None), ("tflite", "int8"), ("onnx", None)):
                cal = [os.path.join(tmp, "rows.npy")] if quantize else []
                converted = convert_piece(piece, fmt, quantize=quantize, calibration=cal, verify=32)
                answer = request_runner(fmt, converted.blob, piece)
                answer(one)
                t = median_time(lambda: answer(one), repeats)
                label = f"{piece.name} {'LiteRT' if fmt == 'tflite' else 'onnxruntime'} {quantize or 'float'}"
                rows.append({"benchmark": "runtimes", "metric": f"{label}, ms/request", "surgery": t * 1000,
                             "baseline": t_tf * 1000, "ratio": t / t_tf, "unit": "ms"})
                rows.append({"benchmark": "runtimes", "metric": f"{label}, file vs .pb", "surgery": len(converted.blob) / 1024,
                             "baseline": pb_bytes / 1024, "ratio": len(converted.blob) / pb_bytes, "unit": "KiB"})
    return rows
