"""The zoo sweep: every `keras.applications` architecture (`weights=None`, small inputs) as a
`.keras` file, a legacy `.h5` (where Keras can load it back) and a `model.export` SavedModel,
checked against Keras itself:

- `inspect` counts the parameters `count_params()` counts, and shows the input and output shapes;
- every layer name resolves to the tensor `get_layer(name).output` computes: the same values on a
  batch, and feeding a perturbed value there moves the model's output exactly as Keras's own
  `keras.Model([model.input, layer.output], model.output)` does (a dead-end copy of the right
  values passes the first check and fails this one);
- a split at a sample of the layers that separate the graph composes back to `predict`.

    python scripts/zoo.py                      # one architecture per family, every format
    python scripts/zoo.py --all --json zoo.json  # all of them (`make zoo`)
    python scripts/zoo.py --models MobileNetV2 --formats keras --layers 10

tests/zoo/test_zoo.py runs a fast subset in CI. No weights are downloaded: `weights=None`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from surgery.core.tfcompat import tf

# name: (input side, the family it stands for). Sizes are the smallest each architecture builds
# at (its pooling strides), to keep the sweep quick; `weights=None`, 10 classes.
ARCHITECTURES = {
    "ConvNeXtTiny": (32, "ConvNeXt"), "ConvNeXtSmall": (32, "ConvNeXt"), "ConvNeXtBase": (32, "ConvNeXt"),
    "ConvNeXtLarge": (32, "ConvNeXt"), "ConvNeXtXLarge": (32, "ConvNeXt"),
    "DenseNet121": (32, "DenseNet"), "DenseNet169": (32, "DenseNet"), "DenseNet201": (32, "DenseNet"),
    "EfficientNetB0": (32, "EfficientNet"), "EfficientNetB1": (32, "EfficientNet"),
    "EfficientNetB2": (32, "EfficientNet"), "EfficientNetB3": (32, "EfficientNet"),
    "EfficientNetB4": (32, "EfficientNet"), "EfficientNetB5": (32, "EfficientNet"),
    "EfficientNetB6": (32, "EfficientNet"), "EfficientNetB7": (32, "EfficientNet"),
    "EfficientNetV2B0": (32, "EfficientNetV2"), "EfficientNetV2B1": (32, "EfficientNetV2"),
    "EfficientNetV2B2": (32, "EfficientNetV2"), "EfficientNetV2B3": (32, "EfficientNetV2"),
    "EfficientNetV2S": (32, "EfficientNetV2"), "EfficientNetV2M": (32, "EfficientNetV2"),
    "EfficientNetV2L": (32, "EfficientNetV2"),
    "InceptionResNetV2": (75, "InceptionResNet"), "InceptionV3": (75, "Inception"),
    "MobileNet": (32, "MobileNet"), "MobileNetV2": (32, "MobileNetV2"),
    "MobileNetV3Small": (32, "MobileNetV3"), "MobileNetV3Large": (32, "MobileNetV3"),
    "NASNetMobile": (32, "NASNet"), "NASNetLarge": (32, "NASNet"),
    "ResNet50": (32, "ResNet"), "ResNet101": (32, "ResNet"), "ResNet152": (32, "ResNet"),
    "ResNet50V2": (32, "ResNetV2"), "ResNet101V2": (32, "ResNetV2"), "ResNet152V2": (32, "ResNetV2"),
    "VGG16": (32, "VGG"), "VGG19": (32, "VGG"), "Xception": (71, "Xception"),
}
FORMATS = ("keras", "h5", "savedmodel")
TOLERANCE = 1e-4  # relative to the compared values' scale


def family_heads() -> list[str]:
    """The first architecture of each family: the default sweep and CI's subset."""
    seen, heads = set(), []
    for name, (_, family) in ARCHITECTURES.items():
        if family not in seen:
            seen.add(family)
            heads.append(name)
    return heads


def build(name: str):
    import keras

    side, _ = ARCHITECTURES[name]
    return getattr(keras.applications, name)(weights=None, input_shape=(side, side, 3), classes=10)


