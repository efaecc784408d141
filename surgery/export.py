"""`surgery export`: frozen pieces as SavedModels with a `serving_default` signature.

A frozen GraphDef has no variables, so TF1's `SavedModelBuilder` writes it as is: `saved_model.pb`
(tag `serve`) plus an empty `variables/`, the layout TF Serving and `tf.saved_model.load` read.
Signature keys are the tensor names made identifier-safe (`item_tower/embedding:0` →
`item_tower_embedding`), so callers pass `signature(user_features=..., item_tower_embedding=...)`.
"""

from __future__ import annotations

import os
import re

from . import tfcompat
from .errors import ModelLoadError, SurgeryError
from .files import atomic_path
from .graph import graph_from_def, read_graph_def
from .manifest import FILENAME, is_pieces_dir, piece_path, read_manifest

tf = tfcompat.tf
v1 = tf.compat.v1

SIGNATURE = "serving_default"


def signature_key(tensor_name: str, taken=()) -> str:
    """`scope/op:0` → `scope_op`, `op:1` → `op_1`; unique among `taken`; a valid identifier."""
    op, _, index = tensor_name.partition(":")
    key = op if index in ("", "0") else f"{op}_{index}"
    key = re.sub(r"\W", "_", key)
    if not key or key[0].isdigit():
        key = "t_" + key
    base, n = key, 1
    while key in taken:
        key = f"{base}_{n}"
        n += 1
    return key


def _write_saved_model(graph_def, inputs: list, outputs: list, directory: str) -> dict:
    """Write one SavedModel into the (empty) `directory`; returns {"inputs": {key: name}, "outputs": ...}."""
    graph = graph_from_def(graph_def)
    keys = {"inputs": {}, "outputs": {}}
    tensors = {"inputs": {}, "outputs": {}}
    taken = set()
    for kind, infos in (("inputs", inputs), ("outputs", outputs)):
        for info in infos:
            name = info["name"] if isinstance(info, dict) else info
            try:
                t = graph.get_tensor_by_name(name if ":" in name else name + ":0")
            except (KeyError, ValueError) as e:
                raise SurgeryError(f"tensor '{name}' is not in the graph to export",
                                   "write the pieces again; the manifest and graph disagree") from e
            key = signature_key(t.name, taken)
            taken.add(key)
            keys[kind][key] = t.name
            tensors[kind][key] = t
    if not tensors["outputs"]:
        raise SurgeryError("the graph to export has no outputs", "freeze it with --outputs first")
    with graph.as_default(), v1.Session(graph=graph) as sess:
        # build_signature_def, not predict_signature_def: a graph with no inputs (weights → answer,
        # a lookup table that is one Const) serves with an empty input signature.
        sig = v1.saved_model.build_signature_def(
            inputs={k: v1.saved_model.build_tensor_info(t) for k, t in tensors["inputs"].items()},
            outputs={k: v1.saved_model.build_tensor_info(t) for k, t in tensors["outputs"].items()},
            method_name=v1.saved_model.signature_constants.PREDICT_METHOD_NAME)
        builder = v1.saved_model.Builder(directory)
        builder.add_meta_graph_and_variables(sess, [v1.saved_model.tag_constants.SERVING],
                                             signature_def_map={SIGNATURE: sig}, strip_default_attrs=True)
        builder.save()
    return keys


def export_frozen(graph_def, directory: str, *, inputs: list, outputs: list) -> dict:
    """Write frozen `graph_def` as a SavedModel at `directory` (atomically, replacing it).

    `inputs`/`outputs`: tensor names or `{name, ...}` dicts (a manifest's or `FrozenGraph`'s)."""
    with atomic_path(directory, directory=True) as tmp:
        return _write_saved_model(graph_def, inputs, outputs, tmp)


def _frozen_source(path: str):
    """(graph_def, inputs, outputs) of a frozen .pb/.pbtxt: its placeholders and likely outputs."""
    from .model import load_model
    from .report import likely_inputs, likely_outputs

    model = load_model(path)
    if not model.is_frozen:
        raise ModelLoadError(f"{path} is a {model.description}, not a frozen graph",
                             "freeze it first with `surgery freeze MODEL --outputs T --out FILE.pb`, "
                             "or pass a directory written by `surgery split`")
    return model.graph_def, likely_inputs(model), likely_outputs(model)


def export(graph: str, directory: str) -> dict:
    """Export GRAPH (a frozen .pb/.pbtxt, or a directory with a manifest) as SavedModel(s).

    A manifest directory gives one SavedModel per piece, `directory/<piece>` (`offline`,
    `online` for a split), all written into place together. Returns {piece or "": signature keys}."""
    if is_pieces_dir(graph):
        manifest = read_manifest(graph)
        pieces = {}
        for name, info in manifest["pieces"].items():
            path = piece_path(graph, manifest, name)
            try:
                gd = read_graph_def(path)
            except ModelLoadError as e:
                raise ModelLoadError(f"piece '{name}' of {graph}: {path} cannot be read as a GraphDef ({e.message})",
                                     "write the pieces again") from e
            pieces[name] = (gd, info["inputs"], info["outputs"])
        with atomic_path(directory, directory=True) as tmp:
            return {name: _write_saved_model(gd, ins, outs, os.path.join(tmp, name))
                    for name, (gd, ins, outs) in pieces.items()}
    try:
        gd, ins, outs = _frozen_source(graph)
    except ModelLoadError as e:
        if os.path.isdir(graph) and "not a frozen graph" not in e.message:
            raise ModelLoadError(f"{graph} has no {FILENAME}",
                                 "pass a frozen .pb or a directory written by `surgery split`") from e
        raise
    return {"": export_frozen(gd, directory, inputs=ins, outputs=outs)}


__all__ = ["export", "export_frozen", "signature_key"]
