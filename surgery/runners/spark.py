"""Precompute on Apache Spark: the offline piece over Parquet catalogues (or HDF5/.npy/TFRecord files).

Many teams keep item features in Parquet tables and run their offline batch work on Spark; this
module runs the offline piece there and writes the embeddings back to Parquet.
`pip install 'surgery[spark]'` brings pyspark and pyarrow (Spark also needs Java 17).

    a path (Parquet/HDF5/.npy/TFRecord) ─► spark.range(blocks) ─► mapInArrow: read the blocks by path
        (`data.open_rows`, pyarrow for Parquet), run them ─► Parquet (row, id, one array column per
        output; provenance in the column metadata)
    a URI (s3a://, hdfs://: Spark's own reader) ─► global row number (file order, `_metadata.row_index`)
        ─► block = row // batch_size ─► repartitionById: whole blocks, contiguous ranges ─► mapInArrow

Reading by path keeps the rows out of the JVM: on a local path Spark only schedules the blocks and
writes the output, and the row numbers are the local runner's (files by path, rows in file order).

Determinism. As on Beam (see `surgery.runners.beam`), the unit handed to TensorFlow is a fixed block:
rows [k·batch_size, (k+1)·batch_size) of the global row grid, the blocks the local runner feeds.
Partitions hold whole blocks, so the numbers do not depend on the partitioning, the number of
executors or a retried task. Every output row carries its global row number (`row`).

Fault tolerance is Spark's: a lost executor's tasks are rescheduled, and output files go through
Spark's commit protocol into a temporary directory beside OUT that is renamed onto OUT only when
the job committed (an object-store URI is written in place with mode overwrite). A failed job
leaves OUT as it was; a rerun starts clean.

The frozen piece is broadcast once and parsed once per Python worker (Spark reuses its workers);
the `surgery` code itself is shipped to the executors as a zip (`addPyFile`), so a cluster needs
only TensorFlow, h5py, numpy and pyarrow installed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import difflib
import glob
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import zipfile

import numpy as np

from ..core.errors import DataError, OutputError, SurgeryError
from ..core.files import atomic_path

INSTALL = "pip install 'surgery[spark]'"
DEFAULT_MASTER = "local[*]"
ROW = "row"  # the global row number column of the output
META = "surgery"  # the column-metadata key holding the provenance
SPARK_META = b"org.apache.spark.sql.parquet.row.metadata"  # where Spark keeps the schema in a Parquet footer
# Rows a task runs at most. Each task also costs about 0.2 s of its own (the Python runner's set-up,
# closing and committing its Parquet file, scheduling): at 16k rows a task that was a tenth of the
# job on 200k rows (18.5 -> 17.0 s on `local[2]` at 64k, medians of 5). A retried task redoes at most
# this many rows, and the progress bar counts tasks.
ROWS_PER_TASK = 65536
READ_BLOCKS = 16  # path sources: blocks read per call on an executor
# On a local master the JVMs share the machine's cores with the TensorFlow workers: C2's compiler
# threads and G1's parallel GC threads take CPU that the workers need, and a job of seconds or
# minutes never earns back C2's compile time. C1 only and the serial collector: 200k rows of the
# benchmark in 18.7 s instead of 21.7 s on two cores (medians of 3), 1M rows no slower.
LOCAL_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
SLOW_ENV = "SURGERY_SPARK_SLOW_BLOCK_S"  # testing: executors sleep this long after each block
MARK = "surgery-error"  # a task's SurgeryError crosses to the driver as MARK[message|hint]
_ERROR = re.compile(re.escape(MARK) + r"\[(.*?)\|(.*?)\]", re.S)

_SPARK_TO_NUMPY = {"tinyint": "int8", "smallint": "int16", "int": "int32", "bigint": "int64",
                   "float": "float32", "double": "float64", "boolean": "bool"}
_NUMPY_TO_SPARK = {v: k for k, v in _SPARK_TO_NUMPY.items()}
# Spark has no half float: a float16 output (a cut crossing as float16) is stored as its bits in a
# smallint array, and `SparkResult` views it back as float16 (the layout records the dtype).
_BITS = {"float16": "int16"}


class SparkNotInstalledError(SurgeryError):
    """`--runner spark` without the optional extra, or without Java."""


def require_spark():
    """Import pyspark now (not at module import), or say how to install it; Java must be there."""
    try:
        import pandas  # noqa: F401 - mapInArrow needs it
        import pyarrow  # noqa: F401 - only checks that it is installed
        import pyspark
    except ImportError as e:
        raise SparkNotInstalledError(f"{e.name or 'pyspark'} is not installed, so --runner spark cannot run",
                                     f"install the extra: {INSTALL}") from e
    if not java_available():
        raise SparkNotInstalledError("Java is not installed (no `java` on PATH, no JAVA_HOME), so Spark cannot start",
                                     "install Java 17 (e.g. apt-get install openjdk-17-jre-headless)")
    return pyspark


def java_available() -> bool:
    home = os.environ.get("JAVA_HOME")
    return bool(shutil.which("java") or (home and os.path.exists(os.path.join(home, "bin", "java"))))


# ---------------------------------------------------------------- the session

def parse_conf(items) -> dict:
    """`['k=v', ...]` (or a dict) → `{k: v}`."""
    if isinstance(items, dict):
        return {str(k): str(v) for k, v in items.items()}
    conf = {}
    for item in items or ():
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise SurgeryError(f"--spark-conf '{item}' is not K=V", "e.g. --spark-conf spark.executor.memory=4g")
        conf[k.strip()] = v.strip()
    return conf


_LOG4J = """rootLogger.level = error
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
"""


def _log4j_file() -> str:
    path = os.path.join(tempfile.gettempdir(), "surgery-spark-log4j2.properties")
    if not os.path.exists(path):
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            f.write(_LOG4J)
    return path


@contextlib.contextmanager
def spark_session(master: str | None = None, conf=None):
    """The active SparkSession if there is one (left running), else a new one on `master`
    (stopped at the end). A local master runs the executors' Python on this interpreter."""
    require_spark()
    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway
    from pyspark.sql import SparkSession

    if SparkContext._active_spark_context is not None:  # started by the caller
        yield SparkSession.builder.getOrCreate()
        return
    master = master or DEFAULT_MASTER
    scratch = os.path.join(tempfile.gettempdir(), f"surgery-spark-{os.getuid()}")
    os.makedirs(scratch, exist_ok=True)
    local = master.startswith("local")
    if local:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("SPARK_WORKER_DIR", os.path.join(scratch, "work"))  # local-cluster executor logs
    jvm = f"-Dlog4j2.configurationFile=file:{_log4j_file()}" + (" " + LOCAL_JVM if local else "")
    settings = {"spark.master": master, "spark.app.name": "surgery precompute", "spark.ui.showConsoleProgress": "false",
                "spark.driver.extraJavaOptions": jvm, "spark.executor.extraJavaOptions": jvm, **parse_conf(conf)}
    log = os.path.join(scratch, f"driver-{os.getpid()}.log")
    spark_conf = SparkConf().setAll(list(settings.items()))
    try:  # the JVM's start-up notices and logs go to `log` (its own stderr: no fd of ours is touched)
        with open(log, "ab") as stderr:
            gateway = launch_gateway(spark_conf, popen_kwargs={"stderr": stderr})
        sc = SparkContext(conf=spark_conf, gateway=gateway)
    except Exception as e:
        raise SurgeryError(f"cannot start Spark on {master}: {_first_line(e)}", "check --spark-master, "
                           f"--spark-conf and the Java installation; Spark's log: {log}") from e
    sc.setLogLevel("ERROR")
    spark = SparkSession.builder.getOrCreate()
    try:
        yield spark
    finally:
        spark.stop()
        with contextlib.suppress(OSError):  # kept only when the JVM failed to start (the error names it)
            os.remove(log)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _ship_code(sc) -> None:
    """Zip this `surgery` package and add it to the executors' Python path (once per content)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for path in sorted(glob.glob(os.path.join(package, "**", "*.py"), recursive=True)):
            name = os.path.join("surgery", os.path.relpath(path, package))
            with open(path, "rb") as f:
                z.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), f.read())
    data = buf.getvalue()
    target = os.path.join(tempfile.gettempdir(), f"surgery-{hashlib.sha256(data).hexdigest()[:16]}.zip")
    if not os.path.exists(target):
        with atomic_path(target) as tmp, open(tmp, "wb") as f:
            f.write(data)
    shipped = getattr(sc, "_surgery_shipped", set())
    if target not in shipped:
        sc.addPyFile(target)
        shipped.add(target)
        sc._surgery_shipped = shipped


# ---------------------------------------------------------------- what the executors get

@dataclasses.dataclass
class _Blocks:
    """How a task reads and runs its rows, small and picklable; the piece itself travels as a
    broadcast (`piece`: a `Piece` fed at one input, its outputs stored under `datasets`)."""

    piece: object  # Broadcast of the offline Piece
    datasets: list  # the column each output is stored in
    feed_dtype: str
    row_shape: list
    batch_size: int
    rows: int
    ids_column: str | None
    source: tuple | None  # (data, key, ids) for a path source; None for a URI (rows come in the batches)
    slow: float = 0.0  # testing: seconds to sleep after each block (SLOW_ENV in the driver's environment)
    preprocess: str = "none"  # `data.preprocess`, applied on the executors as the local runner applies it


def path_source(data: str, key: str | None, ids: str | None, input_spec, every_row: bool = True,
                preprocess: str | None = None):
    """Parquet / HDF5 / .npy / TFRecord / image-folder rows by path, scaled as `preprocess` says and
    shaped and typed for `input_spec` (the piece's input): the one place that opens them. The driver
    checks every row (`check_rows`) before the job; the executors do not read them all again."""
    from ..data import rows_with_ids

    source = rows_with_ids(data, key, ids, preprocess=preprocess, spec=input_spec)
    try:
        source.bind(input_spec, every_row)
    except BaseException:  # rows the input cannot take: nothing stays open
        source.close()
        raise
    return source


def read_rows(source, start: int, stop: int):
    """Rows [start, stop) and their ids (or None), across TFRecord file boundaries."""
    bounds = getattr(source, "boundaries", lambda: [0, source.num_rows])()
    parts, ids = [], []
    for lo, hi in zip(bounds, bounds[1:]):
        a, b = max(start, lo), min(stop, hi)
        if a < b:
            parts.append(source.read(a, b))
            ids.append(source.read_ids(a, b))
    x = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return x, (None if ids[0] is None else np.concatenate([np.asarray(i) for i in ids]))


_WORKER: dict = {}  # per Python worker: the loaded graph and the opened source, by content


def _runner(plan: _Blocks):
    piece = plan.piece.value
    key = ("runner", piece.sha256, tuple(o.name for o in piece.outputs), piece.inputs[0].name)
    if key not in _WORKER:
        from pyspark import TaskContext

        from .precompute import Runner

        task = TaskContext.get()  # TensorFlow's threads: the task's CPUs, not every core of the machine
        _WORKER[key] = Runner(piece, threads=task.cpus() if task is not None else None)
    return _WORKER[key]


def _source(plan: _Blocks):
    """The rows by path, opened for each partition: a data file replaced or removed mid-job fails
    the tasks after it (the job then fails whole) instead of being read through a stale handle."""
    return path_source(*plan.source, plan.piece.value.inputs[0], every_row=False, preprocess=plan.preprocess)


def _arrow_ids(ids):
    import pyarrow as pa

    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        return ids
    ids = np.asarray(ids)
    if ids.dtype == object or ids.dtype.kind in "SU":
        return pa.array([i.decode() if isinstance(i, bytes) else str(i) for i in ids], pa.string())
    return pa.array(ids)


def _run_blocks(plan: _Blocks, x: np.ndarray, row0: int, ids):
    """Rows [row0, row0 + len(x)), whole blocks of the global grid → one Arrow record batch."""
    import pyarrow as pa

    if row0 % plan.batch_size or not (len(x) % plan.batch_size == 0 or row0 + len(x) == plan.rows):
        raise RuntimeError(f"rows {row0}:{row0 + len(x)} are not whole blocks of {plan.batch_size}")
    runner = _runner(plan)
    if x.dtype != plan.feed_dtype:
        x = x.astype(plan.feed_dtype)
    results = [[] for _ in plan.datasets]
    for s in range(0, len(x), plan.batch_size):
        for acc, value in zip(results, runner.run(x[s:s + plan.batch_size], row0 + s,
                                                  row0 + min(len(x), s + plan.batch_size))):
            acc.append(value)
        if plan.slow:
            time.sleep(plan.slow)
    columns = {ROW: pa.array(np.arange(row0, row0 + len(x), dtype=np.int64))}
    if plan.ids_column:
        columns[plan.ids_column] = _arrow_ids(ids)
    for name, acc in zip(plan.datasets, results):
        value = np.concatenate(acc).reshape(len(x), -1)
        if value.dtype.name in _BITS:
            value = value.view(_BITS[value.dtype.name])
        offsets = pa.array(np.arange(len(x) + 1, dtype=np.int32) * value.shape[1])
        columns[name] = pa.ListArray.from_arrays(offsets, pa.array(value.ravel()))
    return pa.RecordBatch.from_pydict(columns)


def _reporting(fn):
    """Run a worker generator; a SurgeryError crosses to the driver as a marked line."""
    from ..core.errors import SurgeryError as Error

    def wrapped(batches):
        try:
            yield from fn(batches)
        except Error as e:
            raise RuntimeError(f"{MARK}[{e.message}|{e.hint}]") from None
    return wrapped


def _path_blocks(plan: _Blocks):
    """mapInArrow over block numbers: read each run of blocks by path here, run it. The next run
    computes in a thread while Spark takes the last one (TensorFlow and the socket release the
    GIL): the JVM writes Parquet while the graph runs (200k rows: ~0.5 s off on `local[2]`)."""
    def runs(batches):
        for batch in batches:
            blocks = batch.column(0).to_numpy()
            starts = np.flatnonzero(np.diff(blocks, prepend=-2) != 1)
            for run in np.split(blocks, starts[1:]):
                for i in range(0, len(run), READ_BLOCKS):
                    chunk = run[i:i + READ_BLOCKS]
                    yield int(chunk[0]) * plan.batch_size, min(plan.rows, (int(chunk[-1]) + 1) * plan.batch_size)

    def fn(batches):
        source = _source(plan)

        def compute(start, stop):
            try:
                x, ids = read_rows(source, start, stop)
            except OSError as e:
                raise DataError(f"cannot read rows {start}:{stop} of {plan.source[0]}: {e}",
                                "check that every executor sees the data file at this path") from e
            return _run_blocks(plan, np.asarray(x), start, ids)

        try:
            with concurrent.futures.ThreadPoolExecutor(1) as ahead:
                pending = None
                for start, stop in runs(batches):
                    computing = ahead.submit(compute, start, stop)
                    if pending is not None:
                        yield pending.result()
                    pending = computing
                if pending is not None:
                    yield pending.result()
        finally:
            source.close()  # the partition's own handle (see _source)
    return _reporting(fn)


def _parquet_blocks(plan: _Blocks):
    """mapInArrow over rows sorted by `_row`, whole blocks per partition: cut at block ends, run."""
    def fn(batches):
        import pyarrow as pa

        rows, x, ids = np.empty(0, np.int64), None, None
        for batch in batches:
            b_rows = batch.column("_row").to_numpy()
            b_x = batch.column("_x").flatten().to_numpy(zero_copy_only=False).reshape(len(b_rows), *plan.row_shape)
            b_ids = batch.column("_id") if plan.ids_column else None
            rows = np.concatenate([rows, b_rows])
            x = b_x if x is None else np.concatenate([x, b_x])
            if plan.ids_column:
                ids = b_ids if ids is None else pa.concat_arrays([ids, b_ids])
            last = int(rows[-1])
            cut = len(rows) if (last + 1) % plan.batch_size == 0 or last + 1 == plan.rows else \
                int(np.searchsorted(rows, last // plan.batch_size * plan.batch_size))
            if cut:
                yield _checked_run(plan, rows[:cut], x[:cut], ids[:cut] if plan.ids_column else None)
                rows, x, ids = rows[cut:], x[cut:], (ids[cut:] if plan.ids_column else None)
        if len(rows):
            yield _checked_run(plan, rows, x, ids)
    return _reporting(fn)


def _checked_run(plan: _Blocks, rows, x, ids):
    from ..data import preprocess

    if not np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
        raise RuntimeError(f"rows {rows[0]}..{rows[-1]} are not contiguous in their partition")
    return _run_blocks(plan, preprocess(x, plan.preprocess), int(rows[0]), ids)


# ---------------------------------------------------------------- reading the input (driver)

class _Described:
    """What `data.check_feedable` looks at, for data described without a RowSource."""

    def __init__(self, path, key, shape, dtype):
        self.path, self.key, self.shape, self.dtype = path, key, tuple(shape), np.dtype(dtype)

    def __len__(self):
        return self.shape[0]


def spark_reads(data: str) -> bool:
    """A URI (s3a://, hdfs://, gs://, file://): Parquet that only Spark's own reader reaches. Local
    paths are read by path on the executors, Parquet included (`data.ParquetRows`)."""
    return "://" in data


def _numpy_type(spark_type) -> str | None:
    return _SPARK_TO_NUMPY.get(spark_type.simpleString())


def _close(name: str, names) -> str:
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.4)
    return ("did you mean " + ", ".join(close) + "?") if close else "columns there: " + ", ".join(names[:12])


def _parquet_input(spark, data: str, key: str, ids: str | None, offline, preprocess: str = "none"):
    """Check the Parquet input and give (DataFrame of _row/_x/_id, rows, feed dtype, row shape, id type,
    fingerprint). One aggregate job counts rows per file and checks that every row has as many values."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType

    from ..data import check_feedable, flat_row_shape

    try:
        df = spark.read.parquet(data)
    except Exception as e:
        raise DataError(f"cannot read {data} as Parquet: {_first_line(e)}",
                        "pass a Parquet file or directory with --data") from e
    fields = {f.name: f.dataType for f in df.schema.fields}
    columns = [c.strip() for c in key.split(",") if c.strip()]
    for c in columns + ([ids] if ids else []):
        if c not in fields:
            raise DataError(f"{data} has no column '{c}'", _close(c, list(fields)))
    if len(columns) == 1 and not _numpy_type(fields[columns[0]]):
        c, t = columns[0], fields[columns[0]]
        if t.typeName() == "vector" or type(t).__name__ == "VectorUDT":
            from pyspark.ml.functions import vector_to_array

            x, dtype = vector_to_array(F.col(c), "float64"), "float64"
        elif isinstance(t, ArrayType) and _numpy_type(t.elementType):
            x, dtype = F.col(c), _numpy_type(t.elementType)
        else:
            raise DataError(f"column '{c}' of {data} holds {t.simpleString()}, not numbers",
                            "pass an array<float>/vector column, or numeric columns as a comma list with --key")
    else:
        for c in columns:
            if not _numpy_type(fields[c]):
                raise DataError(f"column '{c}' of {data} holds {fields[c].simpleString()}, not a number",
                                "list only numeric columns with --key A,B,..")
        dtype = np.result_type(*[_numpy_type(fields[c]) for c in columns]).name
        x = F.array(*[F.col(c).cast(_NUMPY_TO_SPARK[dtype]) for c in columns])
    if ids and isinstance(fields[ids], ArrayType):
        raise DataError(f"id column '{ids}' of {data} holds arrays", "pass a column with one scalar id per row")
    where = columns[0] if len(columns) == 1 else ",".join(columns)
    stats = (df.select(F.col("_metadata.file_path").alias("_file"), x.alias("_x"))
             .groupBy("_file")
             .agg(F.count(F.lit(1)).alias("n"), F.min(F.size("_x")).alias("lo"), F.max(F.size("_x")).alias("hi"),
                  F.sum(F.when(F.col("_x").isNull() | F.exists("_x", lambda v: v.isNull()), 1)
                        .otherwise(0)).alias("nulls"))
             .collect())
    stats = sorted(stats, key=lambda r: r["_file"])
    rows = sum(r["n"] for r in stats)
    if not rows:
        raise DataError(f"{data} has no rows", "pass a table with one row per item")
    if any(r["nulls"] for r in stats):
        raise DataError(f"column '{where}' of {data} has null rows or null values",
                        "fill or drop them before precomputing")
    lo, hi = min(r["lo"] for r in stats), max(r["hi"] for r in stats)
    if lo != hi:
        raise DataError(f"column '{where}' of {data} is ragged: rows hold {lo} to {hi} values",
                        "give every row the same number of values")
    row_shape = flat_row_shape(offline.inputs[0], lo, f"column '{where}' of {data}")
    if preprocess != "none":  # scaled rows are float32, as a RowSource's
        dtype = "float32"
    feed_dtype = check_feedable(_Described(data, where, [rows, *row_shape], dtype), offline.inputs[0],
                                f"column '{where}' of {data}")
    offsets = spark.createDataFrame([(r["_file"], int(o)) for r, o in
                                     zip(stats, np.cumsum([0] + [r["n"] for r in stats[:-1]]))],
                                    "_file string, _offset long")
    frame = df.select(F.col("_metadata.file_path").alias("_file"), F.col("_metadata.row_index").alias("_index"),
                      x.alias("_x"), *([F.col(ids).alias("_id")] if ids else []))
    frame = frame.join(F.broadcast(offsets), "_file").select(
        (F.col("_offset") + F.col("_index")).alias("_row"), "_x", *(["_id"] if ids else []))
    fingerprint = hashlib.sha256(json.dumps([[r["_file"], r["n"]] for r in stats]).encode()).hexdigest()
    id_type = fields[ids].simpleString() if ids else None
    return frame, rows, feed_dtype, row_shape, id_type, fingerprint


def _path_input(data: str, key: str | None, ids: str | None, offline, preprocess: str = "none"):
    """Check a Parquet/HDF5/.npy/TFRecord input on the driver: (rows, feed dtype, row shape, id type,
    fingerprints). `path_source` has checked the rows against the input (`check_feedable`: no rows,
    another shape, an unsafe cast, null or ragged Parquet rows); the fingerprints are the local
    runner's, so the provenance is the same. The files opened here are closed again (the executors
    open their own), on errors too."""
    source = path_source(data, key, ids, offline.inputs[0], preprocess=preprocess)
    try:
        first, first_id = read_rows(source, 0, 1)
        first = np.asarray(first)
        feed_dtype = np.dtype(source.feed_dtype)
        id_type = None
        if ids:
            kind = np.asarray(first_id).dtype
            id_type = "string" if kind.kind in "OSU" else _NUMPY_TO_SPARK.get(kind.name, "string")
        return source.num_rows, feed_dtype, list(first.shape[1:]), id_type, list(source.fingerprints())
    finally:
        source.close()


# ---------------------------------------------------------------- running it

@dataclasses.dataclass
class SparkResult:
    out: str  # the Parquet directory
    h5: str | None  # the merged HDF5, when asked for
    rows: int
    partitions: int
    datasets: dict  # {name: {"tensor", "shape", "dtype"}}


def output_paths(out: str) -> tuple[str, str | None]:
    """`X.h5` → (`X.h5.parquet`, `X.h5`); anything else is the Parquet directory itself."""
    if out.endswith((".h5", ".hdf5")):
        return out + ".parquet", out
    return out, None


@dataclasses.dataclass
class _Input:
    """The input as checked on the driver: a URI's DataFrame (`frame`), or a path the executors
    read themselves (`source`: (data, key, ids))."""

    rows: int
    feed_dtype: object
    row_shape: list
    id_type: str | None
    fingerprints: list
    frame: object = None
    source: tuple | None = None


def run_precompute(graph, data: str, key: str, out: str, *, ids: str | None = None, batch_size: int = 256,
                   inputs=None, outputs=None, master: str | None = None, conf=None,
                   partitions: int | None = None, progress: bool = False, preprocess: str | None = None,
                   set=None) -> SparkResult:
    """Run GRAPH's offline piece over `data` on Spark into the Parquet directory `out`
    (`out` = X.h5: Parquet in X.h5.parquet, merged into X.h5 as the local runner writes it).

    `graph` is what `precompute.offline_piece` takes. `data` is Parquet (`key` an array/vector
    column or numeric columns `a,b,c`; `ids` a column) or an HDF5 / .npy / TFRecord source as for
    the local runner. A path is read by path on the executors (`data.open_rows`); a URI (s3a://,
    hdfs://, file://) is Parquet for Spark's reader. `preprocess` scales the rows on the executors
    as the local runner does (`data.preprocess`). Uses the active SparkSession when there is one,
    else starts one on `master` with `conf`.
    """
    require_spark()
    if batch_size < 1:
        raise SurgeryError(f"--batch-size {batch_size} is not a positive number", "use e.g. --batch-size 256")
    parquet_out, h5_out = output_paths(out)
    if "://" not in parquet_out:
        parquet_out = os.path.abspath(parquet_out)
        if os.path.isfile(parquet_out):
            raise OutputError(f"{parquet_out} is a file", "pass a directory name ending in .parquet with --out")
    from ..data import preprocess_mode
    from .precompute import offline_piece

    preprocess = preprocess_mode(preprocess)  # a bad GRAPH or --preprocess is refused before a JVM starts
    offline, datasets = offline_piece(graph, inputs=inputs, outputs=outputs, set=set)
    with spark_session(master, conf) as spark:
        inp = _read_input(spark, data, key, ids, offline, preprocess)
        layout = _layout(offline, datasets, inp)
        ids_column = _ids_column(data, ids, inp, layout)
        sc = spark.sparkContext
        blocks = -(-inp.rows // batch_size)
        slots = sc.defaultParallelism  # whole rounds of tasks: no slot idles through the last round
        parts = max(1, min(blocks, partitions or slots * -(-inp.rows // (slots * ROWS_PER_TASK))))
        _ship_code(sc)
        plan = _Blocks(sc.broadcast(offline), list(datasets), np.dtype(inp.feed_dtype).name, inp.row_shape,
                       batch_size, inp.rows, ids_column, inp.source, float(os.environ.get(SLOW_ENV, "0") or 0),
                       preprocess)
        meta = {"provenance": _provenance(offline, datasets, data, key, ids, batch_size, preprocess, inp),
                "layout": layout, "ids_column": ids_column, "runner": "spark"}
        result = _planned(spark, inp, plan, _output_schema(meta, ids_column, inp.id_type, layout), parts, blocks)
        try:
            _run_job(sc, result, parquet_out, progress)
        finally:
            plan.piece.destroy()
    if h5_out:
        write_hdf5(parquet_out, h5_out)
    return SparkResult(parquet_out, h5_out and os.path.abspath(h5_out), int(inp.rows), parts, layout)


def _read_input(spark, data: str, key: str, ids: str | None, offline, preprocess: str) -> _Input:
    """The input checked against the piece's: a URI through Spark's reader, a path by the executors."""
    if spark_reads(data):
        frame, rows, feed_dtype, row_shape, id_type, fps = _parquet_input(spark, data, key, ids, offline, preprocess)
        return _Input(rows, feed_dtype, row_shape, id_type, [fps, ""], frame=frame)
    rows, feed_dtype, row_shape, id_type, fingerprints = _path_input(data, key, ids, offline, preprocess)
    source = (os.path.abspath(data) if not any(c in data for c in "*?[") else data, key,
              os.path.abspath(ids) if ids and data.endswith(".npy") else ids)
    return _Input(rows, feed_dtype, row_shape, id_type, fingerprints, source=source)


def _layout(offline, datasets, inp: _Input) -> dict:
    """{column: {tensor, shape, dtype}} of each output, from one row of zeros run here."""
    from .precompute import Runner, output_layout

    with Runner(offline) as runner:
        layout = output_layout(offline, datasets, runner.run(np.zeros([1, *inp.row_shape], inp.feed_dtype), 0, 1))
    for spec in layout.values():
        if _stored(spec["dtype"]) not in _NUMPY_TO_SPARK:
            raise DataError(f"output {spec['tensor']} is {np.dtype(spec['dtype']).name}", "store numeric outputs only")
    return layout


def _stored(dtype) -> str:
    """The numpy dtype name an output of `dtype` is stored as in Parquet."""
    name = np.dtype(dtype).name
    return _BITS.get(name, name)


def _ids_column(data: str, ids: str | None, inp: _Input, layout: dict) -> str | None:
    """The output's id column: the Parquet input's own name for it, else `ids`."""
    from ..data import is_parquet

    ids_column = (ids if inp.source is None or is_parquet(data) else "ids") if ids else None
    if ids_column and (ids_column == ROW or ids_column in layout):
        raise SurgeryError(f"the id column '{ids_column}' has the name of an output column",
                           "rename the output with --outputs T=NAME")
    return ids_column


def _provenance(offline, datasets, data, key, ids, batch_size, preprocess, inp: _Input) -> dict:
    """The local runner's provenance attributes, so either runner's output is checked the same way."""
    from .precompute import FORMAT

    return {
        "format": FORMAT, "graph": offline.source, "graph_sha256": offline.sha256,
        "input_tensor": offline.inputs[0].name,
        "output_tensors": json.dumps([o.name for o in offline.outputs]),
        "output_datasets": json.dumps(list(datasets)),
        "batch_size": int(batch_size), "data_file": os.path.abspath(data) if "://" not in data else data,
        "data_key": key or "", "preprocess": preprocess, "ids_key": ids or "", "rows": int(inp.rows),
        "data_sha256": inp.fingerprints[0], "ids_sha256": inp.fingerprints[1] if ids else "",
    }


def _planned(spark, inp: _Input, plan: _Blocks, schema, parts: int, blocks: int):
    """The output DataFrame: whole blocks per partition, run by `mapInArrow`."""
    from pyspark.sql import functions as F

    if inp.source is not None:
        return spark.range(0, blocks, 1, parts).mapInArrow(_path_blocks(plan), schema)
    frame = (inp.frame.withColumn("_part", (F.floor(F.col("_row") / plan.batch_size) * parts / blocks).cast("int"))
             .repartitionById(parts, "_part").drop("_part").sortWithinPartitions("_row"))
    return frame.mapInArrow(_parquet_blocks(plan), schema)


def _run_job(sc, result, parquet_out: str, progress: bool) -> None:
    """Write `result` to `parquet_out` as one job group (a local directory atomically)."""
    group = f"surgery-{os.getpid()}-{time.monotonic_ns()}"
    sc.setJobGroup(group, "surgery precompute", True)
    try:
        with _Progress(sc, group, progress):
            if "://" not in parquet_out:
                with atomic_path(parquet_out, directory=True) as tmp:
                    _write(result, "file://" + tmp)
            else:
                _write(result, parquet_out)
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)


def _output_schema(meta: dict, ids_column: str | None, id_type: str | None, layout: dict):
    """mapInArrow's schema: `row`, the ids, one array per output. The provenance rides in the
    fields' metadata (no projection stage to add it). The arrays hold no nulls (containsNull=false),
    which `_write` stores as a 2-level Parquet list."""
    from pyspark.sql.types import ArrayType, DataType, LongType, StructField, StructType

    fields = [StructField(ROW, LongType(), True, {META: json.dumps(meta)})]
    if ids_column:
        fields.append(StructField(ids_column, DataType.fromDDL(id_type), True))
    for name, spec in layout.items():
        element = DataType.fromDDL(_NUMPY_TO_SPARK[_stored(spec["dtype"])])
        fields.append(StructField(name, ArrayType(element, containsNull=False), True, {"tensor": spec["tensor"]}))
    return StructType(fields)


def _write(frame, path: str) -> None:
    """Spark's commit protocol writes the files; a task's SurgeryError comes back as one.

    Written for the JVM's CPU, which a local master shares with the TensorFlow workers:
    - no dictionary encoding: embeddings, row numbers and ids are all but unique, and trying a
      dictionary for every value cost 19.4 -> 17.8 s on 200k rows on `local[2]`;
    - arrays of non-null elements as a 2-level list (`repeated float array`: Spark's "legacy"
      list, a form the Parquet spec's compatibility rules ask every reader to take; Spark and
      pyarrow read it as array<float>, tests/test_spark.py checks): Spark's standard 3-level list
      opens and closes a group around every element, the 2-level one writes the floats alone
      (200k rows: 12.9 -> 11.9 s, medians of 5).
    """
    try:
        (frame.write.mode("overwrite").option("parquet.enable.dictionary", "false")
         .option("spark.sql.parquet.writeLegacyFormat", "true").parquet(path))
    except Exception as e:
        found = _ERROR.search(str(e))
        if found:
            raise DataError(found.group(1), found.group(2)) from None
        raise


class _Progress:
    """A driver-side tqdm bar of the job group's tasks (done / total over its stages)."""

    def __init__(self, sc, group: str, enabled: bool):
        self.sc, self.group, self.enabled = sc, group, enabled
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _counts(self):
        tracker, done, total = self.sc.statusTracker(), 0, 0
        for job in tracker.getJobIdsForGroup(self.group):
            info = tracker.getJobInfo(job)
            for stage in (info.stageIds if info else ()):
                s = tracker.getStageInfo(stage)
                if s:
                    done, total = done + s.numCompletedTasks, total + s.numTasks
        return done, total

    def _poll(self):
        from tqdm import tqdm

        with tqdm(total=0, unit="tasks", desc="precompute (spark)") as bar:
            while True:
                stopping = self.stop.wait(0.5)
                try:
                    done, total = self._counts()
                except Exception:
                    return
                if total > bar.total:
                    bar.total = total
                if done > bar.n:
                    bar.update(done - bar.n)
                if stopping:
                    return

    def __enter__(self):
        if self.enabled:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.stop.set()
            self.thread.join()


# ---------------------------------------------------------------- reading the result

class ParquetTable:
    """A precompute's Parquet directory, read with pyarrow (no Spark): `read_all()`, `rows(a, b)`,
    `lookup(ids)`, like `beam.ShardedTable`; rows come back in the global row order."""

    def __init__(self, path: str):
        import pyarrow.parquet as pq

        self.path = path
        try:
            self.table = pq.read_table(path)
            schema = pq.read_schema(sorted(glob.glob(os.path.join(path, "*.parquet")))[0]) \
                if os.path.isdir(path) else self.table.schema
            fields = json.loads(schema.metadata[SPARK_META])["fields"]
            self.meta = json.loads(next(f for f in fields if f["name"] == ROW)["metadata"][META])
        except (OSError, ValueError, IndexError, KeyError, StopIteration) as e:
            raise DataError(f"{path} is not a Parquet directory written by `surgery precompute --runner spark`",
                            "pass the directory it wrote (OUT, or OUT.parquet beside an .h5)") from e
        order = np.argsort(self.table.column(ROW).to_numpy(), kind="stable")
        self.table = self.table.take(order)
        self.layout = self.meta["layout"]
        self.names = list(self.layout)
        self.ids_column = self.meta.get("ids_column")
        self.provenance = self.meta["provenance"]
        self._id_rows = None

    def __len__(self) -> int:
        return self.table.num_rows

    def column(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """One output as an array [rows, *shape] (or the ids / row numbers)."""
        col = self.table.column(name).slice(start, (stop if stop is not None else len(self)) - start)
        if name not in self.layout:
            values = col.to_numpy(zero_copy_only=False)
            return values.astype(object) if values.dtype == object else values
        spec = self.layout[name]
        flat = col.combine_chunks().flatten().to_numpy(zero_copy_only=False)
        if np.dtype(spec["dtype"]).name in _BITS:
            return flat.view(spec["dtype"]).reshape(len(col), *spec["shape"])
        return flat.astype(spec["dtype"], copy=False).reshape(len(col), *spec["shape"])

    def rows(self, start: int, stop: int, names=None) -> dict:
        names = names or self.names + ([self.ids_column] if self.ids_column else [])
        return {n: self.column(n, start, stop) for n in names}

    def read_all(self, names=None) -> dict:
        return self.rows(0, len(self), names)

    def lookup(self, ids, names=None) -> dict:
        """The rows whose id is in `ids`, in the order given; an unknown id is a `DataError`."""
        if not self.ids_column:
            raise DataError(f"{self.path} was written without ids", "precompute again with --ids KEY")
        if self._id_rows is None:
            self._id_rows = {_id_key(v): i for i, v in enumerate(self.column(self.ids_column))}
        try:
            wanted = np.asarray([self._id_rows[_id_key(v)] for v in ids], dtype=np.int64)
        except KeyError as e:
            raise DataError(f"id {e.args[0]!r} is not in {self.path}", "look up ids that were precomputed") from e
        return {n: self.column(n)[wanted] for n in (names or self.names)}


def _id_key(v):
    v = v.item() if isinstance(v, np.generic) else v
    return v.decode() if isinstance(v, bytes) else v


class _Column:
    """A column as `OnlineServer` reads an HDF5 dataset: `.shape`, `.attrs`, `[()]`, `[rows]`."""

    def __init__(self, table: ParquetTable, name: str, attrs: dict):
        self._table, self._name, self.attrs, self._data = table, name, attrs, None

    def _values(self):
        if self._data is None:
            self._data = self._table.column(self._name)
        return self._data

    @property
    def shape(self):
        return self._values().shape

    def __getitem__(self, index):
        return self._values() if index == () else self._values()[index]


class ParquetFile:
    """A Parquet output with the part of h5py.File's interface `OnlineServer` uses (read-only)."""

    def __init__(self, path: str):
        self.table = ParquetTable(path)
        self.attrs = dict(self.table.provenance)
        self._columns = {n: _Column(self.table, n, {"tensor": s["tensor"]}) for n, s in self.table.layout.items()}
        if self.table.ids_column:
            self._columns["ids"] = _Column(self.table, self.table.ids_column, {})

    def __contains__(self, name) -> bool:
        return name in self._columns

    def __getitem__(self, name):
        return self._columns[name]

    def items(self):
        return self._columns.items()

    def close(self):
        pass


def write_hdf5(parquet_dir: str, out_h5: str) -> str:
    """The Parquet output as the local runner's HDF5: each output dataset (attr `tensor`), `ids`,
    and the local runner's provenance attributes, in row order."""
    import h5py

    from ..data import write_dataset as _write_dataset

    table = ParquetTable(parquet_dir)
    with atomic_path(out_h5) as tmp:
        with h5py.File(tmp, "w") as f:
            for name, spec in table.layout.items():
                f.create_dataset(name, data=table.column(name)).attrs["tensor"] = spec["tensor"]
            if table.ids_column:
                _write_dataset(f, "ids", table.column(table.ids_column))
            f.attrs.update(table.provenance)
    return out_h5


__all__ = ["run_precompute", "SparkResult", "spark_session", "ParquetTable", "ParquetFile", "write_hdf5",
           "path_source", "read_rows", "spark_reads", "output_paths", "require_spark", "SparkNotInstalledError",
           "INSTALL"]
