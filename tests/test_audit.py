"""`audit` flags ops that touch files, the network or Python; `--strict` refuses such graphs."""

import json
import os

from conftest import run_cli, tf, v1

from surgery.core.model import parse_model
from surgery.passes.audit import audit_graph_def, audit_model, strict_violations


def _write(graph_or_def, path):
    gd = graph_or_def.as_graph_def() if hasattr(graph_or_def, "as_graph_def") else graph_or_def
    path.write_bytes(gd.SerializeToString())
    return str(path)


def _file_touching_graph():
    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tf.float32, [None, 3], name="x")
        contents = tf.io.read_file("/etc/hostname", name="sneaky_read")
        w = tf.io.write_file("/tmp/surgery-audit-test", contents, name="sneaky_write")
        with tf.control_dependencies([w]):
            y = tf.identity(x * 2.0, name="y")
        v1.py_func(lambda a: a, [y], tf.float32, name="python_hook")
    return g


def test_flags_file_and_python_ops_with_their_path(tmp_path):
    report = audit_graph_def(_file_touching_graph().as_graph_def(), outputs=["y:0"])
    found = {f["name"]: f for f in report["findings"]}
    assert not report["clean"]
    assert found["sneaky_read"]["category"] == "files" and found["sneaky_read"]["on_output_path"]
    assert found["sneaky_write"]["on_output_path"]  # y waits on the write
    assert found["python_hook"]["category"] == "python" and not found["python_hook"]["on_output_path"]


def test_finds_ops_hidden_inside_functions():
    g = tf.Graph()
    with g.as_default():
        @tf.function
        def load(path):
            return tf.strings.length(tf.io.read_file(path))

        tf.identity(load(tf.constant("/etc/hostname")), name="out")
    report = audit_graph_def(g.as_graph_def())
    assert [f["op"] for f in report["findings"]] == ["ReadFile"]
    assert report["findings"][0]["where"].startswith("function ")
    assert report["findings"][0]["on_output_path"]


def test_frozen_classifier_is_clean(small_frozen_pb):
    r = run_cli("audit", small_frozen_pb[0])
    assert r.returncode == 0, r.stderr
    assert "clean" in r.stdout


def test_cli_exit_3_when_flagged(tmp_path):
    path = _write(_file_touching_graph(), tmp_path / "hostile.pb")
    r = run_cli("audit", path, "--json")
    assert r.returncode == 3, r.stderr
    assert {f["op"] for f in json.loads(r.stdout)["findings"]} == {"ReadFile", "WriteFile", "PyFunc"}
    table = run_cli("audit", path).stdout.splitlines()
    header = next(i for i, line in enumerate(table) if line.split()[:4] == ["category", "op", "type", "where"])
    assert "ReadFile" in "\n".join(table[header + 1:])  # the findings under their column headers


def test_checkpoint_saver_is_listed_as_machinery(small_ckpt):
    report = audit_model(parse_model(small_ckpt[0]))
    assert {f["op"] for f in report["findings"]} >= {"SaveV2", "RestoreV2"}
    assert strict_violations(report) == []


def test_audit_reads_graphs_tensorflow_cannot_import(tmp_path):
    gd = v1.GraphDef()
    bad = gd.node.add(name="boom", op="NoSuchOp")
    bad.input.append("missing_input")
    gd.node.add(name="reader", op="ReadFile").input.append("boom")
    r = run_cli("audit", _write(gd, tmp_path / "weird.pb"))
    assert r.returncode == 3 and "reader" in r.stdout


def test_strict_refuses_flagged_graphs_and_writes_nothing(tmp_path, small_frozen_pb):
    path = _write(_file_touching_graph(), tmp_path / "hostile.pb")
    out = tmp_path / "out.pb"
    r = run_cli("freeze", path, "--outputs", "y", "--out", out, "--strict")
    assert r.returncode == 2 and "--strict" in r.stderr and "sneaky_read" in r.stderr
    assert not out.exists()
    r = run_cli("freeze", small_frozen_pb[0], "--outputs", "probs", "--out", out, "--strict")
    assert r.returncode == 0, r.stderr


def test_freeze_output_is_always_clean(small_ckpt):
    from surgery import freeze_model, load_model

    frozen = freeze_model(load_model(small_ckpt[0]), "probs")
    assert audit_graph_def(frozen.graph_def)["clean"]


def test_split_directory_is_audited_piece_by_piece(small_ckpt, tmp_path):
    from conftest import cli

    from surgery import load_model, split_model, write_split

    model = load_model(small_ckpt[0])
    write_split(model, split_model(model, "net/fc1/Relu", "probs"), str(tmp_path / "pieces"), verify=0)
    r = cli("audit", tmp_path / "pieces", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["clean"] and [os.path.basename(p["path"]) for p in report["pieces"]] == ["offline.pb", "online.pb"]
    assert cli("freeze", tmp_path / "pieces" / "online.pb", "--outputs", "probs", "--out", tmp_path / "o.pb",
               "--strict").returncode == 0
