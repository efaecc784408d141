"""`manifest.json`: what a directory of pieces holds and how to feed and fetch each one.

    {"format": "surgery-manifest/1", "source": {...},
     "pieces": {NAME: {"graph": FILE, "inputs": [{name, dtype, shape}], "outputs": [...]}}, ...}

Names are those to feed and fetch after `tf.import_graph_def(graph_def, name="")`. `split` adds
`cut` and `verification`, `finetune` adds `checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from .errors import ModelLoadError, OutputError
from .files import write_text

FORMAT = "surgery-manifest/1"
FILENAME = "manifest.json"


def source_info(model) -> dict:
    """Where the pieces came from: the model path, its format, its checkpoint, and the
    placeholders `--set` bound (`{name: value}`), when any."""
    if model.format.startswith("keras"):  # its weights are the file (read through a temporary export)
        checkpoint = os.path.abspath(model.path) if os.path.isfile(str(model.path)) else None
    else:
        checkpoint = os.path.abspath(model.checkpoint) if model.checkpoint else None
    info = {"path": os.path.abspath(model.path), "format": model.format, "checkpoint": checkpoint}
    bound = getattr(model, "bound_placeholders", None)
    if bound:
        info["set"] = {name: (np.asarray(v).astype(str) if np.asarray(v).dtype.kind in "SO" else np.asarray(v)).tolist()
                       for name, v in bound.items()}
    return info


def write_manifest(directory: str, *, source: dict, pieces: dict, **extra) -> dict:
    """Write `directory/manifest.json` atomically; returns the manifest."""
    manifest = {"format": FORMAT, "source": source, "pieces": pieces, **extra}
    write_text(os.path.join(directory, FILENAME), json.dumps(manifest, indent=2) + "\n")
    return manifest


def replaceable_directory(directory: str) -> str:
    """`directory` as an absolute path, if a writer may replace it as a whole: absent, empty, or
    holding a manifest (surgery wrote it). Anything else is refused (OutputError) so that no
    user's folder is ever swapped out."""
    directory = os.path.abspath(directory)
    if os.path.exists(directory) and (not os.path.isdir(directory) or (
            os.listdir(directory) and not os.path.exists(os.path.join(directory, FILENAME)))):
        raise OutputError(f"{directory} exists and is not a directory written by surgery",
                          "choose a new --out directory (it is replaced as a whole)")
    return directory


def read_manifest(directory: str) -> dict:
    """Read and check `directory/manifest.json`."""
    path = os.path.join(directory, FILENAME)
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError as e:
        raise ModelLoadError(f"{directory} has no {FILENAME}", "pass a directory written by `surgery split` "
                             "or `surgery finetune`, or a .pb") from e
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path} is not valid JSON: {e}", "write the pieces again") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("pieces"), dict):
        raise ModelLoadError(f"{path} is not a {FORMAT} manifest", "write the pieces again with this version")
    for name, info in manifest["pieces"].items():
        problem = _piece_problem(info)
        if problem:
            raise ModelLoadError(f"{path}: piece '{name}' {problem}", "write the pieces again")
    return manifest


def _piece_problem(info) -> str | None:
    """What is wrong with one manifest piece, or None: a graph file inside the directory, and
    inputs/outputs as lists of {name, dtype, shape} (a hand-edited or damaged manifest)."""
    if not isinstance(info, dict):
        return "is not an object"
    graph = info.get("graph")
    if not isinstance(graph, str) or not graph or os.path.isabs(graph) or ".." in graph.replace("\\", "/").split("/"):
        return f"names no graph file inside the directory (graph: {json.dumps(graph)[:60]})"
    for key in ("inputs", "outputs"):
        specs = info.get(key)
        if not isinstance(specs, list):
            return f"has no list of {key}"
        for spec in specs:
            if not (isinstance(spec, dict) and isinstance(spec.get("name"), str) and spec["name"]
                    and isinstance(spec.get("dtype"), str)
                    and (spec.get("shape") is None or (isinstance(spec["shape"], list) and all(
                        d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 0)
                        for d in spec["shape"])))):
                return f"has a malformed entry in {key}: {json.dumps(spec)[:80]}"
    return None


def piece_path(directory: str, manifest: dict, name: str) -> str:
    """The absolute path of piece `name`'s graph file."""
    pieces = manifest["pieces"]
    if name not in pieces:
        raise ModelLoadError(f"{directory}/{FILENAME} has no piece '{name}'",
                             "pieces here: " + ", ".join(sorted(pieces)))
    return os.path.join(directory, pieces[name]["graph"])


def piece_digest(path: str) -> str:
    """sha256 of a piece as written: a frozen graph's file, or a SavedModel piece's `saved_model.pb`
    and `variables/variables.index` (the index holds a checksum of every variable's bytes)."""
    files = [path] if not os.path.isdir(path) else [
        os.path.join(path, "saved_model.pb"), os.path.join(path, "variables", "variables.index")]
    digest = hashlib.sha256()
    for file in files:
        if os.path.exists(file) or file == path:
            with open(file, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def is_pieces_dir(path: str) -> bool:
    """A directory of frozen pieces (`split`'s output): a manifest and no model of its own."""
    from .model import saved_model_file
    from .weights import latest_checkpoint

    return (os.path.isdir(path) and os.path.exists(os.path.join(path, FILENAME))
            and not saved_model_file(path) and latest_checkpoint(path) is None)
