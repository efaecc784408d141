"""One piece type: a graph with named inputs and outputs, ready to write or run, and the one
place that decides whether a path is a MODEL or a folder of pieces (`open_pieces`).

A `Piece` is what `freeze` returns, what `split` writes twice, what `precompute`, `export`,
the runtimes, Beam, Spark and `serve` run. Its graph is frozen (`format="frozen"`: weights are
constants) or keeps its variables (`"savedmodel"`: weights read through `read_variable` while
written, or from the SavedModel on disk). It is in memory, lazily filled, or on disk (`path`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np

from . import graph as g
from . import tfcompat
from .errors import SurgeryError
from .graph import empty_like
from .names import VARIABLE_OP_TYPES

tf = tfcompat.tf

FORMATS = ("frozen", "savedmodel")


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A tensor to feed or fetch: its name as after `tf.import_graph_def(graph_def, name="")`, its
    dtype's name and its shape (unknown dims None; None when even the rank is unknown)."""

    name: str
    dtype: str
    shape: tuple | None

    def __post_init__(self):
        if self.shape is not None and not isinstance(self.shape, tuple):
            object.__setattr__(self, "shape", tuple(self.shape))

    @classmethod
    def of(cls, tensor) -> TensorSpec:
        """The spec of a graph tensor (a reference dtype as its base: what a feed takes)."""
        shape = None if tensor.shape.rank is None else tuple(tensor.shape.as_list())
        return cls(tensor.name, tensor.dtype.base_dtype.name, shape)

    @classmethod
    def from_dict(cls, info: dict) -> TensorSpec:
        return cls(info["name"], info["dtype"], info.get("shape"))

    def as_dict(self) -> dict:
        """`{name, dtype, shape}`: the form of manifests and JSON reports."""
        return {"name": self.name, "dtype": self.dtype, "shape": None if self.shape is None else list(self.shape)}

    @property
    def op(self) -> str:
        return self.name.rsplit(":", 1)[0]


def specs(items) -> list[TensorSpec]:
    """TensorSpecs from specs, manifest dicts or tf.Tensors."""
    return [t if isinstance(t, TensorSpec) else TensorSpec.from_dict(t) if isinstance(t, dict) else TensorSpec.of(t)
            for t in items or ()]


