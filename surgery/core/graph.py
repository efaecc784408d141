"""The GraphDef toolkit every command is composed from: small functions over `GraphDef` protos,
in the manner of TensorFlow's `graph_util`.

- `Index`: nodes by name and each node's consumers (data and control edges), built once.
- Walks: `ancestors(graph, roots, stop=…)` and `descendants`.
- Rewiring passes, each GraphDef → new GraphDef (the input is never changed): `replace_uses`,
  `bypass` (splice out identity-like nodes), `remove`, `drop_control_edges`, `cut` (tensors → typed placeholders,
  returning the name map), `prune`, `rename`, `toposort`; and `clear_devices` (in place).
- Files: `read_graph_def` / `read_proto` (plain errors, constants checked before TensorFlow sees
  them) and `write_graph_def` (atomic, streamed node by node, refused past protobuf's 2 GB).
- `graph_from_def`, `likely_output_nodes`: the small helpers the passes share.

Tensor names are `op:k`; `op` alone means `op:0`. Control inputs are `^op`.
"""

from __future__ import annotations

import collections
import os
import re
import sys

import numpy as np

from . import tfcompat
from .errors import CutError, GraphTooBigError, ModelLoadError
from .files import atomic_path
from .names import NOT_OUTPUT_OP_TYPES, is_machinery, node_input_op, split_tensor_name

tf = tfcompat.tf

MAX_GRAPHDEF_BYTES = 2**31 - 1  # protobuf's hard limit on one message
TOO_BIG_HINT = ("write SavedModels that keep the weights as variables beside the graph: "
                "`surgery split MODEL ... --format savedmodel`, or `surgery export MODEL --outputs T --saved-model DIR`")


def tensor_name(name: str) -> str:
    """The canonical `op:k` form of a GraphDef input or tensor name (`op` → `op:0`)."""
    op, idx = split_tensor_name(name)
    return f"{op}:{idx or 0}"


def _input_tensor(inp: str) -> str:
    """A data input as GraphDef writes it (`op` for output 0, `op:k` otherwise)."""
    op, idx = split_tensor_name(inp)
    return op if not idx else f"{op}:{idx}"


def shape_str(shape) -> str:
    """`[?, 224, 224, 3]`, or `<unknown rank>`: how every report and summary prints a shape."""
    if shape is None:
        return "<unknown rank>"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def graph_from_def(graph_def):
    """A fresh `tf.Graph` holding `graph_def`, imported with `name=""` so its own names are the
    names to feed and fetch."""
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
    return graph


def empty_like(graph_def):
    """A GraphDef with `graph_def`'s versions and function library, and no nodes."""
    out = tf.compat.v1.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    return out


# ---------------------------------------------------------------- the index and walks

class Index:
    """A GraphDef's nodes by name, and who consumes each node (built once, read many times).

    `consumers(op)`: [(node, input slot)] reading any output of `op` through a data edge;
    `tensor_consumers("op:k")`: those reading that one output; `control_consumers(op)`: nodes
    with a `^op` control input. The index reflects the GraphDef when it was built.
    """

    def __init__(self, graph_def):
        self.graph_def = graph_def
        self.nodes = {n.name: n for n in graph_def.node}
        self._data = collections.defaultdict(list)
        self._control = collections.defaultdict(list)
        for node in graph_def.node:
            for slot, inp in enumerate(node.input):
                if inp.startswith("^"):
                    self._control[inp[1:]].append(node)
                else:
                    self._data[node_input_op(inp)].append((node, slot))

    def __contains__(self, name: str) -> bool:
        return name in self.nodes

    def __getitem__(self, name: str):
        return self.nodes[name]

    def consumers(self, op: str) -> list:
        return list(self._data.get(op, ()))

    def tensor_consumers(self, tensor: str) -> list:
        op, idx = split_tensor_name(tensor)
        return [(n, s) for n, s in self._data.get(op, ()) if (split_tensor_name(n.input[s])[1] or 0) == (idx or 0)]

    def control_consumers(self, op: str) -> list:
        return list(self._control.get(op, ()))

    def inputs(self, op: str, *, control: bool = True) -> list:
        """The input strings of node `op` (control inputs included unless `control=False`)."""
        node = self.nodes.get(op)
        if node is None:
            return []
        return [i for i in node.input if control or not i.startswith("^")]


