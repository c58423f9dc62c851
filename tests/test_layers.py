"""The import graph of prunec has no circle (DESIGN.md contract 11).

The layers contract (``.importlinter``, run by ``lint-imports`` in CI) forbids imports up a
floor; it does not see a circle between two modules of one room (``backends.onnx_original``
and ``backends.onnx_verify``). This test does: it builds the graph of every import of a
prunec module by a prunec module, those inside functions included (grimp reads them all;
imports under ``if TYPE_CHECKING:`` never run and are left out, as in ``.importlinter``), and
fails on every strongly connected component of more than one module, or a module importing
itself, printing the imports that close the circle.
"""
from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

import prunec

grimp = pytest.importorskip("grimp")  # installed with import-linter (the dev extra)


def _components(graph) -> list[list[str]]:
    """Strongly connected components (Tarjan, iterative) with more than one module, or one
    module that imports itself, each sorted; in a graph without circles there are none."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges.get(child, ()))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges[node]:
                    found.append(sorted(component))
    return found


def _describe(graph, component: list[str]) -> str:
    """Each import between members of ``component``, with its line."""
    lines = [" <-> ".join(component)]
    members = set(component)
    for importer in component:
        for imported in sorted(graph.find_modules_directly_imported_by(importer) & members):
            for detail in graph.get_import_details(importer=importer, imported=imported):
                lines.append(f"    {importer}:{detail['line_number']}  "
                             f"{detail['line_contents'].strip()}")
    return "\n".join(lines)


def test_components_find_a_circle_through_three_modules():
    """The check itself can fail: a -> b -> c -> a is one component; d hangs off it."""
    graph = grimp.ImportGraph()
    for importer, imported in [("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.d", "p.a")]:
        graph.add_import(importer=importer, imported=imported)
    assert _components(graph) == [["p.a", "p.b", "p.c"]]
    graph.remove_import(importer="p.c", imported="p.a")
    assert _components(graph) == []


def test_no_import_circle_among_prunec_modules():
    graph = grimp.build_graph("prunec", include_external_packages=False,
                              exclude_type_checking_imports=True)
    circles = _components(graph)
    assert not circles, "import circles among prunec modules (imports inside functions " \
        "count; move the shared piece to the lower module):\n" + \
        "\n".join(_describe(graph, c) for c in circles)


# --------------------------------------------------------------------------------------------
# Imports of prunec modules sit at the top of their file. One inside a function hides an
# arrow of the import graph from a reader of the file's head (and often a circle or a floor
# climbed). Each one still needed is listed here, (importer, imported) -> why; the import
# itself carries a one-line comment saying the same. An entry that no longer matches an import
# fails too, so the list stays true.
FUNCTION_LEVEL_IMPORTS: dict[tuple[str, str], str] = {}


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The absolute module a (possibly relative) ``from ... import`` names."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")[: None if is_package else -1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def function_level_imports(source: str, module: str, is_package: bool = False,
                           package: str = "prunec") -> list[tuple[int, str]]:
    """``(line, imported module)`` of each import of a ``package`` module inside a function
    of ``source`` (imports under ``if TYPE_CHECKING:`` never run and are left out)."""
    found: list[tuple[int, str]] = []

    def walk(node: ast.AST, inside: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if inside and isinstance(child, ast.Import):
                found.extend((child.lineno, a.name) for a in child.names
                             if a.name.split(".")[0] == package)
            elif inside and isinstance(child, ast.ImportFrom):
                target = _absolute(module, child, is_package)
                if target.split(".")[0] == package:
                    found.append((child.lineno, target))
            walk(child, inside or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                     ast.Lambda)))

    walk(ast.parse(source), False)
    return found


def test_function_level_imports_are_found_and_type_checking_ones_are_not():
    """The finder itself can fail: it sees imports in methods, nested functions and relative
    imports, and not module-level ones or those under ``if TYPE_CHECKING:``."""
    source = textwrap.dedent("""
        from prunec.errors import PrunecError
        import os
        if TYPE_CHECKING:
            from prunec.ir.program import Program
        def f():
            from prunec.ir.capture import capture
            import os.path
            def g():
                from .cost import count_macs
        class C:
            def m(self):
                import prunec.zoo
                if TYPE_CHECKING:
                    from prunec.report import Report
    """)
    assert function_level_imports(source, "prunec.ir.blocks") == [
        (7, "prunec.ir.capture"), (10, "prunec.ir.cost"), (13, "prunec.zoo")]
    assert function_level_imports("def f():\n    from . import x\n", "prunec.passes",
                                  is_package=True) == [(2, "prunec.passes")]


def _prunec_function_level_imports() -> dict[tuple[str, str], list[str]]:
    """Every function-level prunec import of the package, (importer, imported) -> places."""
    root = Path(prunec.__file__).parent
    found: dict[tuple[str, str], list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_package else parts)
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for line, imported in function_level_imports(source, module, is_package):
            place = f"{path.relative_to(root.parent)}:{line}"
            if not any("#" in lines[i] for i in (line - 2, line - 1) if i >= 0):
                place += " (no comment saying why)"
            found.setdefault((module, imported), []).append(place)
    return found


def test_no_function_level_prunec_import_without_a_reason():
    found = _prunec_function_level_imports()
    unexplained = {k: v for k, v in found.items() if k not in FUNCTION_LEVEL_IMPORTS}
    assert not unexplained, (
        "imports of prunec modules inside functions: move each to the top of its file (the "
        "layers contract and test_no_import_circle_among_prunec_modules say whether it may), "
        "or, where it must stay (an optional heavy dependency, a floor it may not climb at "
        "import), give it a one-line comment and an entry in FUNCTION_LEVEL_IMPORTS:\n"
        + "\n".join(f"    {a} -> {b}: {', '.join(v)}" for (a, b), v in unexplained.items()))
    uncommented = [p for v in found.values() for p in v if p.endswith("(no comment saying why)")]
    assert not uncommented, "function-level imports without a comment saying why: " + \
        ", ".join(uncommented)
    stale = sorted(set(FUNCTION_LEVEL_IMPORTS) - set(found))
    assert not stale, f"FUNCTION_LEVEL_IMPORTS lists imports that are gone: {stale}"
