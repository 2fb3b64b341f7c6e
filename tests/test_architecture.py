"""The house rules of ARCHITECTURE.md, checked against the code.

Every module of every ``helamem.*`` package is imported, and its imports (all
of them: top level, inside functions, under ``TYPE_CHECKING``) are read from
its source. The test fails on a forbidden arrow, on any import circle among
``helamem`` modules, on a module over 600 lines or without a docstring, and on
a module ARCHITECTURE.md does not name.
"""

from __future__ import annotations

import ast
import importlib
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 600

#: Modules that stay pure (no I/O, no storage): the helamem modules each may import.
PURE = {
    "helamem.core.dynamics": set(),
    "helamem.core.association": set(),
    "helamem.core.maxsim": set(),
    "helamem.core._inputs": {"helamem.core.errors", "helamem.core.text"},
    "helamem.core.retrieval": {
        "helamem.core.dynamics",
        "helamem.core.config",
        "helamem.core.association",
        "helamem.core.maxsim",
    },
}
#: The packages that sit on top of the engine and may use only its public modules.
ON_TOP = ("helamem.langgraph", "helamem.llamaindex", "helamem.autogen", "helamem.bench")
#: What the storage backends may import from the engine: nothing above them.
STORAGE_MAY_IMPORT = {
    "helamem.core.config",
    "helamem.core.embeddings",
    "helamem.core.errors",
    "helamem.core.jsontext",
    "helamem.core.vectors",
}


@cache
def modules() -> dict[str, Path]:
    """Every ``helamem`` module of the workspace: dotted name -> source file."""
    out: dict[str, Path] = {}
    for src in sorted(ROOT.glob("packages/*/src")):
        for path in sorted(src.glob("helamem/**/*.py")):
            parts = list(path.relative_to(src).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


@cache
def imports_of(name: str) -> frozenset[str]:
    """The ``helamem`` modules that module ``name`` imports (anywhere in it)."""
    known = modules()
    path = known[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            subs = {f"{target}.{a.name}" for a in node.names} & known.keys()
            # `from pkg import submodule` points at the submodule, not the package
            found.update(subs if len(subs) == len(node.names) else {target, *subs})
    return frozenset(m for m in found if m in known and m != name)


def test_every_module_imports() -> None:
    for name in modules():
        importlib.import_module(name)


def test_no_import_circles() -> None:
    graph = {m: imports_of(m) for m in modules()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_pure_modules_stay_pure() -> None:
    for name, allowed in PURE.items():
        extra = imports_of(name) - allowed
        assert not extra, f"{name} must stay pure but imports {sorted(extra)}"


def test_storage_imports_nothing_above_it() -> None:
    for name in modules():
        if name.startswith("helamem.core.storage"):
            above = {
                m
                for m in imports_of(name)
                if not m.startswith("helamem.core.storage") and m not in STORAGE_MAY_IMPORT
            }
            assert not above, f"{name} imports {sorted(above)}, above the storage layer"


def test_core_imports_only_core() -> None:
    for name in modules():
        if name.startswith("helamem.core"):
            outside = {m for m in imports_of(name) if not m.startswith("helamem.core")}
            assert not outside, f"{name} imports {sorted(outside)}: the engine depends on no one"


def test_packages_on_top_use_only_public_core_modules() -> None:
    for name in modules():
        if name.startswith(ON_TOP):
            private = {
                m
                for m in imports_of(name)
                if m.startswith("helamem.core.")
                and any(part.startswith("_") for part in m.split(".")[2:])
            }
            assert not private, f"{name} imports private engine modules {sorted(private)}"
            others = {
                m
                for m in imports_of(name)
                if m.startswith(ON_TOP) and m.split(".")[1] != name.split(".")[1]
            }
            assert not others, f"{name} imports {sorted(others)}: adapters stand side by side"


def test_importing_the_engine_loads_no_benchmark_code() -> None:
    seen: set[str] = set()
    todo = [m for m in modules() if m.startswith("helamem.core")]
    while todo:  # everything the engine's modules import, transitively
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(imports_of(name))
    assert not {m for m in seen if not m.startswith("helamem.core")}


@pytest.mark.parametrize("name", sorted(modules()))
def test_module_size_and_docstring(name: str) -> None:
    text = modules()[name].read_text(encoding="utf-8")
    lines = len(text.splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines, over {MAX_LINES}: split it by concern"
    doc = ast.get_docstring(ast.parse(text))
    assert doc and doc.splitlines()[0].strip(), f"{name} needs a docstring saying what it owns"


def test_architecture_md_names_every_module() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    for name in modules():
        if modules()[name].name == "__init__.py":
            continue
        assert f"`{name.rpartition('.')[2]}`" in text or f"`{name}`" in text, (
            f"ARCHITECTURE.md does not name {name}"
        )
    for package in sorted(p.name for p in (ROOT / "packages").iterdir() if p.is_dir()):
        assert package in text, f"ARCHITECTURE.md does not name the package {package}"
