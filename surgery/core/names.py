"""Tensor and op name resolution shared by every command.

Users write `fc7`, `fc7:0` or `vgg_16/fc7/Relu:0`; all resolve to one tensor. A name that
matches nothing raises `TensorNotFoundError` listing the closest existing names.
"""

from __future__ import annotations

import difflib
import re
import weakref

from .errors import TensorNotFoundError

# Ops and scopes that exist for training, checkpointing or summaries, never for inference.
MACHINERY_OP_TYPES = frozenset({
    "SaveV2", "RestoreV2", "Save", "Restore", "SaveSlices", "RestoreSlice", "MergeV2Checkpoints",
    "ShardedFilename", "ShardedFilespec", "StringJoin",
    "Assign", "AssignAdd", "AssignSub", "AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp",
    "NoOp", "VarIsInitializedOp", "IsVariableInitialized",
    "ScalarSummary", "HistogramSummary", "ImageSummary", "AudioSummary", "MergeSummary",
    "TensorSummary", "TensorSummaryV2", "WriteSummary", "CheckNumerics",
})
MACHINERY_SCOPE = re.compile(
    r"^(save|gradients|train|init|init_all_tables|report_uninitialized_variables|summaries|"
    r"Adam|Momentum|GradientDescent|RMSProp|Adagrad|beta1_power|beta2_power|global_step|"
    r"saver_filename|StatefulPartitionedCall_\d+|saver)(_\d+)?(/|$)"
)
MACHINERY_PART = re.compile(r"/(Initializer|Assign|Adam(_\d+)?|Momentum|RMSProp(_\d+)?|Adagrad|IsInitialized)(/|$)")
VARIABLE_OP_TYPES = frozenset({"VariableV2", "Variable", "VarHandleOp", "AutoReloadVariable"})
# Ops whose unconsumed outputs are never a model's answer.
NOT_OUTPUT_OP_TYPES = VARIABLE_OP_TYPES | {"Const", "Placeholder", "PlaceholderWithDefault", "NoOp", "Assert", "Print",
                                           "PrintV2", "ReadVariableOp", "Shape", "ShapeN", "Size", "Rank"}


def is_machinery(name: str, op_type: str) -> bool:
    """True for a node that serves training, saving, initialisation or summaries."""
    if op_type in MACHINERY_OP_TYPES or op_type.startswith(("Apply", "ResourceApply", "ResourceSparseApply")):
        return True
    if op_type.endswith("Summary") or op_type.endswith("SummaryV2"):
        return True
    return bool(MACHINERY_SCOPE.match(name) or MACHINERY_PART.search(name))


def split_tensor_name(name: str) -> tuple[str, int | None]:
    """`'fc7:0'` → `('fc7', 0)`; `'fc7'` → `('fc7', None)` (no index given)."""
    name = name.strip()
    if name.startswith("^"):
        name = name[1:]
    m = re.fullmatch(r"(.+):(\d+)", name)
    if m:
        return m.group(1), int(m.group(2))
    return name, None


def node_input_op(inp: str) -> str:
    """The op name a GraphDef input string refers to (`^a`, `a:1`, `a` → `a`)."""
    return split_tensor_name(inp)[0]


