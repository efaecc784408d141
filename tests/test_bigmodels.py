"""Models past 2 GB: pieces as SavedModels that keep their variables.

The 2 GB case itself runs in `scripts/bench_bigmodel.py` (memory, time); here the same recommender
is built small, and the SavedModel path is forced with `--format savedmodel` or a small
`SURGERY_2GB_LIMIT`. Every piece is read back from disk by plain TensorFlow and compared with the
original checkpoint.
"""

import json
import os
import resource
import subprocess
import sys

import numpy as np
import pytest
from bench_bigmodel import build_recommender
from conftest import ROOT, cli, tf, v1

from surgery import load_model
from surgery.core.errors import GraphTooBigError
from surgery.passes.freeze import freeze_model
from surgery.passes.savedmodel import LIMIT_ENV, write_checkpoint
from surgery.passes.split import split_model, write_split
from surgery.runners.precompute import precompute
from surgery.runners.serve import OnlineServer

USERS = 300


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    """The recommender (300 users × 64) saved by plain TensorFlow, and its answers on fixed inputs."""
    d = tmp_path_factory.mktemp("rec")
    g = tf.Graph()
    with g.as_default():
        v1.set_random_seed(3)
        build_recommender(USERS)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            prefix = v1.train.Saver().save(sess, str(d / "model.ckpt"))
            rng = np.random.default_rng(0)
            feeds = {"item_features:0": rng.standard_normal((9, 16)).astype(np.float32),
                     "user_ids:0": rng.integers(0, USERS, 9).astype(np.int64),
                     "user_features:0": rng.standard_normal((9, 8)).astype(np.float32)}
            emb, score = sess.run(["item_tower/embedding:0", "score:0"], feeds)
    np.save(d / "items.npy", feeds["item_features:0"])
    return {"prefix": prefix, "feeds": feeds, "emb": emb, "score": score, "items": str(d / "items.npy")}


def _serving(path):
    return tf.saved_model.load(str(path)).signatures["serving_default"]


def _saved_keys(path):
    return sorted(name for name, _ in tf.train.list_variables(os.path.join(str(path), "variables", "variables")))


def test_split_savedmodel_pieces_answer_like_the_original(rec, tmp_path):
    out = tmp_path / "pieces"
    r = cli("split", rec["prefix"], "--cut", "item_tower/embedding", "--outputs", "score", "--format", "savedmodel",
            "--verify", "3", "--out", out)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["manifest.json", "offline", "online"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert {k: (p["graph"], p["format"]) for k, p in manifest["pieces"].items()} == {
        "offline": ("offline", "savedmodel"), "online": ("online", "savedmodel")}
    assert manifest["verification"]["passed"] and manifest["verification"]["n"] == 3
    # Only the variables a piece uses, under their own names.
    assert _saved_keys(out / "offline") == ["item_tower/dense_0/bias", "item_tower/dense_0/kernel",
                                            "item_tower/project/bias", "item_tower/project/kernel"]
    online_keys = _saved_keys(out / "online")
    assert "user_tower/table" in online_keys and not any(k.startswith("item_tower") for k in online_keys)
    reader = tf.train.load_checkpoint(str(out / "online" / "variables" / "variables"))
    original = tf.train.load_checkpoint(rec["prefix"])
    for key in online_keys:  # bit for bit
        np.testing.assert_array_equal(reader.get_tensor(key), original.get_tensor(key))

    feeds = rec["feeds"]
    emb = _serving(out / "offline")(item_features=tf.constant(feeds["item_features:0"]))["item_tower_embedding"]
    np.testing.assert_allclose(emb.numpy(), rec["emb"], rtol=1e-6, atol=1e-6)
    score = _serving(out / "online")(item_tower_embedding=emb, user_ids=tf.constant(feeds["user_ids:0"]),
                                     user_features=tf.constant(feeds["user_features:0"]))["score"]
    np.testing.assert_allclose(score.numpy(), rec["score"], rtol=1e-6, atol=1e-6)
    assert rec["score"].std() > 0
    # TF1's loader (TF Serving's way) reads it too.
    with tf.Graph().as_default() as g, v1.Session(graph=g) as sess:
        v1.saved_model.loader.load(sess, ["serve"], str(out / "online"))
        got = sess.run("score:0", {"item_tower/embedding:0": rec["emb"], "user_ids:0": feeds["user_ids:0"],
                                   "user_features:0": feeds["user_features:0"]})
    np.testing.assert_allclose(got, rec["score"], rtol=1e-6, atol=1e-6)


def test_auto_keeps_only_the_piece_past_the_limit(rec, tmp_path, monkeypatch):
    model = load_model(rec["prefix"])
    small = split_model(model, "item_tower/embedding", "score")
    assert [p.format for p in (small.offline, small.online)] == ["frozen", "frozen"]
    # The online piece holds the table (300 × 64 floats = 77 kB); the offline piece is a few kB.
    monkeypatch.setenv(LIMIT_ENV, "40000")
    split = split_model(model, "item_tower/embedding", "score")
    manifest = write_split(model, split, str(tmp_path / "p"), verify=2)
    assert {k: p["format"] for k, p in manifest["pieces"].items()} == {"offline": "frozen", "online": "savedmodel"}
    assert sorted(os.listdir(tmp_path / "p")) == ["manifest.json", "offline.pb", "online"]
    assert manifest["verification"]["passed"]
    # --format frozen refuses, naming the way out.
    r = cli("split", rec["prefix"], "--cut", "item_tower/embedding", "--outputs", "score", "--format", "frozen",
            "--out", tmp_path / "q")
    assert r.returncode == 2 and "--format savedmodel" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "q").exists()