class _TfGraphInputs:
    """The `inputs` view of a tf.Graph, so walks run on imported graphs without copying them out."""

    def __init__(self, graph):
        self.graph = graph

    def __contains__(self, name: str) -> bool:
        try:
            self.graph.get_operation_by_name(name)
            return True
        except KeyError:
            return False

    def inputs(self, op: str, *, control: bool = True) -> list:
        try:
            o = self.graph.get_operation_by_name(op)
        except KeyError:
            return []
        return [t.name for t in o.inputs] + (["^" + c.name for c in o.control_inputs] if control else [])


def _as_index(graph):
    """An `Index` or `_TfGraphInputs` for a GraphDef, an `Index` or a tf.Graph."""
    return graph if isinstance(graph, (Index, _TfGraphInputs)) else (
        _TfGraphInputs(graph) if isinstance(graph, tf.Graph) else Index(graph))


def ancestors(graph, roots, *, stop=(), control: bool = True, where=None) -> set:
    """Names of the ops `roots` depend on, the roots' own ops included.

    `graph`: a GraphDef, an `Index` or a tf.Graph. `roots`: op or tensor names (tf.Tensor and
    tf.Operation accepted). `stop`: tensor names the walk does not pass through (a root in `stop`
    is not walked either). `control=False` follows data edges only. `where(name)`, if given, must
    hold for an op to be entered (roots included). Names not in the graph are skipped.
    """
    index = _as_index(graph)
    stop = {tensor_name(s) for s in stop}
    names = [getattr(r, "name", r) for r in roots]
    stack = [node_input_op(n) for n in names if not (":" in n and tensor_name(n) in stop)]
    seen = set()
    while stack:
        name = stack.pop()
        if name in seen or name not in index or (where is not None and not where(name)):
            continue
        seen.add(name)
        for inp in index.inputs(name, control=control):
            if inp.startswith("^") or tensor_name(inp) not in stop:
                stack.append(node_input_op(inp))
    return seen


def descendants(graph, roots, *, control: bool = False, where=None) -> set:
    """Names of the ops that depend on op names `roots` (roots included), through data edges
    (and control edges with `control=True`); `where(name)`, if given, must hold for an op past the
    roots to be entered."""
    index = graph if isinstance(graph, Index) else Index(graph)
    seen, stack = set(), list(roots)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        nexts = [n for n, _ in index.consumers(name)] + (index.control_consumers(name) if control else [])
        stack.extend(n.name for n in nexts if where is None or where(n.name))
    return seen


# Ops that compute a training loss from logits and labels: they and all below them are training.
LOSS_OP_TYPES = frozenset({"SoftmaxCrossEntropyWithLogits", "SparseSoftmaxCrossEntropyWithLogits"})
_LOSS_NAME = re.compile(r"(^|/)(\w*_)?(loss|losses|metrics?|accuracy|xentropy|cross_entropy)(_\d+)?(/|$)",
                        re.IGNORECASE)  # `total_loss`, `sparse_softmax_cross_entropy_loss/…` too
# v1 control flow's plumbing: a cond's Switch/Merge and the Identity nodes tf.cond adds around its
# predicate; never a model's answer, even where nothing consumes them
_COND_PLUMBING = re.compile(r"(^|/)cond(_\d+)?/(pred_id|switch_t|switch_f)$")
_V1_FLOW_OPS = frozenset({"Switch", "RefSwitch", "Merge", "RefMerge", "Enter", "RefEnter", "Exit", "RefExit",
                          "NextIteration", "RefNextIteration", "LoopCond"})
_STATE_WRITERS = ("Assign", "AssignAdd", "AssignSub", "AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp")
_FUNCTIONAL_FLOW = frozenset({"While", "StatelessWhile", "If", "StatelessIf", "Case", "StatelessCase"})


