"""Freeze: variables → constants, pruned to the outputs, inputs cut into placeholders,
training-only nodes stripped, devices cleared. Works on plain `GraphDef` protos, as `graph_util` does.

Lean by design. TensorFlow's own path (import_meta_graph + Saver.restore +
convert_variables_to_constants + SerializeToString) holds every weight three times: in a
session, as constants, as serialised bytes. Here the graph is pruned and checked as a
*skeleton* first (variables become value-less `Const` stubs), and the weights are read one
variable at a time from the checkpoint (`read_variable`, a `CheckpointReader` for a `Model`)
only while the file is written: a GraphDef is a sequence of length-delimited `node` fields, so
each node is written as tag + length + bytes, and a large constant's bytes go to the file
straight from the array. Peak memory is about one variable, not three copies of the model.

`FrozenGraph.graph_def` still gives the whole proto (built on first use) for callers that want it.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from . import tfcompat
from .errors import CutError, OutputError, SurgeryError
from .files import atomic_path
from .inspect import tensor_info
from .names import VARIABLE_OP_TYPES, is_machinery, node_input_op, resolve_tensors, split_tensor_name

tf = tfcompat.tf

MAX_GRAPHDEF_BYTES = 2**31 - 1  # protobuf's hard limit on one message
TOO_BIG_HINT = ("split it into pieces (`surgery split`) or export a SavedModel, "
                "which keeps weights outside the proto")

# Ops that change state: a frozen graph cannot hold them (their variable is now a constant).
STATE_WRITING_OPS = frozenset({
    "Assign", "AssignAdd", "AssignSub", "AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp",
    "ScatterUpdate", "ScatterAdd", "ScatterSub", "ResourceScatterUpdate", "ResourceScatterAdd",
})

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


class FrozenGraph:
    """A frozen graph and the tensors to feed (`inputs`) and fetch (`outputs`), each
    `{name, dtype, shape}`, named as after `tf.import_graph_def(graph_def, name="")`.

    Built by `freeze_graph` as a skeleton whose variable constants are filled from
    `read_variable` only when written (`write_graph_def(frozen, path)`) or when
    `graph_def` is first read. `FrozenGraph(graph_def, inputs, outputs)` wraps a complete one.
    """

    def __init__(self, graph_def=None, inputs=None, outputs=None, *, skeleton=None, constants=None,
                 read_variable=None):
        if (graph_def is None) == (skeleton is None):
            raise ValueError("give a complete graph_def or a skeleton, not both")
        self._graph_def = graph_def
        self._skeleton = skeleton if skeleton is not None else graph_def
        # Const stub name -> the variable name to read its value with, or the source Const node holding it
        self._constants = dict(constants or {})
        self._read_variable = read_variable
        self.inputs = list(inputs or [])
        self.outputs = list(outputs or [])

    def __repr__(self) -> str:
        return (f"FrozenGraph({self.num_nodes} nodes, inputs={[t['name'] for t in self.inputs]}, "
                f"outputs={[t['name'] for t in self.outputs]})")

    @property
    def num_nodes(self) -> int:
        return len(self._skeleton.node)

    @property
    def skeleton(self):
        """The structure: the frozen GraphDef with variable constants still value-less (cheap to inspect)."""
        return self._skeleton

    @property
    def estimated_bytes(self) -> int:
        """Size of the serialised GraphDef, from the skeleton and the variables' declared shapes."""
        if self._graph_def is not None:
            return self._graph_def.ByteSize()
        by_name = {n.name: n for n in self._skeleton.node}
        return self._skeleton.ByteSize() + sum(
            (_stub_nbytes(by_name[c]) if isinstance(source, str) else source.ByteSize()) + 16
            for c, source in self._constants.items())

    @property
    def graph_def(self):
        """The complete frozen GraphDef (built once, on first use; prefer `write_graph_def(frozen, path)`)."""
        if self._graph_def is None:
            gd = empty_like(self._skeleton)
            gd.node.extend(self.nodes())
            self._graph_def = gd
        return self._graph_def

    def nodes(self):
        """Every NodeDef of the frozen graph in order, constants filled one at a time."""
        if self._graph_def is not None:
            yield from self._graph_def.node
            return
        for node in self._skeleton.node:
            if node.name not in self._constants:
                yield node
                continue
            if not isinstance(self._constants[node.name], str):
                yield _held_constant(self._constants[node.name])
                continue
            full = tf.compat.v1.NodeDef()
            full.CopyFrom(node)
            value = self._value(node)
            full.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value, dtype=_stub_dtype(node),
                                                                    shape=value.shape))
            yield full

    def _value(self, stub) -> np.ndarray:
        variable = self._constants[stub.name]
        value = np.asarray(self._read_variable(variable))
        _check_shape(variable, stub, value.shape, "the checkpoint")
        return value

    def node_chunks(self):
        """The binary GraphDef as byte chunks: each `node` field, then `library` and `versions`."""
        source = self._skeleton if self._graph_def is None else self._graph_def
        for node in source.node:
            held = self._constants.get(node.name) if self._graph_def is None else None
            if isinstance(held, str):
                yield from _const_node_chunks(node, self._value(node))
            elif held is not None:
                data = _held_constant(held).SerializeToString()
                yield _length_delimited(_GRAPH_NODE, len(data)) + data
            else:
                data = node.SerializeToString()
                yield _length_delimited(_GRAPH_NODE, len(data)) + data
        for field, name in ((_GRAPH_LIBRARY, "library"), (_GRAPH_VERSIONS, "versions")):
            if source.HasField(name):
                data = getattr(source, name).SerializeToString()
                yield _length_delimited(field, len(data)) + data


