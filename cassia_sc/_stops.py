"""Wait for a future that a run's stop event may cancel, without polling it.

Thousands of clusters can wait at once (a provider batch's round, or a request that
another cluster is already asking): if each woke every 0.2 s to look at its stop event,
the cores would be busy switching between them. One thread looks at the stop events of
all of them instead, and wakes only those whose run was stopped.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any

from .errors import CallCancelled

#: Seconds between two looks at the waiters' stop events: how soon a stopped run's
#: waiters leave.
STOP_CHECK = 0.2


class StopWatch:
    """Wake the waiters whose stop event is set, with one thread for all of them.

    The thread runs while anyone waits, and ends when nobody does.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[threading.Event, set[threading.Event]] = {}
        self._watching = False

    def wait(self, future: Future, stop: threading.Event) -> Any:
        """Return the result of ``future`` (or raise its exception) unless ``stop`` is set.

        Parameters
        ----------
        future
            What is waited for.
        stop
            The waiter's run's stop event.

        Raises
        ------
        CallCancelled
            When ``stop`` was set before ``future`` was done.
        """
        woken = threading.Event()
        future.add_done_callback(lambda _: woken.set())
        with self._lock:
            if not self._watching:  # first, so that a thread that fails to start leaves no trace
                threading.Thread(target=self._watch, name="cassia-sc-stops", daemon=True).start()
                self._watching = True
            self._waiters.setdefault(stop, set()).add(woken)
        # Without a timeout in the main thread (a call outside a run), Windows would hold
        # a Ctrl-C until the future is done.
        timeout = STOP_CHECK if threading.current_thread() is threading.main_thread() else None
        try:
            while not woken.wait(timeout):
                pass
        finally:
            with self._lock:
                waiters = self._waiters[stop]
                waiters.discard(woken)
                if not waiters:
                    del self._waiters[stop]
        if not future.done():
            raise CallCancelled("stopped")
        return future.result()

    def _watch(self) -> None:
        while True:
            time.sleep(STOP_CHECK)
            with self._lock:
                if not self._waiters:
                    self._watching = False
                    return
                stopped = [w for stop, ws in self._waiters.items() if stop.is_set() for w in ws]
            for woken in stopped:
                woken.set()


#: The process's watch: one thread at most, whoever waits.
STOPS = StopWatch()
