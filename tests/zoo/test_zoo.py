"""The zoo sweep's fast subset (scripts/zoo.py has the checks; `make zoo` runs them all): on
MobileNetV3Small and EfficientNetB0 (whose Dropouts once made 10 of its layer names dead-end
copies), as `.keras` and as a `model.export` SavedModel, a sample of layers: parameters equal
`count_params()`, and every sampled name that resolves gives Keras's values and moves the output
as Keras's own sub-model does when fed. The whole sweep is marked `zoo` (`pytest -m zoo`)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "scripts"))

import zoo


def _assert_exact(row):
    assert "error" not in row, row.get("error")
    assert row["params_equal"], (row["params"], row["keras_params"])
    assert row["shapes_equal"]
    assert not row["value_mismatches"] and not row["feed_mismatches"], row
    assert not row["split_bad"] and row["split_ok"] >= 1, row


@pytest.mark.parametrize("name", ["MobileNetV3Small", "EfficientNetB0"])
def test_sampled_layer_names_are_exact(name, tmp_path):
    model = zoo.build(name)
    layers = zoo.candidate_layers(model)
    # the Dropouts and the layers they pass through, where names went wrong, plus a random sample
    dropouts = [i for i, layer in enumerate(layers) if "drop" in layer.name]
    chosen = {i for d in dropouts[:2] for i in (d - 1, d)} | {layers.index(x) for x in zoo.sample(layers, 6)}
    chosen = [layers[i] for i in sorted(chosen)]
    paths = {}
    for fmt in ("keras", "savedmodel"):  # both saved before the checks build sub-models on the layers
        (tmp_path / fmt).mkdir()
        paths[fmt] = zoo.save(model, fmt, str(tmp_path / fmt))
    for fmt, path in paths.items():
        row = zoo.check(model, path, layers=chosen, splits=1)
        _assert_exact(row)
        if fmt == "keras":
            assert not row["unresolved"], row["unresolved"]


@pytest.mark.zoo
@pytest.mark.parametrize("name", list(zoo.ARCHITECTURES))
def test_every_architecture(name):
    for row in zoo.sweep([name], zoo.FORMATS, progress=lambda _: None):
        if "skipped" not in row:
            _assert_exact(row)
