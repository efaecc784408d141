"""Benchmark `precompute` against a bare hand-written batch loop doing the same HDF5 reads and writes.

A synthetic HDF5 (500k x 64 float32 rows and int64 ids; 50k with --quick) goes through a small MLP
offline piece (64 → 128 relu → 32), both ways, in the same run; medians of interleaved repeats.
The baseline is what one writes by hand: read a batch, `Session.run`, write it, next batch —
no read-ahead, no resumability, no progress bar. The results must agree with it.

    python scripts/bench.py precompute [--quick]
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py  # noqa: E402

from surgery.core import tfcompat  # noqa: E402
from surgery.core.manifest import write_manifest  # noqa: E402
from surgery.passes.freeze import freeze_graph, write_graph_def  # noqa: E402
from surgery.runners.precompute import precompute  # noqa: E402

tf = tfcompat.tf
v1 = tf.compat.v1
BATCH = 4096
IN_DIM, HIDDEN, OUT_DIM = 64, 128, 32


def _make_inputs(directory: str, rows: int) -> tuple[str, str]:
    """The dataset (written in slabs, so memory stays small) and a split directory for the MLP."""
    data = os.path.join(directory, "items.h5")
    rng = np.random.default_rng(0)
    with h5py.File(data, "w") as f:
        x = f.create_dataset("x", (rows, IN_DIM), dtype=np.float32)
        for s in range(0, rows, 65536):
            x[s:s + 65536] = rng.normal(size=(min(65536, rows - s), IN_DIM)).astype(np.float32)
        f["ids"] = np.arange(rows, dtype=np.int64) * 7
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(0)
        inp = v1.placeholder(tf.float32, [None, IN_DIM], name="features")
        w1 = v1.get_variable("w1", [IN_DIM, HIDDEN])
        b1 = v1.get_variable("b1", [HIDDEN], initializer=v1.random_normal_initializer())
        w2 = v1.get_variable("w2", [HIDDEN, OUT_DIM])
        h = tf.nn.relu(tf.matmul(inp, w1) + b1)
        tf.identity(tf.matmul(h, w2), name="embedding")
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            values = {v.op.name: sess.run(v) for v in v1.global_variables()}
    frozen = freeze_graph(graph, "embedding", read_variable=values.__getitem__)
    split = os.path.join(directory, "split")
    write_graph_def(frozen.graph_def, os.path.join(split, "offline.pb"))
    write_manifest(split, source={"path": "synthetic"}, pieces={"offline": frozen.manifest_entry("offline.pb")})
    return data, split


def bare_loop(split: str, data: str, out: str) -> None:
    """The hand-written loop: same graph file, same reads, same chunked writes, one thing at a time."""
    gd = v1.GraphDef()
    with open(os.path.join(split, "offline.pb"), "rb") as f:
        gd.ParseFromString(f.read())
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(gd, name="")
    with v1.Session(graph=graph) as sess, h5py.File(data, "r") as fin, h5py.File(out, "w") as fout:
        x, ids = fin["x"], fin["ids"]
        rows = x.shape[0]
        emb = fout.create_dataset("embeddings", (rows, OUT_DIM), dtype=np.float32, chunks=(BATCH, OUT_DIM))
        fout.create_dataset("ids", data=ids[()], chunks=(min(rows, 1 << 16),))
        for s in range(0, rows, BATCH):
            emb[s:s + BATCH] = sess.run("embedding:0", {"features:0": x[s:s + BATCH]})


def _surgery(split: str, data: str, out: str) -> None:
    if os.path.exists(out):
        os.remove(out)
    precompute(split, data, "x", out, ids="ids", batch_size=BATCH)


def _peak_rss_growth_mb(fn: str, split: str, data: str, out: str) -> float:
    """How far a fresh process's resident memory rises above its start while running `fn`
    (Linux: the high-water mark is reset through /proc/self/clear_refs once TensorFlow is loaded)."""
    import subprocess

    code = (f"import sys; sys.path[:0] = [{HERE!r}]; import bench_precompute as b\n"
            "def kb(field): return int(next(l for l in open('/proc/self/status') if l.startswith(field)).split()[1])\n"
            "open('/proc/self/clear_refs', 'w').write('5'); start = kb('VmRSS')\n"
            f"b.{fn}({split!r}, {data!r}, {out!r}); print(kb('VmHWM') - start)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(r.stdout.split()[-1]) / 1024


def run(quick: bool = False) -> list[dict]:
    rows = 50_000 if quick else 500_000
    repeats = 3 if quick else 7
    directory = tempfile.mkdtemp(prefix="bench_precompute.")
    try:
        data, split = _make_inputs(directory, rows)
        ours, base = os.path.join(directory, "ours.h5"), os.path.join(directory, "base.h5")

        def surgery_run():
            _surgery(split, data, ours)

        def baseline_run():
            bare_loop(split, data, base)

        times = {"surgery": [], "baseline": []}
        surgery_run(), baseline_run()  # warm the page cache and TensorFlow's kernels
        for _ in range(repeats):  # interleaved, so drift on a shared machine hits both alike
            for name, fn in (("surgery", surgery_run), ("baseline", baseline_run)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        with h5py.File(ours, "r") as a, h5py.File(base, "r") as b:
            diff = float(np.max(np.abs(a["embeddings"][()] - b["embeddings"][()])))
            same_ids = bool(np.array_equal(a["ids"][()], b["ids"][()]))
        assert diff <= 1e-5 and same_ids, f"precompute disagrees with plain TensorFlow: max |diff| {diff}"
        s, b = statistics.median(times["surgery"]), statistics.median(times["baseline"])
        rss_s = _peak_rss_growth_mb("_surgery", split, data, ours)
        rss_b = _peak_rss_growth_mb("bare_loop", split, data, base)
        return [
            {"benchmark": "precompute", "metric": f"{rows // 1000}k x {IN_DIM} → MLP → HDF5, wall time",
             "surgery": s, "baseline": b, "ratio": s / b, "unit": "s", "max_abs_diff": diff},
            {"benchmark": "precompute", "metric": "throughput", "surgery": rows / s, "baseline": rows / b,
             "ratio": b / s, "unit": "rows/s"},
            {"benchmark": "precompute", "metric": f"peak memory growth ({rows * IN_DIM * 4 >> 20} MiB in)",
             "surgery": rss_s, "baseline": rss_b, "ratio": rss_s / rss_b, "unit": "MiB"},
        ]
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
