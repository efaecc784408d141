"""Splice a new head above a named tensor of an imported graph, behind a `stop_gradient`.

The boundary is a GraphDef pass done before import: each boundary tensor gets a `StopGradient`
and a `PlaceholderWithDefault` (the *bottleneck*), and the layers above read the placeholder.
By default the boundary is the splice tensor itself; `train_scopes` opens original layers below
it, and the boundary moves down to the tensors those layers read from below. Feeding the
bottleneck trains on cached values (as TF Hub's retrain.py does); leaving it alone serves the
whole graph end to end. The head lives under its own scope (`head/` unless taken) with stable
names: `head/bottleneck`, `head/labels`, `head/is_training`, `head/logits`, `head/probabilities`,
`head/loss`, `head/accuracy`, `head/train_op`.
"""

from __future__ import annotations

import dataclasses
import re

from ..core import graph as g
from ..core import tfcompat
from ..core.errors import SurgeryError
from ..core.names import VARIABLE_OP_TYPES, is_machinery, node_input_op, resolve_tensor

tf = tfcompat.tf
v1 = tf.compat.v1

ACTIVATIONS = {"relu": tf.nn.relu, "tanh": tf.tanh, "sigmoid": tf.sigmoid, "elu": tf.nn.elu,
               "softplus": tf.nn.softplus, "linear": None, "none": None}
OPTIMIZERS = {  # name -> (class, default name, extra args)
    "adam": (v1.train.AdamOptimizer, "Adam", {}),
    "sgd": (v1.train.GradientDescentOptimizer, "GradientDescent", {}),
    "momentum": (v1.train.MomentumOptimizer, "Momentum", {"momentum": 0.9}),
}


def make_optimizer(kind: str, lr: float, graph, var_list):
    """A TF1 optimizer whose slot names (`VAR/Adam`, `VAR/Adam_1`, …) are free in `graph`: the
    pretrained checkpoint's own slots for an opened layer are already there under `VAR/Adam`."""
    cls, base, extra = OPTIMIZERS[kind]
    taken = {op.name for op in graph.get_operations()}
    name, k = base, 0
    while any(f"{v.op.name}/{name}" in taken or f"{v.op.name}/{name}_1" in taken for v in var_list):
        k += 1
        name = f"{base}_{k}"
    return cls(lr, name=name, **extra)


# ---------------------------------------------------------------- head layers

@dataclasses.dataclass
class Dense:
    """A fully connected layer `head/dense[_i]/{kernel,bias}` (glorot-uniform, zeros); the same
    math as `tf.keras.layers.Dense`, built with `get_variable` so it lives in the v1 graph."""

    units: int
    activation: str | None = None

    def __call__(self, x, *, training):
        act = ACTIVATIONS[self.activation or "linear"]
        with v1.variable_scope(None, default_name="dense"):
            kernel = v1.get_variable("kernel", [int(x.shape[-1]), self.units], x.dtype,
                                     initializer=v1.glorot_uniform_initializer())
            bias = v1.get_variable("bias", [self.units], x.dtype, initializer=v1.zeros_initializer())
            y = tf.nn.bias_add(tf.matmul(x, kernel), bias)
            return act(y) if act is not None else y


@dataclasses.dataclass
class Dropout:
    """Dropout while `head/is_training` is fed True; the identity otherwise (and when served)."""

    rate: float

    def __call__(self, x, *, training):
        rate = tf.where(training, tf.constant(self.rate, x.dtype), tf.constant(0.0, x.dtype))
        return tf.nn.dropout(x, rate=rate)


@dataclasses.dataclass
class Flatten:
    def __call__(self, x, *, training):
        return flatten(x)


def flatten(x):
    """[batch, d1, d2, …] → [batch, d1·d2·…]; the trailing dims must be known."""
    if x.shape.rank == 2:
        return x
    dims = x.shape.as_list()[1:]
    if x.shape.rank is None or any(d is None for d in dims):
        raise SurgeryError(f"cannot flatten '{x.name}' of shape {x.shape}: its trailing dimensions are unknown",
                           "splice above a tensor whose shape is known, or give a callable head that reduces it")
    size = 1
    for d in dims:
        size *= d
    return tf.reshape(x, [-1, size], name="flatten")


