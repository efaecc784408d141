"""surgery: transfer-learning graph surgery for TensorFlow graphs.

This module only re-exports; each stage of the pipeline lives in its own module.
"""

from .errors import CutError, DataError, ModelLoadError, RestoreError, SurgeryError, TensorNotFoundError
from .freeze import FrozenGraph, freeze_graph, freeze_model, write_graph_def
from .export import export_frozen
from .report import inspect_model
from .mix import MixedGraph, compose_frozen, mix_models
from .model import Model, load_model
from .optimize import optimize_for_inference
from .names import resolve_op, resolve_tensor, resolve_tensors
from .split import Split, split_model, write_split
from .splice import Dense, Dropout, Flatten, Splice, parse_head, splice
from .train import FinetuneResult, finetune
from .precompute import load_offline_graph, precompute
from .serve import OnlineServer
from .restore import RestorePlan, open_source, plan_restore, restore_into_session, restore_model, restore_weights
from .weights import WeightSource, open_weights, saver_for
from .data import RowSource, check_feedable, open_rows

__all__ = [
    "CutError", "DataError", "ModelLoadError", "RestoreError", "SurgeryError", "TensorNotFoundError",
    "FrozenGraph", "freeze_graph", "freeze_model", "write_graph_def",
    "inspect_model", "Model", "load_model", "resolve_op", "resolve_tensor", "resolve_tensors",
    "Split", "split_model", "write_split",
    "Dense", "Dropout", "Flatten", "Splice", "parse_head", "splice", "FinetuneResult", "finetune",
    "load_offline_graph", "precompute", "OnlineServer",
    "inspect_model", "Model", "load_model", "optimize_for_inference", "resolve_op", "resolve_tensor", "resolve_tensors",
    "RestorePlan", "open_source", "plan_restore", "restore_into_session", "restore_model", "restore_weights",
]
__all__ += ["export_frozen", "MixedGraph", "compose_frozen", "mix_models"]
__all__ += ["WeightSource", "open_weights", "saver_for", "RowSource", "check_feedable", "open_rows"]
__version__ = "0.1.0"