def constant_value(index, tensor: str):
    """The value of `tensor` when it is a Const reached through Identity and LogicalNot ops (as
    `tf.cond`'s `pred_id` and a negated flag are), else None."""
    node = index.nodes.get(node_input_op(tensor))
    negate = False
    while node is not None and node.op in ("Identity", "RefIdentity", "LogicalNot") and node.input:
        negate ^= node.op == "LogicalNot"
        node = index.nodes.get(node_input_op(node.input[0]))
    if node is None or node.op != "Const":
        return None
    value = tf.make_ndarray(node.attr["value"].tensor)
    return np.logical_not(value) if negate else value


def likely_output_nodes(graph_def) -> list[str]:
    """Names of the nodes that look like a model's answers: the one rule `inspect`, `audit` and
    `export` share.

    An answer has no consumer but training, saving or summary machinery, and is not a variable,
    constant, placeholder or bookkeeping op; nor part of an initializer (it feeds an `Assign`),
    a control-only dependency (`cond/switch_t`), the loss/metric side of a training graph (a
    cross-entropy op and everything below it, scopes named loss/metrics/accuracy) or an unused
    loop variable of a functional `While`. A graph of constants alone answers with them.
    """
    index = Index(graph_def)
    training = descendants(index, [n.name for n in graph_def.node if n.op in LOSS_OP_TYPES], control=True)
    training |= {n.name for n in graph_def.node if _LOSS_NAME.search(n.name)}

    def answer(n) -> bool:
        if n.op in NOT_OUTPUT_OP_TYPES or is_machinery(n.name, n.op) or n.name in training:
            return False
        if n.op in _V1_FLOW_OPS or _COND_PLUMBING.search(n.name):
            return False
        if index.control_consumers(n.name):
            return False
        consumers = [c for c, _ in index.consumers(n.name)]
        if any(c.op in _STATE_WRITERS for c in consumers):
            return False
        if n.op == "Identity" and not consumers and n.input and _unused_loop_output(index, n):
            return False
        return all(is_machinery(c.name, c.op) or c.name in training for c in consumers)

    found = [n.name for n in graph_def.node if answer(n)]
    if not found and all(n.op in ("Const", "NoOp") for n in graph_def.node):
        found = [n.name for n in graph_def.node if n.op == "Const" and not index.consumers(n.name)]
    return found


def _unused_loop_output(index, node) -> bool:
    """An Identity on an output of a functional While/If none of whose consumers ever uses it,
    while a sibling output is used: a loop counter left over, not an answer."""
    name = node_input_op(node.input[0])
    source = index[name] if name in index else None
    if source is None or source.op not in _FUNCTIONAL_FLOW:
        return False
    return any(c.name != node.name and (c.op != "Identity" or index.consumers(c.name))
               for c, _ in index.consumers(source.name))


# ---------------------------------------------------------------- rewiring passes

def _rewired(graph_def, *, data=None, control=None, drop=(), only=None):
    """Copy `graph_def` without the nodes in `drop`, rewriting inputs of the nodes in `only` (all when
    None): data inputs through `data(tensor "op:k") -> new input or None (keep)`, control inputs
    through `control(op) -> new op, None (keep) or "" (remove)`."""
    drop = set(drop)
    out = empty_like(graph_def)
    for node in graph_def.node:
        if node.name in drop:
            continue
        new = out.node.add()
        new.CopyFrom(node)
        if only is not None and node.name not in only:
            continue
        inputs = []
        for inp in node.input:
            if inp.startswith("^"):
                target = control(inp[1:]) if control else None
                if target == "":
                    continue
                inp = "^" + target if target else inp
            elif data:
                inp = data(tensor_name(inp)) or inp
            inputs.append(inp)
        if list(new.input) != inputs:
            del new.input[:]
            new.input.extend(inputs)
    return out


