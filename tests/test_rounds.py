"""The rounds of provider batches, apart from any server: how callers wait, when to poll."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from cassia_sc.errors import CallCancelled
from cassia_sc.provider_batches import Job
from cassia_sc.rounds import BatchRounds, _until_over

CLIENT = SimpleNamespace(max_tokens=None)  # all a caller needs until a round goes out


def test_callers_waiting_for_a_round_leave_once_their_run_stops():
    callers = 50
    rounds = BatchRounds(callers + 1)  # one more than ask: no round goes out
    stop = threading.Event()
    left: list[BaseException] = []

    def ask(number: int) -> None:
        try:
            rounds.ask(CLIENT, f"key {number}", {}, stop)
        except CallCancelled as err:
            left.append(err)

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(callers)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60  # against a hang, not a speed limit
    while rounds._waiting < callers and time.monotonic() < deadline:
        time.sleep(0.01)
    # One thread watches every caller's stop: the callers themselves do not poll.
    watchers = [t for t in threading.enumerate() if t.name == "cassia-sc-stops"]
    assert len(watchers) == 1
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    assert len(left) == callers
    watchers[0].join(timeout=2)  # nobody left to watch
    assert not watchers[0].is_alive()
    rounds.close()


@pytest.mark.parametrize(
    ("done", "total", "expected"),
    [(50, 100, 11.0), (90, 100, 10 * 1.1 / 9), (0, 100, None), (100, 100, None), (0, 0, None)],
)
def test_a_batch_is_due_at_the_pace_its_provider_reports(done, total, expected):
    job = Job("b", "openai", "url", ("k",), time.time() - 10.0, done=done, total=total)
    assert _until_over(job) == (expected and pytest.approx(expected, rel=0.01))