def test_every_reader_of_a_split_dir_reads_savedmodel_pieces(rec, tmp_path):
    out = tmp_path / "pieces"
    assert cli("split", rec["prefix"], "--cut", "item_tower/embedding", "--outputs", "score",
               "--format", "savedmodel", "--out", out).returncode == 0
    # precompute runs the offline SavedModel piece
    emb_file = tmp_path / "emb.h5"
    precompute(str(out), rec["items"], None, str(emb_file), batch_size=4)
    import h5py

    with h5py.File(emb_file, "r") as f:
        np.testing.assert_allclose(f["embeddings"][()], rec["emb"], rtol=1e-6, atol=1e-6)
    # OnlineServer restores the online piece's variables
    ids = [str(i) for i in range(9)]
    with h5py.File(emb_file, "a") as f:
        f["ids"] = np.array(ids, dtype="S")
    with OnlineServer(str(out), str(emb_file)) as server:
        feeds = rec["feeds"]
        got = server.score(ids, user_ids=feeds["user_ids:0"], user_features=feeds["user_features:0"])
    np.testing.assert_allclose(got, rec["score"], rtol=1e-6, atol=1e-6)
    # inspect, audit, export
    r = cli("inspect", out, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["format"] == "pieces" and "user_tower/table" in json.dumps(report["pieces"])
    r = cli("audit", out, "--json")  # each piece read; a SavedModel's only file ops are its Saver's,
    assert r.returncode == 0, r.stdout + r.stderr  # off the output path: informational, clean
    assert json.loads(r.stdout)["clean"]
    findings = [f for p in json.loads(r.stdout)["pieces"] for f in p["findings"]]
    assert sorted(f["name"] for f in findings) == ["save/RestoreV2", "save/RestoreV2", "save/SaveV2", "save/SaveV2"]
    assert all(f["checkpoint_machinery"] for f in findings)  # so `--strict` accepts them
    r = cli("export", out, "--saved-model", tmp_path / "serving")
    assert r.returncode == 0, r.stderr
    served = _serving(tmp_path / "serving" / "online")(
        item_tower_embedding=tf.constant(rec["emb"]), user_ids=tf.constant(rec["feeds"]["user_ids:0"]),
        user_features=tf.constant(rec["feeds"]["user_features:0"]))["score"]
    np.testing.assert_allclose(served.numpy(), rec["score"], rtol=1e-6, atol=1e-6)


def test_export_model_keeps_variables(rec, tmp_path):
    r = cli("export", rec["prefix"], "--outputs", "score", "--inputs", "item_tower/embedding",
            "--saved-model", tmp_path / "online")
    assert r.returncode == 0, r.stderr
    assert "user_tower/table" in _saved_keys(tmp_path / "online")
    assert not any(k.startswith("item_tower") for k in _saved_keys(tmp_path / "online"))
    feeds = rec["feeds"]
    got = _serving(tmp_path / "online")(item_tower_embedding=tf.constant(rec["emb"]),
                                        user_ids=tf.constant(feeds["user_ids:0"]),
                                        user_features=tf.constant(feeds["user_features:0"]))["score"]
    np.testing.assert_allclose(got.numpy(), rec["score"], rtol=1e-6, atol=1e-6)
    # the whole model, from its .meta + checkpoint
    r = cli("export", rec["prefix"] + ".meta", "--outputs", "score", "--saved-model", tmp_path / "whole")
    assert r.returncode == 0, r.stderr
    got = _serving(tmp_path / "whole")(**{k.split(":")[0]: tf.constant(v) for k, v in feeds.items()})["score"]
    np.testing.assert_allclose(got.numpy(), rec["score"], rtol=1e-6, atol=1e-6)
    # bad input: exit 2, nothing written
    r = cli("export", rec["prefix"], "--outputs", "scroe", "--saved-model", tmp_path / "bad")
    assert r.returncode == 2 and "score" in r.stderr and not (tmp_path / "bad").exists(), r.stderr
    r = cli("export", rec["prefix"], "--saved-model", tmp_path / "bad")
    assert r.returncode == 2 and "--outputs" in r.stderr and not (tmp_path / "bad").exists(), r.stderr


def test_freeze_past_the_limit_names_the_way_out(rec, monkeypatch):
    from surgery.core import graph

    monkeypatch.setattr(graph, "MAX_GRAPHDEF_BYTES", 50_000)
    with pytest.raises(GraphTooBigError, match="--format savedmodel") as e:
        freeze_model(load_model(rec["prefix"]), ["score"])
    assert "surgery export" in str(e.value)


def test_write_checkpoint_shards_and_merges_tensor_by_tensor(tmp_path):
    rng = np.random.default_rng(0)
    values = {"a": rng.standard_normal((50, 40)).astype(np.float32), "b/c": np.arange(7, dtype=np.int64),
              "d": rng.standard_normal((300, 20)).astype(np.float32), "e": np.array(2.5, np.float64)}
    reads = []

    def read(name):
        reads.append(name)
        return values[name]

    prefix = str(tmp_path / "variables")
    write_checkpoint(prefix, sorted(values), read, shard_bytes=10_000)  # [a, b/c], [d], [e]
    assert reads == sorted(values)
    assert sorted(os.listdir(tmp_path)) == ["variables.data-00000-of-00003", "variables.data-00001-of-00003",
                                            "variables.data-00002-of-00003", "variables.index"]
    reader = tf.train.load_checkpoint(prefix)
    for name, value in values.items():
        np.testing.assert_array_equal(reader.get_tensor(name), value)


def test_a_disk_that_fills_while_writing_variables_exits_2_leaving_the_previous_output(rec, tmp_path):
    out = tmp_path / "pieces"
    assert cli("split", rec["prefix"], "--cut", "item_tower/embedding", "--outputs", "score", "--format",
               "savedmodel", "--verify", "0", "--out", out).returncode == 0
    before = {p: (out / p).read_bytes() for p in ("manifest.json", "online/saved_model.pb",
                                                  "online/variables/variables.index")}

    def small_disk():  # files over 40 KiB fail with EFBIG, as on a full disk: the 77 kB table cannot be written
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "surgery", "split", rec["prefix"], "--cut", "item_tower/embedding",
                        "--outputs", "score", "--format", "savedmodel", "--verify", "0", "--out", str(out)],
                       capture_output=True, text=True, env=env, preexec_fn=small_disk, timeout=300)
    assert r.returncode == 2 and "cannot write" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert {p: (out / p).read_bytes() for p in before} == before
    assert sorted(os.listdir(tmp_path)) == ["pieces"]  # no temporary left beside it


