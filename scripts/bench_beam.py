"""Precompute on Apache Beam (DirectRunner, 1 and 2 worker processes) against a plain TensorFlow
batch loop over the same offline piece and the same HDF5 rows. Rows/s, end to end (Beam's figure
includes starting its worker processes, reading, grouping and writing shards and the index).

    python scripts/bench.py beam            # 100k rows x 64 features through a 64→128→32 MLP
    python scripts/bench.py beam --quick    # 20k rows

Needs the `beam` extra (`pip install 'surgery[beam]'`); without it this benchmark reports nothing.
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from bench import median_time  # noqa: E402

BATCH = 256


def _build(directory: str, rows: int, features: int = 64):
    """A split directory with a frozen MLP offline piece, and an HDF5 of `rows` float32 rows."""
    import h5py
    from nets import write_mlp_pieces

    pieces = write_mlp_pieces(os.path.join(directory, "pieces"), features=features, hidden=128, dim=32)
    data = os.path.join(directory, "data.h5")
    with h5py.File(data, "w") as f:
        f["x"] = np.random.default_rng(0).normal(size=(rows, features)).astype(np.float32)
        f["ids"] = np.arange(rows, dtype=np.int64)
    return pieces, data


def _plain_loop(pieces: str, data: str, out: str) -> None:
    """What a user writes without Beam: read, run batch by batch, write one HDF5."""
    import h5py

    from surgery.core import tfcompat

    tf = tfcompat.tf
    gd = tf.compat.v1.GraphDef()
    with open(os.path.join(pieces, "offline.pb"), "rb") as f:
        gd.ParseFromString(f.read())
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(gd, name="")
    with tf.compat.v1.Session(graph=graph) as sess, h5py.File(data, "r") as src, h5py.File(out, "w") as dst:
        n = src["x"].shape[0]
        emb = dst.create_dataset("embeddings", (n, 32), np.float32)
        for i in range(0, n, BATCH):
            emb[i:i + BATCH] = sess.run("emb:0", {"x:0": src["x"][i:i + BATCH]})
        dst["ids"] = src["ids"][:]


def run(quick: bool = False) -> list:
    try:
        import apache_beam  # noqa: F401 - only checks that it is installed
    except ImportError:
        print("  (apache-beam not installed: pip install 'surgery[beam]')")
        return []
    from surgery.runners.beam import HDF5Source, merge_shards, run_precompute

    # DirectRunner worker processes must import this checkout of `surgery`.
    os.environ["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    rows = 20_000 if quick else 100_000
    repeats = 1 if quick else 3
    rows_out = []
    with tempfile.TemporaryDirectory() as tmp:
        pieces, data = _build(tmp, rows)
        plain_s = median_time(lambda: _plain_loop(pieces, data, os.path.join(tmp, "plain.h5")), repeats)
        for workers in (1, 2):
            def beam_once():
                index = run_precompute(pieces, HDF5Source(data, "x", "ids"), os.path.join(tmp, f"shards{workers}"),
                                       batch_size=BATCH, rows_per_shard=rows // 8,
                                       beam_options={"direct_num_workers": workers,
                                                     "direct_running_mode": "multi_processing"})
                merge_shards(index, os.path.join(tmp, f"beam{workers}.h5"))
                for f in os.listdir(os.path.join(tmp, f"shards{workers}")):  # no resume between repeats
                    os.remove(os.path.join(tmp, f"shards{workers}", f))

            beam_s = median_time(beam_once, repeats)
            rows_out.append({"benchmark": "beam", "metric": f"precompute rows/s, DirectRunner {workers} worker(s)",
                             "surgery": rows / beam_s, "baseline": rows / plain_s,
                             "ratio": plain_s / beam_s, "unit": "rows/s", "rows": rows})
    return rows_out


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(r)
