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

`Piece.graph_def` still gives the whole proto (built on first use) for callers that want it.
"""

from __future__ import annotations

from ..core import graph as g
from ..core import tfcompat
from ..core.errors import CutError, GraphTooBigError, SurgeryError
from ..core.graph import TOO_BIG_HINT, empty_like, write_graph_def
from ..core.names import VARIABLE_OP_TYPES, is_machinery, node_input_op, resolve_tensors, split_tensor_name
from ..core.pieces import Piece, TensorSpec, check_shape
from ..core.weights import variable_reader

tf = tfcompat.tf

# Ops that change state: a frozen graph cannot hold them (their variable is now a constant).
STATE_WRITING_OPS = frozenset({
    "Assign", "AssignAdd", "AssignSub", "AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp",
    "ScatterUpdate", "ScatterAdd", "ScatterSub", "ResourceScatterUpdate", "ResourceScatterAdd",
})


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
    variables = {n.name: n for n in graph_def.node if n.op in VARIABLE_OP_TYPES}
    for node in graph_def.node:
        if node.op in STATE_WRITING_OPS:
            raise SurgeryError(f"cannot freeze '{node.name}' ({node.op}): it writes a variable, "
                               "which becomes a constant",
                               "freeze only the inference part: name outputs that do not depend on training ops")
    if not variables:
        return graph_def, {}
    try:
        converted = tfcompat.replace_variables_by_constants(graph_def, variables)
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
    constants = set(constants)
    gd = g.bypass(graph_def, lambda n: n.op == "CheckNumerics" or (
        n.op == "Identity" and len(n.input) == 1 and node_input_op(n.input[0]) in constants), keep=protected)
    return g.clear_devices(gd)


def drop_machinery_control_inputs(graph_def):
    """Without the control edges from savers, initialisers, summaries and update ops, so pruning to
    the outputs does not drag training machinery along."""
    return g.drop_control_edges(graph_def, [n.name for n in graph_def.node
                                            if is_machinery(n.name, n.op) or n.op in STATE_WRITING_OPS])


def _as_tensors(graph, names) -> list:
    if names and not isinstance(names, str) and hasattr(names[0], "op"):
        return list(names)
    return resolve_tensors(graph, names)


def freeze_graph(graph, outputs, *, inputs=(), read_variable=None, optimize=False, graph_def=None) -> Piece:
    """Freeze `graph` (a tf.Graph) to `outputs`, cut at `inputs`, with variable values from `read_variable`.

    `outputs`/`inputs` are names in any form `resolve_tensors` accepts, or tf.Tensors. The
    pruned structure is checked (imported into a scratch graph, size estimated against the
    2 GB limit) before any weight is read; weights are read when the result is written or its
    `graph_def` is first used. `optimize=True` also runs the inference passes of
    `surgery.passes.optimize` (constant and batch-norm folding, identity removal, training flags fixed).
    `graph_def`, the GraphDef `graph` was imported from, saves copying large constants out of it.
    """
    out_tensors = _as_tensors(graph, outputs)
    in_tensors = _as_tensors(graph, inputs)
    if not out_tensors:
        raise SurgeryError("no outputs given", "name the tensors to keep with --outputs, e.g. --outputs predictions")
    structure, held = hold_large_constants(graph_def if graph_def is not None else graph.as_graph_def())
    gd, replaced = g.cut(structure, in_tensors)
    del structure
    stripped = stateful_on_path(gd, [replaced.get(t.name, t.name) for t in out_tensors])
    gd = drop_machinery_control_inputs(gd)
    out_names = [replaced.get(t.name, t.name) for t in out_tensors]
    gd = g.prune(gd, out_names)
    check_cut_is_clean(gd, in_tensors, replaced)
    variables = [n.name for n in gd.node if n.op in VARIABLE_OP_TYPES]
    if variables and read_variable is None:
        raise SurgeryError(f"the graph has {len(variables)} variables but no checkpoint to read them from",
                           "pass a checkpoint prefix or directory, not the .meta alone")
    gd, constants = _variables_to_constants(gd)
    protected = {node_input_op(n) for n in out_names} | {node_input_op(p) for p in replaced.values()}
    skeleton = strip_training_nodes(gd, protected=protected, constants=constants)
    constants.update({n.name: held[n.name] for n in skeleton.node if n.name in held})
    infos = tensor_infos(skeleton, out_names)
    frozen = Piece(inputs=infos[0], outputs=infos[1], skeleton=skeleton, constants=constants,
                   read_variable=read_variable, cut=replaced)
    size = frozen.estimated_bytes
    if size > g.MAX_GRAPHDEF_BYTES:
        raise GraphTooBigError(f"the frozen graph would be about {size / 2**30:.1f} GB, over the 2 GB limit of a GraphDef",
                          TOO_BIG_HINT)
    notes = []
    if optimize:
        from .optimize import optimize_for_inference

        graph_def = optimize_for_inference(frozen.graph_def, [t.name for t in frozen.inputs], out_names,
                                           notes=notes)
        frozen = Piece(graph_def, *tensor_infos(graph_def, out_names), cut=replaced)
    frozen.stripped_stateful = stripped
    if stripped:
        listed = ", ".join(f"{s['name']} ({s['op']})" for s in stripped[:5]) + (" …" if len(stripped) > 5 else "")
        notes.insert(0, f"removed {len(stripped)} stateful op(s) the outputs waited on: {listed}; the frozen graph "
                        "never runs them, so its answer may differ from running the original once (hint: if the "
                        "update is part of inference, compute it into the graph instead of as a side effect)")
    frozen.notes = notes
    return frozen


def stateful_on_path(graph_def, outputs) -> list:
    """[{name, op}] of the ops that write state (`Assign*`, scatter, queue and stack ops) which the
    `outputs` wait on through data or control edges: freezing strips them, and says so."""
    on_path = g.ancestors(graph_def, outputs)
    return [{"name": n.name, "op": n.op} for n in graph_def.node if n.name in on_path and (
        n.op in STATE_WRITING_OPS or n.op.startswith(("Queue", "Stack")) or n.op.endswith("EnqueueV2"))]


def tensor_infos(graph_def, out_names) -> tuple:
    """([placeholder specs], [output specs]) of `graph_def`, imported into a scratch graph; a
    skeleton's value-less constants import cheaply, so this checks the structure before weights are read."""
    try:
        scratch = g.graph_from_def(graph_def)
    except (ValueError, tf.errors.OpError) as e:
        raise SurgeryError(f"the frozen graph does not import: {str(e).splitlines()[0][:200]}",
                           "freeze above the offending op, or cut it off with --inputs") from e
    placeholders = [op.outputs[0] for op in scratch.get_operations() if op.type == "Placeholder"]
    return ([TensorSpec.of(t) for t in placeholders],
            [TensorSpec.of(scratch.get_tensor_by_name(g.tensor_name(n))) for n in out_names])


