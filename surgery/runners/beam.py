"""Precompute on Apache Beam: the offline piece over a dataset too big for one machine.

Beam is the engine people already run TensorFlow batch work on; the same pipeline runs
locally on the DirectRunner and at scale on Dataflow, Flink or Spark (options only). This
module builds that pipeline; `pip install 'surgery[beam]'` brings apache-beam.

    rows ─► shards (start, stop) ─► blocks of batch_size rows, read inside the worker
         ─► RunInference(frozen GraphDef handler) ─► group by shard ─► one HDF5 per shard
         ─► index.json (written last) ─► ShardedTable / merge_shards

Determinism. TensorFlow's CPU kernels do not give bit-identical rows when the batch around a
row changes (a matmul over 1 row and over 999 rows differ in the last bits), and Beam's
batching depends on bundle boundaries, i.e. on the number of workers. So the unit handed to
TensorFlow is a fixed block: rows [k·batch_size, (k+1)·batch_size) of the global row grid,
exactly as a plain `for start in range(0, n, batch_size)` loop feeds them. Beam batches
*blocks* (the handler's batching kwargs) to amortise per-element overhead, and the handler
runs each block on its own. Shards start on that grid, are written under a name made of their
row range (a retried bundle overwrites the same file, atomically), and are merged in row order:
the merged file is byte-identical whatever the number of workers.

Restart safety. Each shard file appears only once complete (temporary name + rename); a rerun
with the same plan skips shards already on disk; a changed plan (graph, data, batch size)
clears them first.
"""

from __future__ import annotations

import bisect
import glob
import json
import os

import numpy as np

from ..core.errors import DataError, ModelLoadError, SurgeryError
from ..core.files import atomic_path, write_text
from ..core.pieces import Piece, open_pieces
from ..data import RowsWithIds, rows_with_ids
from ..data import write_dataset as _write_dataset

INSTALL = "pip install 'surgery[beam]'"
INDEX_FORMAT = "surgery-shards/1"
INDEX_FILE = "index.json"
PLAN_FILE = "plan.json"
DEFAULT_ROWS_PER_SHARD = 16384

try:  # optional: the table reader and merge work without Beam
    import apache_beam as beam
    from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference
except ImportError:  # pragma: no cover - exercised by the no-extra test through require_beam
    beam = None
    ModelHandler = object


class BeamNotInstalledError(SurgeryError):
    """`--runner beam` without the optional extra."""


def require_beam():
    """Import apache_beam now (not at module import), or say how to install it."""
    try:
        import apache_beam
    except ImportError as e:
        raise BeamNotInstalledError("apache-beam is not installed, so --runner beam cannot run",
                                    f"install the extra: {INSTALL}") from e
    return apache_beam


# ---------------------------------------------------------------- the graph to run

def resolve_graph(graph, *, inputs: str | None = None, outputs=None) -> tuple[Piece, tuple]:
    """GRAPH (a split directory's offline piece, or a frozen .pb/.pbtxt) → (the offline `Piece` as
    it lies on disk, fed and fetched where `precompute` would, the dataset name of each output).

    Resolution (defaults, `T=NAME`, dataset names, the graph's sha256) is the local runner's own
    `precompute.offline_piece`, so both runners store the same datasets for the same arguments.
    Workers load the graph from its file, so GRAPH must be one on disk; the piece returned holds
    only its path, so that shipping it to workers does not ship the graph.
    """
    from .precompute import offline_piece

    opened = open_pieces(graph)
    offline, datasets = offline_piece(opened, inputs=inputs, outputs=outputs)
    if not str(offline.source).endswith((".pb", ".pbtxt")) and not opened.is_split:
        raise ModelLoadError(f"{graph} is neither a split directory nor a frozen .pb",
                             "for --runner beam pass the directory written by `surgery split` or a "
                             "`surgery freeze` .pb")
    on_disk = Piece(inputs=offline.inputs, outputs=offline.outputs, name="offline", path=offline.source,
                    format="savedmodel" if os.path.isdir(offline.source) else "frozen", sha256=offline.sha256)
    return on_disk, tuple(datasets)


