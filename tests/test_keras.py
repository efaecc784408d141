"""Keras and TF2 models as people hold them (issue 13): `.keras`, legacy `.h5`, in-memory
`keras.Model`s and TF2 SavedModels — inspect, freeze, split, restore, fine-tune by Keras layer
name, checked against Keras's own `predict` and intermediate-layer outputs."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
from conftest import cli, run_cli, run_graph_def, tf
from keras_models import (
    export_saved_model,
    lambda_h5,
    mini_xception,
    mobilenet_v2,
    module_without_serving_default,
    multi_output,
    sample_inputs,
    save_keras,
    save_legacy_h5,
    save_weights_h5,
)

from surgery import load_model
from surgery.core.graph import read_graph_def
from surgery.passes.freeze import freeze_model


def layer_output(model, layer, x):
    import keras

    return keras.Model(model.inputs, model.get_layer(layer).output).predict(x, verbose=0)


@pytest.fixture(scope="module")
def xception(tmp_path_factory):
    d = tmp_path_factory.mktemp("xception")
    model = mini_xception()
    return {"model": model, "keras": save_keras(model, d), "h5": save_legacy_h5(model, d),
            "weights": save_weights_h5(model, d), "sm": export_saved_model(model, d), "dir": d}


@pytest.fixture(scope="module")
def transcriber(tmp_path_factory):
    d = tmp_path_factory.mktemp("transcriber")
    model = multi_output()
    return {"model": model, "sm": export_saved_model(model, d), "keras": save_keras(model, d)}


def listing(path) -> list:
    return sorted(os.listdir(path))


# ---------------------------------------------------------------- inspect

@pytest.mark.parametrize("kind", ["keras", "h5"])
def test_inspect_reports_keras_params_and_shapes(xception, kind):
    r = cli("inspect", xception[kind], "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    model = xception["model"]
    assert report["format"] == {"keras": "keras", "h5": "keras_h5"}[kind]
    assert report["num_params"] == model.count_params()
    assert [i["shape"] for i in report["inputs"]] == [list(model.inputs[0].shape)]
    assert [o["shape"] for o in report["outputs"]] == [list(model.outputs[0].shape)]
    assert [i["name"] for i in report["inputs"]] == ["image:0"]
    assert [o["name"] for o in report["outputs"]] == ["predictions:0"]


def test_in_memory_keras_model_graph_and_graph_def(xception):
    model = xception["model"]
    x = sample_inputs(model)
    loaded = load_model(model)
    assert loaded.format == "keras_model"
    frozen = freeze_model(loaded, "predictions")
    got = run_graph_def(frozen.graph_def, {"image:0": x}, "predictions:0")
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-5)
    # a tf.Graph and a GraphDef held in memory load too, unmutated
    from_graph = load_model(loaded.graph)
    assert from_graph.format == "tf_graph" and from_graph.graph is not loaded.graph
    from_def = load_model(frozen.graph_def)
    assert from_def.format == "graph_def" and from_def.is_frozen
    np.testing.assert_allclose(run_graph_def(freeze_model(from_def, "predictions").graph_def, {"image:0": x},
                                             "predictions:0"), got, atol=1e-6)


# ---------------------------------------------------------------- layer names everywhere

@pytest.mark.parametrize("layer", ["stem_relu", "block0_bn2", "add_0", "add_1", "gap"])
def test_keras_layer_names_resolve_to_the_layer_output(xception, tmp_path, layer):
    out = tmp_path / "f.pb"
    r = cli("freeze", xception["h5"], "--outputs", layer, "--out", out)
    assert r.returncode == 0, r.stderr
    x = sample_inputs(xception["model"])
    got = run_graph_def(read_graph_def(str(out)), {"image:0": x}, f"{layer}:0")
    np.testing.assert_allclose(got, layer_output(xception["model"], layer, x), atol=1e-4)


def test_layer_names_of_a_user_exported_saved_model_resolve(xception, tmp_path):
    """`model.export` traces layers as `mini_xception_1/add_1_1/...`: the summary name still works."""
    out = tmp_path / "f.pb"
    r = cli("freeze", xception["sm"], "--outputs", "add_1", "--out", out)
    assert r.returncode == 0, r.stderr
    frozen = read_graph_def(str(out))
    x = sample_inputs(xception["model"])
    (fetch,) = json.loads(cli("inspect", out, "--json").stdout)["outputs"]
    got = run_graph_def(frozen, {"image:0": x}, fetch["name"])
    np.testing.assert_allclose(got, layer_output(xception["model"], "add_1", x), atol=1e-4)


@pytest.mark.parametrize("kind", ["keras", "sm"])
def test_every_name_inspect_lists_is_accepted(xception, transcriber, tmp_path, kind):
    for path in (xception[kind], transcriber[kind]):
        report = json.loads(cli("inspect", path, "--json").stdout)
        for t in report["outputs"]:
            r = cli("freeze", path, "--outputs", t["name"], "--out", tmp_path / "o.pb")
            assert r.returncode == 0, (t, r.stderr)
        for t in report["inputs"]:
            r = cli("freeze", path, "--inputs", t["name"], "--outputs", report["outputs"][0]["name"],
                    "--out", tmp_path / "i.pb")
            assert r.returncode == 0, (t, r.stderr)


# ---------------------------------------------------------------- split

def test_split_keras_by_layer_name_composes_to_predict(xception, tmp_path):
    out = tmp_path / "pieces"
    r = cli("split", xception["keras"], "--cut", "add_1", "--outputs", "predictions", "--out", out)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    model = xception["model"]
    x = sample_inputs(model, n=6)
    off, on = manifest["pieces"]["offline"], manifest["pieces"]["online"]
    (mid,) = run_graph_def(read_graph_def(str(out / "offline.pb")), {off["inputs"][0]["name"]: x},
                           [off["outputs"][0]["name"]])
    np.testing.assert_allclose(mid, layer_output(model, "add_1", x), atol=1e-4)
    (y,) = run_graph_def(read_graph_def(str(out / "online.pb")), {on["inputs"][0]["name"]: mid},
                         [on["outputs"][0]["name"]])
    np.testing.assert_allclose(y, model.predict(x, verbose=0), atol=1e-4)


# ---------------------------------------------------------------- signatures

def test_multi_output_saved_model_names_each_output_by_key(transcriber, tmp_path):
    report = json.loads(cli("inspect", transcriber["sm"], "--json").stdout)
    assert sorted(o["name"] for o in report["outputs"]) == ["contour:0", "note:0", "onset:0"]
    assert [i["name"] for i in report["inputs"]] == ["audio:0"]
    x = sample_inputs(transcriber["model"], n=5)
    serving = tf.saved_model.load(transcriber["sm"]).signatures["serving_default"]
    want = {k: v.numpy() for k, v in serving(audio=tf.constant(x)).items()}
    for key in ("contour", "note", "onset"):
        out = tmp_path / f"{key}.pb"
        r = cli("freeze", transcriber["sm"], "--outputs", key, "--out", out)
        assert r.returncode == 0, r.stderr
        got = run_graph_def(read_graph_def(str(out)), {"audio:0": x}, f"{key}:0")
        np.testing.assert_allclose(got, want[key], atol=1e-5)


def test_signature_flag_picks_the_signature(tmp_path):
    path, module = module_without_serving_default(tmp_path)
    x = np.random.default_rng(0).normal(size=(3, 3)).astype(np.float32)
    for name, want in (("w", module.apply_w(x)["y"]), ("b", module.apply_b(x)["y"])):
        out = tmp_path / f"{name}.pb"
        r = cli("freeze", path, "--signature", name, "--outputs", "y", "--out", out)
        assert r.returncode == 0, r.stderr
        report = json.loads(cli("inspect", path, "--signature", name, "--json").stdout)
        (inp,) = report["inputs"]
        got = run_graph_def(read_graph_def(str(out)), {inp["name"]: x}, "y:0")
        np.testing.assert_allclose(got, want.numpy(), atol=1e-6)


# ---------------------------------------------------------------- finetune and restore

@pytest.fixture(scope="module")
def separable(xception, tmp_path_factory):
    """Rows whose labels a linear map of the `gap` features determines."""
    d = tmp_path_factory.mktemp("separable")
    model = xception["model"]
    x = sample_inputs(model, n=400, seed=3)
    feats = layer_output(model, "gap", x)
    w = np.random.default_rng(4).normal(size=(feats.shape[1], 3))
    y = ((feats - feats.mean(0)) @ w).argmax(1)
    path = d / "rows.h5"
    with h5py.File(path, "w") as f:
        f["x"], f["y"] = x, y
    return {"path": path, "x": x, "feats": feats}


def test_finetune_keras_h5_at_a_layer_name(xception, separable, tmp_path):
    out = tmp_path / "ft"
    r = cli("finetune", xception["h5"], "--at", "gap", "--head", "flatten,dense:3", "--data", separable["path"],
            "--x", "x", "--y", "y", "--epochs", "40", "--lr", "0.05", "--batch-size", "32", "--out", out)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["finetune"]["val_accuracy"] >= 0.85, manifest["finetune"]["history"][-1]
    frozen = read_graph_def(str(out / "frozen.pb"))
    x = separable["x"][:8]
    backbone, probs = run_graph_def(frozen, {"image:0": x}, ["gap:0", "head/probabilities:0"])
    np.testing.assert_allclose(backbone, separable["feats"][:8], atol=1e-4)
    # the SavedModel beside it answers like frozen.pb
    serving = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"]
    (answer,) = serving(image=tf.constant(x)).values()
    np.testing.assert_allclose(answer.numpy(), probs, atol=1e-6)


def test_finetune_and_restore_a_keras_saved_model(xception, separable, tmp_path):
    model = load_model(xception["sm"])
    from surgery import finetune

    result = finetune(model, at="add_1", head="flatten,dense:3", data=str(separable["path"]), x_key="x", y_key="y",
                      out=str(tmp_path / "ft"), epochs=1, progress=False)
    frozen = read_graph_def(str(tmp_path / "ft" / "frozen.pb"))
    x = separable["x"][:4]
    (backbone,) = run_graph_def(frozen, {result.names["input"]: x}, [result.names["bottleneck"]])
    np.testing.assert_allclose(backbone, layer_output(xception["model"], "add_1", x), atol=1e-4)
    # restore: the SavedModel's own object-keyed checkpoint fills its flattened variables
    r = cli("restore", xception["sm"], "--from", xception["sm"], "--out", tmp_path / "r" / "model.ckpt", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert len(report["restored"]) == len(xception["model"].weights) and not report["missing"]
    restored = load_model(str(tmp_path / "r" / "model.ckpt"))
    np.testing.assert_array_equal(restored.read_variable("stem_conv/kernel"),
                                  xception["model"].get_layer("stem_conv").kernel.numpy())


# ---------------------------------------------------------------- code in files

def test_lambda_h5_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "marker"
    path = lambda_h5(tmp_path, marker)
    for command in (("inspect", path), ("freeze", path, "--outputs", "sneaky", "--out", tmp_path / "o.pb")):
        r = run_cli(*command)
        assert r.returncode == 2, r.stderr
        assert "Lambda layer 'sneaky'" in r.stderr and "--trust-code" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not marker.exists() and not (tmp_path / "o.pb").exists()
    r = run_cli("audit", path, "--json")
    assert r.returncode == 3, r.stderr
    (finding,) = json.loads(r.stdout)["findings"]
    assert finding["name"] == "sneaky" and finding["category"] == "python"
    assert not marker.exists()


def test_trust_code_hands_the_file_to_keras(tmp_path):
    """With --trust-code surgery's refusal is lifted and Keras decides (this Keras 3 file names
    its function instead of storing its bytecode, so Keras cannot find it: still exit 2)."""
    marker = tmp_path / "marker"
    path = lambda_h5(tmp_path, marker)
    r = cli("inspect", path, "--trust-code")
    assert r.returncode == 2 and "could not be loaded by Keras" in r.stderr and "touch_and_double" in r.stderr


def test_clean_keras_file_audits_clean(xception):
    r = cli("audit", xception["keras"], "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["clean"]


# ---------------------------------------------------------------- wrong inputs

def _bad(xception, tmp_path):
    no_default, _ = module_without_serving_default(tmp_path)
    return [
        (("freeze", xception["weights"], "--outputs", "predictions"), ["weights only", "restore MODEL --from"]),
        (("freeze", xception["sm"], "--signature", "serving_defualt", "--outputs", "predictions"),
         ["no signature 'serving_defualt'", "serving_default"]),
        (("freeze", no_default, "--outputs", "y"), ["b, train, w", "--signature"]),
        (("freeze", xception["h5"], "--outputs", "add_9"), ["add_9", "add_0", "add_1"]),
        (("split", xception["keras"], "--cut", "gapp", "--outputs", "predictions"), ["'gap'"]),
    ]


def test_wrong_inputs_exit_2_naming_alternatives(xception, tmp_path):
    for args, words in _bad(xception, tmp_path):
        out = tmp_path / "out"
        r = cli(*args, "--out", out)
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        for w in words:
            assert w in r.stderr, (args, r.stderr)
        assert not out.exists()
    r = cli("finetune", xception["h5"], "--at", "add_9", "--head", "dense:3", "--data", tmp_path / "none.h5",
            "--out", tmp_path / "ft")
    assert r.returncode == 2 and "add_0" in r.stderr and not (tmp_path / "ft").exists()


# ---------------------------------------------------------------- keras.applications

def test_mobilenet_v2_split_at_a_block(tmp_path):
    model = mobilenet_v2()
    path = save_keras(model, tmp_path)
    report = json.loads(cli("inspect", path, "--json").stdout)
    assert report["num_params"] == model.count_params()
    out = tmp_path / "pieces"
    r = cli("split", path, "--cut", "block_6_project_BN", "--outputs", "predictions", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "max |difference|" in r.stdout
    x = sample_inputs(model, n=3)
    (y,) = run_graph_def(read_graph_def(str(out / "offline.pb")), {"input_layer:0": x},
                         ["block_6_project_BN:0"])
    np.testing.assert_allclose(y, layer_output(model, "block_6_project_BN", x), atol=1e-4)


def _dropout_model():
    """x -> Dense 'hidden' -> Dropout 'drop' -> Dense 'out': at inference the Dropout returns its
    input, so 'hidden' and 'drop' are one tensor; 'drop' sorts first, which once made 'hidden'
    a dead-end copy that a cut ignored."""
    import keras

    x = keras.Input((6,), name="x")
    h = keras.layers.Dense(5, activation="relu", name="hidden")(x)
    d = keras.layers.Dropout(0.5, name="drop")(h)
    out = keras.layers.Dense(3, name="out")(d)
    return keras.Model(x, out)


@pytest.mark.parametrize("layer", ["hidden", "drop"])
def test_a_name_shared_with_a_dropout_means_that_layer(layer, tmp_path):
    """Feeding the named layer's tensor must move the output as Keras's own sub-model says: a
    value check alone passes on a dead-end copy."""
    import keras

    model = _dropout_model()
    path = save_keras(model, tmp_path)
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    r = cli("freeze", path, "--inputs", layer, "--outputs", "out", "--out", tmp_path / "head.pb")
    assert r.returncode == 0, r.stderr
    head = read_graph_def(str(tmp_path / "head.pb"))
    placeholders = [n.name for n in head.node if n.op == "Placeholder"]
    assert placeholders == [layer], placeholders
    fed = np.random.default_rng(1).standard_normal((4, 5)).astype(np.float32)  # not hidden's values
    expected = keras.Model([model.input, model.get_layer(layer).output], model.output).predict([x, fed], verbose=0)
    np.testing.assert_allclose(run_graph_def(head, {f"{layer}:0": fed}, "out:0"), expected, atol=1e-5)
    r = cli("split", path, "--cut", layer, "--outputs", "out", "--out", tmp_path / "pieces")
    assert r.returncode == 0, r.stderr


def _statistics_model():
    """Normalization (adapted: its mean, variance and count are variables its call never reads)
    → Dense → BatchNormalization (moving statistics: non-trainable) → Dense."""
    import keras

    x = keras.Input((6,), name="x")
    norm = keras.layers.Normalization(name="norm")
    norm.adapt(np.random.default_rng(0).standard_normal((32, 6)).astype(np.float32) * 3 + 1)
    h = keras.layers.Dense(5, activation="relu", name="d")(norm(x))
    h = keras.layers.BatchNormalization(name="bn")(h)
    model = keras.Model(x, keras.layers.Dense(3, name="out")(h))
    bn = model.get_layer("bn")  # statistics that differ from their initial 0 and 1
    bn.moving_mean.assign(np.linspace(0.5, 1.5, 5).astype(np.float32))
    bn.moving_variance.assign(np.linspace(2.0, 3.0, 5).astype(np.float32))
    return model


@pytest.mark.parametrize("kind", ["keras", "h5", "sm"])
def test_parameters_are_counted_as_keras_counts_them(kind, tmp_path):
    model = _statistics_model()
    path = {"keras": save_keras, "h5": save_legacy_h5, "sm": export_saved_model}[kind](model, tmp_path)
    r = cli("inspect", path, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert doc["num_params"] == model.count_params() == 86  # 13 of them the Normalization's
    assert (doc["num_params_trainable"], doc["num_params_non_trainable"]) == (trainable, 86 - trainable)
    assert "surgery-keras-" not in str(doc["checkpoint"])  # a Keras file's weights are the file
    if kind != "sm":  # and what split and finetune record as the source's checkpoint (#33's third papercut)
        from surgery.core.manifest import source_info

        assert source_info(load_model(path))["checkpoint"] == os.path.abspath(path)


def test_train_scopes_never_train_moving_statistics(tmp_path):
    model = _statistics_model()
    path = save_keras(model, tmp_path)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((96, 6)).astype(np.float32)
    data = tmp_path / "d.h5"
    with h5py.File(data, "w") as f:
        f["x"], f["y"] = x, (x[:, 0] > 0).astype(np.int64)
    out = tmp_path / "ft"
    r = cli("finetune", path, "--at", "bn", "--train-scopes", "bn", "--head", "dense:2", "--data", data,
            "--x", "x", "--y", "y", "--epochs", "3", "--lr", "0.1", "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert sorted(doc["fixed"]) == ["bn/moving_mean", "bn/moving_variance"]
    assert not [v for v in doc["trainable"] if "moving" in v]
    assert {"bn/gamma", "bn/beta"} <= set(doc["trainable"])
    trained = load_model(str(out / "model.ckpt"))
    bn = model.get_layer("bn")
    np.testing.assert_array_equal(trained.read_variable("bn/moving_mean"), bn.moving_mean.numpy())
    np.testing.assert_array_equal(trained.read_variable("bn/moving_variance"), bn.moving_variance.numpy())
    assert not np.array_equal(trained.read_variable("bn/gamma"), bn.gamma.numpy())  # the opened weights did train


def test_a_layer_called_twice_is_ambiguous_and_each_call_is_named(tmp_path):
    import keras

    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    shared = keras.layers.Dense(3, name="shared")
    h = keras.layers.Concatenate(name="cat")([shared(a), shared(b)])
    model = keras.Model([a, b], keras.layers.Dense(2, name="out")(h))
    path = save_keras(model, tmp_path)
    r = cli("freeze", path, "--inputs", "shared", "--outputs", "out", "--out", tmp_path / "f.pb")
    assert r.returncode == 2, r.stderr
    assert "called 2 times" in r.stderr and "shared.call_0" in r.stderr and "shared.call_1" in r.stderr
    assert not (tmp_path / "f.pb").exists()
    r = cli("split", path, "--cut", "shared.call_0,shared.call_1", "--outputs", "out", "--out", tmp_path / "p")
    assert r.returncode == 0, r.stderr
    rng = np.random.default_rng(0)
    xa, xb = rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal((5, 4)).astype(np.float32)
    off = read_graph_def(str(tmp_path / "p" / "offline.pb"))
    on = read_graph_def(str(tmp_path / "p" / "online.pb"))
    c0, c1 = run_graph_def(off, {"a:0": xa, "b:0": xb}, ["shared.call_0:0", "shared.call_1:0"])
    np.testing.assert_allclose(c0, shared(xa).numpy(), atol=1e-5)
    np.testing.assert_allclose(c1, shared(xb).numpy(), atol=1e-5)
    got = run_graph_def(on, {"shared.call_0:0": c0, "shared.call_1:0": c1}, "out:0")
    np.testing.assert_allclose(got, model.predict([xa, xb], verbose=0), atol=1e-5)


def test_restore_keras3_weights_file_equals_keras_load_weights(tmp_path):
    """`model.save_weights('x.weights.h5')` keys each layer's variables by position only
    (`layers/<group>/vars/<i>`); restored by layer name and order, then frozen, the graph
    answers as Keras does after `load_weights`. Every weight, moving statistics included, is
    drawn anew, so a swapped order (gamma for beta, mean for variance) would show."""
    model = mobilenet_v2()
    path = save_keras(model, tmp_path)
    rng = np.random.default_rng(7)
    for v in model.weights:
        v.assign(rng.uniform(0.5, 1.5, size=v.shape).astype(np.float32))
    weights = save_weights_h5(model, tmp_path, "trained.weights.h5")
    r = cli("restore", path, "--from", weights, "--out", tmp_path / "r" / "model.ckpt")
    assert r.returncode == 0, r.stderr
    assert f"restored {len(model.weights)} variables" in r.stdout
    r = cli("freeze", tmp_path / "r" / "model.ckpt", "--outputs", "predictions", "--out", tmp_path / "f.pb")
    assert r.returncode == 0, r.stderr
    x = sample_inputs(model, n=3)
    feed = {model.layers[0].name + ":0": x}
    got = run_graph_def(read_graph_def(str(tmp_path / "f.pb")), feed, "predictions:0")
    np.testing.assert_allclose(got, model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


def test_keras3_weights_file_needs_a_keras_target(small_ckpt, tmp_path):
    prefix = small_ckpt[0]
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")])
    weights = save_weights_h5(model, tmp_path)
    r = cli("restore", prefix, "--from", weights, "--out", tmp_path / "r" / "model.ckpt")
    assert r.returncode == 2, r.stderr
    assert "Keras 3 weights file" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r").exists()


def _nested_model():
    """x -> Dense 'dense' -> a nested functional model 'inner' (Dense 'dense_in' -> BN 'bn')
    -> Dense 'out'. Keras runs 'inner' as one operation and keeps no tensor for its layers."""
    import keras

    inner_in = keras.Input((8,))
    h = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(6, name="dense_in")(inner_in))
    inner = keras.Model(inner_in, h, name="inner")
    x = keras.Input((4,), name="x")
    model = keras.Model(x, keras.layers.Dense(3, name="out")(inner(keras.layers.Dense(8, name="dense")(x))))
    rng = np.random.default_rng(3)
    for v in model.weights:
        v.assign(rng.uniform(0.5, 1.5, size=v.shape).astype(np.float32))
    return model


def test_nested_model_layers_are_reached_as_outer_slash_inner(tmp_path):
    model = _nested_model()
    path = save_keras(model, tmp_path)
    assert json.loads(cli("inspect", path, "--json").stdout)["num_params"] == model.count_params()
    inner = model.get_layer("inner")
    x = sample_inputs(model, n=5)
    a = model.get_layer("dense")(x)
    bn = inner.get_layer("bn")(inner.get_layer("dense_in")(a), training=False)
    r = cli("split", path, "--cut", "inner/dense_in", "--outputs", "out", "--out", tmp_path / "p")
    assert r.returncode == 0, r.stderr
    r = cli("freeze", path, "--inputs", "inner/bn", "--outputs", "out", "--out", tmp_path / "head.pb")
    assert r.returncode == 0, r.stderr
    head = read_graph_def(str(tmp_path / "head.pb"))
    np.testing.assert_allclose(run_graph_def(head, {"inner/bn:0": bn.numpy()}, "out:0"),
                               model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    # the feed is the real cut: a moved value moves the output as Keras's own head says
    head_keras = model.get_layer("out")
    moved = bn.numpy() + 1.0
    np.testing.assert_allclose(run_graph_def(head, {"inner/bn:0": moved}, "out:0"), head_keras(moved).numpy(),
                               rtol=1e-5, atol=1e-5)
    # the nested model's name is its output
    r = cli("freeze", path, "--outputs", "inner", "--out", tmp_path / "body.pb")
    assert r.returncode == 0, r.stderr
    got = run_graph_def(read_graph_def(str(tmp_path / "body.pb")), {"x:0": x}, "inner:0")
    np.testing.assert_allclose(got, bn.numpy(), rtol=1e-5, atol=1e-5)
    # loading left the caller's model as it was: its layers keep their own calls only
    assert len(inner.get_layer("bn")._inbound_nodes) == 1