def parse_head(spec: str) -> list:
    """`'dense:256:relu,dropout:0.5,dense:5'` → [Dense(256, 'relu'), Dropout(0.5), Dense(5)]."""
    layers = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        kind, *args = part.split(":")
        try:
            if kind == "dense" and len(args) in (1, 2):
                units = int(args[0])
                if units < 1:
                    raise SurgeryError(f"head layer '{part}' has {units} units", "give a dense layer 1 unit or more, "
                                       "e.g. dense:5 (the last dense layer's units are the classes)")
                act = args[1] if len(args) == 2 else None
                if act is not None and act not in ACTIVATIONS:
                    raise SurgeryError(f"unknown activation '{act}' in head layer '{part}'",
                                       "use one of: " + ", ".join(ACTIVATIONS))
                layers.append(Dense(units, act))
            elif kind == "dropout" and len(args) == 1:
                rate = float(args[0])
                if not 0 <= rate < 1:
                    raise SurgeryError(f"head layer '{part}' drops a fraction {args[0]} of its inputs",
                                       "give a dropout rate from 0 up to (not including) 1, e.g. dropout:0.5")
                layers.append(Dropout(rate))
            elif kind == "flatten" and not args:
                layers.append(Flatten())
            else:
                raise ValueError
        except ValueError:
            raise SurgeryError(f"cannot read head layer '{part}' in '{spec}'",
                               "write layers like dense:256:relu,dropout:0.5,dense:5 "
                               "(dense:UNITS[:ACTIVATION], dropout:RATE, flatten)") from None
    if not layers:
        raise SurgeryError(f"the head spec '{spec}' has no layers", "e.g. --head dense:5")
    if not isinstance(layers[-1], Dense):
        raise SurgeryError(f"the head '{spec}' must end with a dense layer (its units are the classes)",
                           "append the output layer, e.g. ',dense:5'")
    return layers


def _build_head(head, x, training):
    """Apply a head (spec string, list of layers/callables, or callable(x, training)) to `x`."""
    if isinstance(head, str):
        head = parse_head(head)
    if callable(head) and not isinstance(head, (list, tuple)):
        return head(x, training)
    for layer in head:
        if isinstance(layer, (Dense, Dropout, Flatten)):
            x = layer(x, training=training)
        else:
            x = layer(x)
    return x


# ---------------------------------------------------------------- the boundary pass

def _data_inputs(node):
    return [i for i in node.input if not i.startswith("^")]


def opened_variables(graph_def, train_scopes, trainable=None) -> tuple[list[str], list[str]]:
    """(opened, fixed): variable op names matching any of the `train_scopes` regexes (optimizer
    slots excluded), split by `trainable` (the names an optimizer may change; None: all). A batch
    norm's moving statistics are not trainable: Keras never trains them, and neither do we."""
    patterns = []
    for rx in train_scopes:
        try:
            patterns.append(re.compile(rx))
        except re.error as e:
            raise SurgeryError(f"--train-scopes '{rx}' is not a valid regex: {e}", "e.g. --train-scopes 'fc7'") from e
    names = [n.name for n in graph_def.node if n.op in VARIABLE_OP_TYPES and not is_machinery(n.name, n.op)]
    matched = [n for n in names if any(p.search(n) for p in patterns)]
    for rx, p in zip(train_scopes, patterns):
        if not any(p.search(n) for n in names):
            raise SurgeryError(f"--train-scopes '{rx}' matches no variable of the model",
                               "variables: " + ", ".join(names[:6]) + ("…" if len(names) > 6 else ""))
    if trainable is None:
        return matched, []
    return [n for n in matched if n in trainable], [n for n in matched if n not in trainable]


def find_boundary(graph_def, at_tensor: str, opened: list[str]) -> tuple[list[str], set]:
    """The tensors where gradients must stop, and the region of ops that train above them.

    Without opened variables the boundary is `at_tensor`. Otherwise the region is every op on a
    path from an opened variable to `at_tensor`; the boundary is each tensor a region op reads
    from outside the region that depends on a graph input (constants and frozen weights need no stop).
    """
    if not opened:
        return [at_tensor], set()
    index = g.Index(graph_def)
    nodes = index.nodes
    below = g.ancestors(index, [at_tensor], control=False)  # ops `at` depends on, itself included
    not_below = [v for v in opened if v not in below]
    if not_below:
        raise SurgeryError(f"--train-scopes opens '{not_below[0]}', which does not feed '{at_tensor}'",
                           "open only layers below the splice point (the head above it trains anyway)")
    above = g.descendants(index, opened, where=lambda name: not is_machinery(name, nodes[name].op))
    region = below & above
    fed = {}  # op name -> depends on a Placeholder

    def depends_on_input(name):
        if name not in fed:
            fed[name] = any(nodes[n].op == "Placeholder" for n in g.ancestors(index, [name], control=False))
        return fed[name]

    boundary = []
    for name in sorted(region):
        for inp in _data_inputs(nodes[name]):
            op, tensor = node_input_op(inp), g.tensor_name(inp)
            if op not in region and tensor not in boundary and depends_on_input(op):
                boundary.append(tensor)
    return boundary, region


