"""Keras in, Keras out (`surgery.keras`): a functional `keras.Model` cut into two `keras.Model`s,
each a plain Keras model that `keras.models.load_model` reads without surgery.

- The offline model is the original's layers from its inputs to the cut tensors (Keras builds it
  from the original inputs and the intermediate outputs itself).
- The online model takes one `keras.Input` per cut tensor, plus each original input the outputs
  still need (a live input, same name), and calls the downstream layers on them in graph order.
  It re-runs Keras's own graph walk (`Functional._run_through_graph`) from the cut instead of from
  the inputs; Keras has no public way to do that (keras #16123, "Graph disconnected").
- A nested model is kept whole unless a cut or an output names a layer inside it; then it is
  entered: its layers are called one by one in the outer graph.
- The layers are the original's (shared weights), as any Keras sub-model's are: `fit` on the online
  model trains the original's head too. The files written by `split --format keras` are copies.
- A cut must separate: an offline input that reaches an output around the cut (a skip connection)
  is refused naming it and the layer where it joins, as `surgery split` refuses a leaking cut.
"""

from __future__ import annotations

from ..core.errors import CutError, SurgeryError
from ..core.kerasfile import graph_of
from ..core.names import suggest


def _functional(model):
    graph = graph_of(model)
    if graph is None:
        raise CutError(f"'{model.name}' ({type(model).__name__}) is a subclassed model: it has no functional "
                       "graph of layers to cut", "rebuild it with the functional API (keras.Model(inputs, outputs)), "
                       "or save it as a SavedModel (model.export(DIR)) and split that")
    return graph


def _nested(op):
    """The functional graph of a nested model called as one layer, or None for a plain layer."""
    return graph_of(op) if hasattr(op, "layers") else None


def _layer_names(graph) -> set:
    names = set()
    for layer in graph.layers:
        names.add(layer.name)
        inner = _nested(layer)
        if inner is not None:
            names |= _layer_names(inner)
    return names


def _replay(graph, tensors: dict, enter: set) -> None:
    """Call `graph`'s layers in order on whatever `tensors` ({id(KerasTensor): value}) makes
    computable, filling in each output; nested models named in `enter` are walked layer by layer."""
    from keras import tree

    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if not node.operation or node.is_input or all(id(x) in tensors for x in node.outputs):
                continue
            if any(id(x) not in tensors for x in node.input_tensors):
                continue
            args, kwargs = node.arguments.fill_in(tensors)
            inner = _nested(node.operation)
            if inner is not None and node.operation.name in enter:
                inner_tensors = {id(x): y for x, y in zip(inner.inputs, tree.flatten((args, kwargs)))}
                _replay(inner, inner_tensors, enter)
                outputs = [inner_tensors[id(t)] for t in inner.outputs]
            else:
                outputs = node.operation(*args, **kwargs)
            for x, y in zip(node.outputs, tree.flatten(outputs)):
                tensors[id(x)] = y


def _flat(model, names):
    """`model` with the nested models that hold any of `names` entered (the same layers, called
    in one graph), or `model` itself when no name is inside a nested model."""
    import keras

    graph = _functional(model)
    enter, top = set(), {layer.name for layer in graph.layers}

    def holds(inner_model) -> bool:
        inner = _nested(inner_model)
        return inner is not None and bool(_layer_names(inner) & names)

    def mark(g):
        for layer in g.layers:
            if holds(layer):
                enter.add(layer.name)
                mark(_nested(layer))

    if not (names - top):
        return graph
    mark(graph)
    inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=_history(t)) for t in graph.inputs]
    tensors = {id(x): y for x, y in zip(graph.inputs, inputs)}
    _replay(graph, tensors, enter)
    return keras.Model(inputs, [tensors[id(t)] for t in graph.outputs], name=model.name)


def _history(tensor) -> str:
    return tensor._keras_history.operation.name


def _outputs_by_layer(graph) -> dict:
    """{layer name: [output KerasTensors of its calls in this graph]}."""
    found: dict = {}
    for nodes in graph._nodes_by_depth.values():
        for node in nodes:
            if node.operation is not None:
                found.setdefault(node.operation.name, []).extend(node.outputs)
    return found


def _resolve(graph, names, what: str) -> list:
    """The KerasTensors named (a layer name as `model.summary()` prints it, `name:0` accepted, or a
    KerasTensor of this graph)."""
    by_layer = _outputs_by_layer(graph)
    tensors = []
    for name in names:
        if not isinstance(name, str):
            tensors.append(name)
            continue
        layer, _, index = name.partition(":")
        outs = by_layer.get(layer)
        if not outs:
            close = suggest(layer, list(by_layer))
            raise CutError(f"{what} '{name}': the model has no layer '{layer}'",
                           f"did you mean {close[0]}?" if close else "name a layer as model.summary() prints it")
        k = int(index or 0)
        if len(outs) > 1 and not index:
            raise CutError(f"{what} '{name}': layer '{layer}' gives {len(outs)} tensors (a shared layer called "
                           "more than once, or several outputs)", f"name one as {layer}:0 … {layer}:{len(outs) - 1}")
        if k >= len(outs):
            raise CutError(f"{what} '{name}': layer '{layer}' gives {len(outs)} tensor(s)", f"use {layer}:0")
        tensors.append(outs[k])
    return tensors


