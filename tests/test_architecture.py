"""The package's layering: no import cycles, and no module imports from a layer below its own.

The layers are those of README.md's "Development" section. Imports inside functions count (they
are how cycles used to hide); imports under ``if TYPE_CHECKING:`` do not (they never run).
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cas_vault"

#: README.md's layers, top (foundations) first. A module may import its own layer and earlier ones.
LAYERS: list[set[str]] = [
    {"errors", "digest", "canonical", "atomic", "ids", "taxonomy", "hooks", "progress", "units"},
    {"store", "objects", "commit", "journal", "refs", "findings", "scan"},
    {"workdir", "tensors", "zarrstore", "storage"},
    {"scaffold", "seal", "events", "labels", "annotations", "retirement", "taxonomies",
     "reachability", "specimen",
     "names", "repository"},
    {"catalog", "query", "graph", "verify", "gc", "provenance", "seeding", "run", "logger",
     "legacy", "diff", "plot", "notes", "engines", "examples", "status", "remove"},
    {"vault", "demo", "cli", "ui", "__main__"},
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Package modules ``path`` imports at run time (top level or in functions)."""
    tree = ast.parse(path.read_text())
    hidden = {id(n) for node in ast.walk(tree)
              if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
              for n in ast.walk(node)}
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        for c in candidates:
            rel = PACKAGE.parent / c.replace(".", "/")
            if c.startswith("cas_vault.") and (rel.with_suffix(".py").is_file() or rel.is_dir()):
                out.add(c)
    return out


def _graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _edges() -> list[tuple[str, str]]:
    return [(a, b) for a, targets in _graph().items() for b in targets
            if "cas_vault" not in (a, b)]  # the package's lazy re-exports are no dependency


def _layer(module: str) -> int:
    top = module.split(".")[1]
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    raise AssertionError(f"{module} is in no layer: add it to README.md's list and to LAYERS")


def test_no_import_cycles() -> None:
    graph = {a: {b for b in targets if b != "cas_vault"} for a, targets in _graph().items()}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_every_module_has_a_layer() -> None:
    for module in _graph():
        if module != "cas_vault":
            _layer(module)


@pytest.mark.parametrize("feature", sorted(LAYERS[4]))
def test_the_core_never_imports_a_feature(feature: str) -> None:
    offenders = [(a, b) for a, b in _edges() if _layer(a) < 4 and b.split(".")[1] == feature]
    assert offenders == []


def test_no_module_imports_from_a_later_layer() -> None:
    assert [(a, b) for a, b in _edges() if _layer(b) > _layer(a)] == []


def test_readme_lists_every_top_level_module() -> None:
    readme = (PACKAGE.parent / "README.md").read_text()
    section = readme[readme.index("## Development"):]
    for layer in LAYERS:
        for name in layer - {"__main__", "examples"}:
            assert f"`{name}" in section, name
