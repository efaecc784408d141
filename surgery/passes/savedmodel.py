"""SavedModels that keep their variables: the way out for a piece past protobuf's 2 GB limit.

A frozen GraphDef holds its weights inside the proto, so it cannot pass 2 GB; a recommender's
user-embedding table (9M users × 64 floats = 2.3 GB) does. TensorFlow's own answer is a
SavedModel whose weights stay in `variables/` beside a small graph. TF's own path to one
(`saved_model.Builder` after a full `Saver.restore`) holds every weight in a session, then saves
it; here the piece's graph keeps its variable ops, and `variables/` is written tensor by tensor
straight from the source checkpoint (`weights.variable_reader`): each group of tensors up to
`SHARD_BYTES` (or one larger tensor) is saved by TensorFlow's own `SaveV2` as a shard, and
`MergeV2Checkpoints` joins the shards into one checkpoint. Peak memory is about the largest
variable. The SavedModel is TF1-style (tag `serve`, a Saver, a `serving_default` signature), the
form TF Serving, `tf.saved_model.load` and `tf.compat.v1.saved_model.load` all read.
"""

from __future__ import annotations

import os
import re
import shutil

from ..core import graph as g
from ..core import tfcompat
from ..core.errors import OutputError, SurgeryError
from ..core.names import VARIABLE_OP_TYPES, node_input_op, resolve_tensors
from ..core.pieces import Piece
from ..core.weights import variable_reader
from .freeze import STATE_WRITING_OPS, check_cut_is_clean, drop_machinery_control_inputs, tensor_infos

tf = tfcompat.tf
v1 = tf.compat.v1

SIGNATURE = "serving_default"
FORMATS = ("auto", "frozen", "savedmodel")
LIMIT_ENV = "SURGERY_2GB_LIMIT"  # tests only: a small size past which `auto` writes SavedModels
SHARD_BYTES = 64 << 20
_INIT_SCOPE = "surgery_init"


def frozen_limit() -> int:
    """Bytes past which `--format auto` writes a SavedModel: protobuf's 2 GB, or `$SURGERY_2GB_LIMIT`
    (set by tests to exercise the SavedModel path on small graphs)."""
    value = os.environ.get(LIMIT_ENV)
    return int(value) if value else g.MAX_GRAPHDEF_BYTES


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


def signature(graph, inputs: list, outputs: list) -> tuple:
    """(`serving_default` SignatureDef, {"inputs": {key: name}, "outputs": ...}) for tensors of
    `graph` given as names or `TensorSpec`s."""
    keys = {"inputs": {}, "outputs": {}}
    tensors = {"inputs": {}, "outputs": {}}
    taken = set()
    for kind, infos in (("inputs", inputs), ("outputs", outputs)):
        for info in infos:
            name = getattr(info, "name", info)
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
        raise SurgeryError("the graph to export has no outputs", "name them with --outputs")
    # build_signature_def, not predict_signature_def: a graph with no inputs (weights → answer,
    # a lookup table that is one Const) serves with an empty input signature.
    sig = v1.saved_model.build_signature_def(
        inputs={k: v1.saved_model.build_tensor_info(t) for k, t in tensors["inputs"].items()},
        outputs={k: v1.saved_model.build_tensor_info(t) for k, t in tensors["outputs"].items()},
        method_name=v1.saved_model.signature_constants.PREDICT_METHOD_NAME)
    return sig, keys


