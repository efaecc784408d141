"""Split a trained graph into an offline piece (inputs → cut tensors) and an online piece (one
placeholder per cut tensor, plus the live inputs the outputs still need → outputs), each frozen.

The boundary is declared, the rest derived (as torch.fx's `split_module` does): the user names
the cut tensors and the outputs; which placeholders are offline, which stay live, the typed
placeholders at the cut and the leak check all follow from the graph.

Which inputs are offline: the explicit `inputs`, or by default every non-scalar `Placeholder`
that the cut tensors depend on. Scalar placeholders (`is_training`, `keep_prob`) are settings,
not data: they are kept in whichever piece needs them. A `PlaceholderWithDefault` is never an
input either: it stays in the piece at its default (listed under `defaults`), still feedable.
A cut *separates* when no offline input reaches an output except through the cut tensors;
anything else (a skip connection around the cut) is refused, naming the input and its path.
"""

from __future__ import annotations

import collections
import dataclasses
import os

import numpy as np

from . import graph as g
from . import tfcompat
from .errors import CutError, OutputError
from .files import atomic_path
from .freeze import FrozenGraph, freeze_model
from .graph import tensor_info, write_graph_def
from .manifest import FILENAME as MANIFEST, piece, source_info, write_manifest
from .names import VARIABLE_OP_TYPES, resolve_tensors
from .weights import restore_checkpoint, saver_for

tf = tfcompat.tf

OFFLINE_FILE, ONLINE_FILE = "offline.pb", "online.pb"
# v1 control flow: a tensor between a Switch and its Merge (or an Enter and its Exit) only exists
# inside a frame; a placeholder cannot stand in for it.
_FRAME_CLOSE = {"Merge", "RefMerge", "Exit", "RefExit"}
_FRAME_OPS = {"Switch", "RefSwitch", "Enter", "RefEnter", "NextIteration", "LoopCond", "RefNextIteration"}


@dataclasses.dataclass
class Split:
    """The two frozen pieces and how they join.

    `cut`: [{tensor, placeholder, dtype, shape}], each cut tensor of the original graph and the
    online placeholder that replaces it. `offline_inputs` / `live_inputs`: the placeholders
    fed to the offline piece / fed to the online piece besides the cut ones (user features).
    `defaults`: {piece: [PlaceholderWithDefault tensors left at their default]}.
    `original_names`: {offline placeholder: the original tensor it stands for} where they differ.
    """

    offline: FrozenGraph
    online: FrozenGraph
    cut: list
    offline_inputs: list
    live_inputs: list
    defaults: dict
    original_names: dict = dataclasses.field(default_factory=dict)