def _held_constant(node):
    """A Const of the source graph as the frozen graph holds it: device and colocation cleared."""
    if node.device or "_class" in node.attr:
        clean = tf.compat.v1.NodeDef()
        clean.CopyFrom(node)
        clean.device = ""
        if "_class" in clean.attr:
            del clean.attr["_class"]
        return clean
    return node


def empty_like(graph_def):
    """A GraphDef with `graph_def`'s versions and function library, and no nodes."""
    out = tf.compat.v1.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    return out


def hold_large_constants(graph_def, min_bytes: int = 1 << 20) -> tuple:
    """(structure, {name: Const node}): `graph_def` with each large input-less Const replaced by a
    value-less stub, and the originals, to be written back in place when the frozen graph is.
    Re-pruning a frozen graph then moves no weights until they are written."""
    out = empty_like(graph_def)
    held = {}
    for node in graph_def.node:
        if node.op == "Const" and not node.input and node.attr["value"].tensor.ByteSize() >= min_bytes:
            stub = out.node.add(name=node.name, op="Const")
            stub.attr["dtype"].CopyFrom(node.attr["dtype"])
            stub.attr["value"].tensor.dtype = node.attr["value"].tensor.dtype
            stub.attr["value"].tensor.tensor_shape.CopyFrom(node.attr["value"].tensor.tensor_shape)
            held[node.name] = node
        else:
            out.node.add().CopyFrom(node)
    return out, held


def _check_shape(variable: str, stub, found, where: str) -> None:
    """The value found for `variable` must have the shape its stub declares (-1: any)."""
    declared = [d.size for d in stub.attr["value"].tensor.tensor_shape.dim]
    if len(declared) != len(found) or any(d not in (-1, f) for d, f in zip(declared, found)):
        raise SurgeryError(f"variable '{variable}' has shape {list(found)} in {where} but {declared} in the graph",
                           "restore it from a matching checkpoint with `surgery restore`")


def _stub_dtype(node):
    return tf.as_dtype(node.attr["dtype"].type)


def _stub_nbytes(node) -> int:
    dims = [max(d.size, 0) for d in node.attr["value"].tensor.tensor_shape.dim]
    return int(np.prod(dims, dtype=np.int64)) * _stub_dtype(node).size