def variable_piece(model, outputs, *, inputs=()) -> Piece:
    """`model` pruned to `outputs`, cut at `inputs` into placeholders, variables kept as variables
    (only those the outputs use). The same cut and prune as `freeze_model`; no weight is read."""
    graph = model.graph
    out_tensors = outputs if outputs and hasattr(outputs[0], "op") else resolve_tensors(graph, outputs)
    in_tensors = inputs if inputs and hasattr(inputs[0], "op") else resolve_tensors(graph, inputs or [])
    if not out_tensors:
        raise SurgeryError("no outputs given", "name the tensors to keep with --outputs, e.g. --outputs predictions")
    gd, replaced = g.cut(model.graph_def, in_tensors)
    gd = drop_machinery_control_inputs(gd)
    out_names = [replaced.get(t.name, t.name) for t in out_tensors]
    gd = g.prune(gd, out_names)
    check_cut_is_clean(gd, in_tensors, replaced)
    for node in gd.node:
        if node.op in STATE_WRITING_OPS:
            raise SurgeryError(f"cannot export '{node.name}' ({node.op}): it writes a variable the outputs need",
                               "export only the inference part: name outputs that do not depend on training ops")
    protected = {node_input_op(n) for n in out_names} | {node_input_op(p) for p in replaced.values()}
    gd = g.clear_devices(g.bypass(gd, lambda n: n.op == "CheckNumerics", keep=protected))
    read = None
    if any(n.op in VARIABLE_OP_TYPES for n in gd.node):
        read = variable_reader(model)
        if read is None:
            raise SurgeryError(f"{model.path} has variables but no checkpoint to read them from",
                               "pass the checkpoint prefix or directory, not the .meta alone")
        for node in gd.node:
            if node.op in VARIABLE_OP_TYPES:
                _check_stored_shape(node, read, model.checkpoint)
    infos = tensor_infos(gd, out_names)
    return Piece(gd, infos[0], infos[1], format="savedmodel", cut=replaced, read_variable=read)


def _check_stored_shape(variable, read, checkpoint) -> None:
    """The checkpoint must hold `variable` with the shape the graph declares (unknown dims: any),
    found before anything is written."""
    found = read.shapes.get(variable.name)
    if found is None:
        read(variable.name)  # raises, naming the variable with no value
    declared = [d.size for d in variable.attr["shape"].shape.dim]
    if not variable.attr["shape"].shape.unknown_rank and (
            len(declared) != len(found) or any(d not in (-1, f) for d, f in zip(declared, found))):
        raise SurgeryError(f"variable '{variable.name}' has shape {list(found)} in checkpoint {checkpoint} "
                           f"but {declared} in the graph",
                           "restore it from a matching checkpoint with `surgery restore`")


# ---------------------------------------------------------------- writing

def _with_variables(graph_def):
    """A tf.Graph of `graph_def` whose variable ops are real `tf.Variable`s (in GLOBAL_VARIABLES,
    so a Saver saves them and `tf.saved_model.load` lifts them), each with a tiny zero initializer:
    their values come from `variables/`, never from the graph. `import_meta_graph` gives them a V2
    Saver keyed by op name, whose ops the SavedModel keeps. Returns (graph, saver_def, [names])."""
    base = g.graph_from_def(graph_def)
    defs = []
    with base.as_default(), tf.name_scope(_INIT_SCOPE):
        for op in base.get_operations():
            if op.type not in VARIABLE_OP_TYPES:
                continue
            resource = op.outputs[0].dtype == tf.resource
            dtype = tf.as_dtype(op.get_attr("dtype"))
            zeros = tf.zeros(op.get_attr("shape"), dtype)
            if resource:
                init = v1.raw_ops.AssignVariableOp(resource=op.outputs[0], value=zeros)
                snapshot = v1.raw_ops.ReadVariableOp(resource=op.outputs[0], dtype=dtype)
            else:
                init = v1.assign(op.outputs[0], zeros).op
                snapshot = op.outputs[0]
            defs.append(tfcompat.variable_def(
                variable_name=op.outputs[0].name, initializer_name=init.name, snapshot_name=snapshot.name,
                initial_value_name=zeros.name, is_resource=resource, trainable=True))
    meta = v1.MetaGraphDef()
    meta.graph_def.CopyFrom(base.as_graph_def())
    meta.collection_def[v1.GraphKeys.GLOBAL_VARIABLES].bytes_list.value.extend(d.SerializeToString() for d in defs)
    graph = tf.Graph()
    with graph.as_default():
        saver = v1.train.import_meta_graph(meta, clear_devices=True)
    names = sorted(v.op.name for v in graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES))
    return graph, saver.saver_def if saver is not None else None, names


class _StreamingSaver(v1.train.Saver):
    """A Saver whose `save` writes `variables/` from the source checkpoint, one shard at a time,
    instead of from a session (which would hold every weight). `saved_model.Builder` calls it."""

    def __init__(self, saver_def, names: list, read, progress: bool):
        super().__init__(saver_def=saver_def, allow_empty=True)
        self._names, self._read, self._progress = names, read, progress

    def save(self, sess, save_path, *args, **kwargs):
        write_checkpoint(save_path, self._names, self._read, progress=self._progress)
        return save_path


