"""Flatten a TF2 SavedModel (functions + resource variables) into one TF1-style graph.

Keras 3 `model.export` and `tf.saved_model.save` write a graph whose real work hides in
library functions called by `StatefulPartitionedCall`, with variables captured as resource
handles and values in an object-based checkpoint. Surgery needs named tensors and named
variables, so the serving signature is flattened:

1. the graph is pruned to the signature's outputs (the signature is `serving_default`, the
   only one, or the one `--signature` names);
2. Grappler's function optimizer inlines every call (what `convert_variables_to_constants_v2`
   does internally), so layer ops appear as `functional_1/gap_1/Mean`;
3. each captured handle becomes a real resource variable named after the TF2 variable
   (`block1_conv/kernel`), found through the object graph's `bound_inputs`, in the
   `variables`/`trainable_variables` collections, so a `Saver`, `restore` and `finetune`
   treat it like a TF1 meta graph; the graph is imported whole (`import_meta_graph`), so an
   op may be called `predictions` beside the variable `predictions/kernel`;
3b. each signature input and output is named after its key (an `Identity` where several keys
   share one op);
4. the object-based checkpoint keys (`variables/0/.ATTRIBUTES/VARIABLE_VALUE`) are kept in
   `Model.variable_keys`, so `read_variable` and `freeze_model` read the SavedModel's own values.
"""

from __future__ import annotations

import difflib
import re

from . import graph as g
from . import tfcompat
from .errors import ModelLoadError
from .names import node_input_op, split_tensor_name

tf = tfcompat.tf
v1 = tf.compat.v1

_CALL_OPS = ("StatefulPartitionedCall", "PartitionedCall")
_CALL_PREFIX = re.compile(r"^(Stateful)?PartitionedCall(_\d+)?/")
_PASS_OPS = ("Identity", "IdentityN")
_SANITISE = re.compile(r"[^A-Za-z0-9_.\-/]")


def _inline_functions(graph_def, fetches) -> object:
    """Grappler's function inlining alone (every other optimizer off), as convert_to_constants does."""
    gd = v1.GraphDef()
    gd.CopyFrom(graph_def)
    for function in gd.library.function:
        # a second implementation (e.g. CuDNN) blocks inlining, and so does a function marked for
        # XLA (Keras's grouped convolution, `jit_compile=True`): both compute the same values inline
        for attr in ("api_implements", "_XlaMustCompile", "_noinline"):
            if attr in function.attr:
                del function.attr[attr]
        for node in function.node_def:
            _drop_xla_marks(node)
    for node in gd.node:
        _drop_xla_marks(node)
    return g.grappler(gd, (), fetches, passes=("function",))


def _drop_xla_marks(node) -> None:
    """A call marked `_XlaMustCompile` is never inlined; unmarked, it runs the same kernels."""
    for attr in ("_XlaMustCompile", "_XlaCompile", "_XlaScope", "_noinline"):
        if attr in node.attr:
            del node.attr[attr]


def _captured_variables(graph_def, meta_graph_def) -> dict:
    """{VarHandleOp name in graph_def: object graph node id}, read off each call's bound inputs."""
    functions = meta_graph_def.object_graph_def.concrete_functions
    nodes = {n.name: n for n in graph_def.node}
    captured = {}
    for node in graph_def.node:
        if node.op not in _CALL_OPS:
            continue
        bound = list(functions[node.attr["f"].func.name].bound_inputs) if node.attr["f"].func.name in functions else []
        data_inputs = [i for i in node.input if not i.startswith("^")]
        for inp, node_id in zip(data_inputs[len(data_inputs) - len(bound):], bound):
            handle = nodes.get(node_input_op(inp))
            if handle is not None and handle.op == "VarHandleOp":
                captured[handle.name] = node_id
    return captured


