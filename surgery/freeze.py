"""Freeze: variables → constants, pruned to the outputs, inputs cut into placeholders,
training-only nodes stripped. Works on plain `GraphDef` protos, as `graph_util` does.

Values come from a `read_variable(name) -> ndarray` callable (a `Model` reads its
checkpoint with `CheckpointReader`), so no session holds the weights a second time.
"""

from __future__ import annotations

import dataclasses

from . import tfcompat
from .errors import CutError, OutputError, SurgeryError
from .files import atomic_path
from .inspect import tensor_info
from .names import VARIABLE_OP_TYPES, node_input_op, resolve_tensors, split_tensor_name

tf = tfcompat.tf

MAX_GRAPHDEF_BYTES = 2**31 - 1  # protobuf's hard limit on one message


@dataclasses.dataclass
class FrozenGraph:
    graph_def: object
    inputs: list  # [{name, dtype, shape}] to feed after import_graph_def(name="")
    outputs: list  # [{name, dtype, shape}] to fetch


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
    out = tf.compat.v1.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
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


def _const_node(name: str, value, dtype) -> object:
    node = tf.compat.v1.NodeDef(name=name, op="Const")
    node.attr["dtype"].type = dtype.as_datatype_enum
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value, dtype=dtype))
    return node


def variables_to_constants(graph_def, read_variable) -> object:
    """Each variable node becomes a Const holding its value; resource reads become Identity."""
    out = tf.compat.v1.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    resource_vars = {}
    for node in graph_def.node:
        if node.op in VARIABLE_OP_TYPES:
            dtype = tf.as_dtype(node.attr["dtype"].type)
            value = read_variable(node.name)
            out.node.append(_const_node(node.name, value, dtype))
            if node.op == "VarHandleOp":
                resource_vars[node.name] = dtype
            continue
        out.node.add().CopyFrom(node)
    for node in out.node:
        if node.input and node_input_op(node.input[0]) in resource_vars:
            dtype = resource_vars[node_input_op(node.input[0])]
            if node.op == "ReadVariableOp":
                node.op = "Identity"
                node.attr["T"].type = dtype.as_datatype_enum
                del node.attr["dtype"]
            elif node.op == "ResourceGather":
                node.op = "GatherV2"
                axis = _const_node(node.name + "/axis", 0, tf.int32)
                out.node.append(axis)
                node.input.insert(2, axis.name)
                node.attr["Tparams"].type = dtype.as_datatype_enum
                for a in ("dtype", "batch_dims", "validate_indices"):
                    if a in node.attr:
                        del node.attr[a]
            else:
                raise SurgeryError(f"cannot freeze op '{node.name}' ({node.op}) that writes or reads a resource variable",
                                   "freeze only the inference part: name outputs above the training ops")
    return out


def strip_training_nodes(graph_def) -> object:
    """Clear devices and colocation, and bypass `CheckNumerics` (pass-through at inference)."""
    bypass = {}
    for node in graph_def.node:
        if node.op == "CheckNumerics":
            bypass[node.name] = node.input[0]
    out = tf.compat.v1.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
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


def freeze_graph(graph, outputs, *, inputs=(), read_variable=None) -> FrozenGraph:
    """Freeze `graph` (a tf.Graph) to `outputs`, cut at `inputs`, with variable values from `read_variable`.

    `outputs`/`inputs` are names in any form `resolve_tensors` accepts, or tf.Tensors.
    """
    out_tensors = outputs if outputs and not isinstance(outputs, str) and hasattr(outputs[0], "op") \
        else resolve_tensors(graph, outputs)
    in_tensors = inputs if inputs and not isinstance(inputs, str) and hasattr(inputs[0], "op") \
        else resolve_tensors(graph, inputs)
    if not out_tensors:
        raise SurgeryError("no outputs given", "name the tensors to keep with --outputs, e.g. --outputs predictions")
    gd, replaced = cut_at(graph.as_graph_def(), in_tensors)
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
    gd = strip_training_nodes(variables_to_constants(gd, read_variable))
    frozen_graph = tf.Graph()
    with frozen_graph.as_default():
        tf.import_graph_def(gd, name="")
    placeholders = [op.outputs[0] for op in frozen_graph.get_operations() if op.type == "Placeholder"]
    return FrozenGraph(
        graph_def=gd,
        inputs=[tensor_info(t) for t in placeholders],
        outputs=[tensor_info(frozen_graph.get_tensor_by_name(_tensor(n))) for n in out_names],
    )


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


def write_graph_def(graph_def, path: str, *, text: bool = False) -> None:
    """Write `graph_def` atomically as binary `.pb` (or text); refuses over protobuf's 2 GB limit."""
    size = graph_def.ByteSize()
    if size > MAX_GRAPHDEF_BYTES:
        raise OutputError(
            f"the frozen graph would be {size / 2**30:.1f} GB, over the 2 GB limit of a GraphDef",
            "split it into pieces (`surgery split`) or export a SavedModel, which keeps weights outside the proto",
        )
    with atomic_path(path) as tmp:
        if text:
            from google.protobuf import text_format

            with open(tmp, "w") as f:
                f.write(text_format.MessageToString(graph_def))
        else:
            with open(tmp, "wb") as f:
                f.write(graph_def.SerializeToString())


def freeze_model(model, outputs, *, inputs=()) -> FrozenGraph:
    """Freeze a loaded `Model` with values read straight from its checkpoint."""
    read = None
    if model.checkpoint:
        reader = model.checkpoint_reader()
        keys = model.checkpoint_keys()

        def read(name):
            key = keys.get(name, name)
            if not reader.has_tensor(key):
                raise SurgeryError(f"variable '{name}' has no value in checkpoint {model.checkpoint}",
                                   "restore it first with `surgery restore`, or freeze above it")
            return reader.get_tensor(key)
    return freeze_graph(model.graph, outputs, inputs=inputs, read_variable=read)


__all__ = ["FrozenGraph", "freeze_graph", "freeze_model", "write_graph_def", "cut_at"]
