"""Keras in, Keras out (`surgery.keras.split`, `split --format keras`): two keras.Models whose
composition answers as the original does (checked against Keras's own predict), on functional
models with branches, BatchNorm and Dropout, nested models kept whole or entered, a shared layer,
several outputs, and keras.applications; the written files load in an interpreter that imports
only Keras; the online model trains; bad cuts exit 2 and write nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import cli

keras = pytest.importorskip("keras")

import surgery  # noqa: E402
from surgery.core.errors import CutError  # noqa: E402

RNG = np.random.default_rng(0)
L = keras.layers


def _branchy():
    x = keras.Input((12,), name="x")
    h = L.Dense(16, activation="relu", name="d1")(x)
    a = L.Dense(16, activation="relu", name="left")(h)
    b = L.Dropout(0.5, name="drop")(L.Dense(16, name="right")(h))
    m = L.Add(name="add")([h, a, b])  # a skip connection from d1 past both branches
    y = L.Dense(3, activation="softmax", name="out")(L.BatchNormalization(name="bn")(m))
    return keras.Model(x, y, name="branchy")


def _check(model, offline, online, inputs, live=()):
    sent = offline.predict(inputs, verbose=0)
    sent = sent if isinstance(sent, list) else [sent]
    got = online.predict(sent + list(live) if (len(sent) + len(live)) > 1 else sent[0], verbose=0)
    expected = model.predict(inputs if not live else [inputs, *live], verbose=0)
    for g, e in zip(got if isinstance(got, list) else [got], expected if isinstance(expected, list) else [expected]):
        np.testing.assert_allclose(g, e, atol=1e-5)


def test_a_functional_model_with_branches_batchnorm_and_dropout():
    model = _branchy()
    x = RNG.normal(size=(32, 12)).astype("float32")
    offline, online = surgery.keras.split(model, cut="d1", outputs="out")
    assert [t.name for t in online.inputs] == ["d1_cut"]
    assert {layer.name for layer in online.layers} >= {"left", "right", "drop", "add", "bn", "out"}
    _check(model, offline, online, x)
    with pytest.raises(CutError, match="input 'x' reaches output 'out' around it.*add 'd1'"):
        surgery.keras.split(model, cut="left,right", outputs="out")
    offline, online = surgery.keras.split(model, cut="left,drop,d1")  # every path cut: separates
    _check(model, offline, online, x)


def test_the_online_model_above_dropout_and_a_skip_trains():
    model = _branchy()
    _, online = surgery.keras.split(model, cut="d1")
    h = RNG.normal(size=(256, 16)).astype("float32")
    y = (h[:, 0] > 0).astype("int64") + (h[:, 1] > 0)  # learnable from the cut features
    online.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    history = online.fit(h, y, epochs=5, batch_size=256, verbose=0, shuffle=False)
    assert history.history["loss"][-1] < history.history["loss"][0]


def _nested():
    backbone = keras.Sequential([keras.Input((10,)), L.Dense(12, activation="relu", name="b1"),
                                 L.Dense(6, activation="relu", name="b2")], name="backbone")
    img, user = keras.Input((10,), name="img"), keras.Input((3,), name="user")
    z = L.Concatenate(name="cat")([backbone(img), user])
    return keras.Model([img, user], L.Dense(2, name="score")(z), name="nested")


@pytest.mark.parametrize("cut, whole", [("backbone", True), ("b1", False)])
def test_a_nested_model_kept_whole_or_entered_with_a_live_input(cut, whole):
    model = _nested()
    img, user = RNG.normal(size=(8, 10)).astype("float32"), RNG.normal(size=(8, 3)).astype("float32")
    offline, online = surgery.keras.split(model, cut=cut, outputs="score")
    assert [t.name for t in online.inputs] == [f"{cut}_cut", "user"]  # the live input keeps its name
    assert ("backbone" in {layer.name for layer in online.layers}) is False
    assert ("b2" in {layer.name for layer in online.layers}) is (not whole)
    _check(model, offline, online, img, live=[user])


def test_a_layer_shared_by_two_inputs_and_several_outputs():
    a, b = keras.Input((5,), name="a"), keras.Input((5,), name="b")
    shared = L.Dense(4, activation="tanh", name="shared")
    ha, hb = shared(a), shared(b)
    joint = L.Concatenate(name="joint")([ha, hb])
    model = keras.Model([a, b], [L.Dense(2, name="p")(joint), L.Dense(1, name="q")(hb)])
    with pytest.raises(CutError, match="shared.*gives 2 tensors"):
        surgery.keras.split(model, cut="shared")
    offline, online = surgery.keras.split(model, cut="shared:0,shared:1", outputs="p,q")
    xa, xb = RNG.normal(size=(6, 5)).astype("float32"), RNG.normal(size=(6, 5)).astype("float32")
    sent = offline.predict([xa, xb], verbose=0)
    got = online.predict(sent, verbose=0)
    for g, e in zip(got, model.predict([xa, xb], verbose=0)):
        np.testing.assert_allclose(g, e, atol=1e-5)


@pytest.mark.parametrize("build, cut", [
    (lambda: keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=4),
     "block_5_add"),
    (lambda: keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=4), "conv3_block2_out"),
])
def test_keras_applications(build, cut):
    model = build()
    offline, online = surgery.keras.split(model, cut=cut)
    _check(model, offline, online, RNG.uniform(0, 255, size=(4, 32, 32, 3)).astype("float32"))


def test_cli_writes_files_plain_keras_loads_in_a_fresh_interpreter(tmp_path):
    model = _branchy()
    x = RNG.normal(size=(16, 12)).astype("float32")
    for suffix in ("keras", "h5"):
        path = str(tmp_path / f"model.{suffix}")
        model.save(path)
        out = tmp_path / f"pieces_{suffix}"
        r = cli("split", path, "--cut", "d1", "--outputs", "out", "--format", "keras", "--out", out)
        assert r.returncode == 0, r.stderr
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["pieces"]["online"]["graph"] == "online.keras" and manifest["verification"]["passed"]
        again = cli("split", path, "--cut", "d1", "--outputs", "out", "--format", "keras", "--out", out)
        assert again.returncode == 0, again.stderr  # a directory surgery wrote is replaced as a whole
        assert manifest["cut"][0]["tensor"] == "d1" and manifest["cut"][0]["placeholder"] == "d1_cut"
        np.save(tmp_path / "x.npy", x)
        code = ("import sys, numpy as np, keras\n"
                f"off = keras.models.load_model({str(out / 'offline.keras')!r})\n"
                f"on = keras.models.load_model({str(out / 'online.keras')!r})\n"
                f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
                f"np.save({str(tmp_path / 'got.npy')!r}, on.predict(off.predict(x, verbose=0), verbose=0))\n"
                "assert not any(m.startswith('surgery') for m in sys.modules)\n")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        np.testing.assert_allclose(np.load(tmp_path / "got.npy"), model.predict(x, verbose=0), atol=1e-5)


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="subclassed")
        self.d = L.Dense(2, name="d")

    def call(self, x):
        return self.d(x)


def test_refusals_exit_2_and_write_nothing(tmp_path):
    sub = _Subclassed()
    sub(np.zeros((1, 3), "float32"))
    with pytest.raises(CutError, match="subclassed"):
        surgery.keras.split(sub, cut="d")
    path = str(tmp_path / "m.keras")
    _branchy().save(path)
    for args, says in ((["--cut", "left"], "does not separate"), (["--cut", "dd1"], "did you mean d1"),
                       (["--cut", "d1", "--set", "x=1"], "--set does not apply")):
        r = cli("split", path, *args, "--outputs", "out", "--format", "keras", "--out", tmp_path / "p")
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not os.path.exists(tmp_path / "p")
    r = cli("split", tmp_path / "nope.pb", "--cut", "d1", "--outputs", "out", "--format", "keras",
            "--out", tmp_path / "p")
    assert r.returncode == 2
    mine = tmp_path / "mine"  # a folder surgery did not write is never replaced
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    r = cli("split", path, "--cut", "d1", "--outputs", "out", "--format", "keras", "--out", mine)
    assert r.returncode == 2 and "not a directory written by surgery" in r.stderr, r.stderr
    assert os.listdir(mine) == ["notes.txt"]


def test_finetune_writes_a_keras_twin_that_answers_as_frozen_pb_and_trains_on(tmp_path):
    """`finetune` on a Keras MODEL also writes model.keras: the pretrained layers (frozen, but those
    --train-scopes opened) and the head as Keras layers named like their GraphDef twins."""
    import h5py
    from conftest import run_graph_def, tf

    from surgery.core.graph import read_graph_def

    x = keras.Input((16,), name="x")
    h = L.BatchNormalization(name="bn")(L.Dense(32, activation="relu", name="d1")(x))
    h = L.Dense(24, activation="relu", name="feat")(h)
    path = str(tmp_path / "pretrained.keras")
    keras.Model(x, L.Dense(3, activation="softmax", name="out")(h)).save(path)
    rows = RNG.normal(size=(300, 16)).astype("float32")
    labels = (rows[:, 0] > 0).astype("int64") + 2 * (rows[:, 1] > 0)
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f["x"], f["y"] = rows, labels
    out = tmp_path / "ft"
    r = cli("finetune", path, "--at", "feat", "--head", "dense:8:relu,dropout:0.2,dense:4", "--data",
            tmp_path / "data.h5", "--x", "x", "--y", "y", "--epochs", "3", "--train-scopes", "^d1/", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "model.keras" in r.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["finetune"]["keras_model"] == "model.keras"

    model = keras.models.load_model(out / "model.keras")
    trainable = {layer.name for layer in model.layers if layer.trainable and layer.weights}
    assert trainable == {"d1", "head_dense", "head_dense_1"}  # bn and feat stay frozen; d1 was opened
    (expected,) = run_graph_def(read_graph_def(str(out / "frozen.pb")), {"x:0": rows[:50]}, ["head/probabilities:0"])
    np.testing.assert_allclose(model.predict(rows[:50], verbose=0), expected, atol=1e-5)
    trained = tf.train.load_checkpoint(str(out / "model.ckpt")).get_tensor("head/dense_1/kernel")
    np.testing.assert_array_equal(model.get_layer("head_dense_1").get_weights()[0], trained)
    frozen_feat = model.get_layer("feat").get_weights()[0].copy()
    statistics = [w.copy() for w in model.get_layer("bn").get_weights()]  # gamma, beta, mean, variance
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    history = model.fit(rows, labels, epochs=5, batch_size=300, verbose=0, shuffle=False)
    assert history.history["loss"][-1] < history.history["loss"][0]  # fit goes on from the trained weights
    np.testing.assert_array_equal(model.get_layer("feat").get_weights()[0], frozen_feat)
    # a frozen BatchNormalization stays in inference mode under fit: its statistics do not move
    for after, before in zip(model.get_layer("bn").get_weights(), statistics):
        np.testing.assert_array_equal(after, before)


def test_head_leaves_the_given_model_untouched():
    model = _branchy()
    before = [w.copy() for w in model.get_weights()]
    tuned = surgery.keras.head(model, at="add", head="dense:4", train_scopes=["^left/"])
    assert all(layer.trainable for layer in model.layers)
    assert {layer.name for layer in tuned.layers if layer.trainable and layer.weights} == {"left", "head_dense"}
    assert tuned.output.shape == (None, 4)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
