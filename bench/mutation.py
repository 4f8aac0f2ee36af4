"""Mutation testing of the modules that guard money and data, on demand (never in CI).

``mutmut`` changes one operator, constant or call at a time and runs the tests that reach it; a
mutant the tests still pass ("survived") is a bug the suite would let through. The run works in a
scratch copy of the project (the source tree is never touched) and prints, per module, the score and
the survivors; ``bench/MUTATION.md`` keeps the latest figures and explains every survivor left.

    pip install "mutmut>=3.8"                              # not a dev dependency: the suite never needs it
    python -m bench.mutation --module protocol             # the cheapest module, about ten minutes on 2 cores
    python -m bench.mutation --module client --module store --jobs 2
    python -m bench.mutation --list                        # the modules and their test selections
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Target:
    """A module to mutate and the fast tests that guard it (pure or in-process: no subprocess servers)."""

    sources: tuple[str, ...]
    tests: tuple[str, ...]
    # Tests left out of the mutation run for their time (each mutant reruns every test that reaches it).
    slow: tuple[str, ...] = ()


CLIENT_SLOW = (
    "tests/test_client.py::test_sixty_tasks_against_a_24_task_limit_all_finish",
    "tests/test_client.py::test_a_submit_whose_answer_is_lost_is_never_resent",
    "tests/test_client.py::test_polling_learns_durations_from_each_finished_task",
    "tests/test_client.py::test_polls_answered_429_keep_polling_honouring_retry_after",
    "tests/test_client.py::test_an_expired_delivery_url_is_a_clear_delivery_error",
    "tests/test_client.py::test_a_task_slower_than_the_task_timeout_times_out",
)

# tests/test_client_bounds.py without its tests that start servers or IPython shells (the rest is pure).
CLIENT_BOUNDS = "tests/test_client_bounds.py"
CLIENT_BOUNDS_SERVERS = tuple(
    f"{CLIENT_BOUNDS}::{name}"
    for name in (
        "test_a_trickling_reference_is_left_at_the_probes_one_deadline",
        "test_the_sessions_probe_takes_its_stated_deadline",
        "test_a_claimed_size_beyond_the_apis_limits_is_not_believed",
        "test_an_absurd_claim_is_priced_at_the_cap_and_said_at_most",
        "test_the_previous_cell_is_never_sent_from_a_notebook",
        "test_a_key_anywhere_in_a_batch_is_refused_before_anything_is_sent_or_read",
        "test_a_key_typed_in_a_cell_or_a_vary_value_is_never_sent",
        "test_a_download_that_stalls_ends_early_with_a_delivery_error",
        "test_the_whole_download_deadline_follows_a_shorter_task_timeout",
        "test_flux_download_stall_is_a_setting_and_the_stalled_task_resumes",
    )
)

TARGETS: dict[str, Target] = {
    "protocol": Target(
        ("flux_nb/protocol.py",),
        ("tests/test_protocol.py", "tests/test_money_guards.py", "tests/test_money.py"),
    ),
    "client": Target(
        ("flux_nb/http/client.py",),
        (
            "tests/test_client_mutants.py",
            "tests/test_client_paths.py",
            "tests/test_money_guards.py",
            "tests/test_client.py",
            "tests/test_polling.py",
        ),
        CLIENT_SLOW,
    ),
    "retry": Target(
        ("flux_nb/http/retry.py", "flux_nb/http/responses.py"),
        # pure and in-process only: RetryPolicy.run is reached by every client test, so test_client.py's
        # local servers would rerun for each of its mutants
        (
            "tests/test_retry_mutants.py",
            "tests/test_client_paths.py",
            "tests/test_polling.py",
            "tests/test_money_guards.py",
        ),
    ),
    "store": Target(
        ("flux_nb/history/store.py",),
        (
            "tests/test_store_mutants.py",
            "tests/test_store.py",
            "tests/test_history_experiments.py",
            "tests/test_history_faults.py",
            "tests/test_money_guards.py",
        ),
    ),
    "frame": Target(
        ("flux_nb/history/frame.py",),
        ("tests/test_store.py", "tests/test_history_experiments.py", "tests/test_history_faults.py"),
    ),
    "jobs": Target(
        ("flux_nb/core/jobs.py", "flux_nb/core/outcomes.py"),
        ("tests/test_jobs_mutants.py", "tests/test_money_guards.py", "tests/test_faults.py", "tests/test_session.py"),
        ("tests/test_faults.py::test_a_300_request_sweep_under_mixed_faults_loses_nothing",),
    ),
    "resuming": Target(
        ("flux_nb/core/resuming.py", "flux_nb/owners.py"),
        ("tests/test_resume_ownership.py",),
        (  # the first for its time; the second runs flux-nb in a subprocess, which imports the unmutated package
            "tests/test_resume_ownership.py::test_resume_unsent_in_another_session_leaves_a_queued_batch_alone",
            "tests/test_resume_ownership.py::test_flux_nb_resume_leaves_another_host_s_task_alone_and_says_so",
        ),
    ),
    "bundle": Target(
        ("flux_nb/export/bundle.py",),
        ("tests/test_bundle_handover.py", "tests/test_export.py"),
        ("tests/test_export.py::test_a_hundred_rows_reopen_in_a_fresh_process_and_rebuild_the_same_grid",),
    ),
    "metadata": Target(
        ("flux_nb/metadata/__init__.py", "flux_nb/metadata/containers.py", "flux_nb/metadata/provenance.py"),
        ("tests/test_metadata_handover.py", "tests/test_metadata.py"),
    ),
    "comfyui": Target(("flux_nb/metadata/comfyui.py",), ("tests/test_alternatives_and_imports.py",)),
    "templates": Target(
        ("flux_nb/core/templates.py",), ("tests/test_templates.py", CLIENT_BOUNDS), CLIENT_BOUNDS_SERVERS
    ),
    "axes": Target(
        ("flux_nb/core/axes.py",),
        ("tests/test_sweep.py", "tests/test_templates.py", CLIENT_BOUNDS),
        CLIENT_BOUNDS_SERVERS,
    ),
    "addresses": Target(
        ("flux_nb/addresses.py",), ("tests/test_reference_probe.py", CLIENT_BOUNDS), CLIENT_BOUNDS_SERVERS
    ),
    "settings": Target(("flux_nb/settings.py",), ("tests/test_settings_config.py", "tests/test_guard.py")),
    "judging": Target(
        (
            "flux_nb/history/review.py",
            "flux_nb/history/view.py",
            "flux_nb/history/filters.py",
            "flux_nb/history/batches.py",
        ),
        ("tests/test_reviews_by_experiment.py", "tests/test_history_experiments.py", "tests/test_batches.py"),
        (  # kernels and a browser: seconds each, and the same code is reached by the in-process tests
            "tests/test_batches.py::test_the_report_follows_dark_mode_and_fits_a_narrow_screen",
            "tests/test_batches.py::test_every_row_records_its_batch_and_that_batchs_axes",
            "tests/test_batches.py::test_an_edit_without_a_size_records_its_output_size",
            "tests/test_batches.py::test_flux_history_shows_the_review_columns",
            "tests/test_batches.py::test_flux_grid_takes_label_and_sort_and_saves_each_cells_request",
        ),
    ),
    "outbound": Target(
        ("flux_nb/server/outbound.py",),
        ("tests/test_server_bounds.py", "tests/test_server_security.py"),
        ("tests/test_server_bounds.py::test_four_9000_square_references_cost_the_server_no_memory",),
    ),
}


def mutmut_config(target: Target) -> str:
    """The ``[tool.mutmut]`` table for one target."""
    tests = [t for t in target.tests if (ROOT / t.split("::")[0]).exists()]
    tests += [arg for test in target.slow for arg in ("--deselect", test)]
    lines = [
        "[tool.mutmut]",
        'source_paths = ["flux_nb"]',
        f"only_mutate = {json.dumps(list(target.sources))}",
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
        # a mutant that makes a test sleep until a deadline fails it after 20 s (pytest-timeout), not 15x its time
        'pytest_add_cli_args = ["-p", "no:randomly", "-p", "no:cacheprovider", "-q", "--timeout=20"]',
        'also_copy = ["tests", "bench"]',
    ]
    return "\n".join(lines) + "\n"


def scratch_copy(name: str, target: Target, workdir: Path) -> Path:
    """A fresh copy of the package and its tests, with mutmut's settings in its pyproject.toml."""
    where = workdir / name
    if where.exists():
        shutil.rmtree(where)
    where.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".flux", "artifacts")
    for folder in ("flux_nb", "tests", "bench"):
        shutil.copytree(ROOT / folder, where / folder, ignore=ignore)
    pyproject = (ROOT / "pyproject.toml").read_text()
    (where / "pyproject.toml").write_text(pyproject + "\n" + mutmut_config(target))
    return where


