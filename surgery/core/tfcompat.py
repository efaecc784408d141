"""The one place TensorFlow is imported: quiet logs, graph mode, small wrappers around
TensorFlow calls that abort or raise cryptically on bad files, and every use of TensorFlow's
private APIs (`tensorflow.python.*`, underscored names), each checked by tests/test_tfcompat.py
so that a TensorFlow release that changes one fails there, loudly, and not deep in a command."""

from __future__ import annotations

import contextlib
import os

from .files import stderr_to

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")


def _import_tensorflow_quietly():
    """Import TensorFlow with fd 2 pointed at /dev/null: its C++ start-up lines (absl, CUDA
    probing) ignore TF_CPP_MIN_LOG_LEVEL. `TF_CPP_MIN_LOG_LEVEL=0` (the CLI's --verbose) keeps them."""
    with contextlib.ExitStack() as stack:
        if os.environ.get("TF_CPP_MIN_LOG_LEVEL") != "0":
            stack.enter_context(stderr_to(os.devnull))
        import tensorflow
    return tensorflow


tf = _import_tensorflow_quietly()

# surgery works in tf.compat.v1 graph mode on purpose; its "designed for TensorFlow v1" notices
# (extract_sub_graph, Session, ...) say nothing a user can act on.
from tensorflow.python.util import deprecation as _deprecation  # noqa: E402

_deprecation._PRINT_DEPRECATION_WARNINGS = False

def replace_variables_by_constants(graph_def, variables: dict):
    """`graph_def` with each variable `{name: NodeDef}` turned into a Const by TensorFlow's own
    converter (the engine of `convert_variables_to_constants_v2`, private): resource reads become
    Identity, ResourceGather GatherV2, and handles passed into functions become plain tensors.
    Each Const holds a scalar stand-in of the variable's dtype; the caller fills in the values."""
    import numpy as np
    from tensorflow.python.framework import convert_to_constants as ctc

    data = ctc._ConverterData(graph_def)
    for name, node in variables.items():
        dtype = tf.as_dtype(node.attr["dtype"].type)
        stand_in = np.array(b"", dtype=object) if dtype == tf.string else np.zeros((), dtype.as_numpy_dtype)
        data.tensor_data[name] = ctc._TensorData(numpy=stand_in, dtype=node.attr["dtype"].type, index=None)
    converted, _ = ctc._replace_variables_by_constants(data)
    return converted


def control_flow_context(op):
    """The v1 cond/while context `op` was built in (None outside one, or for an imported frozen graph)."""
    return op._get_control_flow_context()


def is_ref_dtype(dtype) -> bool:
    """True for a TF1 reference dtype (`float32_ref`), as a ref variable's output has."""
    return dtype._is_ref_dtype


def save_slice_info(variable):
    """Where a partitioned variable's slice sits in the whole (`full_name`, `var_offset`,
    `var_shape`), or None for an unpartitioned one: TensorFlow keeps it only on this attribute."""
    return variable._save_slice_info


def fold_batch_norms(graph_def):
    """Batch norms after Conv2D/DepthwiseConv2dNative/MatMul folded into the weights, by TensorFlow's
    `optimize_for_inference_lib` (shipped under `tensorflow.python.tools`, not the public API). It
    rewires the nodes it is given, so it works on a copy: `graph_def` is left as it was."""
    from tensorflow.python.tools import optimize_for_inference_lib

    copy = tf.compat.v1.GraphDef()
    copy.CopyFrom(graph_def)
    return optimize_for_inference_lib.fold_batch_norms(copy)


def has_tensor_content(dtype) -> bool:
    """Whether TensorFlow writes a constant of `dtype` as raw `tensor_content` bytes."""
    from tensorflow.python.framework import tensor_util

    return dtype in tensor_util._TENSOR_CONTENT_TYPES


def optimize_graph(config, meta_graph):
    """Grappler over `meta_graph` with `config`'s rewrite options (TensorFlow's internal entry point)."""
    from tensorflow.python.grappler import tf_optimizer

    return tf_optimizer.OptimizeGraph(config, meta_graph, verbose=False)


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


def tflite_schema():
    """TFLite's flatbuffer schema (generated Python shipped inside TensorFlow, not in its public API):
    `export --tflite` adds a signature to the converter's output with it."""
    from tensorflow.lite.python import schema_py_generated

    return schema_py_generated


def variable_def(**fields):
    """A `VariableDef` proto (what a MetaGraphDef's `variables` collection holds); TensorFlow
    exports no public name for it."""
    from tensorflow.core.framework.variable_pb2 import VariableDef

    return VariableDef(**fields)


def is_registered_op(op_type: str) -> bool:
    """True when this TensorFlow has a kernel-independent definition of `op_type` (its op
    registry, private): an old graph's op that was since removed or renamed is not."""
    from tensorflow.python.framework import op_def_registry

    return op_def_registry.get(op_type) is not None


def op_flops(graph, node_def) -> int | None:
    """FLOPs of one op as TensorFlow's profiler counts them: the `flops` statistic its op type
    registers (`ops.get_stats_for_node_def`, private). 0 for op types that register none; None when
    the op's shapes are not all known (the statistic needs them)."""
    import logging

    from tensorflow.python.framework import ops

    level = logging.getLogger("tensorflow").level
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # its shape helper warns it is deprecated
    try:
        value = ops.get_stats_for_node_def(graph, node_def, "flops").value
    except ValueError:
        return None
    finally:
        logging.getLogger("tensorflow").setLevel(level)
    return int(value or 0)