def split_model(model, cut, outputs, *, inputs=None) -> Split:
    """Split a loaded `Model` at `cut` (names or tensors) into offline and online pieces, frozen.

    `inputs` (optional) names the offline inputs explicitly; any tensor may be one (it becomes
    a placeholder of the offline piece). Raises `CutError` when the cut does not separate.
    """
    graph = model.graph
    cut_tensors = resolve_tensors(graph, cut)
    out_tensors = resolve_tensors(graph, outputs)
    if not cut_tensors:
        raise CutError("no cut tensors given", "name where to cut with --cut, e.g. --cut fc7")
    if not out_tensors:
        raise CutError("no outputs given", "name the online piece's outputs with --outputs, e.g. --outputs predictions")
    for t in cut_tensors:
        _check_cuttable(t)
    cut_names = {t.name for t in cut_tensors}
    for t in out_tensors:
        if t.name in cut_names:
            raise CutError(f"'{t.name}' is both a cut tensor and an output",
                           "outputs are computed by the online piece above the cut; name tensors above it")

    cut_ancestors = _ancestor_ops(cut_tensors)
    if inputs:
        offline = resolve_tensors(graph, inputs)
    else:
        offline = [op.outputs[0] for op in cut_ancestors
                   if op.type == "Placeholder" and not _is_setting(op.outputs[0])]
        offline.sort(key=lambda t: t.name)
    if not offline:
        raise CutError(f"the cut tensors {', '.join(sorted(cut_names))} depend on no input placeholder",
                       "cut below the heavy part, or name its inputs with --inputs")
    _check_separates(out_tensors, cut_tensors, offline)
    for t in offline:
        if t.op not in cut_ancestors:
            raise CutError(f"input '{t.name}' does not reach any cut tensor ({', '.join(sorted(cut_names))})",
                           "name as --inputs only tensors below the cut")

    online_sources = _ancestor_ops(out_tensors, stop=cut_names)
    for t in cut_tensors:
        if t.op not in online_sources and not any(c in online_sources for c in t.consumers()):
            below = [c for c in cut_tensors if c is not t and t.op in _ancestor_ops([c])]
            if below and t.op in _ancestor_ops(out_tensors):
                raise CutError(f"cut tensor '{t.name}' lies below cut tensor '{below[0].name}': every path from it "
                               f"to the outputs passes through {below[0].name}, so cutting it too changes nothing",
                               f"drop {t.name.split(':')[0]} from --cut")
            raise CutError(f"cut tensor '{t.name}' is not on the way to any output "
                           f"({', '.join(o.name for o in out_tensors)})", "cut below the outputs, or drop it from --cut")

    offline_piece = _freeze_piece(model, "offline", cut_tensors, offline)
    online_piece = _freeze_piece(model, "online", out_tensors, cut_tensors)

    online_inputs = {i["name"]: i for i in online_piece.inputs}
    cut_info = []
    for t in cut_tensors:
        ph = online_piece.cut[t.name]
        if ph not in online_inputs:
            raise RuntimeError(f"the online piece has no placeholder '{ph}' for cut tensor '{t.name}'")
        cut_info.append({"tensor": t.name, "placeholder": ph, "dtype": online_inputs[ph]["dtype"],
                         "shape": online_inputs[ph]["shape"]})
    cut_placeholders = {c["placeholder"] for c in cut_info}
    return Split(
        offline=offline_piece,
        online=online_piece,
        cut=cut_info,
        offline_inputs=offline_piece.inputs,
        live_inputs=[i for i in online_piece.inputs if i["name"] not in cut_placeholders],
        defaults={"offline": _defaults(offline_piece), "online": _defaults(online_piece)},
        original_names={ph: t for t, ph in offline_piece.cut.items() if ph != t},
    )


_FUNCTIONAL_OPS = {"If", "StatelessIf", "While", "StatelessWhile", "Case", "StatelessCase",
                   "PartitionedCall", "StatefulPartitionedCall"}


def _freeze_piece(model, name: str, outputs, inputs) -> FrozenGraph:
    """`freeze_model`, with a plain refusal where TF2 control flow (If/While, e.g. a batch-norm
    training switch built with cond_v2) captures resource variables freezing cannot rewrite."""
    try:
        return freeze_model(model, outputs, inputs=inputs)
    except (ValueError, TypeError) as e:
        captured = [(op, t.op) for op in _ancestor_ops(outputs, stop={t.name for t in inputs})
                    if op.type in _FUNCTIONAL_OPS for t in op.inputs if t.dtype == tf.resource]
        if not captured:
            raise
        op, var = captured[0]
        raise CutError(f"cannot freeze the {name} piece: '{op.name}' ({op.type}, e.g. a batch-norm training "
                       f"switch) reads variable '{var.name}' inside its branches, which freezing cannot turn into "
                       "a constant", "build the model with ref variables (variable_scope(use_resource=False)) "
                       "or TF1 control flow (tf.compat.v1.disable_control_flow_v2())") from e


def _is_setting(tensor) -> bool:
    """A scalar placeholder (`is_training`, `keep_prob`) is a setting shared by both pieces, not data."""
    return tensor.shape.rank == 0


def _check_cuttable(tensor) -> None:
    """Refuse cut tensors a placeholder cannot replace: variables and tensors inside v1 control flow."""
    op = tensor.op
    if op.type in VARIABLE_OP_TYPES or tensor.dtype == tf.resource or tfcompat.is_ref_dtype(tensor.dtype):
        raise CutError(f"cannot cut at '{tensor.name}': it is a variable ({op.type}), not an activation",
                       "cut at a layer's output, e.g. its Relu")
    frame = _enclosing_frame(op)
    if frame is not None:
        raise CutError(f"cannot cut at '{tensor.name}': it is inside {frame} (e.g. a batch-norm training "
                       "switch), where a placeholder cannot stand in for it",
                       "cut at the Merge/Exit that closes the conditional or loop, or below it")


