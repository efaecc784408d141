"""`--set T=VALUE`: bind a placeholder to a constant, and keep only the branches it selects.

A TF1 training graph switches between training and inference with placeholders: a bool
`is_training` that feeds the `tf.cond`s of every batch norm and dropout, a float `keep_prob`.
A runtime that loads a frozen piece should feed neither. Binding replaces the placeholder by a
`Const` of the same name (so every consumer reads the value), then each conditional whose
predicate is now constant keeps only the branch it takes:

- v1 control flow (`Switch`/`Merge`): the untaken side of each `Switch` is dead, and so is every
  node that needs a dead tensor or waits on a dead node; a `Merge` reads its one live input.
  TensorFlow decides this only at run time (dead tensors), and Grappler's dead-branch removal
  runs inside the whole optimizer, which also renames and folds nodes; this pass keeps every
  surviving name.
- functional `If`/`Case`: `optimize.take_constant_branches` calls the branch taken.

The model's checkpoint, saver and variable names are unchanged, so the bound model restores,
freezes, splits, trains and exports as before.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..core import graph as g
from ..core import tfcompat
from ..core.errors import SurgeryError
from ..core.graph import shape_str
from ..core.names import node_input_op, resolve_op, split_tensor_name
from .optimize import take_constant_branches

tf = tfcompat.tf

PLACEHOLDER_OPS = ("Placeholder", "PlaceholderWithDefault")
_SWITCH = ("Switch", "RefSwitch")
_MERGE = ("Merge", "RefMerge")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_sets(specs) -> dict:
    """`['is_training=false', 'keep_prob=1.0']` → `{name: text}`; a malformed spec is a usage
    error, raised before any model loads. A dict passes through (values may be numbers or arrays)."""
    if not specs:
        return {}
    if isinstance(specs, dict):
        return dict(specs)
    out = {}
    for spec in [specs] if isinstance(specs, str) else specs:
        name, eq, value = str(spec).partition("=")
        if not eq or not name.strip() or not value.strip():
            raise SurgeryError(f"--set '{spec}' is not T=VALUE",
                               "bind a placeholder to a value, e.g. --set is_training=false or --set keep_prob=1.0")
        name = name.strip()
        if name in out:
            raise SurgeryError(f"--set names '{name}' twice", "give each placeholder one value")
        out[name] = value.strip()
    return out


def format_sets(sets: dict) -> list[str]:
    """The `--set` arguments that give `sets` again (for manifests and messages)."""
    return [f"{k}={_as_text(v)}" for k, v in sets.items()]


def _as_text(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.ndarray):
        return ",".join(_as_text(v) for v in value.ravel().tolist())
    return str(value)


def placeholder_value(node, text) -> np.ndarray:
    """`text` (or a Python value) as the placeholder `node` takes it: its dtype, and its shape
    where known (a single value fills a fully known shape; `a,b,c` gives a vector)."""
    dtype = tf.as_dtype(node.attr["dtype"].type)
    shape_proto = node.attr["shape"].shape
    shape = None if shape_proto.unknown_rank else [d.size for d in shape_proto.dim]
    shown = shape_str(None if shape is None else [None if d < 0 else d for d in shape])
    what = f"'{node.name}' is a {dtype.name} placeholder of shape {shown}"
    parts = text.split(",") if isinstance(text, str) else None
    try:
        if parts is None:
            value = np.asarray(text, dtype=dtype.as_numpy_dtype if dtype != tf.string else object)
        else:
            items = [_parse_one(p.strip(), dtype) for p in parts]
            value = np.asarray(items[0] if len(items) == 1 else items,
                               dtype=dtype.as_numpy_dtype if dtype != tf.string else object)
    except (ValueError, TypeError, OverflowError) as e:
        raise SurgeryError(f"--set {node.name}={_as_text(text)}: {what}, and {_as_text(text)!r} is not a "
                           f"{dtype.name} ({e})", _example(node.name, dtype)) from e
    if shape is None:
        return value
    if value.ndim == 0 and len(shape) > 0:
        if any(d < 0 for d in shape):
            raise SurgeryError(f"--set {node.name}={_as_text(text)}: {what}, so one value cannot fill it",
                               f"give {len(shape)}-d values, or bind a scalar placeholder")
        return np.full(shape, value, dtype=value.dtype)
    if value.ndim != len(shape) or any(d >= 0 and d != v for d, v in zip(shape, value.shape)):
        raise SurgeryError(f"--set {node.name}={_as_text(text)}: {what}, and the value has shape {list(value.shape)}",
                           f"give a value of shape {shown}")
    return value


def _parse_one(text: str, dtype):
    if dtype == tf.bool:
        low = text.lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ValueError("use true or false")
    if dtype.is_integer:
        return int(text)
    if dtype.is_floating or dtype.is_complex:
        return float(text)
    if dtype == tf.string:
        return text.encode()
    raise ValueError(f"cannot bind a {dtype.name}")


def _example(name: str, dtype) -> str:
    sample = "false" if dtype == tf.bool else "0" if dtype.is_integer else "1.0" if dtype.is_floating else "text"
    return f"e.g. --set {name}={sample}"


def bind(model, sets):
    """`model` (a `model.Model`) with each placeholder in `sets` ({name: value}) made a constant
    and the branches that makes unreachable removed; `model` itself is not changed. Names may be
    given in any form `inspect` lists (`is_training`, `is_training:0`, a unique suffix)."""
    from ..core.model import reimport

    sets = parse_sets(sets)
    if not sets:
        return model
    values = {}
    for name, text in sets.items():
        op = resolve_op(model.graph, name)
        if split_tensor_name(name)[1] not in (None, 0) or op.type not in PLACEHOLDER_OPS:
            placeholders = [o.name for o in model.graph.get_operations() if o.type in PLACEHOLDER_OPS]
            dtype = op.outputs[0].dtype.name if op.outputs else "no output"
            raise SurgeryError(f"--set {name}: '{op.name}' is a {op.type} ({dtype}), not a placeholder",
                               "bind one of the placeholders: " + (", ".join(placeholders[:8]) or "(none)"))
        if op.name in values:
            raise SurgeryError(f"--set names '{op.name}' twice", "give each placeholder one value")
        values[op.name] = placeholder_value(op.node_def, text)
    graph_def = take_constant_switches(take_constant_branches(bind_placeholders(model.graph_def, values)))
    bound = reimport(model, graph_def)
    return dataclasses.replace(bound, bound_placeholders={**model.bound_placeholders, **values})


def bind_placeholders(graph_def, values: dict):
    """`graph_def` with each placeholder `{op name: numpy value}` replaced by a Const of that name."""
    out = g.empty_like(graph_def)
    for node in graph_def.node:
        if node.name not in values:
            out.node.add().CopyFrom(node)
            continue
        const = out.node.add(name=node.name, op="Const")
        const.attr["dtype"].CopyFrom(node.attr["dtype"])
        value = values[node.name]
        const.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value, dtype=tf.as_dtype(node.attr["dtype"].type),
                                                                 shape=value.shape))
    return out


def take_constant_switches(graph_def):
    """v1 `Switch`es on a constant predicate pass their data through on the taken side; nodes
    that need the untaken side (through data or control edges) are removed, and each `Merge` left
    with one live input forwards it. Names of surviving nodes are kept."""
    index = g.Index(graph_def)
    taken = {}  # Switch name -> the output index that lives (0: false, 1: true)
    for node in graph_def.node:
        if node.op in _SWITCH and len(node.input) >= 2:
            value = g.constant_value(index, node.input[1])
            if value is not None and value.size == 1:
                taken[node.name] = 1 if bool(value.ravel()[0]) else 0
    if not taken:
        return graph_def
    ordered = g.toposort(graph_def)
    dead_nodes, dead_tensors = set(), set()

    def is_dead(inp: str) -> bool:
        if inp.startswith("^"):
            return inp[1:] in dead_nodes
        return node_input_op(inp) in dead_nodes or g.tensor_name(inp) in dead_tensors

    for node in ordered.node:
        data = [i for i in node.input if not i.startswith("^")]
        control = [i for i in node.input if i.startswith("^")]
        if node.op in _MERGE:
            if all(is_dead(i) for i in data) or any(is_dead(i) for i in control):
                dead_nodes.add(node.name)
        elif any(is_dead(i) for i in node.input):
            dead_nodes.add(node.name)
        elif node.name in taken:
            dead_tensors.add(f"{node.name}:{1 - taken[node.name]}")

    mapping = {f"{s}:{i}": g.tensor_name(index[s].input[0]) for s, i in taken.items() if s not in dead_nodes}
    # a Merge left with one live input becomes an Identity of it, keeping its name (an output
    # may be named by it), unless its value_index output is read
    value_index_read = {node_input_op(i) for n in graph_def.node for i in n.input if i.endswith(":1")}
    out = g.empty_like(graph_def)
    switch_inputs = {s: node_input_op(index[s].input[0]) for s in taken}
    for node in graph_def.node:
        if node.name in dead_nodes:
            continue
        new = out.node.add()
        new.CopyFrom(node)
        inputs = []
        for inp in node.input:
            if inp.startswith("^"):
                source = switch_inputs.get(inp[1:], inp[1:])
                if source not in dead_nodes:
                    inputs.append("^" + source)
            elif node.op in _MERGE and is_dead(inp):
                continue
            else:
                inputs.append(mapping.get(g.tensor_name(inp), inp))
        data = [i for i in inputs if not i.startswith("^")]
        del new.input[:]
        new.input.extend(data + list(dict.fromkeys(i for i in inputs if i.startswith("^"))))  # no repeated ^edges
        if node.op in _MERGE:
            new.attr["N"].i = len(data)
            if len(data) == 1 and node.name not in value_index_read:
                new.op = "Identity"
                del new.attr["N"]
    used = {node_input_op(i) for n in out.node for i in n.input}
    return g.remove(out, [s for s in taken if s not in used and s not in dead_nodes])


__all__ = ["bind", "bind_placeholders", "format_sets", "parse_sets", "placeholder_value", "take_constant_switches"]
