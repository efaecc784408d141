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
import sys

import numpy as np

from ..core import graph as g
from ..core import tfcompat
from ..core.errors import CutError, GraphTooBigError
from ..core.files import atomic_path
from ..core.graph import write_graph_def
from ..core.manifest import replaceable_directory, source_info, write_manifest
from ..core.model import LoadOptions
from ..core.names import VARIABLE_OP_TYPES, resolve_tensors, suggest
from ..core.pieces import Piece, TensorSpec, specs
from ..core.weights import restore_checkpoint, saver_for
from . import savedmodel
from .compress import agreement, compress_split, difference
from .freeze import freeze_model

tf = tfcompat.tf

_CALIBRATION_CHUNK = 64  # calibration rows run through the model at a time
# {piece format: how its file (or directory) is named}; a SavedModel piece keeps its variables.
PIECE_FILES = {"frozen": "{}.pb", "savedmodel": "{}"}
# v1 control flow: a tensor between a Switch and its Merge (or an Enter and its Exit) only exists
# inside a frame; a placeholder cannot stand in for it.
_FRAME_CLOSE = {"Merge", "RefMerge", "Exit", "RefExit"}
_FRAME_OPS = {"Switch", "RefSwitch", "Enter", "RefEnter", "NextIteration", "LoopCond", "RefNextIteration"}


@dataclasses.dataclass
class Split:
    """The two pieces and how they join: each a `Piece`, frozen, or keeping its variables
    (`format="savedmodel"`) when frozen it would pass the 2 GB limit or when asked.

    `cut`: [{tensor, placeholder, dtype, shape}], each cut tensor of the original graph and the
    online placeholder that replaces it (the manifest's form). `offline_inputs` / `live_inputs`:
    `TensorSpec`s of the placeholders fed to the offline piece / fed to the online piece besides
    the cut ones (user features).
    `defaults`: {piece: [PlaceholderWithDefault tensors left at their default]}.
    `original_names`: {offline placeholder: the original tensor it stands for} where they differ.
    """

    offline: Piece
    online: Piece
    cut: list
    offline_inputs: list
    live_inputs: list
    defaults: dict
    original_names: dict = dataclasses.field(default_factory=dict)


def split_model(model, cut, outputs, *, inputs=None, format: str = "auto", cut_dtype: str = "float32",
                calibration=None) -> Split:
    """Split a loaded `Model` at `cut` into an offline piece (inputs → cut tensors) and an online
    piece (one placeholder per cut tensor, plus the live inputs the outputs still need → outputs).

    Args:
        model: a loaded `Model`.
        cut: the cut tensors (names or tf.Tensors); `surgery.cuts` lists the ones that separate.
        outputs: the online piece's outputs.
        inputs: the offline inputs, when not the placeholders the cut depends on.
        format: "frozen", "savedmodel" (variables kept), or "auto": frozen when a piece fits in a
            GraphDef, else a SavedModel.
        cut_dtype: "float16" or "int8" makes the cut cross compressed (see `passes.compress`).
        calibration: for int8, `FILE.h5[:KEY]`/`FILE.npy` sources of the offline inputs; the cut's
            values on those rows set each channel's range.

    Returns:
        A `Split`: `offline` and `online` pieces, `cut` (the manifest's entries), `offline_inputs`,
        `live_inputs`, `defaults`.

    Raises:
        CutError: the cut does not separate (naming the input that leaks, where it joins and the
            `--cut` to add), a cut inside a conditional or at a variable, int8 without calibration.

    Examples:
        >>> split = surgery.split_model(model, "fc7", "predictions")
        >>> surgery.write_split(model, split, "pieces/")
    """
    split = _split(model, cut, outputs, inputs=inputs, format=format)
    if cut_dtype == "int8":
        from ..data.calibration import representative_rows
        if not calibration:
            raise CutError("--cut-dtype int8 needs calibration rows to choose its scales",
                           "pass --calibration FILE.h5 (or .npy) holding inputs of the offline piece")
        rows, _ = representative_rows(split.offline, calibration, verify=0)
        return compress_split(split, cut_dtype, calibration=calibrate(model, split, rows))
    return compress_split(split, cut_dtype)


