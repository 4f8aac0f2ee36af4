"""The sync bridge: async code from plain code and from inside a running loop (as in Jupyter)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from flux_nb.core.loop import LoopRunner


async def which_thread(delay: float = 0.0) -> str:
    await asyncio.sleep(delay)
    return threading.current_thread().name


@pytest.fixture
def runner() -> LoopRunner:
    loop_runner = LoopRunner(name="test-loop")
    yield loop_runner
    loop_runner.close()


def test_run_from_plain_code_uses_the_private_loop(runner: LoopRunner) -> None:
    assert runner.run(which_thread()) == "test-loop"


def test_run_inside_a_running_loop_does_not_need_nest_asyncio(runner: LoopRunner) -> None:
    async def cell() -> str:
        # A notebook cell calling sync code while the kernel's loop is running.
        asyncio.get_running_loop()
        return runner.run(which_thread(0.01))

    assert asyncio.run(cell()) == "test-loop"
    assert not hasattr(asyncio, "_nest_patched")


async def test_await_from_another_loop_keeps_that_loop_free(runner: LoopRunner) -> None:
    """The runner's coroutine waits for a flag only the caller's loop sets: a blocked caller would never set it."""
    flag = threading.Event()

    async def caller_side() -> None:
        flag.set()

    async def runner_side() -> tuple[bool, str]:
        seen = await asyncio.to_thread(flag.wait, 30)
        return seen, await which_thread()

    setting = asyncio.create_task(caller_side())
    assert await runner.wrap(runner_side()) == (True, "test-loop")
    await setting


def test_exceptions_propagate_with_their_type(runner: LoopRunner) -> None:
    async def boom() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        runner.run(boom())


def test_run_from_the_loop_thread_is_refused(runner: LoopRunner) -> None:
    async def nested() -> str:
        try:
            runner.run(which_thread())
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    assert "own loop" in runner.run(nested())


def test_submitted_coroutines_run_concurrently_on_one_loop(runner: LoopRunner) -> None:
    barrier = runner.run(make_barrier(20))

    async def meet() -> str:
        await asyncio.wait_for(barrier.wait(), timeout=5)  # passes only if all 20 wait at once
        return threading.current_thread().name

    futures = [runner.submit(meet()) for _ in range(20)]
    assert {f.result(timeout=10) for f in futures} == {"test-loop"}


async def make_barrier(parties: int) -> asyncio.Barrier:
    return asyncio.Barrier(parties)


def test_close_stops_the_thread_and_a_new_run_restarts_it(runner: LoopRunner) -> None:
    runner.run(which_thread())
    runner.close()
    assert not any(t.name == "test-loop" and t.is_alive() for t in threading.enumerate())
    assert runner.run(which_thread()) == "test-loop"
