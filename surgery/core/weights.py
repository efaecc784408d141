"""Weights: one reader for every place variable values come from, and the model's own Saver.

A `WeightSource` lists tensors by the names maps and regexes see (`keys()`, `shape(key)`,
`dtype(key)`) and reads one on demand (`read(key)`):
- TF checkpoints, V2 (`prefix.index` + `prefix.data-*`) and V1 (one file at `prefix`, beside its
  `.meta`, which TF1's Saver still restores); TF2 object-based keys lose their
  `/.ATTRIBUTES/VARIABLE_VALUE` tail;
- HDF5 weights files: one dataset per weight path, or Keras' legacy layout
  (`layer/layer/kernel:0`, found through the `layer_names`/`weight_names` attributes), or
  Keras 3's `.weights.h5` (`layers/<group>/vars/<i>`, named by a model's layers: `KerasWeights`);
- partitioned variables: stored keys `X/part_0..N` are also offered joined as one tensor `X`.

A damaged checkpoint (bad index, truncated or bit-flipped data) raises `CheckpointError` naming
the file and what is wrong, on opening or on the read that finds it, never a TensorFlow error.

`saver_for(model)` is the model's own Saver (its saved `saver_def` when the graph holds it,
else one keyed as the checkpoint stores each variable); `restore_checkpoint` runs a Saver's
restore with the same error translation.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import re

import numpy as np

from . import tfcompat
from .errors import CheckpointError, ModelLoadError

tf = tfcompat.tf
v1 = tf.compat.v1

TF2_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
PART = re.compile(r"^(.*)/part_(\d+)$")


# ---------------------------------------------------------------------------- checkpoint files

_TABLE_MAGIC = (0xDB4775248B80FB57).to_bytes(8, "little")  # the footer of TensorFlow's table files


def is_v1_checkpoint(prefix: str) -> bool:
    """A V1 checkpoint: one table file at `prefix` itself (no `.index`), as `Saver(write_version=V1)`
    writes. Told from other files by the table footer; a damaged V1 file still counts when its
    `.meta` is beside it (so the damage is reported, not the format)."""
    if os.path.exists(prefix + ".index") or not os.path.isfile(prefix):
        return False
    if os.path.exists(prefix + ".meta"):
        return True
    try:
        with open(prefix, "rb") as f:
            f.seek(0, 2)
            if f.tell() < 48:
                return False
            f.seek(-8, 2)
            return f.read(8) == _TABLE_MAGIC
    except OSError:
        return False


def is_checkpoint(prefix: str) -> bool:
    """True when `prefix` names a checkpoint (V2 index, or a V1 data file)."""
    return os.path.exists(prefix + ".index") or is_v1_checkpoint(prefix)


def latest_checkpoint(directory: str) -> str | None:
    """The prefix `directory`'s `checkpoint` state file names, found again when the directory was
    moved (the file keeps absolute paths); else the newest `.index`/`.meta` there.

    The state file is read here rather than with `tf.train.latest_checkpoint`, whose ERROR line
    about a vanished path would reach the user's terminal though nothing is wrong; the stale path
    is logged at INFO (`-v` shows it)."""
    try:  # the CheckpointState text proto: `model_checkpoint_path: "…"`
        with open(os.path.join(directory, "checkpoint"), encoding="utf-8") as f:
            found = re.search(r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', f.read(), re.M)
        prefix = re.sub(r"\\(.)", r"\1", found.group(1)) if found else None
    except (OSError, UnicodeDecodeError):  # no state file, or a corrupt one: fall back to scanning
        prefix = None
    if prefix:
        named = prefix if os.path.isabs(prefix) else os.path.join(directory, prefix)
        if is_checkpoint(named) or os.path.exists(named + ".meta"):
            return named
        moved = os.path.join(directory, os.path.basename(prefix))
        usable = is_checkpoint(moved) or os.path.exists(moved + ".meta")
        logging.getLogger(__name__).info("%s/checkpoint names %s, which does not exist; using %s", directory,
                                         prefix, moved if usable else "the newest checkpoint there")
        if usable:
            return moved
    # a prefix that ends in `/` names files `.index`, `.meta`: hidden, so glob's `*` would miss them
    candidates = [os.path.join(directory, f) for f in os.listdir(directory) if f.endswith((".index", ".meta"))]
    if not candidates:
        return None
    newest = max(candidates, key=os.path.getmtime)
    return newest[: newest.rindex(".")]  # not splitext: it keeps `.meta` whole for the prefix `dir/`


def _damage(message: str) -> str:
    """What a TensorFlow error about a checkpoint file means, in words."""
    low = message.lower()
    if "checksum" in low or "crc" in low:
        return "a checksum does not match (the bytes are damaged)"
    if "less bytes" in low or "fewer bytes" in low or "truncat" in low or "out of range" in low:
        return "it is truncated (shorter than its index says)"
    if "magic" in low or "corrupt" in low or "not an sstable" in low:
        return "it is not a readable checkpoint table (corrupt or another format)"
    return message.strip().splitlines()[0][:160] if message.strip() else "it cannot be read"


def _checkpoint_error(prefix: str, e: BaseException, what: str = "") -> CheckpointError:
    message = getattr(e, "message", None) or str(e) or type(e).__name__
    path = next((p for p in re.findall(r"(/[^\s:;()]+)", message) if p.startswith(prefix)), None)
    where = path or (prefix if is_v1_checkpoint(prefix) else f"checkpoint {prefix}")
    return CheckpointError(f"{where}{what} cannot be read: {_damage(message)}",
                           "its .index or .data files are damaged; copy them again or save the checkpoint again")


def open_checkpoint(prefix: str):
    """TensorFlow's `CheckpointReader` for `prefix` (V1 or V2), checked: every data shard the
    index needs is present, and the index opens; else `CheckpointError` naming the file."""
    if is_v1_checkpoint(prefix):
        try:
            return v1.train.NewCheckpointReader(prefix)
        except Exception as e:
            raise _checkpoint_error(prefix, e) from e
    if not os.path.exists(prefix + ".index"):
        raise ModelLoadError(f"checkpoint {prefix} has no index file ({prefix}.index)",
                             "pass the checkpoint prefix, without .index/.data suffixes")
    shards = glob.glob(glob.escape(prefix) + ".data-*-of-*")
    expected = {f"{prefix}.data-{i:05d}-of-{int(shards[0].rsplit('-of-', 1)[1]):05d}"
                for i in range(int(shards[0].rsplit("-of-", 1)[1]))} if shards else {prefix + ".data-00000-of-00001"}
    missing = sorted(expected - set(shards))
    if missing:
        raise CheckpointError(f"checkpoint {prefix} is missing its data shard {missing[0]}",
                              "copy every .data-* file saved with the .index, or save the checkpoint again")
    try:
        return v1.train.NewCheckpointReader(prefix)
    except Exception as e:
        raise _checkpoint_error(prefix + ".index", e) from e


def restore_checkpoint(saver, sess, prefix: str) -> None:
    """`saver.restore(sess, prefix)`, with a damaged file reported as `CheckpointError`."""
    try:
        saver.restore(sess, prefix)
    except (tf.errors.DataLossError, tf.errors.OutOfRangeError, tf.errors.InternalError) as e:
        raise _checkpoint_error(prefix, e) from e


# ---------------------------------------------------------------------------- sources

@dataclasses.dataclass(frozen=True)
class SourceTensor:
    """One tensor a source offers, under the name maps and regexes see (`key`).

    `stored` is the key in the file; `parts` (with `axis`) lists stored keys joined into one
    tensor when the file holds `key/part_0..N` instead of `key`.
    """

    key: str
    shape: tuple
    dtype: str
    stored: str = ""
    parts: tuple = ()
    axis: int = 0
    part_shapes: tuple = ()

    def joined_to_fit(self, shape) -> "SourceTensor":
        """Equal-shaped parts give no axis away: join along the axis that makes `shape`."""
        if not self.part_shapes or len(shape) != len(self.shape):
            return self
        for axis in range(len(shape)):
            dims = list(self.part_shapes[0])
            dims[axis] = sum(s[axis] for s in self.part_shapes)
            if tuple(dims) == tuple(shape) and all(
                    s[:axis] + s[axis + 1:] == self.part_shapes[0][:axis] + self.part_shapes[0][axis + 1:]
                    for s in self.part_shapes):
                return dataclasses.replace(self, shape=tuple(dims), axis=axis)
        return self


class WeightSource:
    """A checkpoint or HDF5 weights file: its tensors' names, shapes and dtypes, read lazily.

    `tensors` maps each key to its `SourceTensor`; `read` also takes a key as stored in the
    file (a TF2 object path with its suffix, a `/part_N` piece)."""

    kind = ""
    path = ""
    prefix = None
    tensors: dict  # key -> SourceTensor
    stored: dict  # stored key -> SourceTensor

    def keys(self) -> list[str]:
        return sorted(self.tensors)

    def _tensor(self, key: str) -> SourceTensor:
        t = self.tensors.get(key) or self.stored.get(key)
        if t is None:
            raise KeyError(key)
        return t

    def has(self, key: str) -> bool:
        return key in self.tensors or key in self.stored

    def shape(self, key: str) -> tuple:
        return self._tensor(key).shape

    def dtype(self, key: str) -> str:
        return self._tensor(key).dtype

    def read(self, key: str) -> np.ndarray:
        t = self._tensor(key)
        if t.parts:
            return np.concatenate([self._read_stored(p) for p in t.parts], axis=t.axis)
        return self._read_stored(t.stored)

    def _read_stored(self, stored: str) -> np.ndarray:
        raise NotImplementedError


class CheckpointSource(WeightSource):
    kind = "checkpoint"

    def __init__(self, prefix: str, path: str | None = None):
        self.prefix = prefix
        self.path = path or prefix
        self._reader = open_checkpoint(prefix)
        shapes = self._reader.get_variable_to_shape_map()
        dtypes = self._reader.get_variable_to_dtype_map()
        raw, self.stored = {}, {}
        for stored, shape in shapes.items():
            if stored == OBJECT_GRAPH_KEY:
                continue
            key = stored[: -len(TF2_SUFFIX)] if stored.endswith(TF2_SUFFIX) else stored
            raw[key] = self.stored[stored] = SourceTensor(key, tuple(shape), dtypes[stored].name, stored)
        self.tensors = _join_parts(raw)

    def _read_stored(self, stored: str) -> np.ndarray:
        try:
            return self._reader.get_tensor(stored)
        except (tf.errors.OpError, IndexError, ValueError) as e:
            raise _checkpoint_error(self.prefix, e, f" (tensor '{stored}')") from e

    def object_graph(self) -> bytes | None:
        """The serialized TF2 object graph of an object-based checkpoint, or None."""
        return self._reader.get_tensor(OBJECT_GRAPH_KEY) if self._reader.has_tensor(OBJECT_GRAPH_KEY) else None


class HDF5Weights(WeightSource):
    kind = "hdf5"

    def __init__(self, path: str):
        import h5py

        self.path = path
        try:
            with h5py.File(path, "r") as f:
                raw = _hdf5_tensors(f)
        except OSError as e:
            raise ModelLoadError(f"{path} cannot be read as HDF5: {e}", "pass an HDF5 weights file or a checkpoint") from e
        if not raw:
            raise ModelLoadError(f"{path} holds no datasets", "pass an HDF5 file with one dataset per weight")
        self.stored = {t.stored: t for t in raw.values()}
        self.tensors = _join_parts(raw)

    def _read_stored(self, stored: str) -> np.ndarray:
        import h5py

        with h5py.File(self.path, "r") as f:
            return np.asarray(f[stored][()])


class KerasWeights(WeightSource):
    """Keras 3's own weights file (`model.save_weights('x.weights.h5')`): each layer's
    variables as `layers/<group>/vars/<i>`, the layer's name on the `vars` group, no variable
    names. Keys are `LAYER/vars/I` (`outer/inner/vars/I` inside a nested model) until
    `named_for` maps them to a model's variables by layer name and order, as Keras's
    `load_weights` does. The optimizer's state is not a weight and is left out."""

    kind = "keras_weights"

    def __init__(self, path: str):
        import h5py

        self.path = path
        raw = {}
        try:
            with h5py.File(path, "r") as f:
                def visit(name, obj):
                    parts = name.split("/")
                    if not (isinstance(obj, h5py.Dataset) and len(parts) >= 2 and parts[-2] == "vars"
                            and parts[-1].isdigit() and parts[0] == "layers"):
                        return
                    key = "/".join(_keras_layer_chain(f, parts[:-2]) + ["vars", parts[-1]])
                    raw[key] = SourceTensor(key, tuple(obj.shape), tf.as_dtype(obj.dtype).name, obj.name)

                f.visititems(visit)
        except OSError as e:
            raise ModelLoadError(f"{path} cannot be read as HDF5: {e}", "pass a Keras .weights.h5 file") from e
        self.tensors = raw
        self.stored = {t.stored: t for t in raw.values()}

    def named_for(self, declared: list | None) -> WeightSource:
        """This file keyed by the variables of a model whose `declared_variables` (Keras's own
        order: each layer's trainable, then non-trainable variables) are given: `vars/I` of
        layer L is the I-th variable under `L/`. A key no layer takes keeps its `L/vars/I`."""
        if not declared:
            raise ModelLoadError(f"{self.path} is a Keras 3 weights file: its variables are known by layer "
                                 "and position only, so it loads into a Keras model",
                                 "restore into the .keras file or model.export SavedModel these weights "
                                 "belong to, or save them with a TF checkpoint")
        by_layer: dict[str, list[str]] = {}
        for name, *_ in declared:
            by_layer.setdefault(name.rpartition("/")[0], []).append(name)
        named = KerasWeights.__new__(KerasWeights)
        named.path, named.tensors = self.path, {}
        for key, t in self.tensors.items():
            chain, index = key.split("/vars/")
            layers = chain.split("/")
            # a nested model's name is no part of its layers' variable names; a sublayer's is
            owner = next(("/".join(layers[i:]) for i in range(len(layers)) if "/".join(layers[i:]) in by_layer), None)
            names = by_layer.get(owner, [])
            name = names[int(index)] if int(index) < len(names) else key
            named.tensors[name] = dataclasses.replace(t, key=name)
        named.stored = self.stored
        return named

    def _read_stored(self, stored: str) -> np.ndarray:
        import h5py

        with h5py.File(self.path, "r") as f:
            return np.asarray(f[stored][()])


