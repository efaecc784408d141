"""`surgery finetune` and the splice/train library on a tiny pretrained VGG built here.

The network (scripts/nets.py `vgg`, TF-slim names, top-level `fc7:0`) is pretrained for a few
hundred steps on generated images whose class is the quadrant holding a bright square; the
target task (3 classes, dimmer colours) asks a related question, so fc7 transfers. Everything
is checked against plain TensorFlow: the same recipe written by hand, the checkpoint's bytes,
and the frozen graph against the checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import ROOT, run_cli, tf, v1

from surgery.core.errors import DataError, SurgeryError, TensorNotFoundError
from surgery.core.model import load_model
from surgery.passes.splice import Dense, parse_head, splice
from surgery.runners.finetune import finetune, work_dir

EPOCHS, BATCH, LR = 4, 32, 0.01


def quadrant_images(rng, n, colour):
    """uint8 [n, 16, 16, 3] images with a bright 5×5 square in one quadrant; returns (x, quadrant)."""
    q = rng.integers(0, 4, n)
    img = rng.normal(70, 20, (n, 16, 16, 3))
    for i in range(n):
        r, c = divmod(int(q[i]), 2)
        y0, x0 = r * 8 + rng.integers(0, 4), c * 8 + rng.integers(0, 4)
        img[i, y0:y0 + 5, x0:x0 + 5, :] = np.asarray(colour(rng)) + rng.normal(0, 10, (5, 5, 3))
    return np.clip(img, 0, 255).astype(np.uint8), q


TARGET = np.array([0, 1, 2, 2])  # target classes: top-left, top-right, bottom


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny VGG pretrained on the source task; (checkpoint prefix, data.h5, test x, test y)."""

    from nets import vgg

    d = tmp_path_factory.mktemp("ft")
    rng = np.random.default_rng(0)
    src_x, src_y = quadrant_images(rng, 800, lambda r: r.uniform(120, 255, 3))
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(1)
        images = v1.placeholder(tf.uint8, [None, 16, 16, 3], name="input")
        x = tf.cast(images, tf.float32) / 255.0 - 0.5
        logits = vgg(x, 4, blocks=(1, 1), widths=(8, 16), fc_width=32, scope="vgg")
        tf.nn.softmax(logits, name="predictions")
        labels = v1.placeholder(tf.int64, [None], name="labels")
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        train = v1.train.AdamOptimizer(3e-3).minimize(loss)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            for step in range(250):
                i = (step * 32) % 800
                sess.run(train, {images: src_x[i:i + 32], labels: src_y[i:i + 32]})
            prefix = v1.train.Saver().save(sess, str(d / "vgg" / "model.ckpt"))
    dimmer = lambda r: r.uniform(100, 200, 3)  # noqa: E731  (new colours, some darker than the source's)
    tx, tq = quadrant_images(rng, 600, dimmer)
    test_x, test_q = quadrant_images(rng, 300, dimmer)
    data = str(d / "target.h5")
    with h5py.File(data, "w") as f:
        f["target/x"], f["target/y"] = tx, TARGET[tq]
        f["bad/y"] = TARGET[tq] + 2  # labels up to 4 for a 3-class head
    return prefix, data, test_x, TARGET[test_q]


def raw_tf_finetune(prefix, data, test_x, test_y, epochs=EPOCHS, batch=BATCH, lr=LR, val_split=0.2, restore=True):
    """The fc7 recipe by hand: import_meta_graph, stop_gradient(fc7), a new dense layer, Adam on it.
    With `restore=False` the backbone keeps its random initial weights (what transfer is worth)."""
    with h5py.File(data, "r") as f:
        x, y = f["target/x"][:], f["target/y"][:]
    train_idx = np.random.default_rng(123).permutation(len(x))[int(len(x) * val_split):]
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(5)
        saver = v1.train.import_meta_graph(prefix + ".meta")
        features = tf.stop_gradient(graph.get_tensor_by_name("fc7:0"))
        w = v1.get_variable("new_fc8/w", [32, 3], initializer=v1.glorot_uniform_initializer())
        b = v1.get_variable("new_fc8/b", [3], initializer=v1.zeros_initializer())
        logits = tf.matmul(features, w) + b
        labels = v1.placeholder(tf.int64, [None])
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        train = v1.train.AdamOptimizer(lr, name="NewAdam").minimize(loss, var_list=[w, b])
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            if restore:
                saver.restore(sess, prefix)
            for epoch in range(epochs):
                order = np.random.default_rng(epoch).permutation(train_idx)
                for i in range(0, len(order), batch):
                    idx = order[i:i + batch]
                    sess.run(train, {"input:0": x[idx], labels: y[idx]})
            pred = sess.run(logits, {"input:0": test_x}).argmax(1)
    return float((pred == test_y).mean())


