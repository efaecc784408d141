"""`surgery export`: frozen pieces as SavedModels with a `serving_default` signature.

From a MODEL (checkpoint, .meta, SavedModel) with `--outputs`, the variables stay variables:
`savedmodel.write_saved_model` copies them tensor by tensor, so there is no 2 GB limit. A split
directory's SavedModel pieces (`split --format savedmodel`) are copied as they are.

A frozen GraphDef has no variables, so TF1's `SavedModelBuilder` writes it as is: `saved_model.pb`
(tag `serve`) plus an empty `variables/`, the layout TF Serving and `tf.saved_model.load` read.
Signature keys are the tensor names made identifier-safe (`item_tower/embedding:0` →
`item_tower_embedding`), so callers pass `signature(user_features=..., item_tower_embedding=...)`.
"""

from __future__ import annotations

import os
import shutil

from ..core import tfcompat
from ..core.errors import ModelLoadError, SurgeryError
from ..core.files import atomic_path
from ..core.graph import graph_from_def
from ..core.manifest import FILENAME
from ..core.names import parse_list
from ..core.pieces import open_pieces
from ..passes.savedmodel import SIGNATURE, signature, signature_key, variable_piece, write_saved_model

tf = tfcompat.tf
v1 = tf.compat.v1


def _write_saved_model(graph_def, inputs: list, outputs: list, directory: str) -> dict:
    """Write one SavedModel into the (empty) `directory`; returns {"inputs": {key: name}, "outputs": ...}."""
    graph = graph_from_def(graph_def)
    with graph.as_default(), v1.Session(graph=graph) as sess:
        sig, keys = signature(graph, inputs, outputs)
        builder = v1.saved_model.Builder(directory)
        builder.add_meta_graph_and_variables(sess, [v1.saved_model.tag_constants.SERVING],
                                             signature_def_map={SIGNATURE: sig}, strip_default_attrs=True)
        builder.save()
    return keys


def export_frozen(graph_def, directory: str, *, inputs: list, outputs: list) -> dict:
    """Write frozen `graph_def` as a SavedModel at `directory` (atomically, replacing it).

    `inputs`/`outputs`: tensor names or `TensorSpec`s (a `Piece`'s)."""
    with atomic_path(directory, directory=True) as tmp:
        return _write_saved_model(graph_def, inputs, outputs, tmp)


def _frozen_source(opened):
    """(graph_def, inputs, outputs) of a frozen .pb/.pbtxt: its placeholders and likely outputs."""
    from ..passes.inspect import likely_inputs, likely_outputs

    model = opened.model()
    if not model.is_frozen:
        raise ModelLoadError(f"{opened.path} is a {model.description}, not a frozen graph",
                             "name what to export with --outputs T (its variables stay variables), "
                             "or pass a directory written by `surgery split`")
    return model.graph_def, likely_inputs(model), likely_outputs(model)


def export_model(model, directory: str, *, outputs, inputs=None, progress: bool = False) -> dict:
    """Export a loaded `Model` pruned to `outputs` (cut at `inputs`) as a SavedModel whose variables
    stay variables, copied tensor by tensor from its checkpoint (no 2 GB limit). Returns the keys."""
    piece = variable_piece(model, parse_list(outputs), inputs=parse_list(inputs) if inputs else ())
    with atomic_path(directory, directory=True) as tmp:
        return write_saved_model(piece, tmp, progress=progress)


def _saved_model_keys(directory: str) -> dict:
    """The `serving_default` keys of a SavedModel piece written by `split`."""
    from ..core.model import load_model

    sig = load_model(directory).signature_defs.get(SIGNATURE)
    if sig is None:
        raise ModelLoadError(f"{directory} has no {SIGNATURE} signature", "write the pieces again")
    return {kind: {k: t.name for k, t in getattr(sig, kind).items()} for kind in ("inputs", "outputs")}


def export(graph, directory: str, *, outputs=None, inputs=None, set=None, progress: bool = False) -> dict:
    """Export GRAPH as SavedModel(s) with a `serving_default` signature (the TF Serving layout).

    A directory of pieces gives one SavedModel per piece, `directory/<piece>`, written into place
    together; a piece that is already a SavedModel is copied. A MODEL with `outputs` keeps its
    variables (no 2 GB limit); a frozen graph with `outputs` is cut to them first.

    Args:
        graph: a frozen `.pb`/`.pbtxt`, a directory with a manifest, or (with `outputs`) any MODEL;
            a path or an `open_pieces` result.
        directory: where to write.
        outputs: the tensors to serve.
        inputs: tensors to cut off into the signature's inputs.
        set: placeholders bound first.
        progress: show a progress bar.

    Returns:
        `{piece (or ""): signature keys}`.

    Raises:
        SurgeryError: no outputs to serve, or names that match nothing.

    Examples:
        >>> surgery.export("pieces/", "serving/")
    """
    opened = open_pieces(graph)
    if set and (opened.is_split or not outputs):
        raise SurgeryError("--set binds placeholders of one MODEL: it needs --outputs",
                           "name the tensors to export with --outputs, or bind them when you split or freeze")
    if opened.is_split:
        for piece in opened.pieces.values():
            if piece.format == "frozen":
                _read_piece(opened, piece)  # every piece readable before anything is written
        with atomic_path(directory, directory=True) as tmp:
            return {name: _copy_saved_model(p.path, os.path.join(tmp, name)) if p.format == "savedmodel"
                    else _write_saved_model(p.graph_def, p.inputs, p.outputs, os.path.join(tmp, name))
                    for name, p in opened.pieces.items()}
    if outputs:
        from ..passes.bind import bind
        from ..passes.freeze import freeze_model

        model = bind(opened.model(), set)
        if not model.is_frozen:
            return {"": export_model(model, directory, outputs=outputs, inputs=inputs, progress=progress)}
        frozen = freeze_model(model, parse_list(outputs), inputs=parse_list(inputs) if inputs else ())
        return {"": export_frozen(frozen.graph_def, directory, inputs=frozen.inputs, outputs=frozen.outputs)}
    try:
        gd, ins, outs = _frozen_source(opened)
    except ModelLoadError as e:
        if isinstance(opened.path, str) and os.path.isdir(opened.path) and "not a frozen graph" not in e.message:
            raise ModelLoadError(f"{opened.path} has no {FILENAME}",
                                 "pass a frozen .pb or a directory written by `surgery split`") from e
        raise
    return {"": export_frozen(gd, directory, inputs=ins, outputs=outs)}


def _read_piece(opened, piece) -> None:
    try:
        piece.graph_def
    except ModelLoadError as e:
        raise ModelLoadError(f"piece '{piece.name}' of {opened.path}: {piece.path} cannot be read as a GraphDef "
                             f"({e.message})", "write the pieces again") from e


def _copy_saved_model(source: str, target: str) -> dict:
    shutil.copytree(source, target)
    return _saved_model_keys(target)


__all__ = ["export", "export_frozen", "export_model", "signature_key"]