def _enclosing_frame(op):
    """Describe the v1 cond/while frame `op` lies in, or None.

    TensorFlow's recorded control-flow context answers when the graph has one (built here or
    imported from a .meta). A frozen graph has none: then walk back from `op` without crossing
    a Merge/Exit (which close a frame); reaching a Switch or Enter means `op` is inside.
    """
    context = tfcompat.control_flow_context(op)
    if context is not None:
        pred = getattr(context, "pred", None)
        return f"a tf.cond on '{pred.name}'" if pred is not None else f"a tf.while_loop '{context.name}'"
    graph = op.graph
    below = g.ancestors(graph, [op], where=lambda name: graph.get_operation_by_name(name).type not in _FRAME_CLOSE)
    frames = sorted((o for o in map(graph.get_operation_by_name, below) if o.type in _FRAME_OPS), key=lambda o: o.name)
    if not frames:
        return None
    kind = "a tf.cond" if "Switch" in frames[0].type else "a tf.while_loop"
    return f"{kind} ({frames[0].type} '{frames[0].name}')"


def _ancestor_ops(tensors, *, stop=frozenset()) -> set:
    """The ops `tensors` depend on (data and control edges), not walking through tensors in `stop`."""
    graph = tensors[0].graph
    return {graph.get_operation_by_name(name) for name in g.ancestors(graph, tensors, stop=stop)}


def _check_separates(out_tensors, cut_tensors, offline) -> None:
    """Breadth-first from the outputs down, not through the cut: reaching an offline input is a leak."""
    cut_names = {t.name for t in cut_tensors}
    offline_by_tensor = {t.name: t for t in offline}
    parent = {}  # op -> the op above it on the way from an output
    queue = collections.deque()
    for t in out_tensors:
        if t.name in offline_by_tensor:
            raise CutError(f"output '{t.name}' is an offline input", "name outputs above the cut")
        if t.op not in parent:
            parent[t.op] = None
            queue.append(t.op)
    while queue:
        op = queue.popleft()
        edges = [(t.name, t.op) for t in op.inputs] + [(None, c) for c in op.control_inputs]
        for name, src in edges:
            if name in cut_names:
                continue
            if name in offline_by_tensor:
                path, cur = [src.name], op
                while cur is not None:
                    path.append(cur.name)
                    cur = parent[cur]
                raise CutError(
                    f"the cut at {', '.join(sorted(cut_names))} does not separate the graph: offline input "
                    f"'{name}' reaches output '{path[-1]}' around it, via {_format_path(path)}",
                    f"add the tensor where that path leaves the offline part to --cut, or name the offline "
                    f"inputs with --inputs (a live input such as user features is fed to the online piece)")
            if src not in parent:
                parent[src] = op
                queue.append(src)


def _format_path(path, keep: int = 4) -> str:
    if len(path) > 2 * keep + 1:
        path = path[:keep] + [f"… {len(path) - 2 * keep} ops …"] + path[-keep:]
    return " → ".join(path)


def _defaults(frozen: FrozenGraph) -> list:
    """PlaceholderWithDefault tensors a piece keeps (they run at their default unless fed)."""
    piece_graph = import_piece(frozen.graph_def)
    return [tensor_info(op.outputs[0]) for op in piece_graph.get_operations() if op.type == "PlaceholderWithDefault"]


# ---------------------------------------------------------------- writing and verification

def write_split(model, split: Split, directory: str, *, verify: int = 4, seed: int = 0,
                tolerance: float = 1e-4) -> dict:
    """Write `offline.pb`, `online.pb` and `manifest.json` into `directory`, all or nothing.

    With `verify` > 0, feeds that many random inputs through the original model and through
    offline∘online read back from the written files; a difference beyond `tolerance` (relative
    to the outputs' magnitude) raises `CutError` and nothing is written. Returns the manifest.
    """
    directory = os.path.abspath(directory)
    if os.path.exists(directory) and (not os.path.isdir(directory) or (
            os.listdir(directory) and not os.path.exists(os.path.join(directory, MANIFEST)))):
        raise OutputError(f"{directory} exists and is not a directory written by surgery",
                          "choose a new --out directory (it is replaced as a whole)")
    with atomic_path(directory, directory=True) as tmp:
        write_graph_def(split.offline.graph_def, os.path.join(tmp, OFFLINE_FILE))
        write_graph_def(split.online.graph_def, os.path.join(tmp, ONLINE_FILE))
        verification = {"n": 0, "skipped": True, "passed": None}
        if verify > 0:
            verification = verify_split(model, split, tmp, n=verify, seed=seed, tolerance=tolerance)
            if not verification["passed"]:
                raise CutError(
                    f"offline∘online differs from the original model by {verification['max_abs_diff']:.3g} "
                    f"(tolerance {verification['tolerance']:.3g}) on {verify} random inputs",
                    "the graph is not deterministic (random ops, dropout left on?) or the cut changes it; "
                    "nothing was written")
        pieces = {"offline": dict(piece(OFFLINE_FILE, split.offline), defaults=split.defaults["offline"]),
                  "online": dict(piece(ONLINE_FILE, split.online), defaults=split.defaults["online"])}
        return write_manifest(tmp, source=source_info(model), pieces=pieces, cut=split.cut,
                              live_inputs=split.live_inputs, verification=verification)