def _const_node_chunks(stub, value):
    """A Const node with `value`: its serialised head, then the array's bytes as `tensor_content`.

    Protobuf's parser takes fields in any order, so the `value` attr (a map entry holding an
    AttrValue holding a TensorProto) is appended after the rest of the node, with its lengths
    computed by hand; the content itself is never copied into a bytes object.
    """
    from tensorflow.core.framework import tensor_pb2
    from tensorflow.python.framework import tensor_util

    dtype = _stub_dtype(stub)
    if (dtype not in tensor_util._TENSOR_CONTENT_TYPES or value.size <= 1 or sys.byteorder != "little"
            or value.nbytes < 1 << 16):  # small or unusual: TensorFlow's own encoding
        full = tf.compat.v1.NodeDef()
        full.CopyFrom(stub)
        full.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value, dtype=dtype, shape=value.shape))
        data = full.SerializeToString()
        yield _length_delimited(_GRAPH_NODE, len(data)) + data
        return
    array = np.ascontiguousarray(value, dtype=dtype.as_numpy_dtype)
    content = memoryview(array).cast("B")
    head = tf.compat.v1.NodeDef()
    head.CopyFrom(stub)
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


def placeholder_name(op_name: str, index: int, taken: set) -> str:
    """The name of the placeholder that replaces tensor `op_name:index`: the op's own name for
    output 0 (so `fc7:0` is fed as `fc7:0`), `op_name_<index>` otherwise."""
    name = op_name if index == 0 else f"{op_name}_{index}"
    while index != 0 and name in taken:
        name += "_"
    return name


def cut_at(graph_def, tensors) -> tuple:
    """Replace each tensor in `tensors` (tf.Tensor) by a typed Placeholder, rewiring consumers.

    Returns (new GraphDef, {tensor name: placeholder tensor name}). The nodes that produced
    the cut tensors disappear; anything only they fed is pruned later.
    """
    taken = {n.name for n in graph_def.node}
    replace = {}  # "op:k" -> placeholder op name
    new_nodes = []
    for t in tensors:
        if t.op.type in ("Placeholder",) and t.value_index == 0:
            replace[t.name] = t.op.name
            continue
        ph = placeholder_name(t.op.name, t.value_index, taken)
        taken.add(ph)
        replace[t.name] = ph
        node = tf.compat.v1.NodeDef(name=ph, op="Placeholder")
        node.attr["dtype"].type = t.dtype.base_dtype.as_datatype_enum
        if t.shape.rank is not None:
            node.attr["shape"].shape.CopyFrom(t.shape.as_proto())
        new_nodes.append(node)
    cut_ops = {t.op.name for t in tensors if replace[t.name] != t.op.name or t.op.type != "Placeholder"}
    out = empty_like(graph_def)
    for node in graph_def.node:
        if node.name in cut_ops:
            continue
        new = out.node.add()
        new.CopyFrom(node)
        del new.input[:]
        for inp in node.input:
            if inp.startswith("^"):
                if inp[1:] in cut_ops:
                    continue
                new.input.append(inp)
                continue
            op, idx = split_tensor_name(inp)
            key = f"{op}:{idx or 0}"
            new.input.append(replace.get(key, inp) if op in cut_ops or key in replace else inp)
    out.node.extend(new_nodes)
    return out, replace


def _const_stub(variable) -> object:
    """A Const standing for `variable`, with dtype and shape but no value yet."""
    node = tf.compat.v1.NodeDef(name=variable.name, op="Const")
    node.attr["dtype"].type = variable.attr["dtype"].type
    node.attr["value"].tensor.dtype = variable.attr["dtype"].type
    node.attr["value"].tensor.tensor_shape.CopyFrom(variable.attr["shape"].shape)
    return node


