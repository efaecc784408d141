"""`surgery cuts`: every place a graph can be split, and what each side costs.

A tensor is a cut when every path from the inputs to the outputs passes through it: in graph
terms it *dominates* the outputs. The graph is read as ops and tensors (a tensor is a node between
its op and the ops that read it, so a cut is one tensor, never an op with several outputs), a
source feeds the inputs and a sink reads the outputs, and the sink's dominators are found in one
pass in topological order (Cooper, Harvey and Kennedy's iterative algorithm, which converges in
one pass on a DAG). On a ResNet these are the block boundaries: a tensor inside a residual unit
has the skip connection beside it. TensorFlow has no dominator pass to reuse (Grappler's
dependency optimizer works per node), so it is written here, in about forty lines.

With several inputs, each input's branch is also examined alone: the tensors that every path from
that input passes through, and that no other input reaches, cut off that branch (a two-tower
model's item tower). Splitting there leaves the other inputs live in the online piece.

Costs are per row (batch 1):
- FLOPs as TensorFlow's profiler counts them: the `flops` statistic each op type registers
  (`ops.get_stats_for_node_def`, through `tfcompat.op_flops`), summed; what
  `tf.compat.v1.profiler.profile(..., float_operation())` reports for the same graph.
- Parameters: the elements of the weight constants (float, rank ≥ 1) each side reads; a constant
  both sides read counts on the offline side, so the two sides add up to the total.
- Bytes a row of the cut takes as float32, float16 and int8.

The offline side is what the cut tensors depend on; the online side is everything else the outputs
need. A cut is on the Pareto front when no other cut has both fewer bytes per row and fewer
online FLOPs. The trivial cuts (everything online: cut at the inputs; everything offline: cut at
the outputs) are listed beside the others, as the split-computing literature asks.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..core import graph as g
from ..core import tfcompat
from ..core.errors import SurgeryError
from ..core.names import node_input_op, split_tensor_name
from ..core.pieces import TensorSpec

tf = tfcompat.tf

DTYPE_BYTES = {"float32": 4, "float16": 2, "int8": 1}
_COMPARE_BATCHES = 8  # --measure --data compares compressed cuts on up to this many batches of rows
_FLOAT_TYPES = {tf.float32.as_datatype_enum, tf.float16.as_datatype_enum, tf.float64.as_datatype_enum,
                tf.bfloat16.as_datatype_enum}


@dataclasses.dataclass
class Cut:
    """One place to split: the tensor(s) to pass as `split --cut`, and what each side costs per row."""

    tensor: str  # a tensor name, or several joined by "," (a trivial cut at several inputs)
    layer: str | None  # the Keras layer whose output it is, where there is one
    dtype: str
    shape: list | None
    bytes_per_row: dict  # {"float32", "float16", "int8"}: bytes of one row of the cut
    offline: dict  # {"flops", "params"}
    online: dict
    pareto: bool = False
    kind: str = "cut"  # "cut", "branch" (cuts one input's branch off), "all online", "all offline"
    measured: dict | None = None  # with --measure: see `measure_cut`

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- where: dominators

def _dominators(order: list, preds: dict, source: str) -> dict:
    """{node: immediate dominator} for a DAG given in topological order from `source`."""
    idom, depth = {source: source}, {source: 0}
    for v in order:
        if v == source:
            continue
        ps = [p for p in preds.get(v, ()) if p in idom]
        if not ps:
            continue
        d = ps[0]
        for p in ps[1:]:
            a, b = d, p
            while a != b:
                if depth[a] >= depth[b]:
                    a = idom[a]
                else:
                    b = idom[b]
            d = a
        idom[v], depth[v] = d, depth[d] + 1
    return idom


def _tensor_graph(graph_def, sources: list, outputs: list) -> tuple[list, dict]:
    """(nodes in topological order, {node: predecessors}) of the op/tensor graph the `outputs`
    need, with a source node `^` feeding the `sources` (tensor names) and a sink node `$` reading
    the outputs. Data edges only: a frozen graph's remaining control edges order side effects,
    they carry no rows."""
    index = g.Index(graph_def)
    preds: dict = {"$": [g.tensor_name(o) for o in outputs]}
    for t in sources:
        preds[g.tensor_name(t)] = ["^"]
    for name in g.ancestors(graph_def, outputs):
        data = [i for i in index[name].input if not i.startswith("^")]
        preds[name] = [g.tensor_name(i) for i in data]
        for i in data:
            preds.setdefault(g.tensor_name(i), [node_input_op(i)])
    for o in outputs:
        preds.setdefault(g.tensor_name(o), [node_input_op(o)])
    order, done, stack = [], set(), [("$", False)]
    while stack:  # depth-first from the sink over predecessors: post-order is a topological order
        v, expanded = stack.pop()
        if expanded:
            order.append(v)
        elif v not in done:
            done.add(v)
            stack.append((v, True))
            stack.extend((p, False) for p in preds.get(v, ()) if p not in done)
    return order, preds


def separating_tensors(graph_def, inputs: list, outputs: list) -> list[str]:
    """Tensors every path from `inputs` to `outputs` passes through, in graph order, excluding the
    inputs and the outputs themselves."""
    order, preds = _tensor_graph(graph_def, inputs, outputs)
    idom = _dominators(order, preds, "^")
    if "$" not in idom:
        raise SurgeryError("the outputs do not depend on the inputs", "name inputs the outputs are computed from")
    chain, v = [], idom["$"]
    ends = {g.tensor_name(t) for t in list(inputs) + list(outputs)}
    while v != "^":
        if ":" in v and v not in ends:
            chain.append(v)
        v = idom[v]
    return chain[::-1]


# ---------------------------------------------------------------- what it costs

def _flops(graph) -> dict:
    """{op name: FLOPs, or None where the op's shapes are not all known} of every op of `graph`."""
    return {op.name: tfcompat.op_flops(graph, op.node_def) for op in graph.get_operations()}


def _params(graph_def) -> dict:
    """{Const name: elements} of the weight constants: float, rank ≥ 1."""
    out = {}
    for node in graph_def.node:
        if node.op == "Const" and node.attr["dtype"].type in _FLOAT_TYPES:
            dims = [d.size for d in node.attr["value"].tensor.tensor_shape.dim]
            if dims:
                out[node.name] = int(np.prod(dims, dtype=np.int64))
    return out


def _batch_of_one(skeleton, inputs: list):
    """The graph imported with each input's batch dimension set to 1, so every shape is known.
    A `PlaceholderWithDefault` (a fine-tuned head's bottleneck) passes its default's shape on, as
    it does when not fed: its declared `[?, n]` would leave the head's shapes open."""
    gd = tf.compat.v1.GraphDef()
    gd.CopyFrom(skeleton)
    names = {t.op: t for t in inputs}
    for node in gd.node:
        spec = names.get(node.name)
        if spec is not None and node.op == "Placeholder" and spec.shape and spec.shape[0] is None:
            node.attr["shape"].shape.CopyFrom(tf.TensorShape([1, *spec.shape[1:]]).as_proto())
        elif node.op == "PlaceholderWithDefault" and node.name not in names:
            node.op = "Identity"
            node.attr["T"].type = node.attr["dtype"].type
            del node.attr["dtype"], node.attr["shape"]
    return g.graph_from_def(gd)


class _Costs:
    """FLOPs and parameters of the ops the outputs need, and of the part below any set of tensors."""

    def __init__(self, skeleton, inputs: list, outputs: list):
        self.graph_def = skeleton
        self.needed = g.ancestors(skeleton, [g.tensor_name(o) for o in outputs])
        self.graph = _batch_of_one(skeleton, inputs)
        flops = {k: v for k, v in _flops(self.graph).items() if k in self.needed}
        self.unknown = sorted(k for k, v in flops.items() if v is None)  # shapes batch 1 does not fix
        self.flops = {k: v or 0 for k, v in flops.items()}
        self.params = {k: v for k, v in _params(skeleton).items() if k in self.needed}
        self.total = {"flops": sum(self.flops.values()), "params": sum(self.params.values())}

    def below(self, tensors: list) -> dict:
        """{"flops", "params"} of what `tensors` are computed from (the offline side)."""
        side = g.ancestors(self.graph_def, [g.tensor_name(t) for t in tensors])
        return {"flops": sum(v for k, v in self.flops.items() if k in side),
                "params": sum(v for k, v in self.params.items() if k in side)}

    def spec(self, tensor: str) -> TensorSpec:
        return TensorSpec.of(self.graph.get_tensor_by_name(tensor))


def _cut(costs: _Costs, tensors: list, kind: str, layers: dict) -> Cut:
    specs = [costs.spec(t) for t in tensors]
    elements = sum(int(np.prod([d or 1 for d in s.shape[1:]], dtype=np.int64)) if s.shape else 0 for s in specs)
    offline = costs.below(tensors) if kind != "all online" else {"flops": 0, "params": 0}
    online = {k: costs.total[k] - offline[k] for k in ("flops", "params")}
    first = specs[0]
    shape = None if first.shape is None else [None, *first.shape[1:]]
    return Cut(tensor=",".join(tensors), layer=layers.get(tensors[0]) if len(tensors) == 1 else None,
               dtype=first.dtype, shape=shape, bytes_per_row={k: elements * b for k, b in DTYPE_BYTES.items()},
               offline=offline, online=online, kind=kind)


def _mark_pareto(cuts: list) -> None:
    """Pareto-optimal on (float32 bytes per row, online FLOPs): nothing is better on both."""
    for c in cuts:
        c.pareto = not any(
            o is not c and o.bytes_per_row["float32"] <= c.bytes_per_row["float32"]
            and o.online["flops"] <= c.online["flops"]
            and (o.bytes_per_row["float32"], o.online["flops"]) != (c.bytes_per_row["float32"], c.online["flops"])
            for o in cuts)


def find_cuts(piece, *, layers: dict | None = None) -> dict:
    """Every cut of a frozen `Piece` (its skeleton suffices: no weight is read), with costs.

    Returns `{"total": {"flops", "params"}, "cuts": [Cut, ...]}`, the cuts in graph order between
    the trivial "all online" (at the inputs) and "all offline" (at the outputs) rows. `layers`:
    {tensor name: Keras layer name}, shown beside the tensors it names."""
    layers = layers or {}
    skeleton = piece.skeleton
    inputs = [t for t in piece.inputs if t.shape is None or len(t.shape) > 0]  # scalars are settings
    outputs = [t.name for t in piece.outputs]
    if not inputs:
        raise SurgeryError("the graph has no inputs to cut from", "name them with --inputs")
    costs = _Costs(skeleton, piece.inputs, outputs)
    in_names = [t.name for t in inputs]
    cuts = [_cut(costs, in_names, "all online", layers)]
    cuts += [_cut(costs, [t], "cut", layers) for t in separating_tensors(skeleton, in_names, outputs)]
    if len(inputs) > 1:
        for spec in inputs:
            others = g.descendants(g.Index(skeleton), [t.op for t in inputs if t is not spec])
            for t in separating_tensors(skeleton, [spec.name], outputs):
                op, _ = split_tensor_name(t)
                if op not in others and not any(c.tensor == t for c in cuts):
                    cuts.append(_cut(costs, [t], "branch", layers))
    cuts.append(_cut(costs, outputs, "all offline", layers))
    _mark_pareto(cuts)
    result = {"total": costs.total, "cuts": cuts}
    if costs.unknown:
        result["flops_unknown"] = costs.unknown
    return result


def cuts(model, outputs, *, inputs=None, set=None, measure: bool = False, data=None, batch_size: int = 32,
         repeats: int = 5, progress=None) -> dict:
    """Every place `model` can be split between its inputs and `outputs`, and what each costs.

    No weight is read: the frozen structure is enough (a `.meta` alone will do).

    Args:
        model: a path, an `open_pieces` result, a `Model` or a `keras.Model`.
        outputs: the tensors the online side answers with.
        inputs: the inputs (default: the graph's placeholders).
        set: `{placeholder: value}` or `["T=V"]` bound first (`--set is_training=false`).
        measure: also split at the Pareto cuts and where the rows shrink, and time both sides.
        data: with `measure`, `FILE.h5[:KEY]`/`FILE.npy` rows of the inputs (else random rows);
            then the float16/int8 price of each measured cut is reported too.
        batch_size: rows per timed run.
        repeats: timed runs per side (their median is reported).
        progress: wraps the loop over the measured cuts (a progress bar), if given.

    Returns:
        `{"total": {"flops", "params"}, "cuts": [Cut, ...]}`, the cuts in graph order between the
        trivial "all online" and "all offline" ones; `Cut.measured` set where measured.

    Raises:
        SurgeryError: the outputs do not depend on the inputs, or a name matches nothing.

    Examples:
        >>> report = surgery.cuts("data/models/vgg", "predictions")
        >>> [c.tensor for c in report["cuts"] if c.pareto]
    """
    from ..core.model import Model
    from ..core.names import parse_list
    from ..core.pieces import open_pieces
    from .bind import bind
    from .freeze import freeze_model

    if isinstance(model, Model):  # not by duck type: a `Piece` has `graph_def` and `format` too
        loaded = model
    else:
        opened = open_pieces(model)
        loaded = opened.model() if not opened.is_split else None
        if loaded is None:
            raise SurgeryError(f"{opened.path} is a directory of pieces", "pass the MODEL the pieces came from, "
                               "or one piece's .pb")
    loaded = bind(loaded, set)
    piece = freeze_model(loaded, parse_list(outputs), inputs=parse_list(inputs) if inputs else (), structure_only=True)
    report = find_cuts(piece, layers=_keras_layers(loaded, piece))
    if measure:
        chosen = measured_cuts(report["cuts"])
        for c in (progress or iter)(chosen):
            c.measured = measure_cut(loaded, c.tensor, [t.name for t in piece.outputs], inputs=inputs, data=data,
                                     batch_size=batch_size, repeats=repeats)
    return report


# ---------------------------------------------------------------- measured: time and compression

def measured_cuts(cuts: list) -> list:
    """The cuts `--measure` times: the Pareto cuts, and each cut narrower than every cut before it
    in graph order (where the rows shrink: a pooling, a bottleneck). A classifier's own output is
    the narrowest tensor and costs nothing online, so on the Pareto front alone it hides the
    inner cuts; the trivial cuts are not split."""
    chosen, narrowest = [], None
    for c in cuts:
        size = c.bytes_per_row["float32"]
        if c.kind in ("cut", "branch") and (c.pareto or (narrowest is not None and size < narrowest)):
            chosen.append(c)
        if c.kind != "branch":
            narrowest = size if narrowest is None else min(narrowest, size)
    return chosen


def _timed(sess, fetches, feeds, repeats: int) -> tuple[list, float]:
    """(values, median seconds) of `repeats` runs after one warm-up, through a callable (the
    least per-call overhead TensorFlow offers)."""
    import statistics
    import time

    names = list(feeds)
    call = sess.make_callable(fetches, feed_list=names)
    values = call(*[feeds[n] for n in names])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(*[feeds[n] for n in names])
        times.append(time.perf_counter() - start)
    return values, statistics.median(times)


def measure_cut(model, cut: str, outputs: list, *, inputs=None, data=None, batch_size: int = 32,
                repeats: int = 5) -> dict:
    """Split `model` at `cut` (frozen pieces, in memory) and time each side on one batch:
    `{"batch_size", "offline_ms", "online_ms"}` (median ms per row), and on `data` what crossing
    compressed costs: `{"float16": {"max_abs_diff", "agreement"}, "int8": {...}}`, the online
    outputs from the cut rounded through each dtype (int8 scales from these rows) against the
    float ones; agreement is top-1 for classifier outputs (rank 2), else None."""
    from ..core.pieces import Piece
    from ..data.calibration import representative_rows
    from .compress import agreement, difference, int8_ranges, roundtrip
    from .split import import_piece, random_feeds, split_model

    split = split_model(model, cut.split(","), outputs, inputs=inputs, format="frozen", cut_dtype="float32")
    fed = list(split.offline_inputs) + list(split.live_inputs)
    if data:
        rows, _ = representative_rows(Piece(None, fed, name="data"), data, verify=0)
        feeds = {s.name: r[:_COMPARE_BATCHES * batch_size] for s, r in zip(fed, rows)}
    else:
        feeds = random_feeds(fed, batch_size, np.random.default_rng(0), split.offline.graph_def)
    batch = {k: v[:batch_size] if np.ndim(v) else v for k, v in feeds.items()}
    n = max(len(v) for v in batch.values() if np.ndim(v))
    cut_tensors, output_names = [c["tensor"] for c in split.cut], [o.name for o in split.online.outputs]
    placeholders = [c["placeholder"] for c in split.cut]

    def offline_feeds(f):
        return {s.name: f[s.name] for s in split.offline_inputs}

    def online_feeds(f, cut_values):
        return dict({s.name: f[s.name] for s in split.live_inputs}, **dict(zip(placeholders, cut_values)))

    with tf.compat.v1.Session(graph=import_piece(split.offline.graph_def)) as off, \
            tf.compat.v1.Session(graph=import_piece(split.online.graph_def)) as on:
        sent, t_off = _timed(off, cut_tensors, offline_feeds(batch), repeats)
        _, t_on = _timed(on, output_names, online_feeds(batch, sent), repeats)
        result = {"batch_size": n, "offline_ms": 1000 * t_off / n, "online_ms": 1000 * t_on / n}
        sent = off.run(cut_tensors, offline_feeds(feeds))
        if data and all(np.asarray(v).dtype == np.float32 for v in sent):  # only float cuts compress
            answers = on.run(output_names, online_feeds(feeds, sent))
            result["rows_compared"] = len(sent[0])
            for dtype in ("float16", "int8"):
                crossed = [roundtrip(v, dtype, *(int8_ranges(v) if dtype == "int8" else (None, None)))
                           for v in sent]
                got = on.run(output_names, online_feeds(feeds, crossed))
                result[dtype] = {"max_abs_diff": difference(got, answers)[0], "agreement": agreement(got, answers)}
    return result


def _keras_layers(model, piece) -> dict:
    """{tensor: Keras layer name} for a Keras model: each layer's output is an op named after it."""
    if not model.format.startswith("keras"):
        return {}
    return {f"{n.name}:0": n.name for n in piece.skeleton.node if "/" not in n.name and n.op != "Const"}


__all__ = ["Cut", "cuts", "find_cuts", "measure_cut", "measured_cuts", "separating_tensors"]
