"""Freeze a VGG-16-sized checkpoint: `surgery freeze` against TensorFlow's own path
(import_meta_graph + Saver.restore + convert_variables_to_constants + SerializeToString + write).

Each side runs as its own process (`/usr/bin/time`-style: peak RSS read with
`getrusage(RUSAGE_SELF)` by the child at exit, wall time by the parent), so the figures are
whole-process and include importing TensorFlow on both sides. Medians of a few runs, sides
alternated. The two frozen graphs must give the same forward pass on a small input.

    python scripts/bench.py freeze            # VGG-16, 138M parameters (553 MB checkpoint)
    python scripts/bench.py freeze --quick    # VGG-16 at 64x64 / 100 classes, ~40M parameters
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUTPUT = "vgg_16/predictions"

_CHILD_PRELUDE = """
import os, sys, resource, json
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
sys.path.insert(0, {root!r})
"""

_TF_SIDE = """
import tensorflow as tf
v1 = tf.compat.v1
prefix, out, output = sys.argv[1:4]
g = tf.Graph()
with g.as_default():
    saver = v1.train.import_meta_graph(prefix + ".meta", clear_devices=True)
    with v1.Session(graph=g) as sess:
        saver.restore(sess, prefix)
        gd = v1.graph_util.convert_variables_to_constants(sess, g.as_graph_def(), [output])
with open(out, "wb") as f:
    f.write(gd.SerializeToString())
"""

_SURGERY_SIDE = """
from surgery.cli import main
prefix, out, output = sys.argv[1:4]
rc = main(["freeze", prefix, "--outputs", output, "--out", out])
assert rc == 0, rc
"""

_CHILD_EPILOGUE = """
print(json.dumps({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

_BUILD = """
import numpy as np
import tensorflow as tf
sys.path.insert(0, os.path.join({root!r}, "scripts"))
import nets
v1 = tf.compat.v1
prefix, num_classes, image_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
g = tf.Graph()
with g.as_default():
    nets.vgg_16(num_classes=num_classes, image_size=image_size)
    saver = v1.train.Saver()
    with v1.Session() as sess:
        for v in v1.global_variables():  # small random weights: cheap, and a forward pass that means something
            fan_in = max(1, int(np.prod(v.shape[:-1])))
            v.load((rng.standard_normal(v.shape, dtype=np.float32) * np.float32((2 / fan_in) ** 0.5)), sess)
        saver.save(sess, prefix)
"""

_CHECK = """
import numpy as np
import tensorflow as tf
v1 = tf.compat.v1
a, b, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
x = np.random.default_rng(1).uniform(0, 1, size=(1, size, size, 3)).astype(np.float32)
results, ops = [], []
for path in (a, b):
    gd = v1.GraphDef()
    with open(path, "rb") as f:
        gd.ParseFromString(f.read())
    ops.append(sorted({n.op for n in gd.node}))
    g = tf.Graph()
    with g.as_default():
        tf.import_graph_def(gd, name="")
    with v1.Session(graph=g) as sess:
        results.append(sess.run("vgg_16/predictions:0", {"input:0": x}))
bad = {"VariableV2", "VarHandleOp", "Assign", "AssignVariableOp", "SaveV2", "RestoreV2"} & set(ops[0])
print(json.dumps({"max_abs_diff": float(np.abs(results[0] - results[1]).max()), "forbidden_ops": sorted(bad),
                  "argmax_equal": bool((results[0].argmax(-1) == results[1].argmax(-1)).all())}))
"""


def _python(code: str, *args) -> dict:
    """Run `code` in a fresh Python; returns (the JSON it printed last, wall seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD_PRELUDE.format(root=ROOT) + code, *map(str, args)],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{proc.stderr[-2000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return dict(json.loads(lines[-1]) if lines else {}, wall_s=wall)


def run(quick: bool = False) -> list:
    num_classes, image_size = (100, 64) if quick else (1000, 224)
    repeats = 3
    with tempfile.TemporaryDirectory(prefix="bench_freeze_") as tmp:
        prefix = os.path.join(tmp, "vgg16", "model.ckpt")
        _python(_BUILD.format(root=ROOT), prefix, num_classes, image_size)
        ckpt_mb = os.path.getsize(prefix + ".data-00000-of-00001") / 2**20
        ours, theirs = os.path.join(tmp, "surgery.pb"), os.path.join(tmp, "tf.pb")
        runs = {"surgery": [], "tensorflow": []}
        for _ in range(repeats):
            runs["tensorflow"].append(_python(_TF_SIDE + _CHILD_EPILOGUE, prefix, theirs, OUTPUT))
            runs["surgery"].append(_python(_SURGERY_SIDE + _CHILD_EPILOGUE, prefix, ours, OUTPUT))
        check = _python(_CHECK, ours, theirs, image_size)
        if check["forbidden_ops"] or check["max_abs_diff"] > 1e-5:
            raise AssertionError(f"surgery's frozen graph differs from TensorFlow's: {check}")
        sizes = (os.path.getsize(ours) / 2**20, os.path.getsize(theirs) / 2**20)

    def median(side, key):
        return statistics.median(r[key] for r in runs[side])

    label = f"VGG-16 {'quick ' if quick else ''}({ckpt_mb:.0f} MB ckpt)"
    rows = []
    for metric, key, unit in (("peak RSS", "maxrss_mb", "MB"), ("wall time", "wall_s", "s")):
        s, b = median("surgery", key), median("tensorflow", key)
        rows.append({"benchmark": "freeze", "metric": f"freeze {label}: {metric}", "surgery": s, "baseline": b,
                     "ratio": s / b, "unit": unit, "repeats": repeats,
                     "all_surgery": [r[key] for r in runs["surgery"]],
                     "all_baseline": [r[key] for r in runs["tensorflow"]]})
    rows.append({"benchmark": "freeze", "metric": f"freeze {label}: output .pb size", "surgery": sizes[0],
                 "baseline": sizes[1], "ratio": sizes[0] / sizes[1], "unit": "MB",
                 "max_abs_diff": check["max_abs_diff"]})
    return rows


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    for row in run(quick):
        print(json.dumps(row))