def _checkpoint_keys(checkpoint: str) -> dict:
    """{object graph node id: checkpoint key of its VARIABLE_VALUE} from the checkpoint's own object graph.

    A SavedModel's object graph and its checkpoint's object graph share node ids."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    from .weights import OBJECT_GRAPH_KEY, open_checkpoint

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(open_checkpoint(checkpoint).get_tensor(OBJECT_GRAPH_KEY))
    keys = {}
    for node_id, node in enumerate(graph.nodes):
        for attribute in node.attributes:
            if attribute.name == "VARIABLE_VALUE":
                keys[node_id] = attribute.checkpoint_key
    return keys


def _readable_names(graph_def, signature) -> tuple[dict, dict]:
    """Drop the `StatefulPartitionedCall_1/StatefulPartitionedCall/` prefixes inlining leaves, and
    name signature inputs and outputs after their keys, wherever that collides with nothing.

    Returns (renames, identities): an output that shares its op with other outputs, or is not
    its op's first, gets an `Identity` named after its key ({key: (tensor, dtype)}), so
    each key has one name of its own (`contour:0`, `note:0`, not `contour:0`, `contour:1`)."""
    taken = {n.name for n in graph_def.node}
    renames, identities = {}, {}

    def claim(old, new):
        new = _SANITISE.sub("_", new)
        if new and new != old and new not in taken:
            taken.discard(old)
            taken.add(new)
            renames[old] = new

    for key, info in signature.inputs.items():
        if info.name.endswith(":0"):
            claim(node_input_op(info.name), key)
    by_op = {}
    for key, info in signature.outputs.items():
        by_op.setdefault(node_input_op(info.name), []).append(key)
    for key, info in sorted(signature.outputs.items()):
        op = node_input_op(info.name)
        if info.name.endswith(":0") and len(by_op[op]) == 1 and op not in renames:
            claim(op, key)
        elif _SANITISE.sub("_", key) not in taken and _SANITISE.sub("_", key):
            identities[_SANITISE.sub("_", key)] = (info.name, info.dtype)
            taken.add(_SANITISE.sub("_", key))
    for node in graph_def.node:
        name = node.name
        stripped = name
        while _CALL_PREFIX.match(stripped):
            stripped = _CALL_PREFIX.sub("", stripped, count=1)
        if stripped != name and name not in renames:
            claim(name, stripped)
    return renames, identities


def _variable_nodes(graph_def, name: str, handle, trainable: bool):
    """Make VarHandleOp `name` a TF1 resource variable: add its zero initializer, `Assign` and
    `Read` nodes to `graph_def` (as `get_variable` would) and return its `VariableDef`, so
    `import_meta_graph` rebuilds a `tf.Variable` that Savers, `restore` and `finetune` use."""
    from tensorflow.core.framework import variable_pb2

    dtype = handle.attr["dtype"].type
    node = next(n for n in graph_def.node if n.name == name)
    node.attr["shared_name"].s = name.encode()
    zeros = graph_def.node.add(name=f"{name}/Initializer/zeros", op="Const")
    zeros.attr["dtype"].type = dtype
    value = zeros.attr["value"].tensor  # one zero, broadcast by TensorFlow: the graph stays small
    value.CopyFrom(tf.make_tensor_proto(0, dtype=tf.as_dtype(dtype)))
    value.tensor_shape.CopyFrom(handle.attr["shape"].shape)
    assign = graph_def.node.add(name=f"{name}/Assign", op="AssignVariableOp", input=[name, zeros.name])
    assign.attr["dtype"].type = dtype
    read = graph_def.node.add(name=f"{name}/Read/ReadVariableOp", op="ReadVariableOp", input=[name])
    read.attr["dtype"].type = dtype
    return variable_pb2.VariableDef(variable_name=name + ":0", initializer_name=assign.name,
                                    snapshot_name=read.name + ":0", initial_value_name=zeros.name + ":0",
                                    is_resource=True, trainable=trainable)


def declared_variables(meta_graph_def) -> list:
    """[(name, dtype, shape, trainable)] of every variable the SavedModel's object graph holds,
    used by its functions or not (a Keras `Normalization` keeps its adapted statistics as
    variables its call never reads; Keras counts them). Where the root lists its variables (a
    Keras export's `variables`), that list; else every variable object once."""
    nodes = meta_graph_def.object_graph_def.nodes
    if not nodes:
        return []

    def child(node, name):
        return next((c.node_id for c in node.children if c.local_name == name), None)

    listed = child(nodes[0], "variables")
    ids = [c.node_id for c in nodes[listed].children] if listed is not None and nodes[listed].children else \
        [i for i, n in enumerate(nodes) if n.WhichOneof("kind") == "variable"]
    out = []
    for i in dict.fromkeys(ids):
        if nodes[i].WhichOneof("kind") != "variable":
            continue
        v = nodes[i].variable
        if v.name.endswith("seed_generator_state"):  # a Dropout's random state: not a weight to Keras
            continue
        shape = tuple(None if d.size < 0 else d.size for d in v.shape.dim)
        out.append((v.name, tf.as_dtype(v.dtype).name, shape, v.trainable))
    return out


def serving_signature(meta_graph_def, requested: str | None = None, *, path: str = "") -> str | None:
    """The signature to flatten: `requested`, else `serving_default`, else the only one (init
    ops excluded); None when there is none. An unknown name, or several and no default, is a
    `ModelLoadError` listing them."""
    names = sorted(k for k in meta_graph_def.signature_def if not k.startswith("__"))
    if requested is not None:
        if requested in names:
            return requested
        close = difflib.get_close_matches(requested, names, n=3, cutoff=0.5)
        raise ModelLoadError(f"{path} has no signature '{requested}'",
                             ("did you mean " + ", ".join(close) + "? " if close else "")
                             + "its signatures: " + (", ".join(names) or "(none)"))
    if "serving_default" in names or not names:
        return "serving_default" if names else None
    if len(names) == 1:
        return names[0]
    raise ModelLoadError(f"{path} has {len(names)} signatures and no serving_default: " + ", ".join(names),
                         "choose one with --signature NAME")


def flatten_tf2(meta_graph_def, directory: str, checkpoint: str | None, *, path: str, signature: str,
                output_order=None) -> dict:
    """SavedModel `directory`'s `signature` flattened into one graph (see the module doc): the fields
    of its `Model` (`graph`, `graph_def`, `meta_graph_def`, `signature_defs`, `variable_keys`).

    `output_order`: the signature's output keys in the order their layers run (a Keras model's
    `layers`). Where several keys return one tensor (a Dropout passes its input through at
    inference), their Identity nodes are chained in that order and the tensor's readers read the
    last: a cut at any of the names then cuts the path, as Keras's own sub-models do."""
    sig = meta_graph_def.signature_def[signature]
    outputs = sorted({node_input_op(t.name) for t in sig.outputs.values()})
    try:
        pruned = g.prune(meta_graph_def.graph_def, outputs)
        captured = _captured_variables(pruned, meta_graph_def)
        inlined = _inline_functions(pruned, [t.name for t in sig.outputs.values()])
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"{path}: signature '{signature}' could not be flattened into one graph: {msg}",
                             "re-export the model with `model.export(...)` or `tf.saved_model.save(...)`") from e
    left = [n.name for n in inlined.node if n.op in _CALL_OPS]
    if left:
        raise ModelLoadError(f"{path}: function call '{left[0]}' could not be inlined",
                             "the model uses functions Grappler cannot inline; freeze it with tf.saved_model.load "
                             "and convert_variables_to_constants_v2 instead")
    objects = meta_graph_def.object_graph_def.nodes
    handles = [n for n in inlined.node if n.op == "VarHandleOp"]
    if handles and not checkpoint:
        raise ModelLoadError(f"{directory} has variables but no variables/variables checkpoint",
                             "copy the SavedModel's variables/ directory along with saved_model.pb")
    ckpt_keys = _checkpoint_keys(checkpoint) if handles else {}
    unknown = [n.name for n in handles if n.name not in captured or captured[n.name] not in ckpt_keys]
    if unknown:
        raise ModelLoadError(f"{path}: variable handle '{unknown[0]}' has no value in the SavedModel's checkpoint",
                             "the SavedModel is incomplete; export it again")
    variables = [(h.name, captured[h.name], objects[captured[h.name]].variable.name,
                  objects[captured[h.name]].variable.trainable, ckpt_keys[captured[h.name]]) for h in handles]
    return _as_tf1_graph(inlined, sig, signature, variables, path=path, output_order=output_order,
                         tags=meta_graph_def.meta_info_def.tags, declared=declared_variables(meta_graph_def))