def random_feeds(inputs, n: int, rng, graph_def=None) -> dict:
    """Random values for placeholders `[{name, dtype, shape}]`, n rows where the batch is unknown.

    uint8 → pixels 0..255, integers → ids below the smallest table they index (found in
    `graph_def`), floats → standard normal; scalars are settings: False or 1.
    """
    bounds = _id_bounds(graph_def) if graph_def is not None else {}
    feeds = {}
    for spec in inputs:
        dtype = tf.as_dtype(spec["dtype"])
        shape = spec["shape"]
        if shape == []:
            feeds[spec["name"]] = np.array(False if dtype == tf.bool else 1, dtype=dtype.as_numpy_dtype)
            continue
        dims = [n if d is None and i == 0 else (d if d is not None else 8)
                for i, d in enumerate(shape if shape is not None else [None])]
        if dtype == tf.bool:
            value = rng.random(dims) < 0.5
        elif dtype == tf.uint8:
            value = rng.integers(0, 256, dims)
        elif dtype.is_integer:
            value = rng.integers(0, bounds.get(spec["name"].split(":")[0], 10), dims)
        elif dtype.is_floating:
            value = rng.standard_normal(dims)
        else:
            raise CutError(f"cannot make random values of {spec['dtype']} for input '{spec['name']}'",
                           "pass --verify 0 and check the pieces yourself")
        feeds[spec["name"]] = value.astype(dtype.as_numpy_dtype)
    return feeds


_ID_PRESERVING_OPS = {"Identity", "Cast", "Reshape", "ExpandDims", "Squeeze", "StridedSlice"}


def _id_bounds(graph_def) -> dict:
    """{placeholder op: rows of the smallest table it indexes}, following Identity/Cast/Reshape."""
    index = g.Index(graph_def)
    bounds = {}
    for n in graph_def.node:
        if n.op not in ("Placeholder", "PlaceholderWithDefault"):
            continue
        same_ids = g.descendants(index, [n.name], where=lambda name: index[name].op in _ID_PRESERVING_OPS)
        for cur in same_ids:
            for c, idx in index.consumers(cur):
                if c.op in ("GatherV2", "Gather", "ResourceGather") and idx == 1:
                    rows = _rows(index.nodes, c.input[0].split(":")[0])
                    if rows:
                        bounds[n.name] = min(bounds.get(n.name, rows), rows)
    return bounds


def _rows(nodes, name):
    """Static first dimension of a gathered table, looking through Identity reads."""
    node = nodes.get(name)
    while node is not None and node.op in ("Identity", "ReadVariableOp") and node.input:
        node = nodes.get(node.input[0].split(":")[0])
    if node is None:
        return None
    if node.op == "Const":
        dims = node.attr["value"].tensor.tensor_shape.dim
    elif "shape" in node.attr:
        dims = node.attr["shape"].shape.dim
    else:
        return None
    return dims[0].size if dims and dims[0].size > 0 else None