def _fetches(piece: Piece, datasets) -> list:
    """[{tensor, name, dtype, shape}]: each output and the dataset it is stored under (plan and index form)."""
    return [{"tensor": o.name, "name": d, "dtype": o.dtype, "shape": o.as_dict()["shape"]}
            for o, d in zip(piece.outputs, datasets)]


# ---------------------------------------------------------------- sharded inputs

# The row-range reader with ids that every runner shares lives in `data` (Spark uses it without Beam).
RowsSource = RowsWithIds


def HDF5Source(path: str, key: str, ids_key: str | None = None, **kw) -> RowsSource:
    """Rows of dataset `key` in an HDF5 file (ids from dataset `ids_key`)."""
    return RowsSource(path, key, ids_key, **kw)


def NpySource(path: str, ids_path: str | None = None, **kw) -> RowsSource:
    """Rows of a `.npy` array, memory-mapped (ids from a second `.npy` of the same length)."""
    return RowsSource(path, None, ids_path, **kw)


def TFRecordSource(pattern: str, feature: str, ids_feature: str | None = None, **kw) -> RowsSource:
    """Feature `feature` of the `tf.train.Example`s in TFRecord files (a path or glob); shards never cross files."""
    return RowsSource(pattern, feature, ids_feature, **kw)


source_for = rows_with_ids  # the CLI's --data/--key/--ids as a source