def calibrate(model, split: Split, rows: list) -> list:
    """The cut tensors' values on calibration `rows` (one array per offline input), computed by the
    original model as loaded (its checkpoint, or the graph itself), a chunk at a time."""
    names = [split.original_names.get(i.name, i.name) for i in split.offline_inputs]
    tensors = [c["tensor"] for c in split.cut]
    parts = []
    for start in range(0, len(rows[0]), _CALIBRATION_CHUNK):
        feeds = {n: r[start:start + _CALIBRATION_CHUNK] for n, r in zip(names, rows)}
        parts.append(run_original(model, feeds, tensors)[0])
    return [np.concatenate([p[k] for p in parts]) for k in range(len(tensors))]


def _split(model, cut, outputs, *, inputs, format) -> Split:
    """`split_model` with the cut crossing as it is."""
    if format not in savedmodel.FORMATS:
        raise CutError(f"unknown piece format '{format}'", "use --format " + ", ".join(savedmodel.FORMATS))
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

    offline_piece = _piece(model, "offline", cut_tensors, offline, format)
    online_piece = _piece(model, "online", out_tensors, cut_tensors, format)

    originals = {ph: t for t, ph in offline_piece.cut.items()}
    offline_piece.inputs = [  # a shape the source records only in _output_shapes or its signature
        dataclasses.replace(spec, shape=_declared_shape(model, originals.get(spec.name, spec.name)))
        if spec.shape is None else spec for spec in offline_piece.inputs]

    online_inputs = {i.name: i for i in online_piece.inputs}
    cut_info = []
    for t in cut_tensors:
        ph = online_piece.cut[t.name]
        if ph not in online_inputs:
            raise RuntimeError(f"the online piece has no placeholder '{ph}' for cut tensor '{t.name}'")
        cut_info.append({"tensor": t.name, "placeholder": ph, "dtype": online_inputs[ph].dtype,
                         "shape": online_inputs[ph].as_dict()["shape"]})
    cut_placeholders = {c["placeholder"] for c in cut_info}
    return Split(
        offline=offline_piece,
        online=online_piece,
        cut=cut_info,
        offline_inputs=offline_piece.inputs,
        live_inputs=[i for i in online_piece.inputs if i.name not in cut_placeholders],
        defaults={"offline": _defaults(offline_piece), "online": _defaults(online_piece)},
        original_names={ph: t for t, ph in offline_piece.cut.items() if ph != t},
    )


_FUNCTIONAL_OPS = {"If", "StatelessIf", "While", "StatelessWhile", "Case", "StatelessCase",
                   "PartitionedCall", "StatefulPartitionedCall"}


def _piece(model, name: str, outputs, inputs, format: str):
    """One piece in the format asked for; "auto" keeps the variables only past the frozen size limit."""
    if format == "savedmodel":
        return savedmodel.variable_piece(model, outputs, inputs=inputs)
    try:
        frozen = _freeze_piece(model, name, outputs, inputs)
        too_big = frozen.estimated_bytes > savedmodel.frozen_limit()
    except GraphTooBigError:
        if format == "frozen":
            raise
        too_big = True
    if not too_big:
        return frozen
    if format == "frozen":
        raise GraphTooBigError(f"the {name} piece would be {frozen.estimated_bytes} bytes frozen, over the limit "
                               f"({savedmodel.LIMIT_ENV}={savedmodel.frozen_limit()})", g.TOO_BIG_HINT)
    return savedmodel.variable_piece(model, outputs, inputs=inputs)


