"""Precompute: an offline piece over a dataset into HDF5 equals plain TensorFlow, resumes after a
real SIGKILL to the same file a one-shot run writes, refuses bad input without touching outputs;
the online server answers like the unsplit graph."""

import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from conftest import ROOT, run_cli, tf, v1

from surgery import SurgeryError
from surgery.core.errors import DataError
from surgery.core.manifest import write_manifest
from surgery.passes.freeze import freeze_graph, write_graph_def
from surgery.runners.precompute import PARTIAL_SUFFIX, PROGRESS, SLOW_READ_ENV, precompute
from surgery.runners.serve import OnlineServer

N_ITEMS, ITEM_DIM, USER_DIM = 600, 12, 6


def _dense(x, units, name, relu=True):
    with v1.variable_scope(name):
        w = v1.get_variable("kernel", [int(x.shape[-1]), units])
        b = v1.get_variable("bias", [units], initializer=v1.random_normal_initializer())
        y = tf.matmul(x, w) + b
        return tf.nn.relu(y, name="Relu") if relu else y


def _two_tower():
    """The recommender of the reference notes (scripts/nets.py's layout, without tf.layers, which
    Keras 3 removed): item tower (offline) and user tower (live) → `score`."""
    items = v1.placeholder(tf.float32, [None, ITEM_DIM], name="item_features")
    users = v1.placeholder(tf.float32, [None, USER_DIM], name="user_features")
    with v1.variable_scope("item_tower"):
        h = _dense(_dense(items, 16, "dense_0"), 16, "dense_1")
        item_emb = tf.identity(_dense(h, 8, "project", relu=False), name="embedding")
    with v1.variable_scope("user_tower"):
        user_emb = tf.identity(_dense(_dense(users, 8, "dense_0"), 8, "project", relu=False), name="embedding")
    with v1.variable_scope("scorer"):
        joint = tf.concat([item_emb * user_emb, item_emb, user_emb], axis=1)
        logit = tf.squeeze(_dense(_dense(joint, 8, "dense"), 1, "logit", relu=False), [1])
    return items, users, tf.sigmoid(logit, name="score")


@pytest.fixture(scope="session")
def tower(tmp_path_factory):
    """A small two-tower recommender: checkpoint, split directory (offline item tower, online
    scorer), item data in HDF5 and .npy, and plain TensorFlow's answers on the unsplit graph."""
    d = tmp_path_factory.mktemp("tower")
    rng = np.random.default_rng(0)
    items = rng.normal(size=(N_ITEMS, ITEM_DIM)).astype(np.float32)
    users = rng.normal(size=(3, USER_DIM)).astype(np.float32)
    ids = np.array([f"item-{i:04d}" for i in range(N_ITEMS)], dtype="S9")
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(1)
        item_ph, user_ph, score = _two_tower()
        emb = graph.get_tensor_by_name("item_tower/embedding:0")
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            prefix = v1.train.Saver().save(sess, str(d / "ckpt" / "model.ckpt"))
            values = {v.op.name: sess.run(v) for v in v1.global_variables()}
            expected_emb = sess.run(emb, {item_ph: items})
            expected_score = sess.run(score, {item_ph: items[:5], user_ph: np.repeat(users[:1], 5, axis=0)})
    split = d / "split"
    offline = freeze_graph(graph, "item_tower/embedding:0", read_variable=values.__getitem__)
    online = freeze_graph(graph, "score:0", inputs="item_tower/embedding:0", read_variable=values.__getitem__)
    write_graph_def(offline.graph_def, str(split / "offline.pb"))
    write_graph_def(online.graph_def, str(split / "online.pb"))
    write_manifest(str(split), source={"path": prefix}, pieces={"offline": offline.manifest_entry("offline.pb"),
                                                                "online": online.manifest_entry("online.pb")},
                   cut=[{"tensor": "item_tower/embedding:0", "placeholder": "item_tower/embedding:0"}])
    data = str(d / "items.h5")
    with h5py.File(data, "w") as f:
        f["items/x"] = items
        f["items/ids"] = ids
        f["items/x64"] = items.astype(np.float64)
        f["items/short"] = items[:, :ITEM_DIM - 1]
    np.save(d / "items.npy", items)
    np.save(d / "ids.npy", np.arange(N_ITEMS) * 10)
    return {"dir": d, "prefix": prefix, "split": str(split), "data": data, "items": items, "users": users,
            "ids": ids, "emb": expected_emb, "score": expected_score}


