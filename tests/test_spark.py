"""`surgery.runners.spark` and `precompute --runner spark` on a real two-executor Spark (`local-cluster[2,1,1024]`):
the output equals the local runner's bit for bit whatever the source (HDF5, Parquet array column,
Parquet scalar columns, by path or through Spark's reader), an executor killed mid-job changes
nothing, bad input exits 2.

Needs the `spark` extra (`pip install 'surgery[spark]'`) and Java 17; without them these tests skip
saying which is missing. One cluster is started for the whole module (about 15-20 s).
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time

import h5py
import numpy as np
import pytest
from conftest import cli, run_cli

ROWS, FEATURES, BATCH = 1000, 12, 64
MASTER = "local-cluster[2,1,1024]"


def _skip_reason():
    try:
        import pandas  # noqa: F401 - only checks that it is installed
        import pyarrow  # noqa: F401 - only checks that it is installed
        import pyspark  # noqa: F401 - only checks that it is installed
    except ImportError as e:
        return f"{e.name} is not installed (pip install 'surgery[spark]')"
    from surgery.runners.spark import java_available

    return None if java_available() else "Java is not installed: the Spark tests need Java 17"


needs_spark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


@pytest.fixture(scope="module")
def spark():
    """One two-executor cluster for every test here; the executors run this interpreter on this checkout."""
    from surgery.runners.spark import spark_session

    os.environ["PYSPARK_PYTHON"] = sys.executable
    # A failing task starts a fresh Python worker (TensorFlow imported again) for each attempt: two
    # attempts are enough to survive one killed executor and keep the failure tests short.
    with spark_session(MASTER, {"spark.ui.enabled": "false", "spark.task.maxFailures": "2"}) as session:
        yield session


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory):
    from nets import write_mlp_pieces

    return write_mlp_pieces(str(tmp_path_factory.mktemp("pieces")), features=FEATURES, hidden=32, dim=8, seed=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The same rows as HDF5 (`x`, string `ids`), .npy, and Parquet: three files of odd sizes (blocks
    straddle them), small row groups, with an array column, one column per feature and an int column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path_factory.mktemp("data")
    x = np.random.default_rng(0).normal(size=(ROWS, FEATURES)).astype(np.float32)
    ids = np.array([f"item-{i:04d}" for i in range(ROWS)], dtype=object)
    with h5py.File(d / "data.h5", "w") as f:
        f["x"] = x
        f.create_dataset("ids", data=ids, dtype=h5py.string_dtype())
    os.makedirs(d / "items.parquet")
    for i, (a, b) in enumerate([(0, 333), (333, 700), (700, ROWS)]):
        table = {"item_id": list(ids[a:b]), "features": pa.array(list(x[a:b])),
                 **{f"f{j}": x[a:b, j] for j in range(FEATURES)},
                 "count": np.arange(a, b, dtype=np.int64), "name": [f"n{k}" for k in range(a, b)],
                 "tags": pa.array([[f"t{k}"] * FEATURES for k in range(a, b)]),
                 "ragged": pa.array([[1.0] * (FEATURES + (k == 500)) for k in range(a, b)], pa.list_(pa.float32()))}
        pq.write_table(pa.table(table), str(d / "items.parquet" / f"part-{i}.parquet"), row_group_size=100)
    return str(d / "data.h5"), str(d / "items.parquet"), x, ids


@pytest.fixture(scope="module")
def local(split_dir, data, tmp_path_factory):
    """The local runner's HDF5 over the same rows: the reference."""
    from surgery import precompute

    out = str(tmp_path_factory.mktemp("local") / "local.h5")
    precompute(split_dir, data[0], "x", out, ids="ids", batch_size=BATCH)
    with h5py.File(out, "r") as f:
        return out, f["embeddings"][:], dict(f.attrs)