def verify_split(model, split: Split, directory: str, *, n: int = 4, seed: int = 0, tolerance: float = 1e-4) -> dict:
    """Run N random inputs through the original model and through the pieces read from `directory`.

    The original runs as loaded: its own graph with its variables restored by its own Saver from
    the checkpoint, or as is when it holds no variables. Only when it has no usable Saver (a TF2
    SavedModel) is the whole graph frozen to serve as the reference.
    """
    rng = np.random.default_rng(seed)
    offline_gd = g.read_graph_def(os.path.join(directory, OFFLINE_FILE))
    online_gd = g.read_graph_def(os.path.join(directory, ONLINE_FILE))
    feeds = random_feeds(split.offline_inputs, n, rng, offline_gd)
    live = [i for i in split.live_inputs if i["name"] not in feeds]
    feeds.update(random_feeds(live, n, rng, online_gd))
    output_names = [o["name"] for o in split.online.outputs]

    cut_values = _run(offline_gd, {k: feeds[k] for k in (i["name"] for i in split.offline_inputs)},
                      [c["tensor"] for c in split.cut])
    online_feeds = {c["placeholder"]: v for c, v in zip(split.cut, cut_values)}
    online_feeds.update({i["name"]: feeds[i["name"]] for i in split.live_inputs})
    got = _run(online_gd, online_feeds, output_names)
    expected, reference = _run_original(model, {split.original_names.get(k, k): v for k, v in feeds.items()},
                                        output_names)

    max_diff, scale = 0.0, 1.0
    for got_i, exp_i in zip(got, expected):
        got_i, exp_i = np.asarray(got_i, np.float64), np.asarray(exp_i, np.float64)
        if got_i.shape != exp_i.shape:
            return {"n": n, "reference": reference, "max_abs_diff": float("inf"), "tolerance": tolerance,
                    "passed": False}
        if exp_i.size:
            max_diff = max(max_diff, float(np.max(np.abs(got_i - exp_i))))
            scale = max(scale, float(np.max(np.abs(exp_i))))
    tol = tolerance * scale
    return {"n": n, "reference": reference, "max_abs_diff": max_diff, "tolerance": tol,
            "passed": bool(np.isfinite(max_diff) and max_diff <= tol)}


def import_piece(graph_def_or_path) -> object:
    """A fresh `tf.Graph` holding a piece (a GraphDef or a `.pb` path), imported with `name=""` so
    the manifest's names are the names to feed and fetch."""
    graph_def = g.read_graph_def(graph_def_or_path) if isinstance(graph_def_or_path, str) else graph_def_or_path
    return g.graph_from_def(graph_def)


def _run(graph_def, feeds: dict, fetches: list) -> list:
    """Plain TensorFlow: import a GraphDef and run it."""
    with tf.compat.v1.Session(graph=import_piece(graph_def)) as sess:
        return _session_run(sess, fetches, feeds)


def _session_run(sess, fetches, feeds):
    try:
        return sess.run(fetches, feeds)
    except tf.errors.OpError as e:
        # TensorFlow puts the cause on the line before "[[{{node …}}]]", after a traceback.
        lines = [ln.strip() for ln in (e.message or str(e)).splitlines() if ln.strip()]
        marker = next((i for i, ln in enumerate(lines) if ln.startswith("[[")), None)
        msg = (lines[marker - 1] if marker else lines[0] if lines else type(e).__name__)[:200]
        raise CutError(f"cannot verify the split: running on random inputs failed: {msg}",
                       "pass --verify 0 when the inputs need real data (unknown image sizes, ids)") from e


def _run_original(model, feeds: dict, fetches: list):
    """The original model's answer: (values, how it was run)."""
    graph = model.graph
    needed = _ancestor_ops([graph.get_tensor_by_name(f) for f in fetches])
    has_variables = any(op.type in VARIABLE_OP_TYPES for op in needed)
    feeds = {k: v for k, v in feeds.items() if graph.get_tensor_by_name(k).op in needed}
    if not has_variables:
        with tf.compat.v1.Session(graph=graph) as sess:
            return _session_run(sess, fetches, feeds), "graph"
    saver = saver_for(model, fallback=False) if model.checkpoint else None
    if saver is not None:
        with tf.compat.v1.Session(graph=graph) as sess:
            restore_checkpoint(saver, sess, model.checkpoint)
            return _session_run(sess, fetches, feeds), "checkpoint"
    whole = freeze_model(model, fetches)
    return _run(whole.graph_def, {k: v for k, v in feeds.items()
                                  if k in {i["name"] for i in whole.inputs}}, fetches), "frozen"


__all__ = ["Split", "split_model", "write_split", "verify_split", "random_feeds", "import_piece"]