def is_keras_weights_file(f) -> bool:
    """Keras 3's `.weights.h5` layout: a `layers` group of `…/vars/<i>` datasets, no
    `layer_names` (the legacy layout's)."""
    import h5py

    return isinstance(f.get("layers"), h5py.Group) and not _hdf5_attr_list(f, "layer_names") \
        and "model_weights" not in f


def _keras_layer_chain(f, parts: list[str]) -> list[str]:
    """Layer names along `layers/<group>/layers/<group>/…`: each group's `vars` names its layer."""
    chain = []
    for end in range(2, len(parts) + 1, 2):
        vars_group = f.get("/".join(parts[:end] + ["vars"]))
        name = vars_group.attrs.get("name") if vars_group is not None else None
        name = name.decode() if isinstance(name, bytes) else name
        chain.append(str(name or parts[end - 1]))
    return chain


def _hdf5_attr_list(group, name: str) -> list[str]:
    """A Keras string-list attribute, which Keras splits into `name0`, `name1`, … when large."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, i = [], 0
        while f"{name}{i}" in group.attrs:
            values.extend(group.attrs[f"{name}{i}"])
            i += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _hdf5_tensors(f) -> dict:
    """Keras files (`layer_names` on the root or `model_weights`): each weight under its
    `weight_names` entry (`dense/kernel:0` → key `dense/kernel`). Any other file: every dataset
    under its path, a trailing `:0` dropped."""
    import h5py

    root = f["model_weights"] if "model_weights" in f and isinstance(f["model_weights"], h5py.Group) else f
    raw = {}

    def add(key, stored, ds):
        key = re.sub(r":\d+$", "", key.strip("/"))
        raw[key] = SourceTensor(key, tuple(ds.shape), tf.as_dtype(ds.dtype).name, stored)

    layer_names = _hdf5_attr_list(root, "layer_names")
    if layer_names:
        for layer in layer_names + ["top_level_model_weights"]:
            if layer not in root:
                continue
            for weight in _hdf5_attr_list(root[layer], "weight_names"):
                ds = root[layer][weight]
                add(weight, ds.name, ds)
        return raw

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "fiub":
            add(name, obj.name, obj)

    f.visititems(visit)
    return raw


def _join_parts(raw: dict) -> dict:
    """Add one tensor `X` for every complete run `X/part_0..N` (and no `X` already there).
    The parts are joined along the one axis where their shapes differ (axis 0 when equal,
    as TF's partitioners split)."""
    groups: dict[str, dict[int, SourceTensor]] = {}
    for key, t in raw.items():
        m = PART.match(key)
        if m:
            groups.setdefault(m.group(1), {})[int(m.group(2))] = t
    out = dict(raw)
    for base, parts in groups.items():
        if base in raw or sorted(parts) != list(range(len(parts))):
            continue
        ordered = [parts[i] for i in range(len(parts))]
        shapes = [p.shape for p in ordered]
        if len({len(s) for s in shapes}) != 1 or not shapes[0] or len({p.dtype for p in ordered}) != 1:
            continue
        differ = [a for a in range(len(shapes[0])) if len({s[a] for s in shapes}) > 1]
        if len(differ) > 1:
            continue
        axis = differ[0] if differ else 0
        shape = list(shapes[0])
        shape[axis] = sum(s[axis] for s in shapes)
        out[base] = SourceTensor(base, tuple(shape), ordered[0].dtype, "", tuple(p.stored for p in ordered), axis,
                                 tuple(shapes))
    return out


def open_weights(path) -> WeightSource:
    """A checkpoint (prefix, `.index`/`.data-*`/`.meta` file, directory, or a SavedModel
    directory's `variables/variables`; V1 or V2) or an HDF5 weights file."""
    if isinstance(path, WeightSource):
        return path
    import h5py

    path = os.fspath(path)
    if os.path.isdir(path):
        saved_model_variables = os.path.join(path, "variables", "variables")
        if os.path.exists(saved_model_variables + ".index"):  # a SavedModel's checkpoint
            return CheckpointSource(saved_model_variables, path)
        prefix = latest_checkpoint(path)
        if prefix is None or not is_checkpoint(prefix):
            raise ModelLoadError(f"{path} holds no checkpoint", "pass a checkpoint prefix, its directory or an HDF5 file")
        return CheckpointSource(prefix, path)
    if os.path.isfile(path) and h5py.is_hdf5(path):
        try:
            with h5py.File(path, "r") as f:
                keras3 = is_keras_weights_file(f)
        except OSError as e:
            raise ModelLoadError(f"{path} cannot be read as HDF5: {e}", "pass an HDF5 weights file or a checkpoint") from e
        return KerasWeights(path) if keras3 else HDF5Weights(path)
    prefix = re.sub(r"\.(index|meta|data-\d+-of-\d+)$", "", path)
    if is_checkpoint(prefix):
        return CheckpointSource(prefix, path)
    if path.endswith(".keras"):
        raise ModelLoadError(f"{path} is a Keras archive (a zip), not a weights file",
                             "load it with keras and save_weights to a legacy .h5, or model.save('model.h5')")
    if os.path.exists(path):
        raise ModelLoadError(f"{path} is neither a TF checkpoint nor an HDF5 file",
                             "pass a checkpoint prefix (dir/model.ckpt-1000), its directory, or an .h5 weights file")
    raise ModelLoadError(f"no such checkpoint or file: {path}", "check the path; a checkpoint is named by its prefix")


# ---------------------------------------------------------------------------- a model's weights

def model_weights(model) -> CheckpointSource:
    """`model`'s checkpoint as a source (opened once per model); `ModelLoadError` without one."""
    if not model.checkpoint:
        raise ModelLoadError(f"{model.path} has no checkpoint with variable values",
                             "pass the checkpoint prefix (or its directory) instead of the graph alone")
    cache = model._reader_cache
    if cache.get("prefix") != model.checkpoint:
        cache.clear()
        cache.update(prefix=model.checkpoint, source=CheckpointSource(model.checkpoint, model.path))
    return cache["source"]


def variable_reader(model, *, hint: str = "restore it first with `surgery restore`, or freeze above it"):
    """`read(variable op name) -> ndarray` from `model`'s checkpoint, keyed as its saver stores
    each variable; `read.shapes` gives every variable's stored shape (None when absent) so a bad
    checkpoint is found before anything is written. None for a model without a checkpoint."""
    if not model.checkpoint:
        return None
    source = model_weights(model)
    keys = model.checkpoint_keys()

    def read(name):
        key = keys.get(name, name)
        if not source.has(key):
            raise ModelLoadError(f"variable '{name}' has no value in checkpoint {model.checkpoint} (key '{key}')", hint)
        return source.read(key)

    read.shapes = {name: source.shape(key) if source.has(key) else None
                   for name, key in ((n, keys.get(n, n)) for n in keys)}
    return read


def saver_for(model, graph=None, *, fallback: bool = True):
    """The model's own Saver in `graph` (default `model.graph`, which must hold the model's
    variables under their own names): its saved `saver_def` when the graph holds that saver's
    ops, else a V2 Saver over the model's variables keyed as its checkpoint stores them (TF1
    names, remapped names, a TF2 SavedModel's object paths; partitions as slices of one tensor).
    With `fallback=False`, None when there is no saved saver to reuse."""
    graph = graph if graph is not None else model.graph
    meta = model.meta_graph_def
    saver_def = meta.saver_def if meta is not None and meta.HasField("saver_def") else None
    if model.variable_keys is None and saver_def is not None and saver_def.restore_op_name \
            and saver_def.save_tensor_name:
        try:
            graph.get_operation_by_name(saver_def.restore_op_name.split(":")[0])
            graph.get_tensor_by_name(saver_def.filename_tensor_name)
            with graph.as_default():
                return v1.train.Saver(saver_def=saver_def)
        except (KeyError, ValueError):
            pass
    if not fallback:
        return None
    keys = model.checkpoint_keys()
    own = {v.name for v in model.variables()}
    var_list: dict = {}
    for var in graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES):
        if var.op.name not in own:
            continue
        info = var._save_slice_info
        if info is not None:
            var_list.setdefault(info.full_name, []).append(var)
        else:
            var_list[keys.get(var.op.name, var.op.name)] = var
    with graph.as_default():
        return v1.train.Saver(var_list=var_list, write_version=v1.train.SaverDef.V2)