def _altered_split(tower, dst):
    """A copy of the split directory whose offline piece has one weight changed."""
    shutil.copytree(tower["split"], dst)
    gd = v1.GraphDef()
    gd.ParseFromString((dst / "offline.pb").read_bytes())
    node = next(n for n in gd.node if n.op == "Const" and n.attr["dtype"].type == tf.float32.as_datatype_enum
                and len(n.attr["value"].tensor.tensor_shape.dim) == 2)
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(tf.make_ndarray(node.attr["value"].tensor) * 2))
    write_graph_def(gd, str(dst / "offline.pb"))
    return str(dst)


def _content(path):
    """Every dataset (values, dtype, attrs) and the root attrs of an HDF5 file."""
    out = {}
    with h5py.File(path, "r") as f:
        out["/"] = {k: str(v) for k, v in f.attrs.items()}
        f.visititems(lambda name, obj: out.__setitem__(name, (obj[()], obj.dtype.str, {
            k: str(v) for k, v in obj.attrs.items()})) if hasattr(obj, "shape") else None)
    return out


def _assert_same_content(a, b):
    ca, cb = _content(a), _content(b)
    assert sorted(ca) == sorted(cb)
    for key in ca:
        if key == "/":
            assert ca[key] == cb[key]
        else:
            np.testing.assert_array_equal(ca[key][0], cb[key][0])
            assert ca[key][1:] == cb[key][1:]


