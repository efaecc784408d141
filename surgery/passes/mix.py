"""Mix two models in one graph: each under its own name scope, an output of the first wired
into an input of the second with `input_map`, each restoring its weights from its own checkpoint.

Namespaces need care: two networks often share variable names (`net/conv1/weights`), so each model is
imported under a scope and its variables are matched back to its own checkpoint's keys with the
scope stripped. Frozen graphs mix the same way (their weights are constants), which also
composes a split's offline and online pieces back into one graph.

    mixed = mix_models("detector/model.ckpt", "classifier/model.ckpt",
                       connect={"features": "fc7"}, scopes=("detector", "classifier"))
    with tf.compat.v1.Session(graph=mixed.graph) as sess:
        mixed.restore(sess)
        sess.run(mixed.tensor("classifier/probs"), {mixed.tensor("detector/images"): x})
"""

from __future__ import annotations

import dataclasses
import re

from ..core import tfcompat
from ..core.errors import RestoreError, SurgeryError
from ..core.graph import graph_from_def
from ..core.model import Model, load_model
from ..core.names import VARIABLE_OP_TYPES, is_machinery, resolve_tensor, resolve_tensors
from ..core.pieces import Piece
from ..core.weights import restore_checkpoint
from .freeze import freeze_graph

tf = tfcompat.tf
v1 = tf.compat.v1


def as_model(source) -> Model:
    """A `Model` from a path (any MODEL form), a `Piece`, a GraphDef or a `Model`."""
    if isinstance(source, Model):
        return source
    if isinstance(source, Piece):
        source = source.graph_def
    if isinstance(source, v1.GraphDef):
        return Model(path="<frozen graph>", format="frozen_pb", graph=graph_from_def(source),
                     graph_def=source)
    return load_model(source)


@dataclasses.dataclass
class MixedGraph:
    """Two (or more) models in one graph, each under `scope/`; `models` maps scope → Model."""

    graph: object
    models: dict

    def tensor(self, name: str):
        """Resolve `scope/name` (any form `resolve_tensor` takes) in the mixed graph."""
        return resolve_tensor(self.graph, name)

    def _scope_of(self, op_name: str) -> str | None:
        return next((s for s in self.models if op_name.startswith(s + "/")), None)

    def variables(self, scope: str) -> list:
        """The variables imported under `scope/`."""
        return self.graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES, scope=re.escape(scope) + "/")

    def restore(self, sess) -> dict:
        """Initialise every variable, then fill each model's variables from its own checkpoint.

        Optimizer slots and other bookkeeping missing from a checkpoint keep their initial
        values; a model variable missing is a `RestoreError`. Returns {scope: restored count}."""
        with self.graph.as_default():
            sess.run(v1.variables_initializer(v1.global_variables()))
            counts = {}
            for scope, model in self.models.items():
                variables = self.variables(scope)
                if not variables:
                    counts[scope] = 0
                    continue
                source = model.weights()
                keys = model.checkpoint_keys()
                var_list = {}
                for var in variables:
                    name = var.op.name[len(scope) + 1:]
                    key = keys.get(name, name)
                    if source.has(key):
                        var_list[key] = var
                    elif not is_machinery(name, var.op.type):
                        raise RestoreError(f"variable '{name}' of {model.path} has no value in {model.checkpoint}",
                                           "restore it first with `surgery restore`, or mix a frozen graph")
                restore_checkpoint(v1.train.Saver(var_list=var_list), sess, model.checkpoint)
                counts[scope] = len(var_list)
        return counts

    def freeze(self, outputs, *, inputs=()) -> Piece:
        """One frozen graph of the mix: each variable's value read from its own model's checkpoint."""

        def read(name):
            scope = self._scope_of(name)
            if scope is None:
                raise SurgeryError(f"variable '{name}' belongs to no mixed model", "create variables under a scope")
            return self.models[scope].read_variable(name[len(scope) + 1:])

        return freeze_graph(self.graph, outputs, inputs=inputs, read_variable=read)


def _scope_shared_names(graph_def, scope: str) -> None:
    """Prefix each variable's `shared_name` with `scope/` (in place).

    The name scope of an import renames nodes but not `shared_name`, and a session keys resource
    variables by it: without this, two models that both hold `net/fc1/weights` would read and
    write one variable."""
    for node in graph_def.node:
        if node.op in VARIABLE_OP_TYPES and node.attr["shared_name"].s:
            node.attr["shared_name"].s = f"{scope}/".encode() + node.attr["shared_name"].s


def _import(graph, model: Model, scope: str, input_map: dict) -> None:
    with graph.as_default():
        if model.meta_graph_def is not None and not model.is_frozen:
            meta = type(model.meta_graph_def)()
            meta.CopyFrom(model.meta_graph_def)
            _scope_shared_names(meta.graph_def, scope)
            v1.train.import_meta_graph(meta, import_scope=scope, input_map=input_map, clear_devices=True)
        else:
            graph_def = type(model.graph_def)()
            graph_def.CopyFrom(model.graph_def)
            _scope_shared_names(graph_def, scope)
            tf.import_graph_def(graph_def, input_map=input_map, name=scope)


def mix_models(first, second, *, connect: dict, scopes=("first", "second")) -> MixedGraph:
    """Import `first` under `scopes[0]` and `second` under `scopes[1]` into one new graph, feeding
    each `connect` entry {input of second: output of first} (names in any form, in each model's
    own graph). `first`/`second`: a path, `Model`, `Piece` or GraphDef; never modified."""
    first, second = as_model(first), as_model(second)
    if len(set(scopes)) != 2 or not all(scopes) or any("/" in s or ":" in s for s in scopes):
        raise SurgeryError(f"scopes {scopes!r} must be two different names without '/' or ':'",
                           "e.g. scopes=('detector', 'classifier')")
    if not connect:
        raise SurgeryError("nothing connects the two models", "pass connect={input of second: output of first}")
    pairs = []
    for into, source in connect.items():
        (target,) = resolve_tensors(second.graph, [into])
        (output,) = resolve_tensors(first.graph, [source])
        if target.dtype.base_dtype != output.dtype.base_dtype:
            raise SurgeryError(f"'{output.name}' ({output.dtype.name}) cannot feed '{target.name}' "
                               f"({target.dtype.name})", "connect tensors of one dtype, or cast in between")
        if not target.shape.is_compatible_with(output.shape):
            raise SurgeryError(f"'{output.name}' {output.shape} cannot feed '{target.name}' {target.shape}",
                               "connect tensors of compatible shapes")
        pairs.append((target.name, output.name))
    graph = tf.Graph()
    _import(graph, first, scopes[0], {})
    input_map = {target: graph.get_tensor_by_name(f"{scopes[0]}/{output}") for target, output in pairs}
    _import(graph, second, scopes[1], input_map)
    return MixedGraph(graph=graph, models={scopes[0]: first, scopes[1]: second})


def compose_frozen(first, second, *, connect: dict, outputs, scopes=("first", "second")) -> Piece:
    """Feed frozen graph `first`'s outputs into frozen graph `second` (e.g. a split's offline piece
    into its online piece) and return the one frozen graph, pruned to `outputs` (names in
    `second`, unscoped)."""
    mixed = mix_models(first, second, connect=connect, scopes=scopes)
    names = [f"{scopes[1]}/{t.name}" for t in resolve_tensors(mixed.models[scopes[1]].graph, outputs)]
    return mixed.freeze(names)


__all__ = ["MixedGraph", "mix_models", "compose_frozen", "as_model"]