@dataclasses.dataclass(frozen=True)
class CheckpointCopy:
    """A tensor for `write_checkpoint` to copy from another checkpoint inside TensorFlow
    (RestoreV2 into SaveV2: bit for bit, and never a numpy copy)."""

    prefix: str
    stored: str
    nbytes: int

    @classmethod
    def of(cls, source: "CheckpointSource", key: str) -> "CheckpointCopy":
        t = source._tensor(key)
        if t.parts:
            raise ValueError(f"'{key}' is stored in parts")
        return cls(source.prefix, t.stored, int(np.prod(t.shape, dtype=np.int64)) * tf.as_dtype(t.dtype).size)


def write_checkpoint(prefix: str, tensors, *, base: str | None = None, shard_bytes: int = 64 << 20,
                     progress: bool = False) -> str:
    """Write a V2 checkpoint at `prefix` from `tensors`, `(key, dtype, value)` triples whose
    value is a `CheckpointCopy` or a callable giving the array, about `shard_bytes` at a time:
    each run of values is saved as its own bundle (SaveV2) and the bundles are merged at the end
    (MergeV2Checkpoints, which renames data files rather than copying). A `Saver` holds every
    value at once; here memory peaks at one shard (or the largest tensor). `base`: a V2
    checkpoint whose every tensor goes in as it is, its files linked (or copied) in, never read.
    Returns `prefix`."""
    import shutil

    from tqdm import tqdm

    graph = tf.Graph()
    with graph.as_default():
        shard_prefix = v1.placeholder(tf.string, [])
        sources, targets = v1.placeholder(tf.string, [None]), v1.placeholder(tf.string, [])
        merge = tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=sources, destination_prefix=targets,
                                              delete_old_dirs=True)
    shards_dir = f"{prefix}.shards"
    shards, pending, size = [], [], 0
    if base:
        os.makedirs(shards_dir, exist_ok=True)
        shards.append(os.path.join(shards_dir, "base"))
        for f in glob.glob(glob.escape(base) + ".data-*") + [base + ".index"]:
            try:
                os.link(f, shards[0] + f[len(base):])
            except OSError:
                shutil.copyfile(f, shards[0] + f[len(base):])
    with v1.Session(graph=graph) as sess:
        def flush():
            feeds, values = {}, []
            with graph.as_default():
                for _, dtype, value in pending:
                    if isinstance(value, CheckpointCopy):
                        values.append(tf.raw_ops.RestoreV2(prefix=value.prefix, tensor_names=[value.stored],
                                                           shape_and_slices=[""], dtypes=[dtype])[0])
                    else:
                        values.append(v1.placeholder(tf.as_dtype(dtype)))
                        feeds[values[-1]] = value
                save = tf.raw_ops.SaveV2(prefix=shard_prefix, tensor_names=[k for k, _, _ in pending],
                                         shape_and_slices=[""] * len(pending), tensors=values)
            shards.append(os.path.join(shards_dir, f"part-{len(shards):05d}"))
            sess.run(save, {shard_prefix: shards[-1], **feeds})

        for key, dtype, value in tqdm(list(tensors), desc="write checkpoint", unit="var", leave=False,
                                      disable=not progress):
            if not isinstance(value, CheckpointCopy):
                value = np.asarray(value())
            if pending and size + value.nbytes > shard_bytes:
                flush()
                pending, size = [], 0
            pending.append((key, dtype, value))
            size += value.nbytes
        if pending:
            flush()
        sess.run(merge, {sources: shards, targets: prefix})
    if os.path.isdir(shards_dir):
        os.rmdir(shards_dir)
    return prefix


__all__ = ["WeightSource", "CheckpointSource", "HDF5Weights", "KerasWeights", "SourceTensor", "open_weights", "open_checkpoint",
           "restore_checkpoint", "latest_checkpoint", "is_checkpoint", "model_weights", "variable_reader",
           "saver_for", "write_checkpoint", "CheckpointCopy"]