def mutmut(where: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BFL_API_KEY")}
    return subprocess.run(
        [sys.executable, "-m", "mutmut", *args], cwd=where, env=env, capture_output=True, text=True, check=False
    )


def survivors(where: Path) -> list[str]:
    """The names of the mutants no test killed (``mutmut show NAME`` in ``where`` prints each diff)."""
    out = mutmut(where, "results").stdout
    return [line.split(":")[0].strip() for line in out.splitlines() if line.strip().endswith("survived")]


def run(name: str, workdir: Path, jobs: int) -> dict[str, object]:
    target = TARGETS[name]
    where = scratch_copy(name, target, workdir)
    started = time.monotonic()
    done = mutmut(where, "run", "--max-children", str(jobs))
    took = time.monotonic() - started
    mutmut(where, "export-cicd-stats")
    stats_file = where / "mutants" / "mutmut-cicd-stats.json"
    if done.returncode or not stats_file.exists():
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"mutmut failed for {name} (see above); the scratch copy is {where}")
    stats = json.loads(stats_file.read_text())
    tested = int(stats.get("total", 0)) - int(stats.get("skipped", 0))
    killed = int(stats.get("killed", 0)) + int(stats.get("timeout", 0))
    left = survivors(where)
    report = {"module": name, "score": killed / tested if tested else 0.0, "seconds": round(took), **stats}
    report["survivors"] = left
    report["workdir"] = str(where)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", action="append", choices=sorted(TARGETS), help="module(s) to mutate")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "flux_nb-mutation")
    parser.add_argument("--jobs", type=int, default=2, help="test processes at once")
    parser.add_argument("--list", action="store_true", help="show the modules and their tests")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.list:
        for name, target in TARGETS.items():
            print(f"{name:9} {', '.join(target.sources)}\n          tests: {', '.join(target.tests)}")
        return
    if shutil.which("mutmut") is None and subprocess.run([sys.executable, "-c", "import mutmut"]).returncode:
        raise SystemExit('mutmut is not installed: pip install "mutmut>=3.8"')
    reports = []
    for name in args.module or list(TARGETS):
        report = run(name, args.workdir, args.jobs)
        reports.append(report)
        print(
            f"{name:9} {report['score']:.1%} killed ({report.get('killed', 0)} killed, "
            f"{report.get('timeout', 0)} timed out, {report.get('survived', 0)} survived, "
            f"{report.get('no_tests', 0)} without tests) in {report['seconds']} s"
        )
        for mutant in report["survivors"]:
            print(f"    survived: {mutant}")
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2))


if __name__ == "__main__":
    main()
