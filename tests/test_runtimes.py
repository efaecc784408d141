"""`surgery export --tflite/--onnx`: pieces converted for LiteRT and onnxruntime, run there and
compared with plain TensorFlow/Keras; quantized files calibrated on precomputed rows; ops a runtime
lacks named with exit 2."""

import json
import os

import numpy as np
import pytest
from conftest import cli, run_cli, run_graph_def, tf, v1

pytest.importorskip("ai_edge_litert", reason="needs pip install 'surgery[tflite]'")
pytest.importorskip("tf2onnx", reason="needs pip install 'surgery[onnx]'")
pytest.importorskip("onnxruntime", reason="needs pip install 'surgery[onnx]'")

import onnxruntime as ort
from ai_edge_litert.interpreter import Interpreter


def run_tflite_file(path, feeds):
    runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    return runner(**feeds)


def run_onnx_file(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def write_pb(graph, path):
    tf.io.write_graph(graph.as_graph_def(), os.path.dirname(path), os.path.basename(path), as_text=False)
    return path


# ---------------------------------------------------------------- a Keras MobileNetV2

@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    """A MobileNetV2 (alpha 0.35, 32 px, random weights) exported by Keras as a SavedModel, and
    Keras's own answers on a few images."""
    from keras_models import export_saved_model, mobilenet_v2

    net = mobilenet_v2(size=32, classes=6, seed=0)
    directory = export_saved_model(net, tmp_path_factory.mktemp("mobilenet"), "sm")
    x = np.random.default_rng(0).uniform(-1, 1, size=(5, 32, 32, 3)).astype(np.float32)
    return directory, x, np.asarray(net(x, training=False))


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_keras_mobilenet_answers_like_keras(mobilenet, tmp_path, fmt):
    directory, x, expected = mobilenet
    out = tmp_path / f"mobilenet.{fmt}"
    r = cli("export", directory, "--outputs", "output_0", f"--{fmt}", out, "--json")
    assert r.returncode == 0, r.stderr
    piece = json.loads(r.stdout)["pieces"]["model"]
    (inp,), (outp,) = piece["inputs"], piece["outputs"]
    assert inp["shape"] == [None, 32, 32, 3]  # the batch stays dynamic
    v = piece["verification"]
    assert v["passed"] and v["max_rel_diff"] <= 1e-4 and v["top1_agreement"] == 1.0 and v["n"] == 100
    got = (run_tflite_file if fmt == "tflite" else run_onnx_file)(out, {inp["name"]: x})[outp["name"]]
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max(), rtol=0)
    assert got.shape == (5, 6)


# ---------------------------------------------------------------- a split's pieces

@pytest.fixture(scope="module")
def pieces(tmp_path_factory, small_ckpt):
    """The small CNN split at fc1 (like the demo's split at fc7), and fc1 precomputed for 300 images."""
    d = tmp_path_factory.mktemp("split")
    r = run_cli("split", small_ckpt[0], "--cut", "net/fc1/Relu", "--outputs", "probs", "--out", d / "pieces")
    assert r.returncode == 0, r.stderr
    images = np.random.default_rng(1).normal(size=(300, 8, 8, 3)).astype(np.float32)
    np.save(d / "images.npy", images)
    r = run_cli("precompute", d / "pieces", "--data", d / "images.npy", "--key", "x", "--out", d / "fc1.h5")
    assert r.returncode == 0, r.stderr
    return d


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_split_pieces_one_file_each(pieces, tmp_path, fmt):
    out = tmp_path / "mobile"
    r = cli("export", pieces / "pieces", f"--{fmt}", out)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == sorted([f"offline.{fmt}", f"online.{fmt}", "manifest.json"])
    manifest = json.loads((out / "manifest.json").read_text())
    online = manifest["pieces"]["online"]
    assert online["inputs"][0]["name"] == "net/fc1/Relu:0" and online["outputs"][0]["name"] == "probs:0"
    import h5py

    with h5py.File(pieces / "fc1.h5") as f:
        fc1 = f["embeddings"][:20]
    gd = v1.GraphDef.FromString((pieces / "pieces" / "online.pb").read_bytes())
    expected = run_graph_def(gd, {"net/fc1/Relu:0": fc1}, "probs:0")
    run = run_tflite_file if fmt == "tflite" else run_onnx_file
    got = run(out / f"online.{fmt}", {"net/fc1/Relu:0": fc1})["probs:0"]
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    # composing the two converted pieces gives the original network's answers
    images = np.load(pieces / "images.npy")[:6]
    feature = run(out / f"offline.{fmt}", {"images:0": images})["net/fc1/Relu:0"]
    probs = run(out / f"online.{fmt}", {"net/fc1/Relu:0": feature})["probs:0"]
    orig = run_graph_def(v1.GraphDef.FromString((pieces / "pieces" / "offline.pb").read_bytes()),
                         {"images:0": images}, "net/fc1/Relu:0")
    np.testing.assert_allclose(probs, run_graph_def(gd, {"net/fc1/Relu:0": orig}, "probs:0"), atol=1e-5)


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_online_piece_int8_calibrated_on_precomputed_rows(pieces, tmp_path, fmt):
    out = tmp_path / f"online.{fmt}"
    r = cli("export", pieces / "pieces" / "online.pb", f"--{fmt}", out, "--quantize", "int8",
            "--calibration", pieces / "fc1.h5", "--json")
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)["pieces"]["model"]["verification"]
    assert v["data"] == "held-out calibration" and v["n"] == 100
    assert v["tolerance"] is None and v["passed"]  # int8 is reported, not failed
    assert 0 < v["max_abs_diff"] < 0.1 and v["top1_agreement"] >= 0.95
    assert "hint" not in v  # its one layer is the logits layer: --float-from would leave nothing int8
    assert os.path.isfile(out)


