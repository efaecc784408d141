"""Split: offline∘online composes back to the original (checked with plain TensorFlow from the
written files alone), the online piece holds none of the backbone, leaking cuts are refused."""

import json
import os

import numpy as np
import pytest
from conftest import run_cli, tf, v1
from nets import dense, two_tower, vgg

from surgery import CutError, load_model
from surgery.passes.split import split_model, write_split


def _save(directory, build, seed=0):
    """Build a graph with `build()`, initialise it randomly, save .meta + checkpoint; returns the prefix.
    `seed=None` leaves random ops unseeded (they differ from run to run)."""
    os.makedirs(directory, exist_ok=True)
    g = tf.Graph()
    with g.as_default():
        if seed is not None:
            v1.set_random_seed(seed)
        build()
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            return v1.train.Saver().save(sess, os.path.join(directory, "model.ckpt"))


def _run_original(prefix, feeds, fetches):
    """The checkpointed model answered by plain TensorFlow: import_meta_graph + Saver.restore."""
    g = tf.Graph()
    with g.as_default(), v1.Session() as sess:
        v1.train.import_meta_graph(prefix + ".meta").restore(sess, prefix)
        return sess.run(fetches, feeds)


def _run_pb(path, feeds, fetches):
    gd = v1.GraphDef()
    with open(path, "rb") as f:
        gd.ParseFromString(f.read())
    g = tf.Graph()
    with g.as_default():
        tf.import_graph_def(gd, name="")
    with v1.Session(graph=g) as sess:
        return sess.run(fetches, feeds), gd


def _build_vgg():
    images = v1.placeholder(tf.uint8, [None, 16, 16, 3], name="input")
    x = tf.cast(images, tf.float32) / 255.0 - 0.5
    logits = vgg(x, 5, blocks=(1, 1), widths=(4, 8), fc_width=16, scope="vgg")
    tf.nn.softmax(logits, name="predictions")


def _build_two_tower():
    two_tower(item_features=6, user_features=5, dim=4, tower_width=8)


@pytest.fixture(scope="module")
def vgg_ckpt(tmp_path_factory):
    return _save(str(tmp_path_factory.mktemp("vgg")), _build_vgg)


@pytest.fixture(scope="module")
def two_tower_ckpt(tmp_path_factory):
    return _save(str(tmp_path_factory.mktemp("two_tower")), _build_two_tower)


def test_vgg_split_at_fc7_composes_back(vgg_ckpt, tmp_path):
    out = tmp_path / "pieces"
    model = load_model(vgg_ckpt)
    split = split_model(model, "fc7", "predictions")
    manifest = write_split(model, split, str(out), verify=3)
    assert sorted(os.listdir(out)) == ["manifest.json", "offline.pb", "online.pb"]
    assert manifest["cut"] == [{"tensor": "fc7:0", "placeholder": "fc7:0", "dtype": "float32", "shape": [None, 16]}]
    assert manifest["verification"]["passed"] and manifest["verification"]["reference"] == "checkpoint"
    assert json.loads((out / "manifest.json").read_text()) == json.loads(json.dumps(manifest))

    images = np.random.default_rng(1).integers(0, 256, (5, 16, 16, 3)).astype(np.uint8)
    (fc7,), offline_gd = _run_pb(str(out / "offline.pb"), {"input:0": images}, ["fc7:0"])
    (probs,), online_gd = _run_pb(str(out / "online.pb"), {"fc7:0": fc7}, ["predictions:0"])
    expected = _run_original(vgg_ckpt, {"input:0": images}, "predictions:0")
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    assert not expected.std() == 0  # a real answer, not a constant
    # The online piece holds none of the backbone, the offline piece none of the head.
    assert not [n.name for n in online_gd.node if "conv" in n.name or n.op == "Conv2D" and "fc" not in n.name]
    assert not any(n.name.startswith(("vgg/fc6", "vgg/conv")) for n in online_gd.node)
    assert {n.op for n in online_gd.node if n.op == "Placeholder"} and \
        [n.name for n in online_gd.node if n.op == "Placeholder"] == ["fc7"]
    assert not any(n.name.startswith(("vgg/fc8", "predictions")) for n in offline_gd.node)


