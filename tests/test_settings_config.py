"""Settings are checked however they are set: ``%config``, a traitlets config, the constructor, an attribute.

An invalid value is refused with a clear error and the value before it stays (``%config Flux.budget = nan``
once printed its error and kept ``nan``, which turned the budget off).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from traitlets import TraitError
from traitlets.config import Config

from flux_nb import Flux, ValidationError

# Every setting that has a check: a valid value other than its default, and invalid ones (as Python source).
CHECKED: dict[str, tuple[Any, list[str]]] = {
    "budget": (20.0, ["float('nan')", "-1", "'lots'"]),
    "confirm_over": (80.0, ["float('nan')", "-0.5"]),
    "task_timeout": (120.0, ["0", "-3", "float('inf')", "float('nan')", "'soon'"]),
    "download_stall": (12.0, ["0", "float('inf')"]),
    "slots_say_after": (5.0, ["0", "float('nan')"]),
    "max_concurrency": (4, ["0", "-2", "2.5"]),
    "thumbnail_size": (256, ["0", "4097"]),
    "safety_tolerance": (5, ["6", "-1", "True"]),
    "default_width": (512, ["32", "0"]),
    "default_height": (768, ["-64", "63"]),
    "output_format": ("png", ["'gif'"]),
    "region": ("eu", ["'mars'"]),
    "thumbnail_format": ("webp", ["'png'"]),
}
CASES = [(name, good, bad) for name, (good, bads) in CHECKED.items() for bad in bads]
IDS = [f"{name}={bad}" for name, _good, bad in CASES]
REFUSED = (ValidationError, TraitError)
SAYS_WHERE = r"Flux\W.*{0}|{0}\W.*Flux"  # an error names the setting and the class


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[InteractiveShell]:
    InteractiveShell.clear_instance()
    ipython = InteractiveShell.instance()
    ipython.config.Flux.history_dir = str(tmp_path / "history")
    ipython.run_line_magic("load_ext", "flux_nb")
    yield ipython
    ipython.user_ns["flux"].close()
    InteractiveShell.clear_instance()


def config_of(name: str, value: Any) -> Config:
    config = Config()
    config.Flux[name] = value
    return config


def test_every_checked_setting_is_listed() -> None:
    """A new check on a setting is tested here too: these are the traits whose validation is flux_nb's own."""
    traits = Flux.class_traits(config=True).items()
    own = {name for name, trait in traits if type(trait).__module__ == "flux_nb.settings"}
    enums = {name for name, trait in traits if type(trait).__name__ == "Enum"}
    assert own | enums == set(CHECKED)


@pytest.mark.parametrize(("name", "good", "bad"), CASES, ids=IDS)
def test_config_magic_refuses_and_keeps_the_old_value(
    shell: InteractiveShell, caplog: pytest.LogCaptureFixture, name: str, good: Any, bad: str
) -> None:
    shell.run_line_magic("config", f"Flux.{name} = {good!r}")
    flux = shell.user_ns["flux"]
    assert getattr(flux, name) == good
    shell.run_line_magic("config", f"Flux.{name} = {bad}")
    assert getattr(flux, name) == good
    assert any(re.search(SAYS_WHERE.format(name), r.getMessage()) for r in caplog.records)  # %config logs it


@pytest.mark.parametrize(("name", "good", "bad"), CASES, ids=IDS)
def test_a_config_update_refuses_and_keeps_the_old_value(tmp_path: Path, name: str, good: Any, bad: str) -> None:
    flux = Flux(history_dir=tmp_path, config=config_of(name, good))
    try:
        assert getattr(flux, name) == good
        with pytest.raises(REFUSED, match=SAYS_WHERE.format(name)):
            flux.update_config(config_of(name, eval(bad)))
        assert getattr(flux, name) == good
    finally:
        flux.close()


@pytest.mark.parametrize(("name", "good", "bad"), CASES, ids=IDS)
def test_the_constructor_refuses_a_config_or_an_argument(tmp_path: Path, name: str, good: Any, bad: str) -> None:
    with pytest.raises(REFUSED, match=SAYS_WHERE.format(name)):
        Flux(history_dir=tmp_path, config=config_of(name, eval(bad)))
    with pytest.raises(REFUSED, match=SAYS_WHERE.format(name)):
        Flux(history_dir=tmp_path, **{name: eval(bad)})


@pytest.mark.parametrize(("name", "good", "bad"), CASES, ids=IDS)
def test_an_attribute_refuses_and_keeps_the_old_value(tmp_path: Path, name: str, good: Any, bad: str) -> None:
    flux = Flux(history_dir=tmp_path)
    try:
        setattr(flux, name, good)
        with pytest.raises(REFUSED, match=SAYS_WHERE.format(name)):
            setattr(flux, name, eval(bad))
        assert getattr(flux, name) == good
    finally:
        flux.close()


def test_valid_settings_of_one_config_all_apply(tmp_path: Path) -> None:
    config = Config()
    for name, (good, _bad) in CHECKED.items():
        config.Flux[name] = good
    flux = Flux(history_dir=tmp_path, config=config)
    try:
        assert {name: getattr(flux, name) for name in CHECKED} == {name: good for name, (good, _) in CHECKED.items()}
    finally:
        flux.close()


@pytest.mark.parametrize(
    ("name", "bad", "says"),
    [
        ("max_concurrency", 0, "Flux.max_concurrency must be a whole number above 0, got 0"),
        ("thumbnail_size", 4097, "Flux.thumbnail_size must be a whole number above 0 and at most 4096, got 4097"),
        ("task_timeout", 0, "Flux.task_timeout must be a finite number above 0, got 0.0"),
        ("download_stall", float("inf"), "Flux.download_stall must be a finite number above 0, got inf"),
        ("budget", -1, "Flux.budget must be a number of credits, 0 or more (None: no limit), got -1.0"),
    ],
)
def test_the_error_says_what_the_setting_takes(tmp_path: Path, name: str, bad: Any, says: str) -> None:
    flux = Flux(history_dir=tmp_path)
    try:
        with pytest.raises(ValidationError) as refused:
            setattr(flux, name, bad)
        assert str(refused.value) == says
    finally:
        flux.close()


def test_a_config_file_with_an_invalid_value_is_refused(tmp_path: Path) -> None:
    """A traitlets config file (``c.Flux.budget = ...``), loaded as Jupyter loads one."""
    from traitlets.config.loader import PyFileConfigLoader

    (tmp_path / "good_config.py").write_text("c.Flux.budget = 20.0\nc.Flux.task_timeout = 90.0\n")
    (tmp_path / "bad_config.py").write_text("c.Flux.budget = float('nan')\n")
    good = PyFileConfigLoader("good_config.py", path=str(tmp_path)).load_config()
    bad = PyFileConfigLoader("bad_config.py", path=str(tmp_path)).load_config()
    flux = Flux(history_dir=tmp_path / "history", config=good)
    try:
        with pytest.raises(ValidationError, match=r"Flux\.budget must be a number, got nan"):
            flux.update_config(bad)
        assert (flux.budget, flux.task_timeout) == (20.0, 90.0)
    finally:
        flux.close()
    with pytest.raises(ValidationError, match=r"Flux\.budget must be a number, got nan"):
        Flux(history_dir=tmp_path / "history", config=bad)