def frozen_accuracy(out, test_x, test_y):
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    piece = manifest["pieces"]["model"]
    gd = v1.GraphDef()
    gd.ParseFromString(open(os.path.join(out, piece["graph"]), "rb").read())
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(gd, name="")
        with v1.Session() as sess:
            probs = sess.run(piece["outputs"][0]["name"], {piece["inputs"][0]["name"]: test_x})
    return float((probs.argmax(1) == test_y).mean()), probs


@pytest.fixture(scope="module")
def cli_run(pretrained, tmp_path_factory):
    prefix, data, _, _ = pretrained
    out = str(tmp_path_factory.mktemp("cli") / "ft")
    r = run_cli("finetune", os.path.dirname(prefix), "--at", "fc7", "--head", "dense:3", "--data", data,
                "--x", "target/x", "--y", "target/y", "--epochs", EPOCHS, "--batch-size", BATCH, "--lr", LR,
                "--out", out)
    assert r.returncode == 0, r.stderr
    return out, r


def test_cli_reaches_the_hand_written_recipe(pretrained, cli_run):
    prefix, data, test_x, test_y = pretrained
    out, r = cli_run
    assert "before →" in r.stdout and "head/dense/kernel" in r.stdout
    ours, _ = frozen_accuracy(out, test_x, test_y)
    baseline = raw_tf_finetune(prefix, data, test_x, test_y)
    print(f"\ntest-set accuracy after fine-tuning at fc7: surgery {ours:.1%}, raw TensorFlow {baseline:.1%}")
    assert baseline > 0.8, f"the raw-TF recipe itself should learn the task ({baseline:.1%})"
    assert ours >= baseline - 0.04, f"surgery {ours:.1%} vs raw TensorFlow {baseline:.1%}"
    untrained = raw_tf_finetune(prefix, data, test_x, test_y, restore=False)
    print(f"the same head on the randomly initialised backbone: {untrained:.1%}")
    assert ours > untrained + 0.1, "the pretrained fc7 is worth something here"
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["format"] == "surgery-manifest/1" and manifest["checkpoint"] == "model.ckpt"
    assert manifest["finetune"]["trainable"] == ["head/dense/kernel", "head/dense/bias"]
    assert manifest["finetune"]["val_accuracy"] > manifest["finetune"]["initial_val_accuracy"]
    assert not os.path.exists(work_dir(out)), "the work directory is removed once DIR is written"


def test_backbone_is_bit_for_bit_pretrained_and_head_trained(pretrained, cli_run):
    prefix, _, _, _ = pretrained
    out, _ = cli_run
    before = v1.train.NewCheckpointReader(prefix)
    after = v1.train.NewCheckpointReader(os.path.join(out, "model.ckpt"))
    names = before.get_variable_to_shape_map()
    assert any(n.startswith("vgg/fc7") for n in names)
    for name in names:
        assert np.array_equal(before.get_tensor(name), after.get_tensor(name)), name
    assert np.abs(after.get_tensor("head/dense/kernel")).sum() > 0
    assert after.get_tensor("head/step") == EPOCHS * int(np.ceil(480 / BATCH))


def test_frozen_pb_answers_like_the_checkpoint(pretrained, cli_run):
    _, _, test_x, test_y = pretrained
    out, _ = cli_run
    _, frozen_probs = frozen_accuracy(out, test_x, test_y)
    model = load_model(out)  # the checkpoint directory, as any MODEL
    with model.graph.as_default(), v1.Session() as sess:
        v1.train.Saver().restore(sess, model.checkpoint)
        ckpt_probs = sess.run("head/probabilities:0", {"input:0": test_x})
        cached = sess.run("fc7:0", {"input:0": test_x})
        via_bottleneck = sess.run("head/probabilities:0", {"head/bottleneck:0": cached})
    np.testing.assert_allclose(frozen_probs, ckpt_probs, atol=1e-6)
    np.testing.assert_allclose(via_bottleneck, ckpt_probs, atol=1e-6)


