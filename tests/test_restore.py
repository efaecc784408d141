"""Restore: TF-slim vgg_16 weights transplanted into another scope, selectively, from
checkpoints and HDF5 files, by a selective Saver, an assignment map or direct assignment."""

import json
import os

import h5py
import numpy as np
import pytest
from conftest import run_cli, tf, v1
from nets import vgg

from surgery import ModelLoadError, RestoreError, load_model
from surgery.passes.restore import format_report, plan_restore, restore_into_session, restore_model, restore_weights

SMALL = dict(blocks=(1, 1), widths=(4, 8), fc_width=16)
FC8 = ("fc8/weights", "fc8/biases")


def _dense(x, units, name, activation=None):
    """`tf.compat.v1.layers.dense`'s variable names (`name/kernel`, `name/bias`); the layer
    itself is gone from TF with Keras 3."""
    with v1.variable_scope(name):
        kernel = v1.get_variable("kernel", [int(x.shape[-1]), units])
        bias = v1.get_variable("bias", [units], initializer=v1.zeros_initializer())
    y = tf.matmul(x, kernel) + bias
    return activation(y) if activation else y


def _build_vgg(num_classes, outer_scope=None, optimizer=False):
    images = v1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
    if outer_scope:
        with v1.variable_scope(outer_scope):
            logits = vgg(images, num_classes, scope="vgg_16", **SMALL)
    else:
        logits = vgg(images, num_classes, scope="vgg_16", **SMALL)
    if optimizer:
        labels = v1.placeholder(tf.int64, [None], name="labels")
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        v1.train.AdamOptimizer(0.01).minimize(loss, global_step=v1.train.get_or_create_global_step())
    return images, logits


def _save(graph, prefix, seed):
    with graph.as_default():
        saver = v1.train.Saver()
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            # Random values everywhere (biases too), so equality means the value was copied.
            rng = np.random.default_rng(seed)
            for var in v1.global_variables():
                if var.dtype.base_dtype == tf.float32:
                    var.load(rng.normal(size=var.shape.as_list()).astype(np.float32), sess)
            return saver.save(sess, prefix)


@pytest.fixture(scope="module")
def vgg_source(tmp_path_factory):
    """TF-slim `vgg_16/...` names, 10 classes: (prefix, {name: value})."""
    d = tmp_path_factory.mktemp("vgg_source")
    g = tf.Graph()
    with g.as_default():
        _build_vgg(10)
    prefix = _save(g, str(d / "vgg_16.ckpt"), seed=1)
    reader = v1.train.NewCheckpointReader(prefix)
    return prefix, {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}


@pytest.fixture(scope="module")
def vgg_target(tmp_path_factory):
    """The same architecture under `net/vgg_16/`, 5 classes, with Adam slots and a global step."""
    d = tmp_path_factory.mktemp("vgg_target")
    g = tf.Graph()
    with g.as_default():
        _build_vgg(5, outer_scope="net", optimizer=True)
    return _save(g, str(d / "net.ckpt"), seed=2)


@pytest.fixture(scope="module")
def vgg_h5(tmp_path_factory, vgg_source):
    """The source weights in an HDF5 file, one dataset per variable at its path."""
    path = str(tmp_path_factory.mktemp("h5") / "vgg_16.h5")
    with h5py.File(path, "w") as f:
        for k, v in vgg_source[1].items():
            f[k] = v
    return path


def _values(prefix):
    reader = v1.train.NewCheckpointReader(prefix)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}


def _check_transplanted(out, vgg_source, vgg_target):
    src, got, own = vgg_source[1], _values(out), _values(vgg_target)
    for key, value in src.items():
        if key.startswith("vgg_16/fc8/"):
            continue
        assert got["net/" + key].dtype == value.dtype
        np.testing.assert_array_equal(got["net/" + key], value)  # bit for bit
    for name in FC8:  # the new classifier keeps the target's own values
        np.testing.assert_array_equal(got["net/vgg_16/" + name], own["net/vgg_16/" + name])
        assert got["net/vgg_16/" + name].shape[-1] == 5
    np.testing.assert_array_equal(got["global_step"], own["global_step"])