def test_split_cli_reports_the_savedmodel_piece(rec, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, **{LIMIT_ENV: "40000"})
    r = subprocess.run([sys.executable, "-m", "surgery", "split", rec["prefix"], "--cut", "item_tower/embedding",
                        "--outputs", "score", "--out", str(tmp_path / "p")], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "offline.pb" in r.stdout and "online/" in r.stdout and "verified" in r.stdout


def test_beam_runs_a_savedmodel_offline_piece(rec, tmp_path):
    pytest.importorskip("apache_beam")
    out = tmp_path / "pieces"
    assert cli("split", rec["prefix"], "--cut", "item_tower/embedding", "--outputs", "score",
               "--format", "savedmodel", "--verify", "0", "--out", out).returncode == 0
    r = cli("precompute", out, "--data", rec["items"], "--batch-size", "4", "--runner", "beam",
            "--out", tmp_path / "beam.h5")
    assert r.returncode == 0, r.stderr
    import h5py

    with h5py.File(tmp_path / "beam.h5", "r") as f:
        np.testing.assert_allclose(f["embeddings"][()], rec["emb"], rtol=1e-6, atol=1e-6)


def test_export_a_frozen_graph_cut_to_outputs(small_frozen_pb, sample_images, tmp_path):
    pb, _ = small_frozen_pb
    r = cli("export", pb, "--outputs", "net/fc1/Relu", "--saved-model", tmp_path / "fc1")
    assert r.returncode == 0, r.stderr
    got = _serving(tmp_path / "fc1")(images=tf.constant(sample_images))["net_fc1_Relu"].numpy()
    gd = v1.GraphDef()
    with open(pb, "rb") as f:
        gd.ParseFromString(f.read())
    with tf.Graph().as_default() as g:
        tf.import_graph_def(gd, name="")
        with v1.Session(graph=g) as sess:
            want = sess.run("net/fc1/Relu:0", {"images:0": sample_images})
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert want.std() > 0


def test_a_checkpoint_of_another_shape_is_refused_before_writing(rec, tmp_path):
    import glob
    import shutil

    for f in glob.glob(rec["prefix"] + ".data-*") + [rec["prefix"] + ".index"]:
        shutil.copy(f, tmp_path)
    prefix = str(tmp_path / os.path.basename(rec["prefix"]))
    with tf.Graph().as_default():
        build_recommender(USERS + 1)  # the graph's table has one more row than the checkpoint's
        v1.train.Saver().export_meta_graph(prefix + ".meta")
    r = cli("split", prefix, "--cut", "item_tower/embedding", "--outputs", "score", "--format", "savedmodel",
            "--out", tmp_path / "p")
    assert r.returncode == 2 and "user_tower/table" in r.stderr and "shape" in r.stderr, r.stderr
    assert not (tmp_path / "p").exists()