def replace_uses(graph_def, mapping: dict, *, only=None):
    """Each data use of tensor `old` reads `new` instead, for `{old: new}` tensor names (in the nodes
    named in `only`, or everywhere). Control edges are left as they are. Returns a new GraphDef."""
    mapping = {tensor_name(k): _input_tensor(v) for k, v in mapping.items()}
    return _rewired(graph_def, data=mapping.get, only=set(only) if only is not None else None)


def bypass(graph_def, predicate, *, keep=()):
    """Remove every node for which `predicate(node)` holds (an identity-like node: its output is its
    first input), except those named in `keep`; consumers read the removed node's first input
    instead (through chains of them), and control edges on it move to that input's op."""
    keep = set(keep)
    passes = {n.name: n.input[0] for n in graph_def.node
              if n.name not in keep and n.input and not n.input[0].startswith("^") and predicate(n)}

    def source(tensor):
        seen = set()
        while node_input_op(tensor) in passes and tensor not in seen:
            seen.add(tensor)
            tensor = passes[node_input_op(tensor)]
        return tensor

    return _rewired(graph_def, data=lambda t: source(t) if node_input_op(t) in passes else None,
                    control=lambda op: node_input_op(source(op)) if op in passes else None, drop=passes)


def remove(graph_def, names):
    """Drop the nodes `names` and every control edge on them. Data uses of them are left to the
    caller (e.g. to an `input_map` at import, or a later `replace_uses`)."""
    names = set(names)
    return _rewired(graph_def, control=lambda op: "" if op in names else None, drop=names)


def drop_control_edges(graph_def, ops):
    """Remove every control edge from the ops named in `ops` (the nodes themselves stay)."""
    ops = set(ops)
    return _rewired(graph_def, control=lambda op: "" if op in ops else None)


def placeholder_name(op_name: str, index: int, taken: set) -> str:
    """The name of the placeholder that replaces tensor `op_name:index`: the op's own name for
    output 0 (so `fc7:0` is fed as `fc7:0`), `op_name_<index>` otherwise."""
    name = op_name if index == 0 else f"{op_name}_{index}"
    while index != 0 and name in taken:
        name += "_"
    return name


def cut(graph_def, tensors) -> tuple:
    """Replace each of `tensors` by a typed, shaped `Placeholder`, rewiring its consumers.

    `tensors`: tf.Tensors (dtype and shape as TensorFlow inferred them) or tensor names (typed by
    importing `graph_def` once). Returns (new GraphDef, {tensor name: placeholder tensor name}),
    the names to feed. The ops that produced the cut tensors disappear (a cut placeholder stays as
    it is); what only they fed is left for `prune`.
    """
    tensors = list(tensors)
    if any(isinstance(t, str) for t in tensors):
        scratch = graph_from_def(graph_def)
        tensors = [scratch.get_tensor_by_name(tensor_name(t)) if isinstance(t, str) else t for t in tensors]
    taken = {n.name for n in graph_def.node}
    replace, new_nodes, cut_ops = {}, [], set()
    for t in tensors:
        if t.op.type == "Placeholder" and t.value_index == 0:
            replace[t.name] = t.name
            continue
        cut_ops.add(t.op.name)
        ph = placeholder_name(t.op.name, t.value_index, taken)
        taken.add(ph)
        replace[t.name] = f"{ph}:0"
        node = tf.compat.v1.NodeDef(name=ph, op="Placeholder")
        node.attr["dtype"].type = t.dtype.base_dtype.as_datatype_enum
        if t.shape.rank is not None:
            node.attr["shape"].shape.CopyFrom(t.shape.as_proto())
        new_nodes.append(node)
    out = _rewired(graph_def, data=lambda t: _input_tensor(replace[t]) if t in replace else None,
                   control=lambda op: "" if op in cut_ops else None, drop=cut_ops)
    out.node.extend(new_nodes)
    return out, replace


