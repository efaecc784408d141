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

from . import graph as g
from . import tfcompat
from .errors import SurgeryError
from .graph import GRAPPLER_PASSES, grappler
from .names import node_input_op

tf = tfcompat.tf


def fix_training_flags(graph_def, *, keep=()) -> object:
    """Boolean scalar `PlaceholderWithDefault` nodes not named in `keep` become their default:
    a Const when the default is one, otherwise their consumers read the default directly."""
    keep = {node_input_op(k) for k in keep}
    nodes = {n.name: n for n in graph_def.node}

    def is_flag(node):
        return (node.op == "PlaceholderWithDefault" and node.name not in keep
                and node.attr["dtype"].type == tf.bool.as_datatype_enum
                and len(node.attr["shape"].shape.dim) == 0 and not node.attr["shape"].shape.unknown_rank)

    out = g.empty_like(graph_def)
    for node in graph_def.node:
        default = nodes.get(node_input_op(node.input[0])) if is_flag(node) else None
        if default is not None and default.op == "Const":
            const = out.node.add()
            const.name, const.op = node.name, "Const"
            const.attr["dtype"].CopyFrom(default.attr["dtype"])
            const.attr["value"].CopyFrom(default.attr["value"])
        else:
            out.node.add().CopyFrom(node)
    return g.bypass(out, is_flag)


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


def optimize_for_inference(graph_def, inputs, outputs) -> object:
    """All passes above; `inputs`/`outputs` are tensor names that must survive (fed and fetched)."""
    keep = sorted({node_input_op(n) for n in list(inputs) + list(outputs)})
    passes = [
        ("fix_training_flags", lambda gd: fix_training_flags(gd, keep=inputs)),
        ("take_constant_branches", take_constant_branches),
        ("grappler", lambda gd: grappler(gd, inputs, outputs)),
        ("remove_training_nodes", lambda gd: tf.compat.v1.graph_util.remove_training_nodes(gd, keep)),
        ("fold_batch_norms", tfcompat.fold_batch_norms),
        ("grappler", lambda gd: grappler(gd, inputs, outputs, passes=("constfold", "dependency", "pruning"))),
        ("prune", lambda gd: g.prune(gd, outputs)),
    ]
    gd = graph_def
    for name, run in passes:
        try:
            gd = run(gd)
        except (ValueError, TypeError, KeyError, tf.errors.OpError) as e:
            raise SurgeryError(f"--optimize failed in pass {name}: {str(e).splitlines()[0][:200]}",
                               "freeze without --optimize") from e
    return g.clear_devices(gd, colocation=False)


__all__ = ["optimize_for_inference", "fix_training_flags", "grappler"]
