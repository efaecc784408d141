"""Keras files against the same model as a SavedModel: `inspect`, `split` and `freeze` on
EfficientNetB0 and MobileNetV2 (`weights=None`, 224x224), each command a whole process, medians
of 5 (issue: a Keras file costs at most 1.5x its SavedModel).

The baseline is surgery itself on `model.export(...)` of the same model: the work is the same
(load, flatten, resolve names, cut), only the front door differs. A `.keras` or `.h5` is read
with Keras (deserialise, then one `tf.function` trace of the flattened model); a SavedModel
already holds its traced functions.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# model: (cut, outputs): a cut that separates the graph, and the classifier's output layer
MODELS = {"EfficientNetB0": ("block4b_add", "predictions"), "MobileNetV2": ("block_12_add", "predictions")}


def _save_formats(name: str, folder: str) -> dict:
    """Build `name` once (weights=None) and save it as .keras, legacy .h5 and a SavedModel."""
    script = (
        "import os, sys; os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'\n"
        "import keras\n"
        f"m = getattr(keras.applications, {name!r})(weights=None, input_shape=(224, 224, 3))\n"
        f"m.save({folder!r} + '/m.keras'); m.save({folder!r} + '/m.h5')\n"
        f"m.export({folder!r} + '/m_sm', verbose=False)\n")
    subprocess.run([sys.executable, "-c", script], check=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return {"keras": f"{folder}/m.keras", "h5": f"{folder}/m.h5", "savedmodel": f"{folder}/m_sm"}


def _median_seconds(args: list, repeats: int) -> float:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="3")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "surgery", *args], env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise RuntimeError(f"surgery {' '.join(args)} exited {done.returncode}: {done.stderr[-400:]}")
    return statistics.median(times)


def _commands(path: str, cut: str, outputs: str, out: str) -> dict:
    return {"inspect": ["inspect", path],
            "split": ["split", path, "--cut", cut, "--outputs", outputs, "--out", f"{out}/pieces"],
            "freeze": ["freeze", path, "--outputs", outputs, "--out", f"{out}/frozen.pb"]}


def run(quick: bool = False) -> list:
    repeats = 3 if quick else 5
    models = {"MobileNetV2": MODELS["MobileNetV2"]} if quick else MODELS
    rows = []
    for name, (cut, outputs) in models.items():
        with tempfile.TemporaryDirectory(prefix="bench-keras-") as folder:
            paths = _save_formats(name, folder)
            for verb in ("inspect", "split", "freeze"):
                seconds = {fmt: _median_seconds(_commands(path, cut, outputs, folder)[verb], repeats)
                           for fmt, path in paths.items()}
                for fmt in ("keras", "h5"):
                    rows.append({"benchmark": "keras", "metric": f"{verb} {name} .{fmt} vs SavedModel",
                                 "surgery": seconds[fmt], "baseline": seconds["savedmodel"],
                                 "ratio": seconds[fmt] / seconds["savedmodel"], "unit": "s"})
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(f"{row['metric']:<45} {row['surgery']:.2f} s vs {row['baseline']:.2f} s  ratio {row['ratio']:.2f}x")