def test_two_tower_split_at_item_embedding_keeps_user_features_live(two_tower_ckpt, tmp_path):
    out = tmp_path / "rec"
    r = run_cli("split", two_tower_ckpt, "--cut", "item_tower/embedding", "--outputs", "score", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "user_features:0" in r.stdout and "(live)" in r.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    online, offline = manifest["pieces"]["online"], manifest["pieces"]["offline"]
    assert [i["name"] for i in offline["inputs"]] == ["item_features:0"]
    assert sorted(i["name"] for i in online["inputs"]) == ["item_tower/embedding:0", "user_features:0"]
    assert manifest["live_inputs"] == [{"name": "user_features:0", "dtype": "float32", "shape": [None, 5]}]
    assert manifest["cut"][0]["placeholder"] == "item_tower/embedding:0"
    assert manifest["verification"]["passed"] is True and manifest["verification"]["n"] == 4

    rng = np.random.default_rng(2)
    items, users = rng.normal(size=(7, 6)).astype(np.float32), rng.normal(size=(7, 5)).astype(np.float32)
    (emb,), offline_gd = _run_pb(str(out / "offline.pb"), {"item_features:0": items}, ["item_tower/embedding:0"])
    (score,), online_gd = _run_pb(str(out / "online.pb"), {"item_tower/embedding:0": emb, "user_features:0": users},
                                  ["score:0"])
    expected = _run_original(two_tower_ckpt, {"item_features:0": items, "user_features:0": users}, "score:0")
    np.testing.assert_allclose(score, expected, rtol=1e-5, atol=1e-6)
    assert [n.name for n in online_gd.node if n.name.startswith("item_tower")] == ["item_tower/embedding"]
    assert not any(n.name.startswith(("user_tower", "scorer")) for n in offline_gd.node)


def _build_skip():
    x = v1.placeholder(tf.float32, [None, 4], name="x")
    h = dense(x, 3, activation=tf.nn.relu, name="body")
    side = tf.reduce_sum(x, axis=1, keepdims=True, name="side")
    tf.add(dense(h, 3, name="head"), side, name="out")


def test_leaking_cut_is_refused_naming_the_input_and_path(tmp_path):
    prefix = _save(str(tmp_path / "skip"), _build_skip)
    out = tmp_path / "never"
    r = run_cli("split", prefix, "--cut", "body/Relu", "--outputs", "out", "--out", out)
    assert r.returncode == 2
    assert "offline input 'x:0'" in r.stderr and "x → side → out" in r.stderr
    assert "joins the part above the cut at 'out' through 'side:0'" in r.stderr
    assert "--cut body/Relu,side" in r.stderr and "surgery cuts" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()
    r = run_cli("split", prefix, "--cut", "body/Relu,side", "--outputs", "out", "--out", tmp_path / "fixed")
    assert r.returncode == 0, r.stderr  # the fix the message names works


def test_explicit_offline_inputs_leak_in_two_tower(two_tower_ckpt):
    model = load_model(two_tower_ckpt)
    with pytest.raises(CutError, match="offline input 'item_features:0'.*item_features → item_tower"):
        split_model(model, "user_tower/embedding", "score", inputs="item_features,user_features")
    # By default only the inputs behind the cut are offline: item features stay live here.
    split = split_model(model, "user_tower/embedding", "score")
    assert [i.name for i in split.offline_inputs] == ["user_features:0"]
    assert [i.name for i in split.live_inputs] == ["item_features:0"]


def _batch_norm(h, is_training, name):
    """TF-slim's batch norm with a tensor `is_training`: a cond between batch and moving statistics."""
    with v1.variable_scope(name):
        c = int(h.shape[-1])
        beta = v1.get_variable("beta", [c], initializer=v1.zeros_initializer())
        moving_mean = v1.get_variable("moving_mean", [c], initializer=v1.random_normal_initializer(), trainable=False)
        moving_var = v1.get_variable("moving_variance", [c], initializer=v1.ones_initializer(), trainable=False)
        mean, var = tf.nn.moments(h, [0])
        m, v = tf.cond(is_training, lambda: (mean, var), lambda: (tf.identity(moving_mean), tf.identity(moving_var)))
        return tf.nn.batch_normalization(h, m, v, beta, None, 1e-3)


def _build_bn(with_default: bool, resource: bool = False):
    def build():
        x = v1.placeholder(tf.float32, [None, 4], name="x")
        if with_default:
            is_training = v1.placeholder_with_default(False, [], name="is_training")
        else:
            is_training = v1.placeholder(tf.bool, [], name="is_training")
        with v1.variable_scope("net", use_resource=resource):
            h = _batch_norm(dense(x, 6, name="fc1"), is_training, "bn1")
            h = tf.nn.relu(h, name="features")
            h = _batch_norm(dense(h, 3, name="fc2"), is_training, "bn2")
        tf.identity(h, name="out")
    return build


@pytest.mark.parametrize("with_default", [True, False])
def test_batch_norm_training_switch_stays_a_setting(tmp_path, with_default):
    """An `is_training` switch feeds both sides of the cut: it is a setting, not a leaking input."""
    prefix = _save(str(tmp_path / "bn"), _build_bn(with_default))
    model = load_model(prefix)
    split = split_model(model, "net/features", "out")
    manifest = write_split(model, split, str(tmp_path / "pieces"), verify=4)
    assert manifest["verification"]["passed"]
    assert [i.name for i in split.offline_inputs if i.shape != ()] == ["x:0"]
    if with_default:
        assert [d.name for d in split.defaults["online"]] == ["is_training:0"]
        assert [i.name for i in split.live_inputs] == []
    else:
        assert [i.name for i in split.live_inputs] == ["is_training:0"]
    x = np.random.default_rng(3).normal(size=(4, 4)).astype(np.float32)
    feed_mode = {} if with_default else {"is_training:0": False}
    (f,), _ = _run_pb(str(tmp_path / "pieces/offline.pb"), {"x:0": x, **feed_mode}, ["net/features:0"])
    (got,), _ = _run_pb(str(tmp_path / "pieces/online.pb"), {"net/features:0": f, **feed_mode}, ["out:0"])
    np.testing.assert_allclose(got, _run_original(prefix, {"x:0": x, **feed_mode}, "out:0"), rtol=1e-5, atol=1e-6)


def test_batch_norm_switch_over_resource_variables_freezes_or_is_refused_plainly(tmp_path):
    """cond_v2 branches capture resource variables: either the pieces verify, or a CutError names the If."""
    prefix = _save(str(tmp_path / "bn"), _build_bn(True, resource=True))
    model = load_model(prefix)
    assert any(op.type in ("If", "StatelessIf") for op in model.graph.get_operations())
    try:
        split = split_model(model, "net/features", "out")
    except CutError as e:
        assert "net/bn1/cond' (If" in str(e) and "net/bn1/moving_mean" in str(e)
        return
    assert write_split(model, split, str(tmp_path / "pieces"))["verification"]["passed"]


def test_cut_inside_v1_cond_is_refused(tmp_path, monkeypatch):
    from tensorflow.python.ops import control_flow_util

    monkeypatch.setattr(control_flow_util, "ENABLE_CONTROL_FLOW_V2", False)
    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tf.float32, [None, 4], name="x")
        flag = v1.placeholder_with_default(False, [], name="flag")
        y = tf.cond(flag, lambda: tf.nn.relu(x, name="on"), lambda: tf.tanh(x, name="off"), name="switch")
        tf.identity(y * 2.0, name="out")
    assert {"Switch", "Merge"} <= {op.type for op in g.get_operations()}
    path = tmp_path / "cond.pb"
    path.write_bytes(g.as_graph_def().SerializeToString())
    model = load_model(str(path))
    branch = [op.name for op in g.get_operations() if op.type == "Tanh"][0]
    with pytest.raises(CutError, match="inside a tf.cond"):
        split_model(model, branch, "out")
    merge = [op.name for op in g.get_operations() if op.type == "Merge"][0]
    split = split_model(model, merge, "out")  # after the Merge the cond is closed: fine
    manifest = write_split(model, split, str(tmp_path / "pieces"))
    assert manifest["verification"]["passed"] and manifest["verification"]["reference"] == "graph"


