"""No import cycle between the product's modules.

The layers between packages are import-linter's contracts (pyproject.toml,
`lint-imports` in CI); this holds the modules inside each package to the same:
a cycle means neither module can be read, tested or moved without the other.
Imports inside functions and under TYPE_CHECKING count: they still tie the
two modules together, only later.
"""

from __future__ import annotations

import grimp

PRODUCT = ("cli", "api", "worker", "wiring", "billing", "ledger", "db", "runtime")


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Every set of modules that import each other (Tarjan's strongly connected
    components, iterative: the graph has hundreds of modules), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, edges = work[-1]
            step = next(edges, None)
            if step is not None:
                if step not in index:
                    index[step] = low[step] = len(index)
                    stack.append(step)
                    on_stack.add(step)
                    work.append((step, iter(sorted(graph.find_modules_directly_imported_by(step)))))
                elif step in on_stack:
                    low[module] = min(low[module], index[step])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[module])
            if low[module] == index[module]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == module:
                        break
                if len(component) > 1 or graph.direct_import_exists(
                    importer=module, imported=module
                ):
                    found.append(sorted(component))
    return found


def _explain(graph: grimp.ImportGraph, component: list[str]) -> str:
    inside = set(component)
    lines: dict[str, None] = {}  # ordered and without repeats
    for importer in component:
        for imported in sorted(graph.find_modules_directly_imported_by(importer) & inside):
            for detail in graph.get_import_details(importer=importer, imported=imported):
                lines[f"  {importer}:{detail['line_number']}: {detail['line_contents']}"] = None
    return "\n".join(lines)


def test_no_import_cycle_between_product_modules() -> None:
    graph = grimp.build_graph(*PRODUCT, cache_dir=None)
    assert "wiring.pools" in graph.modules  # the graph is the product's, not an empty one
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n\n".join(_explain(graph, c) for c in found)


def test_a_cycle_is_found_with_the_imports_that_make_it() -> None:
    graph = grimp.ImportGraph()
    for module in ("a", "a.x", "a.y", "a.z", "b"):
        graph.add_module(module)
    graph.add_import(importer="a.x", imported="a.y", line_number=3, line_contents="import a.y")
    graph.add_import(importer="a.y", imported="a.z", line_number=4, line_contents="import a.z")
    graph.add_import(importer="a.z", imported="a.x", line_number=5, line_contents="import a.x")
    graph.add_import(importer="a.z", imported="b", line_number=6, line_contents="import b")
    assert cycles(graph) == [["a.x", "a.y", "a.z"]]
    assert "a.z:5: import a.x" in _explain(graph, ["a.x", "a.y", "a.z"])
    graph.remove_import(importer="a.z", imported="a.x")
    assert cycles(graph) == []
