"""The package's parts are held, not mixed in, and no module imports itself back, not even for type hints.

``tests/test_layering.py`` checks the imports that run; here every import counts (``if TYPE_CHECKING:`` too),
since a cycle of type hints is still two modules that cannot be read apart.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from traitlets.config import Configurable

from flux_nb.experiments import Experiments
from flux_nb.history.queries import Queries
from flux_nb.history.review import Reviews
from flux_nb.history.store import HistoryStore
from flux_nb.recovery import Recovery
from flux_nb.session import Flux
from flux_nb.settings import FluxSettings
from tests.test_layering import PACKAGE, _existing, find_cycle, module_name

ROOT = PACKAGE.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "notebooks").glob("*.ipynb"))]


def every_import(path: Path) -> set[str]:
    """Every flux_nb module ``path`` imports anywhere: at the top, in functions, under ``if TYPE_CHECKING:``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "flux_nb")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "flux_nb" and not node.level:
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {_existing(name) for name in found}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    return {module_name(p): every_import(p) - {module_name(p)} for p in sorted(package.rglob("*.py"))}


def test_no_relative_imports_hide_from_the_walk() -> None:
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level], path


def test_the_package_has_no_import_cycle_even_in_type_hints() -> None:
    assert find_cycle(import_graph()) is None


def test_the_walk_sees_a_cycle_made_of_type_hints_and_lazy_imports(tmp_path: Path) -> None:
    """The circle there was: a lazy import one way, a type hint back (the layering check sees neither)."""
    queries, view = tmp_path / "queries.py", tmp_path / "view.py"
    queries.write_text("def view():\n    from flux_nb.history.view import HistoryView\n")
    view.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from flux_nb.history.queries import Queries\n"
    )
    edges = {"flux_nb.history.queries": every_import(queries), "flux_nb.history.view": every_import(view)}
    assert edges == {
        "flux_nb.history.queries": {"flux_nb.history.view"},
        "flux_nb.history.view": {"flux_nb.history.queries"},
    }
    assert find_cycle(edges) is not None


def test_flux_is_its_settings_and_holds_its_other_parts() -> None:
    """One base: the traits (so ``%config Flux.x`` and config files reach them); the rest are held objects."""
    assert Flux.__bases__ == (FluxSettings,)
    assert FluxSettings.__bases__ == (Configurable,)
    assert [
        name for name in vars(FluxSettings) if callable(vars(FluxSettings)[name]) and not name.startswith("__")
    ] == []
    for part in (Recovery, Experiments):
        assert part.__bases__ == (object,) and not issubclass(Flux, part)


def test_the_history_store_holds_its_queries_and_reviews() -> None:
    assert HistoryStore.__bases__ == (object,)
    for part in (Queries, Reviews):
        assert part.__bases__ == (object,) and not issubclass(HistoryStore, part)


def test_the_parts_take_no_private_attribute_of_a_host() -> None:
    """Recovery and Experiments use only what their constructors were given (their own ``self`` attributes)."""
    for path in (PACKAGE / "recovery.py", PACKAGE / "experiments.py", PACKAGE / "history" / "queries.py"):
        tree = ast.parse(path.read_text())
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            assigned = {
                t.attr
                for n in ast.walk(cls)
                if isinstance(n, ast.Assign)
                for t in n.targets
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"
            }
            used = {
                n.attr
                for n in ast.walk(cls)
                if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self"
            }
            methods = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
            assert used <= assigned | methods, (path.name, cls.name, sorted(used - assigned - methods))


def test_every_documented_session_call_exists() -> None:
    """Each ``flux.name`` the README and the notebooks show is there (``frame.flux.grid`` is the accessor)."""
    shown: set[str] = set()
    for document in DOCUMENTS:
        shown.update(re.findall(r"(?<![.\w])flux\.([a-z_]+)", document.read_text()))
    assert {"generate", "sweep", "history", "rate", "replay", "export", "open_bundle", "request_from"} <= shown
    assert sorted(name for name in shown if not hasattr(Flux, name)) == []


# -- every error a user can meet is in errors.py's tree and exported --------------------------------------

