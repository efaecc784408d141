"""`surgery.core.weights`: every kind of weight source, built here with plain TensorFlow / Keras / h5py,
read back bit for bit; the model's own Saver; damaged checkpoints as plain errors (exit 2)."""

from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
import pytest
from conftest import build_small_cnn, run_cli, tf, v1

from surgery.core.errors import CheckpointError, ModelLoadError
from surgery.core.model import load_model
from surgery.core.weights import (
    CheckpointSource,
    HDF5Weights,
    open_checkpoint,
    open_weights,
    restore_checkpoint,
    saver_for,
)

RNG = np.random.default_rng(0)
VALUES = {"net/w": RNG.normal(size=(5, 3)).astype(np.float32), "net/b": RNG.normal(size=(3,)).astype(np.float32),
          "step": np.int64(7)}


def _tf1_checkpoint(prefix: str, version) -> dict:
    graph = tf.Graph()
    with graph.as_default():
        variables = {k: v1.get_variable(k, initializer=v) for k, v in VALUES.items()}
        saver = v1.train.Saver(write_version=version)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            saver.save(sess, prefix)
    return variables


def _variables(graph) -> dict:
    return {v.op.name: v for v in graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES)}


def _assert_bits(source, expected: dict) -> None:
    assert set(expected) <= set(source.keys())
    for key, value in expected.items():
        got = source.read(key)
        assert source.shape(key) == np.shape(value) and source.dtype(key) == np.asarray(value).dtype.name
        assert got.dtype == np.asarray(value).dtype and got.tobytes() == np.asarray(value).tobytes()


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_tf1_checkpoints_v1_and_v2(tmp_path, version):
    prefix = str(tmp_path / "model.ckpt")
    _tf1_checkpoint(prefix, getattr(v1.train.SaverDef, version))
    assert os.path.exists(prefix + ".index") == (version == "V2")
    for path in (prefix, prefix + ".meta", str(tmp_path)):
        source = open_weights(path)
        assert isinstance(source, CheckpointSource) and source.prefix == prefix
        _assert_bits(source, VALUES)
    # the model loads, and its own saver restores it (plain TF's Saver restores V1 too)
    model = load_model(prefix)
    assert model.checkpoint == prefix
    np.testing.assert_array_equal(model.read_variable("net/w"), VALUES["net/w"])
    with v1.Session(graph=model.graph) as sess:
        restore_checkpoint(saver_for(model), sess, prefix)
        assert sess.run(_variables(model.graph)["net/w"]).tobytes() == VALUES["net/w"].tobytes()


def test_tf2_object_checkpoint_keys_lose_their_suffix(tmp_path):
    w, b = VALUES["net/w"], VALUES["net/b"]
    module = tf.Module()
    module.dense = tf.Module()
    module.dense.kernel, module.dense.bias = tf.Variable(w), tf.Variable(b)
    prefix = tf.train.Checkpoint(model=module).write(str(tmp_path / "tf2"))
    source = open_weights(prefix)
    assert "model/dense/kernel" in source.keys() and not any(k.endswith("VARIABLE_VALUE") for k in source.keys())
    _assert_bits(source, {"model/dense/kernel": w, "model/dense/bias": b})
    # the stored key reads too
    assert source.read("model/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE").tobytes() == w.tobytes()
    assert source.object_graph() is not None


def test_hdf5_one_dataset_per_weight(tmp_path):
    path = tmp_path / "w.h5"
    with h5py.File(path, "w") as f:
        f["net/w"] = VALUES["net/w"]
        f["net/b:0"] = VALUES["net/b"]
        f["notes"] = np.array([b"text"])  # not a weight: skipped
    source = open_weights(path)
    assert isinstance(source, HDF5Weights) and "notes" not in source.keys()
    _assert_bits(source, {"net/w": VALUES["net/w"], "net/b": VALUES["net/b"]})