def _producers(tensor) -> list:
    node = tensor._keras_history.operation._inbound_nodes[tensor._keras_history.node_index]
    return list(node.input_tensors)


def _walk_back(tensors, stop: set) -> tuple[dict, dict]:
    """({id: tensor} of every tensor `tensors` are computed from, themselves included, not walking
    past the tensors whose ids are in `stop`; {id: the tensor it was first reached from})."""
    seen, parent, todo = {}, {}, list(tensors)
    while todo:
        t = todo.pop()
        if id(t) in seen:
            continue
        seen[id(t)] = t
        if id(t) in stop:
            continue
        for p in _producers(t):
            if id(p) not in parent:
                parent[id(p)] = t
            todo.append(p)
    return seen, parent


def split(model, *, cut, outputs=None):
    """Cut a functional `keras.Model` into two `keras.Model`s: `online(offline(x)) == model(x)`.

    The offline model is the original's layers from its inputs to the cut; the online model takes
    one `keras.Input` per cut (named `LAYER_cut`) plus each live original input, and calls the
    downstream layers (the original's, sharing their weights) in graph order.

    Args:
        model: a functional `keras.Model` (or `Sequential`), loaded or in memory.
        cut: layer names, a list or comma-separated (`LAYER:k` for a shared layer's k-th call).
        outputs: the layers the online model answers with (default: the model's outputs).

    Returns:
        `(offline, online)`, two `keras.Model`s.

    Raises:
        CutError: a subclassed model, an unknown or ambiguous layer name, or a cut that does not
            separate (naming the input that leaks and the layer where it joins).

    Examples:
        >>> offline, online = surgery.keras.split(model, cut="block_5_add")
        >>> online.predict(offline.predict(x))
    """
    import keras

    from ..core.names import parse_list

    cut_names = parse_list(cut) if isinstance(cut, str) else list(cut)
    out_names = (parse_list(outputs) if isinstance(outputs, str) else list(outputs)) if outputs else None
    if not cut_names:
        raise CutError("no cut given", "name the layer to cut at, e.g. cut='fc7'")
    named = {n.partition(":")[0] for n in cut_names + (out_names or []) if isinstance(n, str)}
    graph = _flat(model, named)
    cut_tensors = _resolve(graph, cut_names, "cut")
    out_tensors = _resolve(graph, out_names, "output") if out_names else list(graph.outputs)
    cut_ids = {id(t) for t in cut_tensors}
    for t in out_tensors:
        if id(t) in cut_ids:
            raise CutError(f"'{_history(t)}' is both a cut and an output", "name outputs above the cut")

    below, _ = _walk_back(cut_tensors, set())
    offline_inputs = [t for t in graph.inputs if id(t) in below]
    if not offline_inputs:
        raise CutError("the cut depends on no input of the model", "cut above an input layer")
    above, parent = _walk_back(out_tensors, cut_ids)
    for t in cut_tensors:
        if id(t) not in above:
            raise CutError(f"cut '{_history(t)}' is not on the way to any output "
                           f"({', '.join(_history(o) for o in out_tensors)})", "drop it from the cut")
    for t in offline_inputs:
        if id(t) in above:
            path, cur = [_history(t)], t
            while id(cur) in parent:
                cur = parent[id(cur)]
                path.append(_history(cur))
            raise CutError(f"the cut at {', '.join(_history(c) for c in cut_tensors)} does not separate the model: "
                           f"input '{_history(t)}' reaches output '{path[-1]}' around it, via {' → '.join(path)}",
                           f"cut that path too, e.g. add '{path[1] if len(path) > 2 else path[-1]}' to the cut")
    live = [t for t in graph.inputs if id(t) in above and id(t) not in below]

    offline = keras.Model(offline_inputs, cut_tensors, name=f"{model.name}_offline")
    taken = _layer_names(graph)
    new_inputs, tensors = [], {}
    for t in cut_tensors:
        name = _unique(f"{_history(t)}_cut", taken)
        tensors[id(t)] = keras.Input(batch_shape=t.shape, dtype=t.dtype, name=name)
        new_inputs.append(tensors[id(t)])
    for t in live:
        tensors[id(t)] = keras.Input(batch_shape=t.shape, dtype=t.dtype, name=_history(t))
        new_inputs.append(tensors[id(t)])
    _replay(graph, tensors, set())
    missing = [o for o in out_tensors if id(o) not in tensors]
    if missing:  # e.g. a layer that reads a tensor the walk above cannot see
        raise SurgeryError(f"could not rebuild output '{_history(missing[0])}' above the cut",
                           "please report this model; split it as a graph without --format keras meanwhile")
    online = keras.Model(new_inputs, [tensors[id(o)] for o in out_tensors], name=f"{model.name}_online")
    return offline, online