def test_cache_bottlenecks_gives_the_same_accuracy(pretrained, cli_run, tmp_path):
    prefix, data, test_x, test_y = pretrained
    out, _ = cli_run
    cached_out = str(tmp_path / "cached")
    result = finetune(os.path.dirname(prefix), at="fc7", head="dense:3", data=data, x_key="target/x",
                      y_key="target/y", out=cached_out, epochs=EPOCHS, batch_size=BATCH, lr=LR,
                      cache_bottlenecks=True, progress=False)
    plain = json.load(open(os.path.join(out, "manifest.json")))["finetune"]
    assert abs(result.val_accuracy - plain["val_accuracy"]) <= 0.02
    assert abs(frozen_accuracy(cached_out, test_x, test_y)[0] - frozen_accuracy(out, test_x, test_y)[0]) <= 0.02
    a = v1.train.NewCheckpointReader(os.path.join(out, "model.ckpt")).get_tensor("head/dense/kernel")
    b = v1.train.NewCheckpointReader(os.path.join(cached_out, "model.ckpt")).get_tensor("head/dense/kernel")
    np.testing.assert_allclose(a, b, atol=1e-3)  # same batches, same steps: the same head


def test_var_list_is_the_head_unless_scopes_are_opened(pretrained):
    prefix, _, _, _ = pretrained
    model = load_model(prefix)
    sp = splice(model, "fc7", "dense:16:relu,dropout:0.5,dense:3")
    assert [v.op.name for v in sp.var_list] == ["head/dense/kernel", "head/dense/bias",
                                                "head/dense_1/kernel", "head/dense_1/bias"]
    assert sp.boundary == ["fc7:0"] and sp.bottlenecks[0].name == "head/bottleneck:0"
    stop = sp.graph.get_operation_by_name("head/boundary/stop_gradient")
    assert stop.type == "StopGradient" and stop.inputs[0].name == "fc7:0"
    with sp.graph.as_default():
        grads = tf.gradients(sp.loss, sp.original_variables)
    assert all(g is None for g in grads), "no gradient reaches the backbone"

    opened = splice(model, "fc7", [Dense(3)], train_scopes=["fc7"])
    assert [v.op.name for v in opened.var_list] == ["head/dense/kernel", "head/dense/bias",
                                                    "vgg/fc7/weights", "vgg/fc7/biases"]
    assert opened.boundary == ["vgg/strided_slice:0"]  # fc6 as fc7's convolution reads it
    with opened.graph.as_default():
        by_name = {v.op.name: v for v in opened.original_variables}
        g6, g7 = tf.gradients(opened.loss, [by_name["vgg/fc6/weights"], by_name["vgg/fc7/weights"]])
    assert g6 is None and g7 is not None, "the boundary moved below fc7, not below fc6"
    assert model.graph.get_operations()[0].graph is model.graph  # the model's own graph is untouched
    assert not any(op.name.startswith("head/") for op in model.graph.get_operations())


def test_train_scopes_train_only_those_layers(pretrained, tmp_path):
    prefix, data, test_x, test_y = pretrained
    out = str(tmp_path / "opened")
    result = finetune(prefix, at="fc7", head="dense:3", data=data, x_key="target/x", y_key="target/y", out=out,
                      epochs=2, batch_size=BATCH, lr=LR, train_scopes=["fc7"], cache_bottlenecks=True,
                      progress=False)
    assert "vgg/fc7/weights" in result.trainable
    before = v1.train.NewCheckpointReader(prefix)
    after = v1.train.NewCheckpointReader(os.path.join(out, "model.ckpt"))
    assert not np.array_equal(before.get_tensor("vgg/fc7/weights"), after.get_tensor("vgg/fc7/weights"))
    for name in ("vgg/fc6/weights", "vgg/conv1/conv1_1/weights", "vgg/fc8/weights"):
        assert np.array_equal(before.get_tensor(name), after.get_tensor(name)), name
    assert frozen_accuracy(out, test_x, test_y)[0] > 0.6


