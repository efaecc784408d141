"""Load any model form people hold into one `Model`: a graph plus where its weights live.

Accepted: a checkpoint prefix (`dir/model.ckpt-1000`), its `.meta` file, a checkpoint
directory (latest checkpoint), a frozen GraphDef (`.pb` binary or `.pbtxt` text), or a
SavedModel directory (TF1, or TF2/Keras: object-based, functions + resource variables;
its serving signature is flattened into one graph with named variables, see `tf2.py`).
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import glob
import logging
import os
import re

import numpy as np

from . import tfcompat
from .errors import ModelLoadError, SurgeryError
from .names import VARIABLE_OP_TYPES

tf = tfcompat.tf

# False while `parse_model` runs: the protos are read but never handed to TensorFlow.
_IMPORT_GRAPHS = contextvars.ContextVar("import_graphs", default=True)

FORMAT_DESCRIPTIONS = {
    "checkpoint": "checkpoint prefix (.meta graph + checkpoint weights)",
    "meta_graph": ".meta graph (weights from the checkpoint beside it)",
    "checkpoint_dir": "checkpoint directory (latest checkpoint)",
    "frozen_pb": "frozen GraphDef (binary .pb, weights are constants)",
    "frozen_pbtxt": "frozen GraphDef (text .pbtxt, weights are constants)",
    "saved_model": "SavedModel (TF1 graph)",
    "saved_model_tf2": "SavedModel (TF2/Keras: functions + resource variables)",
}


@dataclasses.dataclass(frozen=True)
class VariableInfo:
    name: str  # op name in the graph
    dtype: str
    shape: tuple  # ints, None for unknown dims
    op_type: str

    @property
    def num_elements(self) -> int:
        return int(np.prod([d or 0 for d in self.shape])) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.num_elements * tf.as_dtype(self.dtype).size


@dataclasses.dataclass
class Model:
    """A loaded model. `graph` is a fresh `tf.Graph` the caller may extend; the files are never touched.

    `checkpoint` is the prefix that holds variable values (None for a frozen graph, or a
    `.meta` file with no checkpoint beside it).
    """

    path: str
    format: str
    graph: object
    graph_def: object
    meta_graph_def: object = None
    checkpoint: str | None = None
    signature_defs: dict = dataclasses.field(default_factory=dict)
    # {variable op name: checkpoint key} where the checkpoint is object-based (TF2 SavedModel).
    variable_keys: dict | None = None
    _reader_cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def description(self) -> str:
        return FORMAT_DESCRIPTIONS[self.format]

    @property
    def is_frozen(self) -> bool:
        return self.format in ("frozen_pb", "frozen_pbtxt")

    def variables(self) -> list[VariableInfo]:
        """Every variable node of the graph (ref and resource), in graph order.

        A TF2 SavedModel flattened by `flatten_tf2` has one variable op per variable. One that
        could not be flattened (no signature) holds each variable several times (one handle per
        traced function); the object graph names the real ones, so only those are listed.
        """
        real = None
        if self.format == "saved_model_tf2" and self.variable_keys is None:
            real = {n.variable.name for n in self.meta_graph_def.object_graph_def.nodes
                    if n.WhichOneof("kind") == "variable"}
        out = []
        for node in self.graph_def.node:
            if node.op in VARIABLE_OP_TYPES and (real is None or node.name in real):
                dtype = tf.as_dtype(node.attr["dtype"].type).name
                shape = tuple(None if d.size < 0 else d.size for d in node.attr["shape"].shape.dim)
                out.append(VariableInfo(node.name, dtype, shape, node.op))
        return out

    def checkpoint_reader(self):
        if not self.checkpoint:
            raise ModelLoadError(
                f"{self.path} has no checkpoint with variable values",
                "pass the checkpoint prefix (or its directory) instead of the graph alone",
            )
        return tfcompat.checkpoint_reader(self.checkpoint)

    def checkpoint_keys(self) -> dict[str, str]:
        """Map each variable op name to the checkpoint key holding its value.

        TF1 savers store a variable under its op name unless a `var_list` dict said
        otherwise; the saver's own restore ops record the real mapping, so read it there.
        A flattened TF2 SavedModel's keys are object paths (`variables/0/.ATTRIBUTES/VARIABLE_VALUE`),
        so a Saver restores it with `Saver({keys[v.op.name]: v for v in variables})`.
        """
        if self.variable_keys is not None:
            return dict(self.variable_keys)
        keys = {v.name: v.name for v in self.variables()}
        keys.update(_saver_mapping(self.graph_def))
        return keys

    def read_variable(self, name: str) -> np.ndarray:
        """The value of variable `name` from this model's checkpoint (reader and keys opened once)."""
        if "reader" not in self._reader_cache:
            self._reader_cache.update(reader=self.checkpoint_reader(), keys=self.checkpoint_keys())
        key = self._reader_cache["keys"].get(name, name)
        reader = self._reader_cache["reader"]
        if not reader.has_tensor(key):
            raise ModelLoadError(
                f"variable '{name}' has no value in checkpoint {self.checkpoint} (key '{key}')",
                "restore it from another source with `surgery restore`",
            )
        return reader.get_tensor(key)

    def saver(self):
        """A `tf.compat.v1.train.Saver` over the graph's variables, keyed as this model's checkpoint
        stores them (TF1 names, remapped names, or a TF2 SavedModel's object paths), so
        `model.saver().restore(sess, model.checkpoint)` works for every format.
        Only the variables the loaded graph came with: a head spliced on later is not looked for."""
        keys = self.checkpoint_keys()
        own = {v.name for v in self.variables()}
        with self.graph.as_default():
            variables = [v for v in tf.compat.v1.global_variables() if v.op.name in own]
            return tf.compat.v1.train.Saver({keys.get(v.op.name, v.op.name): v for v in variables})


