"""One piece type: a graph with named inputs and outputs, ready to write or run."""

from __future__ import annotations

import numpy as np

from . import graph as g
from . import tfcompat
from .errors import SurgeryError
from .graph import empty_like

tf = tfcompat.tf


class FrozenGraph:
    """A frozen graph and the tensors to feed (`inputs`) and fetch (`outputs`), each
    `{name, dtype, shape}`, named as after `tf.import_graph_def(graph_def, name="")`.

    Built by `freeze_graph` as a skeleton whose variable constants are filled from
    `read_variable` only when written (`write_graph_def(frozen, path)`) or when
    `graph_def` is first read. `FrozenGraph(graph_def, inputs, outputs)` wraps a complete one.
    """

    def __init__(self, graph_def=None, inputs=None, outputs=None, *, skeleton=None, constants=None,
                 read_variable=None, cut=None):
        if (graph_def is None) == (skeleton is None):
            raise ValueError("give a complete graph_def or a skeleton, not both")
        self._graph_def = graph_def
        self._skeleton = skeleton if skeleton is not None else graph_def
        # Const stub name -> the variable name to read its value with, or the source Const node holding it
        self._constants = dict(constants or {})
        self._read_variable = read_variable
        self.inputs = list(inputs or [])
        self.outputs = list(outputs or [])
        # {tensor of the source graph: the placeholder tensor that replaced it} (see `graph.cut`)
        self.cut = dict(cut or {})
        # what freezing left out or skipped that the user should hear about (printed by the CLI)
        self.stripped_stateful, self.notes = [], []

    def __repr__(self) -> str:
        return (f"FrozenGraph({self.num_nodes} nodes, inputs={[t['name'] for t in self.inputs]}, "
                f"outputs={[t['name'] for t in self.outputs]})")

    @property
    def num_nodes(self) -> int:
        return len(self._skeleton.node)

    @property
    def skeleton(self):
        """The structure: the frozen GraphDef with variable constants still value-less (cheap to inspect)."""
        return self._skeleton

    @property
    def estimated_bytes(self) -> int:
        """Size of the serialised GraphDef, from the skeleton and the variables' declared shapes."""
        if self._graph_def is not None:
            return self._graph_def.ByteSize()
        by_name = {n.name: n for n in self._skeleton.node}
        return self._skeleton.ByteSize() + sum(
            (_stub_nbytes(by_name[c]) if isinstance(source, str) else source.ByteSize()) + 16
            for c, source in self._constants.items())

    @property
    def graph_def(self):
        """The complete frozen GraphDef (built once, on first use; prefer `write_graph_def(frozen, path)`)."""
        if self._graph_def is None:
            gd = empty_like(self._skeleton)
            gd.node.extend(self.nodes())
            self._graph_def = gd
        return self._graph_def

    def nodes(self):
        """Every NodeDef of the frozen graph in order, constants filled one at a time."""
        if self._graph_def is not None:
            yield from self._graph_def.node
            return
        for node in self._skeleton.node:
            if node.name not in self._constants:
                yield node
                continue
            if not isinstance(self._constants[node.name], str):
                yield _held_constant(self._constants[node.name])
                continue
            full = tf.compat.v1.NodeDef()
            full.CopyFrom(node)
            value = self._value(node)
            full.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value, dtype=_stub_dtype(node),
                                                                    shape=value.shape))
            yield full

    def _value(self, stub) -> np.ndarray:
        variable = self._constants[stub.name]
        value = np.asarray(self._read_variable(variable))
        check_shape(variable, stub, value.shape, "the checkpoint")
        return value

    def node_chunks(self):
        """The binary GraphDef as byte chunks: each `node` field, then `library` and `versions`."""
        source = self._skeleton if self._graph_def is None else self._graph_def
        for node in source.node:
            held = self._constants.get(node.name) if self._graph_def is None else None
            if isinstance(held, str):
                yield from g.const_node_chunks(node, self._value(node))
            else:
                yield g.node_field(_held_constant(held) if held is not None else node)
        yield from g.tail_fields(source)

    def variable_stubs(self):
        """(Const stub, variable name) for each constant still to be read from the checkpoint."""
        if self._graph_def is not None:
            return []
        by_name = {n.name: n for n in self._skeleton.node}
        return [(by_name[c], v) for c, v in self._constants.items() if isinstance(v, str)]


def _held_constant(node):
    """A Const of the source graph as the frozen graph holds it: device and colocation cleared."""
    if node.device or "_class" in node.attr:
        clean = tf.compat.v1.NodeDef()
        clean.CopyFrom(node)
        clean.device = ""
        if "_class" in clean.attr:
            del clean.attr["_class"]
        return clean
    return node


def check_shape(variable: str, stub, found, where: str) -> None:
    """The value found for `variable` must have the shape its stub declares (-1: any)."""
    declared = [d.size for d in stub.attr["value"].tensor.tensor_shape.dim]
    if len(declared) != len(found) or any(d not in (-1, f) for d, f in zip(declared, found)):
        raise SurgeryError(f"variable '{variable}' has shape {list(found)} in {where} but {declared} in the graph",
                           "restore it from a matching checkpoint with `surgery restore`")


def _stub_dtype(node):
    return tf.as_dtype(node.attr["dtype"].type)


def _stub_nbytes(node) -> int:
    dims = [max(d.size, 0) for d in node.attr["value"].tensor.tensor_shape.dim]
    return int(np.prod(dims, dtype=np.int64)) * _stub_dtype(node).size