def shard_ranges(source, *, rows_per_shard: int, batch_size: int) -> list:
    """[(start, stop)] covering every row; starts on the batch grid (and, for TFRecord, within a file)."""
    size = max(batch_size, -(-rows_per_shard // batch_size) * batch_size)
    bounds = getattr(source, "boundaries", lambda: [0, source.num_rows])()
    out = []
    for lo, hi in zip(bounds, bounds[1:]):
        out.extend((s, min(s + size, hi)) for s in range(lo, hi, size))
    return out


def shard_file(start: int, stop: int) -> str:
    """The shard's file name: its row range, so a retry or rerun overwrites, never duplicates."""
    return f"shard-{start:012d}-{stop:012d}.h5"


# ---------------------------------------------------------------- Beam parts

class FrozenGraphModelHandler(ModelHandler):
    """RunInference handler for a frozen GraphDef: examples are row blocks, predictions tuples of arrays.

    RunInference loads the model through `load_model` once per worker process and shares it across
    that process's threads (Beam's `shared.Shared`); a `tf.compat.v1.Session` is thread-safe.
    Beam batches blocks (`batch_elements_kwargs`); each block is run on its own (see module doc).
    """

    def __init__(self, graph_file: str, input_name: str, output_names, *, max_blocks_per_batch: int = 8):
        try:
            super().__init__()
        except TypeError:  # older Beam: ModelHandler has no __init__ arguments at all
            pass
        self.graph_file, self.input_name = graph_file, input_name
        self.output_names = list(output_names)
        self.max_blocks_per_batch = max_blocks_per_batch

    def load_model(self):
        from ..core import tfcompat
        from ..core.graph import graph_from_def, read_graph_def

        if os.path.isdir(self.graph_file):  # a split's SavedModel piece, variables restored
            from ..passes.savedmodel import load_session

            return load_session(self.graph_file)
        return tfcompat.tf.compat.v1.Session(graph=graph_from_def(read_graph_def(self.graph_file)))

    def run_inference(self, batch, model, inference_args=None):
        return [PredictionResult(None, tuple(model.run(self.output_names, {self.input_name: block})))
                for block in batch]

    def get_num_bytes(self, batch) -> int:
        return sum(block.nbytes for block in batch)

    def get_metrics_namespace(self) -> str:
        return "surgery_precompute"

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": self.max_blocks_per_batch}


def _read_blocks(shard, source, shard_dir: str, batch_size: int):
    """(start, stop) → ((start, stop, block_start), rows) for every block, read here in the worker.
    A shard already on disk (a rerun) yields nothing."""
    start, stop = shard
    if os.path.exists(os.path.join(shard_dir, shard_file(start, stop))):
        return
    rows = source.read(start, stop)
    for b in range(0, stop - start, batch_size):
        yield (start, stop, start + b), rows[b:b + batch_size]


def _write_shard(item, source, piece: Piece, datasets, shard_dir: str) -> dict:
    """All blocks of one shard, in row order, into `shard_dir/shard-START-STOP.h5` (atomically)."""
    import h5py

    (start, stop), blocks = item
    blocks = sorted(blocks, key=lambda b: b[0])
    path = os.path.join(shard_dir, shard_file(start, stop))
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for i, name in enumerate(datasets):
                _write_dataset(f, name, np.concatenate([b[1][i] for b in blocks]))
            ids = source.read_ids(start, stop)
            if ids is not None:
                _write_dataset(f, "ids", np.asarray(ids))
            f.attrs["graph_sha256"] = piece.sha256
            f.attrs["rows"] = [start, stop]
    return {"file": os.path.basename(path), "start": start, "stop": stop}


def precompute_transform(graph, source, shard_dir: str, *, inputs: str | None = None, outputs=None,
                         batch_size: int = 256, max_blocks_per_batch: int = 8):
    """A PTransform: PCollection of (start, stop) shard ranges → PCollection of the index path.

    Embed it in your own pipeline; `graph` is what `resolve_graph` takes or returns (resolved
    now, in the driver). Ranges come from `shard_ranges(source, ...)` so that they start on the batch grid.
    The output holds one element, the index file, written after every shard.
    """
    require_beam()
    piece, datasets = graph if isinstance(graph, tuple) else resolve_graph(graph, inputs=inputs, outputs=outputs)
    if hasattr(source, "bind"):
        source.bind(piece.inputs[0])
    shard_dir = os.path.abspath(shard_dir)
    handler = KeyedModelHandler(FrozenGraphModelHandler(
        piece.path, piece.inputs[0].name, [o.name for o in piece.outputs],
        max_blocks_per_batch=max_blocks_per_batch))

    @beam.ptransform_fn
    def _precompute(ranges):
        shards = ranges | "AllShards" >> beam.combiners.ToList()
        written = (ranges
                   | "ReadBlocks" >> beam.FlatMap(_read_blocks, source, shard_dir, batch_size)
                   | "RunInference" >> RunInference(handler)
                   | "KeyByShard" >> beam.Map(lambda kv: ((kv[0][0], kv[0][1]), (kv[0][2], kv[1].inference)))
                   | "GroupByShard" >> beam.GroupByKey()
                   | "WriteShard" >> beam.Map(_write_shard, source, piece, datasets, shard_dir)
                   | "CountWritten" >> beam.combiners.Count.Globally())
        return (shards | "WriteIndex" >> beam.Map(
            lambda all_shards, _count: write_index(shard_dir, piece, datasets, source, batch_size, all_shards),
            beam.pvalue.AsSingleton(written)))

    return _precompute()


def write_index(shard_dir: str, piece: Piece, names, source, batch_size: int, shards) -> str:
    """Write `shard_dir/index.json` from every shard on disk; refuses while a shard is missing."""
    import h5py

    shards = sorted((int(a), int(b)) for a, b in shards)
    missing = [shard_file(a, b) for a, b in shards if not os.path.exists(os.path.join(shard_dir, shard_file(a, b)))]
    if missing:
        raise SurgeryError(f"{len(missing)} shard(s) missing in {shard_dir}, e.g. {missing[0]}",
                           "run the pipeline again: finished shards are kept")
    datasets, ids = [], None
    if shards:
        with h5py.File(os.path.join(shard_dir, shard_file(*shards[0])), "r") as f:
            for out in _fetches(piece, names):
                d = f[out["name"]]
                datasets.append({"name": out["name"], "tensor": out["tensor"], "dtype": str(d.dtype),
                                 "shape": [None, *d.shape[1:]]})
            if "ids" in f:
                ids = {"name": "ids", "dtype": "string" if h5py.check_string_dtype(f["ids"].dtype) else str(f["ids"].dtype)}
    index = {"format": INDEX_FORMAT, "graph": piece.path, "graph_sha256": piece.sha256,
             "input": piece.inputs[0].as_dict(), "source": source.describe(), "batch_size": batch_size,
             "num_rows": sum(b - a for a, b in shards), "datasets": datasets, "ids": ids,
             "shards": [{"file": shard_file(a, b), "start": a, "stop": b} for a, b in shards]}
    path = os.path.join(shard_dir, INDEX_FILE)
    write_text(path, json.dumps(index, indent=2) + "\n")
    return path


def _pipeline_options(runner: str, beam_options) -> object:
    """`{'k': 'v'}` or `['k=v', ...]` → PipelineOptions(['--runner=...', '--k=v', ...])."""
    from apache_beam.options.pipeline_options import PipelineOptions

    items = list(beam_options.items()) if isinstance(beam_options, dict) else []
    for opt in ([] if isinstance(beam_options, dict) else (beam_options or [])):
        if "=" not in opt:
            raise SurgeryError(f"--beam-option '{opt}' is not K=V", "e.g. --beam-option direct_num_workers=2")
        items.append(tuple(opt.split("=", 1)))
    flags = {k.lstrip("-"): str(v) for k, v in items}
    flags.setdefault("runner", runner)
    flags.setdefault("default_sdk_harness_log_level", "WARNING")  # worker INFO lines drown the progress
    return PipelineOptions([f"--{k}={v}" for k, v in flags.items()])


def run_precompute(graph, source, shard_dir: str, *, inputs: str | None = None, outputs=None,
                   batch_size: int = 256, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
                   runner: str = "DirectRunner", beam_options=None) -> str:
    """Run the offline piece over `source` on Beam into `shard_dir`; returns the index path.

    A rerun with the same plan resumes (shards on disk are kept); another plan starts afresh.
    """
    require_beam()
    if batch_size < 1 or rows_per_shard < 1:
        raise SurgeryError("batch size and rows per shard must be positive", "e.g. --batch-size 256")
    options = _pipeline_options(runner, beam_options)
    piece, datasets = graph if isinstance(graph, tuple) else resolve_graph(graph, inputs=inputs, outputs=outputs)
    if hasattr(source, "bind"):
        source.bind(piece.inputs[0])
    ranges = shard_ranges(source, rows_per_shard=rows_per_shard, batch_size=batch_size)
    _start_plan(shard_dir, {"graph_sha256": piece.sha256, "input": piece.inputs[0].as_dict(),
                            "outputs": _fetches(piece, datasets),
                            "source": source.describe(), "batch_size": batch_size, "shards": ranges})
    with beam.Pipeline(options=options) as p:
        _ = (p | "Shards" >> beam.Create(ranges)
             | "Precompute" >> precompute_transform((piece, datasets), source, shard_dir,
                                                                 batch_size=batch_size))
    return os.path.join(os.path.abspath(shard_dir), INDEX_FILE)


def _start_plan(shard_dir: str, plan: dict) -> None:
    """Keep shards written under the same plan (resume); clear them when anything changed."""
    os.makedirs(shard_dir, exist_ok=True)
    path = os.path.join(shard_dir, PLAN_FILE)
    text = json.dumps(plan, indent=2, sort_keys=True) + "\n"
    try:
        with open(path) as f:
            same = f.read() == text
    except OSError:
        same = False
    if os.path.exists(os.path.join(shard_dir, INDEX_FILE)):
        os.remove(os.path.join(shard_dir, INDEX_FILE))
    if not same:
        for old in glob.glob(os.path.join(shard_dir, "shard-*.h5")):
            os.remove(old)
        write_text(path, text)


# ---------------------------------------------------------------- reading the result

class ShardedTable:
    """The shards an index names, read as one table: `read_all()`, `rows(a, b)`, `lookup(ids)`."""

    def __init__(self, index_path: str):
        if os.path.isdir(index_path):
            index_path = os.path.join(index_path, INDEX_FILE)
        try:
            with open(index_path) as f:
                self.index = json.load(f)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read shard index {index_path}: {e}",
                            "pass the index.json written by run_precompute (written last: the run may not have finished)") from e
        if self.index.get("format") != INDEX_FORMAT:
            raise DataError(f"{index_path} is not a {INDEX_FORMAT} index", "pass the index.json of a Beam precompute")
        self.directory = os.path.dirname(os.path.abspath(index_path))
        self.shards = sorted(self.index["shards"], key=lambda s: s["start"])
        self.names = [d["name"] for d in self.index["datasets"]]
        self._starts = [s["start"] for s in self.shards]
        self._id_rows = None

    def __len__(self) -> int:
        return self.index["num_rows"]

    def _read(self, shard, names, lo=None, hi=None) -> dict:
        import h5py

        with h5py.File(os.path.join(self.directory, shard["file"]), "r") as f:
            return {n: f[n][lo:hi] for n in names}

    def rows(self, start: int, stop: int, names=None) -> dict:
        """Rows [start, stop) of each dataset (default: every output and `ids`)."""
        names = names or self.names + (["ids"] if self.index["ids"] else [])
        parts = []
        for s in self.shards[max(0, bisect.bisect_right(self._starts, start) - 1):]:
            if s["start"] >= stop:
                break
            parts.append(self._read(s, names, max(start, s["start"]) - s["start"], min(stop, s["stop"]) - s["start"]))
        return {n: np.concatenate([p[n] for p in parts]) if parts else np.empty((0,)) for n in names}

    def read_all(self, names=None) -> dict:
        return self.rows(0, len(self), names)

    def lookup(self, ids, names=None) -> dict:
        """The rows whose id is in `ids`, in the order given; an unknown id is a `DataError`."""
        if not self.index["ids"]:
            raise DataError(f"{self.directory} was written without ids", "precompute again with --ids KEY")
        if self._id_rows is None:
            all_ids = self.read_all(["ids"])["ids"]
            self._id_rows = {_id_key(v): i for i, v in enumerate(all_ids)}
        try:
            wanted = [self._id_rows[_id_key(v)] for v in ids]
        except KeyError as e:
            raise DataError(f"id {e.args[0]!r} is not in {self.directory}", "look up ids that were precomputed") from e
        names = names or self.names
        wanted = np.asarray(wanted, dtype=np.int64)
        where, parts = [], []
        for shard in self.shards:  # each shard holding a wanted row is opened once
            hit = np.flatnonzero((wanted >= shard["start"]) & (wanted < shard["stop"]))
            if len(hit):
                part = self._read(shard, names)
                where.append(hit)
                parts.append({n: part[n][wanted[hit] - shard["start"]] for n in names})
        if not parts:
            return {n: np.empty((0,)) for n in names}
        order = np.argsort(np.concatenate(where), kind="stable")
        return {n: np.concatenate([p[n] for p in parts])[order] for n in names}


def _id_key(v):
    v = v.item() if isinstance(v, np.generic) else v
    return v.decode() if isinstance(v, bytes) else v


def merge_shards(index_path: str, out_h5: str) -> str:
    """One HDF5 with each output dataset (and `ids`) in row order, like the local precompute writes.

    Shards are copied in row order into preallocated datasets, so the file's bytes depend only on
    the data, never on which worker wrote which shard.
    """
    import h5py

    table = ShardedTable(index_path)
    names = table.names + (["ids"] if table.index["ids"] else [])
    with atomic_path(out_h5) as tmp:
        with h5py.File(tmp, "w") as out:
            for shard in table.shards:
                part = table._read(shard, names)
                for n in names:
                    if n not in out:
                        dtype = h5py.string_dtype() if h5py.check_string_dtype(part[n].dtype) else part[n].dtype
                        out.create_dataset(n, shape=(len(table), *part[n].shape[1:]), dtype=dtype)
                    out[n][shard["start"]:shard["stop"]] = part[n]
            out.attrs["graph_sha256"] = table.index["graph_sha256"]
    return out_h5


__all__ = ["resolve_graph", "RowsSource", "HDF5Source", "NpySource", "TFRecordSource", "source_for", "shard_ranges",
           "FrozenGraphModelHandler", "precompute_transform", "run_precompute", "write_index",
           "ShardedTable", "merge_shards", "require_beam", "BeamNotInstalledError", "INSTALL"]