@pytest.mark.parametrize("cache", [False, True])
def test_a_killed_run_resumes_where_it_stopped(pretrained, tmp_path, cache):
    """SIGKILLed after epoch 2 of 3 (progress saved every epoch here), the same command finishes
    from epoch 2 with the head a straight run gets; the saved state holds no backbone weight."""
    prefix, data, _, _ = pretrained
    kw = dict(at="fc7", head="dense:3", data=data, x_key="target/x", y_key="target/y", epochs=3,
              batch_size=BATCH, lr=LR, cache_bottlenecks=cache, progress=False)
    straight = finetune(prefix, out=str(tmp_path / "straight"), **kw)

    out = str(tmp_path / "resumed")
    script = (f"import os, signal, sys\nsys.path.insert(0, {ROOT!r})\nfrom surgery.runners.finetune import finetune\n"
              f"def die(record):\n    if record['epoch'] == 2:\n        os.kill(os.getpid(), signal.SIGKILL)\n"
              f"finetune({prefix!r}, out={out!r}, save_seconds=0, on_epoch=die, **{kw!r})\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not os.path.exists(out) and os.path.isdir(work_dir(out))
    state = json.load(open(os.path.join(work_dir(out), "state.json")))
    saved = v1.train.NewCheckpointReader(os.path.join(work_dir(out), state["checkpoint"])).get_variable_to_shape_map()
    assert "head/dense/kernel" in saved and "head/step" in saved and "head/dense/kernel/Adam" in saved
    assert not [k for k in saved if k.startswith("vgg/")], "the frozen backbone is not epoch state"

    resumed = finetune(prefix, out=out, **kw)
    assert resumed.resumed_from_epoch == 2 and len(resumed.history) == 3
    a = v1.train.NewCheckpointReader(os.path.join(straight.out, "model.ckpt"))
    b = v1.train.NewCheckpointReader(os.path.join(out, "model.ckpt"))
    np.testing.assert_allclose(a.get_tensor("head/dense/kernel"), b.get_tensor("head/dense/kernel"),
                               rtol=1e-6, atol=1e-7)
    before = v1.train.NewCheckpointReader(prefix)
    for name in before.get_variable_to_shape_map():
        assert np.array_equal(before.get_tensor(name), b.get_tensor(name)), name
    assert not os.path.exists(work_dir(out))


def test_progress_is_saved_on_a_time_cadence_not_every_epoch(pretrained, tmp_path):
    """With the default cadence (30 s) a 3-epoch run stopped after epoch 1 has saved nothing
    yet: the next run starts over (the bottleneck cache is kept) and ends where a straight run does."""
    prefix, data, _, _ = pretrained
    kw = dict(at="fc7", head="dense:3", data=data, x_key="target/x", y_key="target/y", epochs=3,
              batch_size=BATCH, lr=LR, cache_bottlenecks=True, progress=False)

    class Stop(Exception):
        pass

    def stop_after_first(record):
        if record["epoch"] == 1:
            raise Stop

    out = str(tmp_path / "ft")
    with pytest.raises(Stop):
        finetune(prefix, out=out, on_epoch=stop_after_first, **kw)
    work = work_dir(out)
    assert json.load(open(os.path.join(work, "state.json")))["checkpoint"] is None
    assert [f for f in os.listdir(work) if f.startswith("bottlenecks-")]
    resumed = finetune(prefix, out=out, **kw)
    assert resumed.resumed_from_epoch == 0 and len(resumed.history) == 3


def test_a_cache_larger_than_memory_is_read_from_disk_in_batches(pretrained, tmp_path):
    """`cache_memory=0` forces the HDF5 path: the same head as with the cache in memory."""
    prefix, data, _, _ = pretrained
    kw = dict(at="fc7", head="dense:3", data=data, x_key="target/x", y_key="target/y", epochs=2,
              batch_size=BATCH, lr=LR, cache_bottlenecks=True, progress=False)
    memory = finetune(prefix, out=str(tmp_path / "memory"), **kw)
    disk = finetune(prefix, out=str(tmp_path / "disk"), cache_memory=0, **kw)
    assert [r["loss"] for r in disk.history] == pytest.approx([r["loss"] for r in memory.history], rel=1e-6)
    a = v1.train.NewCheckpointReader(os.path.join(memory.out, "model.ckpt")).get_tensor("head/dense/kernel")
    b = v1.train.NewCheckpointReader(os.path.join(disk.out, "model.ckpt")).get_tensor("head/dense/kernel")
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_tensorboard_scalars_per_epoch_and_history_png(pretrained, tmp_path):
    """`--tensorboard DIR`: one loss, accuracy, val_loss, val_accuracy and learning_rate per epoch,
    the numbers of the manifest's history, and the graph; a history.png beside the manifest."""
    prefix, data, _, _ = pretrained
    logs, out = tmp_path / "logs", tmp_path / "ft"
    r = run_cli("finetune", prefix, "--at", "fc7", "--head", "dense:3", "--data", data, "--x", "target/x",
                "--y", "target/y", "--epochs", 3, "--batch-size", BATCH, "--lr", LR, "--cache-bottlenecks",
                "--tensorboard", logs, "--out", out)
    assert r.returncode == 0, r.stderr
    scalars, graphs = {}, 0
    for path in sorted(logs.iterdir()):
        for event in v1.train.summary_iterator(str(path)):
            graphs += event.HasField("graph_def")
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    history = json.loads((out / "manifest.json").read_text())["finetune"]["history"]
    assert graphs == 1
    for tag in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert [s for s, _ in scalars[tag]] == [1, 2, 3], tag
        np.testing.assert_allclose([v for _, v in scalars[tag]], [h[tag] for h in history], rtol=1e-6)
    assert [v for _, v in scalars["learning_rate"]] == pytest.approx([LR] * 3)
    png = (out / "history.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_history_png_is_optional(monkeypatch, tmp_path):
    """Without matplotlib (the `viz` extra) no curve is drawn and nothing breaks."""
    import builtins

    from surgery.runners.finetune import plot_history

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert plot_history([{"epoch": 1, "loss": 1.0, "accuracy": 0.5}], str(tmp_path / "h.png")) is False
    assert not (tmp_path / "h.png").exists()


def test_heads_flatten_and_callables(pretrained):
    prefix, _, _, _ = pretrained
    model = load_model(prefix)
    sp = splice(model, "vgg/pool2", "dense:3")  # [?, 4, 4, 16] → flattened to 256
    kernel = [v for v in sp.head_variables if v.op.name == "head/dense/kernel"][0]
    assert kernel.shape.as_list() == [256, 3] and sp.num_classes == 3

    def head(x, is_training):
        return Dense(6)(tf.nn.relu(x), training=is_training)

    assert splice(model, "fc7", head).num_classes == 6
    assert [type(layer).__name__ for layer in parse_head("dense:8:relu,dropout:0.25,dense:2")] == \
        ["Dense", "Dropout", "Dense"]
    for bad in ("dense:x", "dropout:0.5", "dense:4:swishy", "conv:3", ""):
        with pytest.raises(SurgeryError):
            parse_head(bad)
    with pytest.raises(TensorNotFoundError):
        splice(model, "fc77", "dense:3")
    with pytest.raises(SurgeryError, match="does not feed"):
        splice(model, "fc7", "dense:3", train_scopes=["fc8"])


def test_library_checks_data_before_writing(pretrained, tmp_path):
    prefix, data, _, _ = pretrained
    out = str(tmp_path / "never")
    with pytest.raises(DataError, match="does not fit"):
        finetune(prefix, at="fc7", head="dense:3", data=data, x_key="target/x", y_key="bad/y", out=out,
                 progress=False)
    assert not os.path.exists(out) and not os.path.exists(work_dir(out))


@pytest.mark.parametrize("args, expected", [
    (["--at", "fc77"], "fc7"),                          # a typo: suggestions name the real tensor
    (["--y", "bad/y"], "does not fit"),                 # labels 0..4 for a 3-class head
    (["--x", "target/images"], "no dataset 'target/images'"),
])
def test_cli_bad_input_exits_2_with_a_plain_message(pretrained, tmp_path, args, expected):
    prefix, data, _, _ = pretrained
    base = {"--at": "fc7", "--head": "dense:3", "--data": data, "--x": "target/x", "--y": "target/y"}
    base.update(dict(zip(args[::2], args[1::2])))
    out = str(tmp_path / "out")
    r = run_cli("finetune", prefix, *[a for kv in base.items() for a in kv], "--out", out)
    assert r.returncode == 2, r.stderr
    assert expected in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not os.path.exists(out)