@needs_spark
def test_bit_equal_to_the_local_runner_from_hdf5_and_parquet(spark, split_dir, data, local, tmp_path):
    from surgery.runners.spark import ParquetTable, run_precompute

    h5, parquet, _, ids = data
    _, expected, attrs = local
    result = run_precompute(split_dir, h5, "x", str(tmp_path / "a.h5"), ids="ids", batch_size=BATCH)
    assert result.partitions >= 2  # several tasks, on two executors
    with h5py.File(result.h5, "r") as f:  # the merged HDF5 is the local runner's, provenance included
        assert np.array_equal(f["embeddings"][:], expected)
        assert [v.decode() for v in f["ids"][:]] == list(ids)
        assert dict(f.attrs) == attrs and f["embeddings"].attrs["tensor"] == "emb:0"

    # a local path is read by path on the executors (pyarrow); a URI by Spark's own reader (a shuffle
    # onto the block grid): the same rows either way
    for source, key, name in ((parquet, "features", "array"), ("file://" + parquet, "features", "uri"),
                              (parquet, ",".join(f"f{j}" for j in range(FEATURES)), "columns"),
                              ("file://" + parquet, ",".join(f"f{j}" for j in range(FEATURES)), "uri-columns")):
        out = str(tmp_path / f"{name}.parquet")
        run_precompute(split_dir, source, key, out, ids="item_id", batch_size=BATCH, partitions=3)
        table = ParquetTable(out)
        assert np.array_equal(table.read_all()["embeddings"], expected), name
        assert list(table.column("item_id")) == list(ids)  # ids in order
        assert table.provenance["graph_sha256"] == attrs["graph_sha256"]
        assert np.array_equal(table.lookup(["item-0999", "item-0000", "item-0400"])["embeddings"],
                              expected[[999, 0, 400]])
    import pyarrow.parquet as pq  # the layout a feature store reads: row, id, one array<float> per output

    schema = pq.read_schema(os.path.join(out, min(p for p in os.listdir(out) if p.endswith(".parquet"))))
    assert [(f.name, str(f.type)) for f in schema] == [("row", "int64"), ("item_id", "string"),
                                                       ("embeddings", "list<array: float not null>")]
    back = spark.read.parquet(out)  # Spark reads the 2-level list back as array<float>, the same numbers
    assert back.schema.simpleString() == "struct<row:bigint,item_id:string,embeddings:array<float>>"
    rows = sorted(back.collect())
    assert np.array_equal(np.array([r.embeddings for r in rows], np.float32), expected)


@needs_spark
def test_preprocess_scales_on_the_executors_as_the_local_runner_does(spark, split_dir, data, local, tmp_path):
    from surgery import precompute
    from surgery.runners.spark import ParquetTable, run_precompute

    h5, parquet, _, _ = data
    precompute(split_dir, h5, "x", str(tmp_path / "local.h5"), batch_size=BATCH, preprocess="unit")
    with h5py.File(tmp_path / "local.h5", "r") as f:
        expected = f["embeddings"][:]
    assert not np.array_equal(expected, local[1])  # the scaling changes the numbers
    for source, key in ((h5, "x"), ("file://" + parquet, "features")):  # by path, and through Spark's reader
        out = str(tmp_path / f"{len(key)}.parquet")
        run_precompute(split_dir, source, key, out, batch_size=BATCH, partitions=3, preprocess="unit")
        table = ParquetTable(out)
        assert np.array_equal(table.read_all()["embeddings"], expected), source
        assert table.provenance["preprocess"] == "unit"


