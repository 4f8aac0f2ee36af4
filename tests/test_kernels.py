"""Real kernels: an interrupted sweep stays resumable, and a second kernel leaves the first one's tasks alone."""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import KernelManager

from flux_nb.history.store import HistoryStore

pytestmark = pytest.mark.slow  # real kernels, started and interrupted

ROOT = Path(__file__).resolve().parents[1]
WAIT = 180.0  # bound on how long a kernel may take to start or a state to show up (not a speed check)


class Kernel:
    """One real IPython kernel (ipykernel) run by jupyter_client, with its outputs as text."""

    def __init__(self, cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("BFL_API_KEY", "FLUX_NB_ENDPOINT")}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.manager = KernelManager(kernel_name="python3")
        self.manager.start_kernel(cwd=str(cwd), env=env)
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=WAIT)

    def start(self, code: str) -> str:
        """Send ``code`` without waiting; its message id."""
        return self.client.execute(code)

    def outputs(self, msg_id: str) -> tuple[str, list[str]]:
        """Everything cell ``msg_id`` printed or displayed (text), and the names of errors it raised."""
        text, errors = [], []
        deadline = time.monotonic() + WAIT
        while True:
            try:
                msg = self.client.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("the cell never finished") from None
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                text.append(content["text"])
            elif kind in ("display_data", "execute_result", "update_display_data"):
                data = content["data"]
                text.append(str(data.get("text/plain", "")) + "\n" + str(data.get("text/html", "")) + "\n")
            elif kind == "error":
                errors.append(content["ename"])
                text.append("\n".join(content["traceback"]))
            elif kind == "status" and content["execution_state"] == "idle":
                return "".join(text), errors

    def run(self, code: str) -> str:
        text, errors = self.outputs(self.start(code))
        assert errors == [], text
        return text

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


@pytest.fixture
def kernels(tmp_path: Path) -> Iterator[Any]:
    started: list[Kernel] = []

    def start() -> Kernel:
        kernel = Kernel(tmp_path)
        started.append(kernel)
        return kernel

    yield start
    for kernel in started:
        kernel.close()


def _until(check: Any) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, "the expected state never showed up"
        time.sleep(0.05)


def test_an_interrupted_sweep_says_what_was_sent_and_resume_unsent_finishes_it(
    kernels: Any, server_factory: Any, tmp_path: Path
) -> None:
    server = server_factory(latency=2.0)
    history = tmp_path / "history"
    kernel = kernels()
    kernel.run(
        f"%load_ext flux_nb\n%config Flux.endpoint = {server.url!r}\n%config Flux.history_dir = {str(history)!r}\n"
        "%config Flux.max_concurrency = 2"
    )
    cell = kernel.start("%%flux --seed 1:6 --size 64x64\nan interrupted sweep")
    # Two in flight (their submits answered and recorded), four waiting for a slot.
    _until(lambda: history.exists() and list(HistoryStore(history).to_frame()["status"]).count("submitted") >= 2)
    kernel.manager.interrupt_kernel()
    text, errors = kernel.outputs(cell)
    assert errors == [] and "Traceback" not in text and "KeyboardInterrupt" not in text, text
    line = next(t for t in text.splitlines() if "interrupted" in t)
    sent = server.stats()["submits"]
    assert f"{6 - sent} never sent" in line and "resume" in line, line
    frame = HistoryStore(history).to_frame()
    assert sorted(frame["status"]).count("pending") == 6 - sent and "cancelled" not in set(frame["status"])
    resumed = kernel.run("%flux resume --unsent")
    assert "nothing to resume" not in resumed, resumed
    after = HistoryStore(history).to_frame()
    assert list(after["status"]) == ["ready"] * 6
    assert server.stats()["submits"] == 6 and server.stats()["most_tasks_for_one_request"] == 1


def test_a_second_kernel_leaves_the_first_ones_tasks_alone_until_it_is_gone(
    kernels: Any, server_factory: Any, tmp_path: Path
) -> None:
    server = server_factory(latency=8.0)
    history = tmp_path / "shared-history"
    setup = f"from flux_nb import Flux\nflux = Flux(endpoint={server.url!r}, history_dir={str(history)!r})\n"
    first, second = kernels(), kernels()
    first.run(setup + "future = flux.start(flux.batch('kernel a', seed=[1, 2, 3], width=64, height=64))")
    _until(lambda: history.exists() and len(HistoryStore(history).resumable()) == 3)
    report = "print(len(resumed), len(resumed.elsewhere), resumed.note(), sep='\\n')"
    said = second.run(setup + "resumed = flux.resume()\n" + report)
    count, elsewhere, note = said.strip().splitlines()
    assert (count, elsewhere) == ("0", "3") and "left alone" in note, said
    magic = f"%load_ext flux_nb\n%config Flux.endpoint = {server.url!r}\n%config Flux.history_dir = {str(history)!r}"
    second.run(magic)
    shown = second.run("%flux resume")
    assert "3 submitted record(s) left alone" in shown and "nothing to resume" not in shown, shown
    assert server.stats()["downloads"] == 0  # B neither polled to the end nor downloaded A's images
    first.close()  # kernel A is gone: its tasks are B's to finish now
    finished = second.run("print(sorted(r.status for r in flux.resume()))")
    assert finished.strip() == str(["ready"] * 3)
    assert server.stats()["submits"] == 3 and server.stats()["downloads"] == 3
