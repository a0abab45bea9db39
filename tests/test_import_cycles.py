"""No import cycle inside ``pst``: every module's imports, lazy ones included, run one way.

A cycle works only as long as one side imports lazily or late, and breaks on the next
refactoring; it also means neither module can be understood or tested alone.
"""
import ast
import graphlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pst"


def _module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Every Import / ImportFrom node, at any depth, outside ``if TYPE_CHECKING:`` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (n for child in node.orelse for n in _imports(child))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _imports(node)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (``from m import x`` counts as ``m.x``
    when that is a module). Parent packages a dotted import also initialises are left out,
    as in every import-graph tool: they are not a dependency the importing module chose."""
    paths = {_module_name(p, package): p for p in package.rglob("*.py") if "__pycache__" not in p.parts}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        is_package = path.name == "__init__.py"
        targets = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                targets.add(submodule if submodule in paths else module)
        graph[name] = {target for target in targets if target in paths and target != name}
    return graph


def test_the_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    assert "pst.adapter" in graph["pst"]  # from .adapter import ... in a package __init__
    assert "pst.masking" in graph["pst.layers"]  # from . import masking
    assert "pst.repro.data.bundled" in graph["pst.repro.profiles"]  # from .data import bundled


def test_cycle_detection_finds_a_lazy_cycle(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import f\n")
    (package / "b.py").write_text("def f():\n    from pkg.a import g\n")
    try:
        graphlib.TopologicalSorter(import_graph(package)).prepare()
    except graphlib.CycleError as error:
        assert set(error.args[1]) == {"pkg.a", "pkg.b"}
    else:
        raise AssertionError("a.py -> b.py -> (lazily) a.py was not found")


def test_no_import_cycle_in_pst():
    try:
        graphlib.TopologicalSorter(import_graph()).prepare()
    except graphlib.CycleError as error:
        raise AssertionError("import cycle in pst: " + " -> ".join(error.args[1])) from None