def test_keras_save_weights_h5(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense"),
                              keras.layers.Dense(2, name="out")])
    path = str(tmp_path / "k.weights.h5")
    legacy = str(tmp_path / "legacy.h5")
    model.save(legacy)  # Keras' legacy HDF5: model_weights/<layer>/<layer>/kernel:0 with weight_names
    source = open_weights(legacy)
    kernel, bias = model.get_layer("dense").get_weights()
    keys = source.keys()
    kernel_key = next(k for k in keys if "dense/" in k and k.endswith("kernel"))
    bias_key = next(k for k in keys if "dense/" in k and k.endswith("bias"))
    _assert_bits(source, {kernel_key: kernel, bias_key: bias})
    model.save_weights(path)
    assert set(open_weights(path).keys())  # the new layout reads as datasets by path


def test_partitioned_variables_both_ways(tmp_path):
    full = RNG.normal(size=(6, 4)).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        emb = v1.get_variable("emb", shape=full.shape, partitioner=v1.fixed_size_partitioner(3))
        with v1.Session() as sess:
            for part in emb:
                start, rows = part._save_slice_info.var_offset[0], part._save_slice_info.var_shape[0]
                sess.run(part.initializer)
                sess.run(part.assign(full[start:start + rows]))
            v1.train.Saver().save(sess, str(tmp_path / "sliced.ckpt"))
    # a Saver of a partitioned variable stores one sliced tensor: read whole
    _assert_bits(open_weights(str(tmp_path / "sliced.ckpt")), {"emb": full})
    # pieces stored as emb/part_N (e.g. exported one by one): joined into emb
    with h5py.File(tmp_path / "parts.h5", "w") as f:
        for i, part in enumerate(np.split(full, 3)):
            f[f"emb/part_{i}"] = part
    source = open_weights(tmp_path / "parts.h5")
    _assert_bits(source, {"emb": full, "emb/part_1": np.split(full, 3)[1]})
    # a model holding the partitioned variable: its own saver restores the sliced checkpoint
    model = load_model(str(tmp_path / "sliced.ckpt"))
    with v1.Session(graph=model.graph) as sess:
        restore_checkpoint(saver_for(model), sess, model.checkpoint)
        parts = _variables(model.graph)
        got = np.concatenate(sess.run([parts[p] for p in sorted(parts)]))
    assert got.tobytes() == full.tobytes()


