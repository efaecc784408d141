"""surgery: transfer-learning graph surgery for TensorFlow graphs.

This module only re-exports, lazily: `import surgery` is instant, and each public name imports
its module (and TensorFlow) on first use. The modules live in folders that are the package's layers
(`core`, `data`, `passes`, `exporters`, `runners`); these are the entry points most users need.
"""

from __future__ import annotations

import importlib

# public name → the module that defines it
_EXPORTS = {
    "core.errors": ["CutError", "DataError", "ModelLoadError", "RestoreError", "SurgeryError", "TensorNotFoundError"],
    "core.pieces": ["Piece", "TensorSpec", "open_pieces"],
    "passes.freeze": ["freeze_graph", "freeze_model", "write_graph_def"],
    "exporters.export": ["export", "export_frozen"],
    "exporters.runtimes": ["export_runtime"],
    "passes.cuts": ["cuts"],
    "passes.inspect": ["inspect_model"],
    "passes.mix": ["MixedGraph", "compose_frozen", "mix_models"],
    "core.model": ["LoadOptions", "Model", "load_model"],
    "passes.optimize": ["optimize_for_inference"],
    "core.names": ["resolve_op", "resolve_tensor", "resolve_tensors"],
    "passes.split": ["Split", "split_model", "write_split"],
    "passes.splice": ["Dense", "Dropout", "Flatten", "Splice", "parse_head", "splice"],
    "runners.finetune": ["FinetuneConfig", "FinetuneResult", "finetune"],
    "runners.precompute": ["offline_piece", "precompute"],
    "runners.serve": ["OnlineServer"],
    "passes.restore": ["RestorePlan", "open_source", "plan_restore", "restore_into_session", "restore_model",
                "restore_weights"],
    "core.weights": ["WeightSource", "open_weights", "saver_for"],
    "data": ["RowSource", "check_feedable", "open_rows"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
# modules offered whole: `surgery.graph` is the GraphDef toolkit (small functions over GraphDef protos);
# `surgery.keras` cuts keras.Models into keras.Models (`surgery.keras.split`)
_SUBMODULES = {"graph": "core.graph", "keras": "passes.keras_split"}

__all__ = [name for names in _EXPORTS.values() for name in names] + list(_SUBMODULES)


def __getattr__(name: str):
    if name == "__version__":
        from .cli import version

        return version()
    if name in _SUBMODULES:
        value = importlib.import_module(f".{_SUBMODULES[name]}", __name__)
        globals()[name] = value
        return value
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'surgery' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # resolved once
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__) | {"__version__"})
