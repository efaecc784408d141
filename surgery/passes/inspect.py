"""`surgery inspect`: what a model is, what goes in, what comes out, and what it weighs."""

from __future__ import annotations

import collections
import re

import numpy as np

from ..core import tfcompat
from ..core.errors import SurgeryError
from ..core.graph import Index, ancestors, descendants, likely_output_nodes, shape_str
from ..core.names import is_machinery
from ..core.pieces import TensorSpec

tf = tfcompat.tf


def likely_inputs(model) -> list:
    """Placeholders the model's answers depend on (signature inputs for a SavedModel)."""
    sig = _signature(model)
    if sig is not None:
        return [_resolve_sig(model, t) for t in sig.inputs.values()]
    out = []
    answers = likely_output_nodes(model.graph_def)
    needed = ancestors(model.graph_def, answers) if answers else None  # labels feed only the loss
    for op in model.graph.get_operations():
        if needed is not None and op.name not in needed:
            continue
        if op.type in ("Placeholder", "PlaceholderWithDefault") and not is_machinery(op.name, op.type):
            if op.type == "PlaceholderWithDefault" and _feeds_only_savers(op, model.graph_def):
                continue  # a Saver's filename (`restore_pretrained/filename`, `epoch_saver/Const`)
            if any(not is_machinery(c.name, c.type) for c in op.outputs[0].consumers()) or op.type == "Placeholder":
                out.append(TensorSpec.of(op.outputs[0]))
    return out


SAVER_OP_TYPES = {"SaveV2", "Save", "SaveSlices", "RestoreV2", "Restore", "RestoreSlice", "MergeV2Checkpoints"}


def _feeds_only_savers(op, graph_def) -> bool:
    """True when everything downstream of `op` ends in Save/Restore ops: a Saver's filename input,
    whatever its scope is called."""
    index = Index(graph_def)
    types = {n.name: n.op for n in graph_def.node}
    below = descendants(index, [op.name], where=lambda n: types.get(n) not in SAVER_OP_TYPES)
    reaches_saver = any(c.op in SAVER_OP_TYPES for n in below for c, _ in index.consumers(n))
    ends_elsewhere = any(not index.consumers(n) and types.get(n) not in ("Identity", "NoOp") for n in below)
    return reaches_saver and not ends_elsewhere


def likely_outputs(model) -> list:
    """The signature's outputs, or every output of the nodes `graph.likely_output_nodes` finds
    (nothing but training, saver, summary or initializer machinery consumes them)."""
    sig = _signature(model)
    if sig is not None:
        return [_resolve_sig(model, t) for t in sig.outputs.values()]
    return [TensorSpec.of(t) for name in likely_output_nodes(model.graph_def)
            for t in model.graph.get_operation_by_name(name).outputs]


def _signature(model):
    sigs = model.signature_defs
    if not sigs:
        return None
    return sigs.get("serving_default") or sigs[sorted(sigs)[0]]


def _resolve_sig(model, tensor_info_proto) -> TensorSpec:
    try:
        return TensorSpec.of(model.graph.get_tensor_by_name(tensor_info_proto.name))
    except (KeyError, ValueError):
        dims = None if tensor_info_proto.tensor_shape.unknown_rank else [
            None if d.size < 0 else d.size for d in tensor_info_proto.tensor_shape.dim]
        return TensorSpec(tensor_info_proto.name, tf.as_dtype(tensor_info_proto.dtype).name, dims)


_PREDICATE_SLOTS = {"Switch": 1, "RefSwitch": 1, "If": 0, "StatelessIf": 0, "Case": 0, "StatelessCase": 0}
_PASS_THROUGH = ("Identity", "LogicalNot", "Cast")
_DROPOUT = re.compile(r"(^|/)dropout(_\d+)?(/|$)", re.IGNORECASE)


def training_switches(model) -> list:
    """Placeholders that switch a TF1 graph between training and inference: a scalar bool that
    decides conditionals (`is_training` feeding every `tf.cond` of batch norm and dropout), and a
    scalar float that feeds dropout (`keep_prob`). Each with the `--set` that binds it for
    inference: `[{name, dtype, role, set}]`."""
    index = Index(model.graph_def)
    found = []
    for node in model.graph_def.node:
        if node.op not in ("Placeholder", "PlaceholderWithDefault") or is_machinery(node.name, node.op):
            continue
        dtype = tf.as_dtype(node.attr["dtype"].type)
        shape = node.attr["shape"].shape
        if not shape.unknown_rank and len(shape.dim) > 0:
            continue
        if dtype == tf.bool and _decides_conditionals(index, node.name):
            found.append({"name": node.name, "dtype": "bool", "role": "decides tf.cond branches (batch norm, dropout)",
                          "set": f"--set {node.name}=false"})
        elif dtype.is_floating and _feeds_dropout(index, node.name):
            value = "1.0" if "keep" in node.name.lower() else "0.0"
            found.append({"name": node.name, "dtype": dtype.name, "role": "feeds dropout",
                          "set": f"--set {node.name}={value}"})
    return found