def _variables_to_constants(graph_def) -> tuple:
    """Variables → value-less Const stubs, by TensorFlow's own converter (the engine of
    `convert_variables_to_constants`): resource reads become Identity, ResourceGather GatherV2,
    and resource handles passed into functions (`If`, `While`, `PartitionedCall`, as v2 control
    flow and Keras make them) become plain tensors there too. The converter is fed a scalar
    stand-in per variable; each Const it makes is then replaced by a stub with the variable's
    dtype and shape, to be filled while writing. Returns (GraphDef, {const name: variable name}).
    """
    from tensorflow.python.framework import convert_to_constants as ctc

    variables = {n.name: n for n in graph_def.node if n.op in VARIABLE_OP_TYPES}
    for node in graph_def.node:
        if node.op in STATE_WRITING_OPS:
            raise SurgeryError(f"cannot freeze '{node.name}' ({node.op}): it writes a variable, "
                               "which becomes a constant",
                               "freeze only the inference part: name outputs that do not depend on training ops")
    if not variables:
        return graph_def, {}
    data = ctc._ConverterData(graph_def)
    for name, node in variables.items():
        dtype = tf.as_dtype(node.attr["dtype"].type)
        stand_in = np.array(b"", dtype=object) if dtype == tf.string else np.zeros((), dtype.as_numpy_dtype)
        data.tensor_data[name] = ctc._TensorData(numpy=stand_in, dtype=node.attr["dtype"].type, index=None)
    try:
        converted, _ = ctc._replace_variables_by_constants(data)
    except ValueError as e:
        raise SurgeryError(f"cannot turn the variables into constants: {str(e).splitlines()[0][:200]}",
                           "freeze only the inference part: name outputs above the training ops") from e
    for node in converted.node:
        if node.name in variables:
            node.CopyFrom(_const_stub(variables[node.name]))
    return converted, {name: name for name in variables}


def strip_training_nodes(graph_def, *, protected=(), constants=()) -> object:
    """Clear devices and colocation, bypass `CheckNumerics`, and splice out pass-through
    `Identity` reads of frozen variables (`w/read`, resource reads), keeping `protected` names."""
    constants, protected = set(constants), set(protected)
    bypass = {}
    for node in graph_def.node:
        if node.name in protected:
            continue
        if node.op == "CheckNumerics" or (node.op == "Identity" and len(node.input) == 1
                                          and node_input_op(node.input[0]) in constants):
            bypass[node.name] = node.input[0]
    out = empty_like(graph_def)
    for node in graph_def.node:
        if node.name in bypass:
            continue
        new = out.node.add()
        new.CopyFrom(node)
        new.device = ""
        if "_class" in new.attr:
            del new.attr["_class"]
        for i, inp in enumerate(new.input):
            src = inp.lstrip("^")
            while node_input_op(src) in bypass:
                src = bypass[node_input_op(src)]
            new.input[i] = ("^" + node_input_op(src)) if inp.startswith("^") else src
    return out


def _drop_machinery_control_inputs(graph_def) -> None:
    """Remove control edges from savers, initialisers, summaries and update ops, so pruning to
    the outputs does not drag training machinery along (in place)."""
    machinery = {n.name for n in graph_def.node if is_machinery(n.name, n.op) or n.op in STATE_WRITING_OPS}
    for node in graph_def.node:
        keep = [i for i in node.input if not (i.startswith("^") and i[1:] in machinery)]
        if len(keep) != len(node.input):
            del node.input[:]
            node.input.extend(keep)


def _as_tensors(graph, names) -> list:
    if names and not isinstance(names, str) and hasattr(names[0], "op"):
        return list(names)
    return resolve_tensors(graph, names)


