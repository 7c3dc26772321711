"""Interrupted runs: killed or Ctrl-C'd in a real process, then resumed from the cache.

The server holds back every reply from a chosen request on (see :class:`HeldReplies`), so
each test interrupts the run at a known point, however slow the machine is.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from conftest import ScriptedLLM
from llm_server import RecordedRequest, Reply
from scripted_model import ScriptedModel

import cassia_sc
from cassia_sc.cache import ResponseCache

HERE = Path(__file__).parent
PLAN = 22  # 11 clusters x (annotator + validator) on the happy path
HANG = 60  # seconds; only a hang waits this long
OUTPUTS = ("summary.csv", "full.csv", "conversations.json", "report.html")


class HeldReplies:
    """A handler answering as a ScriptedModel, except that every request from number
    ``first_held`` (0-based) on waits for :meth:`release` before it is answered.

    ``on_held`` is called when the first held request arrives.
    """

    def __init__(
        self,
        first_held: int,
        *,
        delay: float = 0.0,
        on_held: Callable[[], None] | None = None,
        hold: float = HANG,
    ) -> None:
        self.model = ScriptedModel(delay=delay)
        self.first_held = first_held
        self.on_held = on_held
        self.hold = hold
        self.released = threading.Event()

    def __call__(self, request: RecordedRequest, index: int) -> Reply:
        if index == self.first_held and self.on_held is not None:
            self.on_held()
        if index >= self.first_held:
            self.released.wait(self.hold)
        return self.model(request, index)

    def release(self) -> None:
        """Answer the held requests, and every later one at once."""
        self.released.set()


def start_batch(llm: ScriptedLLM, tmp_path: Path, workers: int = 2) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            str(HERE / "batch_process.py"),
            llm.base_url,
            str(llm.cache_dir),
            str(tmp_path / "out"),
            str(workers),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_until(condition: Callable[[], bool], process: subprocess.Popen, what: str) -> None:
    """Wait for ``condition``; fail if the process ends without it (or it hangs)."""
    deadline = time.monotonic() + HANG
    while not condition():
        if process.poll() is not None and not condition():
            pytest.fail(f"the batch process ended before {what}:\n{process.stderr.read().decode()}")
        assert time.monotonic() < deadline, f"still no {what} after {HANG} s"
        time.sleep(0.01)


def resume(llm: ScriptedLLM, **options) -> cassia_sc.BatchResult:
    return cassia_sc.run_batch(
        cassia_sc.loadmarker("pbmc68k_processed"),
        tissue="blood",
        species="human",
        **llm.options(**options),
    )


@pytest.mark.slow
def test_a_killed_run_resumes_with_only_the_requests_it_had_not_completed(scripted_llm, tmp_path):
    held = HeldReplies(first_held=7)
    llm = scripted_llm(handler=held)
    process = start_batch(llm, tmp_path)
    try:
        # 7 replies, then each worker waits on a held one: the run is stuck mid-way.
        wait_until(lambda: llm.server.request_count == 9, process, "9 requests")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=HANG)
    finally:
        held.release()
    completed = len(ResponseCache(llm.cache_dir))
    assert 0 < completed < PLAN
    llm.server.requests.clear()

    result = resume(llm)

    assert llm.server.request_count == PLAN - completed
    assert all(c.status == "ok" for c in result.clusters)
    assert result.usage["cached_calls"] == completed


@pytest.mark.parametrize("workers", [1, 4])
def test_interrupting_in_process_raises_with_every_cluster(scripted_llm, workers):
    """A KeyboardInterrupt inside the main thread (as Ctrl-C in a notebook) keeps results."""
    # Ctrl-C with the first held request, after about two rounds of replies (0.2 s each):
    # as that request is held back, the run cannot finish first.
    held = HeldReplies(
        first_held=2 * workers + 1,
        delay=0.2,
        on_held=lambda: signal.raise_signal(signal.SIGINT),
    )
    llm = scripted_llm(handler=held)
    try:
        with pytest.raises(cassia_sc.BatchInterrupted) as raised:
            resume(llm, max_workers=workers)
    finally:
        held.release()
    partial = raised.value.result
    assert partial.interrupted and len(partial) == 11
    assert {c.status for c in partial.clusters} <= {"ok", "not_run"}
    assert any(c.status == "not_run" for c in partial.clusters)


@pytest.mark.slow
def test_ctrl_c_exits_at_once_keeps_what_finished_and_resumes(scripted_llm, tmp_path):
    """Neither the requests in flight nor their threads hold the process after Ctrl-C; it
    writes what finished, and a second run asks only for the rest."""
    held = HeldReplies(first_held=7, hold=10 * HANG)  # held until released, whatever happens
    llm = scripted_llm(handler=held)
    process = start_batch(llm, tmp_path, workers=2)
    try:
        wait_until(lambda: llm.server.request_count == 9, process, "9 requests")
        process.send_signal(signal.SIGINT)
        try:
            _, stderr = process.communicate(timeout=HANG)
        except subprocess.TimeoutExpired:
            pytest.fail("after Ctrl-C the process waited for the requests still in flight")
        # It ended while the server still held both replies it had asked for, and it
        # started no other request.
        assert [r.answered_at for r in llm.server.requests[7:]] == [None, None]
    finally:
        held.release()
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=HANG)
    assert process.returncode != 0
    assert b"BatchInterrupted" in stderr, stderr.decode()
    # Nothing was left to join at exit, where a second Ctrl-C used to print a traceback.
    assert b"threading" not in stderr and b"Exception ignored" not in stderr, stderr.decode()
    # Promptly: it wrote what finished without waiting for the two replies held back.
    assert all((tmp_path / f"out_{name}").exists() for name in OUTPUTS)
    summary = pd.read_csv(tmp_path / "out_summary.csv", dtype={"Cluster ID": str})
    assert summary["Cluster ID"].tolist() == [str(i) for i in range(11)]
    statuses = summary["Status"].value_counts().to_dict()
    assert statuses.get("ok", 0) >= 1 and statuses.get("not_run", 0) >= 1
    assert set(statuses) <= {"ok", "not_run"}
    completed = len(ResponseCache(llm.cache_dir))
    llm.server.requests.clear()

    result = resume(llm)
    assert all(c.status == "ok" for c in result.clusters)
    assert llm.server.request_count == PLAN - completed


def test_replies_that_arrive_after_ctrl_c_are_cached(scripted_llm):
    """The two requests in flight at Ctrl-C are answered after the run returned: both
    replies are cached, and the resumed run does not ask for them again."""
    held = HeldReplies(first_held=7)
    interrupted = threading.Event()

    def handler(request: RecordedRequest, index: int) -> Reply:
        if index == 8 and not interrupted.is_set():  # both workers wait for a held reply
            interrupted.set()
            signal.raise_signal(signal.SIGINT)
        return held(request, index)

    llm = scripted_llm(handler=handler)
    try:
        with pytest.raises(cassia_sc.BatchInterrupted):
            resume(llm, max_workers=2)
        # The run returned while both replies were held back.
        assert [r.answered_at for r in llm.server.requests[7:]] == [None, None]
        assert len(ResponseCache(llm.cache_dir)) == 7
    finally:
        held.release()
    deadline = time.monotonic() + HANG
    while len(ResponseCache(llm.cache_dir)) < 9:
        assert time.monotonic() < deadline, "the replies that came after Ctrl-C were not cached"
        time.sleep(0.01)
    assert llm.server.request_count == 9  # and nothing else was asked after Ctrl-C
    llm.server.requests.clear()

    result = resume(llm)
    assert all(c.status == "ok" for c in result.clusters)
    assert llm.server.request_count == PLAN - 9


class SecondCtrlC(logging.Handler):
    """A second Ctrl-C, landing while the run logs that it was interrupted."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.fired = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.fired and record.getMessage().startswith("Interrupted"):
            self.fired = True
            raise KeyboardInterrupt


def test_a_second_ctrl_c_while_the_run_wraps_up_keeps_every_cluster(scripted_llm):
    held = HeldReplies(first_held=5, on_held=lambda: signal.raise_signal(signal.SIGINT))
    llm = scripted_llm(handler=held)
    second = SecondCtrlC()
    logging.getLogger("cassia_sc").addHandler(second)
    try:
        with pytest.raises(cassia_sc.BatchInterrupted) as raised:
            resume(llm, max_workers=2)
    finally:
        logging.getLogger("cassia_sc").removeHandler(second)
        held.release()
    assert second.fired
    partial = raised.value.result
    assert len(partial) == 11 and sum(c.status == "ok" for c in partial.clusters) >= 1