def _decides_conditionals(index, name: str) -> bool:
    """True when `name`'s value (through Identity/LogicalNot/Cast) is a Switch's predicate or an
    If/Case's condition."""
    stack, seen = [name], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        for consumer, slot in index.consumers(current):
            if _PREDICATE_SLOTS.get(consumer.op) == slot:
                return True
            if consumer.op in _PASS_THROUGH:
                stack.append(consumer.name)
    return False


def _feeds_dropout(index, name: str, depth: int = 3) -> bool:
    """True when an op within `depth` steps below `name` sits in a `dropout` scope."""
    frontier = [name]
    for _ in range(depth):
        frontier = [c.name for n in frontier for c, _ in index.consumers(n)]
        if any(_DROPOUT.search(n) for n in frontier):
            return True
    return False


def count_params_split(model):
    """(trainable, non-trainable) element counts of the model's variables as Keras counts them
    (`count_params()`: those the serving graph never reads included), optimizer slots,
    `global_step` and other training bookkeeping excluded; None when it has none (then its
    weights are its constants, `_count_constants`). Trainable: a TF2/Keras variable's own flag, or
    a TF1 graph's TRAINABLE_VARIABLES."""
    if model.declared_variables:
        sizes = [(int(np.prod([d or 0 for d in shape])) if shape else 1, trainable)
                 for _, _, shape, trainable in model.declared_variables]
        return sum(n for n, t in sizes if t), sum(n for n, t in sizes if not t)
    variables = [v for v in model.variables() if not is_machinery(v.name, v.op_type)]
    if not variables:
        return None
    trainable = model.trainable_names()
    if trainable is None:  # no collection: every variable counts as trainable
        return sum(v.num_elements for v in variables), 0
    return (sum(v.num_elements for v in variables if v.name in trainable),
            sum(v.num_elements for v in variables if v.name not in trainable))


def _count_constants(model) -> int:
    """A graph without variables (a frozen graph, or a SavedModel exported from one): its weights
    are its float constants of rank ≥ 1, counted alike in either form."""
    total = 0
    for node in model.graph_def.node:
        if node.op == "Const" and node.attr["dtype"].type in (tf.float32.as_datatype_enum, tf.float16.as_datatype_enum,
                                                              tf.float64.as_datatype_enum, tf.bfloat16.as_datatype_enum):
            dims = [d.size for d in node.attr["value"].tensor.tensor_shape.dim]
            if dims:
                n = 1
                for d in dims:
                    n *= d
                total += n
    return total


def inspect_model(model, *, tensors: str | None = None) -> dict:
    """What `surgery inspect` reports about a loaded model, as a dict.

    Args:
        model: a loaded `Model`.
        tensors: a regex; every tensor whose name matches is listed with dtype and shape.

    Returns:
        `{format, num_nodes, ops, inputs, outputs, variables, num_params[, tensors]}`: the op
        histogram, the likely inputs and outputs, every variable (non-trainable ones counted).

    Examples:
        >>> report = surgery.inspect_model(surgery.load_model("data/models/vgg"), tensors="^fc7")
        >>> report["num_params"]
    """
    ops = collections.Counter(node.op for node in model.graph_def.node)
    split = count_params_split(model)  # (trainable, non-trainable), read once
    report = {
        "path": model.path,
        "format": model.format,
        "num_nodes": len(model.graph_def.node),
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "inputs": [t.as_dict() for t in likely_inputs(model)],
        "outputs": [t.as_dict() for t in likely_outputs(model)],
        "variables": [{"name": v.name, "dtype": v.dtype, "shape": list(v.shape), "bytes": v.nbytes,
                       "training_only": is_machinery(v.name, v.op_type)} for v in model.variables()],
        "num_params": sum(split) if split is not None else _count_constants(model),
        "num_params_trainable": split[0] if split is not None else None,
        "num_params_non_trainable": split[1] if split is not None else None,
        # a Keras file's weights are the file (its values are read from a temporary export)
        "checkpoint": model.path if model.format.startswith("keras") else model.checkpoint,
        "training_switches": training_switches(model),
    }
    if model.graph_def.library.function:
        report["num_functions"] = len(model.graph_def.library.function)
    if tensors is not None:
        try:
            pattern = re.compile(tensors)
        except re.error as e:
            raise SurgeryError(f"--tensors '{tensors}' is not a valid regular expression: {e}",
                               "escape special characters, e.g. 'fc7' or 'conv1/.*'") from e
        report["tensors"] = [TensorSpec.of(t).as_dict() for op in model.graph.get_operations() for t in op.outputs
                             if pattern.search(t.name)]
    return report


