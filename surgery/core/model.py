"""Load any model form people hold into one `Model`: a graph plus where its weights live.

Accepted: a checkpoint prefix (`dir/model.ckpt-1000`), its `.meta` file, a checkpoint
directory (latest checkpoint), a frozen GraphDef (`.pb` binary or `.pbtxt` text), or a
SavedModel directory (TF1, or TF2/Keras: object-based, functions + resource variables;
its serving signature is flattened into one graph with named variables, see `tf2.py`), or a
Keras model file (`.keras`, legacy `.h5`; see `kerasfile.py`). The Python API also takes an
in-memory `keras.Model`, a `tf.Graph` or a `GraphDef`.
"""

from __future__ import annotations

import atexit
import dataclasses
import difflib
import os
import shutil
import tempfile

import numpy as np

from . import graph as g
from . import kerasfile, tfcompat
from .errors import ModelLoadError
from .legacy import clean_collections, import_leniently
from .names import VARIABLE_OP_TYPES, carry_notes, remember_ambiguous, remember_traced
from .tf2 import flatten_function, flatten_tf2, serving_signature
from .weights import is_checkpoint, latest_checkpoint, open_checkpoint

tf = tfcompat.tf

FORMAT_DESCRIPTIONS = {
    "checkpoint": "checkpoint prefix (.meta graph + checkpoint weights)",
    "meta_graph": ".meta graph (weights from the checkpoint beside it)",
    "checkpoint_dir": "checkpoint directory (latest checkpoint)",
    "frozen_pb": "frozen GraphDef (binary .pb, weights are constants)",
    "frozen_pbtxt": "frozen GraphDef (text .pbtxt, weights are constants)",
    "saved_model": "SavedModel (TF1 graph)",
    "saved_model_tf2": "SavedModel (TF2/Keras: functions + resource variables)",
    "keras": "Keras model file (.keras; layers by name, weights from the model)",
    "keras_h5": "legacy Keras model file (.h5; layers by name, weights from the model)",
    "keras_model": "in-memory keras.Model (layers by name, weights from the model)",
    "tf_graph": "in-memory tf.Graph (no checkpoint)",
    "graph_def": "in-memory GraphDef (weights are constants)",
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
    """A loaded model. `graph` is a fresh `tf.Graph` the caller may extend (None only for a model
    read by `parse_model`, which never imports it); the files are never touched.

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
    # [(name, dtype, shape, trainable)] of a TF2 SavedModel's (or Keras model's) own variables,
    # those its serving graph never reads included (`tf2.declared_variables`); None elsewhere
    declared_variables: list | None = None
    # {placeholder op name: value} bound by `--set` (`bind.bind`): now constants of the graph
    bound_placeholders: dict = dataclasses.field(default_factory=dict)
    # the keras.Model a Keras MODEL was loaded from (finetune writes `model.keras` from it)
    keras_model: object = dataclasses.field(default=None, repr=False, compare=False)
    _reader_cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def description(self) -> str:
        return FORMAT_DESCRIPTIONS[self.format]

    @property
    def is_frozen(self) -> bool:
        return self.format in ("frozen_pb", "frozen_pbtxt", "graph_def")

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

    def trainable_names(self) -> set | None:
        """Op names of the variables an optimizer may change: a TF2/Keras variable's own
        `trainable` flag, a TF1 graph's TRAINABLE_VARIABLES collection; None when the graph
        records neither (then every variable counts as trainable)."""
        meta = self.meta_graph_def
        if meta is None or "trainable_variables" not in meta.collection_def:
            return None
        from tensorflow.core.framework import variable_pb2

        names = set()
        for raw in meta.collection_def["trainable_variables"].bytes_list.value:
            v = variable_pb2.VariableDef()
            v.ParseFromString(raw)
            names.add(v.variable_name.split(":")[0])
        return names

    def weights(self):
        """This model's checkpoint as a `weights.CheckpointSource` (opened once)."""
        from .weights import model_weights

        return model_weights(self)

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
        """The value of variable `name` from this model's checkpoint."""
        from .weights import variable_reader

        self.weights()  # raises when there is no checkpoint; opened once
        if "read" not in self._reader_cache:
            self._reader_cache["read"] = variable_reader(self, hint="restore it from another source with "
                                                                    "`surgery restore`")
        return self._reader_cache["read"](name)

    def saver(self):
        """This model's own `tf.compat.v1.train.Saver` (`weights.saver_for`), so
        `model.saver().restore(sess, model.checkpoint)` works for every format.
        Only the variables the loaded graph came with: a head spliced on later is not looked for."""
        from .weights import saver_for

        return saver_for(self)


def _saver_mapping(graph_def) -> dict[str, str]:
    """{variable op name: checkpoint key} read off the graph's RestoreV2 → Assign ops."""
    index = g.Index(graph_def)
    mapping = {}
    for r in (n for n in graph_def.node if n.op == "RestoreV2"):
        names_node = index.nodes.get(r.input[1].split(":")[0])
        if names_node is None or names_node.op != "Const":
            continue
        keys = [k.decode() for k in tf.make_ndarray(names_node.attr["value"].tensor).ravel()]
        for i, key in enumerate(keys):
            for cons, slot in index.tensor_consumers(f"{r.name}:{i}"):
                while cons.op == "Identity" and index.consumers(cons.name):
                    cons, slot = index.consumers(cons.name)[0]
                if cons.op in ("Assign", "AssignVariableOp") and slot == 1:
                    var = cons.input[0].split(":")[0]
                    while var in index and index[var].op == "Identity":
                        var = index[var].input[0].split(":")[0]
                    mapping[var] = key
    return mapping


@dataclasses.dataclass(frozen=True)
class LoadOptions:
    """How to load a MODEL, in one place: the SavedModel tag set and signature, and whether a Keras
    file may run code of its own (a Lambda layer) while it loads."""

    tag_set: str = "serve"
    signature: str | None = None
    trust_code: bool = False

    def load(self, path) -> Model:
        return load_model(path, tag_set=self.tag_set, signature=self.signature, trust_code=self.trust_code)

    def parse(self, path: str) -> Model:
        return parse_model(path, tag_set=self.tag_set)


def load_model(path, *, tag_set: str = "serve", signature: str | None = None, trust_code: bool = False) -> Model:
    """Load MODEL from any of the forms people hold a trained model in, into one `Model`.

    The files are never modified; `Model.graph` is a fresh `tf.Graph` the caller may extend.

    Args:
        path: a checkpoint prefix or directory, a `.meta`, a frozen `.pb`/`.pbtxt`, a SavedModel
            directory, a `.keras`/`.h5` file; or in memory a `keras.Model`, `tf.Graph` or `GraphDef`.
        tag_set: the SavedModel tag set to load (default `serve`).
        signature: the SavedModel signature to flatten (default `serving_default`, else the only one).
        trust_code: load a Keras file even when loading runs code stored in it (a Lambda layer).

    Returns:
        A `Model`: `graph`, `graph_def`, `checkpoint` (where the weights are), `format`, signatures.

    Raises:
        ModelLoadError: the path is missing, damaged or of another kind; the message names it.

    Examples:
        >>> model = surgery.load_model("data/models/vgg")
        >>> model.format, model.checkpoint
    """
    if not isinstance(path, (str, os.PathLike)):
        return _load_object(path)
    return _load(path, tag_set, imported=True, signature=signature, trust_code=trust_code)


def parse_model(path: str, *, tag_set: str = "serve") -> Model:
    """Like `load_model`, but the graph is parsed and never imported: `model.graph` is None.

    For `audit`: a hostile or broken graph (unknown ops, bad inputs) can still be read and
    reported on, since nothing of it reaches TensorFlow's runtime.
    """
    return _load(path, tag_set, imported=False)


def reimport(model: Model, graph_def) -> Model:
    """`model` with its graph rewritten as `graph_def` (same variables, same checkpoint), imported
    anew; its meta graph, if any, carries the new graph, less the collection entries and
    signature inputs that name nodes it no longer has. `model` itself is not changed."""
    present = {n.name for n in graph_def.node}
    signature_defs = {}
    for key, sig in model.signature_defs.items():
        sig_copy = type(sig)()
        sig_copy.CopyFrom(sig)
        for name in [k for k, t in sig_copy.inputs.items() if t.name.split(":")[0] not in present]:
            del sig_copy.inputs[name]
        signature_defs[key] = sig_copy
    meta = None
    if model.meta_graph_def is not None:
        meta = tf.compat.v1.MetaGraphDef()
        meta.CopyFrom(model.meta_graph_def)
        meta.graph_def.CopyFrom(graph_def)
        clean_collections(meta, present)
        for key, sig in signature_defs.items():
            if key in meta.signature_def:
                meta.signature_def[key].CopyFrom(sig)
    graph, proto = _import(True, graph_def=None if meta is not None else graph_def, meta_graph_def=meta,
                           path=model.path)
    carry_notes(model.graph, graph)
    return dataclasses.replace(model, graph=graph, graph_def=proto.graph_def if meta is not None else proto,
                               meta_graph_def=proto if meta is not None else None, signature_defs=signature_defs,
                               _reader_cache={})


def _load_object(obj) -> Model:
    """A `keras.Model`, `tf.Graph` or `GraphDef` held in memory."""
    if isinstance(obj, tf.Graph):
        with obj.as_default():
            meta = tf.compat.v1.train.export_meta_graph(graph=obj, clear_devices=True)
        graph, meta = _import(True, meta_graph_def=meta, path="tf.Graph")
        return Model(path="<tf.Graph>", format="tf_graph", graph=graph, graph_def=meta.graph_def,
                     meta_graph_def=meta)
    if isinstance(obj, tf.compat.v1.GraphDef):
        graph, graph_def = _import(True, graph_def=obj, path="GraphDef")
        return Model(path="<GraphDef>", format="graph_def", graph=graph, graph_def=graph_def)
    if hasattr(obj, "layers") and hasattr(obj, "export"):
        return _load_keras(obj, f"<keras.Model {obj.name}>", "keras_model")
    raise ModelLoadError(f"cannot load a {type(obj).__name__} as a model",
                         "pass a path, a keras.Model, a tf.Graph or a GraphDef")


def _load_keras(keras_model, path: str, fmt: str) -> Model:
    """A Keras model traced once (`kerasfile.trace_for_surgery`) and flattened into one graph,
    each layer's output named after the layer, its weights in a temporary checkpoint (removed at
    exit); signature = the model's own inputs and outputs."""
    traced = kerasfile.trace_for_surgery(keras_model)
    directory = tempfile.mkdtemp(prefix="surgery-keras-")
    atexit.register(shutil.rmtree, directory, True)
    checkpoint = os.path.join(directory, "variables")
    flat = flatten_function(traced, path=path, checkpoint=checkpoint)
    remember_traced(flat["graph"])
    remember_ambiguous(flat["graph"], traced.calls)
    sig = flat["signature_defs"]["serving_default"]
    for key in [k for k in sig.outputs if k not in traced.outputs]:  # the layers' outputs: names, not answers
        del sig.outputs[key]
    flat["meta_graph_def"].signature_def["serving_default"].CopyFrom(sig)
    return Model(path=path, format=fmt, checkpoint=checkpoint, keras_model=keras_model, **flat)


def _load(path: str, tag_set: str, *, imported: bool, signature: str | None = None,
          trust_code: bool = False) -> Model:
    path = os.fspath(path)
    if not os.path.exists(path) and not os.path.exists(path + ".index") and not os.path.exists(path + ".meta"):
        raise ModelLoadError(f"no such file or directory: {path}", _close_paths_hint(path))
    if os.path.isdir(path):
        if saved_model_file(path):
            return _load_saved_model(path, tag_set, imported, signature)
        prefix = latest_checkpoint(path)
        if prefix is None:
            raise ModelLoadError(
                f"{path} holds no model (no saved_model.pb, no checkpoint, no .meta)",
                "pass a checkpoint prefix, a .meta, a .pb or a SavedModel directory",
            )
        return _load_checkpoint(prefix, path, "checkpoint_dir", imported)
    base = os.path.basename(path)
    if base in ("saved_model.pb", "saved_model.pbtxt"):
        return _load_saved_model(os.path.dirname(path) or ".", tag_set, imported, signature)
    if kerasfile.is_keras_file(path):
        fmt = "keras" if path.lower().endswith(".keras") else "keras_h5"
        keras_model = kerasfile.load_keras_file(path, trust_code=trust_code)
        return _load_keras(keras_model, path, fmt)
    if path.endswith(".meta"):
        prefix = path[: -len(".meta")]
        return _load_checkpoint(prefix if is_checkpoint(prefix) else None, path, "meta_graph", imported,
                                meta=path)
    if path.endswith(".pbtxt"):
        return _load_frozen(path, imported, text=True)
    if path.endswith(".pb"):
        return _load_frozen(path, imported, text=False)
    for suffix in (".index", ".data-00000-of-00001"):
        path = path.removesuffix(suffix)
    if ".data-" in os.path.basename(path):
        path = path[: path.rindex(".data-")]
    if os.path.exists(path + ".index") or os.path.exists(path + ".meta"):
        return _load_checkpoint(path, path, "checkpoint", imported)
    # Not recognised by name: try the content as a GraphDef.
    return _load_frozen(path, imported, text=False)


def _close_paths_hint(path: str) -> str:
    parent = os.path.dirname(path) or "."
    if os.path.isdir(parent):
        names = sorted(os.listdir(parent))
        close = difflib.get_close_matches(os.path.basename(path), names, n=3, cutoff=0.5)
        if close:
            return "did you mean " + ", ".join(os.path.join(parent, c) for c in close) + "?"
        return f"check the path; {parent} has: " + ", ".join(names[:8]) + ("…" if len(names) > 8 else "")
    return "check the path"


def saved_model_file(directory: str) -> str | None:
    for name in ("saved_model.pb", "saved_model.pbtxt"):
        if os.path.isfile(os.path.join(directory, name)):
            return os.path.join(directory, name)
    return None


def _import(imported: bool, graph_def=None, meta_graph_def=None, path: str = ""):
    """(graph, proto): a fresh graph holding the parsed proto, its constants checked first, and
    the proto it came from, repaired where an older TensorFlow wrote it (`legacy.import_leniently`);
    graph None when not `imported`."""
    proto = graph_def if graph_def is not None else meta_graph_def
    if not imported:
        return None, proto
    g.validate_constants(graph_def if graph_def is not None else meta_graph_def.graph_def, path)

    def do_import(proto):
        graph = tf.Graph()
        with graph.as_default():
            if meta_graph_def is not None:
                tf.compat.v1.train.import_meta_graph(proto, clear_devices=True)
            else:
                tf.import_graph_def(proto, name="")
        return graph

    return import_leniently(proto, do_import, path=path)


def _load_frozen(path: str, imported: bool, *, text: bool) -> Model:
    gd = g.read_graph_def(path, text=text, validate=False)  # validated by _import, or never imported
    if not gd.node:
        raise ModelLoadError(f"{path} holds no graph nodes", "pass a frozen GraphDef with nodes, or another MODEL form")
    graph, gd = _import(imported, graph_def=gd, path=path)
    return Model(path=path, format="frozen_pbtxt" if text else "frozen_pb", graph=graph, graph_def=gd)


def _load_checkpoint(prefix: str | None, path: str, fmt: str, imported: bool, meta: str | None = None) -> Model:
    meta = meta or prefix + ".meta"
    if not os.path.exists(meta):
        raise ModelLoadError(
            f"checkpoint {prefix} has no .meta graph beside it",
            "a checkpoint holds only values; pass the .meta that was saved with it, or a frozen .pb",
        )
    if prefix is not None:
        open_checkpoint(prefix)  # validates index + data shards before anything runs
    mg = g.read_proto(tf.compat.v1.MetaGraphDef(), meta, text=False, what="MetaGraphDef (.meta)")
    graph, mg = _import(imported, meta_graph_def=mg, path=meta)
    return Model(path=path, format=fmt, graph=graph, graph_def=mg.graph_def, meta_graph_def=mg,
                 checkpoint=prefix, signature_defs=dict(mg.signature_def))


def _load_saved_model(directory: str, tag_set: str, imported: bool, signature: str | None = None,
                      output_order=None) -> Model:
    from tensorflow.core.protobuf import saved_model_pb2

    file = saved_model_file(directory)
    sm = g.read_proto(saved_model_pb2.SavedModel(), file, text=file.endswith(".pbtxt"), what="SavedModel")
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
    graph, mg = _import(imported, meta_graph_def=mg, path=file)
    chosen_signature = serving_signature(mg, signature, path=directory) if tf2 or signature else None
    if tf2 and graph is not None and chosen_signature is not None:
        flat = flatten_tf2(mg, directory, checkpoint, path=file, signature=chosen_signature, output_order=output_order)
        remember_traced(flat["graph"])
        return Model(path=directory, format="saved_model_tf2", checkpoint=checkpoint, **flat)
    signature_defs = dict(mg.signature_def)
    if signature is not None:
        signature_defs = {chosen_signature: signature_defs[chosen_signature]}
    return Model(path=directory, format="saved_model_tf2" if tf2 else "saved_model", graph=graph,
                 graph_def=mg.graph_def, meta_graph_def=mg, checkpoint=checkpoint,
                 signature_defs=signature_defs)
