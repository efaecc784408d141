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

Every pass is checked numerically against the unoptimised graph as it runs (skipped with a note
when it fails or changes the answer), and in tests/test_freeze.py.
"""

from __future__ import annotations

from ..core import graph as g
from ..core import tfcompat
from ..core.graph import grappler
from ..core.names import node_input_op

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
    """`If`/`StatelessIf` (and `Case`) nodes whose condition (branch index) is a constant (once training flags are fixed)
    become a call of the branch they always take, which Grappler then inlines. Own pass:
    Grappler lowers such an `If` to Switch/Merge but keeps both branches, and the batch norm
    inside then cannot be folded."""
    index = g.Index(graph_def)

    def constant_value(inp):
        value = g.constant_value(index, inp)
        return value.ravel()[0] if value is not None and value.size == 1 else None

    out = tf.compat.v1.GraphDef()
    out.CopyFrom(graph_def)
    for node in out.node:
        if node.op not in ("If", "StatelessIf", "Case", "StatelessCase"):
            continue
        value = constant_value(node.input[0])
        if value is None:
            continue
        if node.op.endswith("If"):
            branch = node.attr["then_branch" if bool(value) else "else_branch"].func
        else:  # Case: an index out of range runs the last branch, as TensorFlow does
            branches = node.attr["branches"].list.func
            branch = branches[int(value)] if 0 <= int(value) < len(branches) else branches[-1]
        call = tf.compat.v1.NodeDef(name=node.name, op="PartitionedCall" if node.op.startswith("Stateless")
                                    else "StatefulPartitionedCall", input=list(node.input[1:]), device=node.device)
        call.attr["f"].func.CopyFrom(branch)
        call.attr["Tin"].CopyFrom(node.attr["Tin"])
        call.attr["Tout"].CopyFrom(node.attr["Tout"])
        node.CopyFrom(call)
    return out


def optimize_for_inference(graph_def, inputs, outputs, *, notes=None) -> object:
    """All passes above; `inputs`/`outputs` are tensor names that must survive (fed and fetched).

    Honest: every function the graph calls stays defined after each pass (some passes write a
    GraphDef without the library), and each pass's result is run on the graph's own inputs
    (random values of their declared shapes) and compared with the unoptimised graph before it is
    kept; a pass that fails or changes the answer is skipped, with a line added to `notes`.
    """
    notes = notes if notes is not None else []
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
    check = _Check(graph_def, inputs, outputs, notes)
    gd = graph_def
    for name, run in passes:
        try:
            result = _keep_functions(run(gd), gd)
        except (ValueError, TypeError, KeyError, tf.errors.OpError) as e:
            notes.append(f"--optimize skipped pass {name}: it failed ({str(e).splitlines()[0][:160]})")
            continue
        problem = check(result)
        if problem:
            notes.append(f"--optimize skipped pass {name}: {problem}")
            continue
        gd = result
    return g.clear_devices(gd, colocation=False)


def _keep_functions(result, before):
    """`result` with every function of `before`'s library it lacks (a pass that rebuilds the
    GraphDef may drop the library a functional If/While still calls)."""
    have = {f.signature.name for f in result.library.function}
    missing = [f for f in before.library.function if f.signature.name not in have]
    if not missing and (result.library.gradient or not before.library.gradient):
        return result
    out = tf.compat.v1.GraphDef()
    out.CopyFrom(result)
    out.library.function.extend(missing)
    if not out.library.gradient:
        out.library.gradient.extend(before.library.gradient)
    return out


class _Check:
    """Runs a candidate graph on fixed random inputs and compares it with the original's answer."""

    def __init__(self, graph_def, inputs, outputs, notes):
        import numpy as np

        self.outputs, self.feeds, self.expected = list(outputs), {}, None
        scratch = g.graph_from_def(graph_def)
        rng = np.random.default_rng(0)
        for name in inputs:
            t = scratch.get_tensor_by_name(g.tensor_name(name))
            if t.shape.rank is None:
                notes.append(f"--optimize passes not checked numerically: input {t.name} has unknown rank")
                return
            dims = [d if d is not None else (1 if i == 0 else 8) for i, d in enumerate(t.shape.as_list())]
            dtype = t.dtype.base_dtype
            value = (rng.random(dims) < 0.5 if dtype == tf.bool else rng.integers(0, 2, dims) if dtype.is_integer
                     else rng.standard_normal(dims) if dtype.is_floating else None)
            if value is None:
                notes.append(f"--optimize passes not checked numerically: cannot make values for {t.name} ({dtype.name})")
                return
            self.feeds[t.name] = np.asarray(value).astype(dtype.as_numpy_dtype)
        self.expected = self._run(graph_def)
        if isinstance(self.expected, str):
            notes.append(f"--optimize passes not checked numerically: the graph does not run on random inputs "
                         f"({self.expected})")
            self.expected = None

    def _run(self, graph_def):
        try:
            with tf.compat.v1.Session(graph=g.graph_from_def(graph_def)) as sess:
                return sess.run([g.tensor_name(o) for o in self.outputs], self.feeds)
        except (ValueError, TypeError, KeyError, tf.errors.OpError) as e:
            return str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__

    def __call__(self, graph_def):
        """None when `graph_def` runs and matches, else what went wrong."""
        if self.expected is None:
            return None
        import numpy as np

        got = self._run(graph_def)
        if isinstance(got, str):
            return f"its result does not run ({got})"
        for o, a, b in zip(self.outputs, got, self.expected):
            a, b = np.asarray(a), np.asarray(b)
            if a.shape != b.shape or (a.dtype.kind in "fc" and not np.allclose(a, b, rtol=1e-3, atol=1e-4)) or (
                    a.dtype.kind not in "fc" and not np.array_equal(a, b)):
                return f"its result changes output {o}"
        return None


__all__ = ["optimize_for_inference", "fix_training_flags", "grappler"]
