"""`surgery cuts`: how long listing every cut takes on TF-slim-sized graphs, and what compressing the
demo's cuts costs.

1. Time: `cuts()` on a TF-slim VGG-16 (224×224, 1000 classes, a `.meta` with no weights: the
   structure is enough) and on `keras.applications.ResNet50` (weights=None), against TensorFlow's
   own profiler counting the same graph's FLOPs once (`tf.compat.v1.profiler.profile` with
   `float_operation()`), the closest thing plain TensorFlow does. Medians of 3. The VGG-16 run
   also checks the figures the issue asks for: total FLOPs against the profiler's, 138,357,544
   parameters, fc7's bytes per row and an online side of fc8 alone.
2. A table of cuts × dtypes on the demo's pretrained VGG (`make models`): bytes per row, top-1
   agreement with the float model, and accuracy against the labels, on the 400 held-out rows of
   the source task; int8 calibrated on the training rows.

    python scripts/bench.py cuts [--quick]
"""

from __future__ import annotations

import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
from bench import median_time  # noqa: E402
from nets import vgg_16  # noqa: E402

from surgery import load_model  # noqa: E402
from surgery.core.tfcompat import tf  # noqa: E402
from surgery.passes.cuts import cuts  # noqa: E402
from surgery.passes.split import import_piece, split_model  # noqa: E402

v1 = tf.compat.v1
ROOT = os.path.dirname(HERE)
DEMO_CUTS = ("vgg/pool2", "vgg/pool3", "fc7")


def _profiler_flops(graph) -> int:
    opts = v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    return v1.profiler.profile(graph, options=opts).total_float_ops


def _vgg16_meta(directory: str) -> str:
    graph = tf.Graph()
    with graph.as_default():
        vgg_16()
        path = os.path.join(directory, "vgg_16.meta")
        v1.train.export_meta_graph(path, graph=graph)
    return path


def _batch_one(build):
    """The graph `build()` makes, with its input fixed at batch 1 (what the profiler needs)."""
    graph = tf.Graph()
    with graph.as_default():
        build()
    return graph


def _time_vgg16(work: str, repeats: int) -> list:
    meta = _vgg16_meta(work)
    report = cuts(meta, "vgg_16/predictions")
    fc7 = next(c for c in report["cuts"] if c.tensor == "vgg_16/fc7/Relu:0")

    def one():
        images = v1.placeholder(tf.float32, [1, 224, 224, 3], name="input")
        from nets import vgg

        tf.nn.softmax(vgg(images, 1000), name="vgg_16/predictions")

    graph = _batch_one(one)
    profiled = _profiler_flops(graph)
    checks = {"flops vs profiler": report["total"]["flops"] / profiled, "params": report["total"]["params"],
              "fc7 bytes/row": fc7.bytes_per_row, "fc7 online params": fc7.online["params"]}
    print(f"  VGG-16: {report['total']['flops'] / 1e9:.2f} GFLOPs (profiler {profiled / 1e9:.2f}), "
          f"{report['total']['params']:,} params, {len(report['cuts'])} cuts; fc7 {fc7.bytes_per_row}, "
          f"online {fc7.online['params']:,} params", flush=True)
    assert abs(checks["flops vs profiler"] - 1) <= 0.02 and checks["params"] == 138_357_544, checks
    assert fc7.bytes_per_row == {"float32": 16384, "float16": 8192, "int8": 4096}
    assert fc7.online["params"] == 4_097_000, fc7.online
    ours = median_time(lambda: cuts(meta, "vgg_16/predictions"), repeats)
    theirs = median_time(lambda: _profiler_flops(graph), repeats)
    return [{"benchmark": "cuts", "metric": f"cuts VGG-16 ({len(report['cuts'])} cuts) vs profiler once",
             "surgery": ours, "baseline": theirs, "ratio": ours / theirs, "unit": "s"}]