def prune(graph_def, outputs):
    """The part of `graph_def` that `outputs` (tensor or op names) depend on, by TensorFlow's own
    `extract_sub_graph` (data and control edges, graph order kept)."""
    ops = sorted({node_input_op(o) for o in outputs})
    try:
        return tf.compat.v1.graph_util.extract_sub_graph(graph_def, ops)
    except (AssertionError, ValueError, KeyError, TypeError) as e:
        raise CutError(f"cannot prune the graph to {', '.join(outputs)}: {e}",
                       "check that the outputs exist above the inputs") from e


def rename(graph_def, mapping: dict):
    """Rename nodes and every reference to them (inputs, control inputs, colocation). A key names a
    node (`old` → `new`) or, ending in `/`, a scope (`old/` → `new/` renames every node under it)."""
    exact = {k: v for k, v in mapping.items() if not k.endswith("/")}
    scopes = sorted(((k, v) for k, v in mapping.items() if k.endswith("/")), key=lambda kv: -len(kv[0]))

    def new_name(name):
        if name in exact:
            return exact[name]
        for old, new in scopes:
            if name.startswith(old):
                return new + name[len(old):]
        return name

    out = tf.compat.v1.GraphDef()
    out.CopyFrom(graph_def)
    for node in out.node:
        node.name = new_name(node.name)
        for i, inp in enumerate(node.input):
            op = node_input_op(inp)
            if new_name(op) != op:
                node.input[i] = inp.replace(op, new_name(op), 1)
        if "_class" in node.attr:
            loc = node.attr["_class"].list.s
            loc[:] = [b"loc:@" + new_name(s[5:].decode()).encode() if s.startswith(b"loc:@") else s for s in loc]
    return out


def toposort(graph_def):
    """`graph_def` with its nodes ordered inputs first (stable: graph order where free), as passes
    that append rewritten nodes at the end (e.g. `fold_batch_norms`) leave them out of order.
    Nodes on a cycle (a while loop's NextIteration) keep their relative order, after the rest."""
    index = Index(graph_def)
    pending = {n.name: len({node_input_op(i) for i in n.input if node_input_op(i) in index}) for n in graph_def.node}
    ready = collections.deque(n.name for n in graph_def.node if pending[n.name] == 0)
    order = []
    while ready:
        name = ready.popleft()
        order.append(name)
        for consumer in {c.name for c, _ in index.consumers(name)} | {c.name for c in index.control_consumers(name)}:
            pending[consumer] -= 1
            if pending[consumer] == 0:
                ready.append(consumer)
    placed = set(order)
    order += [n.name for n in graph_def.node if n.name not in placed]
    out = empty_like(graph_def)
    out.node.extend(index[name] for name in order)
    return out


def clear_devices(graph_def, *, colocation: bool = True):
    """Clear every node's device (and `_class` colocation, which names devices' partners) in place;
    returns `graph_def`. A portable graph places nothing."""
    for node in graph_def.node:
        node.device = ""
        if colocation and "_class" in node.attr:
            del node.attr["_class"]
    return graph_def


# ---------------------------------------------------------------- reading

MAX_DECLARED_ELEMENTS = 2**31  # more than a 2 GB GraphDef can hold: such a Const is a hostile fill


def _read_bytes(path: str) -> bytes:
    try:
        if "://" in path:
            with tf.io.gfile.GFile(path, "rb") as f:
                data = f.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as e:
        raise ModelLoadError(f"cannot read {path}: {e.strerror}", "check the path and its permissions") from e
    except tf.errors.OpError as e:
        raise ModelLoadError(f"cannot read {path}: {e.message}", "check the path and its permissions") from e
    if not data:
        raise ModelLoadError(f"{path} is empty", "the file was probably cut short; export it again")
    return data


def read_proto(proto, path: str, *, text: bool, what: str):
    """Parse file `path` into `proto` (binary, or protobuf text); `ModelLoadError` names a bad file."""
    data = _read_bytes(path)
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


def read_graph_def(path: str, *, text: bool | None = None, validate: bool = True):
    """The GraphDef in file `path` (text when `text`, or when None and the name ends in `.pbtxt`),
    its constants checked (`validate_constants`) before anything imports it."""
    text = path.endswith(".pbtxt") if text is None else text
    graph_def = read_proto(tf.compat.v1.GraphDef(), path, text=text, what="GraphDef")
    if validate:
        validate_constants(graph_def, path)
    return graph_def


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


