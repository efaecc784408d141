"""Keras models as people hold them: `.keras` archives, legacy `.h5`/`.hdf5` full-model files,
and in-memory `keras.Model`s, read without running code from the file.

A Keras file's config is read as JSON before Keras sees it: a `Lambda` layer (in a legacy `.h5`,
marshalled Python bytecode that loading executes) or a class Keras does not ship is refused
unless the caller trusts the file; then Keras loads it with `safe_mode`. The model is traced
once into a function that returns the model's outputs and every layer's output under the
layer's name, and `tf2.flatten_function` turns that into one graph with named variables, where
`add_4:0` is the output of Keras's layer `add_4` as `model.summary()` prints it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import zipfile

from .errors import ModelLoadError

SUFFIXES = (".keras", ".h5", ".hdf5")
_MODEL_CLASSES = frozenset({"Functional", "Model", "Sequential"})


def is_keras_file(path: str) -> bool:
    return os.path.isfile(path) and path.lower().endswith(SUFFIXES)


def read_config(path: str) -> dict | None:
    """The model config of a Keras file (JSON, nothing imported or run), or None for a file
    that holds weights only."""
    if path.lower().endswith(".keras"):
        try:
            with zipfile.ZipFile(path) as z:
                if "config.json" not in z.namelist():
                    return None
                return json.loads(z.read("config.json"))
        except (zipfile.BadZipFile, ValueError, OSError) as e:
            raise ModelLoadError(f"{path} is not a Keras archive: {e}", "save it again with model.save('model.keras')") from e
    import h5py

    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
    except OSError as e:
        raise ModelLoadError(f"{path} cannot be read as HDF5: {e}", "pass a Keras .h5 saved with model.save") from e
    if raw is None:
        return None
    try:
        return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except ValueError as e:
        raise ModelLoadError(f"{path}: its model_config is not JSON ({e})", "save the model again with Keras") from e


def _layers(config: dict):
    """Every layer entry of a model config, nested models included."""
    for layer in (config.get("config") or {}).get("layers", []) if isinstance(config.get("config"), dict) else []:
        yield layer
        if layer.get("class_name") in _MODEL_CLASSES:
            yield from _layers(layer)


def code_findings(config: dict) -> list[dict]:
    """Layers whose loading runs code from the file or from outside Keras:
    `{"layer", "class", "kind"}`, kind `lambda` (Python code stored in the file) or `custom`
    (a class Keras does not ship, whose code would have to be supplied)."""
    import keras

    found = []
    for layer in _layers(config):
        cls = str(layer.get("class_name", ""))
        name = layer.get("name") or (layer.get("config") or {}).get("name") or "?"
        module = layer.get("module")
        registered = str(layer.get("registered_name") or "")
        if cls == "Lambda":
            found.append({"layer": name, "class": cls, "kind": "lambda"})
        elif ">" in registered or (module and not str(module).startswith("keras")) or (
                not module and cls not in _MODEL_CLASSES and not hasattr(keras.layers, cls)):
            # a class Keras ships lives in a `keras…` module (ConvNeXt's LayerScale in
            # keras.src.applications.convnext); a registered custom class is `package>Name`
            found.append({"layer": name, "class": cls, "kind": "custom"})
    return found


def describe_findings(findings: list[dict]) -> str:
    return ", ".join(f"{f['class']} layer '{f['layer']}'" for f in findings[:3]) + (" …" if len(findings) > 3 else "")


def load_keras_file(path: str, *, trust_code: bool = False):
    """The `keras.Model` in `path`, refused (`ModelLoadError`) before Keras runs when the file
    holds weights only, or code (Lambda, custom classes) and `trust_code` is off."""
    config = read_config(path)
    if config is None:
        raise ModelLoadError(f"{path} holds weights only, no model config: there is no graph to load",
                             f"load them into a model with `surgery restore MODEL --from {path} --out PREFIX`")
    risky = code_findings(config)
    if risky and not trust_code:
        raise ModelLoadError(f"{path} has code that loading would run: {describe_findings(risky)}",
                             "pass --trust-code only if you trust where the file came from "
                             f"(`surgery audit {path}` lists it)")
    import keras

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=not trust_code)
    except Exception as e:  # Keras raises many kinds for a file it cannot rebuild
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        legacy = not path.lower().endswith(".keras")
        raise ModelLoadError(f"{path} could not be loaded by Keras: {msg}",
                             "legacy .h5 does not round-trip every layer: save the model as .keras "
                             "(model.save('model.keras')) or export a SavedModel (model.export(DIR))" if legacy else
                             "export a SavedModel from where the model loads (model.export(DIR)) and pass that") from e


def _history_layer(tensor) -> str:
    return tensor._keras_history.operation.name


def output_names(model) -> list[str]:
    """The model's outputs as Keras names them: dict keys, else the output layers' names."""
    names = list(getattr(model, "output_names", None) or [])
    if len(names) == len(model.outputs):
        return names
    return [_history_layer(t) for t in model.outputs]


def graph_of(layer):
    """The functional graph a nested model runs (a `Sequential` keeps one in `_functional`),
    or None for a plain layer or a subclassed model."""
    graph = layer if hasattr(layer, "_nodes_by_depth") else getattr(layer, "_functional", None)
    return graph if hasattr(graph, "_nodes_by_depth") else None


def _call_outputs(model) -> tuple[dict, dict]:
    """Every top-level layer's output tensor by name; a layer called more than once gives each
    call's tensor as `NAME.call_I` (its bare name is then ambiguous). Returns (outputs,
    {shared layer: [its call keys]})."""
    import keras

    outputs, calls = {}, {}
    for layer in model.layers:
        nodes = list(getattr(layer, "_inbound_nodes", ()))
        if isinstance(layer, keras.layers.InputLayer) or not nodes:
            continue
        for i, node in enumerate(nodes):
            tensors = node.output_tensors  # not `layer.output`: a nested model's is its own graph's
            if len(tensors) != 1 or not isinstance(tensors[0], keras.KerasTensor):
                continue
            key = f"{layer.name}.call_{i}" if len(nodes) > 1 else layer.name
            outputs[key] = tensors[0]
            if len(nodes) > 1:
                calls.setdefault(layer.name, []).append(key)
    return outputs, calls


@contextlib.contextmanager
def _flat_outputs(model):
    """Like `_call_outputs`, for a model with nested models: every layer is called again on the
    model's inputs, a nested functional model's layers in its place, so that each inner layer's
    output is a tensor of one flat graph, named `outer/inner` (`outer.call_I/inner` for a nested
    model called more than once). Keras keeps no such tensors: a nested model runs as one
    operation. Reimplements `Function._run_through_graph` (Keras 3) to know each call's node.
    Yields (outputs, calls, the model's own outputs in the flat graph); on exit the layers keep
    only their own calls again, so the caller's model is as it was."""
    import keras

    original = {}  # each layer's own calls, before the calls made here are added to them

    def remember(graph):
        for layer in graph.operations:  # layers and the bare ops a functional graph may hold (x + y)
            original.setdefault(id(layer), (layer, list(layer._inbound_nodes), list(layer._outbound_nodes)))
            if graph_of(layer) is not None:
                remember(graph_of(layer))

    remember(model)
    outputs, calls = {}, {}

    def run(graph, inputs, prefix):
        tensors = {id(x): y for x, y in zip(graph.inputs, inputs)}
        for depth in sorted(graph._nodes_by_depth, reverse=True):
            for node in graph._nodes_by_depth[depth]:
                layer = node.operation
                if not layer or node.is_input or any(id(x) not in tensors for x in node.input_tensors):
                    continue
                args, kwargs = node.arguments.fill_in(tensors)
                own = original[id(layer)][1]
                key = prefix + layer.name + (f".call_{own.index(node)}" if len(own) > 1 else "")
                if len(own) > 1:
                    calls.setdefault(prefix + layer.name, []).append(key)
                inner = graph_of(layer)
                if inner is not None:
                    result = run(inner, keras.tree.flatten(args[0]), key + "/")
                else:
                    result = keras.tree.flatten(layer(*args, **kwargs))
                if len(result) == 1 and isinstance(result[0], keras.KerasTensor) and isinstance(layer, keras.Layer):
                    outputs[key] = result[0]  # a bare op is no layer: it has no name to cut at
                tensors.update((id(x), y) for x, y in zip(node.outputs, result))
        return [tensors[id(x)] for x in graph.outputs]

    try:
        yield outputs, calls, run(model, model.inputs, "")
    finally:
        for layer, inbound, outbound in original.values():
            layer._inbound_nodes[:] = inbound
            layer._outbound_nodes[:] = outbound


@dataclasses.dataclass
class Traced:
    """A Keras model traced once as a `tf.function` (`trace_for_surgery`): its concrete
    function, whose outputs are the model's own (`outputs`) and every layer's, keyed in the
    order the layers run (`order`); the Keras variables it may capture; {layer called more than
    once: [its call keys]}."""

    function: object
    outputs: list
    order: list
    variables: list
    calls: dict


def trace_for_surgery(model) -> Traced:
    """Trace `model` once, in inference mode, into a concrete function that returns every
    layer's output under the layer's name (`outer/inner` inside a nested model), the model's own
    outputs under `output_names`; a layer called more than once returns each call's output as
    `NAME.call_I`. This is Keras's `model.export` without the SavedModel: export traces about
    fifty functions and writes them out, and surgery would read them back and inline them."""
    import keras

    from .tfcompat import tf

    if not getattr(model, "inputs", None) or not getattr(model, "outputs", None):
        raise ModelLoadError(f"Keras model '{model.name}' has no inputs/outputs yet (a subclassed or unbuilt model)",
                             "build it as a functional model, or export a SavedModel with model.export(DIR)")
    nested = any(graph_of(layer) is not None for layer in model.layers)
    # a model without nested models is traced from Keras's own graph, untouched
    with _flat_outputs(model) if nested else contextlib.nullcontext((*_call_outputs(model), model.outputs)) as (
            outputs, calls, final):
        names = output_names(model)
        outputs.update(zip(names, final))
        try:
            probe = keras.Model(model.inputs, outputs, name=model.name)
            specs = [tf.TensorSpec(t.shape, t.dtype, name=_history_layer(t)) for t in model.inputs]
            structure = probe._inputs_struct
            function = tf.function(lambda *xs: probe(keras.tree.pack_sequence_as(structure, list(xs)), training=False))
            concrete = function.get_concrete_function(*specs)
        except Exception as e:  # Keras raises many kinds
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            hint = ("the model must run on the TensorFlow backend (KERAS_BACKEND=tensorflow)"
                    if keras.backend.backend() != "tensorflow" else
                    "rename the nested model's layers so that no name repeats, or export a SavedModel "
                    "(model.export(DIR)) and pass that" if "is used" in msg else
                    "export a SavedModel (model.export(DIR)) and pass that")
            raise ModelLoadError(f"Keras model '{model.name}' could not be traced to a TensorFlow graph: {msg}",
                                 hint) from e
    return Traced(concrete, names, list(outputs), list(model.variables), calls)


__all__ = [
    "SUFFIXES",
    "Traced",
    "code_findings",
    "is_keras_file",
    "load_keras_file",
    "output_names",
    "read_config",
    "trace_for_surgery",
]