def _ls(directory):
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def test_classifier_refused_by_default_and_nothing_written(vgg_source, vgg_target, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("untouched")
    r = run_cli("restore", vgg_target, "--from", vgg_source[0], "--map", "vgg_16/=net/vgg_16/",
                "--out", out_dir / "net.ckpt")
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "net/vgg_16/fc8/weights [1,1,16,5]" in r.stderr and "[1,1,16,10]" in r.stderr
    assert "net/vgg_16/fc8/biases" in r.stderr and "--exclude" in r.stderr
    assert "Adam" not in r.stderr and "global_step" not in r.stderr  # training state is no error
    assert _ls(out_dir) == ["keep.txt"]  # no checkpoint, no temp files


def test_transplant_with_exclude_cli(vgg_source, vgg_target, tmp_path):
    out = tmp_path / "out" / "net.ckpt"
    r = run_cli("restore", vgg_target, "--from", vgg_source[0], "--map", "vgg_16/=net/vgg_16/",
                "--exclude", "fc8", "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    restored = {e["name"]: e for e in report["restored"]}
    assert set(restored) == {"net/" + k for k in vgg_source[1] if not k.startswith("vgg_16/fc8/")}
    assert restored["net/vgg_16/conv1/conv1_1/weights"]["source"] == "vgg_16/conv1/conv1_1/weights"
    assert restored["net/vgg_16/conv1/conv1_1/weights"]["shape"] == [3, 3, 3, 4]
    assert all(e["via"] == "saver" for e in report["restored"])
    skipped = {e["name"]: e["reason"] for e in report["skipped"]}
    assert skipped["net/vgg_16/fc8/weights"] == "excluded by --exclude fc8"
    assert "training state" in skipped["global_step"]
    assert "training state" in skipped["net/vgg_16/conv1/conv1_1/weights/Adam"]
    assert report["missing"] == [] and report["mismatched"] == []
    assert report["unused_source_keys"] == ["vgg_16/fc8/biases", "vgg_16/fc8/weights"]
    _check_transplanted(str(out), vgg_source, vgg_target)
    assert sorted(os.listdir(out.parent)) == ["checkpoint", "net.ckpt.data-00000-of-00001", "net.ckpt.index",
                                              "net.ckpt.meta"]
    # The written checkpoint is a model: fc7 answers like the source network's fc7.
    x = np.random.default_rng(0).normal(size=(3, 8, 8, 3)).astype(np.float32)
    model = load_model(str(out))
    with v1.Session(graph=model.graph) as sess:
        v1.train.Saver(saver_def=model.meta_graph_def.saver_def).restore(sess, str(out))
        got = sess.run("fc7:0", {"input:0": x})
    g = tf.Graph()
    with g.as_default():
        _build_vgg(10)
        with v1.Session() as sess:
            v1.train.Saver().restore(sess, vgg_source[0])
            want = sess.run("fc7:0", {"input:0": x})
    np.testing.assert_array_equal(got, want)
    # Human form (what the CLI prints without --json).
    text = format_report(report)
    assert "restored 8 variables" in text
    assert "net/vgg_16/fc8/weights [1,1,16,5] float32: excluded by --exclude fc8" in text
    assert "training-state variables (global_step, beta1_power, beta2_power, …)" in text


def test_transplant_from_hdf5(vgg_h5, vgg_source, vgg_target, tmp_path):
    r = run_cli("restore", vgg_target, "--from", vgg_h5, "--map", "vgg_16/=net/vgg_16/",
                "--out", tmp_path / "refused.ckpt")
    assert r.returncode == 2 and "net/vgg_16/fc8/weights" in r.stderr
    assert _ls(tmp_path) == []
    model = load_model(vgg_target)
    report = restore_weights(model, vgg_h5, str(tmp_path / "net.ckpt"), maps=["vgg_16/=net/vgg_16/"], exclude=["fc8"])
    assert report["source_format"] == "hdf5" and {e["via"] for e in report["restored"]} == {"assign"}
    _check_transplanted(str(tmp_path / "net.ckpt"), vgg_source, vgg_target)


def test_keras_h5_layout(tmp_path):
    """A real Keras model saved as legacy HDF5 (`dense/dense/kernel` + weight_names) fills a
    tf.compat.v1.layers-style graph, whose variables are `dense/kernel`, `dense/bias`."""
    import keras

    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(4, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(3, name="logits")(hidden)
    kmodel = keras.Model(inputs, outputs)
    path = str(tmp_path / "keras.h5")
    kmodel.save(path)
    with h5py.File(path, "r") as f:
        assert "hidden/hidden/kernel" in f["model_weights"]
    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tf.float32, [None, 6])
        with v1.variable_scope("tower"):
            h = _dense(x, 4, "hidden", tf.nn.relu)
            y = _dense(h, 3, "logits")
        plan = plan_restore(g, path, maps=["=tower/"])
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            report = restore_into_session(sess, plan)
            data = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
            got = sess.run(y, {x: data})
    assert {e["source"] for e in report["restored"]} == {"hidden/kernel", "hidden/bias", "logits/kernel", "logits/bias"}
    np.testing.assert_allclose(got, kmodel.predict(data, verbose=0), rtol=1e-5, atol=1e-6)
    # Keras 2 wrote the same layout with variable names ending in `:0`.
    keras2 = str(tmp_path / "keras2.h5")
    with h5py.File(keras2, "w") as f:
        f.attrs["layer_names"] = [b"hidden", b"logits"]
        for layer in kmodel.layers[1:]:
            names = [f"{layer.name}/kernel:0".encode(), f"{layer.name}/bias:0".encode()]
            f.create_group(layer.name).attrs["weight_names"] = names
            for name, value in zip(names, layer.get_weights()):
                f[layer.name][name.decode()] = value
    with h5py.File(keras2, "r") as f:
        assert "hidden/hidden/kernel:0" in f
    plan2 = plan_restore(g, keras2, maps=["=tower/"])
    assert {(e.name, e.source) for e in plan2.restored} == {(e["name"], e["source"]) for e in report["restored"]}
    np.testing.assert_array_equal(plan2.source.read("logits/kernel"), kmodel.layers[2].get_weights()[0])


def _graph_with_new_head(prefix):
    """What fine-tuning does: import the pretrained graph, add a new head above fc7."""
    g = tf.Graph()
    with g.as_default():
        v1.train.import_meta_graph(prefix + ".meta")
        with v1.variable_scope("head"):
            _dense(g.get_tensor_by_name("fc7:0"), 3, "out")
    return g


@pytest.mark.parametrize("method", ["saver", "assignment_map", "assign"])
def test_methods_on_imported_graph_with_new_head(method, vgg_source):
    """All three ways restore an imported meta graph; the new head keeps its initial values."""
    g = _graph_with_new_head(vgg_source[0])
    plan = plan_restore(g, vgg_source[0], exclude=["^head/"])
    with g.as_default(), v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        variables = {v.op.name: v for v in v1.global_variables()}
        head_before = sess.run(variables["head/out/kernel"])
        report = restore_into_session(sess, plan, method=method)
        for key, value in vgg_source[1].items():
            np.testing.assert_array_equal(sess.run(variables[key]), value)
        np.testing.assert_array_equal(sess.run(variables["head/out/kernel"]), head_before)
    assert {e["via"] for e in report["restored"]} == {method}
    assert len(report["restored"]) == len(vgg_source[1])
    assert {e["name"] for e in report["skipped"]} == {"head/out/kernel", "head/out/bias"}


def test_new_head_is_missing_unless_allowed(vgg_source):
    g = _graph_with_new_head(vgg_source[0])
    plan = plan_restore(g, vgg_source[0])
    with pytest.raises(RestoreError) as err:
        plan.check()
    assert "head/out/kernel [16,3] is missing" in err.value.message
    assert "--allow-missing" in err.value.hint and "--exclude '^head/out/'" in err.value.hint
    plan = plan_restore(g, vgg_source[0], allow_missing=True)
    assert [e.name for e in plan.by_status("missing")] == ["head/out/kernel", "head/out/bias"]
    plan.check()


def _ckpt(tmp_path, name, build, seed=0):
    g = tf.Graph()
    with g.as_default():
        build()
    return _save(g, str(tmp_path / name), seed)


def test_one_to_many_map(tmp_path):
    """One source tower fills two target towers."""
    src = _ckpt(tmp_path, "src.ckpt", lambda: (v1.get_variable("tower/w", [3, 2]), v1.get_variable("tower/b", [2])))

    def two_towers():
        for t in ("a", "b"):
            v1.get_variable(f"{t}/tower/w", [3, 2])
            v1.get_variable(f"{t}/tower/b", [2])
    target = _ckpt(tmp_path, "target.ckpt", two_towers, seed=5)
    want = _values(src)
    for method in ("saver", "assignment_map", "assign"):
        out = str(tmp_path / method / "out.ckpt")
        report = restore_weights(load_model(target), src, out, maps=["tower/=a/tower/", "tower/=b/tower/"], method=method)
        assert len(report["restored"]) == 4
        got = _values(out)
        for t in ("a", "b"):
            np.testing.assert_array_equal(got[f"{t}/tower/w"], want["tower/w"])
            np.testing.assert_array_equal(got[f"{t}/tower/b"], want["tower/b"])


def test_map_scope_rules_and_precedence(tmp_path):
    src = _ckpt(tmp_path, "src.ckpt", lambda: (v1.get_variable("old/w", [2]), v1.get_variable("new/w", [2]),
                                              v1.get_variable("oldish/w", [2])))
    g = tf.Graph()
    with g.as_default():
        v1.get_variable("new/w", [2])
        v1.get_variable("x/w", [2])
    plan = plan_restore(g, src, maps=["old=new", "=x/"], allow_missing=True)
    by_name = {e.name: e for e in plan.entries}
    assert by_name["new/w"].source == "old/w"  # an explicit map beats the same-named key
    assert by_name["x/w"].source is None  # "=x/" makes x/old/w, x/new/w, x/oldish/w; no x/w
    plan = plan_restore(g, src, maps=["old=x"])  # a scope, not a string prefix: oldish/ stays
    assert {e.name: e.source for e in plan.entries} == {"new/w": "new/w", "x/w": "old/w"}
    with pytest.raises(RestoreError, match="no key of .* is under 'vgg/'"):
        plan_restore(g, src, maps=["vgg/=net/"])
    with pytest.raises(RestoreError, match="is not OLD=NEW"):
        plan_restore(g, src, maps=["vgg"])
    with pytest.raises(RestoreError, match="could come from"):
        plan_restore(g, src, maps=["old/=x/", "new/=x/"])


def test_model_saver_keys_used(tmp_path):
    """A checkpoint saved with `Saver({"custom/w": w})` restores into its own model without maps."""
    g = tf.Graph()
    with g.as_default():
        w = v1.get_variable("w", [3])
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            prefix = v1.train.Saver({"custom/w": w}).save(sess, str(tmp_path / "m.ckpt"))
    model = load_model(prefix)
    (entry,) = plan_restore(model, prefix).entries
    assert (entry.name, entry.status, entry.source) == ("w", "restored", "custom/w")
    out = str(tmp_path / "out" / "m.ckpt")
    restore_model(model, plan_restore(model, prefix), out)
    np.testing.assert_array_equal(_values(out)["custom/w"], _values(prefix)["custom/w"])


def test_missing_scope_suggests_a_map(vgg_source, vgg_target):
    plan = plan_restore(load_model(vgg_target), vgg_source[0])
    assert len(plan.by_status("missing")) == 10
    with pytest.raises(RestoreError) as err:
        plan.check()
    assert "--map 'vgg_16/=net/vgg_16/'" in err.value.hint
    assert "--exclude '^net/vgg_16/'" in err.value.hint
    assert "… and 2 more" in err.value.message


def test_partitioned_target_from_whole_source(tmp_path):
    src = _ckpt(tmp_path, "src.ckpt", lambda: v1.get_variable("emb", [10, 4]), seed=3)
    want = _values(src)["emb"]

    def partitioned():
        with v1.variable_scope("model", partitioner=v1.fixed_size_partitioner(3)):
            v1.get_variable("emb", [10, 4])
    target = _ckpt(tmp_path, "target.ckpt", partitioned)
    model = load_model(target)
    plan = plan_restore(model, src, maps=["emb=model/emb"])
    (entry,) = plan.restored
    assert entry.name == "model/emb" and entry.parts == ("model/emb/part_0", "model/emb/part_1", "model/emb/part_2")
    assert entry.shape == (10, 4)
    for method in ("saver", "assignment_map", "assign"):
        out = str(tmp_path / method / "out.ckpt")
        restore_model(model, plan, out, method=method)
        np.testing.assert_array_equal(_values(out)["model/emb"], want)  # the Saver stores it whole
        g = tf.Graph()
        with g.as_default(), v1.Session() as sess:
            v1.train.import_meta_graph(out + ".meta").restore(sess, out)
            parts = sess.run(sorted(v1.global_variables(), key=lambda v: v.op.name))
        np.testing.assert_array_equal(np.concatenate(parts), want)


def test_whole_target_from_partitioned_sources(tmp_path):
    def partitioned():
        with v1.variable_scope("src", partitioner=v1.fixed_size_partitioner(2, axis=1)):
            v1.get_variable("w", [3, 6])
    src = _ckpt(tmp_path, "src.ckpt", partitioned, seed=4)  # stored as slices of one tensor
    want = _values(src)["src/w"]
    h5 = str(tmp_path / "parts.h5")
    with h5py.File(h5, "w") as f:  # stored as separate pieces
        f["src/w/part_0"], f["src/w/part_1"] = want[:, :3], want[:, 3:]
    target = _ckpt(tmp_path, "target.ckpt", lambda: v1.get_variable("dst/w", [3, 6]))
    for source, method in ((src, "saver"), (src, "assignment_map"), (h5, "saver")):
        out = str(tmp_path / f"{method}{source[-3:]}" / "out.ckpt")
        report = restore_weights(load_model(target), source, out, maps=["src=dst"], method=method)
        assert report["restored"][0]["source"] == "src/w"
        np.testing.assert_array_equal(_values(out)["dst/w"], want)
    assert report["unused_source_keys"] == []


def test_mismatched_and_allow_missing(tmp_path):
    def source():
        v1.get_variable("a", [2, 3])
        v1.get_variable("b", [4])
        v1.get_variable("c", [2], dtype=tf.float64)
    src = _ckpt(tmp_path, "src.ckpt", source)

    def target():
        v1.get_variable("a", [2, 3])
        v1.get_variable("b", [5])
        v1.get_variable("c", [2])
        v1.get_variable("d", [7])
    tgt = _ckpt(tmp_path, "tgt.ckpt", target, seed=9)
    model = load_model(tgt)
    plan = plan_restore(model, src, allow_missing=True)
    statuses = {e.name: (e.status, e.reason) for e in plan.entries}
    assert statuses == {"a": ("restored", ""), "b": ("mismatched", "shape"), "c": ("mismatched", "dtype"),
                        "d": ("missing", "")}
    with pytest.raises(RestoreError) as err:  # --allow-missing does not cover another shape
        restore_model(model, plan, str(tmp_path / "out.ckpt"))
    assert "b [5] float32 ≠ source b [4] float32" in err.value.message
    assert "c [2] float32 ≠ source c [2] float64" in err.value.message
    assert "d [7]" not in err.value.message and "--exclude '^b$' --exclude '^c$'" in err.value.hint
    assert not (tmp_path / "out.ckpt.index").exists()
    report = restore_weights(model, src, str(tmp_path / "out.ckpt"), exclude=["^[bc]$"], allow_missing=True)
    got, src_values, own = _values(str(tmp_path / "out.ckpt")), _values(src), _values(tgt)
    np.testing.assert_array_equal(got["a"], src_values["a"])
    for keep in "bcd":  # skipped and missing keep the target's own checkpoint values
        np.testing.assert_array_equal(got[keep], own[keep])
    assert [e["name"] for e in report["missing"]] == ["d"] and report["missing"][0]["looked_for"] == ["d"]
    assert "missing 1\n  d [7] float32: looked for d (keeps its own value)" in format_report(report)


def test_include_and_existing_output_kept_on_refusal(vgg_source, vgg_target, tmp_path):
    model = load_model(vgg_target)
    out = str(tmp_path / "net.ckpt")
    report = restore_weights(model, vgg_source[0], out, maps=["vgg_16/=net/vgg_16/"], include=["conv1/"])
    assert [e["name"] for e in report["restored"]] == ["net/vgg_16/conv1/conv1_1/weights",
                                                       "net/vgg_16/conv1/conv1_1/biases"]
    assert "not matched by --include" in {e["name"]: e["reason"] for e in report["skipped"]}["net/vgg_16/fc8/weights"]
    before = {name: os.path.getmtime(tmp_path / name) for name in _ls(tmp_path)}
    with pytest.raises(RestoreError):
        restore_weights(model, vgg_source[0], out, maps=["vgg_16/=net/vgg_16/"])
    assert {name: os.path.getmtime(tmp_path / name) for name in _ls(tmp_path)} == before
    np.testing.assert_array_equal(_values(out)["net/vgg_16/conv1/conv1_1/weights"],
                                  vgg_source[1]["vgg_16/conv1/conv1_1/weights"])


def test_saved_model_source(small_saved_model, small_ref_ckpt, tmp_path):
    """A TF1 SavedModel's variables fill the same network saved as a checkpoint."""
    directory, _ = small_saved_model
    plan = plan_restore(load_model(small_ref_ckpt[0]), directory)
    assert len(plan.restored) == 6 and plan.source.kind == "checkpoint"
    out = str(tmp_path / "out.ckpt")
    restore_model(load_model(small_ref_ckpt[0]), plan, out)
    want = _values(os.path.join(directory, "variables", "variables"))
    assert all(np.array_equal(_values(out)[k], want[k]) for k in want)


def test_bad_sources_are_plain_errors(vgg_target, tmp_path):
    r = run_cli("restore", vgg_target, "--from", tmp_path / "nope.ckpt", "--out", tmp_path / "o.ckpt")
    assert r.returncode == 2 and "no such checkpoint or file" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    model = load_model(vgg_target)
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="neither a TF checkpoint nor an HDF5 file"):
        plan_restore(model, tmp_path / "junk.bin")
    with pytest.raises(RestoreError, match="not a valid regular expression"):
        plan_restore(model, vgg_target, exclude=["("])
    with pytest.raises(RestoreError, match="frozen graph"):
        plan_restore(load_model(_frozen(tmp_path)), vgg_target)
    assert _ls(tmp_path) == ["frozen.pb", "junk.bin"]


def _frozen(tmp_path):
    g = tf.Graph()
    with g.as_default():
        tf.identity(v1.placeholder(tf.float32, [2], name="x"), name="y")
    tf.io.write_graph(g.as_graph_def(), str(tmp_path), "frozen.pb", as_text=False)
    return str(tmp_path / "frozen.pb")
