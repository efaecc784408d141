"""The package reads bottom-up: its folders are its layers, and each module imports only modules
of its own folder or of the folders below (module-level and function-level imports alike); no two
modules import each other, and none imports another module's `_private` names."""

from __future__ import annotations

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "surgery")

# Bottom to top; each folder's __init__ docstring says the same.
LAYERS = ["core", "data", "passes", "exporters", "runners", "cli"]
RANK = {name: rank for rank, name in enumerate(LAYERS)}


def _modules() -> list[str]:
    """Every module as a dotted path under `surgery` (`core.graph`, `data`, `cli`)."""
    found = []
    for folder, _, files in os.walk(PACKAGE):
        sub = os.path.relpath(folder, PACKAGE)
        for f in files:
            if f.endswith(".py"):
                parts = [] if sub == "." else sub.split(os.sep)
                if f != "__init__.py":
                    parts.append(f[:-3])
                if parts:
                    found.append(".".join(parts))
    return sorted(found)


def _layer(module: str) -> str:
    top = module.split(".")[0]
    return "cli" if top in ("cli", "__main__") else top


def _package_of(module: str) -> list[str]:
    path = os.path.join(PACKAGE, *module.split("."))
    return module.split(".") if os.path.isdir(path) else module.split(".")[:-1]


def _source(module: str) -> str:
    path = os.path.join(PACKAGE, *module.split("."))
    return os.path.join(path, "__init__.py") if os.path.isdir(path) else path + ".py"


def _imports(module: str) -> dict[str, set[str]]:
    """The `surgery` modules `module` imports anywhere in its source, each with the `_private`
    names it takes from there."""
    with open(_source(module), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    known = set(_modules())
    found: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(module)[: len(_package_of(module)) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module == "surgery" or (node.module or "").startswith("surgery."):
                target = node.module.removeprefix("surgery").lstrip(".")
            else:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target else alias.name
                if sub in known:
                    found.setdefault(sub, set())
                elif target:
                    found.setdefault(target, set()).update({alias.name} if alias.name.startswith("_") else set())
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("surgery."):
                    found.setdefault(a.name.removeprefix("surgery."), set())
    found.pop(module, None)
    found.pop("", None)
    return found


def test_every_module_is_in_a_layer():
    stray = [m for m in _modules() if _layer(m) not in RANK]
    assert not stray, f"{stray} sit outside the layer folders {LAYERS}"


@pytest.mark.parametrize("module", _modules())
def test_imports_go_down_only(module):
    upward = sorted(m for m in _imports(module) if RANK[_layer(m)] > RANK[_layer(module)])
    assert not upward, f"surgery.{module} ({_layer(module)}) imports {upward} from a layer above it"


@pytest.mark.parametrize("module", _modules())
def test_no_private_names_cross_modules(module):
    taken = {m: sorted(names) for m, names in _imports(module).items() if names}
    assert not taken, f"surgery.{module} imports private names {taken}: make them public or move the code"


def test_no_import_cycles():
    graph = {m: set(_imports(m)) for m in _modules()}
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


def test_the_walker_sees_function_level_and_private_imports():
    """The check itself: an import inside a function counts, and so does a private name."""
    assert "core.model" in _imports("passes.audit")  # `from ..core.model import parse_model` inside audit_path
    assert "core.graph" in _imports("runners.beam")  # inside FrozenGraphModelHandler.load_model
    assert _layer("__main__") == "cli" and RANK["core"] < RANK["passes"] < RANK["runners"]