def _build_noisy():
    x = v1.placeholder(tf.float32, [None, 4], name="x")
    h = dense(x, 3, name="body")
    tf.add(h, tf.random.uniform(tf.shape(h)), name="out")


def test_verification_failure_writes_nothing(tmp_path):
    prefix = _save(str(tmp_path / "noisy"), _build_noisy, seed=None)
    out = tmp_path / "pieces"
    r = run_cli("split", prefix, "--cut", "body/BiasAdd", "--outputs", "out", "--out", out)
    assert r.returncode == 2 and "offline∘online differs" in r.stderr
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".pieces")]
    r = run_cli("split", prefix, "--cut", "body/BiasAdd", "--outputs", "out", "--out", out, "--verify", "0")
    assert r.returncode == 0 and "skipped" in r.stdout
    assert json.loads((out / "manifest.json").read_text())["verification"]["skipped"] is True


def test_bad_names_and_outputs_are_refused(vgg_ckpt, two_tower_ckpt, tmp_path):
    r = run_cli("split", vgg_ckpt, "--cut", "fc77", "--outputs", "predictions", "--out", tmp_path / "a")
    assert r.returncode == 2 and "fc7" in r.stderr and "did you mean" in r.stderr
    model = load_model(vgg_ckpt)
    with pytest.raises(CutError, match="not on the way"):
        split_model(load_model(two_tower_ckpt), "item_tower/embedding", "user_tower/embedding")
    with pytest.raises(CutError, match="variable"):
        split_model(model, "vgg/fc7/weights", "predictions")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    r = run_cli("split", vgg_ckpt, "--cut", "fc7", "--outputs", "predictions", "--out", busy)
    assert r.returncode == 2 and "not a directory written by surgery" in r.stderr
    assert (busy / "notes.txt").read_text() == "mine"