def _freeze_piece(model, name: str, outputs, inputs) -> Piece:
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
    """A scalar placeholder (`is_training`, `keep_prob`) or a boolean one declared without a shape
    (a TF-slim `is_train` switch) is a setting shared by both pieces, not data."""
    return tensor.shape.rank == 0 or (tensor.shape.rank is None and tensor.dtype.base_dtype == tf.bool)


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
                path, cur = [src], op
                while cur is not None:
                    path.append(cur)
                    cur = parent[cur]
                raise _leak(name, path, cut_tensors)
            if src not in parent:
                parent[src] = op
                queue.append(src)


def _leak(name: str, path: list, cut_tensors) -> CutError:
    """The refusal of a cut that does not separate: the input that leaks, the op path it takes, and
    the tensor where that path joins the part above the cut (a skip connection): the one to add."""
    cuts = ",".join(t.name.removesuffix(":0") for t in cut_tensors)
    above = _descendant_ops(cut_tensors)
    join = next((k for k, op in enumerate(path) if op in above), None)
    if join:  # the edge path[join - 1] → path[join] crosses the cut: add its tensor
        skip = next(t.name for t in path[join].inputs if t.op is path[join - 1])
        where = f"; it joins the part above the cut at '{path[join].name}' through '{skip}'"
        hint = f"cut that path too: --cut {cuts},{skip.removesuffix(':0')}"
    else:
        where, hint = "", "cut that path too, naming one of its tensors in --cut"
    return CutError(f"the cut at {cuts} does not separate the graph: offline input '{name}' reaches output "
                    f"'{path[-1].name}' around it, via {_format_path([op.name for op in path])}{where}",
                    hint + "; `surgery cuts` lists the tensors that separate alone, and --inputs names the "
                    "offline inputs (a live input such as user features is fed to the online piece)")


def _descendant_ops(tensors) -> set:
    """The ops that depend on any of `tensors`."""
    seen, stack = set(), [c for t in tensors for c in t.consumers()]
    while stack:
        op = stack.pop()
        if op not in seen:
            seen.add(op)
            stack.extend(c for t in op.outputs for c in t.consumers())
    return seen


def _format_path(path, keep: int = 4) -> str:
    if len(path) > 2 * keep + 1:
        path = path[:keep] + [f"… {len(path) - 2 * keep} ops …"] + path[-keep:]
    return " → ".join(path)


def _defaults(piece) -> list:
    """PlaceholderWithDefault tensors a piece keeps (they run at their default unless fed)."""
    piece_graph = import_piece(piece.skeleton)
    return [TensorSpec.of(op.outputs[0]) for op in piece_graph.get_operations() if op.type == "PlaceholderWithDefault"]


# ---------------------------------------------------------------- writing and verification