def human_bytes(n: int) -> str:
    """Bytes in the unit they fit: 812 B, 3.4 KiB, 527.8 MiB, 2.1 GiB (never "0.0 MiB")."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _table(rows, indent="  ") -> list[str]:
    if not rows:
        return [indent + "(none)"]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def format_report(report: dict, *, description: str = "", max_rows: int = 40) -> str:
    """A readable report for people: summary, inputs, outputs, variables, op histogram."""
    weights = [v for v in report["variables"] if not v.get("training_only")]
    training = [v for v in report["variables"] if v.get("training_only")]
    var_bytes = sum(v["bytes"] for v in weights)
    lines = [f"Model  {report['path']}",
             f"  format      {report['format']}" + (f"  ({description})" if description else "")]
    if report.get("checkpoint"):
        lines.append(f"  weights     {report['checkpoint']}")
    lines.append(f"  nodes       {report['num_nodes']:,}  ({len(report['ops'])} op types"
                 + (f", {report['num_functions']} functions" if report.get("num_functions") else "") + ")")
    if report["variables"]:
        lines.append(f"  parameters  {report['num_params']:,} in {len(weights)} variables ({human_bytes(var_bytes)})"
                     + (f", plus {len(training)} optimizer/bookkeeping variables" if training else ""))
        if report.get("num_params_non_trainable"):
            lines.append(f"              {report['num_params_trainable']:,} trainable, "
                         f"{report['num_params_non_trainable']:,} non-trainable (statistics)")
    else:
        lines.append(f"  parameters  {report['num_params']:,} (weight constants)")

    def tensor_rows(ts):
        return [(t["name"], t["dtype"], shape_str(t["shape"])) for t in ts]

    lines += ["", "Inputs"] + _table(tensor_rows(report["inputs"]))
    lines += ["", "Outputs"] + _table(tensor_rows(report["outputs"]))
    if report.get("training_switches"):
        lines += ["", "Training switches (bind them for inference: freeze, split, precompute, finetune, export)"]
        lines += _table([(s["name"], s["dtype"], s["role"], s["set"]) for s in report["training_switches"]])
    if weights:
        rows = [(v["name"], v["dtype"], shape_str(v["shape"]), human_bytes(v["bytes"])) for v in weights[:max_rows]]
        lines += ["", f"Variables ({len(weights)})"] + _table(rows)
        if len(weights) > max_rows:
            lines.append(f"  … {len(weights) - max_rows} more (use --json for all)")
    if training:
        names = ", ".join(v["name"] for v in training[:4])
        lines.append(f"  + {len(training)} optimizer/bookkeeping: {names}" + (" …" if len(training) > 4 else ""))
    ops = list(report["ops"].items())
    top = ops[:12]
    if top:
        peak = top[0][1]
        width = max(len(k) for k, _ in top)
        lines += ["", "Ops (most common)"]
        for name, count in top:
            bar = "█" * max(1, round(24 * count / peak))
            lines.append(f"  {name.ljust(width)}  {str(count).rjust(5)}  {bar}")
        if len(ops) > len(top):
            lines.append(f"  … {len(ops) - len(top)} more op types: " + ", ".join(k for k, _ in ops[len(top):][:10])
                         + (" …" if len(ops) - len(top) > 10 else ""))
    if "tensors" in report:
        lines += ["", f"Tensors matching ({len(report['tensors'])})"] + _table(tensor_rows(report["tensors"][:200]))
        if len(report["tensors"]) > 200:
            lines.append(f"  … {len(report['tensors']) - 200} more (use --json for all)")
    return "\n".join(lines)


def write_tensorboard(model, logdir: str) -> str:
    """Write `model.graph` as a TensorBoard event file in `logdir` (the Graphs tab shows every
    node name, as the TensorFlow docs suggest for finding them). The event file is written in a
    temporary directory beside it and moved in whole; returns its path."""
    import os
    import shutil
    import tempfile

    from ..core.errors import OutputError

    try:
        os.makedirs(logdir, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".graph.", dir=logdir)
    except OSError as e:
        raise OutputError(f"cannot write to {logdir}: {e.strerror}", "choose a writable --tensorboard LOGDIR") from e
    try:
        with model.graph.as_default():
            writer = tf.compat.v1.summary.FileWriter(tmp, graph=model.graph)
            writer.close()
        (event,) = os.listdir(tmp)
        target = os.path.join(logdir, event)
        os.replace(os.path.join(tmp, event), target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