def _with_online_piece(split_dir: str, directory: str) -> str:
    """A copy of the split with an online piece: `emb` (the cut) → score = emb · 1."""
    import json
    import shutil

    from conftest import tf, v1

    from surgery.passes.freeze import freeze_graph, write_graph_def

    shutil.copytree(split_dir, directory)
    graph = tf.Graph()
    with graph.as_default():
        emb = v1.placeholder(tf.float32, [None, 8], name="emb")
        score = tf.reduce_sum(emb, axis=1, name="score")
        frozen = freeze_graph(graph, [score], inputs=[emb], read_variable=None)
        write_graph_def(frozen, os.path.join(directory, "online.pb"))
    with open(os.path.join(directory, "manifest.json")) as f:
        manifest = json.load(f)
    manifest["pieces"]["online"] = frozen.manifest_entry("online.pb")
    manifest["cut"] = [{"tensor": "emb:0", "placeholder": "emb:0"}]
    with open(os.path.join(directory, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return directory


@needs_spark
def test_cli_and_serving_from_parquet(spark, split_dir, data, local, tmp_path):
    """`--runner spark --out DIR.parquet`; OnlineServer serves from it as from the local runner's HDF5."""
    from surgery.runners.serve import OnlineServer

    _, parquet, _, _ = data
    out = tmp_path / "emb.parquet"
    r = cli("precompute", split_dir, "--data", parquet, "--key", "features", "--ids", "item_id",
            "--runner", "spark", "--batch-size", BATCH, "--out", out)
    assert r.returncode == 0, r.stderr
    assert os.path.exists(out / "_SUCCESS") and not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    served = _with_online_piece(split_dir, str(tmp_path / "served"))
    ask = ["item-0007", "item-0900", "item-0007"]
    with OnlineServer(served, str(out)) as a, OnlineServer(served, local[0], preload=False) as b:
        assert np.array_equal(a.lookup(ask)["embeddings"], local[1][[7, 900, 7]])
        assert np.array_equal(a.score(ask), b.score(ask))
        assert np.allclose(a.score(ask), local[1][[7, 900, 7]].sum(axis=1))


@needs_spark
def test_a_float16_cut_is_stored_as_its_bits_and_read_back_equal(spark, tmp_path):
    """Spark has no half float: a cut crossing as float16 is stored as smallint bits and read back
    as the local runner's float16 rows, bit for bit; an int8 cut as Spark's tinyint."""
    from nets import trained_classifier

    from surgery import load_model, precompute, split_model, write_split
    from surgery.runners.spark import ParquetTable, run_precompute

    prefix, data = trained_classifier(str(tmp_path))
    for dtype in ("float16", "int8"):
        pieces = str(tmp_path / dtype)
        model = load_model(prefix)
        write_split(model, split_model(model, "hidden", "probs", cut_dtype=dtype, calibration=[f"{data}:x"]), pieces)
        precompute(pieces, data, "test_x", str(tmp_path / f"{dtype}.h5"), batch_size=BATCH)
        out = str(tmp_path / f"{dtype}.parquet")
        run_precompute(pieces, data, "test_x", out, batch_size=BATCH)
        with h5py.File(tmp_path / f"{dtype}.h5", "r") as f:
            expected = f["embeddings"][:]
        got = ParquetTable(out).read_all()["embeddings"]
        assert expected.dtype == got.dtype == np.dtype(dtype) and np.array_equal(got, expected)


@needs_spark
@pytest.mark.parametrize("key,ids,named,uri", [
    ("nope", None, "nope", False),                # missing column (close names suggested)
    ("features", "item_idd", "item_idd", False),  # missing id column
    ("tags", None, "tags", False),                # array<string>
    ("f0,name", None, "name", False),             # a string among the scalar columns
    ("ragged", None, "ragged", False),            # one row longer than the others
    ("nope", None, "nope", True),                 # the same, through Spark's reader
    ("tags", None, "tags", True),
    ("ragged", None, "ragged", True),
])
def test_bad_input_exits_2_naming_the_column(spark, split_dir, data, tmp_path, key, ids, named, uri):
    _, parquet, _, _ = data
    out = tmp_path / "bad.parquet"
    r = cli("precompute", split_dir, "--data", ("file://" if uri else "") + parquet, "--key", key,
            *(["--ids", ids] if ids else []),
            "--runner", "spark", "--out", out)
    assert r.returncode == 2, r.stderr
    assert f"'{named}'" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []  # nothing written, no temporaries


def _command_lines():
    """(pid, raw command line) of every process but this one."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if int(pid) != os.getpid():
            yield int(pid), cmd


def _executor_pids(app_id: str) -> list:
    """This application's executor JVMs (their command line names the app id)."""
    return [pid for pid, cmd in _command_lines()
            if b"org.apache.spark.executor.CoarseGrainedExecutorBackend" in cmd.split(b"\0")
            and app_id.encode() in cmd.split(b"\0")]


@needs_spark
def test_an_executor_killed_mid_job_changes_nothing_and_a_rerun_is_clean(spark, split_dir, data, local, tmp_path,
                                                                      monkeypatch):
    from surgery.runners.spark import SLOW_ENV, ParquetTable, run_precompute

    h5, _, _, _ = data
    monkeypatch.setenv(SLOW_ENV, "0.15")  # 16 blocks a task: a couple of seconds each, time to kill
    out = str(tmp_path / "killed.parquet")
    sc = spark.sparkContext
    done, errors = threading.Event(), []

    def job():
        try:
            run_precompute(split_dir, h5, "x", out, ids="ids", batch_size=BATCH, partitions=6)
        except BaseException as e:
            errors.append(e)
        finally:
            done.set()

    before = _executor_pids(sc.applicationId)
    assert len(before) == 2
    threading.Thread(target=job, daemon=True).start()
    killed = None
    deadline = time.time() + 120
    while not done.is_set() and time.time() < deadline:
        tracker = sc.statusTracker()
        running = [s for s in (tracker.getStageInfo(i) for i in tracker.getActiveStageIds()) if s]
        if running and any(s.numActiveTasks for s in running) and sum(s.numCompletedTasks for s in running) >= 1:
            killed = before[0]
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.05)
    assert killed is not None, "the job ended before an executor could be killed"
    assert done.wait(240) and not errors, errors
    assert killed not in _executor_pids(sc.applicationId)
    assert np.array_equal(ParquetTable(out).read_all()["embeddings"], local[1])

    monkeypatch.setenv(SLOW_ENV, "0")  # a rerun (after a failure too) overwrites cleanly: same rows
    run_precompute(split_dir, h5, "x", out, ids="ids", batch_size=BATCH, partitions=4)
    table = ParquetTable(out)
    assert len(table) == ROWS and np.array_equal(table.read_all()["embeddings"], local[1])
    assert len([p for p in os.listdir(out) if p.endswith(".parquet")]) == 4


def _jvms_named(marker: str) -> list:
    """JVMs whose command line holds `marker` (passed as the app name with --spark-conf)."""
    return [pid for pid, cmd in _command_lines() if marker.encode() in cmd]


@needs_spark
def test_a_fresh_process_starts_spark_beside_tensorflow_and_leaves_no_jvm(split_dir, data, local, tmp_path):
    """`surgery precompute --runner spark` in its own process: the run gives the local runner's rows. A bad GRAPH fails (exit 2, one line) without
    a JVM left behind, and so does a successful run once it has stopped Spark."""
    from surgery.runners.spark import ParquetTable

    _, parquet, _, _ = data
    marker = f"surgery-test-{os.getpid()}-{time.monotonic_ns()}"
    args = ("--data", parquet, "--key", "features", "--ids", "item_id", "--runner", "spark", "--batch-size", BATCH,
            "--spark-master", "local[2]", "--spark-conf", "spark.ui.enabled=false",
            "--spark-conf", f"spark.app.name={marker}")
    r = run_cli("precompute", tmp_path / "no-such-pieces", *args, "--out", tmp_path / "bad.parquet")
    assert r.returncode == 2 and "no-such-pieces" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = run_cli("precompute", split_dir, *args, "--out", tmp_path / "emb.parquet")
    assert r.returncode == 0, r.stderr
    assert np.array_equal(ParquetTable(str(tmp_path / "emb.parquet")).read_all()["embeddings"], local[1])
    deadline = time.time() + 30  # a JVM whose launcher was cut short exits when its stdin pipe closes
    while _jvms_named(marker) and time.time() < deadline:
        time.sleep(0.2)
    assert _jvms_named(marker) == []
    assert sorted(os.listdir(tmp_path)) == ["emb.parquet"]


def _fresh_python(code: str, timeout: int = 300, **env):
    """Run `code` in a fresh interpreter (no JVM, no TensorFlow yet) on this checkout, executors on
    this interpreter."""
    import subprocess

    env = dict(os.environ, PYSPARK_PYTHON=sys.executable,
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)


@needs_spark
def test_the_session_is_the_callers_active_session():
    """Spark keeps the active session per thread, and name lookups (a registered Python data source)
    go through it: the session surgery starts must be the caller's."""
    code = (
        "from pyspark.sql import SparkSession\n"
        "from pyspark.sql.datasource import DataSource, DataSourceWriter, WriterCommitMessage\n"
        "from surgery.runners.spark import spark_session\n"
        "class W(DataSourceWriter):\n"
        "    def write(self, rows): return WriterCommitMessage()\n"
        "class S(DataSource):\n"
        "    @classmethod\n"
        "    def name(cls): return 'counting_sink'\n"
        "    def writer(self, schema, overwrite): return W()\n"
        "with spark_session('local[1]', {'spark.ui.enabled': 'false'}) as spark:\n"
        "    assert SparkSession.getActiveSession() is spark\n"
        "    spark.dataSource.register(S)\n"
        "    spark.range(5).write.format('counting_sink').mode('append').save()\n"
        "print('ok')\n")
    r = _fresh_python(code)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]