def test_saver_for_without_a_saved_saver_is_keyed_like_the_checkpoint(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        build_small_cnn()
        variables = v1.global_variables()
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            v1.train.Saver({"renamed/" + v.op.name: v for v in variables}).save(
                sess, str(tmp_path / "m.ckpt"), write_meta_graph=False)
            expected = sess.run(variables)
            meta = v1.train.export_meta_graph(str(tmp_path / "m.ckpt.meta"), graph=graph)
    assert not meta.saver_def.restore_op_name
    model = load_model(str(tmp_path / "m.ckpt"))
    assert saver_for(model, fallback=False) is None
    model.variable_keys = {v.op.name: "renamed/" + v.op.name for v in variables}  # as a flattened TF2 model keys
    with v1.Session(graph=model.graph) as sess:
        restore_checkpoint(saver_for(model), sess, model.checkpoint)
        got = sess.run([_variables(model.graph)[v.op.name] for v in variables])
    for g, e in zip(got, expected):
        assert g.tobytes() == e.tobytes()


def _damaged(tmp_path, how: str) -> str:
    prefix = str(tmp_path / "good" / "model.ckpt")
    os.makedirs(os.path.dirname(prefix))
    _tf1_checkpoint(prefix, v1.train.SaverDef.V2)
    data, index = prefix + ".data-00000-of-00001", prefix + ".index"
    if how == "truncated":
        with open(data, "r+b") as f:
            f.truncate(os.path.getsize(data) - 8)
    elif how == "flipped":
        raw = bytearray(open(data, "rb").read())
        raw[4] ^= 0xFF
        open(data, "wb").write(bytes(raw))
    elif how == "index":
        raw = bytearray(open(index, "rb").read())
        raw[12] ^= 0xFF
        open(index, "wb").write(bytes(raw))
    return prefix


@pytest.mark.parametrize("how,words", [("truncated", "truncated"), ("flipped", "checksum"), ("index", "")])
def test_damaged_checkpoints_are_named_errors(tmp_path, how, words):
    prefix = _damaged(tmp_path, how)
    with pytest.raises(CheckpointError) as e:
        source = open_weights(prefix)
        for key in source.keys():
            source.read(key)
    message = str(e.value)
    assert prefix in message and words in message
    if how != "index":  # the Saver's own restore fails the same way
        model = load_model(prefix)
        with v1.Session(graph=model.graph) as sess, pytest.raises(CheckpointError, match=words):
            restore_checkpoint(saver_for(model), sess, prefix)


def test_damaged_checkpoint_exits_2_on_the_cli(tmp_path):
    prefix = _damaged(tmp_path, "flipped")
    out = tmp_path / "frozen.pb"
    r = run_cli("freeze", prefix, "--outputs", "net/b", "--out", out)  # net/b is stored first: damaged
    assert r.returncode == 2, r.stderr
    assert "checksum" in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()
    r = run_cli("restore", prefix, "--from", prefix, "--out", tmp_path / "r" / "m.ckpt")
    assert r.returncode == 2 and "checksum" in r.stderr and not (tmp_path / "r" / "m.ckpt.index").exists()


def test_open_checkpoint_names_a_missing_shard(tmp_path):
    prefix = _damaged(tmp_path, "none")
    shutil.move(prefix + ".data-00000-of-00001", str(tmp_path / "elsewhere"))
    with pytest.raises(CheckpointError, match="missing its data shard"):
        open_checkpoint(prefix)
    with pytest.raises(ModelLoadError):
        load_model(prefix)


def test_write_checkpoint_streams_values_copies_and_a_base(tmp_path):
    """Arrays, tensors copied from another checkpoint and a whole base checkpoint, in shards of a
    few bytes, merged into one checkpoint that a Saver and the reader read back bit for bit."""
    from surgery.core.weights import CheckpointCopy, CheckpointSource, write_checkpoint

    rng = np.random.default_rng(0)
    base = {"vgg/w": rng.normal(size=(3, 4)).astype(np.float32), "vgg/step": np.int64(7)}
    graph = tf.Graph()
    with graph.as_default():
        made = {k: v1.Variable(v, name=k) for k, v in base.items()}
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            v1.train.Saver(made).save(sess, str(tmp_path / "base" / "model.ckpt"))
    base_prefix = str(tmp_path / "base" / "model.ckpt")
    head = {"head/k": rng.normal(size=(5, 2)), "head/b": np.arange(2, dtype=np.int32)}
    tensors = [(k, v.dtype, lambda v=v: v) for k, v in head.items()]
    copied = CheckpointCopy.of(CheckpointSource(base_prefix), "vgg/w")
    out = str(tmp_path / "out" / "model.ckpt")
    os.makedirs(os.path.dirname(out))
    write_checkpoint(out, tensors + [("copy/w", tf.float32, copied)], shard_bytes=16)
    reader = v1.train.NewCheckpointReader(out)
    for k, v in head.items():
        assert reader.get_tensor(k).dtype == v.dtype and np.array_equal(reader.get_tensor(k), v)
    assert np.array_equal(reader.get_tensor("copy/w"), base["vgg/w"])
    assert sorted(os.listdir(tmp_path / "out")) == ["model.ckpt.data-00000-of-00003", "model.ckpt.data-00001-of-00003",
                                                    "model.ckpt.data-00002-of-00003", "model.ckpt.index"]
    whole = str(tmp_path / "whole" / "model.ckpt")
    os.makedirs(os.path.dirname(whole))
    write_checkpoint(whole, tensors, base=base_prefix)
    reader = v1.train.NewCheckpointReader(whole)
    assert sorted(reader.get_variable_to_shape_map()) == sorted([*head, *base])
    for k, v in {**head, **base}.items():
        assert np.array_equal(reader.get_tensor(k), v), k
    assert v1.train.NewCheckpointReader(base_prefix).get_tensor("vgg/step") == 7  # the base is untouched
    assert not os.path.exists(whole + ".shards")