def save(model, fmt: str, directory: str) -> str | None:
    """The model written as `fmt`; None for a legacy .h5 that Keras cannot load back."""
    import keras

    if fmt == "keras":
        path = os.path.join(directory, "model.keras")
        model.save(path)
    elif fmt == "h5":
        path = os.path.join(directory, "model.h5")
        model.save(path)
        try:
            keras.saving.load_model(path, compile=False)
        except Exception:
            return None
    else:
        path = os.path.join(directory, "sm")
        model.export(path, verbose=False)
    return path


def _close(a, b) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return False
    scale = max(float(np.abs(b).max()), 1e-6)
    return float(np.abs(a - b).max()) <= TOLERANCE * scale + 1e-6


def candidate_layers(model) -> list:
    """Single-output layers called once (the names `inspect` and `model.summary()` give)."""
    import keras

    return [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)
            and len(layer._inbound_nodes) == 1 and isinstance(layer.output, keras.KerasTensor)]


def sample(layers: list, k: int | None, seed: int = 0) -> list:
    if k is None or k >= len(layers):
        return layers
    idx = np.random.default_rng(seed).choice(len(layers), size=k, replace=False)
    return [layers[i] for i in sorted(idx)]


def check(model, path: str, *, layers=None, splits: int = 3, seed: int = 0) -> dict:
    """Every check above for one saved model; a dict of counts and the names that failed."""
    import keras

    from surgery.core.errors import SurgeryError
    from surgery.core.graph import graph_from_def
    from surgery.core.model import load_model
    from surgery.core.names import resolve_tensor
    from surgery.passes.freeze import freeze_model
    from surgery.passes.inspect import inspect_model
    from surgery.passes.split import split_model

    started = time.perf_counter()
    loaded = load_model(path)
    report = inspect_model(loaded)
    row = {"params": report["num_params"], "keras_params": model.count_params()}
    row["params_equal"] = row["params"] == row["keras_params"]
    in_shape = [None, *model.input.shape[1:]]
    out_shape = [None, *model.output.shape[1:]]
    row["shapes_equal"] = ([t["shape"] for t in report["inputs"]] == [list(in_shape)]
                           and [t["shape"] for t in report["outputs"]] == [list(out_shape)])
    output_name = report["outputs"][0]["name"]
    frozen = freeze_model(loaded, output_name)
    graph = graph_from_def(frozen.graph_def)
    input_name = frozen.inputs[0].name
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, *model.input.shape[1:])).astype(np.float32)
    chosen = layers if layers is not None else candidate_layers(model)
    values = keras.Model(model.inputs, [layer.output for layer in chosen]).predict(x, verbose=0) if chosen else []
    if len(chosen) == 1:
        values = [values]
    unresolved, value_bad, feed_bad, resolved = [], [], [], {}
    sess = tf.compat.v1.Session(graph=graph)  # not as a context: Keras's predict must stay eager
    with contextlib.closing(sess):
        out_tensor = graph.get_tensor_by_name(frozen.outputs[0].name)
        for layer, expected in zip(chosen, values):
            try:  # as a command resolves it: on the model as loaded; the frozen graph keeps the names
                tensor = graph.get_tensor_by_name(resolve_tensor(loaded.graph, layer.name).name)
            except (SurgeryError, KeyError):
                unresolved.append(layer.name)
                continue
            resolved[layer.name] = tensor.name
            got = sess.run(tensor, {input_name: x})
            if not _close(got, expected):
                value_bad.append(layer.name)
                continue
            noise = rng.standard_normal(expected.shape).astype(np.float32) * (float(np.std(expected)) or 1.0)
            perturbed = (expected + noise).astype(expected.dtype)
            fed = sess.run(out_tensor, {input_name: x, tensor: perturbed})
            if layer.output is model.output:  # fed at the output, the output is what was fed
                reference = perturbed
            else:
                sub = keras.Model([model.input, layer.output], model.output)
                reference = np.asarray(sub([x, perturbed], training=False))  # eager: no predict loop to trace
            if not _close(fed, reference):
                feed_bad.append(layer.name)
    row.update(layers=len(chosen), unresolved=unresolved, value_mismatches=value_bad, feed_mismatches=feed_bad)
    row["split_ok"], row["split_tried"], row["split_bad"] = 0, 0, []
    expected_out = model.predict(x, verbose=0)
    for name in [n for n in resolved if n not in value_bad and n not in feed_bad][1:-1]:
        if row["split_tried"] >= splits:
            break
        try:
            pieces = split_model(loaded, name, output_name)
        except SurgeryError:
            continue  # the layer does not separate the graph (inside a residual unit)
        row["split_tried"] += 1
        offline, online = graph_from_def(pieces.offline.graph_def), graph_from_def(pieces.online.graph_def)
        with contextlib.closing(tf.compat.v1.Session(graph=offline)) as s:
            cut = s.run([t.name for t in pieces.offline.outputs], {input_name: x})
        feeds = {c["placeholder"]: v for c, v in zip(pieces.cut, cut)}
        with contextlib.closing(tf.compat.v1.Session(graph=online)) as s:
            got = s.run(pieces.online.outputs[0].name, feeds)
        if _close(got, expected_out):
            row["split_ok"] += 1
        else:
            row["split_bad"].append(name)
    row["mismatches"] = len(value_bad) + len(feed_bad)
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def sweep(models, formats, *, layers: int | None = None, splits: int = 3, progress=print) -> list[dict]:
    rows = []
    for name in models:
        model = build(name)
        chosen = sample(candidate_layers(model), layers)
        with tempfile.TemporaryDirectory(prefix="surgery-zoo-") as d:
            paths = {}
            for fmt in formats:  # all saved before any check builds sub-models on the same layers
                os.makedirs(os.path.join(d, fmt))
                paths[fmt] = save(model, fmt, os.path.join(d, fmt))
            for fmt, path in paths.items():
                row = {"model": name, "format": fmt}
                if path is None:
                    row["skipped"] = "Keras cannot load its own legacy .h5 of this model"
                else:
                    try:
                        row.update(check(model, path, layers=chosen, splits=splits))
                    except Exception as e:
                        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                rows.append(row)
                progress(format_row(row))
    return rows


