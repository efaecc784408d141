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


def fast_callable(session, feed_names, fetch_names):
    """`call(*feed values) -> [fetched values]` for `session`, through TensorFlow's
    `CallableOptions` path (the private `Session._make_callable_from_options`, which Keras' v1
    backend uses): a feed goes straight to `TF_SessionRunCallable`, skipping `Session.run`'s
    per-call parsing. Falls back to the public `Session.make_callable` (slower at small batches)
    on a TensorFlow without it."""
    make = getattr(session, "_make_callable_from_options", None)
    if make is not None:
        from tensorflow.core.protobuf import config_pb2

        return make(config_pb2.CallableOptions(feed=list(feed_names), fetch=list(fetch_names)))
    graph = session.graph
    return session.make_callable([graph.get_tensor_by_name(n) for n in fetch_names],
                                 feed_list=[graph.get_tensor_by_name(n) for n in feed_names])
