"""`surgery export`: frozen pieces served from SavedModels by `tf.saved_model.load`; TF2 SavedModels
flattened so the TF1 tools (inspect, freeze, Saver restore) work on them; `inspect --tensorboard`."""

import json
import os

import numpy as np
import pytest
from conftest import run_cli, run_graph_def, tf, v1
from nets import two_tower

from surgery import freeze_graph, freeze_model, load_model, write_graph_def
from surgery.core.manifest import write_manifest
from surgery.exporters.export import export, export_frozen, signature_key


@pytest.fixture(scope="module")
def two_tower_split(tmp_path_factory):
    """A two-tower recommender split by hand at the item embedding (offline: items → embedding,
    online: embedding + user features → score), written as a split directory with a manifest.
    Returns (directory, items, users, expected scores of the whole original graph)."""
    d = tmp_path_factory.mktemp("two_tower") / "pieces"
    rng = np.random.default_rng(1)
    items = rng.normal(size=(7, 32)).astype(np.float32)
    users = rng.normal(size=(7, 16)).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(3)
        item_ph, user_ph, score = two_tower(num_items=50, tower_width=16)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            expected = sess.run(score, {item_ph: items, user_ph: users})
            values = {v.op.name: sess.run(v) for v in v1.global_variables()}
    offline = freeze_graph(graph, ["item_tower/embedding"], read_variable=values.__getitem__)
    online = freeze_graph(graph, ["score"], inputs=["item_tower/embedding"], read_variable=values.__getitem__)
    os.makedirs(d)
    write_graph_def(offline.graph_def, str(d / "offline.pb"))
    write_graph_def(online.graph_def, str(d / "online.pb"))
    write_manifest(str(d), source={"path": "two_tower"},
                   pieces={"offline": offline.manifest_entry("offline.pb"), "online": online.manifest_entry("online.pb")})
    return str(d), items, users, expected


def test_signature_keys_are_identifiers():
    assert signature_key("item_tower/embedding:0") == "item_tower_embedding"
    assert signature_key("split:1") == "split_1"
    assert signature_key("0weird-name:0") == "t_0weird_name"
    assert signature_key("a/b:0", taken={"a_b"}) == "a_b_1"


def test_online_piece_served_with_both_inputs(two_tower_split, tmp_path):
    directory, items, users, expected = two_tower_split
    out = tmp_path / "serving"
    r = run_cli("export", directory, "--saved-model", out)
    assert r.returncode == 0, r.stderr
    assert "item_tower_embedding" in r.stdout and "user_features" in r.stdout
    for name in ("offline", "online"):  # TF Serving's layout inside each piece
        assert os.path.isfile(out / name / "saved_model.pb") and os.path.isdir(out / name / "variables")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary left behind

    offline = tf.saved_model.load(str(out / "offline")).signatures["serving_default"]
    embedding = offline(item_features=tf.constant(items))["item_tower_embedding"]
    online = tf.saved_model.load(str(out / "online")).signatures["serving_default"]
    assert set(online.structured_input_signature[1]) == {"item_tower_embedding", "user_features"}
    scores = online(item_tower_embedding=embedding, user_features=tf.constant(users))["score"].numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)


def test_export_frozen_pb(two_tower_split, tmp_path):
    directory, items, _, _ = two_tower_split
    keys = export(os.path.join(directory, "offline.pb"), str(tmp_path / "offline_sm"))
    assert keys[""]["inputs"] == {"item_features": "item_features:0"}
    assert keys[""]["outputs"] == {"item_tower_embedding": "item_tower/embedding:0"}
    sig = tf.saved_model.load(str(tmp_path / "offline_sm")).signatures["serving_default"]
    assert sig(item_features=tf.constant(items))["item_tower_embedding"].shape == (7, 32)