def freeze_graph(graph, outputs, *, inputs=(), read_variable=None, optimize=False, graph_def=None) -> FrozenGraph:
    """Freeze `graph` (a tf.Graph) to `outputs`, cut at `inputs`, with variable values from `read_variable`.

    `outputs`/`inputs` are names in any form `resolve_tensors` accepts, or tf.Tensors. The
    pruned structure is checked (imported into a scratch graph, size estimated against the
    2 GB limit) before any weight is read; weights are read when the result is written or its
    `graph_def` is first used. `optimize=True` also runs the inference passes of
    `surgery.optimize` (constant and batch-norm folding, identity removal, training flags fixed).
    `graph_def`, the GraphDef `graph` was imported from, saves copying large constants out of it.
    """
    out_tensors = _as_tensors(graph, outputs)
    in_tensors = _as_tensors(graph, inputs)
    if not out_tensors:
        raise SurgeryError("no outputs given", "name the tensors to keep with --outputs, e.g. --outputs predictions")
    structure, held = hold_large_constants(graph_def if graph_def is not None else graph.as_graph_def())
    gd, replaced = cut_at(structure, in_tensors)
    del structure
    _drop_machinery_control_inputs(gd)
    out_names = [replaced.get(t.name, t.name) for t in out_tensors]
    try:
        gd = tf.compat.v1.graph_util.extract_sub_graph(gd, sorted({node_input_op(n) for n in out_names}))
    except (AssertionError, ValueError, KeyError) as e:
        raise CutError(f"cannot prune the graph to {', '.join(out_names)}: {e}",
                       "check that the outputs exist above the inputs") from e
    _check_cut_is_clean(gd, in_tensors, replaced)
    variables = [n.name for n in gd.node if n.op in VARIABLE_OP_TYPES]
    if variables and read_variable is None:
        raise SurgeryError(f"the graph has {len(variables)} variables but no checkpoint to read them from",
                           "pass a checkpoint prefix or directory, not the .meta alone")
    gd, constants = _variables_to_constants(gd)
    protected = {node_input_op(n) for n in out_names} | set(replaced.values())
    skeleton = strip_training_nodes(gd, protected=protected, constants=constants)
    constants.update({n.name: held[n.name] for n in skeleton.node if n.name in held})
    infos = _tensor_infos(skeleton, out_names)
    frozen = FrozenGraph(inputs=infos[0], outputs=infos[1], skeleton=skeleton, constants=constants,
                         read_variable=read_variable)
    size = frozen.estimated_bytes
    if size > MAX_GRAPHDEF_BYTES:
        raise OutputError(f"the frozen graph would be about {size / 2**30:.1f} GB, over the 2 GB limit of a GraphDef",
                          TOO_BIG_HINT)
    if optimize:
        from .optimize import optimize_for_inference

        graph_def = optimize_for_inference(frozen.graph_def, [t["name"] for t in frozen.inputs], out_names)
        frozen = FrozenGraph(graph_def, *_tensor_infos(graph_def, out_names))
    return frozen


def _tensor_infos(graph_def, out_names) -> tuple:
    """([placeholder infos], [output infos]) of `graph_def`, imported into a scratch graph; a
    skeleton's value-less constants import cheaply, so this checks the structure before weights are read."""
    try:
        scratch = tfcompat.graph_from_def(graph_def)
    except (ValueError, tf.errors.OpError) as e:
        raise SurgeryError(f"the frozen graph does not import: {str(e).splitlines()[0][:200]}",
                           "freeze above the offending op, or cut it off with --inputs") from e
    placeholders = [op.outputs[0] for op in scratch.get_operations() if op.type == "Placeholder"]
    return ([tensor_info(t) for t in placeholders],
            [tensor_info(scratch.get_tensor_by_name(_tensor(n))) for n in out_names])


def _tensor(name: str) -> str:
    op, idx = split_tensor_name(name)
    return f"{op}:{idx or 0}"


def _check_cut_is_clean(graph_def, in_tensors, replaced):
    """A cut op with several outputs must have all its used outputs cut."""
    cut_ops = {t.op.name: t for t in in_tensors if replaced[t.name] == t.op.name and t.op.type != "Placeholder"}
    for node in graph_def.node:
        for inp in node.input:
            op, idx = split_tensor_name(inp.lstrip("^"))
            if op in cut_ops and (idx or 0) != 0 and node.op != "Placeholder":
                raise CutError(f"'{node.name}' still uses '{op}:{idx}', an output of cut op '{op}' that is not cut",
                               f"add '{op}:{idx}' to the cut tensors")