def write_split(model, split: Split, directory: str, *, verify: int = 4, seed: int = 0,
                tolerance: float = 1e-4, progress: bool = False, input_shapes=None, verify_data: str | None = None,
                options=None) -> dict:
    """Write `offline.pb`, `online.pb` (or SavedModel directories for pieces that keep their
    variables) and `manifest.json` into `directory`, all or nothing, after verifying them.

    Verification feeds `verify` inputs through the original model and through offline∘online read
    back from the written files, in a child process (a TensorFlow `CHECK` failure on a hostile
    graph kills that process, not this one). The inputs are the first rows of `verify_data`, else
    random values shaped by `input_shapes` and every shape the graph records (`verify_feeds`).

    Args:
        model: the loaded `Model` the split came from.
        split: what `split_model` returned.
        directory: the directory to write (replaced as a whole; a foreign directory is refused).
        verify: the number of inputs to verify on (0 skips).
        seed: the random inputs' seed.
        tolerance: the allowed difference, relative to the outputs' magnitude.
        progress: show a progress bar while the pieces are written.
        input_shapes: `{input: [dims]}` for inputs whose shape the graph does not fix.
        verify_data: `FILE.h5` (a dataset per input), `FILE.h5:KEY` or `FILE.npy` rows to verify on.
        options: the `LoadOptions` the model was loaded with (the child loads it again).

    Returns:
        The manifest written (`verification` included).

    Raises:
        CutError: offline∘online differs from the original beyond `tolerance`; nothing is written.

    Examples:
        >>> manifest = surgery.write_split(model, split, "pieces/", verify=8)
        >>> manifest["verification"]["max_abs_diff"]
    """
    directory = replaceable_directory(directory)
    pieces = {"offline": split.offline, "online": split.online}
    with atomic_path(directory, directory=True) as tmp:
        files = {name: write_piece(piece, tmp, name, progress=progress) for name, piece in pieces.items()}
        verification = {"n": 0, "skipped": True, "passed": None}
        if verify > 0:
            feeds = verify_feeds(model, split, n=verify, seed=seed, input_shapes=input_shapes,
                                 verify_data=verify_data)
            verification = verify_in_child(model, split, tmp, feeds, tolerance=tolerance, options=options)
            verification["data"] = "given" if verify_data else "random"
            if not verification["passed"]:
                raise CutError(
                    f"offline∘online differs from the original model by {verification['max_abs_diff']:.3g} "
                    f"(tolerance {verification['tolerance']:.3g}) on {verification['n']} "
                    f"{'given' if verify_data else 'random'} inputs",
                    "the graph is not deterministic (random ops, dropout left on?) or the cut changes it; "
                    "nothing was written")
        pieces = {name: dict(p.manifest_entry(files[name]), format=p.format,
                             defaults=[d.as_dict() for d in split.defaults[name]])
                  for name, p in pieces.items()}
        return write_manifest(tmp, source=source_info(model), pieces=pieces, cut=split.cut,
                              live_inputs=[i.as_dict() for i in split.live_inputs], verification=verification)


def write_piece(piece, directory: str, name: str, *, progress: bool = False) -> str:
    """Write one piece into `directory` as `NAME.pb` (frozen) or `NAME/` (a SavedModel keeping its
    variables); returns the file name the manifest records."""
    file = PIECE_FILES[piece.format].format(name)
    if piece.format == "savedmodel":
        savedmodel.write_saved_model(piece, os.path.join(directory, file), progress=progress)
    else:
        write_graph_def(piece, os.path.join(directory, file), progress=progress)
    return file


def random_feeds(inputs, n: int, rng, graph_def=None) -> dict:
    """Random values for placeholders (`TensorSpec`s), n rows where the batch is unknown.

    uint8 → pixels 0..255, integers → ids below the smallest table they index (found in
    `graph_def`), floats → standard normal; scalars are settings: False or 1.
    """
    bounds = _id_bounds(graph_def) if graph_def is not None else {}
    feeds = {}
    for spec in inputs:
        dtype = tf.as_dtype(spec.dtype)
        shape = spec.shape
        if shape == ():
            feeds[spec.name] = np.array(False if dtype == tf.bool else 1, dtype=dtype.as_numpy_dtype)
            continue
        dims = [n if d is None and i == 0 else (d if d is not None else 8)
                for i, d in enumerate(shape if shape is not None else [None])]
        if dtype == tf.bool:
            value = rng.random(dims) < 0.5
        elif dtype == tf.uint8:
            value = rng.integers(0, 256, dims)
        elif dtype.is_integer:
            value = rng.integers(0, bounds.get(spec.op, 10), dims)
        elif dtype.is_floating:
            value = rng.standard_normal(dims)
        else:
            raise CutError(f"cannot make random values of {spec.dtype} for input '{spec.name}'",
                           "give real inputs with --verify-data FILE, or pass --verify 0 and check the pieces yourself")
        feeds[spec.name] = value.astype(dtype.as_numpy_dtype)
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


_SHAPE_HINT = ("give its shape with --input-shape {name}=d0,d1,.. (batch first) or real inputs with "
               "--verify-data FILE, or skip verification with --verify 0")