# ---------------------------------------------------------------- quantized size and agreement

@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A 128-512-10 softmax MLP frozen to a .pb, and 600 inputs from 10 clusters it separates."""
    d = tmp_path_factory.mktemp("mlp")
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 128)).astype(np.float32) * 2
    x = (centers[rng.integers(0, 10, 600)] + rng.normal(size=(600, 128))).astype(np.float32)
    w1 = (rng.normal(size=(128, 512)) / np.sqrt(128)).astype(np.float32)
    w2 = (np.maximum(centers @ w1, 0).T / 40).astype(np.float32)  # fires for its own cluster
    graph = tf.Graph()
    with graph.as_default():
        inp = v1.placeholder(tf.float32, [None, 128], name="features")
        h = tf.nn.relu(tf.matmul(inp, tf.constant(w1)), name="hidden")
        tf.nn.softmax(tf.matmul(h, tf.constant(w2)), name="classes")
    np.save(d / "rows.npy", x)
    return write_pb(graph, str(d / "mlp.pb")), str(d / "rows.npy")


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_int8_keeps_top1_at_a_fraction_of_the_size(classifier, tmp_path, fmt):
    pb, rows = classifier
    sizes = {}
    for mode in ("float", "int8", "float16", "dynamic", "int16x8"):
        extra = [] if mode == "float" else ["--quantize", mode, "--calibration", rows]
        r = cli("export", pb, f"--{fmt}", tmp_path / f"{mode}.{fmt}", "--json", "--verify", "300", *extra)
        assert r.returncode == 0, r.stderr
        piece = json.loads(r.stdout)["pieces"]["model"]
        sizes[mode] = os.path.getsize(tmp_path / f"{mode}.{fmt}")
        assert piece["bytes"] == sizes[mode]
        if mode != "float":
            assert piece["verification"]["top1_agreement"] >= 0.98, (mode, piece["verification"])
    assert sizes["int8"] <= 0.3 * sizes["float"] and sizes["dynamic"] <= 0.3 * sizes["float"]
    assert sizes["float16"] <= 0.55 * sizes["float"]
    assert sizes["int16x8"] <= 0.35 * sizes["float"]  # int8 weights; int16 activation parameters


def test_max_error_fails_and_writes_nothing(classifier, tmp_path):
    pb, rows = classifier
    r = cli("export", pb, "--tflite", tmp_path / "q.tflite", "--quantize", "dynamic", "--max-error", "1e-9")
    assert r.returncode == 2 and "over the tolerance 1e-09" in r.stderr and "nothing written" in r.stderr
    assert os.listdir(tmp_path) == []


def test_int8_needs_calibration(classifier, tmp_path):
    r = cli("export", classifier[0], "--onnx", tmp_path / "q.onnx", "--quantize", "int8")
    assert r.returncode == 2 and "--calibration" in r.stderr


@pytest.fixture(scope="module")
def close_classes(tmp_path_factory):
    """A 64-256-3 softmax MLP whose two best logits (classes 0 and 1, in [0, 40]) differ by about
    0.15 while class 2's logit reaches −500: int8's step over that range is ~2, so it ties them;
    the hidden layer's own int8 error moves their difference by far less than 0.15."""
    d = tmp_path_factory.mktemp("close")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (600, 64)).astype(np.float32)
    w1 = (rng.normal(size=(64, 256)) / 8).astype(np.float32)
    mean_h = np.maximum(x @ w1, 0).mean(0)
    delta = rng.normal(size=256)
    delta -= mean_h * (mean_h @ delta) / (mean_h @ mean_h)  # classes 0 and 1 each win about half the rows
    u = rng.uniform(0, 1, 256)
    w2 = np.stack([u, u + 0.02 * delta, -20 * rng.uniform(0, 1, 256)], 1).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        inp = v1.placeholder(tf.float32, [None, 64], name="features")
        h = tf.nn.relu(tf.matmul(inp, tf.constant(w1)), name="hidden")
        logits = tf.identity(tf.nn.bias_add(tf.matmul(h, tf.constant(w2), name="dense_1/MatMul"),
                                            tf.zeros(3), name="dense_1/BiasAdd"), name="logits")
        tf.nn.softmax(logits, name="classes")
    np.save(d / "rows.npy", x)
    return write_pb(graph, str(d / "head.pb")), str(d / "rows.npy")


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_float_from_keeps_close_classes_apart(close_classes, tmp_path, fmt):
    """All-int8 ties the two close classes; `--float-from logits` computes the logits layer (its
    MatMul too, folded with the bias and Identity) in float and keeps the answers, everything
    before it still int8. The same with a Keras-style scope name (`dense_1`)."""
    pb, rows = close_classes
    reports = {}
    for name, extra in {"int8": [], "logits": ["--float-from", "logits"],
                        "scope": ["--float-from", "dense_1", "--per-tensor"]}.items():
        r = cli("export", pb, f"--{fmt}", tmp_path / f"{name}.{fmt}", "--quantize", "int8", "--calibration", rows,
                "--verify", "300", "--json", *extra)
        assert r.returncode == 0, r.stderr
        reports[name] = json.loads(r.stdout)["pieces"]["model"]
    agreement = {k: v["verification"]["top1_agreement"] for k, v in reports.items()}
    assert agreement["int8"] < 0.8 and agreement["logits"] >= 0.98 and agreement["scope"] >= 0.98, agreement
    assert reports["logits"]["float_ops"] == ["classes", "dense_1/BiasAdd", "dense_1/MatMul", "logits"]
    assert reports["int8"]["weight_scales"] == "per channel" and reports["scope"]["weight_scales"] == "per tensor"
    assert "float_ops" not in reports["int8"]
    assert reports["int8"]["verification"]["hint"] == "--float-from logits"  # the softmax's input
    assert "hint" not in reports["logits"]["verification"]
    x = np.load(rows)[:5]
    if fmt == "tflite":
        dtypes = {d["name"]: d["dtype"] for d in Interpreter(model_path=str(tmp_path / "logits.tflite"))
                  .get_tensor_details()}
        assert dtypes["MatMul;hidden"] == np.int8  # the hidden layer, fused with its ReLU
        assert dtypes["dense_1/MatMul"] == dtypes["dense_1/MatMul1"] == np.float32  # the logits' weights and FC
        got = run_tflite_file(tmp_path / "logits.tflite", {"features:0": x})["classes:0"]
    else:
        import onnx

        model = onnx.load(str(tmp_path / "logits.onnx"))
        quantized = {i for n in model.graph.node if n.op_type == "QuantizeLinear" for i in n.input}
        assert "hidden:0" in quantized and "dense_1/MatMul:0" not in quantized
        got = run_onnx_file(tmp_path / "logits.onnx", {"features:0": x})["classes:0"]
    want = run_graph_def(v1.GraphDef.FromString(open(pb, "rb").read()), {"features:0": x}, "classes:0")
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))