@needs_spark
def test_a_spark_run_leaves_nothing_under_home(split_dir, data, tmp_path):
    """Nothing outside OUT and Spark's own temporary files: a run in a fresh interpreter whose HOME
    is an empty folder leaves there only what a bare `import tensorflow` leaves (Keras's config,
    matplotlib's font cache), no class archive or anything else of surgery's or Spark's."""

    def files(home):
        return sorted(os.path.relpath(os.path.join(d, f), home) for d, _, fs in os.walk(home) for f in fs)

    bare, home = tmp_path / "bare", tmp_path / "home"
    bare.mkdir()
    home.mkdir()
    assert _fresh_python("import tensorflow", HOME=str(bare)).returncode == 0
    out = tmp_path / "e.parquet"
    code = ("from surgery.runners.spark import run_precompute\n"
            f"r = run_precompute({str(split_dir)!r}, {data[0]!r}, 'x', {str(out)!r}, master='local[1]',\n"
            "                   conf={'spark.ui.enabled': 'false'})\n"
            "print(r.rows)\n")
    r = _fresh_python(code, HOME=str(home))
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.strip().splitlines()[-1]) > 0 and out.is_dir()
    assert files(home) == files(bare), files(bare)


def test_runner_spark_without_the_extra_says_how_to_install(monkeypatch, split_dir, data, tmp_path):
    monkeypatch.setitem(sys.modules, "pyspark", None)
    r = cli("precompute", split_dir, "--data", data[0], "--key", "x", "--runner", "spark", "--out", tmp_path / "e.h5")
    assert r.returncode == 2
    assert "pip install 'surgery[spark]'" in r.stderr and "Traceback" not in r.stderr
    assert os.listdir(tmp_path) == []