def test_split_a_frozen_graph_with_explicit_inputs(vgg_ckpt, tmp_path):
    """A frozen .pb splits too; an explicit intermediate input becomes the offline placeholder."""
    frozen = tmp_path / "vgg.pb"
    assert run_cli("freeze", vgg_ckpt, "--outputs", "predictions", "--out", frozen).returncode == 0
    model = load_model(str(frozen))
    split = split_model(model, "fc7", "predictions", inputs="vgg/conv2/conv2_1/Relu")
    assert [i.name for i in split.offline_inputs] == ["vgg/conv2/conv2_1/Relu:0"]
    manifest = write_split(model, split, str(tmp_path / "pieces"))
    assert manifest["verification"]["passed"] and manifest["verification"]["reference"] == "graph"


def _build_ids():
    ids = v1.placeholder(tf.int64, [None], name="ids")
    with v1.variable_scope("emb", use_resource=False):
        table = v1.get_variable("table", [7, 3])
    h = tf.nn.relu(dense(tf.nn.embedding_lookup(table, ids), 4, name="body"), name="features")
    dense(h, 2, name="head")


def test_verify_feeds_ids_below_the_table_they_index(tmp_path):
    """With ids ≥ 7 the lookup would fail: random ids must respect the table's 7 rows."""
    prefix = _save(str(tmp_path / "ids"), _build_ids)
    model = load_model(prefix)
    split = split_model(model, "features", "head/BiasAdd")
    manifest = write_split(model, split, str(tmp_path / "pieces"), verify=64)
    assert manifest["verification"]["passed"] and manifest["pieces"]["offline"]["inputs"][0]["dtype"] == "int64"


def test_recipe_split_recommender(tmp_path):
    import subprocess
    import sys

    recipe = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "split_recommender.py")
    r = subprocess.run([sys.executable, recipe, "--out", str(tmp_path), "--items", "60", "--users", "10",
                        "--steps", "20"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "precomputed 60 item embeddings" in r.stdout and "user 4: top items" in r.stdout
    diff = float(r.stdout.split("max |score difference| ")[1].split(";")[0])
    assert diff < 1e-5
    assert sorted(os.listdir(tmp_path / "pieces")) == ["manifest.json", "offline.pb", "online.pb"]
