"""Graphs written by older TensorFlows, imported as far as today's TensorFlow can build them.

A TF 1.x training graph often fails today's `import_meta_graph` for reasons that do not touch
the model itself:

- attributes that only record facts inferred when the graph was written (`_output_shapes`):
  today's shape functions disagree with some (`FusedBatchNormGrad`'s reserve space), and the
  importer refuses the whole file. They are dropped and recomputed by the import.
- gradient or optimizer nodes whose op was since removed, renamed, or changed its arity. Such a
  node, and everything that depends on it, cannot run in this TensorFlow whatever is asked, so
  it is left out; what the model's own outputs need is imported. Each drop is logged (`-v`) and
  remembered, so a command that names a dropped tensor says why it is missing.

A graph that still does not import is refused, naming the op and the TensorFlow that wrote it.
TensorFlow has no lenient import of its own (`import_graph_def` is all or nothing), so this
module retries it on a repaired copy.
"""

from __future__ import annotations

import logging
import re

from . import graph as g
from . import tfcompat
from .errors import ModelLoadError, SurgeryError
from .names import is_machinery, node_input_op, remember_dropped

tf = tfcompat.tf
log = logging.getLogger(__name__)

# Attributes that only record what the writer inferred; the importer recomputes them.
INFERRED_ATTRS = ("_output_shapes",)
_MAX_REPAIRS = 50
_NODE_IN_MESSAGE = re.compile(r"\{\{node ([^}]+)\}\}|Node '([^']+)'|node ([\w/.-]+):")

def writer_version(proto) -> str:
    """The TensorFlow version that wrote a MetaGraphDef ('' when unknown or for a bare GraphDef)."""
    info = getattr(proto, "meta_info_def", None)
    return info.tensorflow_version if info is not None else ""


def import_leniently(proto, do_import, *, path: str):
    """(graph, proto): `do_import(proto)` (a GraphDef or MetaGraphDef → tf.Graph), retried on a
    repaired copy of `proto` while the failure is one of those above. The returned proto is the
    one the graph was imported from (the input itself when no repair was needed)."""
    version = writer_version(proto)
    dropped: dict = {}
    stripped = False
    proto = _without_unbuildable(proto, dropped, version, path)
    for _ in range(_MAX_REPAIRS):
        try:
            graph = do_import(proto)
        except SurgeryError:
            raise
        except Exception as e:
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if not stripped and any(a in message for a in INFERRED_ATTRS):
                proto, count = _without_inferred_attrs(proto)
                stripped = True
                log.info("%s: dropped %d recorded attribute(s) %s that this TensorFlow infers again",
                         path, count, ", ".join(INFERRED_ATTRS))
                continue
            node = _named_node(message, _graph_def(proto))
            if node is not None and _is_training(node.name, node.op):
                problem = f"does not import in TensorFlow {tf.__version__} ({message[:160]})"
                proto = _without(proto, node.name, problem, dropped, version, path)
                continue
            raise _refusal(path, message, node, version) from e
        if dropped:
            remember_dropped(graph, dropped)
        return graph, proto
    raise ModelLoadError(f"{path} could not be imported: more than {_MAX_REPAIRS} nodes needed repair",
                         _version_hint(version))


def _refusal(path: str, message: str, node, version: str) -> ModelLoadError:
    what = f" (op {node.op})" if node is not None else ""
    return ModelLoadError(f"{path} could not be imported{what}: {message[:200]}", _version_hint(version))


def _version_hint(version: str) -> str:
    written = f"the graph was written by TensorFlow {version}" if version else "the graph is malformed or was " \
                                                                              "written by another TensorFlow"
    return (f"{written}; this is {tf.__version__}: freeze it with a TensorFlow that has the op, or name "
            "outputs that do not need it")


def _graph_def(proto):
    return proto.graph_def if hasattr(proto, "graph_def") else proto


def _copy(proto):
    out = type(proto)()
    out.CopyFrom(proto)
    return out


def _without_inferred_attrs(proto):
    proto = _copy(proto)
    count = 0
    for node in _graph_def(proto).node:
        for attr in INFERRED_ATTRS:
            if attr in node.attr:
                del node.attr[attr]
                count += 1
    return proto, count


def _named_node(message: str, graph_def):
    nodes = {n.name: n for n in graph_def.node}
    for m in _NODE_IN_MESSAGE.finditer(message):
        name = next(x for x in m.groups() if x)
        if name in nodes:
            return nodes[name]
    return None


def _without_unbuildable(proto, dropped: dict, version: str, path: str):
    """`proto` without the nodes whose op this TensorFlow does not have, and all that depend on them."""
    graph_def = _graph_def(proto)
    functions = {f.signature.name for f in graph_def.library.function}
    bad = [n.name for n in graph_def.node if n.op not in functions and not tfcompat.is_registered_op(n.op)]
    for name in bad:
        if name not in dropped:
            proto = _without(proto, name, f"is not in TensorFlow {tf.__version__}", dropped, version, path)
    return proto