# ---------------------------------------------------------------- writing, streamed

# GraphDef field numbers (tensorflow/core/framework/graph.proto) and the NodeDef/AttrValue/TensorProto
# fields used to write a constant's bytes straight from its array.
_GRAPH_NODE, _GRAPH_LIBRARY, _GRAPH_VERSIONS = 1, 2, 4
_NODE_ATTR, _ENTRY_KEY, _ENTRY_VALUE, _ATTR_TENSOR, _TENSOR_CONTENT = 5, 1, 2, 8, 4


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(field: int, length: int) -> bytes:
    """Tag (wire type 2) and length of a length-delimited field; its payload follows."""
    return _varint(field << 3 | 2) + _varint(length)


def node_field(node) -> bytes:
    """One `node` field of a binary GraphDef: tag, length, the serialised NodeDef."""
    data = node.SerializeToString()
    return _length_delimited(_GRAPH_NODE, len(data)) + data


def tail_fields(graph_def):
    """The `library` and `versions` fields of a binary GraphDef, after its nodes."""
    for field, name in ((_GRAPH_LIBRARY, "library"), (_GRAPH_VERSIONS, "versions")):
        if graph_def.HasField(name):
            data = getattr(graph_def, name).SerializeToString()
            yield _length_delimited(field, len(data)) + data


def const_node_chunks(stub, value):
    """A Const node `stub` (name, dtype, no value) holding `value`, as `node` field bytes: its
    serialised head, then the array's bytes as `tensor_content`, never copied into one bytes object.

    Protobuf's parser takes fields in any order, so the `value` attr (a map entry holding an
    AttrValue holding a TensorProto) is appended after the rest of the node, with its lengths
    computed by hand.
    """
    from tensorflow.core.framework import tensor_pb2

    dtype = tf.as_dtype(stub.attr["dtype"].type)
    if (not tfcompat.has_tensor_content(dtype) or value.size <= 1 or sys.byteorder != "little"
            or value.nbytes < 1 << 16):  # small or unusual: TensorFlow's own encoding
        full = tf.compat.v1.NodeDef()
        full.CopyFrom(stub)
        full.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value, dtype=dtype, shape=value.shape))
        yield node_field(full)
        return
    array = np.ascontiguousarray(value, dtype=dtype.as_numpy_dtype)
    content = memoryview(array).cast("B")
    head = tf.compat.v1.NodeDef()
    head.CopyFrom(stub)
    if "value" in head.attr:
        del head.attr["value"]
    tensor_head = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum)  # dtype + shape; content follows
    tensor_head.tensor_shape.CopyFrom(tf.TensorShape(array.shape).as_proto())
    tensor = tensor_head.SerializeToString() + _length_delimited(_TENSOR_CONTENT, len(content))
    attr_value = _length_delimited(_ATTR_TENSOR, len(tensor) + len(content)) + tensor
    entry = (_length_delimited(_ENTRY_KEY, 5) + b"value"
             + _length_delimited(_ENTRY_VALUE, len(attr_value) + len(content)) + attr_value)
    node = head.SerializeToString() + _length_delimited(_NODE_ATTR, len(entry) + len(content)) + entry
    yield _length_delimited(_GRAPH_NODE, len(node) + len(content)) + node
    yield content


class _Whole:
    """A complete GraphDef seen through the streaming interface `write_graph_def` reads."""

    def __init__(self, graph_def):
        self.skeleton = graph_def
        self.estimated_bytes = graph_def.ByteSize()

    def nodes(self):
        return iter(self.skeleton.node)

    def node_chunks(self):
        for node in self.skeleton.node:
            yield node_field(node)
        yield from tail_fields(self.skeleton)