def write_graph_def(graph_def, path: str, *, text: bool | None = None, progress: bool = False) -> int:
    """Write a GraphDef or a `FrozenGraph` atomically as binary `.pb` (or text), node by node.

    `text=None` writes text when `path` ends in `.pbtxt` (what `load_model` expects of the name).
    Refuses anything over protobuf's 2 GB limit before writing a byte (a `FrozenGraph`'s size is
    estimated from its variables' shapes). A `FrozenGraph` is filled from its checkpoint while
    written, one variable at a time, so the whole constant-filled proto never sits in memory.
    Returns the number of bytes written.
    """
    if text is None:
        text = os.fspath(path).endswith(".pbtxt")
    frozen = _check_size(graph_def)
    from tqdm import tqdm

    with atomic_path(path) as tmp, open(tmp, "wb") as f, \
            tqdm(total=frozen.estimated_bytes, unit="B", unit_scale=True, desc="writing",
                 disable=None if progress else True, leave=False) as bar:
        return stream_graph_def(frozen, f, text=text, on_chunk=bar.update)


def stream_graph_def(graph_def, stream, *, text: bool = False, on_chunk=None) -> int:
    """Write a GraphDef or a `FrozenGraph` to an open binary stream (a file, stdout), node by node.
    Returns the number of bytes written."""
    frozen = _check_size(graph_def)
    written = 0
    for chunk in (_text_chunks(frozen) if text else frozen.node_chunks()):
        if isinstance(chunk, str):
            chunk = chunk.encode("utf-8")
        stream.write(chunk)
        written += len(chunk)
        if on_chunk:
            on_chunk(len(chunk))
        if not text and written > MAX_GRAPHDEF_BYTES:  # the estimate was short (unknown variable shapes)
            raise OutputError(f"the frozen graph is over the 2 GB limit of a GraphDef", TOO_BIG_HINT)
    return written


def _check_size(graph_def) -> "FrozenGraph":
    frozen = graph_def if isinstance(graph_def, FrozenGraph) else FrozenGraph(graph_def)
    size = frozen.estimated_bytes
    if size > MAX_GRAPHDEF_BYTES:
        raise OutputError(f"the frozen graph would be {size / 2**30:.1f} GB, over the 2 GB limit of a GraphDef",
                          TOO_BIG_HINT)
    return frozen


def _text_chunks(frozen: FrozenGraph):
    """The text GraphDef, one `node { … }` block at a time (the form `text_format` prints)."""
    from google.protobuf import text_format

    for node in frozen.nodes():
        yield "node {\n" + text_format.MessageToString(node, indent=2) + "}\n"
    skeleton = frozen.skeleton
    for name in ("library", "versions"):
        if skeleton.HasField(name):
            yield f"{name} {{\n" + text_format.MessageToString(getattr(skeleton, name), indent=2) + "}\n"


def checkpoint_variable_reader(model):
    """`read(variable op name) -> ndarray` straight from `model`'s checkpoint, after checking up front
    that every variable has a value of its declared shape there (so a bad checkpoint fails before
    anything is written). None for a model without a checkpoint."""
    if not model.checkpoint:
        return None
    reader = model.checkpoint_reader()
    keys = model.checkpoint_keys()
    shapes = reader.get_variable_to_shape_map()

    def read(name):
        key = keys.get(name, name)
        if key not in shapes:
            raise SurgeryError(f"variable '{name}' has no value in checkpoint {model.checkpoint}",
                               "restore it first with `surgery restore`, or freeze above it")
        return reader.get_tensor(key)

    read.shapes = {name: shapes.get(keys.get(name, name)) for name in keys}
    return read


def freeze_model(model, outputs, *, inputs=(), optimize=False) -> FrozenGraph:
    """Freeze a loaded `Model` with values read straight from its checkpoint (see `freeze_graph`)."""
    read = checkpoint_variable_reader(model)
    frozen = freeze_graph(model.graph, outputs, inputs=inputs, read_variable=read, optimize=optimize,
                          graph_def=model.graph_def if model.is_frozen else None)
    if read is not None and frozen._graph_def is None:
        by_name = {n.name: n for n in frozen.skeleton.node}
        for const, variable in frozen._constants.items():
            if not isinstance(variable, str):
                continue
            found = read.shapes.get(variable)
            if found is None:
                read(variable)  # raises: no value in the checkpoint
            _check_shape(variable, by_name[const], found, f"checkpoint {model.checkpoint}")
    return frozen


__all__ = ["FrozenGraph", "freeze_graph", "freeze_model", "write_graph_def", "cut_at"]