def test_export_replaces_existing_directory_whole(two_tower_split, tmp_path):
    directory = two_tower_split[0]
    target = tmp_path / "sm"
    os.makedirs(target / "stale")
    gd = v1.GraphDef()
    gd.ParseFromString(open(os.path.join(directory, "offline.pb"), "rb").read())
    export_frozen(gd, str(target), inputs=["item_features"], outputs=["item_tower/embedding:0"])
    assert sorted(os.listdir(target)) == ["saved_model.pb", "variables"]


@pytest.mark.parametrize("make,needle", [
    (lambda p, ckpt: str(p), "no manifest.json"),
    (lambda p, ckpt: ckpt, "not a frozen graph"),
])
def test_export_refuses_bad_graph(tmp_path, small_ckpt, make, needle):
    graph = make(tmp_path, small_ckpt[0])
    r = run_cli("export", graph, "--saved-model", tmp_path / "out")
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "out")


# ---------------------------------------------------------------- TF2 / Keras SavedModels

def test_keras_saved_model_is_flattened(keras_saved_model):
    model = load_model(keras_saved_model[0])
    assert not [op for op in model.graph.get_operations() if "PartitionedCall" in op.type]
    names = [op.name for op in model.graph.get_operations()]
    assert any(n.endswith("gap_1/Mean") for n in names)  # Keras layer names survive inlining
    with model.graph.as_default():
        assert {v.op.name for v in v1.trainable_variables()} == {
            "block1_conv/kernel", "block1_conv/bias", "classifier/kernel", "classifier/bias"}
    assert model.checkpoint_keys()["classifier/kernel"].endswith("/.ATTRIBUTES/VARIABLE_VALUE")


def test_keras_flattened_graph_answers_like_the_saved_model(keras_saved_model):
    directory = keras_saved_model[0]
    x = np.random.default_rng(0).normal(size=(3, 16, 16, 3)).astype(np.float32)
    reference = tf.saved_model.load(directory).signatures["serving_default"](pixels=tf.constant(x))["output_0"]
    model = load_model(directory)
    sig = model.signature_defs["serving_default"]
    saver = model.saver()  # a plain TF1 Saver, keyed as the object-based checkpoint is
    with v1.Session(graph=model.graph) as sess:
        saver.restore(sess, model.checkpoint)
        got = sess.run(sig.outputs["output_0"].name, {sig.inputs["pixels"].name: x})
    np.testing.assert_allclose(got, reference.numpy(), rtol=1e-6, atol=1e-7)
    frozen = freeze_model(model, "output_0")
    np.testing.assert_allclose(run_graph_def(frozen.graph_def, {"pixels:0": x}, "output_0:0"), reference.numpy(),
                               rtol=1e-6, atol=1e-7)


def test_cli_inspect_and_freeze_keras(keras_saved_model, tmp_path):
    r = run_cli("inspect", keras_saved_model[0], "--json", "--tensors", "gap")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    # Keras numbers its functional scopes per process (functional_1, functional_1_1, ...): find it.
    (mean,) = [t["name"] for t in report["tensors"] if t["name"].endswith("/gap_1/Mean:0")]
    assert {"name": mean, "dtype": "float32", "shape": [None, 8]} in report["tensors"]
    r = run_cli("freeze", keras_saved_model[0], "--inputs", "gap_1/Mean", "--outputs", "output_0",
                "--out", tmp_path / "head.pb")
    assert r.returncode == 0, r.stderr
    assert load_model(str(tmp_path / "head.pb")).graph.get_tensor_by_name(mean).shape[1] == 8


def test_inspect_tensorboard_writes_the_graph(small_ckpt, tmp_path):
    logdir = tmp_path / "logs"
    r = run_cli("inspect", small_ckpt[0], "--tensorboard", logdir)
    assert r.returncode == 0, r.stderr
    assert "tensorboard --logdir" in r.stdout
    (event,) = os.listdir(logdir)
    assert event.startswith("events.out.tfevents")
    graph_def = None
    for e in v1.train.summary_iterator(str(logdir / event)):
        if e.graph_def:
            graph_def = v1.GraphDef.FromString(e.graph_def)
    assert graph_def is not None and "net/fc1/Relu" in {n.name for n in graph_def.node}


