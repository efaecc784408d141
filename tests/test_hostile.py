"""A corpus of broken and hostile inputs × `inspect` and `freeze`: every one is answered with exit 2,
at most 3 plain lines on stderr, no traceback, and nothing written."""

import os
import shutil

import numpy as np
import pytest
from conftest import cli, run_cli, v1


def _graph_def_file(path, build):
    gd = v1.GraphDef()
    build(gd)
    path.write_bytes(gd.SerializeToString())


def _cycle(gd):
    for a, b in (("a", "b"), ("b", "a")):
        n = gd.node.add(name=a, op="Identity")
        n.input.append(b)
        n.attr["T"].type = 1


def _missing_input(gd):
    n = gd.node.add(name="a", op="Identity")
    n.input.append("nowhere")
    n.attr["T"].type = 1


def _unknown_op(gd):
    gd.node.add(name="a", op="TotallyMadeUpOp")


def _huge_const(gd):
    n = gd.node.add(name="c", op="Const")
    n.attr["dtype"].type = 1
    n.attr["value"].tensor.dtype = 1
    for d in (100000, 100000, 100000):
        n.attr["value"].tensor.tensor_shape.dim.add(size=d)


def _short_const(gd):
    n = gd.node.add(name="c", op="Const")
    n.attr["dtype"].type = 1
    n.attr["value"].tensor.dtype = 1
    n.attr["value"].tensor.tensor_shape.dim.add(size=10)
    n.attr["value"].tensor.tensor_content = b"\0" * 8


def _negative_shape(gd):
    n = gd.node.add(name="p", op="Placeholder")
    n.attr["dtype"].type = 1
    n.attr["shape"].shape.dim.add(size=-7)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, small_ckpt, small_frozen_pb):
    d = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    prefix = small_ckpt[0]
    pb = open(small_frozen_pb[0], "rb").read()
    meta = open(prefix + ".meta", "rb").read()
    files = {}
    for name, data in {"empty.pb": b"", "empty.meta": b"", "empty.pbtxt": b"",
                       "truncated.pb": pb[: len(pb) // 2], "truncated.meta": meta[: len(meta) // 3],
                       "random.pb": rng.bytes(4096), "random.meta": rng.bytes(4096),
                       "broken.pbtxt": b"node { name: 'x' op: 'Const' attr { key: "}.items():
        (d / name).write_bytes(data)
        files[name] = str(d / name)
    for name, build in {"cycle.pb": _cycle, "missing_input.pb": _missing_input, "unknown_op.pb": _unknown_op,
                        "huge_const.pb": _huge_const, "short_const.pb": _short_const,
                        "negative_shape.pb": _negative_shape}.items():
        _graph_def_file(d / name, build)
        files[name] = str(d / name)
    base = os.path.basename(prefix)
    for label, drop in (("ckpt_no_data", ".data-"), ("ckpt_no_index", ".index")):
        (d / label).mkdir()
        for f in os.listdir(os.path.dirname(prefix)):
            if f.startswith(base + ".") and drop not in f:
                shutil.copy(os.path.join(os.path.dirname(prefix), f), d / label / f)
        files[label] = str(d / label / base)
    (d / "no_model_dir").mkdir()
    (d / "no_model_dir" / "README.txt").write_text("nothing here")
    files["no_model_dir"] = str(d / "no_model_dir")
    files["missing_path"] = str(d / "does" / "not" / "exist.pb")
    return files


CASES = ["empty.pb", "empty.meta", "empty.pbtxt", "truncated.pb", "truncated.meta", "random.pb", "random.meta",
         "broken.pbtxt", "cycle.pb", "missing_input.pb", "unknown_op.pb", "huge_const.pb", "short_const.pb",
         "negative_shape.pb", "ckpt_no_data", "ckpt_no_index", "no_model_dir", "missing_path"]


def _assert_plain_refusal(r, path_hint):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 3, r.stderr
    assert "Traceback" not in r.stderr
    assert path_hint in r.stderr, r.stderr


@pytest.mark.parametrize("case", CASES)
def test_inspect_refuses(corpus, case):
    r = cli("inspect", corpus[case])
    _assert_plain_refusal(r, os.path.basename(corpus[case]))
    assert r.stdout == ""


@pytest.mark.parametrize("case", CASES)
def test_freeze_refuses_and_writes_nothing(corpus, case, tmp_path):
    out = tmp_path / "out" / "frozen.pb"
    r = cli("freeze", corpus[case], "--outputs", "probs", "--out", out)
    _assert_plain_refusal(r, os.path.basename(corpus[case]))
    assert not out.parent.exists() or os.listdir(out.parent) == []


@pytest.mark.parametrize("case", ["truncated.pb", "huge_const.pb", "ckpt_no_data"])
def test_refusals_in_a_separate_process(corpus, case, tmp_path):
    """The same refusals through the installed entry point: the process survives and says one line."""
    r = run_cli("freeze", corpus[case], "--outputs", "probs", "--out", tmp_path / "x.pb")
    _assert_plain_refusal(r, os.path.basename(corpus[case]))
    assert not (tmp_path / "x.pb").exists()


def test_mistyped_output_name_suggests_the_right_one(small_ckpt, tmp_path):
    r = run_cli("freeze", small_ckpt[0], "--outputs", "net/fc2/logit", "--out", tmp_path / "x.pb")
    _assert_plain_refusal(r, "net/fc2/logit")
    assert "net/fc2/logits" in r.stderr
