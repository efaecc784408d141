"""The one place TensorFlow is imported: quiet logs, graph mode, and small wrappers
around TensorFlow calls that abort or raise cryptically on bad files."""

from __future__ import annotations

import glob
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")



def _import_tensorflow_quietly():
    """Import TensorFlow with fd 2 pointed at /dev/null: its C++ start-up lines (absl, CUDA
    probing) ignore TF_CPP_MIN_LOG_LEVEL. `TF_CPP_MIN_LOG_LEVEL=0` (the CLI's --verbose) keeps them."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        import tensorflow

        return tensorflow
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tensorflow


tf = _import_tensorflow_quietly()

# surgery works in tf.compat.v1 graph mode on purpose; its "designed for TensorFlow v1" notices
# (extract_sub_graph, Session, ...) say nothing a user can act on.
from tensorflow.python.util import deprecation as _deprecation  # noqa: E402

_deprecation._PRINT_DEPRECATION_WARNINGS = False

from .errors import ModelLoadError  # noqa: E402


def checkpoint_reader(prefix: str):
    """`CheckpointReader` for `prefix`, with a plain error when index or data shards are bad."""
    if not os.path.exists(prefix + ".index"):
        raise ModelLoadError(f"checkpoint {prefix} has no index file ({prefix}.index)",
                             "pass the checkpoint prefix, without .index/.data suffixes")
    shards = glob.glob(glob.escape(prefix) + ".data-*-of-*")
    expected = {f"{prefix}.data-{i:05d}-of-{int(shards[0].rsplit('-of-', 1)[1]):05d}"
                for i in range(int(shards[0].rsplit("-of-", 1)[1]))} if shards else {prefix + ".data-00000-of-00001"}
    missing = sorted(expected - set(shards))
    if missing:
        raise ModelLoadError(f"checkpoint {prefix} is missing its data shard {missing[0]}",
                             "copy every .data-* file saved with the .index, or save the checkpoint again")
    try:
        return tf.compat.v1.train.NewCheckpointReader(prefix)
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"checkpoint {prefix} cannot be read: {msg}",
                             "its .index or .data shards are missing or corrupt; save it again") from e


def graph_from_def(graph_def):
    """A fresh `tf.Graph` holding `graph_def`, imported with `name=""` so its own names are the
    names to feed and fetch."""
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
    return graph


def tflite_schema():
    """TFLite's flatbuffer schema (generated Python shipped inside TensorFlow, not in its public API):
    `export --tflite` adds a signature to the converter's output with it."""
    from tensorflow.lite.python import schema_py_generated

    return schema_py_generated