def _saver_mapping(graph_def) -> dict[str, str]:
    """{variable op name: checkpoint key} read off the graph's RestoreV2 → Assign ops."""
    nodes = {n.name: n for n in graph_def.node}
    mapping = {}
    restores = [n for n in graph_def.node if n.op == "RestoreV2"]
    if not restores:
        return mapping
    consumers: dict[str, list] = {}
    for n in graph_def.node:
        for i, inp in enumerate(n.input):
            consumers.setdefault(inp.lstrip("^"), []).append((n, i))
    for r in restores:
        names_node = nodes.get(r.input[1].split(":")[0])
        if names_node is None or names_node.op != "Const":
            continue
        keys = [k.decode() for k in tf.make_ndarray(names_node.attr["value"].tensor).ravel()]
        for i, key in enumerate(keys):
            out = r.name if i == 0 else f"{r.name}:{i}"
            for cons, slot in consumers.get(out, []) + (consumers.get(r.name + ":0", []) if i == 0 else []):
                while cons.op == "Identity" and consumers.get(cons.name):
                    cons, slot = consumers[cons.name][0]
                if cons.op in ("Assign", "AssignVariableOp") and slot == 1:
                    var = cons.input[0].split(":")[0]
                    while var in nodes and nodes[var].op == "Identity":
                        var = nodes[var].input[0].split(":")[0]
                    mapping[var] = key
    return mapping


