"""The package's shape: every import points down a layer, and no module imports itself back in a cycle.

Imports are read from the source (function-level imports included: a lazy upward import is still an
upward dependency); imports under ``if TYPE_CHECKING:`` are type hints only and are skipped.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "flux_nb"

# Lower numbers sit lower. A module may import a lower layer, or its own package (e.g. http -> http).
LAYERS: dict[str, float] = {
    "flux_nb.errors": 0,
    "flux_nb.protocol": 1,
    "flux_nb.images": 2,
    "flux_nb.fonts": 2,
    "flux_nb.sqlite": 2,
    "flux_nb.group_commit": 2,  # work arriving together done in one call (the history's sending marks)
    "flux_nb.addresses": 2,  # which addresses are public: the rule for fetching user-given URLs
    "flux_nb.owners": 2,  # which process owns a row, and whether it still runs (history records)
    "flux_nb.reference_fitting": 2.2,  # shrink(image): references re-encoded to fit the API's limits, when asked
    "flux_nb.metadata": 2.5,
    "flux_nb.http": 3,
    "flux_nb.history": 3,
    "flux_nb.server": 3,
    "flux_nb.core": 4,
    "flux_nb.grids": 4.5,  # labelled grids: pure layout of results or rows, used by sweeps, exports and notebooks
    "flux_nb.export": 4.6,  # bundles, reports, MLflow: an experiment leaving the history
    "flux_nb.accessor": 4.7,  # frame.flux.grid/to_mlflow
    "flux_nb.experiments": 4.8,  # the session's experiment methods: review, restore from files, hand-over
    "flux_nb.settings": 4.95,
    "flux_nb.recovery": 4.95,
    "flux_nb.session": 5,
    "flux_nb.notebook": 6,
    "flux_nb.cli_client": 6.9,  # flux-nb's client commands, under the entry point (which alone starts servers)
    "flux_nb.cli": 7,
    "flux_nb.__main__": 8,
    "flux_nb": 8,  # the public surface: the one place that wires the layers together
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


# Only these may import the local server: the library reaches it over HTTP, never by import.
SERVER_USERS = ("flux_nb", "flux_nb.cli", "flux_nb.__main__", "flux_nb.server.__main__")


def may_import_server(module: str) -> bool:
    return module in SERVER_USERS or module.startswith("flux_nb.server.") or module == "flux_nb.server"


def layer_of(module: str) -> tuple[str, float]:
    """The layer key (longest matching prefix in LAYERS) and its rank; entry points (__main__) sit on top."""
    if module.endswith(".__main__"):
        return module, LAYERS["flux_nb.__main__"]
    best = max((k for k in LAYERS if module == k or module.startswith(k + ".")), key=len)
    return best, LAYERS[best]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, module: str | None = None) -> set[str]:
    """Every flux_nb module ``path`` (named ``module``) imports, at any depth, outside ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    module = module or module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "flux_nb")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] == "flux_nb":
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    found.add(candidate if _exists(candidate) else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {_existing(m) for m in found}


def _exists(module: str) -> bool:
    rel = Path(*module.split("."))
    root = PACKAGE.parent
    return (root / rel).with_suffix(".py").exists() or (root / rel / "__init__.py").exists()


def _existing(module: str) -> str:
    while not _exists(module) and "." in module:
        module = module.rpartition(".")[0]
    return module


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) - {module_name(p)} for p in sorted(PACKAGE.rglob("*.py"))}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules along it, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if state.get(nxt) is None:
                cycle = walk(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state:
            cycle = walk(start)
            if cycle:
                return cycle
    return None


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    """Imports from a module to a higher layer, or sideways into another package of the same layer."""
    bad = []
    for module, targets in edges.items():
        own_key, own_rank = layer_of(module)
        for target in targets:
            key, rank = layer_of(target)
            if key == "flux_nb.server" and not may_import_server(module):
                bad.append(f"{module} -> {target} (only the CLI and the package's wiring start the server)")
                continue
            if key == own_key and own_key != "flux_nb":
                continue
            if rank >= own_rank and own_key != "flux_nb":
                bad.append(f"{module} -> {target} (layer {own_rank} -> {rank})")
    return sorted(bad)


def test_the_package_has_no_import_cycle() -> None:
    assert find_cycle(graph()) is None


def test_no_module_imports_a_higher_layer() -> None:
    assert upward_imports(graph()) == []


def test_every_module_has_a_layer() -> None:
    for module in graph():
        assert layer_of(module)[0], module


@pytest.mark.parametrize(
    ("edges", "cycle"),
    [
        ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ],
)
def test_the_cycle_finder_finds_cycles(edges: dict[str, set[str]], cycle: list[str] | None) -> None:
    assert find_cycle(edges) == cycle


def test_the_layer_check_sees_an_upward_and_a_sideways_import() -> None:
    edges = {
        "flux_nb.http.client": {"flux_nb.core.backend", "flux_nb.history.store", "flux_nb.protocol"},
        "flux_nb.core.jobs": {"flux_nb.http.client", "flux_nb.core.results"},
    }
    assert upward_imports(edges) == [
        "flux_nb.http.client -> flux_nb.core.backend (layer 3 -> 4)",
        "flux_nb.http.client -> flux_nb.history.store (layer 3 -> 3)",
    ]


def test_imports_inside_functions_count_and_type_hints_do_not(tmp_path: Path) -> None:
    tree = ast.parse("if TYPE_CHECKING:\n    import flux_nb.session\ndef f():\n    import flux_nb.cli\n")
    probe = tmp_path / "probe.py"
    probe.write_text(ast.unparse(tree))
    assert imports_of(probe, "flux_nb.core.probe") == {"flux_nb.cli"}
