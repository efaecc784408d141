"""Nothing lost: each long-running command is SIGKILLed mid-run, and the previous output at its
target is then either intact or replaced by a complete new one — never a partial mix.

(`precompute` and `finetune` also resume after a kill: tests/test_precompute.py, test_finetune.py.)
"""

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, tf, v1

from surgery import load_model


@pytest.fixture(scope="module")
def big_ckpt(tmp_path_factory):
    """A VGG-style checkpoint of ~40 MB, so writing its frozen forms takes a while."""
    from nets import vgg

    d = tmp_path_factory.mktemp("big")
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 32, 32, 3], name="input")
        tf.nn.softmax(vgg(x, 10, blocks=(1, 1, 1), widths=(32, 64, 128), fc_width=1536, scope="vgg"),
                      name="predictions")
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            prefix = v1.train.Saver().save(sess, str(d / "model.ckpt"))
    return prefix


def _start(*args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen([sys.executable, "-m", "surgery", *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _timed_run(*args) -> float:
    t0 = time.perf_counter()
    p = _start(*args)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()
    return time.perf_counter() - t0


def _kill_after(seconds: float, *args) -> bool:
    """Run, SIGKILL after `seconds`; True if it was killed before finishing."""
    p = _start(*args)
    try:
        p.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
        return True


def _digest(path) -> str:
    """A hash of a file, or of every file below a directory (names and bytes)."""
    h = hashlib.sha256()
    if os.path.isdir(path):
        for root, _, files in sorted(os.walk(path)):
            for f in sorted(files):
                full = os.path.join(root, f)
                h.update(os.path.relpath(full, path).encode())
                with open(full, "rb") as fh:
                    h.update(fh.read())
    else:
        with open(path, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()


FRACTIONS = (0.4, 0.7, 0.95)


def _kill_series(make_args, target, complete_ok):
    """Time a full run into a scratch target, then kill runs at FRACTIONS of that time."""
    full = _timed_run(*make_args(str(target) + ".reference"))
    previous = _digest(target)
    killed = 0
    for frac in FRACTIONS:
        killed += _kill_after(full * frac, *make_args(target))
        if _digest(target) != previous:  # it finished: the new output must be whole
            assert complete_ok(target), f"partial output after a kill at {frac:.0%}"
            previous = _digest(target)
    assert killed, "every run finished before the kill; the test proved nothing"


def test_freeze_killed_mid_write_leaves_previous_pb(big_ckpt, tmp_path):
    target = tmp_path / "model.pb"
    target.write_bytes(b"previous output")

    def complete(path):
        return len(load_model(str(path)).graph_def.node) > 0

    _kill_series(lambda out: ["freeze", big_ckpt, "--outputs", "predictions", "--out", out], target, complete)


def test_split_killed_mid_write_leaves_previous_dir(big_ckpt, tmp_path):
    target = tmp_path / "pieces"
    p = _start("split", big_ckpt, "--cut", "fc6", "--outputs", "predictions", "--out", target)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()

    def complete(path):
        return all(os.path.exists(os.path.join(path, f)) for f in ("offline.pb", "online.pb", "manifest.json")) \
            and len(load_model(os.path.join(path, "online.pb")).graph_def.node) > 0

    _kill_series(lambda out: ["split", big_ckpt, "--cut", "fc7", "--outputs", "predictions", "--out", out],
                 target, complete)


def test_export_killed_mid_write_leaves_previous_saved_model(big_ckpt, tmp_path):
    pb = tmp_path / "frozen.pb"
    assert _timed_run("freeze", big_ckpt, "--outputs", "predictions", "--out", pb) > 0
    target = tmp_path / "serving"
    target.mkdir()
    (target / "README").write_text("previous export")

    def complete(path):
        return os.path.exists(os.path.join(path, "saved_model.pb"))

    _kill_series(lambda out: ["export", pb, "--saved-model", out], target, complete)
