"""The core reads bottom-up: each module of `surgery/` imports only modules of its own layer or
below, and no two import each other (module-level and function-level imports alike)."""

from __future__ import annotations

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "surgery")

# Bottom to top. `tf2` is the TF2/Keras SavedModel reader that `model` builds on when it loads one.
LAYERS = [
    ["errors"],
    ["files", "names", "classcache"],  # classcache: the Spark driver JVM's class archive
    ["tfcompat"],  # the only place for TensorFlow's private APIs
    ["graph"],  # the GraphDef toolkit
    ["weights", "data", "legacy"],  # legacy: graphs older TensorFlows wrote
    ["tf2", "kerasfile"],
    ["model"],
    ["manifest"],
    ["report", "optimize", "bind", "freeze", "savedmodel", "split", "splice", "audit", "restore"],  # passes
    ["train", "precompute", "beam", "spark", "spark_daemon", "export", "runtimes", "mix", "serve"],  # pipelines
    ["cli", "__main__"],
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _modules() -> list[str]:
    return sorted(f[:-3] for f in os.listdir(PACKAGE) if f.endswith(".py") and f != "__init__.py")


def _imports(module: str) -> set[str]:
    """The `surgery` modules `module` imports anywhere in its source (`from . import x`,
    `from .x import y`, `import surgery.x`, `from surgery import x`)."""
    with open(os.path.join(PACKAGE, module + ".py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    known = set(_modules())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level == 1 or base == "surgery" or base.startswith("surgery."):
                base = base.removeprefix("surgery").lstrip(".") if node.level == 0 else base
                if base:
                    found.add(base.split(".")[0])
                else:
                    found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("surgery."):
                    found.add(a.name.split(".")[1])
    found.discard(module)
    return found


def test_every_module_has_a_layer():
    missing = [m for m in _modules() if m not in RANK]
    assert not missing, f"add {missing} to LAYERS in tests/test_layers.py (and to the order in README)"


@pytest.mark.parametrize("module", _modules())
def test_imports_go_down_only(module):
    if module not in RANK:
        pytest.skip("no layer (see test_every_module_has_a_layer)")
    upward = sorted(m for m in _imports(module) if RANK.get(m, -1) > RANK[module])
    assert not upward, f"surgery.{module} (layer {RANK[module]}) imports {upward} from a layer above it"


def test_no_import_cycles():
    graph = {m: _imports(m) for m in _modules()}
    state = {}  # module -> "visiting" | "done"

    def visit(module, path):
        if state.get(module) == "done":
            return
        if state.get(module) == "visiting":
            cycle = path[path.index(module):] + [module]
            pytest.fail("import cycle: " + " → ".join(cycle))
        state[module] = "visiting"
        for dep in sorted(graph.get(module, ())):
            visit(dep, path + [module])
        state[module] = "done"

    for module in graph:
        visit(module, [])


def test_the_walker_sees_function_level_imports(tmp_path):
    """The check itself: an import inside a function counts."""
    assert "model" in _imports("audit")  # `from .model import parse_model` inside audit_path
    assert "graph" in _imports("beam")  # inside FrozenGraphModelHandler.load_model
