"""No import cycle among dcnbench's modules: lower layers never import higher ones.

Function-level imports count as well as module-level ones: dcnbench imports most of its heavy
modules inside the functions that need them (start-up must stay instant), so a test of the
module level alone would miss most edges, including the cycle this test was written for
(onnx_export -> verify -> onnx_export). Imports under `if TYPE_CHECKING:` do not count: they
never run. A submodule's import of its own package is no edge: Python imports a package before
any of its submodules anyway, so the package is always the lower layer.
"""

import ast
import graphlib
from pathlib import Path

import dcnbench

ROOT = Path(dcnbench.__file__).resolve().parent


def _modules(root: Path) -> dict[str, Path]:
    found = {}
    for path in root.rglob("*.py"):
        parts = ("dcnbench",) + path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported(tree: ast.AST, module: str, is_package: bool):
    """The module names an AST imports, anywhere in it but under `if TYPE_CHECKING:`."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if _type_checking(node):
            todo += node.orelse
            continue
        todo += ast.iter_child_nodes(node)
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join(package + ([node.module] if node.module else []))
            yield from (f"{base}.{a.name}" for a in node.names)  # a submodule, or a name in `base`
            yield base


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the dcnbench modules it imports (a name resolves to the longest module it names)."""
    modules = _modules(root)
    graph = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for name in _imported(ast.parse(path.read_text(), str(path)), module, is_package):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):  # a module's own parents run first anyway
                edges.add(name)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        return exc.args[1]
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(reversed(cycle))


def test_a_planted_cycle_is_found_and_named(tmp_path):
    pkg = tmp_path / "dcnbench"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dcnbench import high\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "mid.py").write_text("def f():\n    from ..high import g\n")  # relative, inside a function
    (pkg / "high.py").write_text("import dcnbench.low\n")
    assert find_cycle(import_graph(pkg)) is None  # a type-only import is no cycle
    (pkg / "low.py").write_text("from dcnbench.sub import mid\n")
    assert set(find_cycle(import_graph(pkg))) == {"dcnbench.low", "dcnbench.sub.mid", "dcnbench.high"}