def _unique(name: str, taken: set) -> str:
    out, k = name, 1
    while out in taken:
        out, k = f"{name}_{k}", k + 1
    taken.add(out)
    return out





# ---------------------------------------------------------------- head: a fine-tuned keras.Model

def _keras_head_layers(spec) -> list:
    """The Keras twins of a `--head` spec's layers, named as the GraphDef head's scopes
    (`head/dense`, `head/dense_1`, … → `head_dense`, `head_dense_1`, …), then the logits and
    the softmax (`head_logits`, `head_probabilities`)."""
    import keras

    from .splice import Dense, Dropout, Flatten, parse_head

    layers, dense, other = [], 0, {}
    for layer in (parse_head(spec) if isinstance(spec, str) else spec):
        if isinstance(layer, Dense):
            name = "head_dense" + (f"_{dense}" if dense else "")
            dense += 1
            act = None if layer.activation in (None, "linear", "none") else layer.activation
            layers.append(keras.layers.Dense(layer.units, activation=act, name=name))
        elif isinstance(layer, (Dropout, Flatten)):
            kind = type(layer).__name__.lower()
            k = other.get(kind, 0)
            other[kind] = k + 1
            name = f"head_{kind}" + (f"_{k}" if k else "")
            layers.append(keras.layers.Dropout(layer.rate, name=name) if kind == "dropout"
                          else keras.layers.Flatten(name=name))
        else:
            raise SurgeryError(f"head layer {layer!r} has no Keras twin",
                               "give the head as a --head spec (dense, dropout, flatten)")
    return layers


def _copy(model):
    """An independent copy of `model`, made as Keras users make one: saved and loaded back. A
    `clone_model` + `set_weights` copy misses state kept outside the weights (an adapted
    Normalization's mean and variance are recomputed only when Keras loads it)."""
    import os
    import tempfile

    import keras

    with tempfile.TemporaryDirectory(prefix="surgery-keras-copy-") as work:
        path = os.path.join(work, "model.keras")
        model.save(path)
        # the model already runs in this process (its code, if any, ran when it was built or loaded)
        return keras.saving.load_model(path, compile=False, safe_mode=False)


def head(model, *, at, head, train_scopes=()):
    """A new `keras.Model`: `model`'s layers up to layer `at`, then the layers of `head`, then a
    softmax; what `finetune` writes as `model.keras` for a Keras MODEL.

    The layers below `at` are copies (the given model is not touched) with `trainable=False`,
    except those whose weights match a regex of `train_scopes`; the head layers are new,
    trainable, and named like the GraphDef head's scopes (`head/dense_1` → `head_dense_1`).
    `load_checkpoint_weights` fills it from a fine-tuning checkpoint.

    Args:
        model: a functional `keras.Model`.
        at: the layer to put the head above.
        head: a `--head` spec such as "dense:256:relu,dropout:0.5,dense:5".
        train_scopes: regexes of the weights (`block5_conv1/kernel`) whose layers stay trainable.

    Returns:
        The `keras.Model`, from `model`'s inputs to `head_probabilities`.

    Raises:
        CutError: `at` names no layer, or several tensors.

    Examples:
        >>> tuned = surgery.keras.head(model, at="avg_pool", head="dense:5")
        >>> tuned.fit(images, labels, epochs=3)
    """
    import re

    import keras

    source = _copy(model)
    graph = _flat(source, {at.partition(":")[0]} if isinstance(at, str) else set())
    (at_tensor,) = _resolve(graph, [at], "at")
    below, _ = _walk_back([at_tensor], set())
    inputs = [t for t in graph.inputs if id(t) in below]
    base = keras.Model(inputs, at_tensor)
    opened = [re.compile(rx) for rx in train_scopes]
    for layer in base.layers:
        layer.trainable = any(rx.search(w.path) for rx in opened for w in layer.weights)
    x = at_tensor
    layers = _keras_head_layers(head)
    for layer in layers[:-1]:
        x = layer(x)
    logits = layers[-1](x)
    logits = keras.layers.Identity(name="head_logits")(logits)
    probabilities = keras.layers.Softmax(name="head_probabilities")(logits)
    return keras.Model(inputs, probabilities, name=f"{model.name}_finetuned")


