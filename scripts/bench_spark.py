"""Precompute on Apache Spark against what a Spark user writes instead: `pyspark.ml.functions.
predict_batch_udf` around a `tf.compat.v1.Session` on the same frozen offline piece, over the same
Parquet, written back to Parquet. A compute-heavy piece (a 64-1024-1024-48 MLP), 150k rows, on
`local-cluster[N,1,1536]` (N executor JVMs of one core each: a small real cluster), each run a
whole fresh process (start-up, reading and writing included), medians of 3.

    python scripts/bench.py spark            # 150k rows, 1 and 2 executors, medians of 3
    python scripts/bench.py spark --quick    # 30k rows, 2 executors, one run
    python scripts/bench_spark.py --rows 600000 [--repeats 1]

Reported: surgery's time over the idiom's (ratio <= 1.0: no slower), and each one's scaling from one
executor to two. Needs the `spark` extra and Java 17; without them this benchmark reports nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from bench import median_time  # noqa: E402

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


# The idiom, as its documentation shows it: a predict function made once per Python worker, fed
# numpy batches of the array column.
IDIOM = """
import json, sys
import numpy as np
from pyspark.ml.functions import predict_batch_udf
from pyspark.sql import SparkSession
from pyspark.sql.types import ArrayType, FloatType

master, pieces, parquet, out, batch = sys.argv[1:6]
piece = json.load(open(pieces + "/manifest.json"))["pieces"]["offline"]
graph, x, y = pieces + "/" + piece["graph"], piece["inputs"][0]["name"], piece["outputs"][0]["name"]
width = piece["inputs"][0]["shape"][1]

def make_predict_fn():
    import tensorflow as tf
    graph_def = tf.compat.v1.GraphDef()
    with open(graph, "rb") as f:
        graph_def.ParseFromString(f.read())
    g = tf.Graph()
    with g.as_default():
        tf.import_graph_def(graph_def, name="")
    session = tf.compat.v1.Session(graph=g)
    return lambda rows: session.run(y, {x: rows})

embed = predict_batch_udf(make_predict_fn, return_type=ArrayType(FloatType()), batch_size=int(batch),
                          input_tensor_shapes=[[width]])
spark = SparkSession.builder.master(master).config("spark.ui.enabled", "false").getOrCreate()
frame = spark.read.parquet(parquet)
frame.select("item_id", embed("features").alias("embeddings")).write.mode("overwrite").parquet(out)
spark.stop()
"""


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                PYSPARK_PYTHON=sys.executable, TF_CPP_MIN_LOG_LEVEL="3")


def _surgery(*args) -> None:
    r = subprocess.run([sys.executable, "-m", "surgery", "precompute", *map(str, args)], env=_env(),
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"surgery precompute failed: {r.stderr.strip()[-500:]}")


def _idiom(master: str, pieces: str, parquet: str, out: str) -> None:
    r = subprocess.run([sys.executable, "-c", IDIOM, master, pieces, parquet, out, str(BATCH)], env=_env(),
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"predict_batch_udf run failed: {r.stderr.strip()[-800:]}")


def _max_difference(tmp: str) -> float:
    """The two outputs, row by row (matched by item id): the same numbers, or how far apart."""
    import pyarrow.parquet as pq

    def embeddings(name):
        table = pq.read_table(os.path.join(tmp, name), columns=["item_id", "embeddings"]).sort_by("item_id")
        return np.stack(table.column("embeddings").to_numpy(zero_copy_only=False))

    return float(np.abs(embeddings("surgery.parquet") - embeddings("idiom.parquet")).max())


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
    rows = rows or (30_000 if quick else 150_000)
    repeats = repeats or (1 if quick else 3)
    out, seconds = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        pieces, parquet = _build(tmp, rows)
        for executors in ((2,) if quick else (1, 2)):
            master = f"local-cluster[{executors},1,1536]"
            ours = median_time(lambda: _surgery(
                pieces, "--data", parquet, "--key", "features", "--ids", "item_id", "--batch-size", BATCH,
                "--runner", "spark", "--spark-master", master, "--spark-conf", "spark.ui.enabled=false",
                "--out", os.path.join(tmp, "surgery.parquet")), repeats)
            theirs = median_time(lambda: _idiom(master, pieces, parquet, os.path.join(tmp, "idiom.parquet")), repeats)
            seconds[executors] = (ours, theirs)
            out.append({"benchmark": "spark", "metric": f"precompute {rows} rows, {master} vs predict_batch_udf",
                        "surgery": ours, "baseline": theirs, "ratio": ours / theirs, "unit": "s", "rows": rows,
                        "max_abs_diff": _max_difference(tmp)})
        if 1 in seconds:
            (ours1, theirs1), (ours2, theirs2) = seconds[1], seconds[2]
            out.append({"benchmark": "spark", "metric": "speed-up from 1 to 2 executors (surgery vs idiom)",
                        "surgery": ours1 / ours2, "baseline": theirs1 / theirs2, "ratio": (ours1 / ours2) / (theirs1 / theirs2),
                        "unit": "x"})
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int)
    ap.add_argument("--repeats", type=int)
    args = ap.parse_args()
    for r in run(quick=args.quick, rows=args.rows, repeats=args.repeats):
        print(r)
