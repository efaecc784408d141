"""The one place TensorFlow is imported: quiet logs, graph mode, and small wrappers
around TensorFlow calls that abort or raise cryptically on bad files."""

from __future__ import annotations

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

def graph_from_def(graph_def):
    """A fresh `tf.Graph` holding `graph_def`, imported with `name=""` so its own names are the
    names to feed and fetch."""
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
    return graph
