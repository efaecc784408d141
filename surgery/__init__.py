"""surgery: transfer-learning graph surgery for TensorFlow graphs.

This module only re-exports, lazily: `import surgery` is instant, and each public name imports
its module (and TensorFlow) on first use. Each stage of the pipeline lives in its own module.
"""

from __future__ import annotations

import importlib
import sys
import types

# public name → the module that defines it
_EXPORTS = {
    "errors": ["CutError", "DataError", "ModelLoadError", "RestoreError", "SurgeryError", "TensorNotFoundError"],
    "freeze": ["FrozenGraph", "freeze_graph", "freeze_model", "write_graph_def"],
    "export": ["export_frozen"],
    "report": ["inspect_model"],
    "mix": ["MixedGraph", "compose_frozen", "mix_models"],
    "model": ["Model", "load_model"],
    "optimize": ["optimize_for_inference"],
    "names": ["resolve_op", "resolve_tensor", "resolve_tensors"],
    "split": ["Split", "split_model", "write_split"],
    "splice": ["Dense", "Dropout", "Flatten", "Splice", "parse_head", "splice"],
    "train": ["FinetuneResult", "finetune"],
    "precompute": ["load_offline_graph", "precompute"],
    "serve": ["OnlineServer"],
    "restore": ["RestorePlan", "open_source", "plan_restore", "restore_into_session", "restore_model",
                "restore_weights"],
    "weights": ["WeightSource", "open_weights", "saver_for"],
    "data": ["RowSource", "check_feedable", "open_rows"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [name for names in _EXPORTS.values() for name in names]


def __getattr__(name: str):
    if name == "__version__":
        from .cli import version

        return version()
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'surgery' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # resolved once
    return value


class _Package(types.ModuleType):
    """`surgery.precompute` and `surgery.splice` are functions, as `__all__` says, though modules
    of the same names exist: importing such a module would bind the module here, so it is not."""

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and _MODULE_OF.get(name) == name:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __dir__():
    return sorted(set(globals()) | set(__all__) | {"__version__"})