def write_checkpoint(prefix: str, names: list, read, *, progress: bool = False, shard_bytes: int = SHARD_BYTES):
    """Write a V2 checkpoint at `prefix` holding `read(name)` under each of `names`, tensor by tensor:
    tensors are gathered into shards of up to `shard_bytes` (a larger tensor is a shard of its
    own), each saved by `SaveV2` and dropped once saved; `MergeV2Checkpoints` then
    joins the shards' indexes. A write that fails (a full disk) raises `OutputError`."""
    from tqdm import tqdm

    shards_dir = prefix + "_shards"
    os.makedirs(shards_dir, exist_ok=True)
    shards, batch, size = [], [], 0
    try:
        with tqdm(total=len(names), unit="var", desc="variables", disable=None if progress else True,
                  leave=False) as bar:
            for name in names:
                value = read(name)
                if batch and size + value.nbytes > shard_bytes:
                    shards.append(_save_shard(shards_dir, len(shards), batch))
                    bar.update(len(batch))
                    batch, size = [], 0
                batch.append((name, value))
                size += value.nbytes
                del value
                if size >= shard_bytes:
                    shards.append(_save_shard(shards_dir, len(shards), batch))
                    bar.update(len(batch))
                    batch, size = [], 0
            if batch or not shards:
                shards.append(_save_shard(shards_dir, len(shards), batch))
                bar.update(len(batch))
            del batch
        _run_ops(lambda: v1.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=shards, destination_prefix=prefix,
                                                       delete_old_dirs=True), {})
    except tf.errors.OpError as e:
        raise OutputError(f"cannot write the variables at {prefix}: {(e.message or str(e)).splitlines()[0][:200]}",
                          "free some disk space or choose another output location; nothing was replaced") from e
    finally:
        shutil.rmtree(shards_dir, ignore_errors=True)


def _save_shard(directory: str, index: int, batch: list) -> str:
    """`SaveV2` of [(name, value)] at `directory/shard-N`; the values are fed, not copied into the graph."""
    prefix = os.path.join(directory, f"shard-{index:05d}")

    def build():
        values = [v1.placeholder(tf.as_dtype(v.dtype), v.shape, name=f"value{i}") for i, (_, v) in enumerate(batch)]
        return v1.raw_ops.SaveV2(prefix=prefix, tensor_names=[n for n, _ in batch],
                                 shape_and_slices=[""] * len(batch), tensors=values)

    _run_ops(build, {f"value{i}:0": v for i, (_, v) in enumerate(batch)})
    return prefix


def _run_ops(build, feeds: dict) -> None:
    graph = tf.Graph()
    with graph.as_default():
        op = build()
    with v1.Session(graph=graph) as sess:
        sess.run(op, feeds)


def write_saved_model(piece, directory: str, *, progress: bool = False) -> dict:
    """Write `piece` (a `savedmodel` `Piece`) as a SavedModel into the empty `directory`: `saved_model.pb`
    with tag `serve` and `serving_default`, variables kept, `variables/` written tensor by tensor.
    Returns the signature keys {"inputs": {key: name}, "outputs": ...}."""
    graph, saver_def, names = _with_variables(piece.graph_def)
    if saver_def is None:
        raise SurgeryError("the piece keeps no variables", "write it frozen (`--format frozen`)")
    with graph.as_default():
        sig, keys = signature(graph, piece.inputs, piece.outputs)
        saver = _StreamingSaver(saver_def, names, piece.read_variable, progress)
        builder = v1.saved_model.Builder(directory)
        with v1.Session(graph=graph) as sess:
            builder.add_meta_graph_and_variables(sess, [v1.saved_model.tag_constants.SERVING],
                                                 signature_def_map={SIGNATURE: sig}, strip_default_attrs=True,
                                                 saver=saver)
        builder.save()
    return keys


def load_session(directory: str, *, tags=("serve",)):
    """A v1 Session holding the SavedModel at `directory`, variables restored (names as saved)."""
    graph = tf.Graph()
    sess = v1.Session(graph=graph)
    try:
        with graph.as_default():
            v1.saved_model.loader.load(sess, list(tags), directory)
    except BaseException:
        sess.close()
        raise
    return sess


__all__ = ["variable_piece", "write_saved_model", "write_checkpoint", "load_session",
           "frozen_limit", "signature", "signature_key", "SIGNATURE", "FORMATS", "LIMIT_ENV"]