class Piece:
    """A graph and the tensors to feed (`inputs`) and fetch (`outputs`), each a `TensorSpec`.

    - In memory, complete: `Piece(graph_def, inputs, outputs)`.
    - In memory, lazily filled: `freeze_graph` builds a `skeleton` whose variable constants are
      filled from `read_variable` only when written (`write_graph_def(piece, path)`) or when
      `graph_def` is first read, so a large model is never held three times.
    - Keeping its variables (`format="savedmodel"`): `graph_def` holds the variable ops and
      `read_variable` gives their values while `variables/` is written.
    - On disk (`path`: a `.pb`/`.pbtxt`, or a SavedModel directory): read on first use.

    `name` is its name in a manifest (`model`, `offline`, `online`); `source` the MODEL or file it
    came from; `cut` maps each source tensor the piece was cut at to the placeholder that replaced
    it (see `graph.cut`); `sha256` its content digest (see the property).
    """

    def __init__(self, graph_def=None, inputs=(), outputs=(), *, name: str = "model", format: str = "frozen",
                 path: str | None = None, skeleton=None, constants=None, read_variable=None, cut=None,
                 sha256: str | None = None, source: str | None = None):
        if format not in FORMATS:
            raise ValueError(f"format {format!r}: one of {FORMATS}")
        if graph_def is not None and skeleton is not None:
            raise ValueError("give a complete graph_def or a skeleton, not both")
        self.name, self.format, self.path = name, format, path
        self._graph_def = graph_def
        self._skeleton = skeleton
        # Const stub name -> the variable name to read its value with, or the source Const node holding it
        self._constants = dict(constants or {})
        self.read_variable = read_variable
        self.inputs = specs(inputs)
        self.outputs = specs(outputs)
        self.cut = dict(cut or {})
        self._sha256 = sha256
        self._on_disk = path is not None and skeleton is None  # the file is the piece (graph_def: its content)
        self.source = source or path  # provenance: the MODEL or file it came from
        # what freezing left out or skipped that the user should hear about (printed by the CLI)
        self.stripped_stateful, self.notes = [], []

    @classmethod
    def from_manifest(cls, directory: str, name: str, info: dict) -> Piece:
        """Piece `name` of a manifest in `directory` (its graph read on first use)."""
        path = os.path.join(directory, info["graph"])
        if info.get("format") == "keras":
            raise SurgeryError(f"{directory} holds Keras pieces (split --format keras): {info['graph']} is a "
                               "keras.Model file, not a graph piece",
                               f"pass the file itself as a MODEL ({path}), or load it with keras.models.load_model")
        return cls(inputs=info["inputs"], outputs=info["outputs"], name=name, path=path,
                   format="savedmodel" if os.path.isdir(path) else "frozen")

    def __repr__(self) -> str:
        where = f", path={self.path!r}" if self.path else ""
        return (f"Piece({self.name!r}, {self.format}, inputs={[t.name for t in self.inputs]}, "
                f"outputs={[t.name for t in self.outputs]}{where})")

    def manifest_entry(self, graph_file: str) -> dict:
        """This piece in a manifest, its graph written to `graph_file` (relative to the manifest)."""
        return {"graph": graph_file, "inputs": [t.as_dict() for t in self.inputs],
                "outputs": [t.as_dict() for t in self.outputs]}

    def with_io(self, inputs=None, outputs=None) -> Piece:
        """The same graph, fed at `inputs` and fetched at `outputs` (specs) where given."""
        other = Piece.__new__(Piece)
        other.__dict__.update(self.__dict__)
        other.inputs = specs(inputs) if inputs is not None else list(self.inputs)
        other.outputs = specs(outputs) if outputs is not None else list(self.outputs)
        return other

    def rewritten(self, rewrite, *, inputs=None, outputs=None) -> Piece:
        """A new in-memory piece whose structure is `rewrite(GraphDef) -> GraphDef` applied to this
        one's (nodes added or retyped; the held constants and variables untouched, so a lazily
        filled piece stays lazy), fed at `inputs` and fetched at `outputs` where given."""
        other = self.with_io(inputs, outputs)
        if self._skeleton is not None and self._graph_def is None:
            other._skeleton = rewrite(self._skeleton)
        else:
            other._graph_def, other._skeleton, other._constants = rewrite(self.graph_def), None, {}
        other._sha256, other._on_disk, other.path = None, False, None
        return other

    @property
    def sha256(self) -> str:
        """The piece's content digest: of its file(s) on disk as `manifest.piece_digest` reads them,
        else of the deterministic serialisation of its graph."""
        if self._sha256 is None:
            if self._on_disk:
                from .manifest import piece_digest

                self._sha256 = piece_digest(self.path)
            else:
                self._sha256 = hashlib.sha256(self.graph_def.SerializeToString(deterministic=True)).hexdigest()
        return self._sha256

    def load(self):
        """The piece as a loaded `Model` (its own graph and, for a SavedModel piece, its variables)."""
        from .model import load_model

        return load_model(self.path if self._on_disk else self.graph_def)

    @property
    def variables(self) -> list:
        """Variable nodes this piece keeps, in graph order (a `savedmodel` piece's)."""
        return [n for n in self.skeleton.node if n.op in VARIABLE_OP_TYPES]

    @property
    def num_nodes(self) -> int:
        return len(self.skeleton.node)

    @property
    def skeleton(self):
        """The structure: the GraphDef with variable constants still value-less (cheap to inspect)."""
        return self._skeleton if self._skeleton is not None else self.graph_def

    @property
    def estimated_bytes(self) -> int:
        """Size of the serialised GraphDef, from the skeleton and the variables' declared shapes."""
        if self._skeleton is None:
            return self.graph_def.ByteSize()
        by_name = {n.name: n for n in self._skeleton.node}
        return self._skeleton.ByteSize() + sum(
            (_stub_nbytes(by_name[c]) if isinstance(source, str) else source.ByteSize()) + 16
            for c, source in self._constants.items())

    @property
    def graph_def(self):
        """The complete GraphDef (built or read once, on first use; prefer `write_graph_def(piece, path)`)."""
        if self._graph_def is None and self._skeleton is not None:
            gd = empty_like(self._skeleton)
            gd.node.extend(self.nodes())
            self._graph_def = gd
        elif self._graph_def is None and self.path and self.format == "frozen":
            self._graph_def = g.read_graph_def(self.path)
        elif self._graph_def is None and self.path:
            from .model import load_model

            self._graph_def = load_model(self.path).graph_def
        return self._graph_def

    def nodes(self):
        """Every NodeDef of the frozen graph in order, constants filled one at a time."""
        if self._skeleton is None or self._graph_def is not None:
            yield from self.graph_def.node
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
        value = np.asarray(self.read_variable(variable))
        check_shape(variable, stub, value.shape, "the checkpoint")
        return value

    def node_chunks(self):
        """The binary GraphDef as byte chunks: each `node` field, then `library` and `versions`."""
        lazy = self._skeleton is not None and self._graph_def is None
        source = self._skeleton if lazy else self.graph_def
        for node in source.node:
            held = self._constants.get(node.name) if lazy else None
            if isinstance(held, str):
                yield from g.const_node_chunks(node, self._value(node))
            else:
                yield g.node_field(_held_constant(held) if held is not None else node)
        yield from g.tail_fields(source)

    def variable_stubs(self):
        """(Const stub, variable name) for each constant still to be read from the checkpoint."""
        if self._skeleton is None or self._graph_def is not None:
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