def parse_list(value) -> list[str]:
    """`'a,b'` or `['a', 'b,c']` → `['a', 'b', 'c']`."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    out = []
    for v in value:
        out.extend(p.strip() for p in str(v).split(",") if p.strip())
    return out


def suggest(name: str, op_names, n: int = 5) -> list[str]:
    """Close existing op names for a mistyped `name`, full names and last components both."""
    op_names = list(op_names)
    found = difflib.get_close_matches(name, op_names, n=n, cutoff=0.6)
    by_tail: dict[str, list[str]] = {}
    for full in op_names:
        by_tail.setdefault(full.rsplit("/", 1)[-1], []).append(full)
        parts = full.split("/")
        for i in range(len(parts) - 1):
            by_tail.setdefault(parts[i], []).append("/".join(parts[: i + 1]))
    tail = name.rsplit("/", 1)[-1]
    for t in difflib.get_close_matches(tail, list(by_tail), n=n, cutoff=0.7):
        for full in by_tail[t][:2]:
            if full not in found:
                found.append(full)
    return found[:n]


# A layer's output is computed: never a weight, as a variable, its read or (frozen) a constant.
_NEVER_LAYER_OUTPUT = VARIABLE_OP_TYPES | {"Const", "ReadVariableOp"}


def _scope_outputs(graph, scope: str):
    """Tensors produced inside `scope/` and consumed outside it (or by nothing)."""
    prefix = scope + "/"
    outs = []
    for op in graph.get_operations():
        if not op.name.startswith(prefix) or is_machinery(op.name, op.type) or op.type in _NEVER_LAYER_OUTPUT:
            continue
        for t in op.outputs:
            consumers = [c for c in t.consumers() if not is_machinery(c.name, c.type)]
            if any(not c.name.startswith(prefix) for c in consumers) or (
                not t.consumers() and op.type not in NOT_OUTPUT_OP_TYPES
            ):
                outs.append(t)
    return outs


# What a graph's names cannot say by themselves, kept beside the imported tf.Graph:
# {graph: {node left out at import: why}} (`legacy.import_leniently`), so that naming one says why
# it is missing; {graph: {Keras layer called more than once: [the tensor of each call]}}, so that
# its bare name is refused as ambiguous instead of resolving to one call, or to neither.
_DROPPED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_AMBIGUOUS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# {graph: True} for graphs traced from TF2 functions (a SavedModel, a Keras model): there each
# layer's ops sit in a scope named after the layer plus a call suffix (`model_1/re_lu_1/` is layer
# `re_lu`'s, `model_1/re_lu_1_1/` layer `re_lu_1`'s), so a scope is matched with its suffix only.
_TRACED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def remember_dropped(graph, dropped: dict) -> None:
    """Record the nodes (`{name: why}`) left out when `graph` was imported."""
    _DROPPED[graph] = dict(dropped)


def dropped_nodes(graph) -> dict:
    """{node name: why} of the nodes left out when `graph` was imported (`legacy.import_leniently`)."""
    return _DROPPED.get(graph, {})


def remember_ambiguous(graph, calls: dict) -> None:
    """Record `{layer name: [call tensor names]}` for the Keras layers `graph` holds several calls of."""
    _AMBIGUOUS[graph] = dict(calls)


def remember_traced(graph) -> None:
    """Record that `graph` was traced from TF2 functions (see `_TRACED`)."""
    _TRACED[graph] = True


def carry_notes(old_graph, new_graph) -> None:
    """Give `new_graph` (a rewrite of `old_graph`) the same notes: left-out nodes, ambiguous names."""
    for registry in (_DROPPED, _AMBIGUOUS, _TRACED):
        if old_graph in registry:
            value = registry[old_graph]
            registry[new_graph] = dict(value) if isinstance(value, dict) else value


def _not_found(graph, name: str, what: str = "tensor") -> TensorNotFoundError:
    why = dropped_nodes(graph).get(name)
    if why is not None:
        return TensorNotFoundError(f"'{name}' was left out when the graph was imported: {why}",
                                   "name outputs that do not need it (inference outputs never do)")
    close = suggest(name, (op.name for op in graph.get_operations()))
    hint = ("did you mean " + ", ".join(f"'{c}'" for c in close) + "?") if close else \
        "run `surgery inspect MODEL --tensors REGEX` to list the tensors"
    return TensorNotFoundError(f"no {what} named '{name}' in the graph", hint)


def _find_op(graph, op_name: str):
    """The op called `op_name`, or the unique op whose name ends with `/op_name`, or None."""
    try:
        return graph.get_operation_by_name(op_name)
    except KeyError:
        pass
    tails = [o for o in graph.get_operations() if o.name.endswith("/" + op_name)]
    if len(tails) > 1:
        raise TensorNotFoundError(
            f"'{op_name}' is ambiguous: {len(tails)} ops end with it",
            "use one of " + ", ".join(f"'{o.name}'" for o in tails[:5]),
        )
    return tails[0] if tails else None


def resolve_op(graph, name: str):
    """The op called `name` (exact), or the unique op whose name ends with `/name`."""
    op = _find_op(graph, split_tensor_name(name)[0])
    if op is None:
        raise _not_found(graph, split_tensor_name(name)[0], "op")
    return op


def _traced_scopes(graph, layer: str) -> list[str]:
    """Scopes `…/LAYER_N` below a top-level scope: where a traced layer's ops sit."""
    traced = re.compile(r"/" + re.escape(layer) + r"_\d+/")
    return sorted({o.name[: m.end() - 1] for o in graph.get_operations() if (m := traced.search(o.name))})


def resolve_tensor(graph, name: str):
    """Resolve `fc7`, `fc7:0`, `scope/fc7/Relu:0` or a scope name such as `vgg_16/fc7`.

    Order: an exact op name; the unique op whose name ends with `/name`; the single tensor
    that leaves the scope `name/` (or `.../name/`, or `.../name_1/` as Keras layers are traced).
    Anything else is an error with suggestions.
    """
    op_name, index = split_tensor_name(name)
    calls = _AMBIGUOUS.get(graph, {}).get(op_name)
    if calls:
        raise TensorNotFoundError(f"'{op_name}' is a Keras layer called {len(calls)} times: each call has a tensor "
                                  "of its own", "name one call: " + ", ".join(calls))
    ambiguous = None
    try:
        op = _find_op(graph, op_name)
    except TensorNotFoundError as e:  # `add_1` ends several ops, yet a Keras layer scope may be meant
        if index is not None:
            raise
        op, ambiguous = None, e
    if op is None and index is None:
        if graph in _TRACED and "/" not in op_name:
            scopes = _traced_scopes(graph, op_name)
        else:
            scopes = sorted({o.name[: o.name.index(op_name + "/") + len(op_name)]
                             for o in graph.get_operations()
                             if o.name.startswith(op_name + "/") or ("/" + op_name + "/") in o.name})
            if not scopes:  # a Keras layer traced by TF: layer `add_4` under scope `model_1/add_4_1/`
                scopes = _traced_scopes(graph, op_name)
        candidates = [t for s in scopes for t in _scope_outputs(graph, s)]
        if len(candidates) == 1:
            return candidates[0]
        if ambiguous is not None:
            raise ambiguous
        if len(candidates) > 1:
            raise TensorNotFoundError(
                f"'{name}' is a scope with {len(candidates)} outputs",
                "name one of " + ", ".join(f"'{t.name}'" for t in candidates[:5]),
            )
    if op is None:
        raise _not_found(graph, op_name)
    index = index or 0
    if index >= len(op.outputs):
        raise TensorNotFoundError(
            f"op '{op.name}' has {len(op.outputs)} output(s); there is no '{op.name}:{index}'",
            "valid names: " + ", ".join(t.name for t in op.outputs) if op.outputs else "this op has no outputs",
        )
    return op.outputs[index]


def resolve_tensors(graph, names) -> list:
    """Resolve a comma-separated string or a list of names; duplicates are an error."""
    tensors = [resolve_tensor(graph, n) for n in parse_list(names)]
    seen = set()
    for t in tensors:
        if t.name in seen:
            raise TensorNotFoundError(f"tensor '{t.name}' is named twice", "name each tensor once")
        seen.add(t.name)
    return tensors
