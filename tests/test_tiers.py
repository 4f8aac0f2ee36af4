"""The suite's own rules: what is slow, what the quick tier must import, which warnings stay out of the log;
and the races that made tests fail only under load."""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import is_whole_quick_tier, package_modules, pytest_collection_modifyitems, unimported

ROOT = Path(__file__).resolve().parents[1]


class FakeItem:
    def __init__(self, *markers: str) -> None:
        self.nodeid = f"tests/test_{'_'.join(markers) or 'plain'}.py::test_it"
        self.markers = set(markers)
        self.group = ""

    def get_closest_marker(self, name: str) -> object | None:
        return name if name in self.markers else None

    def add_marker(self, marker: pytest.MarkDecorator) -> None:
        self.markers.add(marker.name)
        if marker.name == "xdist_group":
            self.group = marker.args[0]


def test_browser_ray_and_local_tests_are_slow_too_and_ray_ones_share_a_worker() -> None:
    items = [FakeItem("browser"), FakeItem("ray"), FakeItem("local"), FakeItem("asyncio"), FakeItem()]
    pytest_collection_modifyitems(items)  # type: ignore[arg-type]
    assert ["slow" in item.markers for item in items] == [True, True, True, False, False]
    assert [item.group for item in items] == [
        "tests/test_browser.py", "ray", "tests/test_local.py", "tests/test_asyncio.py", "tests/test_plain.py"
    ]  # fmt: skip


def test_the_check_lists_every_module_of_the_package_and_names_the_ones_not_imported() -> None:
    modules = package_modules()
    assert {"flux_nb", "flux_nb.core", "flux_nb.core.jobs", "flux_nb.server.routes.delivery"} <= modules
    assert len(modules) == len(list((ROOT / "flux_nb").rglob("*.py")))
    assert unimported(modules - {"flux_nb.core.jobs"}) == ["flux_nb.core.jobs"]
    assert unimported(modules) == []


@pytest.mark.parametrize(
    ("markexpr", "keyword", "args", "whole"),
    [
        ("not slow", "", ["tests"], True),
        ("not slow", "", [], True),
        ("not slow", "", ["tests/test_tiers.py"], False),
        ("not slow", "jobs", ["tests"], False),
        ("", "", ["tests"], False),
        ("slow", "", ["tests"], False),
    ],
)
def test_only_a_quick_run_of_the_whole_folder_is_checked(
    markexpr: str, keyword: str, args: list[str], whole: bool
) -> None:
    config = SimpleNamespace(option=SimpleNamespace(markexpr=markexpr, keyword=keyword), args=args, rootpath=ROOT)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        assert is_whole_quick_tier(config) is whole  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("message", "module"),
    [
        ("For backward compatibility, 'str' dtypes are included by select_dtypes", "mlflow.tracking.client"),
        ("Using extra keyword arguments on `Field` is deprecated and will be removed", "ray.serve._private.config"),
    ],
)
def test_third_party_deprecations_stay_out_of_the_log_but_ours_do_not(message: str, module: str) -> None:
    """pyproject's filters silence these two libraries' known warnings by module; the same from flux_nb shows."""
    with warnings.catch_warnings(record=True) as seen:  # keeps the filters pytest applied from pyproject
        for where in (module, "flux_nb.history.frame"):
            warnings.warn_explicit(message, DeprecationWarning, f"{where}.py", 1, module=where, registry={})
    assert [w.filename for w in seen] == ["flux_nb.history.frame.py"]


@pytest.mark.parametrize(
    ("module", "argv", "code", "said"),
    [
        ("flux_nb.__main__", ["history", "--history-dir", "empty"], 0, "no history in empty"),
        ("flux_nb.server.__main__", ["--port", "0", "--require-key"], 2, "FLUX_NB_SERVER_KEYS"),
    ],
)
def test_the_python_dash_m_entry_points_run_the_cli_in_process(
    module: str,
    argv: list[str],
    code: int,
    said: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``python -m flux_nb`` and ``python -m flux_nb.server``, imported here as they run (the quick tier imports
    every module; child processes elsewhere run them for real)."""
    exits: list[object] = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLUX_NB_SERVER_KEYS", raising=False)
    monkeypatch.setattr(sys, "argv", [module, *argv])
    monkeypatch.setattr(sys, "exit", exits.append)
    monkeypatch.delitem(sys.modules, module, raising=False)
    importlib.import_module(module)
    out = capsys.readouterr()
    assert exits == [code] and said in out.out + out.err