def test_float_from_and_per_tensor_refused_where_they_mean_nothing(close_classes, tmp_path):
    pb, rows = close_classes
    r = cli("export", pb, "--tflite", tmp_path / "a.tflite", "--quantize", "int8", "--calibration", rows,
            "--float-from", "logts")
    assert r.returncode == 2 and "--float-from logts: no op or name scope" in r.stderr and "logits" in r.stderr
    r = cli("export", pb, "--onnx", tmp_path / "a.onnx", "--quantize", "dynamic", "--float-from", "logits")
    assert r.returncode == 2 and "use it with --quantize int8" in r.stderr
    r = cli("export", pb, "--tflite", tmp_path / "a.tflite", "--quantize", "float16", "--per-tensor")
    assert r.returncode == 2 and "--per-tensor" in r.stderr
    r = cli("export", pb, "--saved-model", tmp_path / "sm", "--float-from", "logits")
    assert r.returncode == 2 and "go with --tflite or --onnx" in r.stderr
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- ops a runtime lacks, shapes, extras

@pytest.fixture(scope="module")
def odd_ops_pb(tmp_path_factory):
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 4], name="x")
        tf.math.erf(x, name="flexible")      # LiteRT: only as a Select TF op
        tf.math.igamma(tf.abs(x) + 1, tf.abs(x) + 1, name="gamma")  # not even that; no ONNX operator
    return write_pb(graph, str(tmp_path_factory.mktemp("odd") / "odd.pb"))


