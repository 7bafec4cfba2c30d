"""The import directions of distkg's layers, read from the source (ast), so the layering cannot rot.

Every ``import distkg.X`` / ``from distkg.X import ...`` in the package, at module level or inside a
function, must point at the importer's own part of the package or at a lower layer (LAYERS, lowest
first; parts in one layer do not import each other). A failure names the file, the line and the import.
Inside a part, the files import each other without a circle (type-only imports count: a circle
drawn by annotations still means two files that cannot be read apart).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "distkg"

# Lowest first. The module map in README.md draws the same picture.
LAYERS: list[set[str]] = [
    {"errors", "allocator", "checks", "cachedir"},
    {"registry", "data", "kernels", "extras"},
    {"config"},  # typed configs: knows no model (the models' check is registered, distkg.checks)
    {"device", "models"},
    {"evaluation", "runfolder"},
    {"training"},
    {"llm"},
    {"distill"},
    {"runtime"},  # runs distillation on Ray: may import distill, never the other way round
    {"serving", "experiments"},
    {"cli", "api"},  # the two front doors: the command line and the Python API
    {"__main__", "__init__"},
]
RANK = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def part_of(path: Path) -> str:
    """The top-level part of the package a file belongs to (distkg/distill/runner.py -> distill)."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported_parts(tree: ast.AST, path: Path) -> list[tuple[int, str, str]]:
    """(line, the import as written, the distkg part it reaches) for every distkg import in a file."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [(alias.name, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against the file's package
                base = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-node.level]
                module = ".".join([*base, *([module] if module else [])])
            names = [f"{module}.{a.name}" for a in node.names] if module == "distkg" else [module]
            targets = [(name, f"from {module} import {', '.join(a.name for a in node.names)}") for name in names]
        else:
            continue
        for name, written in targets:
            parts = name.split(".")
            if parts[0] == "distkg" and len(parts) > 1:
                found.append((node.lineno, written if written.startswith("from") else f"import {written}", parts[1]))
    return found


def violations() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = part_of(path)
        assert importer in RANK, f"{path}: part {importer!r} is in no layer of LAYERS; place it there"
        for line, written, target in imported_parts(ast.parse(path.read_text(), str(path)), path):
            if target == importer:
                continue
            assert target in RANK, f"{path}:{line}: {written}: part {target!r} is in no layer of LAYERS"
            if RANK[target] >= RANK[importer]:
                out.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {written} ({importer} may not import "
                           f"{target}: layer {RANK[importer]} -> {RANK[target]})")
    return out


def test_imports_run_down_the_layers():
    bad = violations()
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def module_of(path: Path) -> str:
    """distkg/llm/rounds.py -> distkg.llm.rounds; distkg/data/__init__.py -> distkg.data."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.AST, path: Path, modules: set[str]) -> set[str]:
    """The distkg modules a file imports (``from distkg.llm import rounds`` reaches distkg.llm.rounds
    when that is a module, else the package distkg.llm), at any depth of the file."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-node.level]
                module = ".".join([*base, *([module] if module else [])])
            names = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:  # import distkg.x.y.Name -> the module that holds it
                name = name.rpartition(".")[0]
            if name.startswith("distkg"):
                found.add(name)
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of two or more modules (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_of(p) for p in paths}
    return {module_of(p): imported_modules(ast.parse(p.read_text(), str(p)), p, modules) - {module_of(p)}
            for p in paths}


def test_no_import_circles():
    found = circles(import_graph())
    assert not found, "import circles (each a group of modules that import one another):\n" + "\n".join(
        " <-> ".join(group) for group in found)


def test_the_circle_check_finds_a_circle_through_a_type_only_import():
    # the check itself: report.py taking GridConfig from grid.py under TYPE_CHECKING, while grid.py
    # imports report.py, was one of the two circles this test was written against
    modules = {"distkg.experiments.grid", "distkg.experiments.report", "distkg.experiments"}
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from distkg.experiments.grid import GridConfig\n"
    report = imported_modules(ast.parse(source), PACKAGE / "experiments" / "report.py", modules)
    assert report == {"distkg.experiments.grid"}
    graph = {"distkg.experiments.report": report, "distkg.experiments.grid": {"distkg.experiments.report"}}
    assert circles(graph) == [["distkg.experiments.grid", "distkg.experiments.report"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_check_finds_an_import_inside_a_function(tmp_path):
    # the check itself: distillation reaching up into the runtime from inside a function is caught
    source = "def f():\n    from distkg.runtime.pool import soft_targets\n"
    path = PACKAGE / "distill" / "runner.py"
    assert imported_parts(ast.parse(source), path) == [(2, "from distkg.runtime.pool import soft_targets", "runtime")]
    assert RANK["runtime"] > RANK["distill"]
    assert imported_parts(ast.parse("from distkg import models\n"), PACKAGE / "config.py")[0][2] == "models"


def test_the_config_layer_loads_without_the_models_and_refuses_to_go_unchecked():
    # distkg.config alone imports no model; the models' check, registered by the package, imports them
    # when a run config is first built and rejects a bad model argument; with no check registered a run
    # config is refused (not silently left unchecked)
    code = ("import sys\nfrom distkg.config import load_config\nfrom distkg.errors import ConfigError\n"
            "assert 'distkg.models' not in sys.modules\n"
            "print(load_config(None).model.name, 'distkg.models' in sys.modules)\n"
            "try:\n    load_config(None, ['model.name=tadistmult', 'model.args.dimm=3'])\n"
            "except ConfigError as e:\n    print('rejected:', e)\n"
            "from distkg.checks import RUN_CHECKS\nRUN_CHECKS.clear()\n"
            "try:\n    load_config(None)\nexcept RuntimeError as e:\n    print('refused:', e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "tadistmult True" and "rejected:" in lines[1] and "dimm" in lines[1]
    assert lines[2].startswith("refused: no check of the model is registered")