def load_model(path: str, *, tag_set: str = "serve") -> Model:
    """Load MODEL from any of the accepted forms; `ModelLoadError` names the problem."""
    path = os.fspath(path)
    if not os.path.exists(path) and not os.path.exists(path + ".index") and not os.path.exists(path + ".meta"):
        raise ModelLoadError(f"no such file or directory: {path}", _close_paths_hint(path))
    if os.path.isdir(path):
        if _saved_model_file(path):
            return _load_saved_model(path, tag_set)
        prefix = _latest_checkpoint(path)
        if prefix is None:
            raise ModelLoadError(
                f"{path} holds no model (no saved_model.pb, no checkpoint, no .meta)",
                "pass a checkpoint prefix, a .meta, a .pb or a SavedModel directory",
            )
        return _load_checkpoint(prefix, path, "checkpoint_dir")
    base = os.path.basename(path)
    if base in ("saved_model.pb", "saved_model.pbtxt"):
        return _load_saved_model(os.path.dirname(path) or ".", tag_set)
    if path.endswith(".meta"):
        prefix = path[: -len(".meta")]
        return _load_checkpoint(prefix if os.path.exists(prefix + ".index") else None, path, "meta_graph", meta=path)
    if path.endswith(".pbtxt"):
        return _load_frozen(path, text=True)
    if path.endswith(".pb"):
        return _load_frozen(path, text=False)
    for suffix in (".index", ".data-00000-of-00001"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
    if ".data-" in os.path.basename(path):
        path = path[: path.rindex(".data-")]
    if os.path.exists(path + ".index") or os.path.exists(path + ".meta"):
        return _load_checkpoint(path, path, "checkpoint")
    # Not recognised by name: try the content as a GraphDef.
    return _load_frozen(path, text=False)


def _close_paths_hint(path: str) -> str:
    parent = os.path.dirname(path) or "."
    if os.path.isdir(parent):
        names = sorted(os.listdir(parent))
        close = difflib.get_close_matches(os.path.basename(path), names, n=3, cutoff=0.5)
        if close:
            return "did you mean " + ", ".join(os.path.join(parent, c) for c in close) + "?"
        return f"check the path; {parent} has: " + ", ".join(names[:8]) + ("…" if len(names) > 8 else "")
    return "check the path"


def _saved_model_file(directory: str) -> str | None:
    for name in ("saved_model.pb", "saved_model.pbtxt"):
        if os.path.isfile(os.path.join(directory, name)):
            return os.path.join(directory, name)
    return None


def _latest_checkpoint(directory: str) -> str | None:
    """The prefix the directory's `checkpoint` file names, found again when the directory was moved
    (the file keeps absolute paths); else the newest `.index`/`.meta`. Read here rather than with
    `tf.train.latest_checkpoint`, whose ERROR line about a vanished path would reach the user's
    terminal though nothing is wrong; the stale path is logged at INFO (`-v` shows it)."""
    try:  # the CheckpointState text proto: `model_checkpoint_path: "…"`
        with open(os.path.join(directory, "checkpoint"), encoding="utf-8") as f:
            found = re.search(r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', f.read(), re.M)
        prefix = re.sub(r"\\(.)", r"\1", found.group(1)) if found else None
    except (OSError, UnicodeDecodeError):  # no state file, or a corrupt one: fall back to scanning
        prefix = None
    if prefix:
        named = prefix if os.path.isabs(prefix) else os.path.join(directory, prefix)
        if _is_checkpoint(named):
            return named
        moved = os.path.join(directory, os.path.basename(prefix))
        logging.getLogger(__name__).info("%s/checkpoint names %s, which does not exist; using %s", directory,
                                         prefix, moved if _is_checkpoint(moved) else "the newest checkpoint there")
        if _is_checkpoint(moved):
            return moved
    candidates = glob.glob(os.path.join(directory, "*.index")) + glob.glob(os.path.join(directory, "*.meta"))
    if not candidates:
        return None
    newest = max(candidates, key=os.path.getmtime)
    return os.path.splitext(newest)[0]


def _is_checkpoint(prefix: str) -> bool:
    """A V2 prefix (`.index`), a V1 file, or a graph-only `.meta`."""
    return os.path.exists(prefix + ".index") or os.path.isfile(prefix) or os.path.exists(prefix + ".meta")


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ModelLoadError(f"cannot read {path}: {e.strerror}", "check the path and its permissions") from e
    if not data:
        raise ModelLoadError(f"{path} is empty", "the file was probably cut short; export it again")
    return data


def _parse_proto(proto, path: str, *, text: bool, what: str):
    data = _read_file(path)
    try:
        if text:
            from google.protobuf import text_format

            text_format.Parse(data.decode("utf-8"), proto)
        else:
            proto.ParseFromString(data)
    except Exception as e:
        raise ModelLoadError(
            f"{path} is not a valid {what}" + (f": {str(e).splitlines()[0][:120]}" if text else ""),
            "the file is corrupt or of another format; pass a .pb, .pbtxt, .meta, checkpoint or SavedModel",
        ) from e
    return proto


MAX_DECLARED_ELEMENTS = 2**31  # more than a 2 GB GraphDef can hold: such a Const is a hostile fill


def _dtype_name(enum: int) -> str:
    try:
        return tf.as_dtype(enum).name
    except (TypeError, ValueError):
        return f"dtype #{enum}"


def validate_constants(graph_def, path: str) -> None:
    """Refuse Const nodes TensorFlow would crash or balloon on: a dtype that disagrees with the
    tensor, content of the wrong length, or a declared shape far larger than the file."""
    for node in graph_def.node:
        if node.op != "Const" or "value" not in node.attr:
            continue
        tensor = node.attr["value"].tensor
        where = f"{path}: constant '{node.name}'"
        if "dtype" in node.attr and tensor.dtype != node.attr["dtype"].type:
            raise ModelLoadError(f"{where} declares dtype {_dtype_name(node.attr['dtype'].type)} but holds "
                                 f"{_dtype_name(tensor.dtype)}",
                                 "the graph is corrupt or was edited by hand; export it again")
        dims = [d.size for d in tensor.tensor_shape.dim]
        if any(d < 0 for d in dims):
            raise ModelLoadError(f"{where} has a negative dimension {dims}", "the graph is corrupt; export it again")
        n = int(np.prod(dims, dtype=object)) if dims else 1
        if n > MAX_DECLARED_ELEMENTS:
            raise ModelLoadError(f"{where} declares {n:,} elements", "the graph is corrupt or hostile; do not run it")
        if tensor.tensor_content:
            try:
                itemsize = tf.as_dtype(tensor.dtype).size
            except (TypeError, ValueError):
                itemsize = 0
            if itemsize and len(tensor.tensor_content) != n * itemsize:
                raise ModelLoadError(f"{where} holds {len(tensor.tensor_content)} bytes for shape {dims}",
                                     "the graph is corrupt or truncated; export it again")


def _import(graph_def=None, meta_graph_def=None, path: str = ""):
    if not _IMPORT_GRAPHS.get():
        return None
    validate_constants(graph_def if graph_def is not None else meta_graph_def.graph_def, path)
    graph = tf.Graph()
    try:
        with graph.as_default():
            if meta_graph_def is not None:
                tf.compat.v1.train.import_meta_graph(meta_graph_def, clear_devices=True)
            else:
                tf.import_graph_def(graph_def, name="")
    except SurgeryError:
        raise
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"{path} could not be imported: {msg[:200]}",
                             "the graph is malformed or needs ops this TensorFlow does not have") from e
    return graph


def _load_frozen(path: str, *, text: bool) -> Model:
    gd = _parse_proto(tf.compat.v1.GraphDef(), path, text=text, what="GraphDef")
    if not gd.node:
        raise ModelLoadError(f"{path} holds no graph nodes", "pass a frozen GraphDef with nodes, or another MODEL form")
    graph = _import(graph_def=gd, path=path)
    return Model(path=path, format="frozen_pbtxt" if text else "frozen_pb", graph=graph, graph_def=gd)


def _load_checkpoint(prefix: str | None, path: str, fmt: str, meta: str | None = None) -> Model:
    meta = meta or prefix + ".meta"
    if not os.path.exists(meta):
        raise ModelLoadError(
            f"checkpoint {prefix} has no .meta graph beside it",
            "a checkpoint holds only values; pass the .meta that was saved with it, or a frozen .pb",
        )
    if prefix is not None:
        tfcompat.checkpoint_reader(prefix)  # validates index + data shards before anything runs
    mg = _parse_proto(tf.compat.v1.MetaGraphDef(), meta, text=False, what="MetaGraphDef (.meta)")
    graph = _import(meta_graph_def=mg, path=meta)
    return Model(path=path, format=fmt, graph=graph, graph_def=mg.graph_def, meta_graph_def=mg,
                 checkpoint=prefix, signature_defs=dict(mg.signature_def))


def _load_saved_model(directory: str, tag_set: str) -> Model:
    from tensorflow.core.protobuf import saved_model_pb2

    file = _saved_model_file(directory)
    sm = _parse_proto(saved_model_pb2.SavedModel(), file, text=file.endswith(".pbtxt"), what="SavedModel")
    tags = {t.strip() for t in tag_set.split(",") if t.strip()}
    chosen = [mg for mg in sm.meta_graphs if set(mg.meta_info_def.tags) == tags]
    if not chosen:
        available = ["/".join(mg.meta_info_def.tags) or "(none)" for mg in sm.meta_graphs]
        raise ModelLoadError(f"{directory} has no meta graph tagged '{tag_set}'",
                             "use --tag-set with one of: " + ", ".join(available))
    mg = chosen[0]
    prefix = os.path.join(directory, "variables", "variables")
    checkpoint = prefix if os.path.exists(prefix + ".index") else None
    tf2 = len(mg.object_graph_def.nodes) > 0
    # The SavedModel as written is imported first: that checks it before Grappler sees it, and
    # flattening happens only where a graph is wanted at all.
    graph = _import(meta_graph_def=mg, path=file)
    if tf2 and graph is not None:
        from .tf2 import flatten_tf2, serving_signature

        if serving_signature(mg) is not None:
            return flatten_tf2(mg, directory, checkpoint, path=file, signature=serving_signature(mg))
    return Model(path=directory, format="saved_model_tf2" if tf2 else "saved_model", graph=graph,
                 graph_def=mg.graph_def, meta_graph_def=mg, checkpoint=checkpoint,
                 signature_defs=dict(mg.signature_def))


def parse_model(path: str, *, tag_set: str = "serve") -> Model:
    """Like `load_model`, but the graph is parsed and never imported (`model.graph` is None).

    For `audit`: a hostile or broken graph (unknown ops, bad inputs) can still be read and
    reported on, since nothing of it reaches TensorFlow's runtime.
    """
    token = _IMPORT_GRAPHS.set(False)
    try:
        return load_model(path, tag_set=tag_set)
    finally:
        _IMPORT_GRAPHS.reset(token)