def test_split_dir_equals_plain_tensorflow(tower, tmp_path):
    out = str(tmp_path / "emb.h5")
    result = precompute(tower["split"], tower["data"], "items/x", out, ids="items/ids", batch_size=64)
    assert (result.rows, result.computed, result.resumed_from, result.status) == (N_ITEMS, N_ITEMS, 0, "done")
    with h5py.File(out, "r") as f:
        assert sorted(f) == ["embeddings", "ids"]
        np.testing.assert_allclose(f["embeddings"][()], tower["emb"], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(f["ids"][()], tower["ids"])
        assert f["embeddings"].chunks[0] == 64 and f["embeddings"].attrs["tensor"] == "item_tower/embedding:0"
        with open(os.path.join(tower["split"], "offline.pb"), "rb") as g:
            assert f.attrs["graph_sha256"] == hashlib.sha256(g.read()).hexdigest()
        assert f.attrs["input_tensor"] == "item_features:0" and f.attrs["batch_size"] == 64
        assert (f.attrs["data_key"], f.attrs["ids_key"], f.attrs["rows"]) == ("items/x", "items/ids", N_ITEMS)
    assert not os.path.exists(out + PARTIAL_SUFFIX)
    again = precompute(tower["split"], tower["data"], "items/x", out, ids="items/ids", batch_size=64)
    assert again.status == "up to date" and again.computed == 0


def test_pb_model_and_npy_forms(tower, tmp_path):
    pb = os.path.join(tower["split"], "offline.pb")
    precompute(pb, tower["data"], "items/x", str(tmp_path / "pb.h5"), batch_size=100)
    precompute(tower["prefix"], str(tower["dir"] / "items.npy"), None, str(tmp_path / "ckpt.h5"),
               ids=str(tower["dir"] / "ids.npy"), outputs="item_tower/embedding=item,item_tower/dense_0/Relu=h0",
               batch_size=128)
    with h5py.File(tmp_path / "pb.h5", "r") as f:
        np.testing.assert_allclose(f["embeddings"][()], tower["emb"], rtol=1e-5, atol=1e-6)
    with h5py.File(tmp_path / "ckpt.h5", "r") as f:
        assert sorted(f) == ["h0", "ids", "item"]
        np.testing.assert_allclose(f["item"][()], tower["emb"], rtol=1e-5, atol=1e-6)
        assert f["h0"].shape == (N_ITEMS, 16)
        np.testing.assert_array_equal(f["ids"][()], np.arange(N_ITEMS) * 10)


def _partial_rows(path):
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int(f[PROGRESS][0])
    except (OSError, KeyError):
        return 0


def _start(args, env_extra):
    env = dict(os.environ, PYTHONPATH=ROOT, **env_extra)
    return subprocess.Popen([sys.executable, "-m", "surgery", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _kill_when(proc, partial, rows_at_least, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if _partial_rows(partial) >= rows_at_least:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.01)
    pytest.fail(f"the run ended (rc={proc.poll()}) before {rows_at_least} rows were committed")


def test_sigkill_mid_run_resumes_to_identical_file(tower, tmp_path):
    out = str(tmp_path / "emb.h5")
    partial = out + PARTIAL_SUFFIX
    args = ["precompute", tower["split"], "--data", tower["data"], "--key", "items/x", "--ids", "items/ids",
            "--batch-size", "16", "--out", out]
    # Slow enough per batch that the run is still going when the poll sees its progress, even when
    # this process is starved of CPU (a fast run used to finish between two polls under load).
    proc = _start(args, {SLOW_READ_ENV: "0.05"})
    _kill_when(proc, partial, N_ITEMS // 3)
    first = _partial_rows(partial)
    assert 0 < first < N_ITEMS and not os.path.exists(out)
    proc = _start(args, {SLOW_READ_ENV: "0.05"})  # killed again while resuming
    _kill_when(proc, partial, first + 64)
    second = _partial_rows(partial)
    assert first < second < N_ITEMS and not os.path.exists(out)
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert f"resumed at row {second} of {N_ITEMS}; computed {N_ITEMS - second} rows" in r.stdout
    assert not os.path.exists(partial)
    one_shot = str(tmp_path / "one_shot.h5")
    precompute(tower["split"], tower["data"], "items/x", one_shot, ids="items/ids", batch_size=16)
    _assert_same_content(out, one_shot)
    with h5py.File(out, "r") as f:
        np.testing.assert_allclose(f["embeddings"][()], tower["emb"], rtol=1e-5, atol=1e-6)


def test_changed_graph_or_batch_size_is_refused_not_mixed(tower, tmp_path):
    out = str(tmp_path / "emb.h5")
    partial = out + PARTIAL_SUFFIX
    args = ["precompute", tower["split"], "--data", tower["data"], "--key", "items/x", "--batch-size", "32", "--out", out]
    proc = _start(args, {SLOW_READ_ENV: "0.05"})
    _kill_when(proc, partial, 64)
    before = open(partial, "rb").read()
    with pytest.raises(DataError, match=r"another batch_size \(32 there, 64 now\)"):
        precompute(tower["split"], tower["data"], "items/x", out, batch_size=64)
    with pytest.raises(DataError, match="graph_sha256"):
        precompute(_altered_split(tower, tmp_path / "other"), tower["data"], "items/x", out, batch_size=32)
    with pytest.raises(DataError, match="data_file"):  # the same rows, from another file
        precompute(tower["split"], str(tower["dir"] / "items.npy"), "items/x", out, batch_size=32)
    assert open(partial, "rb").read() == before
    result = precompute(tower["split"], tower["data"], "items/x", out, batch_size=32)
    assert result.resumed_from >= 64 and result.computed == N_ITEMS - result.resumed_from


def test_bad_input_exits_2_and_keeps_existing_output(tower, tmp_path):
    out = tmp_path / "emb.h5"
    out.write_bytes(b"an earlier result")
    base = ["precompute", tower["split"], "--data", tower["data"], "--out", str(out)]
    r = run_cli(*base, "--key", "items/xx")
    assert r.returncode == 2 and "no dataset 'items/xx'" in r.stderr and "items/x" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_cli(*base, "--key", "items/short")
    assert r.returncode == 2 and "does not fit input item_features:0" in r.stderr
    assert out.read_bytes() == b"an earlier result" and not os.path.exists(str(out) + PARTIAL_SUFFIX)
    for kwargs, match in [({"key": "items/x64"}, "without losing values"),
                          ({"key": "items/x", "ids": "items/nope"}, "no dataset 'items/nope'"),
                          ({"key": "items/x", "outputs": "item_tower/embedding=ids"}, "not usable")]:
        key = kwargs.pop("key")
        with pytest.raises(SurgeryError, match=match):
            precompute(tower["split"], tower["data"], key, str(out), **kwargs)
    assert out.read_bytes() == b"an earlier result" and not os.path.exists(str(out) + PARTIAL_SUFFIX)


def _read_only_cli(directory, *args):
    """Run the CLI with `directory` read-only: a read-only bind mount when root (chmod binds no root)."""
    if os.geteuid() != 0:
        os.chmod(directory, 0o555)
        try:
            return run_cli(*args)
        finally:
            os.chmod(directory, 0o755)
    if not shutil.which("unshare"):
        pytest.skip("root without unshare: cannot make a read-only directory")
    env = dict(os.environ, PYTHONPATH=ROOT)
    script = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"'
    r = subprocess.run(["unshare", "--mount", "sh", "-c", script, str(directory), sys.executable, "-m", "surgery",
                        *map(str, args)], capture_output=True, text=True, env=env, timeout=300)
    if "mount" in r.stderr and "surgery" not in r.stderr:
        pytest.skip(f"cannot make a read-only mount here: {r.stderr.strip()}")
    return r


def test_read_only_and_full_output_location_exit_2(tower, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    out = ro / "emb.h5"
    out.write_bytes(b"an earlier result")
    args = ["precompute", tower["split"], "--data", tower["data"], "--key", "items/x", "--out", str(out)]
    r = _read_only_cli(ro, *args)
    assert r.returncode == 2 and "cannot write" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert out.read_bytes() == b"an earlier result" and sorted(os.listdir(ro)) == ["emb.h5"]

    full = tmp_path / "full"
    full.mkdir()
    out = full / "emb.h5"
    out.write_bytes(b"an earlier result")

    def small_disk():  # files over 8 KiB fail with EFBIG, as on a full disk (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "surgery", "precompute", tower["split"], "--data",
                        tower["data"], "--key", "items/x", "--batch-size", "16", "--out", str(out)],
                       capture_output=True, text=True, env=env, preexec_fn=small_disk, timeout=300)
    assert r.returncode == 2 and "cannot write" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert out.read_bytes() == b"an earlier result" and sorted(os.listdir(full)) == ["emb.h5"]


def test_online_server_answers_like_the_unsplit_graph(tower, tmp_path):
    out = str(tmp_path / "emb.h5")
    precompute(tower["split"], tower["data"], "items/x", out, ids="items/ids", batch_size=128)
    wanted = [b"item-0003", b"item-0000", b"item-0004", b"item-0001", b"item-0002"]
    order = [3, 0, 4, 1, 2]
    for preload in (True, False):
        with OnlineServer(tower["split"], out, preload=preload) as server:
            assert server.live_inputs == ["user_features:0"]
            got = server.score(wanted, tower["users"][:1])  # one user row, broadcast to each item
            np.testing.assert_allclose(got, tower["score"][order], rtol=1e-5, atol=1e-6)
            got = server.score([w.decode() for w in wanted], user_features=tower["users"][:1])
            np.testing.assert_allclose(got, tower["score"][order], rtol=1e-5, atol=1e-6)
            with pytest.raises(SurgeryError, match="unknown id"):
                server.score([b"item-9999"], tower["users"][:1])
    with pytest.raises(DataError, match="another offline piece"):
        OnlineServer(_altered_split(tower, tmp_path / "other"), out)


def test_fast_callable_private_path_and_its_public_fallback():
    """precompute's feed path: TensorFlow's private `_make_callable_from_options` while it exists
    (this fails loudly when a TensorFlow drops it), the public `make_callable` otherwise; same numbers."""
    from surgery.core import tfcompat

    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 3], name="x")
        tf.identity(tf.matmul(x, tf.constant(np.arange(6, dtype=np.float32).reshape(3, 2))), name="y")
    rows = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    with v1.Session(graph=graph) as sess:
        assert hasattr(sess, "_make_callable_from_options"), "TensorFlow changed: see tfcompat.fast_callable"
        expected = sess.run("y:0", {"x:0": rows})
        (fast,) = tfcompat.fast_callable(sess, ["x:0"], ["y:0"])(rows)

        class Public:  # a session without the private method
            graph = sess.graph
            make_callable = sess.make_callable

        (public,) = tfcompat.fast_callable(Public(), ["x:0"], ["y:0"])(rows)
    assert fast.tobytes() == expected.tobytes() and public.tobytes() == expected.tobytes()
