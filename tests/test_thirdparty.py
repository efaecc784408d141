"""Every command on graphs built the way other projects build them (tests/thirdparty.py): each
ends in exit 0/2/3, leaves no temporary behind, and where it answers, answers like plain TF.

Issue 15: unknown-rank conv inputs, `_output_shapes`-only shapes, functional If/While, V1
checkpoints, an Assign on the output, a shapeless bool switch, a Const-only graph, a graph
without inputs, a tf.Example SavedModel, TF Serving's half_plus_two, a TF-slim training graph.
"""

import glob
import json
import os

import numpy as np
import pytest
import thirdparty
from conftest import cli, run_graph_def, v1

# where to cut each case that has inputs: a tensor in the middle (or the input itself)
CUTS = {"unknown_rank_conv": "conv/Relu", "output_shapes_only": "Conv2D", "functional_control_flow": "MatMul",
        "v1_checkpoint": "MatMul", "shapeless_bool_switch": "fc/Relu", "tf_example_saved_model": "x",
        "half_plus_two": "Mul", "slim_training_graph": "Relu"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return thirdparty.build_all(tmp_path_factory.mktemp("thirdparty"))


def _leftovers(directory):
    return glob.glob(os.path.join(str(directory), ".*.tmp")) + glob.glob(os.path.join(str(directory), ".*.tmp.old"))


def _ok(r, *codes):
    assert r.returncode in (codes or (0, 2, 3)), r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    if r.returncode == 2:
        assert len(r.stderr.strip().splitlines()) <= 3, r.stderr
    return r


def _read(path):
    gd = v1.GraphDef()
    with open(path, "rb") as f:
        gd.ParseFromString(f.read())
    return gd


def _close(got, expected, rtol=1e-5):
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(expected, np.float64), rtol=rtol, atol=1e-5)


@pytest.mark.parametrize("name", [b.__name__ for b in thirdparty.BUILDERS])
def test_every_command_on_every_case(corpus, tmp_path, name):
    case = corpus[name]
    outs = ",".join(case.outputs)

    inspected = json.loads(_ok(cli("inspect", case.path, "--json"), 0).stdout)
    listed = [o["name"] for o in inspected["outputs"]]
    assert set(case.outputs) <= set(listed), f"inspect lists {listed}, not the real outputs {case.outputs}"
    for output in listed:  # every name inspect lists is accepted by freeze
        _ok(cli("freeze", case.path, "--outputs", output, "--out", tmp_path / "listed.pb"), 0)

    _ok(cli("audit", case.path, "--json"), 0, 3)

    frozen, optimized = tmp_path / "frozen.pb", tmp_path / "optimized.pb"
    r = _ok(cli("freeze", case.path, "--outputs", outs, "--out", frozen), 0)
    got = run_graph_def(_read(frozen), case.feeds, case.outputs)
    for o, value in zip(case.outputs, got):
        if name == "assign_on_output":  # the AssignAdd the output waited on is stripped, and said so
            assert "bump (AssignAdd)" in r.stderr
            _close(value, case.expected[o] - 1.0)
        else:
            _close(value, case.expected[o])
    _ok(cli("freeze", case.path, "--outputs", outs, "--optimize", "--out", optimized), 0)
    for a, b in zip(run_graph_def(_read(optimized), case.feeds, case.outputs), got):
        _close(a, b, rtol=1e-4)

    _ok(cli("export", frozen, "--saved-model", tmp_path / "served"), 0)
    loaded = __import__("tensorflow").saved_model.load(str(tmp_path / "served"))
    assert "serving_default" in loaded.signatures

    if name in CUTS:
        r = _ok(cli("split", case.path, "--cut", CUTS[name], "--outputs", outs, "--out", tmp_path / "pieces"))
        if r.returncode == 0:
            manifest = json.loads((tmp_path / "pieces" / "manifest.json").read_text())
            cut = {c["tensor"]: c["placeholder"] for c in manifest["cut"]}
            offline = run_graph_def(_read(tmp_path / "pieces" / "offline.pb"),
                                    {k: v for k, v in case.feeds.items()
                                     if k in {i["name"] for i in manifest["pieces"]["offline"]["inputs"]}}, list(cut))
            online_feeds = dict(zip(cut.values(), offline))
            online_feeds.update({k: v for k, v in case.feeds.items()
                                 if k in {i["name"] for i in manifest["pieces"]["online"]["inputs"]}
                                 and k not in online_feeds})
            for o, value in zip(case.outputs, run_graph_def(_read(tmp_path / "pieces" / "online.pb"), online_feeds,
                                                            case.outputs)):
                _close(value, case.expected[o], rtol=1e-4)
        else:
            assert not (tmp_path / "pieces").exists()
    assert not _leftovers(tmp_path)


def test_half_plus_two_audits_clean(corpus):
    r = _ok(cli("audit", corpus["half_plus_two"].path, "--json"), 0)
    report = json.loads(r.stdout)
    assert report["clean"] and all(f["checkpoint_machinery"] for f in report["findings"])
    assert _ok(cli("audit", corpus["half_plus_two"].path)).returncode == 0


def test_assign_on_output_is_reported(corpus, tmp_path):
    r = _ok(cli("freeze", corpus["assign_on_output"].path, "--outputs", "out", "--out", tmp_path / "f.pb"), 0)
    assert "bump (AssignAdd)" in r.stderr and "may differ" in r.stderr