def flatten_function(traced, *, path: str, checkpoint: str) -> dict:
    """A traced Keras model (`kerasfile.Traced`) as one graph, like `flatten_tf2`: each captured
    variable handle becomes a named `VarHandleOp`, its value written to a new checkpoint at
    `checkpoint` under the variable's path; a captured constant becomes a `Const`. Returns the
    fields of its `Model`."""
    from tensorflow.core.protobuf import meta_graph_pb2

    concrete = traced.function
    by_handle = {id(v.value.handle): v for v in traced.variables}
    graph_def = concrete.graph.as_graph_def()
    nodes = {n.name: n for n in graph_def.node}
    variables, values, keys = [], [], set()
    for external, internal in concrete.graph.captures:
        node = nodes[internal.op.name]
        var = by_handle.get(id(external))
        if var is None and internal.dtype == tf.resource:
            raise ModelLoadError(f"{path}: the traced model captures a resource that is no Keras variable "
                                 f"('{internal.op.name}')", "export a SavedModel (model.export(DIR)) and pass that")
        node.ClearField("attr")
        if var is None:  # a tensor the layer made eagerly (a constant table, a fixed kernel)
            node.op = "Const"
            node.attr["dtype"].type = internal.dtype.as_datatype_enum
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(external.numpy()))
            continue
        dtype = tf.as_dtype(var.dtype)
        node.op = "VarHandleOp"
        node.attr["dtype"].type = dtype.as_datatype_enum
        node.attr["shape"].shape.CopyFrom(tf.TensorShape(var.shape).as_proto())
        node.attr["shared_name"].s = node.name.encode()
        node.attr["container"].s = b""
        key = var.path
        while key in keys:
            key += "_1"
        keys.add(key)
        variables.append((node.name, id(var), var.path, bool(var.trainable), key))
        values.append((key, var))
    sig = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    with concrete.graph.as_default():  # build_tensor_info refuses to run eagerly
        for tensor in concrete.inputs[:len(concrete.structured_input_signature[0])]:
            sig.inputs[tensor.op.name].CopyFrom(tf.compat.v1.saved_model.build_tensor_info(tensor))
        for key, tensor in concrete.structured_outputs.items():
            while tensor.op.type == "Identity" and "/" not in tensor.op.name:
                tensor = tensor.op.inputs[0]  # the copy tf.function returns, not the layer's tensor
            sig.outputs[key].CopyFrom(tf.compat.v1.saved_model.build_tensor_info(tensor))
    outputs = [info.name for info in sig.outputs.values()]
    graph_def = g.prune(graph_def, outputs)
    if any(n.op in _CALL_OPS for n in graph_def.node):  # a layer that runs its own tf.function
        graph_def = _inline_functions(graph_def, outputs)
    present = {n.name for n in graph_def.node}
    variables = [v for v in variables if v[0] in present]
    used = {key for *_, key in variables}
    values = [(key, var) for key, var in values if key in used]
    # one eager SaveV2 writes the variables' own buffers: no copy through numpy, no session
    tf.raw_ops.SaveV2(prefix=checkpoint, tensor_names=[k for k, _ in values], shape_and_slices=[""] * len(values),
                      tensors=[var.value.read_value() for _, var in values])
    declared = [(v.path, tf.as_dtype(v.dtype).name, tuple(v.shape), bool(v.trainable)) for v in traced.variables
                if not v.path.endswith("seed_generator_state")]  # a Dropout's random state: not a weight to Keras
    return _as_tf1_graph(graph_def, sig, "serving_default", variables, path=path, output_order=traced.order,
                         tags=["serve"], declared=declared)


