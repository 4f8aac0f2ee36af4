"""Shared fixtures: local servers on free loopback ports, and temporary history folders; the suite's two tiers.

``pytest -m "not slow"`` is the quick tier. Tests marked ``browser``, ``ray`` or ``local`` are ``slow`` as well,
and a quick-tier run of the whole folder fails when it left a module of ``flux_nb`` unimported.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import ipaddress
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

import flux_nb
from flux_nb.server import EmbeddedServer, ServerConfig
from flux_nb.session import Flux

# Test servers may fetch from and post webhooks to loopback (their own image sites and receivers).
LOOPBACK = frozenset({"127.0.0.0/8", "::1", "localhost"})


# Hypothesis (and schemathesis on it) keep their example database outside the source tree.
with contextlib.suppress(ImportError):
    from hypothesis import configuration as _hypothesis_configuration

    _hypothesis_configuration.set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "flux-nb-hypothesis")


@pytest.fixture(autouse=True)
def same_working_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test (or a cell it runs) that changes directory gets the old one back afterwards."""
    monkeypatch.chdir(Path.cwd())


def loopback_only_resolver(host: str, port: int) -> list[str]:
    """Loopback only: a test never sends a DNS query nor reaches another address (tests inject their own resolvers)."""
    if host.lower() == "localhost":
        return ["127.0.0.1"]
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return [host.strip("[]")]
    raise OSError(f"tests resolve only loopback addresses, not {host!r}; inject a resolver")


@pytest.fixture(autouse=True)
def no_name_lookups(monkeypatch: pytest.MonkeyPatch) -> None:
    """URL references are measured before pricing: in tests, only loopback literals ever resolve."""
    monkeypatch.setattr("flux_nb.addresses.resolve", loopback_only_resolver)


@pytest.fixture(autouse=True)
def slots_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test's shared slot table lives in a folder of its own, never in the user's cache."""
    folder = tmp_path_factory.mktemp("slots")
    monkeypatch.setenv("FLUX_NB_SLOTS_DIR", str(folder))
    return folder


@pytest.fixture
def server_factory() -> Iterator[Callable[..., EmbeddedServer]]:
    """Start local servers with ServerConfig options; all are stopped after the test."""
    started: list[EmbeddedServer] = []

    def start(**options: Any) -> EmbeddedServer:
        options.setdefault("allow_fetch", LOOPBACK)
        server = EmbeddedServer(ServerConfig(**options)).start()
        started.append(server)
        return server

    yield start
    for server in started:  # each finishes shutting down in the background while the next test runs
        server.stop(wait=False)


@pytest.fixture
def server(server_factory: Callable[..., EmbeddedServer]) -> EmbeddedServer:
    """A local preview server with no simulated latency."""
    return server_factory()


@pytest.fixture
def flux(server: EmbeddedServer, history_dir: Path) -> Iterator[Flux]:
    """A session on the test server with a fresh history, closed after the test."""
    session = Flux(endpoint=server.url, history_dir=history_dir)
    yield session
    session.close()


@pytest.fixture
def ipython(server: EmbeddedServer, history_dir: Path) -> Iterator[Any]:
    """A fresh IPython shell with flux_nb loaded, pointed at the test server and a temporary history."""
    from IPython.core.interactiveshell import InteractiveShell

    InteractiveShell.clear_instance()
    shell = InteractiveShell.instance()
    shell.config.Flux.history_dir = str(history_dir)  # read from the start: nothing lands in the working directory
    shell.run_line_magic("load_ext", "flux_nb")
    session = shell.user_ns["flux"]
    session.endpoint, session.history_dir = server.url, str(history_dir)
    yield shell
    session.close()
    InteractiveShell.clear_instance()


@pytest.fixture
def history_dir(tmp_path: Path) -> Path:
    return tmp_path / "history"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised FLUX.2 [klein] saved to a folder, offline (needs the [local] extra)."""
    from tests.tiny_klein import save_tiny_pipeline

    os.environ["HF_HUB_OFFLINE"] = "1"
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-klein"))


