"""The package's layers import one way only: no cycle between edgezoo's packages (counting
imports inside functions too), simulation never reaches into export, and TIDL's facts and the
ONNX graph helpers sit below everything that reads them."""

import ast
from pathlib import Path

import edgezoo

ROOT = Path(edgezoo.__file__).parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Every edgezoo module a file imports, at any depth (function-level imports too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{a.name}" for a in node.names}
            out |= submodules & MODULES.keys()
            if not submodules <= MODULES.keys():
                out.add(node.module)
    return {name for name in out if name in MODULES}


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        for imported in _imports(path):
            if _package(imported) != _package(module):
                graph.setdefault(_package(module), set()).add(_package(imported))
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle between packages, or None."""
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt] if nxt in path else [*path, nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_import_cycle_between_packages():
    assert _cycle(_package_graph()) is None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_export_may_call_simulation_but_simulation_never_reaches_into_export():
    graph = _package_graph()
    assert "edgezoo.simulation" in graph["edgezoo.export"]
    reach, pending = set(), ["edgezoo.simulation"]
    while pending:
        for nxt in graph.get(pending.pop(), ()):
            if nxt not in reach:
                reach.add(nxt)
                pending.append(nxt)
    assert "edgezoo.export" not in reach


def test_tidl_facts_and_graph_helpers_depend_on_nothing_but_errors():
    graph = _package_graph()
    for low in ("edgezoo.tidl", "edgezoo.onnxgraph"):
        assert graph.get(low, set()) <= {"edgezoo.errors"}, low


def test_the_engine_sits_above_export_and_simulation_and_applications_on_top():
    graph = _package_graph()
    for below in ("edgezoo.export", "edgezoo.simulation", "edgezoo.quantization"):
        assert "edgezoo.engine" not in graph.get(below, set()), below
    applications = {"edgezoo.cli", "edgezoo.demo"}
    for package, imported in graph.items():
        if package not in applications:
            assert not imported & applications, package


def test_the_top_level_api_is_small_and_has_no_deprecated_names():
    import pytest

    exported_errors = [n for n in edgezoo.__all__ if n.endswith("Error")]
    assert exported_errors == ["EdgezooError", "UsageError"]
    assert len(edgezoo.__all__) <= 35
    for gone in ("WeightsError", "unfreeze_bn", "unfreeze_quant_range", "NotAThing"):
        with pytest.raises(AttributeError):
            getattr(edgezoo, gone)


def test_no_deprecation_shims_are_left():
    """0.x: old spellings are removed, not kept behind a DeprecationWarning."""
    shims = [
        module
        for module, path in MODULES.items()
        if "warnings.warn(" in (text := path.read_text()) and "DeprecationWarning" in text
    ]
    assert shims == []


def _task_name_tests(path: Path) -> list[int]:
    """Lines of a file that compare with a task's name or key a table by one."""
    from edgezoo.tasks import task_names

    names, constants = set(task_names()), {"CLASSIFICATION", "SEGMENTATION", "DETECTION"}

    def is_task_name(node: ast.AST) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in names
        if isinstance(node, ast.Name | ast.Attribute):
            return (node.id if isinstance(node, ast.Name) else node.attr) in constants
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            return any(is_task_name(item) for item in node.elts)
        return False

    def tests_a_name(node: ast.AST) -> bool:
        if isinstance(node, ast.Compare):
            return any(is_task_name(side) for side in [node.left, *node.comparators])
        if isinstance(node, ast.Dict):
            return any(key is not None and is_task_name(key) for key in node.keys)
        return isinstance(node, ast.Match)

    lines = [n.lineno for n in ast.walk(ast.parse(path.read_text())) if tests_a_name(n)]
    return lines


def test_only_the_tasks_package_tests_a_task_by_name():
    found = {
        module: lines
        for module, path in MODULES.items()
        if not module.startswith("edgezoo.tasks") and (lines := _task_name_tests(path))
    }
    assert found == {}, "ask get_task(name) instead of testing the name"


def test_the_task_name_finder_finds_comparisons_and_tables(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text(
        "a = task == SEGMENTATION\nb = {CLASSIFICATION: 1}\nc = t in ('segmentation', 'x')\n"
        "d = task == 'other'\n"
    )
    assert _task_name_tests(path) == [1, 2, 3]