def _without(proto, root: str, problem: str, dropped: dict, version: str, path: str):
    """`proto` less the node `root` (whose op `problem`: "is not in TensorFlow 2.21.0") and every
    node that depends on it (data or control): none of them can run. Collections, the saver and
    colocation that name them are cleaned too. Refused when `root` is part of the model rather
    than of its training machinery (gradients, optimizer, saver: all after it is training too)."""
    graph_def = _graph_def(proto)
    gone = g.descendants(graph_def, [root], control=True)
    ops = {n.name: n.op for n in graph_def.node}
    written = f" (the graph was written by TensorFlow {version})" if version else ""
    if not _is_training(root, ops[root]):  # the model itself needs it: nothing to leave out
        raise ModelLoadError(f"{path} could not be imported: '{root}' needs op {ops[root]}, which {problem}",
                             _version_hint(version))
    for name in sorted(gone):
        dropped[name] = (f"its op {ops[root]} {problem}" if name == root else
                         f"it depends on '{root}', whose op {ops[root]} {problem}") + written
    log.info("left out %s and the %d node(s) that depend on it: its op %s %s%s", root, len(gone) - 1, ops[root],
             problem, written)
    proto = _copy(proto)
    kept = [n for n in _graph_def(proto).node if n.name not in gone]
    del _graph_def(proto).node[:]
    _graph_def(proto).node.extend(kept)
    for node in _graph_def(proto).node:
        if "_class" in node.attr:
            locs = [s for s in node.attr["_class"].list.s if s.decode(errors="replace")[5:] not in gone]
            del node.attr["_class"].list.s[:]
            node.attr["_class"].list.s.extend(locs)
    if hasattr(proto, "collection_def"):
        clean_collections(proto, {n.name for n in kept})
    return proto


def _is_training(name: str, op: str) -> bool:
    """Gradient, optimizer, saver or summary machinery: nodes a model's answers never need."""
    return is_machinery(name, op) or name.startswith("gradients") or op.startswith(("Apply", "ResourceApply"))


# Collections whose entries are protos naming graph nodes, and the fields that name them.
_COLLECTION_PROTOS = {
    "variables": ("VariableDef", ("variable_name", "initializer_name", "snapshot_name")),
    "trainable_variables": ("VariableDef", ("variable_name", "initializer_name", "snapshot_name")),
    "local_variables": ("VariableDef", ("variable_name", "initializer_name", "snapshot_name")),
    "model_variables": ("VariableDef", ("variable_name", "initializer_name", "snapshot_name")),
    "moving_average_variables": ("VariableDef", ("variable_name", "initializer_name", "snapshot_name")),
    "cond_context": ("CondContextDef", ("pred_name", "pivot_name")),
    "while_context": ("WhileContextDef", ("pivot_name", "pivot_for_pred_name", "pivot_for_body_name")),
    "savers": ("SaverDef", ("filename_tensor_name", "save_tensor_name", "restore_op_name")),
}


def clean_collections(meta, present: set) -> None:
    """Drop collection entries and the saver that name nodes no longer in the graph."""
    from tensorflow.core.framework import variable_pb2
    from tensorflow.core.protobuf import control_flow_pb2, saver_pb2

    protos = {"VariableDef": variable_pb2.VariableDef, "CondContextDef": control_flow_pb2.CondContextDef,
              "WhileContextDef": control_flow_pb2.WhileContextDef, "SaverDef": saver_pb2.SaverDef}

    def exists(name: str) -> bool:
        return not name or node_input_op(name) in present

    for key, collection in meta.collection_def.items():
        kind = collection.WhichOneof("kind")
        if kind == "node_list":
            values = [v for v in collection.node_list.value if exists(v)]
            del collection.node_list.value[:]
            collection.node_list.value.extend(values)
        elif kind == "bytes_list" and key in _COLLECTION_PROTOS:
            proto_name, fields = _COLLECTION_PROTOS[key]
            kept = []
            for raw in collection.bytes_list.value:
                entry = protos[proto_name]()
                entry.ParseFromString(raw)
                names = [getattr(entry, f) for f in fields]
                if hasattr(entry, "values_def"):
                    names += list(entry.values_def.external_values.values())
                if all(exists(n) for n in names):
                    kept.append(raw)
            del collection.bytes_list.value[:]
            collection.bytes_list.value.extend(kept)
    saver = meta.saver_def
    if saver.restore_op_name and not all(exists(n) for n in (saver.save_tensor_name, saver.restore_op_name)):
        meta.ClearField("saver_def")


__all__ = ["INFERRED_ATTRS", "clean_collections", "import_leniently", "writer_version"]