def _text_chunks(source):
    """The text GraphDef, one `node { … }` block at a time (the form `text_format` prints)."""
    from google.protobuf import text_format

    for node in source.nodes():
        yield "node {\n" + text_format.MessageToString(node, indent=2) + "}\n"
    for name in ("library", "versions"):
        if source.skeleton.HasField(name):
            yield f"{name} {{\n" + text_format.MessageToString(getattr(source.skeleton, name), indent=2) + "}\n"


def write_graph_def(graph_def, path: str, *, text: bool | None = None, progress: bool = False) -> int:
    """Write a GraphDef atomically as binary `.pb` (or text), node by node; returns the bytes written.

    `text=None` writes text when `path` ends in `.pbtxt` (what `load_model` expects of the name).
    `graph_def` may also be a streamed graph (a lazily filled `Piece`): anything with `estimated_bytes`,
    `node_chunks()` (binary `node`/`library`/`versions` fields), `nodes()` and `skeleton` (for
    library and versions), so constants are filled while written and the whole proto never sits
    in memory. Anything over protobuf's 2 GB limit is refused before a byte is written.
    """
    if text is None:
        text = os.fspath(path).endswith(".pbtxt")
    source = _checked_size(graph_def)
    from tqdm import tqdm

    with atomic_path(path) as tmp, open(tmp, "wb") as f, \
            tqdm(total=source.estimated_bytes, unit="B", unit_scale=True, desc="writing",
                 disable=None if progress else True, leave=False) as bar:
        return stream_graph_def(source, f, text=text, on_chunk=bar.update)


def stream_graph_def(graph_def, stream, *, text: bool = False, on_chunk=None) -> int:
    """Write a GraphDef (or a streamed graph) to an open binary stream (a file, stdout), node by
    node; returns the number of bytes written."""
    source = _checked_size(graph_def)
    written = 0
    for chunk in (_text_chunks(source) if text else source.node_chunks()):
        if isinstance(chunk, str):
            chunk = chunk.encode("utf-8")
        stream.write(chunk)
        written += len(chunk)
        if on_chunk:
            on_chunk(len(chunk))
        if not text and written > MAX_GRAPHDEF_BYTES:  # the estimate was short (unknown variable shapes)
            raise GraphTooBigError("the frozen graph is over the 2 GB limit of a GraphDef", TOO_BIG_HINT)
    return written


def _checked_size(graph_def):
    """`graph_def` as a streamed source, refused when its estimated size is over 2 GB."""
    source = graph_def if hasattr(graph_def, "node_chunks") else _Whole(graph_def)
    size = source.estimated_bytes
    if size > MAX_GRAPHDEF_BYTES:
        raise GraphTooBigError(f"the frozen graph would be {size / 2**30:.1f} GB, over the 2 GB limit of a GraphDef",
                          TOO_BIG_HINT)
    return source


# ---------------------------------------------------------------- Grappler

GRAPPLER_PASSES = ("function", "loop", "constfold", "arithmetic", "dependency", "constfold", "pruning")


def grappler(graph_def, inputs, outputs, passes=GRAPPLER_PASSES):
    """Run Grappler's `passes` over `graph_def`, keeping `inputs` and `outputs` (tensor names)."""
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2

    meta_graph = tf.compat.v1.train.export_meta_graph(graph_def=graph_def, graph=graph_from_def(graph_def))
    fetch = meta_graph_pb2.CollectionDef()
    fetch.node_list.value.extend(list(inputs) + list(outputs))
    meta_graph.collection_def["train_op"].CopyFrom(fetch)
    config = config_pb2.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    rewrite.min_graph_nodes = -1  # small graphs too
    rewrite.optimizers.extend(passes)
    rewrite.meta_optimizer_iterations = rewrite.TWO
    return tfcompat.optimize_graph(config, meta_graph)


__all__ = ["Index", "shape_str", "ancestors", "descendants", "replace_uses", "bypass", "remove", "drop_control_edges", "cut", "prune", "rename",
           "toposort", "clear_devices", "read_graph_def", "read_proto", "write_graph_def", "graph_from_def",
           "likely_output_nodes", "empty_like", "validate_constants", "grappler"]