def verify_feeds(model, split: Split, *, n: int, seed: int = 0, input_shapes=None, verify_data=None) -> dict:
    """{input tensor: array} for every placeholder the pieces are fed (cut placeholders excepted).

    From `verify_data` when given (its first `n` rows), else random values whose shapes come
    from, in order: `input_shapes`, the placeholder's own shape, its `_output_shapes`, the
    serving signature, what its consumers require (a convolution's rank and channels, a
    matmul's width). An input whose shape none of them fixes is refused (`CutError` naming it
    and the flags) rather than guessed: a wrong guess can crash TensorFlow itself.
    """
    rng = np.random.default_rng(seed)
    specs = {}
    for spec in list(split.offline_inputs) + list(split.live_inputs):
        specs.setdefault(spec.name, spec)
    given = _match_inputs(input_shapes or {}, specs, "--input-shape")
    rows = _verify_rows(verify_data, specs, n) if verify_data else {}
    feeds = {}
    for name, spec in specs.items():
        if name in rows:
            feeds[name] = rows[name]
            continue
        original = split.original_names.get(name, name)
        shape = given.get(name)
        if shape is None and spec.shape is not None:
            shape = _refine(spec.shape, _consumer_shape(model.graph, original))
        if shape is None:
            shape = _declared_shape(model, original)
        if shape is None:
            shape = _consumer_shape(model.graph, original)
        if shape is None:
            if tf.as_dtype(spec.dtype) == tf.bool:
                shape = []  # a shapeless boolean switch: a setting, fed False
            else:
                raise CutError(f"cannot verify the split: the shape of input '{name}' is unknown (no declared "
                               "shape, no _output_shapes, no signature, and its consumers do not fix its rank)",
                               _SHAPE_HINT.format(name=name.split(":")[0]))
        feeds.update(random_feeds([dataclasses.replace(spec, shape=shape)], n, rng,
                                  split.offline.graph_def if name in {i.name for i in split.offline_inputs}
                                  else split.online.graph_def))
    return feeds


def _match_inputs(by_name: dict, specs: dict, flag: str) -> dict:
    """{input tensor: value} from user keys given as `op`, `op:0` or the original tensor's name."""
    out = {}
    for key, value in by_name.items():
        match = [name for name in specs if key in (name, name.split(":")[0])]
        if not match:
            close = suggest(key.split(":")[0], [n.split(":")[0] for n in specs])
            raise CutError(f"{flag} {key}: the pieces have no input '{key}'",
                           "inputs to verify with: " + (", ".join(n.split(":")[0] for n in specs) or "(none)")
                           + (f" (did you mean {close[0]}?)" if close else ""))
        out[match[0]] = value
    return out


def _verify_rows(path: str, specs: dict, n: int) -> dict:
    """The first `n` rows for each input from `path`: a `.npy` or `FILE.h5:KEY` for the one data
    input, or an HDF5 file with one dataset per input (named as the input op, e.g. `images`)."""
    from ..data import ArrayRows, check_feedable

    data_inputs = [name for name, spec in specs.items() if spec.shape != ()]
    key = None
    if not os.path.exists(path) and ":" in path and os.path.isfile(path.rsplit(":", 1)[0]):
        path, key = path.rsplit(":", 1)
    one = path.endswith(".npy") or key is not None
    rows = {}
    for name in (data_inputs if not one else data_inputs[:1]):
        if one and len(data_inputs) > 1:
            raise CutError(f"--verify-data {path}: one array cannot feed {len(data_inputs)} inputs "
                           f"({', '.join(data_inputs)})", "pass an HDF5 file with one dataset per input")
        dataset = key if key is not None else None if path.endswith(".npy") else name.split(":")[0]
        with ArrayRows(path, dataset, what="--verify-data") as source:
            dtype = check_feedable(source, dataclasses.replace(specs[name], shape=None),
                                   where=f"--verify-data {source.where}")
            rows[name] = source.read(0, min(n, len(source))).astype(dtype)
    return rows


