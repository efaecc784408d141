"""surgery: transfer-learning graph surgery for TensorFlow graphs.

This module only re-exports; each stage of the pipeline lives in its own module.
"""

from .errors import CutError, DataError, ModelLoadError, RestoreError, SurgeryError, TensorNotFoundError
from .freeze import FrozenGraph, freeze_graph, freeze_model, write_graph_def
from .export import export_frozen
from .inspect import inspect_model
from .mix import MixedGraph, compose_frozen, mix_models
from .model import Model, load_model
from .names import resolve_op, resolve_tensor, resolve_tensors

__all__ = [
    "CutError", "DataError", "ModelLoadError", "RestoreError", "SurgeryError", "TensorNotFoundError",
    "FrozenGraph", "freeze_graph", "freeze_model", "write_graph_def",
    "inspect_model", "Model", "load_model", "resolve_op", "resolve_tensor", "resolve_tensors",
]
__all__ += ["export_frozen", "MixedGraph", "compose_frozen", "mix_models"]
__version__ = "0.1.0"
