"""Precompute: run an offline piece over a dataset in batches into HDF5, streaming and resumable.

Precomputing is why a graph is split: the heavy offline piece runs once over every row and
its results are stored; requests are then answered by the online piece (`surgery.runners.serve`).

Speed. A read-ahead thread reads batch k+1 and a writer thread stores batch k-1 while the
session runs batch k (bounded queues of two batches each, so memory stays bounded whatever
the dataset size). The graph is fed through `tfcompat.fast_callable`, which skips
`Session.run`'s per-call fetch/feed parsing.

Resumability. Results go to a work file `OUT.partial` beside the target; `OUT` is only ever
written by the final rename, so a finished `OUT` is never corrupted. Every dataset of the work
file is allocated in full when it is created (HDF5 early allocation, no fill, no compression),
so writing a batch never changes HDF5 metadata: a SIGKILL at any moment can only leave raw rows
half written. After each batch is flushed the committed-row counter (`rows_done`, a one-element
dataset rather than an attribute, for the same reason) is written and flushed; a restart with the
same arguments continues from it. The provenance attributes (graph hash, tensors, batch size,
input file/key/rows and a content fingerprint) are compared on restart: a changed graph or input
is refused rather than mixed. At the end `rows_done` is dropped and the work file renamed onto
`OUT` (the deterministic work name is why `files.atomic_path`, which picks a random one, is not
used here).
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import shutil
import threading
import time

import numpy as np

from ..core import tfcompat
from ..core.errors import DataError, OutputError, SurgeryError
from ..core.graph import ancestors, graph_from_def
from ..core.names import parse_list, resolve_tensor, resolve_tensors, split_tensor_name
from ..core.pieces import Piece, open_pieces
from ..data import RowSource, check_feedable, open_ids, open_rows

tf = tfcompat.tf

FORMAT = "surgery-precompute/1"
PROGRESS = "rows_done"  # the committed-row counter dataset of a work file
PARTIAL_SUFFIX = ".partial"
MAX_CHUNK_BYTES = 4 << 20
SLOW_READ_ENV = "SURGERY_PRECOMPUTE_SLOW_READ_S"  # testing: simulate a slow input (seconds per batch)


# ---------------------------------------------------------------- the graph to run

def parse_outputs(spec) -> list[tuple[str, str | None]]:
    """`'fc7=emb,fc6'` → `[('fc7', 'emb'), ('fc6', None)]`."""
    out = []
    for item in parse_list(spec):
        tensor, _, name = item.partition("=")
        out.append((tensor.strip(), name.strip() or None))
    return out


def _dataset_names(tensors: list[str], names: list) -> list[str]:
    """`embeddings` for a single unnamed output; otherwise the given name or the op name."""
    if len(tensors) == 1 and names[0] is None:
        return ["embeddings"]
    result = []
    for t, n in zip(tensors, names):
        if n is None:
            op, idx = split_tensor_name(t)
            n = op.replace("/", "_") + (f"_{idx}" if idx else "")
        if "/" in n or n in ("ids", PROGRESS) or n in result:
            raise SurgeryError(f"output dataset name '{n}' is not usable (a '/', a reserved name or named twice)",
                               "give each output its own plain name: --outputs TENSOR=NAME,..")
        result.append(n)
    return result


def offline_piece(graph, *, inputs=None, outputs=None, set=None) -> tuple[Piece, list[str]]:
    """GRAPH as `precompute` runs it → (a frozen `Piece` fed at exactly one input and fetching the
    outputs, the dataset name to store each output under).

    GRAPH: a split directory (its `offline` piece), a frozen .pb, any MODEL (frozen here with
    values read from its checkpoint), an `open_pieces` result or a `Piece`; `set` binds
    placeholders ({name: value} or `T=VALUE` strings, see `bind.bind`). The digest of a piece
    read from a file is the file's, which `OnlineServer` checks a precomputed file against.
    """
    from ..passes.bind import bind
    from ..passes.freeze import freeze_model
    from ..passes.inspect import likely_outputs

    default_inputs = default_outputs = None
    if isinstance(graph, Piece):
        model, disk = bind(graph.load(), set), graph
        default_inputs, default_outputs = [t.name for t in graph.inputs], [t.name for t in graph.outputs]
    else:
        opened = open_pieces(graph)
        disk = opened.piece("offline") if opened.is_split else None
        if disk is not None:
            default_inputs, default_outputs = [t.name for t in disk.inputs], [t.name for t in disk.outputs]
        model = bind(disk.load() if disk is not None else opened.model(), set)
    output_spec = parse_outputs(outputs)
    where = os.path.abspath(disk.path if disk is not None and disk.path else model.path)
    if model.is_frozen:
        piece = Piece(model.graph_def, source=where,
                      path=None if model.bound_placeholders else model.path)
        graph_ = model.graph
    else:
        wanted = [t for t, _ in output_spec] or default_outputs or [t.name for t in likely_outputs(model)]
        frozen = freeze_model(model, wanted)
        default_outputs = [t.name for t in frozen.outputs]
        piece = Piece(frozen.graph_def, source=where, sha256=disk.sha256 if disk is not None else None)
        graph_ = graph_from_def(piece.graph_def)
    if not output_spec:
        names = default_outputs if default_outputs is not None else [t.name for t in likely_outputs(model)]
        output_spec = [(n, None) for n in names]
    if not output_spec:
        raise SurgeryError(f"{where} has no obvious output", "name the tensors to store with --outputs T[=NAME],..")
    out_tensors = resolve_tensors(graph_, [t for t, _ in output_spec])
    in_tensor = _the_input(graph_, piece.graph_def, out_tensors, inputs, default_inputs, where)
    names = _dataset_names([t.name for t in out_tensors], [n for _, n in output_spec])
    return piece.with_io([in_tensor], out_tensors), names


def _the_input(graph, graph_def, out_tensors, inputs, default_inputs, where: str):
    """The one tensor the data goes into: `--inputs`, else the one non-scalar placeholder (of the
    manifest's, or of those the outputs depend on)."""
    if inputs:
        in_names = parse_list(inputs)
        if len(in_names) != 1:
            raise SurgeryError(f"--inputs names {len(in_names)} tensors; precompute feeds one",
                               "name the one tensor the data goes into")
        return resolve_tensor(graph, in_names[0])
    if default_inputs is None:  # the placeholders the outputs depend on
        needed = ancestors(graph_def, out_tensors)
        default_inputs = [n.name + ":0" for n in graph_def.node if n.name in needed and n.op == "Placeholder"]
    candidates = resolve_tensors(graph, default_inputs)  # a manifest naming what its graph lacks: exit 2
    candidates = [t for t in candidates if t.shape.rank is None or t.shape.rank > 0]  # scalars are settings
    if len(candidates) != 1:
        raise SurgeryError(f"{where} has {len(candidates)} candidate inputs"
                           + (": " + ", ".join(t.name for t in candidates) if candidates else ""),
                           "name the tensor the data goes into with --inputs")
    return candidates[0]


# ---------------------------------------------------------------- running it

def _h5py():
    import h5py

    return h5py


@dataclasses.dataclass
class PrecomputeResult:
    out: str
    rows: int
    resumed_from: int  # rows already committed when this run started
    computed: int  # rows this run computed
    datasets: dict  # {name: {"tensor", "shape", "dtype"}}
    status: str  # "done" or "up to date"


def precompute(graph, data: str, key: str | None, out: str, *, ids: str | None = None, batch_size: int = 256,
               inputs=None, outputs=None, preprocess: str | None = None, set=None,
               progress: bool = False) -> PrecomputeResult:
    """Run GRAPH's offline piece over a dataset into an HDF5 file, in fixed blocks of `batch_size`
    rows, streaming; an interrupted run resumes where it stopped.

    Args:
        graph: a split directory, a `.pb`, any MODEL, an `open_pieces` result or a `Piece`.
        data: an HDF5, `.npy`, TFRecord or image-folder source (`data.open_rows`).
        key: the dataset, feature or column to read rows from.
        out: the `.h5` file to write.
        ids: a key of ids to store alongside (for `.npy` data a second `.npy`; for an image
            folder, any value: its files' relative paths).
        batch_size: rows per block (the same numbers on every runner).
        inputs: the input tensor, when the piece has several.
        outputs: `T[=NAME],..` tensors to store (default: the piece's outputs, as `embeddings`).
        preprocess: `none`, `vgg`, `inception` or `unit` scaling of the rows.
        set: placeholders bound first (`["is_training=false"]`).
        progress: show a progress bar.

    Returns:
        A `PrecomputeResult`: the rows computed and the datasets written.

    Raises:
        DataError: rows that cannot feed the piece (both shapes named), a resume with other options.

    Examples:
        >>> surgery.precompute("pieces/", "data/shapes.h5", "target/x", "fc7.h5", ids="target/ids")
    """
    if batch_size < 1:
        raise SurgeryError(f"--batch-size {batch_size} is not a positive number", "use e.g. --batch-size 256")
    offline, datasets = offline_piece(graph, inputs=inputs, outputs=outputs, set=set)
    spec = offline.inputs[0]
    out = os.path.abspath(out)
    if os.path.isdir(out):
        raise OutputError(f"{out} is a directory", "pass a file name for --out, e.g. --out embeddings.h5")
    source = open_rows(data, None if data.endswith(".npy") else key, spec=spec, preprocess=preprocess)
    id_source = None
    try:
        feed_dtype = check_feedable(source, spec)
        if ids:
            id_source = open_ids(data, ids, source)
        with Runner(offline) as runner:
            probe = runner.run(source.read(0, 1).astype(feed_dtype, copy=False), 0, 1)
            layout = output_layout(offline, datasets, probe)
            provenance = {
                "format": FORMAT, "graph": offline.source, "graph_sha256": offline.sha256,
                "input_tensor": spec.name,
                "output_tensors": json.dumps([o.name for o in offline.outputs]),
                "output_datasets": json.dumps(datasets),
                "batch_size": int(batch_size), "data_file": source.path, "data_key": source.key or "",
                "preprocess": source.preprocess,
                "ids_key": ids or "", "rows": len(source), "data_sha256": source.fingerprint(),
                "ids_sha256": id_source.fingerprint() if id_source else "",
            }
            if not os.path.exists(out + PARTIAL_SUFFIX) and _finished(out, provenance):
                return PrecomputeResult(out, len(source), len(source), 0, layout, "up to date")
            work, done = _open_work_file(out, provenance, layout, id_source, len(source), batch_size)
            try:
                computed = _run_batches(work, runner, source, feed_dtype, layout, done, batch_size, progress)
                _finish(work, out)
            except BaseException as e:
                try:  # keep the work file to resume from; a failed write may leave HDF5 unable to close it
                    if work.id.valid:
                        work.close()
                except Exception:
                    pass
                if isinstance(e, SurgeryError) and os.path.exists(out + PARTIAL_SUFFIX):  # say what was kept
                    e.hint = (f"{e.hint}; " if e.hint else "") + \
                        f"the rows done so far stay in {out}{PARTIAL_SUFFIX}: the same command resumes from them"
                raise
        return PrecomputeResult(out, len(source), done, computed, layout, "done")
    finally:
        source.close()
        if id_source:
            id_source.close()


class Runner:
    """One session over the frozen graph, called through `tfcompat.fast_callable` (TensorFlow's
    `CallableOptions` path): `Session.run`'s per-call feed/fetch parsing would show at small batches."""

    def __init__(self, offline: Piece, *, threads: int | None = None):
        self.graph = graph_from_def(offline.graph_def)
        config = None
        if threads:  # one of several workers sharing the machine's cores (a Spark task's CPUs)
            config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=1)
        self.session = tf.compat.v1.Session(graph=self.graph, config=config)
        self._call = tfcompat.fast_callable(self.session, [offline.inputs[0].name],
                                            [o.name for o in offline.outputs])

    def run(self, x, start: int, stop: int) -> list:
        try:
            return self._call(x)
        except tf.errors.OpError as e:
            msg = (e.message or type(e).__name__).strip().splitlines()[0][:200]
            raise DataError(f"the graph failed on rows {start}:{stop}: {msg}",
                            "check that the data is what the graph expects (shape, range, preprocessing)") from e

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.session.close()