def _refine(shape, required):
    """`shape` with unknown dims filled from `required` (same rank), else `shape`."""
    if required is None or len(required) != len(shape):
        return list(shape)
    return [d if d is not None else r for d, r in zip(shape, required)]


def _declared_shape(model, tensor_name: str):
    """The shape recorded for a tensor outside its op's own attrs: `_output_shapes`, or the
    serving signature's entry for it. None when neither knows its rank."""
    op_name, _, index = tensor_name.partition(":")
    node = next((n for n in model.graph_def.node if n.name == op_name), None)
    if node is not None and "_output_shapes" in node.attr:
        shapes = node.attr["_output_shapes"].list.shape
        i = int(index or 0)
        if i < len(shapes) and not shapes[i].unknown_rank:
            return [d.size if d.size >= 0 else None for d in shapes[i].dim]
    for sig in (model.signature_defs or {}).values():
        for info in sig.inputs.values():
            if info.name == tensor_name and not info.tensor_shape.unknown_rank:
                return [d.size if d.size >= 0 else None for d in info.tensor_shape.dim]
    return None


_SAME_SHAPE_OPS = {"Identity", "Cast", "StopGradient", "Relu", "Relu6", "Sigmoid", "Tanh", "Neg", "Abs", "Square",
                   "Exp", "Log", "Sqrt", "Softmax", "Elu", "Selu", "Softplus"}
_IMAGE_OPS = {"Conv2D", "DepthwiseConv2dNative", "MaxPool", "AvgPool", "FusedBatchNorm", "FusedBatchNormV3",
              "Conv2DBackpropInput"}


def _consumer_shape(graph, tensor_name: str):
    """What the consumers of a tensor require of it (through shape-keeping ops): rank 4 with the
    filter's channels for a convolution, rank 2 with the weights' rows for a matmul. None when
    no consumer says."""
    try:
        tensor = graph.get_tensor_by_name(tensor_name)
    except (KeyError, ValueError):
        return None
    seen, todo = set(), [tensor]
    while todo:
        t = todo.pop()
        if t.name in seen:
            continue
        seen.add(t.name)
        for c in t.consumers():
            if c.type in _SAME_SHAPE_OPS and c.inputs and c.inputs[0] is t:
                todo.extend(c.outputs[:1])
            elif c.type in _IMAGE_OPS and c.inputs[0] is t:
                channels = None
                if c.type in ("Conv2D", "DepthwiseConv2dNative") and c.inputs[1].shape.rank == 4:
                    channels = c.inputs[1].shape.as_list()[2]
                fmt = c.get_attr("data_format") if "data_format" in c.node_def.attr else b"NHWC"
                if fmt in (b"NCHW", "NCHW"):
                    return [None, channels, None, None]
                return [None, None, None, channels]
            elif c.type in ("MatMul", "BatchMatMulV2") and c.inputs[0] is t and c.type == "MatMul":
                b = c.inputs[1].shape
                if c.get_attr("transpose_a") or b.rank != 2:
                    return [None, None]
                return [None, b.as_list()[1 if c.get_attr("transpose_b") else 0]]
    return None