def _time_resnet50(repeats: int) -> list:
    import keras

    model = keras.applications.ResNet50(weights=None)
    report = cuts(model, "predictions")
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [1, 224, 224, 3])
        keras.applications.ResNet50(weights=None)(x)
    units = [c for c in report["cuts"] if c.layer and c.layer.endswith("_out")]
    inside = [c for c in report["cuts"] if c.layer and ("_conv" in c.layer or "_bn" in c.layer) and
              c.layer.startswith("conv") and "block" in c.layer and not c.layer.startswith("conv1")]
    print(f"  ResNet-50: {len(report['cuts'])} cuts, {len(units)} unit outputs, {len(inside)} inside a unit",
          flush=True)
    assert len(units) == 16 and not inside, [c.layer for c in inside]
    ours = median_time(lambda: cuts(model, "predictions"), repeats)
    theirs = median_time(lambda: _profiler_flops(graph), repeats)
    return [{"benchmark": "cuts", "metric": f"cuts ResNet-50 ({len(report['cuts'])} cuts) vs profiler once",
             "surgery": ours, "baseline": theirs, "ratio": ours / theirs, "unit": "s"}]


def _run_split(split, x):
    with v1.Session(graph=import_piece(split.offline.graph_def)) as off:
        sent = off.run([o.name for o in split.offline.outputs], {split.offline_inputs[0].name: x})
    with v1.Session(graph=import_piece(split.online.graph_def)) as on:
        return on.run(split.online.outputs[0].name, dict(zip([c["placeholder"] for c in split.cut], sent)))


def _demo_table(quick: bool) -> list:
    model_dir, data = os.path.join(ROOT, "data/models/vgg"), os.path.join(ROOT, "data/shapes.h5")
    if not os.path.exists(os.path.join(model_dir, "model.ckpt.index")):
        print("  (the demo VGG is not built: `make models` first; table skipped)")
        return []
    with h5py.File(data, "r") as f:
        x, y = f["source/x"][:400], f["source/y"][:400]  # build_vgg.py holds out the first tenth
    model = load_model(model_dir)
    with tempfile.TemporaryDirectory() as work:
        calibration = os.path.join(work, "train.h5")
        with h5py.File(data, "r") as f, h5py.File(calibration, "w") as g:
            g["x"] = f["source/x"][400:]
        float_answer = None
        rows, lines = [], []
        for cut in DEMO_CUTS[-1:] if quick else DEMO_CUTS:
            for dtype in ("float32", "float16", "int8"):
                split = split_model(model, cut, "predictions", cut_dtype=dtype, calibration=[calibration])
                probs = _run_split(split, x)
                if float_answer is None:
                    float_answer = probs
                nbytes = int(np.prod(split.cut[0]["shape"][1:])) * np.dtype(dtype).itemsize
                agree = float(np.mean(probs.argmax(1) == float_answer.argmax(1)))
                accuracy = float(np.mean(probs.argmax(1) == y))
                lines.append(f"  {cut:<10} {dtype:<8} {nbytes:>7,} B/row  top-1 agreement {agree:7.2%}  "
                             f"accuracy {accuracy:6.2%}")
                rows.append({"benchmark": "cuts", "metric": f"demo {cut} {dtype}: bytes per row (vs float32)",
                             "surgery": nbytes, "baseline": nbytes * 4 / np.dtype(dtype).itemsize,
                             "ratio": np.dtype(dtype).itemsize / 4, "unit": "B"})
                rows.append({"benchmark": "cuts", "metric": f"demo {cut} {dtype}: accuracy (vs float32)",
                             "surgery": accuracy, "baseline": float(np.mean(float_answer.argmax(1) == y)),
                             "ratio": accuracy / max(float(np.mean(float_answer.argmax(1) == y)), 1e-9),
                             "unit": ""})
    print("\n".join(lines), flush=True)
    return rows


def run(quick: bool = False) -> list:
    repeats = 1 if quick else 3
    rows = []
    with tempfile.TemporaryDirectory() as work:
        rows += _time_vgg16(work, repeats)
    if not quick:
        rows += _time_resnet50(repeats)
    rows += _demo_table(quick)
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