def check_cut_is_clean(graph_def, in_tensors, replaced):
    """A cut op with several outputs must have all its used outputs cut."""
    cut_ops = {t.op.name: t for t in in_tensors if replaced[t.name] == f"{t.op.name}:0" and t.op.type != "Placeholder"}
    for node in graph_def.node:
        for inp in node.input:
            op, idx = split_tensor_name(inp.lstrip("^"))
            if op in cut_ops and (idx or 0) != 0 and node.op != "Placeholder":
                raise CutError(f"'{node.name}' still uses '{op}:{idx}', an output of cut op '{op}' that is not cut",
                               f"add '{op}:{idx}' to the cut tensors")




def freeze_model(model, outputs, *, inputs=(), optimize=False, structure_only=False) -> Piece:
    """Freeze a loaded `Model`: variables become constants read straight from its checkpoint, the
    graph pruned to `outputs`, each of `inputs` turned into a placeholder, training nodes gone.

    The structure is checked first (and the 2 GB limit estimated) before any weight is read;
    the weights are read when the piece is written or its `graph_def` is first used.

    Args:
        model: a loaded `Model`.
        outputs: tensor names (any form `resolve_tensors` accepts) or tf.Tensors to keep.
        inputs: tensors to cut off into placeholders (everything below them goes).
        optimize: also run the inference passes (constant and batch-norm folding, switches fixed).
        structure_only: only the skeleton will be used (as `cuts` does), so a `.meta` without its
            checkpoint is enough; reading a weight then raises.

    Returns:
        A frozen `Piece` with its `inputs` and `outputs` as `TensorSpec`s.

    Raises:
        TensorNotFoundError: a name matches no tensor (the closest names are suggested).
        GraphTooBigError: the frozen graph would pass protobuf's 2 GB limit.

    Examples:
        >>> head = surgery.freeze_model(model, "predictions", inputs="fc7")
        >>> surgery.write_graph_def(head, "head.pb")
    """
    read = variable_reader(model)
    frozen = freeze_graph(model.graph, outputs, inputs=inputs, optimize=optimize,
                          read_variable=read if read is not None or not structure_only else _no_weights(model),
                          graph_def=model.graph_def if model.is_frozen else None)
    if read is not None:
        for stub, variable in frozen.variable_stubs():
            found = read.shapes.get(variable)
            if found is None:
                read(variable)  # raises: no value in the checkpoint
            check_shape(variable, stub, found, f"checkpoint {model.checkpoint}")
    return frozen


__all__ = ["freeze_graph", "freeze_model", "write_graph_def"]


def _no_weights(model):
    def read(variable):
        raise SurgeryError(f"{model.path} has no checkpoint to read '{variable}' from",
                           "pass the checkpoint prefix or directory, not the .meta alone")
    return read