def test_tf_saved_model_save_module_is_flattened(tmp_path):
    """A plain `tf.saved_model.save` of a tf.Module: variables keep their TF2 names and values."""

    class Scorer(tf.Module):
        def __init__(self):
            self.w = tf.Variable(np.arange(6, dtype=np.float32).reshape(3, 2), name="dense/kernel")
            self.b = tf.Variable([0.5, -1.0], name="dense/bias")

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def __call__(self, x):
            return {"y": tf.reduce_sum(tf.nn.relu(tf.matmul(x, self.w) + self.b, name="hidden"), axis=1)}

    scorer = Scorer()
    tf.saved_model.save(scorer, str(tmp_path / "sm"), signatures=scorer.__call__)
    model = load_model(str(tmp_path / "sm"))
    assert {v.name for v in model.variables()} == {"dense/kernel", "dense/bias"}
    np.testing.assert_array_equal(model.read_variable("dense/kernel"), scorer.w.numpy())
    x = np.array([[1, -2, 3], [0.5, 0, 1]], np.float32)
    expected = scorer(x)["y"].numpy()
    frozen = freeze_model(model, "y")
    np.testing.assert_allclose(run_graph_def(frozen.graph_def, {"x:0": x}, "y:0"), expected, rtol=1e-6)


def test_keras_saved_model_without_its_variables(keras_saved_model, tmp_path):
    import shutil

    from surgery import ModelLoadError

    shutil.copy(os.path.join(keras_saved_model[0], "saved_model.pb"), tmp_path / "saved_model.pb")
    with pytest.raises(ModelLoadError, match="no variables/variables checkpoint"):
        load_model(str(tmp_path))


def test_model_saver_restores_tf1_checkpoints_too(small_ckpt, sample_images):
    model = load_model(small_ckpt[0])
    saver = model.saver()
    with v1.Session(graph=model.graph) as sess:
        saver.restore(sess, model.checkpoint)
        np.testing.assert_allclose(sess.run("probs:0", {"images:0": sample_images}), small_ckpt[1], rtol=1e-6)


def test_keras_flattened_graph_trains_like_a_tf1_graph(keras_saved_model):
    """Splice a loss on the Keras classifier and train its own (restored) variables: gradients flow
    through the inlined graph, the layers below stay as restored."""
    from surgery import resolve_tensor

    model = load_model(keras_saved_model[0])
    rng = np.random.default_rng(2)
    x = rng.normal(size=(16, 16, 16, 3)).astype(np.float32)
    y = rng.integers(0, 4, size=16)
    with model.graph.as_default():
        probs = resolve_tensor(model.graph, "output_0")
        labels = v1.placeholder(tf.int64, [None])
        loss = -tf.reduce_mean(tf.math.log(tf.gather(probs, labels, batch_dims=1) + 1e-7))
        (kernel,) = [v for v in v1.trainable_variables() if v.op.name == "classifier/kernel"]
        (conv,) = [v for v in v1.trainable_variables() if v.op.name == "block1_conv/kernel"]
        train = v1.train.GradientDescentOptimizer(0.5).minimize(loss, var_list=[kernel])
        init = v1.global_variables_initializer()
    saver = model.saver()
    with v1.Session(graph=model.graph) as sess:
        sess.run(init)
        saver.restore(sess, model.checkpoint)
        before = sess.run(loss, {"pixels:0": x, labels: y})
        for _ in range(20):
            sess.run(train, {"pixels:0": x, labels: y})
        assert sess.run(loss, {"pixels:0": x, labels: y}) < before
        np.testing.assert_array_equal(sess.run(conv), model.read_variable("block1_conv/kernel"))
        assert not np.allclose(sess.run(kernel), model.read_variable("classifier/kernel"))