# ---------------------------------------------------------------- MODEL or a folder of pieces

@dataclasses.dataclass
class Opened:
    """What a MODEL/GRAPH argument names: a folder of pieces written by `split`/`finetune`
    (`pieces`, in manifest order) or one model (`pieces` empty; `model()` loads it once)."""

    path: object  # a path, or a keras.Model / Model / GraphDef given in Python
    pieces: dict
    manifest: dict | None = None
    options: object = None  # `model.LoadOptions`
    _model: object = None

    @property
    def is_split(self) -> bool:
        return bool(self.pieces)

    def model(self):
        """The MODEL, loaded with the options it was opened with (once)."""
        if self.is_split:
            raise SurgeryError(f"{self.path} is a directory of pieces, not one MODEL",
                               "pass one piece's file, or a MODEL")
        if self._model is None:
            self._model = self.options.load(self.path)
        return self._model

    def piece(self, name: str) -> Piece:
        """Piece `name` of a folder of pieces; the error lists the pieces there."""
        from .errors import ModelLoadError
        from .manifest import FILENAME

        if not self.is_split:
            raise ModelLoadError(f"{self.path} is not a directory of pieces (no {FILENAME})",
                                 "pass the directory written by `surgery split`")
        if name not in self.pieces:
            raise ModelLoadError(f"{self.path}/{FILENAME} has no piece '{name}'",
                                 "pieces here: " + ", ".join(sorted(self.pieces)))
        return self.pieces[name]


def open_pieces(path, options=None) -> Opened:
    """Decide, once, what `path` is: a directory of pieces (a manifest and no model of its own) or
    a MODEL in any form. Nothing heavy happens here: pieces read their graphs, and the MODEL
    loads, on first use.

    Args:
        path: a split or export directory with a `manifest.json`, or any MODEL (see `load_model`).
        options: a `LoadOptions` saying how to load a MODEL (tag set, signature, trust_code).

    Returns:
        An `Opened`: `.pieces` in manifest order, `.piece(name)`, `.manifest`, `.model()`.

    Raises:
        SurgeryError: a manifest that cannot be read, or Keras pieces (open those with Keras).

    Examples:
        >>> opened = surgery.open_pieces("pieces/")
        >>> [t.name for t in opened.piece("online").inputs]
    """
    from .manifest import is_pieces_dir, read_manifest
    from .model import LoadOptions

    options = options or LoadOptions()
    if isinstance(path, Opened):
        return path
    if isinstance(path, (str, os.PathLike)) and is_pieces_dir(str(path)):
        manifest = read_manifest(str(path))
        pieces = {name: Piece.from_manifest(str(path), name, info) for name, info in manifest["pieces"].items()}
        return Opened(str(path), pieces, manifest, options)
    return Opened(path, {}, None, options)