#: Markers that make a test slow too: it needs a browser, a Ray instance, or torch and a model.
SLOW_WITH = ("browser", "ray", "local")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` what needs a browser, Ray or torch, before ``-m`` selects; under pytest-xdist
    (``--dist loadgroup``) a file's tests run in one worker, and every test that starts Ray in the same one."""
    for item in items:
        if any(item.get_closest_marker(name) for name in SLOW_WITH):
            item.add_marker(pytest.mark.slow)
        group = "ray" if item.get_closest_marker("ray") else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.hookimpl(trylast=True, specname="pytest_collection_modifyitems")
def order_ray_tests(items: list[pytest.Item]) -> None:
    """The Ray tests share one Ray instance whose replicas some of them kill: they keep their written order
    (the rest of the suite stays shuffled)."""
    positions = [i for i, item in enumerate(items) if item.nodeid.startswith("tests/test_ray.py::")]
    written = sorted((items[i] for i in positions), key=lambda item: item.location[1])
    for position, item in zip(positions, written, strict=True):
        items[position] = item


def forget_shells() -> None:
    """Drop the exit cleanups of the IPython shells the tests made and threw away.

    IPython registers one per shell, each ending in a ``gc.collect()``: after a whole run, with hundreds of
    shells and a large heap, pytest took minutes to exit.
    """
    shells = sys.modules.get("IPython.core.interactiveshell")
    if shells is None:
        return
    for found in gc.get_objects():
        if issubclass(type(found), shells.InteractiveShell):  # type(), not isinstance: no __class__ lookups
            atexit.unregister(found.atexit_operations)


# -- the quick tier imports every module ------------------------------------------------------------


def package_modules(root: Path = Path(flux_nb.__file__).parent) -> set[str]:
    """Every module of the package under ``root``, by its dotted name."""
    names = set()
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def imported_modules() -> set[str]:
    """The modules of ``flux_nb`` this process has imported."""
    return {name for name in sys.modules if name == "flux_nb" or name.startswith("flux_nb.")}


def unimported(imported: Iterable[str], modules: set[str] | None = None) -> list[str]:
    """The package's modules missing from ``imported``."""
    return sorted((package_modules() if modules is None else modules) - set(imported))


def is_whole_quick_tier(config: pytest.Config) -> bool:
    """A run of the quick tier over the whole suite: ``-m "not slow"``, no ``-k``, no narrower paths."""
    paths = [Path(arg.split("::")[0]).resolve() for arg in config.args]
    whole = not paths or paths == [Path(config.rootpath, "tests").resolve()] or paths == [config.rootpath.resolve()]
    return config.option.markexpr.strip() == "not slow" and not config.option.keyword and whole


_WORKER_IMPORTS: set[str] = set()
MISSING = pytest.StashKey[list[str]]()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """Under pytest-xdist: gather what each worker imported."""
    _WORKER_IMPORTS.update(getattr(node, "workeroutput", {}).get("flux_nb_modules", ()))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Drop the IPython shells' exit cleanups; report modules the quick tier never imported."""
    forget_shells()
    config = session.config
    if hasattr(config, "workeroutput"):  # an xdist worker: the controller decides
        config.workeroutput["flux_nb_modules"] = sorted(imported_modules())
        return
    if not is_whole_quick_tier(config) or session.testscollected == 0:
        return
    imported = _WORKER_IMPORTS if config.pluginmanager.hasplugin("dsession") else imported_modules()
    missing = unimported(imported)
    if missing:
        config.stash[MISSING] = missing
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if missing := config.stash.get(MISSING, None):
        terminalreporter.section("quick tier", sep="=", red=True)
        terminalreporter.write_line(f"no quick-tier test imports {len(missing)} module(s): {', '.join(missing)}")
