"""`inspect` reports: formats, counts, inputs, outputs, variables, tensors — on real graphs."""

import json
import os

import numpy as np
import pytest
from conftest import SMALL_CNN_PARAMS, run_cli, tf, v1

from surgery import inspect_model, load_model
from surgery.passes.inspect import format_report


def test_checkpoint_report(small_ckpt):
    report = inspect_model(load_model(small_ckpt[0]))
    assert report["format"] == "checkpoint"
    assert report["num_params"] == SMALL_CNN_PARAMS  # Adam slots and global_step not counted
    weights = [v for v in report["variables"] if not v["training_only"]]
    assert len(weights) == 6
    assert any(v["name"].endswith("/Adam") and v["training_only"] for v in report["variables"])
    # issue 15: the loss side of a training graph is not an answer, and labels feed only the loss
    assert [t["name"] for t in report["inputs"]] == ["images:0"]
    outputs = [t["name"] for t in report["outputs"]]
    assert "probs:0" in outputs and "loss:0" not in outputs
    assert not any("Read" in n or "Assign" in n or "save" in n for n in outputs)
    assert report["inputs"][0] == {"name": "images:0", "dtype": "float32", "shape": [None, 8, 8, 3]}
    assert report["num_nodes"] == sum(report["ops"].values())


def test_frozen_report_counts_weight_constants(small_frozen_pb):
    report = inspect_model(load_model(small_frozen_pb[0]))
    assert report["num_params"] == SMALL_CNN_PARAMS
    assert report["variables"] == []
    assert [t["name"] for t in report["outputs"]] == ["probs:0"]
    assert [t["name"] for t in report["inputs"]] == ["images:0"]


def test_saved_model_report_uses_signature(small_saved_model):
    report = inspect_model(load_model(small_saved_model[0]))
    assert report["format"] == "saved_model"
    assert [t["name"] for t in report["inputs"]] == ["images:0"]
    assert [t["name"] for t in report["outputs"]] == ["probs:0"]
    assert report["num_params"] == SMALL_CNN_PARAMS


def test_keras_saved_model_report(keras_saved_model):
    directory, keras_params = keras_saved_model
    report = inspect_model(load_model(directory))
    assert report["format"] == "saved_model_tf2"
    assert report["num_params"] == keras_params
    assert report["inputs"][0]["shape"] == [None, 16, 16, 3]
    assert report["outputs"][0]["shape"] == [None, 4]
    assert {v["name"] for v in report["variables"]} == {
        "block1_conv/kernel", "block1_conv/bias", "classifier/kernel", "classifier/bias"}


def test_tensors_regex(small_ckpt):
    report = inspect_model(load_model(small_ckpt[0]), tensors=r"^net/fc1/Relu")
    assert report["tensors"] == [{"name": "net/fc1/Relu:0", "dtype": "float32", "shape": [None, 16]}]


def test_human_report_reads_well(small_ckpt):
    model = load_model(small_ckpt[0])
    text = format_report(inspect_model(model, tensors="probs"), description=model.description)
    for part in ("format      checkpoint", "Inputs", "images:0", "[?, 8, 8, 3]", "Outputs", "Variables (6)",
                 f"parameters  {SMALL_CNN_PARAMS:,}", "optimizer/bookkeeping", "Ops (most common)", "Tensors matching"):
        assert part in text


def test_cli_json_contract_keys(small_frozen_pb):
    r = run_cli("inspect", small_frozen_pb[0], "--json", "--tensors", "probs")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    for key in ("format", "num_nodes", "ops", "inputs", "outputs", "variables", "num_params", "tensors"):
        assert key in report
    assert report["tensors"] == [{"name": "probs:0", "dtype": "float32", "shape": [None, 5]}]
    assert r.stderr == ""  # TensorFlow's C++ chatter is silenced


@pytest.mark.parametrize("args,needle", [
    (["inspect", "/no/such/model.pb"], "no such file"),
    (["inspect", "--tensors", "(", "{pb}"], "not a valid regular expression"),
])
def test_cli_errors_are_one_plain_line(small_frozen_pb, args, needle):
    r = run_cli(*[a.format(pb=small_frozen_pb[0]) for a in args])
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_cli_empty_file_and_empty_dir(tmp_path):
    (tmp_path / "empty.pb").write_bytes(b"")
    (tmp_path / "nothing").mkdir()
    for target in (tmp_path / "empty.pb", tmp_path / "nothing"):
        r = run_cli("inspect", target)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_vgg_16_public_architecture(tmp_path):
    """TF-slim's vgg_16 with its original names: 32 variables, 138,357,544 parameters, from every form."""
    from nets import vgg_16

    from surgery import freeze_model, write_graph_def

    graph = tf.Graph()
    with graph.as_default():
        vgg_16()
        saver = v1.train.Saver()
        with v1.Session() as sess:
            # Zeros instead of random init: same checkpoint layout, a fraction of the time.
            for v in v1.global_variables():  # feeds the initializer: adds no ops to the graph
                v.load(np.zeros(v.shape, v.dtype.as_numpy_dtype), sess)
            prefix = saver.save(sess, str(tmp_path / "ckpt" / "vgg_16.ckpt"))
    reports = [inspect_model(load_model(p)) for p in (prefix, prefix + ".meta", str(tmp_path / "ckpt"))]
    model = load_model(prefix)
    frozen = freeze_model(model, "vgg_16/predictions")
    write_graph_def(frozen.graph_def, str(tmp_path / "vgg_16.pb"))
    del frozen
    reports.append(inspect_model(load_model(str(tmp_path / "vgg_16.pb"))))
    for r in reports:
        assert r["num_params"] == 138_357_544
        assert [t["name"] for t in r["inputs"]] == ["input:0"]
        assert [t["name"] for t in r["outputs"]] == ["vgg_16/predictions:0"]
    assert all(len(r["variables"]) == 32 for r in reports[:3])


def test_inspect_a_split_directory_reports_each_piece(small_ckpt, tmp_path):
    from conftest import cli

    from surgery import split_model, write_split

    model = load_model(small_ckpt[0])
    write_split(model, split_model(model, "net/fc1/Relu", "probs"), str(tmp_path / "pieces"), verify=1)
    r = cli("inspect", tmp_path / "pieces", "--json", "--tensorboard", tmp_path / "tb")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["format"] == "pieces" and list(report["pieces"]) == ["offline", "online"]
    assert [t["name"] for t in report["pieces"]["online"]["inputs"]] == ["net/fc1/Relu:0"]
    assert [t["name"] for t in report["pieces"]["offline"]["outputs"]] == ["net/fc1/Relu:0"]
    assert report["pieces"]["offline"]["num_params"] + report["pieces"]["online"]["num_params"] == SMALL_CNN_PARAMS
    assert sorted(os.listdir(tmp_path / "tb")) == ["offline", "online"]
    assert all(os.listdir(tmp_path / "tb" / p)[0].startswith("events.out.tfevents") for p in ("offline", "online"))


def test_sizes_are_in_the_unit_they_fit():
    from surgery.passes.inspect import human_bytes

    assert [human_bytes(n) for n in (812, 3_500, 527 * 2**20, 2 * 2**30)] == [
        "812 B", "3.4 KiB", "527.0 MiB", "2.0 GiB"]
