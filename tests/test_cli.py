"""The command line as a new user meets it: fast start, conventional flags, --json everywhere,
`-` for stdin/stdout, and the messages that used to confuse."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import tomllib
from conftest import ROOT, cli, run_cli, tf, v1

from surgery.cli import VERIFIED_AGAINST, build_parser

ENV = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")


def _run(args, stdin: bytes | None = None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "surgery", *map(str, args)], input=stdin, capture_output=True,
                          env=env or ENV, timeout=300)


# ---------------------------------------------------------------- fast start

@pytest.mark.parametrize("argv", [["--help"], ["freeze", "--help"], ["--version"], ["freeze", "m", "--ouy", "x.pb"],
                                  ["frezee", "m"], ["inspect"]])
def test_help_version_and_usage_errors_do_not_import_tensorflow(argv):
    code = ("import sys\nfrom surgery.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "sys.stderr.write('TF=%%s' %% ('tensorflow' in sys.modules))" % argv)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.stderr.endswith("TF=False"), r.stderr


def test_import_surgery_is_lazy_and_resolves_every_public_name():
    code = ("import sys, surgery\nassert 'tensorflow' not in sys.modules\n"
            "import surgery.runners.precompute, surgery.passes.splice\n"  # modules named like public functions
            "assert callable(surgery.precompute) and callable(surgery.splice)\n"
            "names = [getattr(surgery, n) for n in surgery.__all__]\nassert 'tensorflow' in sys.modules\n"
            "print(len(names))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    import surgery

    assert int(r.stdout) == len(surgery.__all__) and "load_model" in dir(surgery)
    with pytest.raises(AttributeError):
        surgery.no_such_name


def test_version_is_the_pyproject_version():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        want = tomllib.load(f)["project"]["version"]
    r = _run(["--version"])
    assert r.returncode == 0 and r.stdout.decode().strip() == f"surgery {want}"


# ---------------------------------------------------------------- conventions

def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_option_of_every_command_has_help_and_an_example():
    commands = _subparsers()
    assert set(commands) == {"inspect", "freeze", "restore", "finetune", "split", "precompute", "export", "cuts",
                             "audit"}
    for name, p in commands.items():
        assert "example" in p.epilog and f"surgery {name}" in p.epilog
        for action in p._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        text = p.format_help()
        for action in p._actions:  # every default worth showing is shown
            if action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS):
                assert f"default: {action.default}" in " ".join(text.split()), (name, action.dest)
        assert "--json" in text and "--verbose" in text and "--quiet" in text


def test_unknown_options_and_commands_are_named_with_the_closest():
    r = cli("freeze", "m", "--ouy", "x.pb")
    assert r.returncode == 2 and "--ouy" in r.stderr and "did you mean --out?" in r.stderr
    assert "required" not in r.stderr and "Traceback" not in r.stderr
    r = cli("frezee", "m")
    assert r.returncode == 2 and "'frezee'" in r.stderr and "did you mean freeze?" in r.stderr
    r = cli("split", "m", "--cut=fc7", "--outptus", "p", "--out", "d")
    assert r.returncode == 2 and "--outptus" in r.stderr and "--outputs" in r.stderr


def test_verbose_and_quiet_before_or_after_the_command(small_ckpt, tmp_path, monkeypatch):
    # in-process -v/-q set TF_CPP_MIN_LOG_LEVEL/TQDM_DISABLE for this process: undone after the test
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
    if "TQDM_DISABLE" in os.environ:
        monkeypatch.setenv("TQDM_DISABLE", os.environ["TQDM_DISABLE"])
    else:
        monkeypatch.setitem(os.environ, "TQDM_DISABLE", "")  # recorded as absent: deleted afterwards
        monkeypatch.delenv("TQDM_DISABLE")
    prefix = small_ckpt[0]
    for argv in (["inspect", prefix, "-v"], ["-v", "inspect", prefix], ["inspect", "--verbose", prefix]):
        r = cli(*argv)
        assert r.returncode == 0 and "net/fc2" in r.stdout, r.stderr
    for argv in (["-q", "freeze", prefix, "--outputs", "probs", "--out", tmp_path / "a.pb"],
                 ["freeze", prefix, "--outputs", "probs", "--out", tmp_path / "b.pb", "--quiet"]):
        r = cli(*argv)
        assert r.returncode == 0 and r.stdout == "" and os.path.getsize(argv[-1] if argv[0] == "-q" else argv[-2])
    r = cli("-v", "inspect", prefix, "-q")
    assert r.returncode == 2 and "contradict" in r.stderr


def _labelled_h5(path, n=40, classes=5, labels=None):
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f["x"] = rng.normal(size=(n, 8, 8, 3)).astype(np.float32)
        f["y"] = rng.integers(0, classes, n) if labels is None else labels
        f["ids"] = np.array([f"row-{i}" for i in range(n)], dtype="S")
    return str(path)


def test_json_on_every_command_is_one_document(small_ckpt, tmp_path):
    prefix = small_ckpt[0]
    data = _labelled_h5(tmp_path / "d.h5")
    t = tmp_path
    runs = {
        "inspect": ["inspect", prefix],
        "freeze": ["freeze", prefix, "--outputs", "probs", "--out", t / "f.pb"],
        "restore": ["restore", prefix, "--from", prefix, "--out", t / "r" / "model.ckpt"],
        "split": ["split", prefix, "--cut", "net/fc1/Relu", "--outputs", "probs", "--out", t / "pieces"],
        "precompute": ["precompute", t / "pieces", "--data", data, "--key", "x", "--ids", "ids", "--out", t / "e.h5"],
        "export": ["export", t / "pieces", "--saved-model", t / "serving"],
        "audit": ["audit", t / "f.pb"],
        "cuts": ["cuts", prefix, "--outputs", "probs"],
        "finetune": ["finetune", prefix, "--at", "net/fc1/Relu", "--head", "dense:5", "--data", data, "--x", "x",
                     "--y", "y", "--epochs", "1", "--out", t / "ft"],
    }
    docs = {}
    for name, argv in runs.items():
        r = cli(*argv, "--json")
        assert r.returncode == 0, (name, r.stderr)
        docs[name] = json.loads(r.stdout)  # the whole of stdout is one document
        assert isinstance(docs[name], dict), name
    assert docs["freeze"]["written"] == str(t / "f.pb") and docs["freeze"]["outputs"][0]["name"] == "probs:0"
    assert docs["split"]["pieces"]["online"]["inputs"][0]["name"] == "net/fc1/Relu:0"
    assert docs["precompute"]["rows"] == 40 and "embeddings" in docs["precompute"]["datasets"]
    assert set(docs["export"]["pieces"]) == {"offline", "online"}
    assert docs["audit"]["clean"] is True and docs["restore"]["restored"]
    assert len(docs["finetune"]["history"]) == 1 and docs["finetune"]["written"] == str(t / "ft")
    assert docs["inspect"]["num_params"] > 0


def test_dash_reads_stdin_and_writes_stdout(small_ckpt, sample_images, tmp_path):
    prefix, expected, _ = small_ckpt
    r = _run(["freeze", prefix, "--outputs", "probs", "--out", "-"])
    assert r.returncode == 0, r.stderr.decode()
    assert "froze" in r.stderr.decode() and not os.path.exists("-")
    gd = v1.GraphDef()
    gd.ParseFromString(r.stdout)  # stdout is the graph, nothing else
    g = tf.Graph()
    with g.as_default():
        tf.import_graph_def(gd, name="")
    with v1.Session(graph=g) as sess:
        np.testing.assert_allclose(sess.run("probs:0", {"images:0": sample_images}), expected, rtol=1e-5, atol=1e-6)
    r2 = _run(["inspect", "-", "--json"], stdin=r.stdout)
    assert r2.returncode == 0 and json.loads(r2.stdout)["inputs"][0]["name"] == "images:0"
    r3 = _run(["freeze", "-", "--outputs", "net/fc1/Relu", "--out", "-", "--text"], stdin=r.stdout)
    assert r3.returncode == 0 and r3.stdout.startswith(b"node {")
    r4 = _run(["inspect", "-"], stdin=r3.stdout)  # text on stdin is recognised
    assert r4.returncode == 0 and "frozen GraphDef (text" in r4.stdout.decode()
    r5 = _run(["inspect", "-"], stdin=b"")
    assert r5.returncode == 2 and b"stdin is empty" in r5.stderr
    assert cli("freeze", prefix, "--outputs", "probs", "--out", "-", "--json").returncode == 2


def test_pbtxt_output_is_text_and_reads_back(small_ckpt, tmp_path):
    out = tmp_path / "trunk.pbtxt"
    r = cli("freeze", small_ckpt[0], "--outputs", "net/fc1/Relu", "--out", out)
    assert r.returncode == 0, r.stderr
    assert out.read_text().startswith("node {")
    r = cli("inspect", out, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["format"] == "frozen_pbtxt"


# ---------------------------------------------------------------- messages

def test_unwritable_output_says_why(small_ckpt, tmp_path):
    r = cli("freeze", small_ckpt[0], "--outputs", "probs", "--out", "/proc/x.pb")
    assert r.returncode == 2 and "cannot write /proc/x.pb" in r.stderr and "does not accept new files" in r.stderr
    (tmp_path / "file").write_text("")
    r = cli("freeze", small_ckpt[0], "--outputs", "probs", "--out", tmp_path / "file" / "x.pb")
    assert r.returncode == 2 and f"cannot create {tmp_path / 'file'}" in r.stderr


def test_head_and_label_messages_name_the_real_problem(small_ckpt, tmp_path):
    prefix = small_ckpt[0]
    base = ["finetune", prefix, "--at", "net/fc1/Relu", "--x", "x", "--y", "y", "--epochs", "1"]
    r = cli(*base, "--head", "dense:0", "--data", _labelled_h5(tmp_path / "a.h5"), "--out", tmp_path / "o1")
    assert r.returncode == 2 and "'dense:0' has 0 units" in r.stderr and "1 unit or more" in r.stderr
    r = cli(*base, "--head", "dropout:1.5,dense:5", "--data", tmp_path / "a.h5", "--out", tmp_path / "o2")
    assert r.returncode == 2 and "'dropout:1.5'" in r.stderr and "from 0 up to (not including) 1" in r.stderr
    labels = np.arange(40) % 5
    labels[3] = -1
    r = cli(*base, "--head", "dense:5", "--data", _labelled_h5(tmp_path / "neg.h5", labels=labels),
            "--out", tmp_path / "o3")
    assert r.returncode == 2 and "label -1 is negative" in r.stderr and "end the head" not in r.stderr
    assert not (tmp_path / "o3").exists()


def test_split_messages(small_ckpt, keras_saved_model, tmp_path):
    prefix = small_ckpt[0]
    r = cli("split", prefix, "--cut", "net/fc1/Relu,net/fc2/logits", "--outputs", "probs", "--out", tmp_path / "a")
    assert r.returncode == 2 and "lies below cut tensor 'net/fc2/logits:0'" in r.stderr
    assert "drop net/fc1/Relu from --cut" in r.stderr and "not on the way" not in r.stderr
    r = cli("split", prefix, "--cut", "net/fc1/Relu", "--outputs", "probs", "--out", f"{tmp_path}/pieces/")
    assert r.returncode == 0 and f"→ {tmp_path}/pieces/\n" in r.stdout and "//" not in r.stdout
    d, _ = keras_saved_model
    r = cli("split", d, "--cut", "gap_1/Mean", "--outputs", "output_0", "--out", tmp_path / "k")
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if "verified on" in ln)
    assert "against the original model frozen whole: max |difference|" in line
    assert set(VERIFIED_AGAINST) == {"graph", "checkpoint", "frozen"}


def test_inspect_lists_no_saver_filenames_as_inputs(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 3], name="x")
        w = v1.get_variable("w", [3, 2])
        tf.identity(tf.matmul(x, w), name="y")
        v1.train.Saver(name="restore_pretrained")
        saver = v1.train.Saver(name="epoch_saver")
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            prefix = saver.save(sess, str(tmp_path / "model.ckpt"))
    r = cli("inspect", prefix, "--json")
    assert r.returncode == 0 and [t["name"] for t in json.loads(r.stdout)["inputs"]] == ["x:0"]


def test_parameter_counts_agree_across_forms(small_ckpt, tmp_path):
    assert cli("split", small_ckpt[0], "--cut", "net/fc1/Relu", "--outputs", "probs", "--out", tmp_path / "p"
               ).returncode == 0
    assert cli("export", tmp_path / "p", "--saved-model", tmp_path / "s").returncode == 0
    for piece in ("offline", "online"):
        as_pb = json.loads(cli("inspect", tmp_path / "p" / f"{piece}.pb", "--json").stdout)["num_params"]
        as_sm = json.loads(cli("inspect", tmp_path / "s" / piece, "--json").stdout)["num_params"]
        assert as_pb == as_sm > 0
    assert as_pb == 16 * 5 + 5  # the online piece holds fc2 only


def test_moved_checkpoint_directory_loads_quietly(small_ckpt, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(os.path.dirname(small_ckpt[0]), moved)
    stale = "/nonexistent/build.tmp/model.ckpt-100"
    (moved / "checkpoint").write_text(f'model_checkpoint_path: "{stale}"\nall_model_checkpoint_paths: "{stale}"\n')
    r = _run(["inspect", moved])
    assert r.returncode == 0 and r.stderr == b"", r.stderr.decode()
    assert f"{moved}/model.ckpt-100" in r.stdout.decode()
    r = _run(["inspect", moved, "-v"])
    assert r.returncode == 0 and f"names {stale}, which does not exist" in r.stderr.decode()


def test_tensorboard_hint_names_the_extra_when_missing(small_ckpt, tmp_path):
    bare = dict(ENV, PATH="/nonexistent")  # no `tensorboard` on PATH
    r = _run(["inspect", small_ckpt[0], "--tensorboard", tmp_path / "logs"], env=bare)
    assert r.returncode == 0 and "pip install 'surgery[viz]'" in r.stdout.decode()
    assert os.listdir(tmp_path / "logs")
    if shutil.which("tensorboard"):
        r = cli("inspect", small_ckpt[0], "--tensorboard", tmp_path / "logs2")
        assert "tensorboard --logdir" in r.stdout and "surgery[viz]" not in r.stdout


@pytest.mark.parametrize("args,says", [
    (["finetune", "MISSING", "--at", "x", "--head", "dense5", "--data", "d.h5", "--out", "o"], "head layer 'dense5'"),
    (["split", "MISSING", "--cut", "x", "--outputs", "y", "--input-shape", "x=a,b", "--out", "o"], "--input-shape"),
    (["freeze", "MISSING", "--outputs", "y", "--set", "is_training", "--out", "o.pb"], "T=VALUE"),
])
def test_specs_are_checked_before_the_model_loads(args, says, tmp_path):
    """A malformed spec is named even though MODEL does not exist: nothing was loaded first."""
    r = cli(*[str(tmp_path / a) if a == "MISSING" else a for a in args])
    assert r.returncode == 2 and says in r.stderr and "no such file" not in r.stderr, r.stderr


def test_progress_bars_in_a_log_file_are_one_line_per_redraw(small_ckpt, tmp_path):
    """#33's eighth papercut: stderr that is not a terminal gets each bar redraw on its own line."""
    data = _labelled_h5(tmp_path / "d.h5")
    r = run_cli("precompute", small_ckpt[0], "--outputs", "probs", "--data", data, "--key", "x",
                "--out", tmp_path / "e.h5")
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and any(line.startswith("precompute") for line in r.stderr.splitlines())
