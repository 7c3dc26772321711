"""Rounds of provider batches: every cluster's next request, gathered and sent at once.

With ``batch_api=``, a run's clusters all start at once, and each call that misses the
cache waits here instead of going out. When every cluster of the run is waiting (or
finished), the waiting requests are one round, the annotators' first, then the
validators', the revisions', the scores', the boosts': :class:`BatchRounds` sends them as
one batch per provider, polls it, stores each result in the cache and wakes its caller,
and the clusters advance to their next step. The agents do not know: to them it is a call
that took a while. A request that failed or expired in a batch goes into the next round,
up to the client's ``max_retries``; one cut off at its ``max_tokens`` goes again with twice
the room (one that the model's context stopped before does not). Before sending, the
:class:`~cassia_sc.provider_batches.JobStore` is asked whether an open batch already holds
a request (a run killed while waiting, run again): that batch is polled, nothing is sent
twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import openai

from ._keys import Default
from ._stops import STOPS
from .cache import ResponseCache
from .errors import (
    AuthenticationFailed,
    CallCancelled,
    FatalLLMError,
    LLMError,
    ProviderUnreachable,
    context_full_message,
)
from .provider_batches import (
    MAX_BATCH_ITEMS,
    BatchWire,
    ItemResult,
    Job,
    JobStore,
    batch_wire,
)
from .providers import resolve_api_key, resolve_endpoint

logger = logging.getLogger("cassia_sc")

#: Longest wait between two polls of a batch.
MAX_POLL_INTERVAL = 60.0
_POLL_GROWTH = 1.5
_DUE_MARGIN = 1.1


class BatchingClient(Protocol):
    """What a round needs of the client whose call waits in it."""

    max_retries: int
    max_tokens: int | None
    batch_poll_interval: float
    cache: ResponseCache | None

    @property
    def batch_target(self) -> str:
        """Where its batches go: the base URL as records show it."""

    @property
    def wire(self) -> BatchWire:
        """Its provider's batch API."""

    def batch_body(self, request: Mapping[str, Any], max_tokens: int | None) -> dict[str, Any]:
        """Return the body of ``request``, with a reply of at most ``max_tokens``."""


@dataclass
class _Waiting:
    """One request waiting for a round, and what its caller waits on."""

    client: BatchingClient
    key: str
    request: Mapping[str, Any]
    room: int | None
    attempts: int = 0
    # Tokens of replies cut off on the way, billed all the same.
    spent: tuple[int, int] = (0, 0)
    future: Future = field(default_factory=Future)
    counted: bool = True  # among the callers the rounds count as waiting