def _corrupt_chunk(path: str, key: str, row: int) -> None:
    """Overwrite the stored bytes of the gzip chunk holding `row`: reading it fails, every other chunk reads."""
    with h5py.File(path, "r") as f:
        info = f[key].id.get_chunk_info_by_coord((row, 0))
    with open(path, "r+b") as f:
        f.seek(info.byte_offset)
        f.write(b"\xff" * info.size)


@needs_spark
def test_a_failed_job_leaves_nothing_and_the_rerun_is_clean(spark, split_dir, data, tmp_path):
    """A chunk of the data file is damaged in the middle: the tasks before it run, the one reading it
    fails (on each attempt), so the job fails: exit 2 naming the file and the rows, OUT untouched,
    no temporary directory. Mend the file and rerun: the local runner's rows."""
    from surgery import precompute
    from surgery.runners.spark import ParquetTable

    with h5py.File(data[0], "r") as f:
        x, ids = f["x"][:], f["ids"][:]
    h5 = str(tmp_path / "data.h5")

    def write(damaged: bool):
        with h5py.File(h5, "w") as f:
            f.create_dataset("x", data=x, chunks=(50, FEATURES), compression="gzip")
            f.create_dataset("ids", data=ids, dtype=h5py.string_dtype())
        if damaged:
            _corrupt_chunk(h5, "x", 400)  # rows 400-449: none of the rows the driver's fingerprint samples

    write(damaged=True)
    out = tmp_path / "out.parquet"
    args = ("precompute", split_dir, "--data", h5, "--key", "x", "--ids", "ids", "--runner", "spark",
            "--batch-size", 16, "--out", out)
    r = cli(*args)
    assert r.returncode == 2 and "data.h5" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("surgery: error") == 1 and re.search(r"rows \d+:\d+ of \S*data\.h5", r.stderr), r.stderr
    assert sorted(os.listdir(tmp_path)) == ["data.h5"]  # no OUT, no temporary directory

    write(damaged=False)
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    precompute(split_dir, h5, "x", str(tmp_path / "local.h5"), batch_size=16)
    with h5py.File(tmp_path / "local.h5", "r") as f:
        assert np.array_equal(ParquetTable(str(out)).read_all()["embeddings"], f["embeddings"][:])


def test_the_code_shipped_to_executors_holds_every_folder_of_the_package():
    """A cluster's executors import surgery from the zip `_ship_code` adds: every module, in its
    folder (after the move into layer folders, the zip once held only one folder)."""
    import zipfile

    from surgery.runners.spark import _ship_code

    class Context:
        def addPyFile(self, path):
            self.path = path

    sc = Context()
    _ship_code(sc)
    names = set(zipfile.ZipFile(sc.path).namelist())
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "surgery")
    expected = {os.path.join("surgery", os.path.relpath(os.path.join(d, f), root))
                for d, _, fs in os.walk(root) for f in fs if f.endswith(".py")}
    assert {"surgery/__init__.py", "surgery/core/graph.py", "surgery/data/open.py",
            "surgery/runners/precompute.py"} <= names
    assert names == expected
