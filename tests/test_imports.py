"""No import cycles between the files of the ``nasrun`` package, as drawing its import graph shows them.

The graph is read from the source with ``ast``, so the test sees every ``import`` and
``from ... import`` statement: at module level, inside functions (a lazy import only delays the
cycle to the first call) and under ``if TYPE_CHECKING:`` (an annotation that names a type of a
file importing this one still ties the two files together; a protocol next to its user breaks
the tie, as ``nasrun.evaluator.base.EvalContext`` and ``nasrun.search.oneshot.plugin.Stepper`` do).

An edge goes to the module an import names: ``from nasrun.a import b`` reaches ``nasrun.a.b`` if
that is a module, else ``nasrun.a``; ``import nasrun.a.b`` reaches ``nasrun.a.b``. The parent
packages that Python also imports on the way are not edges: every submodule would otherwise be
in a cycle with a package ``__init__`` that imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "nasrun"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE
#: The ``nasrun-report`` command: it reads run folders with the library; the library never imports it.
CONSUMER = f"{PACKAGE}.report"


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the package: dotted name -> (file, whether it is a package ``__init__``)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree``, ``if TYPE_CHECKING:`` blocks included."""
    return [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]


def _from_source(node: ast.ImportFrom, package: str) -> str:
    """The module a ``from ... import`` statement in ``package`` imports from, relative ones resolved."""
    if node.level:  # relative: `from . import x`, `from ..a import x`
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        return ".".join([*base, *([node.module] if node.module else [])])
    return node.module or ""


def import_graph() -> dict[str, set[str]]:
    """``module -> the modules of the package it imports``."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            source = _from_source(node, package)
            for alias in node.names:
                targets.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source)
        inside = {t for t in targets if t == PACKAGE or t.startswith(PACKAGE + ".")}
        unknown = inside - modules.keys()
        assert not unknown, f"{name} imports {sorted(unknown)}, which are not modules of {PACKAGE}"
        graph[name] = inside - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
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
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_graph_covers_the_package() -> None:
    graph = import_graph()
    # So that the test below cannot pass on an empty or broken graph.
    assert {"nasrun.cli", "nasrun.pipeline", "nasrun.run_folder", "nasrun.train.trainer"} <= graph.keys()
    assert sum(len(targets) for targets in graph.values()) > len(graph)
    assert "nasrun.pipeline" in graph["nasrun.cli"]  # a function-level import is an edge
    assert "nasrun.run_folder" in graph["nasrun.train.trainer"]


def test_cycle_detection_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles_in_the_package() -> None:
    graph = import_graph()
    found = cycles(graph)
    report = "; ".join(
        " <-> ".join(component)
        + " ("
        + ", ".join(f"{m} -> {t}" for m in component for t in sorted(graph[m] & set(component)))
        + ")"
        for component in found
    )
    assert not found, f"import cycles in {PACKAGE}: {report}"


def consumer_imports(tree: ast.AST, package: str) -> list[str]:
    """The names under ``CONSUMER`` that the import statements of ``tree`` (a file of ``package``)
    name: ``import nasrun.report.cli``, ``from nasrun.report.cli import main``, ``from nasrun import
    report`` and relative forms alike."""
    names: set[str] = set()
    for node in _imports(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        else:
            source = _from_source(node, package)
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)
    return sorted(n for n in names if n == CONSUMER or n.startswith(CONSUMER + "."))


def test_consumer_imports_finds_every_form() -> None:
    def found(code: str, package: str = "nasrun.search") -> list[str]:
        return consumer_imports(ast.parse(code), package)

    assert found("import nasrun.report.cli") == ["nasrun.report.cli"]
    assert found("from nasrun import report") == ["nasrun.report"]
    assert found("from ..report.folders import Run") == ["nasrun.report.folders", "nasrun.report.folders.Run"]
    assert found("def f():\n    from nasrun.report import cli") == ["nasrun.report", "nasrun.report.cli"]
    assert found("if TYPE_CHECKING:\n    from nasrun.report.cli import main") != []
    assert found("from nasrun.bo.reporting import current_reporter\nimport nasrun.reports") == []


def test_nothing_outside_the_report_command_imports_it() -> None:
    """``nasrun.report`` (the ``nasrun-report`` command) consumes the library; the library, its
    Hydra plug-in included, writes its output through modules of its own."""
    repo = ROOT.parent
    files = [p for p in sorted(ROOT.rglob("*.py")) if not p.is_relative_to(ROOT / "report")]
    files += sorted((repo / "hydra_plugins").rglob("*.py"))
    assert len(files) > 50 and ROOT / "pipeline.py" in files  # so that the test cannot pass on no files
    offending = {}
    for path in files:
        package = ".".join(path.relative_to(repo).parts[:-1])
        names = consumer_imports(ast.parse(path.read_text(), filename=str(path)), package)
        if names:
            offending[str(path.relative_to(repo))] = names
    assert not offending, f"{CONSUMER} is imported outside {CONSUMER}: {offending}"