class BatchRounds:
    """Gathers the calls of a run's clusters into rounds, one provider batch per round.

    Parameters
    ----------
    expected
        How many clusters (jobs) will ask: a round goes out once every one of them is
        waiting or finished. None: whenever a call waits (one caller at a time, outside a
        run).
    on_batch
        Called with each batch sent or polled again and its request count (progress).
    """

    def __init__(
        self, expected: int | None = None, *, on_batch: Callable[[Job], None] | None = None
    ) -> None:
        self._expected = expected
        self._finished = 0
        self._waiting = 0
        self._pending: dict[str, _Waiting] = {}
        self._closed = False
        self._on_batch = on_batch
        self._condition = threading.Condition()
        self._thread = threading.Thread(
            target=self._serve, name="cassia-sc-batch-rounds", daemon=True
        )
        self._thread.start()

    # -- the callers' side ---------------------------------------------------------------

    def job_done(self) -> None:
        """Say that one of the expected jobs is over: it will ask nothing more."""
        with self._condition:
            self._finished += 1
            self._condition.notify_all()

    @contextlib.contextmanager
    def idle(self) -> Iterator[None]:
        """Count the caller as waiting while it waits on what a round will answer.

        That is the same request, asked by another cluster.
        """
        with self._condition:
            self._waiting += 1
            self._condition.notify_all()
        try:
            yield
        finally:
            with self._condition:
                self._waiting -= 1

    def ask(
        self,
        client: BatchingClient,
        key: str,
        request: Mapping[str, Any],
        stop: threading.Event,
    ) -> tuple[ItemResult, int]:
        """Wait for the reply to ``request`` from a round; return it and the items sent.

        The reply is in the cache when this returns.

        Raises
        ------
        LLMError
            When every attempt failed, or the provider refused the batch.
        CallCancelled
            When ``stop`` was set: the batch goes on, and its result is cached when it
            comes, while the process lives.
        """
        if stop.is_set():  # a cluster of a stopped run asks nothing more
            raise CallCancelled("stopped")
        waiting = _Waiting(client, key, request, client.max_tokens)
        with self._condition:
            if self._closed:
                raise CallCancelled("the batch rounds are over")
            self._pending[key] = waiting
            self._waiting += 1
            self._condition.notify_all()
        try:
            return STOPS.wait(waiting.future, stop)
        finally:
            self._uncount(waiting)

    def _uncount(self, waiting: _Waiting) -> None:
        """Stop counting a caller as waiting: once its request is settled, or it left.

        The round that settles it does so before waking it, so that a caller woken and
        already asking its next request is never counted twice (which would send a round
        before every cluster has asked).
        """
        with self._condition:
            if waiting.counted:
                waiting.counted = False
                self._waiting -= 1

    def close(self) -> None:
        """End the rounds once the last one is over (no round starts after this)."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    # -- the rounds ------------------------------------------------------------------------

    def _ready(self) -> bool:
        if not self._pending:
            return False
        if self._expected is None:
            return True
        return self._waiting >= self._expected - self._finished

    def _serve(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._closed or self._ready())
                if not self._ready():
                    return  # closed, nothing waiting
                batch, self._pending = list(self._pending.values()), {}
            try:
                self._round(batch)
            except Exception as err:  # a refused key or upload, no network: this round fails
                failure = _failure(err, batch[0].client.batch_target)
                logger.warning("A batch round failed: %s", failure)
                for waiting in batch:
                    if not waiting.future.done():
                        self._uncount(waiting)
                        waiting.future.set_exception(failure)

    def _round(self, batch: list[_Waiting]) -> None:
        """Send one round (one batch per provider), wait for it, settle every request."""
        by_target: dict[tuple[str, int], list[_Waiting]] = {}
        for waiting in batch:
            by_target.setdefault((waiting.client.batch_target, id(waiting.client)), []).append(
                waiting
            )
        for group in by_target.values():
            self._round_of(group)

    def _round_of(self, group: list[_Waiting]) -> None:
        client = group[0].client
        if client.cache is None:
            raise LLMError("a batch run needs the cache: its results are read from there")
        store = JobStore(client.cache.directory)
        wire = client.wire
        by_key = {w.key: w for w in group}
        held = store.holding(client.batch_target, by_key)
        jobs = {job.id: job for job in held.values()}
        for job in jobs.values():
            logger.info(
                "Batch %s already holds %d of these requests: waiting for it.",
                job.id,
                len(job.keys),
            )
        unsent = [w for w in group if w.key not in held]
        for start in range(0, len(unsent), MAX_BATCH_ITEMS):
            chunk = unsent[start : start + MAX_BATCH_ITEMS]
            items = [(w.key, client.batch_body(w.request, w.room)) for w in chunk]
            batch_id = wire.submit(items)
            job = Job(
                batch_id, wire.api, client.batch_target, tuple(k for k, _ in items), time.time()
            )
            store.add(job)  # at once: a run killed from here on finds it
            jobs[job.id] = job
            logger.info("Sent batch %s: %d requests to %s.", job.id, len(items), job.provider)
        interval = client.batch_poll_interval
        while jobs:
            wait = interval
            for job in list(jobs.values()):
                state = wire.state(job.id)
                job = store.update(
                    job,
                    provider_status=state.status,
                    done=state.done,
                    total=state.total or len(job.keys),
                    status="ended" if state.ended else "running",
                )
                if self._on_batch is not None:
                    self._on_batch(job)
                if state.ended:
                    again, wake = _settle(job, wire.results(job.id), by_key, client.cache)
                    store.update(job, status="collected")  # before anyone learns of it
                    del jobs[job.id]
                    with self._condition:  # held once: the callers woken take it too
                        for waiting, _ in wake:
                            self._uncount(waiting)
                    for _, settle in wake:
                        settle()
                    self._requeue(again)
                elif (due := _until_over(job)) is not None:
                    # Sooner when its pace says so; never more often than the first polls.
                    wait = min(wait, max(due, client.batch_poll_interval))
            if jobs:
                time.sleep(wait)
                interval = min(interval * _POLL_GROWTH, MAX_POLL_INTERVAL)

    def _requeue(self, again: list[_Waiting]) -> None:
        """Put requests that failed in a batch into the next round."""
        if again:
            with self._condition:
                for waiting in again:
                    self._pending[waiting.key] = waiting
                self._condition.notify_all()


def _until_over(job: Job) -> float | None:
    """Seconds until ``job`` is likely over, at the pace of its requests done so far.

    None when its provider tells no pace (Anthropic counts a batch's requests done only
    once it is over). A tenth more, so that the poll finds it over rather than just short.
    """
    if not 0 < job.done < job.total:
        return None
    return _DUE_MARGIN * (time.time() - job.created) * (job.total - job.done) / job.done


def _settle(
    job: Job,
    results: dict[str, ItemResult],
    by_key: Mapping[str, _Waiting],
    cache: ResponseCache,
) -> tuple[list[_Waiting], list[tuple[_Waiting, Callable[[], object]]]]:
    """Cache each answered request of ``job``; return those to send again, and wakes.

    The wakes settle the callers that wait for the others (their reply, or their failure).

    A request nobody waits for (a batch collected after its run was gone) is cached all
    the same, so that the run, started again, finds it.
    """
    again: list[_Waiting] = []
    wake: list[tuple[_Waiting, Callable[[], object]]] = []
    stored: list[tuple[str, Mapping[str, Any], dict[str, Any]]] = []
    for key in job.keys:
        result = results.get(key, ItemResult(None, error="not in the batch's results"))
        waiting = by_key.get(key)
        if result.content is not None and result.content.strip() and not result.cut_off:
            request = waiting.request if waiting else {"batch": job.id, "custom_id": key}
            spent = waiting.spent if waiting else (0, 0)
            reply = {
                "content": result.content,
                "prompt_tokens": result.prompt_tokens + spent[0],
                "completion_tokens": result.completion_tokens + spent[1],
            }
            stored.append((key, request, reply))
            if waiting is not None and not waiting.future.done():
                answer = ItemResult(
                    result.content, reply["prompt_tokens"], reply["completion_tokens"]
                )
                result_of = (answer, waiting.attempts + 1)
                wake.append((waiting, partial(waiting.future.set_result, result_of)))
            continue
        if waiting is None or waiting.future.done():
            continue
        waiting.attempts += 1
        waiting.spent = (
            waiting.spent[0] + result.prompt_tokens,
            waiting.spent[1] + result.completion_tokens,
        )
        # A cut-off reply goes again once with twice the room, as a live one does, unless
        # the model's context, not the room, stopped it.
        context_full = result.cut_off and context_full_message(
            result.completion_tokens, waiting.room
        )
        again_cut = (
            result.cut_off
            and not context_full
            and bool(waiting.room)
            and waiting.room == waiting.client.max_tokens
        )
        if result.cut_off:
            reason = context_full or "the reply was cut off at its max_tokens"
            waiting.room = waiting.room * 2 if again_cut else waiting.room
        else:
            reason = result.error or "an empty reply"
        retry = again_cut if result.cut_off else result.retry
        if retry and waiting.attempts <= waiting.client.max_retries:
            logger.info("A request of batch %s: %s; it goes in the next batch.", job.id, reason)
            again.append(waiting)
        else:
            failure = LLMError(f"{reason} (batch {job.id}, after {waiting.attempts} attempts)")
            failure.requests = waiting.attempts
            failure.prompt_tokens, failure.completion_tokens = waiting.spent
            wake.append((waiting, partial(waiting.future.set_exception, failure)))
    cache.put_many(stored)  # before anyone is woken
    return again, wake


def collect(
    cache_dir: str | os.PathLike,
    *,
    wait: bool = False,
    poll_interval: float = Default.batch_poll_interval,
) -> list[Job]:
    """Ask about every open batch sent from runs on ``cache_dir``; cache what has ended.

    For ``cassia-sc jobs collect``: a run started again finds the replies in the cache.

    Parameters
    ----------
    cache_dir
        The cache folder the runs used.
    wait
        Poll until every open batch has ended, instead of asking once.
    poll_interval
        Seconds between the first polls (growing to a minute).

    Returns
    -------
    list of Job
        Every batch remembered, as they stand now.

    Raises
    ------
    MissingAPIKeyError
        When a batch's provider has no key in this environment.
    """
    store = JobStore(cache_dir)
    cache = ResponseCache(cache_dir)
    interval = poll_interval
    while True:
        still = 0
        for job in store.jobs():
            if not job.open:
                continue
            endpoint = resolve_endpoint(job.provider)
            key = resolve_api_key(endpoint, None)
            with openai.OpenAI(api_key=key, base_url=endpoint.base_url, max_retries=2) as client:
                wire = batch_wire(job.api, client, key)
                state = wire.state(job.id)
                job = store.update(
                    job,
                    provider_status=state.status,
                    done=state.done,
                    total=state.total or len(job.keys),
                    status="ended" if state.ended else "running",
                )
                if state.ended:
                    _settle(job, wire.results(job.id), {}, cache)  # nobody waits here
                    store.update(job, status="collected")
                else:
                    still += 1
        if not (wait and still):
            return store.jobs()
        time.sleep(interval)
        interval = min(interval * _POLL_GROWTH, MAX_POLL_INTERVAL)


def _failure(err: Exception, target: str) -> LLMError:
    """Return what a failed round means for its calls: fatal when every call would fail."""
    if isinstance(err, openai.AuthenticationError | openai.PermissionDeniedError):
        return AuthenticationFailed(
            f"The provider refused the key for its batch API (HTTP {err.status_code})."
        )
    if isinstance(err, openai.NotFoundError):
        return FatalLLMError(f"{target} has no such batch API (HTTP 404); check batch_api=.")
    if isinstance(err, openai.APIConnectionError):
        return ProviderUnreachable(f"Cannot reach {target} to send or poll a batch.")
    if isinstance(err, openai.APIStatusError):
        return LLMError(f"The provider's batch API answered HTTP {err.status_code}.")
    if isinstance(err, LLMError):
        return err
    return LLMError(f"The provider's batch API failed: {str(err)[:200]}")