def output_layout(offline: Piece, datasets: list, probe: list) -> dict:
    """{dataset: {tensor, shape, dtype}} of each output, from its value for one row."""
    layout = {}
    for o, dataset, value in zip(offline.outputs, datasets, probe):
        value = np.asarray(value)
        if value.ndim == 0 or value.shape[0] != 1:
            raise DataError(f"output {o.name} gives shape {list(value.shape)} for one row, not one result per row",
                            "store only per-row tensors (a leading batch dimension)")
        layout[dataset] = {"tensor": o.name, "shape": list(value.shape[1:]), "dtype": value.dtype.str}
    return layout


def _read_attrs(h5file) -> dict:
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in h5file.attrs.items()}


def _finished(out: str, provenance: dict) -> bool:
    """True when `out` is a finished file written with exactly this provenance."""
    if not os.path.isfile(out):
        return False
    try:
        with _h5py().File(out, "r") as f:
            return _read_attrs(f) == provenance and PROGRESS not in f
    except OSError:
        return False


def _early_dcpl():
    """Allocate every chunk at creation and never write fill values: later writes touch raw data only."""
    h5py = _h5py()
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return dcpl


def _chunk_rows(batch_size: int, row_bytes: int, rows: int) -> int:
    return max(1, min(batch_size, rows, MAX_CHUNK_BYTES // max(1, row_bytes)))


def _open_work_file(out: str, provenance: dict, layout: dict, id_source, rows: int, batch_size: int):
    """Open `OUT.partial` to resume (refusing another graph's or data's work), or create it."""
    h5py = _h5py()
    work_path = out + PARTIAL_SUFFIX
    if os.path.exists(work_path):
        try:  # read-only first: a refused work file is left exactly as it was
            with h5py.File(work_path, "r") as f:
                found = _read_attrs(f)
            f = h5py.File(work_path, "r+") if found == provenance else None
        except OSError as e:
            raise OutputError(f"the unfinished work file {work_path} cannot be opened: {e}",
                              "delete it to start over") from e
        if f is None:
            diff = sorted(k for k in set(found) | set(provenance) if found.get(k) != provenance.get(k))
            raise DataError(f"{work_path} holds an unfinished run with another "
                            + ", ".join(f"{k} ({_short(found.get(k))} there, {_short(provenance.get(k))} now)"
                                        for k in diff),
                            "rerun with the original graph, data and --batch-size, or delete it to start over")
        if PROGRESS not in f:  # killed between dropping the counter and the rename: it is complete
            return f, rows
        return f, int(f[PROGRESS][0])
    _reserve_space(work_path, _estimate_bytes(layout, id_source, rows))
    try:
        f = h5py.File(work_path, "w")
    except OSError as e:
        raise OutputError(f"cannot write {work_path}: {getattr(e, 'strerror', None) or e}",
                          "choose a writable output location") from e
    try:
        for name, spec in layout.items():
            dtype = np.dtype(spec["dtype"])
            row_bytes = int(np.prod(spec["shape"], dtype=np.int64)) * dtype.itemsize
            d = f.create_dataset(name, shape=(rows, *spec["shape"]), dtype=dtype, dcpl=_early_dcpl(),
                                 chunks=(_chunk_rows(batch_size, row_bytes, rows), *spec["shape"]))
            d.attrs["tensor"] = spec["tensor"]
        if id_source is not None:
            text = id_source.dtype.kind in "UO"  # numpy unicode, Python strings: HDF5 stores them as UTF-8
            d = f.create_dataset("ids", shape=id_source.shape, dtype=h5py.string_dtype() if text else id_source.dtype,
                                 chunks=(min(rows, 1 << 16), *id_source.shape[1:]))
            step = 1 << 16
            for s in range(0, rows, step):
                block = id_source.read(s, min(rows, s + step))
                d[s:s + step] = block.astype(object) if text else block
        f.create_dataset(PROGRESS, shape=(1,), dtype=np.int64, chunks=(1,), dcpl=_early_dcpl())[0] = 0
        f.attrs.update(provenance)
        f.flush()
    except BaseException as e:
        try:
            f.close()
        except Exception:
            pass
        os.remove(work_path)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {work_path}: {getattr(e, 'strerror', None) or e}",
                              "free some space or choose a writable output location") from e
        raise
    return f, 0


def _short(value) -> str:
    """A provenance value as a person reads it: hashes cut to 12 characters, long paths to their tail."""
    text = str(value)
    return text[:12] + "…" if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else \
        ("…" + text[-40:] if len(text) > 48 else text)


def _estimate_bytes(layout: dict, id_source, rows: int) -> int:
    """The work file's size: every output row, the ids, and a generous allowance for HDF5's metadata."""
    row_bytes = sum(int(np.prod(s["shape"], dtype=np.int64)) * np.dtype(s["dtype"]).itemsize for s in layout.values())
    if id_source is not None:
        id_row = int(np.prod(id_source.shape[1:], dtype=np.int64))
        row_bytes += id_row * (48 if id_source.dtype.kind in "OU" else id_source.dtype.itemsize)
    return rows * row_bytes + (1 << 20)


def _reserve_space(path: str, nbytes: int) -> None:
    """Allocate `nbytes` at `path` and let it go again: a full disk, a quota or a file-size limit is
    refused here, in plain Python, before HDF5 writes a byte (a write that fails inside HDF5 can
    leave the library unable to close the file)."""
    from ..passes.inspect import human_bytes

    parent = os.path.dirname(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as e:
        raise OutputError(f"cannot write to {parent}: {e.strerror}", "choose a writable output location") from e
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, nbytes)
        elif shutil.disk_usage(parent).free < nbytes:
            raise OSError(28, "No space left on device")
    except OSError as e:
        os.close(fd)
        os.remove(path)
        raise OutputError(f"cannot write {path}: it needs {human_bytes(nbytes)} and {parent} refuses ({e.strerror})",
                          "free some space or write elsewhere") from e
    os.close(fd)


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            pass
    return False


def _items(q: queue.Queue, stop: threading.Event, count: int):
    """Up to `count` items from `q`, ending early once `stop` is set."""
    for _ in range(count):
        while True:
            if stop.is_set():
                return
            try:
                item = q.get(timeout=0.1)
                break
            except queue.Empty:
                pass
        yield item


def _run_batches(work, runner: Runner, source: RowSource, feed_dtype, layout: dict, done: int, batch_size: int,
                 progress: bool) -> int:
    """Read-ahead thread → session (this thread) → writer thread, two batches in flight each way."""
    rows = len(source)
    spans = [(s, min(rows, s + batch_size)) for s in range(done, rows, batch_size)]
    if not spans:
        return 0
    datasets = [work[name] for name in layout]
    counter = work[PROGRESS]
    stop = threading.Event()
    errors: list = []
    to_run: queue.Queue = queue.Queue(2)
    to_write: queue.Queue = queue.Queue(2)
    delay = float(os.environ.get(SLOW_READ_ENV, "0") or 0)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=rows, initial=done, unit="rows", unit_scale=True, desc="precompute", smoothing=0.1)

    def reader():
        try:
            for start, stop_row in spans:
                x = source.read(start, stop_row)
                if x.dtype != feed_dtype:
                    x = x.astype(feed_dtype)
                if delay:
                    time.sleep(delay)
                if not _put(to_run, (start, stop_row, x), stop):
                    return
        except BaseException as e:
            errors.append(DataError(f"cannot read rows {start}:{stop_row} of {source.path}: {e}",
                                    "check the data file") if isinstance(e, OSError) else e)
            stop.set()

    def writer():
        try:
            for start, stop_row, results in _items(to_write, stop, len(spans)):
                for d, r in zip(datasets, results):
                    d[start:stop_row] = r
                work.flush()  # the rows are in the file before the counter says so
                counter[0] = stop_row
                work.flush()
                if bar is not None:
                    bar.update(stop_row - start)
        except BaseException as e:
            errors.append(OutputError(f"cannot write {work.filename}: {getattr(e, 'strerror', None) or e}",
                                      "free some space or choose a writable output location; "
                                      "rerun the same command to resume") if isinstance(e, OSError) else e)
            stop.set()

    threads = [threading.Thread(target=reader, daemon=True), threading.Thread(target=writer, daemon=True)]
    for t in threads:
        t.start()
    try:
        for start, stop_row, x in _items(to_run, stop, len(spans)):
            if not _put(to_write, (start, stop_row, runner.run(x, start, stop_row)), stop):
                break
    except BaseException as e:
        errors.append(e)
        stop.set()
    finally:
        threads[1].join()  # the writer finishes what was handed to it, or stops once `stop` is set
        stop.set()
        threads[0].join()
        if bar is not None:
            bar.close()
    if errors:
        raise errors[0]
    return rows - done


def _finish(work, out: str) -> None:
    """Drop the counter and rename the work file onto `out`. Like `files.atomic_path`, this guards
    against a killed process, not a power cut (no fsync: it would cost as much as a tenth of a run)."""
    work_path = work.filename
    try:
        if PROGRESS in work:
            del work[PROGRESS]
        work.close()
        os.replace(work_path, out)
    except OSError as e:
        raise OutputError(f"cannot move {work_path} onto {out}: {e.strerror or e}",
                          "check the output location; rerun the same command to finish") from e


__all__ = ["PrecomputeResult", "offline_piece", "parse_outputs", "precompute"]