# Exceptions that never reach a user of the client: each is caught where it is raised, or answered over HTTP
# by the local server (whose clients meet the FluxError of that answer), or printed by flux-nb as one line.
INTERNAL = {
    "_TextTooLarge": "metadata/containers: stops inflating an oversized text chunk; caught in the same module",
    "TooLarge": "http/read_limits: a body past its cap; http/exchange raises the call's FluxError instead",
    "Stalled": "http/read_limits: a download stalled; http/exchange raises TransportError instead",
    "Transient": "http/retry: marks an attempt to retry; RetryPolicy raises the FluxError it carries",
    "ProbeRefused": "http/probe: a URL not measured; the request is priced at the largest size instead",
    "APIError": "server: the local server's error answer, turned into an HTTP response by its handler",
    "JobRefused": "server/engines: an engine refusing a job, answered 422 by the submit route",
    "TooManyActiveTasks": "server/task_table: answered 429 by the submit route",
    "BodyTooLarge": "server/app: a request body past the cap, answered 413",
    "OutboundRefused": "server/outbound: a reference URL the server may not fetch; logged, the fetch fails",
    "InjectedDrop": "server/fault_injection: a connection dropped on purpose by the test server",
    "ReplicaLost": "server/ray_serve: a replica died twice; the task ends with status Error (TaskFailedError)",
    "EngineUnavailable": "server/engines: flux-nb serve cannot start the engine; cli prints it as one line",
    "RayUnavailable": "server/ray_serve: flux-nb serve --ray cannot start; cli prints it as one line",
    "FluxMagicError": "notebook/magic: fails a %flux cell with one line; the FluxError it shows is its .error",
    "FluxUsageError": "notebook/magic: the same for bad input, as IPython's UsageError; .error is the ValidationError",
}


def exception_classes(package: Path = PACKAGE) -> dict[str, str]:
    """Every class ``package`` defines that derives from an exception (by its bases' names), with its module."""
    import builtins

    import flux_nb.errors

    bases: dict[str, tuple[str, list[str]]] = {}
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                names = [
                    b.id if isinstance(b, ast.Name) else b.attr
                    for b in node.bases
                    if isinstance(b, ast.Name | ast.Attribute)
                ]
                bases[node.name] = (".".join(path.relative_to(package.parent).with_suffix("").parts), names)
    known = {
        n
        for n in dir(builtins)
        if isinstance(getattr(builtins, n), type) and issubclass(getattr(builtins, n), BaseException)
    }
    known |= {n for n in vars(flux_nb.errors) if isinstance(getattr(flux_nb.errors, n), type)} | {"Error", "TraitError"}
    found: dict[str, str] = {}
    while True:
        more = {
            name: module
            for name, (module, names) in bases.items()
            if name not in found and set(names) & (known | set(found))
        }
        if not more:
            return found
        found.update(more)


def raised_names(package: Path = PACKAGE) -> set[str]:
    """The class names in ``raise Name(...)`` and ``raise Name`` anywhere in ``package``."""
    names: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(target, ast.Name) and target.id[:1].isupper():
                    names.add(target.id)
    return names


def test_every_user_error_sits_in_errors_and_is_exported() -> None:
    import flux_nb
    import flux_nb.errors

    classes = exception_classes()
    assert {"HistoryError", "LargeBatchError", "BatchInterrupted", "Transient"} <= set(classes)
    assert set(INTERNAL) <= set(classes), sorted(set(INTERNAL) - set(classes))  # no stale exemption
    user = {name: module for name, module in classes.items() if name not in INTERNAL}
    assert {name: module for name, module in user.items() if module != "flux_nb.errors"} == {}
    assert sorted(set(user) - set(flux_nb.errors.__all__)) == []
    assert sorted(set(flux_nb.errors.__all__) - set(flux_nb.__all__)) == []
    assert all(getattr(flux_nb, name) is getattr(flux_nb.errors, name) for name in flux_nb.errors.__all__)


def test_every_raised_class_is_a_user_error_or_listed_internal() -> None:
    """What ``raise`` names is a builtin, starlette's HTTPException (the local server's answer), or one of ours:
    exported, or listed internal."""
    import builtins

    import flux_nb.errors

    ours = set(exception_classes())
    raised = {name for name in raised_names() if not hasattr(builtins, name)}
    assert sorted(raised - ours) == ["HTTPException"]
    assert sorted((raised & ours) - set(flux_nb.errors.__all__) - set(INTERNAL)) == []


def test_the_error_walk_sees_an_error_class_outside_errors(tmp_path: Path) -> None:
    probe = tmp_path / "flux_nb"
    probe.mkdir()
    (probe / "store.py").write_text(
        "from flux_nb.errors import FluxError\nclass HistoryError(FluxError): ...\nclass Nested(HistoryError): ...\n"
    )
    assert set(exception_classes(probe)) == {"HistoryError", "Nested"}
