"""The structure docs/architecture.md describes, checked: imports point down, no import circles, no module imports
the package root, functions a reader can hold, and importing proxytune leaves other libraries alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "proxytune"

#: folders that sit below the answers: they never reach up into analysis, tune, diagnose or the command line
LOWER = ("proxytune.sweep", "proxytune.train")
UPPER = ("proxytune.analysis", "proxytune.tune", "proxytune.diagnose", "proxytune.cli", "proxytune.demo")
#: why a function-local import may stay: said in a comment on its line or the line above, or it is in cli.py
LOCAL_IMPORT_REASONS = ("optional", "heavy", "lazy", "matplotlib", "fast", "cost", "slow")
MAX_LINES, MAX_PARAMS = 80, 10


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The proxytune modules an import statement loads (a name imported from a package that is a module counts
    as that module)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = module.split(".")
        if MODULES[module].name != "__init__.py":
            base = base[:-1]
        prefix = ".".join(base[:len(base) - node.level + 1]) if node.level else ""
        prefix = ".".join(p for p in (prefix, node.module or "") if p)
        names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in MODULES else prefix for a in node.names]
    out = []
    for name in names:
        while name not in MODULES and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in MODULES and name != module:
            out.append(name)
    return out


def _imports() -> list[tuple[str, str, bool, int]]:
    """(importer, imported, inside a function, line) for every import of a proxytune module in src/, type-checking
    blocks left out."""
    found = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        stack: list[tuple[ast.AST, bool]] = [(tree, False)]
        while stack:
            node, local = stack.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    continue
                inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    found += [(module, t, local, child.lineno) for t in _targets(module, child)]
                stack.append((child, inner))
    return found


IMPORTS = _imports()


def _cycles(edges: list[tuple[str, str]]) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles_even_through_function_local_imports():
    # a package's __init__ re-exporting its modules is not an edge back: the edge that matters is the import
    assert _cycles([(a, b) for a, b, _, _ in IMPORTS]) == []


def test_no_module_imports_the_package_root():
    rooted = [f"{a}:{line}" for a, b, _, line in IMPORTS if b == "proxytune" and a != "proxytune"]
    assert rooted == [], "import the defining module instead of the package root: " + ", ".join(rooted)


def test_sweep_and_train_do_not_import_the_layers_above():
    up = [f"{a} -> {b}" for a, b, _, _ in IMPORTS if a.startswith(LOWER) and b.startswith(UPPER)]
    assert up == []


def test_the_sweep_schema_imports_no_runtime_module_of_sweep():
    runtime = ("program", "tracking", "store", "storage", "queue", "leases", "results", "worker", "runner",
               "strategy")
    bad = [b for a, b, _, _ in IMPORTS if a == "proxytune.sweep.schema"
           and b.rsplit(".", 1)[-1] in runtime and b.startswith("proxytune.sweep.")]
    assert bad == []


def test_function_local_imports_say_why():
    """A local import of a proxytune module is there for a reason a reader can see: the command line's lazy
    imports, or a comment naming an optional or heavy dependency. Hiding an import circle is not a reason."""
    unexplained = []
    for module, target, local, line in IMPORTS:
        if not local or module in ("proxytune.cli", "proxytune.demo"):
            continue
        lines = MODULES[module].read_text().splitlines()
        near = " ".join(lines[max(0, line - 3):line]).lower()
        if not any(r in near for r in LOCAL_IMPORT_REASONS):
            unexplained.append(f"{module}:{line} imports {target}")
    assert unexplained == [], unexplained


def _functions():
    for path in sorted(PKG.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(PKG), node


def _is_command(node: ast.AST) -> bool:
    return any("command" in ast.unparse(d) for d in getattr(node, "decorator_list", []))


def test_no_function_is_longer_than_a_reader_can_hold():
    long = [f"{p}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)" for p, n in _functions()
            if n.end_lineno - n.lineno + 1 > MAX_LINES
            and "Long because:" not in (ast.get_docstring(n) or "")]
    assert long == []


def test_no_function_takes_more_than_ten_parameters():
    def count(n: ast.FunctionDef) -> int:
        a = n.args
        names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)] + [x.arg for x in (a.vararg, a.kwarg) if x]
        return len([x for x in names if x not in ("self", "cls")])

    many = [f"{p}:{n.lineno} {n.name} ({count(n)})" for p, n in _functions()
            if count(n) > MAX_PARAMS and not _is_command(n)
            and "Many parameters because:" not in (ast.get_docstring(n) or "")]
    assert many == []


def test_the_checks_above_can_fail():
    """The scanners see what they are meant to see: a circle, a long function, a crowded signature."""
    assert _cycles([("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]) == [["a", "b", "c"]]
    src = "def f(" + ", ".join(f"x{i}" for i in range(11)) + "):\n" + "    y = 1\n" * 85
    (node,) = [n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.FunctionDef)]
    assert node.end_lineno - node.lineno + 1 > MAX_LINES and len(node.args.args) > MAX_PARAMS
    assert ("proxytune.sweep.runner", "proxytune.sweep.config", False, 20) in IMPORTS or any(
        a == "proxytune.sweep.runner" for a, _, _, _ in IMPORTS)


@pytest.mark.parametrize("module", ["proxytune", "proxytune.cli"])
def test_importing_changes_no_global_state_of_another_library(module):
    # the dependencies first: their own imports set filters of their own (torch, scipy), which are not ours
    code = ("import logging, warnings, torch, numpy, scipy.special, scipy.optimize, scipy.stats, optuna, pydantic, "
            "yaml, typer, rich; before = (optuna.logging.get_verbosity(), "
            "logging.getLogger().level, len(warnings.filters)); "
            f"import {module}; after = (optuna.logging.get_verbosity(), logging.getLogger().level, "
            "len(warnings.filters)); print(before == after, before, after)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("True"), out