def insert_boundary(graph_def, boundary: list[str], region: set, shapes: dict, scope: str):
    """GraphDef pass: `StopGradient` + `PlaceholderWithDefault` on each boundary tensor; region ops
    read the placeholder. Returns (new GraphDef, [placeholder tensor names])."""
    names = [f"{scope}/bottleneck{'' if k == 0 else f'_{k}'}" for k in range(len(boundary))]
    out = g.replace_uses(graph_def, {t: f"{n}:0" for t, n in zip(boundary, names)}, only=region)
    for k, (tensor, name) in enumerate(zip(boundary, names)):
        dtype, shape = shapes[tensor]
        stop = out.node.add(name=f"{scope}/boundary/stop_gradient{'' if k == 0 else f'_{k}'}", op="StopGradient",
                            input=[tensor])
        stop.attr["T"].type = dtype.as_datatype_enum
        ph = out.node.add(name=name, op="PlaceholderWithDefault", input=[stop.name])
        ph.attr["dtype"].type = dtype.as_datatype_enum
        ph.attr["shape"].shape.CopyFrom(shape.as_proto())
    return out, [f"{n}:0" for n in names]


# ---------------------------------------------------------------- splice

@dataclasses.dataclass
class Splice:
    """A graph with a head spliced in, and the names to drive it.

    `bottlenecks` are the PlaceholderWithDefault tensors at the boundary (feed cached values
    there); `var_list` is exactly what the train op updates; `original_variables` are the
    imported model's variables (restored from its checkpoint).
    """

    graph: object
    scope: str
    at: object
    input: object
    bottlenecks: list
    boundary: list  # original tensor names under each bottleneck
    labels: object
    is_training: object
    logits: object
    probabilities: object
    loss: object
    accuracy: object
    train_op: object
    num_classes: int
    head_variables: list
    opened_variables: list
    fixed_variables: list  # matched by train_scopes but not trainable (moving statistics): kept as they are
    original_variables: list
    optimizer_variables: list

    @property
    def var_list(self) -> list:
        return self.head_variables + self.opened_variables

    def names(self) -> dict:
        """Stable tensor/op names to feed and fetch in the spliced graph and its checkpoint."""
        return {"input": self.input.name, "bottleneck": self.bottlenecks[0].name,
                "bottlenecks": [t.name for t in self.bottlenecks], "labels": self.labels.name,
                "is_training": self.is_training.name, "logits": self.logits.name,
                "probabilities": self.probabilities.name, "loss": self.loss.name,
                "accuracy": self.accuracy.name, "train_op": self.train_op.name}


def _free_scope(graph_def, scope: str) -> str:
    taken = {n.name.split("/")[0] for n in graph_def.node}
    name, k = scope, 0
    while name in taken:
        k += 1
        name = f"{scope}_{k}"
    return name


def _model_input(at):
    """The one Placeholder the splice tensor depends on (the data goes there)."""
    graph = at.graph
    found = [graph.get_tensor_by_name(name + ":0") for name in sorted(g.ancestors(graph, [at], control=False))
             if graph.get_operation_by_name(name).type == "Placeholder"]
    if len(found) != 1:
        names = ", ".join(t.name for t in found) or "none"
        raise SurgeryError(f"'{at.name}' depends on {len(found)} inputs ({names}); finetune feeds exactly one",
                           "splice above a tensor computed from a single input")
    return found[0]


