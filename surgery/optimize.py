"""Inference optimisation of a frozen GraphDef (`surgery freeze --optimize`).

Passes, in order, each a plain GraphDef → GraphDef function:

1. `fix_training_flags`: boolean scalar `PlaceholderWithDefault`s (a `training`/`is_training`
   switch) that are not fed become their default. Own pass: TensorFlow's
   `optimize_for_inference_lib.convert_placeholder_to_const` matches names by substring and
   needs the value spelled out; here the graph's own default is the inference value.
2. `take_constant_branches`: an `If` on a now-constant condition calls the branch it takes.
3. Grappler (`tf_optimizer.OptimizeGraph`): function inlining, dead-branch removal, constant
   folding, arithmetic and dependency optimisation. The remapper and layout optimiser stay off:
   they write device-specific fused ops (`_FusedConv2D`, NCHW) a portable graph must not hold.
4. `graph_util.remove_training_nodes`: pass-through `Identity`/`StopGradient` spliced out
   (inputs and outputs kept by name).
5. `optimize_for_inference_lib.fold_batch_norms`: `FusedBatchNorm`/`FusedBatchNormV3` (and the
   older `BatchNormWithGlobalNormalization`) after `Conv2D`/`DepthwiseConv2dNative`/`MatMul`
   folded into the weights; then Grappler once more to fold what that exposed, and a final prune.

Every pass is checked numerically against the unoptimised graph in tests/test_freeze.py.
"""

from __future__ import annotations

from . import tfcompat
from .errors import SurgeryError
from .freeze import empty_like
from .names import node_input_op

tf = tfcompat.tf

GRAPPLER_PASSES = ("function", "loop", "constfold", "arithmetic", "dependency", "constfold", "pruning")


def fix_training_flags(graph_def, *, keep=()) -> object:
    """Boolean scalar `PlaceholderWithDefault` nodes not named in `keep` become their default:
    a Const when the default is one, otherwise their consumers read the default directly."""
    keep = {node_input_op(k) for k in keep}
    nodes = {n.name: n for n in graph_def.node}
    rewire = {}
    out = empty_like(graph_def)
    for node in graph_def.node:
        is_flag = (node.op == "PlaceholderWithDefault" and node.name not in keep
                   and node.attr["dtype"].type == tf.bool.as_datatype_enum
                   and len(node.attr["shape"].shape.dim) == 0 and not node.attr["shape"].shape.unknown_rank)
        if not is_flag:
            out.node.add().CopyFrom(node)
            continue
        default = nodes.get(node_input_op(node.input[0]))
        if default is not None and default.op == "Const":
            const = out.node.add()
            const.name, const.op = node.name, "Const"
            const.attr["dtype"].CopyFrom(default.attr["dtype"])
            const.attr["value"].CopyFrom(default.attr["value"])
        else:
            rewire[node.name] = node.input[0]
    for node in out.node:
        for i, inp in enumerate(node.input):
            if node_input_op(inp) in rewire:
                node.input[i] = ("^" + node_input_op(rewire[node_input_op(inp)])) if inp.startswith("^") \
                    else rewire[node_input_op(inp)]
    return out


def take_constant_branches(graph_def) -> object:
    """`If`/`StatelessIf` nodes whose condition is a constant (once training flags are fixed)
    become a call of the branch they always take, which Grappler then inlines. Own pass:
    Grappler lowers such an `If` to Switch/Merge but keeps both branches, and the batch norm
    inside then cannot be folded."""
    nodes = {n.name: n for n in graph_def.node}

    def constant_value(inp):
        node = nodes.get(node_input_op(inp))
        while node is not None and node.op == "Identity":
            node = nodes.get(node_input_op(node.input[0]))
        if node is None or node.op != "Const":
            return None
        value = tf.make_ndarray(node.attr["value"].tensor)
        return bool(value) if value.size == 1 else None

    out = tf.compat.v1.GraphDef()
    out.CopyFrom(graph_def)
    for node in out.node:
        if node.op not in ("If", "StatelessIf"):
            continue
        taken = constant_value(node.input[0])
        if taken is None:
            continue
        branch = node.attr["then_branch" if taken else "else_branch"].func
        call = tf.compat.v1.NodeDef(name=node.name, op="StatefulPartitionedCall" if node.op == "If" else "PartitionedCall",
                                    input=list(node.input[1:]), device=node.device)
        call.attr["f"].func.CopyFrom(branch)
        call.attr["Tin"].CopyFrom(node.attr["Tin"])
        call.attr["Tout"].CopyFrom(node.attr["Tout"])
        node.CopyFrom(call)
    return out


def grappler(graph_def, inputs, outputs, passes=GRAPPLER_PASSES) -> object:
    """Run Grappler's `passes` over `graph_def`, keeping `inputs` and `outputs` (tensor names)."""
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
    from tensorflow.python.grappler import tf_optimizer

    meta_graph = tf.compat.v1.train.export_meta_graph(graph_def=graph_def, graph=tfcompat.graph_from_def(graph_def))
    fetch = meta_graph_pb2.CollectionDef()
    fetch.node_list.value.extend(list(inputs) + list(outputs))
    meta_graph.collection_def["train_op"].CopyFrom(fetch)
    config = config_pb2.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    rewrite.min_graph_nodes = -1  # small graphs too
    rewrite.optimizers.extend(passes)
    rewrite.meta_optimizer_iterations = rewrite.TWO
    return tf_optimizer.OptimizeGraph(config, meta_graph, verbose=False)


def optimize_for_inference(graph_def, inputs, outputs) -> object:
    """All passes above; `inputs`/`outputs` are tensor names that must survive (fed and fetched)."""
    from tensorflow.python.tools import optimize_for_inference_lib

    keep = sorted({node_input_op(n) for n in list(inputs) + list(outputs)})
    passes = [
        ("fix_training_flags", lambda gd: fix_training_flags(gd, keep=inputs)),
        ("take_constant_branches", take_constant_branches),
        ("grappler", lambda gd: grappler(gd, inputs, outputs)),
        ("remove_training_nodes", lambda gd: tf.compat.v1.graph_util.remove_training_nodes(gd, keep)),
        ("fold_batch_norms", optimize_for_inference_lib.fold_batch_norms),
        ("grappler", lambda gd: grappler(gd, inputs, outputs, passes=("constfold", "dependency", "pruning"))),
        ("prune", lambda gd: tf.compat.v1.graph_util.extract_sub_graph(gd, [node_input_op(n) for n in outputs])),
    ]
    gd = graph_def
    for name, run in passes:
        try:
            gd = run(gd)
        except (ValueError, TypeError, KeyError, tf.errors.OpError) as e:
            raise SurgeryError(f"--optimize failed in pass {name}: {str(e).splitlines()[0][:200]}",
                               "freeze without --optimize") from e
    for node in gd.node:
        node.device = ""
    return gd


__all__ = ["optimize_for_inference", "fix_training_flags", "grappler"]