def load_checkpoint_weights(keras_model, prefix: str) -> list:
    """Fill `keras_model`'s weights from a fine-tuning checkpoint: backbone weights by their Keras
    path (`d1/kernel`, the key surgery's flattened graph gives them), head layers by their GraphDef
    twin (`head_dense_1/kernel` ← `head/dense_1/kernel`). Returns the weights it found no value
    for (a Dropout's seed state, which holds none)."""
    from ..core.tfcompat import tf

    reader = tf.train.load_checkpoint(prefix)
    stored = reader.get_variable_to_shape_map()
    missing = []
    for w in keras_model.weights:
        key = w.path
        if key.startswith("head_"):
            layer, _, rest = key.partition("/")
            key = "head/" + layer[len("head_"):] + "/" + rest
        if key in stored:
            w.assign(reader.get_tensor(key))
        else:
            missing.append(w.path)
    return missing


# ---------------------------------------------------------------- split --format keras

def _spec(tensor, name: str) -> dict:
    import keras

    return {"name": name, "dtype": keras.backend.standardize_dtype(tensor.dtype), "shape": list(tensor.shape)}


def random_inputs(model, n: int, seed: int = 0) -> list:
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for t in model.inputs:
        shape = [n if d is None and i == 0 else (d or 8) for i, d in enumerate(t.shape)]
        dtype = np.dtype(_spec(t, "")["dtype"])
        out.append(rng.integers(0, 10, shape).astype(dtype) if dtype.kind in "iub" else
                   rng.standard_normal(shape).astype(dtype))
    return out


def verify_keras_split(model, offline, online, n: int, *, tolerance: float = 1e-5, seed: int = 0) -> dict:
    """online(offline(x)) against model(x) on `n` random rows, each model as given (pass the
    written files loaded back to check what was written)."""
    import numpy as np

    x = random_inputs(model, n, seed)
    by_name = {_history(t): v for t, v in zip(model.inputs, x)}
    sent = offline([by_name[_history(t)] for t in offline.inputs])
    sent = [sent] if len(offline.outputs) == 1 else list(sent)
    live = [by_name[_history(t)] for t in online.inputs[len(sent):]]
    got = online(sent + live)
    expected = model(x if len(x) > 1 else x[0])
    got = [got] if not isinstance(got, (list, tuple)) else got
    expected = [expected] if not isinstance(expected, (list, tuple)) else expected
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(got, expected))
    scale = max([1.0] + [float(np.max(np.abs(np.asarray(b)))) for b in expected])
    return {"n": n, "reference": "keras", "max_abs_diff": diff, "tolerance": tolerance * scale,
            "passed": bool(diff <= tolerance * scale)}


def write_keras_split(model, offline, online, directory: str, *, verify: int = 4, source=None) -> dict:
    """Write `offline.keras`, `online.keras` and `manifest.json` into `directory`, all or nothing;
    with `verify` > 0 the written files are loaded back with plain Keras and checked against `model`."""
    import os

    import keras

    from ..core.files import atomic_path
    from ..core.manifest import replaceable_directory, write_manifest

    directory = replaceable_directory(directory)
    with atomic_path(directory, directory=True) as tmp:
        files = {}
        for name, piece in (("offline", offline), ("online", online)):
            files[name] = f"{name}.keras"
            piece.save(os.path.join(tmp, files[name]))
        verification = {"n": 0, "skipped": True, "passed": None}
        if verify > 0:
            back = [keras.saving.load_model(os.path.join(tmp, files[k]), compile=False) for k in ("offline", "online")]
            verification = verify_keras_split(model, *back, verify)
            if not verification["passed"]:
                raise CutError(f"online(offline(x)) differs from the model by {verification['max_abs_diff']:.3g} "
                               f"(tolerance {verification['tolerance']:.3g}) on {verify} random inputs",
                               "a layer behaves differently when called again (random ops, a custom layer?); "
                               "nothing was written")
        cut_names = [_history(t) for t in offline.outputs]
        pieces = {
            "offline": {"graph": files["offline"], "format": "keras",
                        "inputs": [_spec(t, _history(t)) for t in offline.inputs],
                        "outputs": [_spec(t, n) for t, n in zip(offline.outputs, cut_names)]},
            "online": {"graph": files["online"], "format": "keras",
                       "inputs": [_spec(t, _history(t)) for t in online.inputs],
                       "outputs": [_spec(t, _history(t)) for t in online.outputs]}}
        cut = [dict(_spec(t, n), tensor=n, placeholder=_history(p)) for t, n, p in
               zip(offline.outputs, cut_names, online.inputs)]
        for c in cut:
            del c["name"]
        return write_manifest(tmp, source=source or {"path": getattr(model, "name", "keras.Model")}, pieces=pieces,
                              cut=cut, live_inputs=[_spec(t, _history(t)) for t in online.inputs[len(cut):]],
                              verification=verification)

__all__ = ["head", "load_checkpoint_weights", "split", "verify_keras_split", "write_keras_split"]
