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

import pytest

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