def _as_tf1_graph(inlined, sig, signature: str, variables: list, *, path: str, output_order, tags,
                  declared: list) -> dict:
    """Steps 3, 3b and 4 of the module doc, shared by SavedModels and traced Keras models:
    `inlined` holds one `VarHandleOp` per capture; `variables` lists each as (handle node
    name, the variable it captures (any key: several handles may capture one), variable name,
    trainable, checkpoint key)."""
    renames, identities = _readable_names(inlined, sig)
    # Inlining passes each handle through Identity nodes; readers should see the variable itself.
    graph_def = g.bypass(inlined, lambda n: n.op == "Identity" and n.attr["T"].type == tf.resource.as_datatype_enum)
    # One VarHandleOp per TF2 variable (however many calls captured it), named after the variable.
    taken = set(renames.values()) | set(identities) | {n.name for n in graph_def.node if n.name not in renames}
    handles = {n.name: n for n in graph_def.node if n.op == "VarHandleOp"}
    kept, named, variable_keys, duplicates = {}, {}, {}, {}
    for handle_name, variable, var_name, trainable, key in variables:
        if variable in kept:
            duplicates[handle_name + ":0"] = kept[variable] + ":0"
            continue
        name = _SANITISE.sub("_", re.sub(r":\d+$", "", var_name)) or handle_name
        while name in variable_keys or (name in taken and name != handle_name):  # names must stay unique
            name += "_1"
        kept[variable] = handle_name
        renames[handle_name] = name
        named[name] = (handles[handle_name], trainable)
        variable_keys[name] = key
    graph_def = g.remove(g.replace_uses(graph_def, duplicates), [t[:-2] for t in duplicates])
    graph_def = g.rename(g.clear_devices(graph_def), renames)  # colocation names the pre-rename nodes
    # Each shared output gets an Identity named after its key, on the path: the ops that read the
    # value read the Identity, so a cut there separates (as a Keras layer's output does).
    by_name, bypassed, first = {n.name: n for n in graph_def.node}, set(), {}
    rank = {key: i for i, key in enumerate(output_order or ())}
    for key, (tensor, dtype) in sorted(identities.items(), key=lambda kv: rank.get(kv[0], len(rank))):
        op, _, index = tensor.partition(":")
        source = f"{renames.get(op, op)}:{index or 0}"
        while by_name.get(node_input_op(source)) is not None and by_name[node_input_op(source)].op in _PASS_OPS:
            # the value itself, not one IdentityN of all outputs (through which every output
            # would depend on every other output's inputs, and no cut would separate them)
            bypassed.add(node_input_op(source))
            op, index = split_tensor_name(source)
            source = by_name[op].input[index or 0]
        source = g.tensor_name(source)
        node = graph_def.node.add(name=key, op="Identity", input=[first[source] + ":0" if source in first else source])
        node.attr["T"].type = dtype
        first[source] = key  # the next key sharing this tensor reads this one; readers read the last
    others = [n.name for n in graph_def.node if n.name not in identities]
    graph_def = g.replace_uses(graph_def, {t: key + ":0" for t, key in first.items()}, only=others)
    used = {node_input_op(i) for n in graph_def.node for i in n.input}
    graph_def = g.remove(graph_def, bypassed - used - set(renames.values()))
    meta = v1.MetaGraphDef()
    for name, (handle, trainable) in named.items():
        meta.collection_def[v1.GraphKeys.GLOBAL_VARIABLES].bytes_list.value.append(
            _variable_nodes(graph_def, name, handle, trainable).SerializeToString())
        if trainable:
            meta.collection_def[v1.GraphKeys.TRAINABLE_VARIABLES].bytes_list.value.append(
                meta.collection_def[v1.GraphKeys.GLOBAL_VARIABLES].bytes_list.value[-1])
    meta.graph_def.CopyFrom(graph_def)
    graph = tf.Graph()
    with graph.as_default():
        try:
            v1.train.import_meta_graph(meta, clear_devices=True)
        except ValueError as e:
            raise ModelLoadError(f"{path}: the flattened graph could not be imported: {str(e).splitlines()[0][:200]}",
                                 "report this model; freeze it with convert_variables_to_constants_v2 meanwhile") from e
    flat_sig = type(sig)()
    flat_sig.CopyFrom(sig)
    for info in list(flat_sig.inputs.values()) + list(flat_sig.outputs.values()):
        op, _, index = info.name.partition(":")
        info.name = f"{renames.get(op, op)}:{index or 0}"
    for key, info in flat_sig.outputs.items():
        if _SANITISE.sub("_", key) in identities:
            info.name = _SANITISE.sub("_", key) + ":0"
    with graph.as_default():
        meta = v1.train.export_meta_graph(graph=graph, clear_devices=True)
    meta.signature_def[signature].CopyFrom(flat_sig)
    meta.meta_info_def.tags[:] = list(tags)
    return dict(graph=graph, graph_def=meta.graph_def, meta_graph_def=meta, signature_defs={signature: flat_sig},
                variable_keys=variable_keys, declared_variables=declared)