def verify_in_child(model, split: Split, directory: str, feeds: dict, *, tolerance: float = 1e-4,
                    options=None) -> dict:
    """`verify_split` in a fresh Python process: the original model is loaded again from its
    path there (with `options`, a `model.LoadOptions`). A crash of TensorFlow (a `CHECK` failure
    aborts the process) or an error becomes `CutError` with TensorFlow's own message; this process
    is never at risk."""
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="surgery-verify-") as work:
        names = sorted(feeds)
        np.savez(os.path.join(work, "feeds.npz"), *[_without_objects(feeds[k]) for k in names])
        from .bind import format_sets

        spec = {"model": model.path, "options": dataclasses.asdict(options or LoadOptions()),
                "set": format_sets(model.bound_placeholders),
                "pieces": directory,
                "feeds": names, "tolerance": tolerance,
                "split": {"offline_inputs": [i.as_dict() for i in split.offline_inputs],
                          "live_inputs": [i.as_dict() for i in split.live_inputs],
                          "cut": split.cut, "original_names": split.original_names,
                          "outputs": [o.as_dict() for o in split.online.outputs]}}
        with open(os.path.join(work, "spec.json"), "w") as f:
            json.dump(spec, f)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # holds surgery/
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        proc = subprocess.run([sys.executable, "-c", "import sys; from surgery.passes.split import _verify_child; "
                               "sys.exit(_verify_child(sys.argv[1]))", work],
                              capture_output=True, text=True, env=env)
        result = os.path.join(work, "result.json")
        if proc.returncode == 0 and os.path.exists(result):
            with open(result) as f:
                return json.load(f)
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    ours = [ln[len("surgery: error: "):] for ln in lines if ln.startswith("surgery: error: ")]
    if ours:  # the child's own refusal, hint included
        raise CutError(ours[-1])
    if proc.returncode > 0 and lines and "Check failed" not in proc.stderr:  # a Python error there
        raise CutError(f"cannot verify the split: the verification process failed ({lines[-1][:300]})",
                       "nothing was written; --verify 0 skips the check (then compare the pieces yourself), "
                       "and please report this")
    check = next((ln for ln in lines if "Check failed" in ln), None)
    cause = (check.split("] ", 1)[-1] if check else lines[-1] if lines else f"exit status {proc.returncode}")[:300]
    raise CutError(f"cannot verify the split: TensorFlow crashed running the model on its verification inputs "
                   f"({cause})", "the input shapes are probably wrong: " + _SHAPE_HINT.format(name="NAME"))


def _without_objects(array) -> np.ndarray:
    """String feeds (numpy object arrays of bytes) as fixed-width bytes, which `np.load` reads back
    without pickle and TensorFlow feeds as strings."""
    array = np.asarray(array)
    return np.asarray(array.tolist(), dtype=bytes) if array.dtype == object else array


def _verify_child(work: str) -> int:
    """Child side of `verify_in_child`: load the model, run the check, write `result.json`."""
    import json
    import types

    from ..core.errors import SurgeryError
    from .bind import bind

    with open(os.path.join(work, "spec.json")) as f:
        spec = json.load(f)
    with np.load(os.path.join(work, "feeds.npz"), allow_pickle=False) as data:
        feeds = {name: data[f"arr_{i}"] for i, name in enumerate(spec["feeds"])}
    s = spec["split"]
    split = types.SimpleNamespace(offline_inputs=specs(s["offline_inputs"]), live_inputs=specs(s["live_inputs"]),
                                  cut=s["cut"], original_names=s["original_names"],
                                  online=types.SimpleNamespace(outputs=specs(s["outputs"])))
    try:
        model = bind(LoadOptions(**spec["options"]).load(spec["model"]), spec["set"])
        result = verify_split(model, split, spec["pieces"], feeds, tolerance=spec["tolerance"])
    except SurgeryError as e:
        print(f"surgery: error: {e}", file=sys.stderr)
        return 2
    with open(os.path.join(work, "result.json"), "w") as f:
        json.dump(result, f)
    return 0