def test_unsupported_tflite_op_named(odd_ops_pb, tmp_path):
    r = run_cli("export", odd_ops_pb, "--outputs", "flexible", "--tflite", tmp_path / "a.tflite")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no built-in kernel for Erf (flexible)" in r.stderr and "--allow-select-tf-ops" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not os.path.exists(tmp_path / "a.tflite")
    r = cli("export", odd_ops_pb, "--outputs", "flexible", "--tflite", tmp_path / "a.tflite",
            "--allow-select-tf-ops", "--json")
    assert r.returncode == 0, r.stderr
    piece = json.loads(r.stdout)["pieces"]["model"]
    assert piece["select_tf_ops"] == ["Erf"] and "Flex delegate" in piece["verification"]["skipped"]
    r = cli("export", odd_ops_pb, "--outputs", "gamma", "--tflite", tmp_path / "b.tflite", "--allow-select-tf-ops")
    assert r.returncode == 2 and "Igamma (gamma), not even as a Select TF op" in r.stderr


def test_unsupported_onnx_op_named(odd_ops_pb, tmp_path):
    r = run_cli("export", odd_ops_pb, "--outputs", "gamma", "--onnx", tmp_path / "a.onnx")
    assert r.returncode == 2 and "ONNX has no operator for Igamma (gamma)" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not os.path.exists(tmp_path / "a.onnx")


def test_input_shape_pins_unknown_dims(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, None, 4], name="seq")
        tf.reduce_sum(tf.nn.relu(x), axis=1, name="pooled")
    pb = write_pb(graph, str(tmp_path / "seq.pb"))
    r = cli("export", pb, "--tflite", tmp_path / "a.tflite")
    assert r.returncode == 2 and "--input-shape seq=?,D,D" in r.stderr
    r = cli("export", pb, "--tflite", tmp_path / "a.tflite", "--input-shape", "seq=?,7,4", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pieces"]["model"]["inputs"][0]["shape"] == [None, 7, 4]
    x = np.ones((3, 7, 4), np.float32)
    np.testing.assert_allclose(run_tflite_file(tmp_path / "a.tflite", {"seq:0": x})["pooled:0"], 7 * np.ones((3, 4)))
    r = cli("export", pb, "--onnx", tmp_path / "a.onnx", "--input-shape", "sq=?,7,4")
    assert r.returncode == 2 and "did you mean seq:0" in r.stderr


def test_split_dir_needs_a_directory(pieces, tmp_path):
    r = cli("export", pieces / "pieces", "--tflite", tmp_path / "x.tflite")
    assert r.returncode == 2 and "give a directory" in r.stderr


def test_missing_extra_gives_the_install_line(classifier, tmp_path, monkeypatch):
    fake = tmp_path / "fake"
    (fake / "ai_edge_litert").mkdir(parents=True)
    (fake / "ai_edge_litert" / "__init__.py").write_text("raise ImportError('not installed')\n")
    monkeypatch.setenv("PYTHONPATH", str(fake))
    r = run_cli("export", classifier[0], "--tflite", tmp_path / "a.tflite")
    assert r.returncode == 2 and "pip install 'surgery[tflite]'" in r.stderr and "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "a.tflite")


def test_model_checkpoint_cut_with_inputs_and_outputs(small_ckpt, tmp_path):
    """A checkpoint MODEL frozen on the way: --inputs cuts it at fc1, --outputs names the answer."""
    r = cli("export", small_ckpt[0], "--inputs", "net/fc1/Relu", "--outputs", "probs", "--onnx",
            tmp_path / "head.onnx", "--json")
    assert r.returncode == 0, r.stderr
    piece = json.loads(r.stdout)["pieces"]["model"]
    assert [t["name"] for t in piece["inputs"]] == ["net/fc1/Relu:0"]
    fc1 = np.random.default_rng(3).uniform(0, 2, size=(4, 16)).astype(np.float32)
    w2, b2 = (v1.train.load_variable(small_ckpt[0], f"net/fc2/{n}") for n in ("weights", "biases"))
    logits = fc1 @ w2 + b2
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    got = run_onnx_file(tmp_path / "head.onnx", {"net/fc1/Relu:0": fc1})["probs:0"]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_saved_model_from_a_model_with_outputs(small_ckpt, sample_images, tmp_path):
    r = cli("export", small_ckpt[0], "--outputs", "probs", "--saved-model", tmp_path / "sm")
    assert r.returncode == 0, r.stderr
    sig = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"]
    np.testing.assert_allclose(sig(images=tf.constant(sample_images))["probs"].numpy(), small_ckpt[1], rtol=1e-5)
    r = cli("export", small_ckpt[0], "--saved-model", tmp_path / "sm2", "--quantize", "int8")
    assert r.returncode == 2 and "go with --tflite or --onnx" in r.stderr
