"""The house's import graph: every m2s package imports only from layers below it, and no two
modules import each other at module level."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "m2s"

#: Lowest first; a package may import from its own layer's package and any layer below.
LAYERS: list[set[str]] = [
    {"__init__", "errors", "io_utils", "voxel"},  # the grid and key codec sit here
    {"labels", "artifacts"},
    {"data", "sparse"},
    {"models", "fuse", "synth"},
    {"inference", "evaluation", "realism", "show"},
    {"train"},
    {"distill"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """m2s modules `path` imports (``from pkg import submodule`` counts as the submodule)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "m2s" and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names}
            out.update(m for m in subs if _is_module(m))
            if any(not _is_module(m) for m in subs):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "m2s")
    return out


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_package_has_a_layer() -> None:
    packages = {p.stem if p.is_file() else p.name for p in PKG.iterdir() if (p.suffix == ".py" or p.is_dir()) and p.name != "__pycache__"}
    assert packages <= set(RANK), f"place {sorted(packages - set(RANK))} in LAYERS"


def test_no_package_imports_from_a_layer_above_it() -> None:
    upward = []
    for path in sorted(PKG.rglob("*.py")):
        here = _package(_module_name(path))
        for target in _imports(path, top_level_only=False):
            there = _package(target)
            if RANK[there] > RANK[here]:
                upward.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not upward, "imports from a layer above:\n" + "\n".join(upward)


def test_no_module_level_import_cycle() -> None:
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {m: {t for t in _imports(p, top_level_only=True) if t in modules and t != m} for m, p in modules.items()}
    # Depth-first search for a back edge; report the cycle it closes.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (cycle := visit(t)) is not None:
                return cycle
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, "module-level import cycle: " + " -> ".join(cycle)