def splice(model, at: str, head, *, train_scopes=(), optimizer: str = "adam", lr: float = 1e-3,
           scope: str = "head", seed: int = 0) -> Splice:
    """Import `model` into a fresh graph and splice `head` above tensor `at`.

    `head`: a spec string (`dense:256:relu,dropout:0.5,dense:5`), a list of layers (`Dense`,
    `Dropout`, `Flatten`, or any callable tensor → tensor), or a callable `(x, is_training) → logits`.
    The last layer's width is the number of classes. `model` is never modified.
    """
    if optimizer not in OPTIMIZERS:
        raise SurgeryError(f"unknown optimizer '{optimizer}'", "use one of: " + ", ".join(OPTIMIZERS))
    if model.format == "saved_model_tf2" and model.variable_keys is None:
        raise SurgeryError(f"{model.path} is a TF2 SavedModel, whose variables live in functions",
                           "freeze it first (`surgery freeze MODEL --outputs T --out m.pb`) and fine-tune the .pb")
    at_tensor = resolve_tensor(model.graph, at)
    if not at_tensor.dtype.is_floating:
        raise SurgeryError(f"cannot splice above '{at_tensor.name}': it is {at_tensor.dtype.name}, not floating point",
                           "splice above a float activation such as fc7")
    graph_def = model.meta_graph_def.graph_def if model.meta_graph_def is not None else model.graph_def
    scope = _free_scope(graph_def, scope)
    if train_scopes and model.is_frozen:
        raise SurgeryError(f"{model.path} is frozen: it has no variables to open with --train-scopes",
                           "fine-tune from the checkpoint instead, or drop --train-scopes")
    opened, fixed = opened_variables(graph_def, train_scopes, model.trainable_names()) if train_scopes else ([], [])
    boundary, region = find_boundary(graph_def, at_tensor.name, opened)
    shapes = {t: (model.graph.get_tensor_by_name(t).dtype, model.graph.get_tensor_by_name(t).shape) for t in boundary}
    new_def, bottleneck_names = insert_boundary(graph_def, boundary, region, shapes, scope)

    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(seed)
        if model.meta_graph_def is not None:
            meta = v1.MetaGraphDef()
            meta.CopyFrom(model.meta_graph_def)
            meta.graph_def.CopyFrom(new_def)
            v1.train.import_meta_graph(meta, clear_devices=True)
        else:
            tf.import_graph_def(new_def, name="")
        original = list(graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES))
        var_ops = {n.name for n in new_def.node if n.op in VARIABLE_OP_TYPES}
        if {v.op.name for v in original} != var_ops:
            missing = sorted(var_ops - {v.op.name for v in original})
            raise SurgeryError(f"{model.path}: variable '{missing[0]}' is not in the graph's variable collections",
                               "save the model with tf.compat.v1.train.Saver, or freeze it and fine-tune the .pb")
        at_new = graph.get_tensor_by_name(at_tensor.name)
        bottlenecks = [graph.get_tensor_by_name(n) for n in bottleneck_names]
        model_input = _model_input(at_new)
        before = set(graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES))
        with v1.variable_scope(scope) as head_scope:
            is_training = v1.placeholder_with_default(False, [], name="is_training")
            labels = v1.placeholder(tf.int64, [None], name="labels")
            x = bottlenecks[0] if not opened else at_new
            x = flatten(x)
            out = _build_head(head, x, is_training)
            if out.shape.rank != 2 or out.shape[-1] is None:
                raise SurgeryError(f"the head's output has shape {out.shape}, not [batch, classes]",
                                   "end the head with a dense layer whose units are the number of classes")
            num_classes = int(out.shape[-1])
            logits = tf.identity(out, name="logits")
            probabilities = tf.nn.softmax(logits, name="probabilities")
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits),
                                  name="loss")
            accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1), labels), tf.float32), name="accuracy")
        head_vars = [v for v in graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES) if v not in before]
        if not head_vars:
            raise SurgeryError("the head has no variables to train", "give it at least one dense layer")
        by_name = {v.op.name: v for v in original}
        opened_vars = [by_name[n] for n in opened]
        before_opt = set(graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES))
        with v1.variable_scope(head_scope, auxiliary_name_scope=False):
            step = v1.get_variable("step", [], tf.int64, initializer=v1.zeros_initializer(), trainable=False)
        # Outside the variable scope, so slots are named after their variable (`head/dense/kernel/Adam`).
        with tf.name_scope(head_scope.original_name_scope):
            opt = make_optimizer(optimizer, lr, graph, head_vars + opened_vars)
            update = opt.minimize(loss, var_list=head_vars + opened_vars, global_step=step)
            train_op = tf.group(update, name="train_op")
        opt_vars = [v for v in graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES) if v not in before_opt]
    return Splice(graph=graph, scope=scope, at=at_new, input=model_input, bottlenecks=bottlenecks,
                  boundary=boundary, labels=labels, is_training=is_training, logits=logits,
                  probabilities=probabilities, loss=loss, accuracy=accuracy, train_op=train_op,
                  num_classes=num_classes, head_variables=head_vars, opened_variables=opened_vars, fixed_variables=fixed,
                  original_variables=original, optimizer_variables=opt_vars)


__all__ = ["Dense", "Dropout", "Flatten", "Splice", "parse_head", "splice", "find_boundary", "insert_boundary"]