def verify_split(model, split: Split, directory: str, feeds: dict, *, tolerance: float = 1e-4) -> dict:
    """Run `feeds` through the original model and through the pieces read from `directory`.

    The original runs as loaded: its own graph with its variables restored by its own Saver from
    the checkpoint, or as is when it holds no variables. Only when it has no usable Saver (a TF2
    SavedModel) is the whole graph frozen to serve as the reference.
    """
    offline_path, online_path = _written_piece(directory, "offline"), _written_piece(directory, "online")
    output_names = [o.name for o in split.online.outputs]
    n = max((len(v) for v in feeds.values() if np.ndim(v)), default=1)

    offline_feeds = {k: feeds[k] for k in (i.name for i in split.offline_inputs)}
    live_feeds = {i.name: feeds[i.name] for i in split.live_inputs}
    compressed = [c for c in split.cut if "offline_output" in c]
    # the float path: the cut tensors themselves, fed where the online piece rebuilds them
    cut_values = _run_written(offline_path, offline_feeds, [c["tensor"] for c in split.cut])
    got = _run_written(online_path, dict(live_feeds, **{c.get("dequantized", c["placeholder"]): v
                                                        for c, v in zip(split.cut, cut_values)}), output_names)
    expected, reference = run_original(model, {split.original_names.get(k, k): v for k, v in feeds.items()},
                                        output_names)
    max_diff, scale = difference(got, expected)
    tol = tolerance * scale
    result = {"n": n, "reference": reference, "max_abs_diff": max_diff, "tolerance": tol,
              "passed": bool(np.isfinite(max_diff) and max_diff <= tol)}
    if compressed:  # the compressed path, as precompute and serving run it: reported, not held to tol
        sent = _run_written(offline_path, offline_feeds, [c["offline_output"] for c in compressed])
        got = _run_written(online_path, dict(live_feeds, **{c["placeholder"]: v for c, v in zip(compressed, sent)}),
                           output_names)
        result["compressed"] = {"dtype": compressed[0]["dtype"], "max_abs_diff": difference(got, expected)[0],
                                "agreement": agreement(got, expected)}
    return result


def import_piece(graph_def_or_path) -> object:
    """A fresh `tf.Graph` holding a piece (a GraphDef or a `.pb` path), imported with `name=""` so
    the manifest's names are the names to feed and fetch."""
    graph_def = g.read_graph_def(graph_def_or_path) if isinstance(graph_def_or_path, str) else graph_def_or_path
    return g.graph_from_def(graph_def)


def _run(graph_def, feeds: dict, fetches: list) -> list:
    """Plain TensorFlow: import a GraphDef and run it."""
    with tf.compat.v1.Session(graph=import_piece(graph_def)) as sess:
        return _session_run(sess, fetches, feeds)


def _written_piece(directory: str, name: str) -> str:
    """The path of piece `name` as written in `directory`: `NAME.pb`, or a SavedModel `NAME/`."""
    for pattern in PIECE_FILES.values():
        path = os.path.join(directory, pattern.format(name))
        if os.path.exists(path):
            return path
    raise CutError(f"{directory} holds no piece '{name}'", "write the split again")


def _run_written(path: str, feeds: dict, fetches: list) -> list:
    """Run a piece as written: a frozen `.pb` imported, or a SavedModel loaded with its variables."""
    if os.path.isdir(path):
        with savedmodel.load_session(path) as sess:
            return _session_run(sess, fetches, feeds)
    return _run(g.read_graph_def(path), feeds, fetches)


def _session_run(sess, fetches, feeds):
    try:
        return sess.run(fetches, feeds)
    except tf.errors.OpError as e:
        # TensorFlow puts the cause on the line before "[[{{node …}}]]", after a traceback.
        lines = [ln.strip() for ln in (e.message or str(e)).splitlines() if ln.strip()]
        marker = next((i for i, ln in enumerate(lines) if ln.startswith("[[")), None)
        msg = (lines[marker - 1] if marker else lines[0] if lines else type(e).__name__)[:200]
        raise CutError(f"cannot verify the split: running on the verification inputs failed: {msg}",
                       _SHAPE_HINT.format(name="NAME")) from e


def run_original(model, feeds: dict, fetches: list):
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
                                  if k in {i.name for i in whole.inputs}}, fetches), "frozen"


__all__ = ["Split", "calibrate", "run_original", "split_model", "write_split", "write_piece", "verify_feeds", "verify_in_child",
           "verify_split", "random_feeds",
           "import_piece"]