def test_slim_graph_outputs_are_logits_only(corpus):
    report = json.loads(_ok(cli("inspect", corpus["slim_training_graph"].path, "--json"), 0).stdout)
    assert [o["name"] for o in report["outputs"]] == ["logits:0"]
    assert "labels:0" not in [i["name"] for i in report["inputs"]]


def test_split_verification_crash_is_exit_2(corpus, tmp_path):
    """A wrong --input-shape makes TensorFlow abort (CHECK failure) in the verification child:
    the command answers exit 2 with TensorFlow's message, and writes nothing."""
    case = corpus["unknown_rank_conv"]
    out = tmp_path / "pieces"
    r = _ok(cli("split", case.path, "--cut", "conv/Relu", "--outputs", "out", "--input-shape", "input=4",
                "--out", out), 2)
    assert "input" in r.stderr and "--input-shape" in r.stderr
    assert not out.exists() and not _leftovers(tmp_path)


def test_split_verify_data_and_input_shape(corpus, tmp_path):
    case = corpus["unknown_rank_conv"]
    np.save(tmp_path / "x.npy", case.feeds["input:0"])
    r = _ok(cli("split", case.path, "--cut", "conv/Relu", "--outputs", "out", "--verify-data", tmp_path / "x.npy",
                "--out", tmp_path / "a"), 0)
    assert "given" in r.stdout or "verified" in r.stdout
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["verification"]["n"] == 2
    r = _ok(cli("split", case.path, "--cut", "conv/Relu", "--outputs", "out", "--input-shape", "imput=2,5,5,3",
                "--out", tmp_path / "b"), 2)
    assert "input" in r.stderr and not (tmp_path / "b").exists()
    _ok(cli("split", case.path, "--cut", "conv/Relu", "--outputs", "out", "--input-shape", "input=3,5,7,3",
            "--out", tmp_path / "c"), 0)


def test_stale_temporaries_are_cleaned(corpus, tmp_path):
    stale = tmp_path / ".pieces.dead.tmp"
    stale.mkdir()
    os.utime(stale, (1, 1))
    _ok(cli("split", corpus["v1_checkpoint"].path, "--cut", "MatMul", "--outputs", "probs", "--out",
            tmp_path / "pieces"), 0)
    assert not stale.exists()


def test_strict_agrees_with_audit(corpus, tmp_path):
    case = corpus["half_plus_two"]
    _ok(cli("freeze", case.path, "--strict", "--outputs", "y", "--out", tmp_path / "f.pb"), 0)


def test_optimize_check_skips_a_pass_that_changes_the_answer():
    """The per-pass check of `freeze --optimize`: a rewrite that changes the answer or drops a
    function the graph calls is caught (and the function library is carried over)."""
    from surgery.passes.optimize import _Check, _keep_functions

    g = v1.Graph()
    with g.as_default():
        x = v1.placeholder("float32", [None, 3], name="x")
        v1.identity(x * 2.0, name="y")
    gd = g.as_graph_def()
    notes = []
    check = _Check(gd, ["x:0"], ["y:0"], notes)
    assert check(gd) is None and not notes
    changed = v1.GraphDef()
    changed.CopyFrom(gd)
    for n in changed.node:
        if n.op == "Const":
            n.attr["value"].tensor.float_val[:] = [3.0]
    assert "changes output y:0" in check(changed)

    # functional graphs: the library survives a pass that rebuilds the GraphDef
    from tensorflow.python.ops import cond_v2

    f = v1.Graph()
    with f.as_default():
        x = v1.placeholder("float32", [None, 3], name="x")
        v1.identity(cond_v2.cond_v2(v1.reduce_sum(x) > 0, lambda: x * 2.0, lambda: x - 1.0), name="y")
    fd = f.as_graph_def()
    bare = v1.GraphDef()
    bare.node.extend(fd.node)
    kept = _keep_functions(bare, fd)
    assert {fn.signature.name for fn in kept.library.function} == {fn.signature.name for fn in fd.library.function}


def test_output_shapes_reach_the_manifest(corpus, tmp_path):
    case = corpus["output_shapes_only"]
    _ok(cli("split", case.path, "--cut", "Conv2D", "--outputs", "out", "--out", tmp_path / "p"), 0)
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["pieces"]["offline"]["inputs"][0]["shape"] == [None, 8, 8, 3]


def test_unknowable_shape_is_refused_naming_the_input(tmp_path):
    g = v1.Graph()
    with g.as_default():
        x = v1.placeholder("float32", None, name="signal")
        h = v1.multiply(x, 2.0, name="h")
        v1.identity(h + 1.0, name="out")
    (tmp_path / "m.pb").write_bytes(g.as_graph_def().SerializeToString())
    r = _ok(cli("split", tmp_path / "m.pb", "--cut", "h", "--outputs", "out", "--out", tmp_path / "p"), 2)
    assert "'signal:0'" in r.stderr and "--input-shape signal=" in r.stderr and "--verify-data" in r.stderr
    assert not (tmp_path / "p").exists()
    r = _ok(cli("split", tmp_path / "m.pb", "--cut", "h", "--outputs", "out", "--input-shape", "signal=5,7",
                "--out", tmp_path / "p"), 0)
    assert json.loads((tmp_path / "p" / "manifest.json").read_text())["verification"]["n"] == 5
