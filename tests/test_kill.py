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


def _run_ok(*args) -> None:
    p = _start(*args)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err.decode()


def _temps_beside(target) -> set:
    """The temporary outputs `surgery` writes beside `target` (`.NAME.*.tmp`) before renaming."""
    parent, base = os.path.split(str(target))
    return {n for n in os.listdir(parent) if n.startswith(f".{base}.") and ".tmp" in n}


def _kill_while_writing(args, target, after: float) -> bool:
    """Run; SIGKILL `after` seconds past the moment a new temporary output appears beside `target`.
    Driven by the command's own progress, not by a guess of its duration, so the kill lands mid-write
    however loaded the machine is. True if it was killed before finishing."""
    before = _temps_beside(target)
    p = _start(*args)
    deadline = time.monotonic() + 600
    while p.poll() is None and time.monotonic() < deadline:
        if _temps_beside(target) - before:
            time.sleep(after)
            if p.poll() is not None:
                return False
            p.send_signal(signal.SIGKILL)
            p.wait()
            return True
        time.sleep(0.002)
    p.wait()
    return False


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


DELAYS = (0.0, 0.02, 0.1, 0.3)  # seconds into the write


def _kill_series(make_args, target, complete_ok):
    """Kill runs at several moments of their write; the target must stay as it was or be whole."""
    previous = _digest(target)
    killed = 0
    for after in DELAYS:
        killed += _kill_while_writing(make_args(target), target, after)
        if _digest(target) != previous:  # it finished: the new output must be whole
            assert complete_ok(target), f"partial output after a kill {after}s into the write"
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
    _run_ok("split", big_ckpt, "--cut", "fc6", "--outputs", "predictions", "--out", target)

    def complete(path):
        return all(os.path.exists(os.path.join(path, f)) for f in ("offline.pb", "online.pb", "manifest.json")) \
            and len(load_model(os.path.join(path, "online.pb")).graph_def.node) > 0

    _kill_series(lambda out: ["split", big_ckpt, "--cut", "fc7", "--outputs", "predictions", "--out", out],
                 target, complete)


def test_export_killed_mid_write_leaves_previous_saved_model(big_ckpt, tmp_path):
    pb = tmp_path / "frozen.pb"
    _run_ok("freeze", big_ckpt, "--outputs", "predictions", "--out", pb)
    target = tmp_path / "serving"
    target.mkdir()
    (target / "README").write_text("previous export")

    def complete(path):
        return os.path.exists(os.path.join(path, "saved_model.pb"))

    _kill_series(lambda out: ["export", pb, "--saved-model", out], target, complete)
