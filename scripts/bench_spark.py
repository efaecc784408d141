"""Precompute on Apache Spark against the local runner: rows/s through a compute-heavy offline piece
(a 64-1024-1024-48 MLP) over 200k rows, each run a fresh `surgery precompute` process, so Spark's
figure includes starting its JVM(s) and Python workers, reading the Parquet input and writing Parquet.

    python scripts/bench.py spark            # 200k rows, median of 3 runs
    python scripts/bench.py spark --quick    # 50k rows, one run
    python scripts/bench_spark.py --rows 1000000 [--repeats 1]   # where start-up stops mattering

Spark masters: `local[2]` (one JVM, two Python workers) and `local-cluster[2,1,1024]` (two executor
JVMs of one core each, as a small real cluster). Both runners read the same Parquet directory by
path (pyarrow), so the ratio is Spark's overhead over the same work. The timed Spark runs map the
driver's class archive, which the first run leaves behind (`surgery/runners/classcache.py`, as every user's
second local run does); that first run's time is reported too (`first_run_s`).
Needs the `spark` extra and Java 17; without them this benchmark reports nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from bench import median_time  # noqa: E402

from surgery.runners.classcache import ENV  # noqa: E402

BATCH = 256
FEATURES, HIDDEN, DIM = 64, (1024, 1024), 48


def _build(directory: str, rows: int):
    """The MLP's split directory, and float32 rows as Parquet (an array column, 50k rows a file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from nets import write_mlp_pieces

    pieces = write_mlp_pieces(os.path.join(directory, "pieces"), features=FEATURES, hidden=HIDDEN, dim=DIM)
    x = np.random.default_rng(0).normal(size=(rows, FEATURES)).astype(np.float32)
    parquet = os.path.join(directory, "items.parquet")
    os.makedirs(parquet)
    values = pa.array(x.ravel())
    for i, lo in enumerate(range(0, rows, 50_000)):
        hi = min(rows, lo + 50_000)
        features = pa.ListArray.from_arrays(pa.array(np.arange(hi - lo + 1, dtype=np.int32) * FEATURES),
                                            values.slice(lo * FEATURES, (hi - lo) * FEATURES))
        pq.write_table(pa.table({"item_id": np.arange(lo, hi, dtype=np.int64), "features": features}),
                       os.path.join(parquet, f"part-{i}.parquet"))
    return pieces, parquet


def _surgery(*args, env=None) -> None:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), PYSPARK_PYTHON=sys.executable,
               **(env or {}))
    r = subprocess.run([sys.executable, "-m", "surgery", "precompute", *map(str, args)], env=env,
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"surgery precompute failed: {r.stderr.strip()[-500:]}")


def run(quick: bool = False, rows: int | None = None, repeats: int | None = None) -> list:
    try:
        import pyspark  # noqa: F401 - only checks that it is installed

        from surgery.runners.spark import java_available
    except ImportError:
        print("  (pyspark not installed: pip install 'surgery[spark]')")
        return []
    if not java_available():
        print("  (Java not installed: Spark needs Java 17)")
        return []
    rows = rows or (50_000 if quick else 200_000)
    repeats = repeats or (1 if quick else 3)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        pieces, parquet = _build(tmp, rows)
        local_s = median_time(lambda: _surgery(pieces, "--data", parquet, "--key", "features", "--ids", "item_id",
                                               "--batch-size", BATCH, "--out", os.path.join(tmp, "local.h5"))
                              or os.remove(os.path.join(tmp, "local.h5")), repeats)
        # The driver JVM's class archive (surgery/runners/classcache.py) in a directory of this run's own: the
        # first Spark run has none yet (its time is reported as first_run_s); the archive is built
        # in the background after it, and the timed runs use it.
        cache = {ENV: os.path.join(tmp, "class-cache")}

        def spark(master):
            _surgery(pieces, "--data", parquet, "--key", "features", "--ids", "item_id", "--batch-size", BATCH,
                     "--runner", "spark", "--spark-master", master, "--spark-conf", "spark.ui.enabled=false",
                     "--out", os.path.join(tmp, "spark.parquet"), env=cache)

        first_s = median_time(lambda: spark("local[2]"), 1)
        _wait_for_archive(cache[ENV])
        for master in ("local[2]", "local-cluster[2,1,1024]"):
            spark_s = median_time(lambda: spark(master), repeats)
            out.append({"benchmark": "spark", "metric": f"precompute rows/s, Spark {master} vs local runner",
                        "surgery": rows / spark_s, "baseline": rows / local_s, "ratio": local_s / spark_s,
                        "unit": "rows/s", "rows": rows, "spark_s": spark_s, "local_s": local_s,
                        **({"first_run_s": first_s} if master == "local[2]" else {})})
    return out


def _wait_for_archive(directory: str, timeout_s: float = 600) -> None:
    """Until the background build that the first run started has finished (or failed)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and any(n.endswith(".building") for n in os.listdir(directory)):
        time.sleep(1)
    if not any(n.endswith(".jsa") for n in os.listdir(directory)):
        print(f"  (no class archive was built in {directory}: the timed runs load Spark's classes from the jars)")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int)
    ap.add_argument("--repeats", type=int)
    args = ap.parse_args()
    for r in run(quick=args.quick, rows=args.rows, repeats=args.repeats):
        print(r)