def format_row(row: dict) -> str:
    head = f"{row['model']:<18} {row['format']:<10}"
    if "skipped" in row:
        return head + f" skipped: {row['skipped']}"
    if "error" in row:
        return head + f" ERROR {row['error']}"
    return (head + f" params {'=' if row['params_equal'] else '≠'} ({row['params']:,})"
            f"  shapes {'=' if row['shapes_equal'] else '≠'}  layers {row['layers']:>4}"
            f"  mismatched {row['mismatches']}  unresolved {len(row['unresolved'])}"
            f"  splits {row['split_ok']}/{row['split_tried']}  {row['seconds']:.0f}s")


def markdown(rows: list[dict]) -> str:
    lines = ["| model | format | params = Keras | shapes | layers checked | mismatched | unresolved | splits |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r or "error" in r:
            why = r.get("skipped") or "error: " + r["error"]
            lines.append(f"| {r['model']} | {r['format']} | {why} | | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['format']} | {'yes' if r['params_equal'] else 'NO'} | "
                     f"{'yes' if r['shapes_equal'] else 'NO'} | {r['layers']} | {r['mismatches']} | "
                     f"{len(r['unresolved'])} | {r['split_ok']}/{r['split_tried']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="every architecture (default: one per family)")
    parser.add_argument("--models", nargs="+", choices=sorted(ARCHITECTURES), help="these architectures")
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    parser.add_argument("--layers", type=int, help="check this many layers per model (default: all)")
    parser.add_argument("--splits", type=int, default=3, help="splits per model to compose back")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    models = args.models or (list(ARCHITECTURES) if args.all else family_heads())
    rows = sweep(models, args.formats, layers=args.layers, splits=args.splits)
    print()
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    bad = [r for r in rows if "error" in r or ("mismatches" in r and (r["mismatches"] or r["unresolved"]
                                                                        or not r["params_equal"] or r["split_bad"]))]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
