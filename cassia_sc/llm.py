"""The model client of a run: one pooled ``openai.OpenAI`` behind retries, pacing and a cache.

Retries with backoff, pacing shared by all workers, the reply cache and token usage live
here; where each provider is and how it differs lives in :mod:`cassia_sc.providers`.

Every provider is spoken to through the chat-completions API of the ``openai`` SDK.
The SDK's own retries are switched off so that only this module decides what is
retried, how long to wait, and when the whole pool must slow down.

Each request runs on a short-lived thread of its own while the caller waits for it, so
that ``timeout`` bounds the whole request (a server that sends a byte at a time cannot hold
it longer): at the deadline the caller gives up and the request's connection is cut. What
the model says is cleaned where it arrives (control characters, lone surrogates), usage
figures are taken only as sane counts, and a key is redacted from every message before the
message is shortened.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus

import openai

from ._keys import Default
from ._stops import STOPS
from .api_keys import served_models
from .cache import ResponseCache, default_cache_dir, request_key
from .costs import Price
from .errors import (
    AuthenticationFailed,
    CallCancelled,
    CassiaError,
    LLMError,
    ModelNotFound,
    ParameterRefused,
    ProviderUnreachable,
    ReplyCutOff,
    TransientFailure,
    context_full_message,
)
from .provider_batches import BATCH_APIS, BatchWire, batch_wire
from .providers import OPTIONAL_PARAMETERS, PROVIDERS, resolve_api_key, resolve_endpoint
from .rounds import BatchRounds

if TYPE_CHECKING:
    from .budget import Budget

logger = logging.getLogger("cassia_sc")

#: The least room a timeout brings replies down to: the contract's answers fit well within.
MIN_ROOM = 1024
#: Seconds the pool goes on asking while the server answers nothing but HTTP 429.
DEFAULT_MAX_RATE_LIMIT_WAIT = 600.0

_RETRY_STATUSES = frozenset({408, 409, 429})
#: ``finish_reason`` of a reply cut off by its token limit (OpenAI's, and Anthropic's word).
_CUT_OFF = frozenset({"length", "max_tokens"})
#: No single reply has more tokens than this: a larger figure is not a count.
_MOST_TOKENS = 10**12
#: Characters of a server's error message kept in ours, after redaction.
_DETAIL = 500
#: How often a waiting worker looks at the stop event.
_POLL = 0.1
_REDACTED = "[redacted]"
# Pieces of a key found in a message: its end from this many characters, its start from
# that many; shorter secrets are names, not keys.
_SHORTEST_TAIL = 8
_SHORTEST_HEAD = 12
_SHORTEST_SECRET = 4
# Control characters but tab and newline (C0, DEL, C1), and lone surrogates (a str holds
# a valid pair as one code point).
_UNSAFE_CHARACTERS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
# The same as JSON escapes, which parsing the reply would turn back into them; a pair of
# surrogate escapes (an emoji) is kept whole.
_UNSAFE_ESCAPES = re.compile(
    r"\\u(?:d[89ab][0-9a-f]{2}\\ud[c-f][0-9a-f]{2}"
    r"|00[01][0-9a-f]|007f|00[89][0-9a-f]|d[89a-f][0-9a-f]{2})",
    re.IGNORECASE,
)
_KEPT_ESCAPES = frozenset({"\\u0009", "\\u000a"})
_UNKNOWN_MODEL = re.compile(
    r"model.*(not (a )?valid|not found|does not exist|unknown|not available|no endpoints)"
    r"|(invalid|unknown|not a valid) model",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Reply:
    """One model reply.

    Attributes
    ----------
    content
        The assistant's text.
    prompt_tokens, completion_tokens
        Token usage as the server reported it (0 when it did not).
    cached
        Whether it came from the cache rather than the network.
    requests
        HTTP requests it took, retries included (0 when cached).
    """

    content: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    requests: int = 0

    @property
    def paid_tokens(self) -> tuple[int, int]:
        """Prompt and completion tokens this reply cost now: none when it came from the cache.

        A cached reply was paid for when it was first asked (perhaps earlier in the same
        run, for another cluster): counting it again would overstate what a run spent.
        """
        return (0, 0) if self.cached else (self.prompt_tokens, self.completion_tokens)


def reply_totals(replies: Iterable[Reply]) -> dict[str, int]:
    """Return the totals of ``replies``: calls, cached calls, requests and paid tokens."""
    replies = list(replies)
    return {
        "calls": len(replies),
        "cached_calls": sum(reply.cached for reply in replies),
        "requests": sum(reply.requests for reply in replies),
        "prompt_tokens": sum(reply.paid_tokens[0] for reply in replies),
        "completion_tokens": sum(reply.paid_tokens[1] for reply in replies),
    }


@dataclass
class Usage:
    """Running totals of a client's calls.

    Attributes
    ----------
    calls
        Replies returned, from the network or the cache.
    cached_calls
        Replies served from the cache.
    requests
        HTTP requests sent, retries and those of failed calls included.
    prompt_tokens, completion_tokens
        Tokens the server reported for this client's requests, those of failed calls
        included; replies from the cache add none (see :attr:`Reply.paid_tokens`).
    """

    calls: int = 0
    cached_calls: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, reply: Reply) -> None:
        """Count one reply in the totals.

        Parameters
        ----------
        reply
            The reply to count.
        """
        self.calls += 1
        self.cached_calls += reply.cached
        self.prompt_tokens += reply.paid_tokens[0]
        self.completion_tokens += reply.paid_tokens[1]


class RequestPacer:
    """Start times shared by all workers: a cap per minute, rate-limit pauses, slow starts.

    When one call is told to wait (HTTP 429), every worker waits, instead of each one
    hammering the server until it is told the same. After the pause one request goes
    first; each answer to a request started since then lets two more start, so the number
    out at once doubles with every round trip until it is back to the most there were.

    Every :meth:`wait_turn` that returns is followed by one :meth:`done` with its ticket.

    Parameters
    ----------
    requests_per_minute
        Upper bound on request starts per minute, or None for no cap.
    max_rate_limit_wait
        Seconds of nothing but HTTP 429 after which every waiting call gives up.
    """

    def __init__(
        self,
        requests_per_minute: float | None = None,
        *,
        max_rate_limit_wait: float = DEFAULT_MAX_RATE_LIMIT_WAIT,
        batch_api: bool | str = False,
        batch_poll_interval: float = Default.batch_poll_interval,
        budget: Budget | None = None,
    ) -> None:
        if requests_per_minute is not None and requests_per_minute <= 0:
            raise ValueError(f"requests_per_minute must be positive, not {requests_per_minute!r}.")
        if not max_rate_limit_wait > 0:
            raise ValueError(f"max_rate_limit_wait must be positive, not {max_rate_limit_wait!r}.")
        self._interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self._max_rate_limit_wait = max_rate_limit_wait
        self._condition = threading.Condition()
        self._next_start = 0.0
        self._paused_until = 0.0
        self._out = 0  # requests started and not done
        self._most_out = 0  # the most there were at once
        self._epoch = 0  # rate limits so far: a ticket is the epoch its request began in
        self._slots: int | None = None  # starts allowed now in a slow start; None: any
        self._answers = 0  # answers since the slow start began
        self._limited_since: float | None = None  # first 429 since the last answer

    def wait_turn(self, stop: threading.Event) -> int:
        """Block until this worker may send its next request.

        Parameters
        ----------
        stop
            Set to give up waiting.

        Returns
        -------
        int
            The ticket to hand back to :meth:`done`.

        Raises
        ------
        CallCancelled
            When ``stop`` is set while waiting.
        LLMError
            When the server has answered nothing but HTTP 429 for ``max_rate_limit_wait``.
        """
        with self._condition:
            while True:
                if stop.is_set():
                    raise CallCancelled("stopped")
                now = time.monotonic()
                if (
                    self._limited_since is not None
                    and now - self._limited_since > self._max_rate_limit_wait
                ):
                    raise LLMError(
                        "the server answered nothing but HTTP 429 (rate limit) for "
                        f"{self._max_rate_limit_wait:g} s; gave up (max_rate_limit_wait)"
                    )
                start = max(now, self._paused_until, self._next_start)
                if start <= now and (self._slots is None or self._slots > 0):
                    self._next_start = now + self._interval
                    if self._slots is not None:
                        self._slots -= 1
                    self._out += 1
                    self._most_out = max(self._most_out, self._out)
                    return self._epoch
                self._condition.wait(min(start - now, _POLL) if start > now else _POLL)

    def done(
        self,
        ticket: int,
        *,
        answered: bool = False,
        rate_limited: bool = False,
        pause: float = 0.0,
    ) -> None:
        """Hand back a ticket once its request is over.

        Parameters
        ----------
        ticket
            From :meth:`wait_turn`.
        answered
            The server answered it (a reply, even one cut off).
        rate_limited
            The server answered HTTP 429: one request at a time from now on, widening again
            as answers come.
        pause
            Seconds no request may start from now (what the 429 asked for), set at once
            with the rest, so that no other worker starts in between.
        """
        with self._condition:
            self._out -= 1
            current = ticket == self._epoch
            if pause > 0:
                self._paused_until = max(self._paused_until, time.monotonic() + pause)
            if rate_limited:
                self._epoch += 1
                self._slots, self._answers = 1, 0
                if self._limited_since is None:
                    self._limited_since = time.monotonic()
            elif answered:
                self._limited_since = None
                if self._slots is not None and current:
                    self._answers += 1
                    self._slots += 2  # its own slot back, and one more
                    if self._answers >= self._most_out:
                        self._slots = None  # as wide as it ever was: no limit
            elif self._slots is not None and current:
                self._slots += 1  # a failure: its slot back, no more
            self._condition.notify_all()

    def pause(self, seconds: float) -> None:
        """Hold every worker back for ``seconds`` from now.

        Parameters
        ----------
        seconds
            How long no request may start.
        """
        with self._condition:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)
            self._condition.notify_all()


@dataclass
class _Downgrades:
    """Optional parameters the endpoint refused, dropped for the rest of the run."""

    refused: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def drop(self, parameter: str) -> bool:
        with self.lock:
            if parameter in self.refused:
                return False
            self.refused.add(parameter)
            return True


class _Exchange:
    """One HTTP request on a thread of its own: its outcome, and the sockets it uses.

    The caller waits on :attr:`done` up to its deadline; if it gives up first it calls
    :meth:`abandon`, which cuts the connection so that nothing is left reading.
    """

    def __init__(self) -> None:
        self.done = threading.Event()
        self.response: object = None
        self.error: Exception | None = None
        self._sockets: list[socket.socket] = []
        self._abandoned = False
        self._lock = threading.Lock()

    def trace(self, event: str, info: Mapping[str, Any]) -> None:
        """Note the socket of a connection httpcore opens (its ``trace`` extension)."""
        if event.endswith((".connect_tcp.complete", ".start_tls.complete")):
            self.watch(info.get("return_value"))

    def watch(self, stream: object) -> None:
        """Note the socket under an httpcore network stream (cut at once if abandoned)."""
        get_extra_info = getattr(stream, "get_extra_info", None)
        found = get_extra_info("socket") if callable(get_extra_info) else None
        if not isinstance(found, socket.socket):
            return
        with self._lock:
            abandoned = self._abandoned and not self.done.is_set()
            if not abandoned:
                self._sockets.append(found)
        if abandoned:
            _hang_up(found)

    def finish(self) -> None:
        """Mark the request over (from its thread): its sockets are not ours to cut any more."""
        with self._lock:
            self._sockets.clear()
            self.done.set()

    def abandon(self) -> None:
        """Give up on the request: shut down every socket it is known to use."""
        with self._lock:
            self._abandoned = True
            sockets, self._sockets = self._sockets, []
        for found in sockets:
            _hang_up(found)

    def take_error(self) -> Exception | None:
        """Return the request's error, keeping no reference to it (it may hold the key)."""
        error, self.error = self.error, None
        return error


# The exchange of the request running on this thread, for the HTTP client's hooks.
_current = threading.local()


def _on_request(request: Any) -> None:
    """HTTP client hook: let httpcore report the connections this request opens."""
    exchange = getattr(_current, "exchange", None)
    if exchange is not None:
        request.extensions["trace"] = exchange.trace


def _on_response(response: Any) -> None:
    """HTTP client hook: note the connection the response comes on (a reused one too)."""
    exchange = getattr(_current, "exchange", None)
    if exchange is not None:
        exchange.watch(response.extensions.get("network_stream"))


def _hang_up(found: socket.socket) -> None:
    """Shut a socket down, which wakes the thread blocked reading it (a close would not)."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(found, socket.SHUT_RDWR)


class LLMClient:
    """The client every call of a run goes through.

    Thread-safe: one instance serves all workers of a batch, over one connection pool.

    Parameters
    ----------
    model
        Model name as the provider spells it, e.g. ``"openai/gpt-4o"`` on OpenRouter.
    provider
        Provider name or base URL; see :func:`cassia_sc.providers.resolve_endpoint`.
    api_key
        The key; by default read from the provider's environment variable.
    temperature
        Sampling temperature, sent unless the endpoint refuses it.
    reasoning
        Reasoning effort (``"low"``, ``"medium"``, ``"high"``) for models that reason;
        sent as OpenRouter's ``reasoning`` object or as ``reasoning_effort`` elsewhere,
        and dropped with a warning when the endpoint refuses it.
    timeout
        Seconds one HTTP request may take in all, from sending it to the last byte of the
        reply; at the deadline it is abandoned, its connection cut, and retried.
    max_retries
        Further attempts after a failed request: on HTTP 408, 409 and 5xx, connection
        errors, timeouts, malformed or empty replies, and replies cut off by
        ``max_tokens``. HTTP 429 does not count: see ``max_rate_limit_wait``.
    requests_per_minute
        Cap on request starts per minute across all workers.
    cache
        Store every reply on disk and serve repeated requests from there.
    cache_dir
        Cache folder; default :func:`cassia_sc.cache.default_cache_dir`.
    retry_delay
        First backoff delay in seconds; doubled on every further attempt, with jitter.
    max_retry_delay
        Longest wait between two attempts, ``Retry-After`` included.
    max_tokens
        Most tokens a reply may have, sent with every request (as ``max_tokens``, or
        ``max_completion_tokens`` to OpenAI); a reply cut off at this limit is asked for
        again with twice the room. None sends no limit (the server's default applies).
        Dropped with a warning when the endpoint refuses it.
    max_rate_limit_wait
        Seconds the pool goes on asking while the server answers nothing but HTTP 429
        (waiting what ``Retry-After`` asks, then one request first and more as answers
        come); then the calls still waiting fail.
    batch_api
        Send the calls that miss the cache through the provider's batch API (half the
        price, answers within a day) instead of one by one: True for the provider's own
        (OpenAI's, Anthropic's), or ``"openai"`` / ``"anthropic"`` for a base URL that
        speaks one of them. A run gathers its clusters' calls into rounds (see
        :mod:`cassia_sc.rounds`); needs the cache.
    batch_poll_interval
        Seconds between the first polls of a batch; the wait grows to a minute.
    budget
        The run's :class:`~cassia_sc.budget.Budget`: every request that misses the cache
        is admitted by it first (or refused with
        :class:`~cassia_sc.errors.BudgetReached`), and its reply counted in it, at this
        model's price (the batch price with ``batch_api``).

    Examples
    --------
    >>> import cassia_sc
    >>> client = cassia_sc.LLMClient(model="llama3.1", provider="http://localhost:11434/v1")
    >>> client.endpoint.is_loopback  # no key needed, and nothing is sent yet
    True
    >>> client.close()
    """

    def __init__(
        self,
        *,
        model: str,
        provider: str = Default.provider,
        api_key: str | None = None,
        temperature: float | None = Default.temperature,
        reasoning: str | None = None,
        timeout: float = Default.timeout,
        max_retries: int = Default.max_retries,
        requests_per_minute: float | None = None,
        cache: bool = True,
        cache_dir: str | os.PathLike | None = None,
        retry_delay: float = 1.0,
        max_retry_delay: float = 60.0,
        max_tokens: int | None = Default.max_tokens,
        max_rate_limit_wait: float = DEFAULT_MAX_RATE_LIMIT_WAIT,
        batch_api: bool | str = False,
        batch_poll_interval: float = Default.batch_poll_interval,
        budget: Budget | None = None,
    ) -> None:
        if not model or not isinstance(model, str):
            raise CassiaError("model must be a model name, e.g. 'openai/gpt-4o'.")
        if max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, not {max_retries!r}.")
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
        ):
            raise ValueError(f"max_tokens must be a positive integer or None, not {max_tokens!r}.")
        self.model = model
        self.endpoint = resolve_endpoint(provider)
        # 0 and 0.0 must make the same request, and the same cache key.
        self.temperature = None if temperature is None else float(temperature)
        self.reasoning = reasoning
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.max_tokens = max_tokens
        self._room = max_tokens  # the room replies get now: halved after a timeout
        self._list_checked = False
        self.cache = ResponseCache(cache_dir or default_cache_dir()) if cache else None
        self.batch_api = _batch_api_of(batch_api, self.endpoint)
        if self.batch_api and self.cache is None:
            raise CassiaError("batch_api needs the cache: a batch's results are kept there.")
        self.batch_poll_interval = float(batch_poll_interval)
        self.budget = budget
        # What one request costs here: the list price, or the batch price in a batch.
        listed = budget.price(model, self.endpoint.provider) if budget else None
        share = self.endpoint.quirks.batch_price if self.batch_api else 1.0
        self.price: Price | None = (
            Price(listed.prompt * share, listed.completion * share, listed.source)
            if listed is not None
            else None
        )
        # Set by a run for its jobs (rounds of all its clusters); else made on first use.
        self.rounds: BatchRounds | None = None
        self._own_rounds: BatchRounds | None = None
        self.usage = Usage()
        self._usage_lock = threading.Lock()
        # Set once any request of this client gets an answer: until then, a connection that
        # cannot be made means the provider cannot be reached at all.
        self._reached = threading.Event()
        self._in_flight: dict[str, Future] = {}
        self._pacer = RequestPacer(requests_per_minute, max_rate_limit_wait=max_rate_limit_wait)
        self._downgrades = _Downgrades()
        self._exchanges = 0  # requests whose thread is still running
        self._closing = False
        key = resolve_api_key(self.endpoint, api_key)
        self._key = key
        self._redact = _redactor((key, *self.endpoint.secrets))
        self._client = openai.OpenAI(
            api_key=key,
            base_url=self.endpoint.base_url,
            timeout=timeout,
            max_retries=0,
            http_client=openai.DefaultHttpxClient(
                timeout=timeout,
                event_hooks={"request": [_on_request], "response": [_on_response]},
            ),
        )

    @property
    def provider(self) -> str:
        """The provider as given: a name or a base URL."""
        return self.endpoint.provider

    @property
    def cache_dir(self) -> Path | None:
        """The cache folder, or None when caching is off."""
        return self.cache.directory if self.cache else None

    @property
    def batch_target(self) -> str:
        """Where this client's batches go, as the job records name it."""
        return self.endpoint.display_url

    @property
    def wire(self) -> BatchWire:
        """The provider's batch API (with ``batch_api=``)."""
        return batch_wire(self.batch_api or "", self._client, self._key)

    def batch_body(self, request: Mapping[str, Any], max_tokens: int | None) -> dict[str, Any]:
        """Return the body that ``request`` is sent with, in a batch as live."""
        return self._body(request, max_tokens)

    def close(self) -> None:
        """Close the connection pool once the requests in flight are over.

        No request starts after this. A request already on its way is not cut: its reply
        is still cached when it comes (a run stopped with Ctrl-C keeps what arrives), and
        the pool closes with the last one.
        """
        with self._usage_lock:
            self._closing = True
            idle = self._exchanges == 0
        if self._own_rounds is not None:
            self._own_rounds.close()
        if idle:
            self._client.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def complete(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        schema: Mapping[str, Any] | None = None,
        stop: threading.Event | None = None,
        sample: int = 0,
    ) -> Reply:
        """Get the model's reply to ``messages``, from the cache when it was asked before.

        Parameters
        ----------
        messages
            Chat messages, each with ``role`` and ``content``.
        schema
            JSON schema the reply must follow, sent as a structured-output
            ``response_format`` where the endpoint supports it.
        stop
            Set by the batch to cancel waits and retries; a request already sent is
            waited for, and its reply cached.
        sample
            Which of several independent answers to the same request this is (repeated
            runs at a temperature above 0); each sample is cached on its own.

        Returns
        -------
        Reply
            The reply text, cleaned of control characters (but newline and tab) and lone
            surrogates, with its usage.

        Raises
        ------
        AuthenticationFailed, ModelNotFound
            When no call of this run can succeed.
        LLMError
            When this call failed after its retries.
        CallCancelled
            When ``stop`` was set, or the client closed.
        """
        stop = stop or threading.Event()
        request = {
            "base_url": self.endpoint.base_url,
            "model": self.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "temperature": self.temperature,
            "reasoning": self.reasoning,
            "schema": dict(schema) if schema else None,
        }
        if sample:  # sample 0 keeps the key of a single run, so its cache stays valid
            request["sample"] = sample
        key = request_key(request)
        with self._usage_lock:
            leader = self._in_flight.get(key)
            if leader is None:
                self._in_flight[key] = pending = Future()
        if leader is not None:  # the same request is on its way for another cluster
            rounds = self._rounds() if self.batch_api else None
            with rounds.idle() if rounds else contextlib.nullcontext():
                reply = replace(STOPS.wait(leader, stop), cached=True, requests=0)
        else:
            try:
                reply = self._cached_or_requested(key, request, stop)
                pending.set_result(reply)
            except BaseException as err:
                pending.set_exception(err)
                raise
            finally:
                with self._usage_lock:
                    del self._in_flight[key]
        with self._usage_lock:
            self.usage.add(reply)
        return reply

    def _cached_or_requested(
        self, key: str, request: Mapping[str, Any], stop: threading.Event
    ) -> Reply:
        stored = self.cache.get(key) if self.cache is not None else None
        if stored is not None:
            content = clean_model_text(stored["content"])
            if content.strip():  # an entry cleaned down to nothing is asked again
                return Reply(
                    content=content,
                    prompt_tokens=_token_count(stored.get("prompt_tokens")),
                    completion_tokens=_token_count(stored.get("completion_tokens")),
                    cached=True,
                )
        admitted = None
        if self.budget is not None:
            characters = sum(len(m["content"]) for m in request["messages"])
            admitted = self.budget.admit(prompt_characters=characters, price=self.price)
        try:
            reply = self._asked(key, request, stop)
        except BaseException:
            if admitted is not None:
                self.budget.release(admitted)
            raise
        if admitted is not None:
            self.budget.spend(
                admitted,
                prompt_tokens=reply.prompt_tokens,
                completion_tokens=reply.completion_tokens,
                price=self.price,
            )
        return reply

    def check_model(self) -> None:
        """Warn (once per client) when a server of one's own does not list the model.

        A local server (llama.cpp, Ollama, vLLM) may answer whatever the model is called,
        so that a typo goes unnoticed; hosted providers refuse an unknown model themselves
        (:class:`~cassia_sc.errors.ModelNotFound`). A run calls this before its first
        request; a server without a model list says nothing.
        """
        with self._usage_lock:
            if self._list_checked or self.endpoint.provider in PROVIDERS:
                return
            self._list_checked = True
        listed = served_models(self.endpoint, self._key, timeout=min(self.timeout, 10.0))
        if listed and self.model not in listed:
            shown = ", ".join(sorted(listed)[:10]) + (", ..." if len(listed) > 10 else "")
            logger.warning(
                "%s does not list model %r (it lists: %s); it may answer under any name, so "
                "check the name.",
                self.endpoint.display_url,
                self.model,
                shown,
            )

    def _asked(self, key: str, request: Mapping[str, Any], stop: threading.Event) -> Reply:
        """Ask the provider (live, or in a batch round), and cache the reply."""
        if self.batch_api:  # the round caches it
            result, items = self._rounds().ask(self, key, request, stop)
            return Reply(
                content=clean_model_text(result.content or ""),
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                requests=items,
            )
        reply = self._request_with_retries(request, stop)
        if self.cache is not None:  # a cache that cannot be written warns once, then is skipped
            self.cache.put(
                key,
                request,
                {
                    "content": reply.content,
                    "prompt_tokens": reply.prompt_tokens,
                    "completion_tokens": reply.completion_tokens,
                },
            )
        return reply

    def _rounds(self) -> BatchRounds:
        """Return the run's rounds, or this client's own for calls made outside a run."""
        if self.rounds is not None:
            return self.rounds
        with self._usage_lock:
            if self._own_rounds is None:
                self._own_rounds = BatchRounds()
            return self._own_rounds

    # ------------------------------------------------------------------ network

    def _request_with_retries(self, request: Mapping[str, Any], stop: threading.Event) -> Reply:
        failures = 0  # attempts that count against max_retries
        limited = 0  # HTTP 429s in a row, which do not
        requests = 0
        room = self._room
        cut_prompt = cut_completion = 0  # tokens of cut-off replies, paid for all the same
        try:
            while True:
                if stop.is_set():
                    raise CallCancelled("stopped")
                ticket = self._pacer.wait_turn(stop)
                requests += 1
                with self._usage_lock:
                    self.usage.requests += 1
                try:
                    content, prompt_tokens, completion_tokens = self._send(request, room)
                except ReplyCutOff as cut:
                    self._pacer.done(ticket, answered=True)
                    cut_prompt += cut.prompt_tokens
                    cut_completion += cut.completion_tokens
                    if cut.context_full:  # the server's limit, not ours: fail at once
                        raise LLMError(cut.context_full) from None
                    # Once with twice the room: a reply longer still is a model that does
                    # not stop, which more room would only make slower and dearer.
                    if failures >= self.max_retries or room != self._room or not room:
                        raise LLMError(f"{cut} (gave up after {requests} attempts)") from None
                    failures += 1
                    room *= 2
                    logger.info("%s; asking again with room for %s tokens.", cut, room)
                    continue  # no wait: the server is fine, the reply was too long
                except TransientFailure as failure:
                    if failure.rate_limited:  # bounded by max_rate_limit_wait, pool-wide
                        delay = self._backoff(limited, failure.retry_after)
                        limited += 1
                        self._pacer.done(ticket, rate_limited=True, pause=delay)
                    else:
                        self._pacer.done(ticket)
                        if failures >= self.max_retries:
                            if failure.unreachable and not self._reached.is_set():
                                # Nothing of this run ever got an answer: every other call
                                # would fail the same way, so the run stops here.
                                raise ProviderUnreachable(
                                    f"Cannot reach {self.endpoint.display_url}: "
                                    f"{failure.unreachable}. Check the network, the base URL "
                                    "or the proxy (HTTPS_PROXY)."
                                ) from None
                            raise LLMError(
                                f"{failure} (gave up after {requests} attempts)"
                            ) from None
                        delay = self._backoff(failures, failure.retry_after)
                        failures += 1
                        if failure.timed_out:
                            room = self._less_room(room)
                    logger.info("Retrying in %.1f s after: %s", delay, failure)
                    if stop.wait(delay):
                        raise CallCancelled("stopped") from None
                    continue
                except ParameterRefused:
                    self._pacer.done(ticket)
                    continue  # same attempt, without the parameter the endpoint refused
                except BaseException:
                    self._pacer.done(ticket)
                    raise
                self._pacer.done(ticket, answered=True)
                return Reply(
                    content,
                    prompt_tokens + cut_prompt,
                    completion_tokens + cut_completion,
                    False,
                    requests,
                )
        except BaseException as err:
            with self._usage_lock:  # no reply carries them: count them here
                self.usage.prompt_tokens += cut_prompt
                self.usage.completion_tokens += cut_completion
            if isinstance(err, LLMError):  # what the failed call cost, for its cluster
                err.requests += requests
                err.prompt_tokens += cut_prompt
                err.completion_tokens += cut_completion
            raise

    def _less_room(self, room: int | None) -> int | None:
        """Halve the room of replies after a timeout, for this call and the run's next ones.

        A model that does not stop writes until its room is full: the same request would
        time out again, so the next asks for less (never under :data:`MIN_ROOM`).
        """
        if not room or room <= MIN_ROOM:
            return room
        smaller = max(room // 2, MIN_ROOM)
        with self._usage_lock:
            if smaller < self._room:
                logger.warning(
                    "A reply did not come within %g s: asking for at most %d tokens from now on.",
                    self.timeout,
                    smaller,
                )
                self._room = smaller
        return smaller

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        exponential = self.retry_delay * 2**attempt * random.uniform(0.5, 1.0)
        return min(max(exponential, retry_after or 0.0), self.max_retry_delay)

    def _send(self, request: Mapping[str, Any], max_tokens: int | None) -> tuple[str, int, int]:
        body = self._body(request, max_tokens)
        exchange = self._start(body)
        if not exchange.done.wait(self.timeout):
            exchange.abandon()
            raise TransientFailure(
                f"request timed out after {self.timeout:g} s ({self.endpoint.display_url})",
                timed_out=True,
            )
        error = exchange.take_error()
        if error is None or isinstance(error, openai.APIStatusError):
            self._reached.set()  # the server answered, if only to refuse
        failure = self._failure(error, body)
        if failure is not None:
            # Raised here, outside any except clause, so that it chains nothing: the SDK's
            # error holds the request and the server's whole message, the key with them.
            raise failure from None
        content, prompt_tokens, completion_tokens, finish_reason = _content_and_usage(
            exchange.response
        )
        if finish_reason in _CUT_OFF:
            limit = f"max_tokens={max_tokens}" if max_tokens else "the server's token limit"
            raise ReplyCutOff(
                f"the reply was cut off at {limit}",
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                context_full=context_full_message(completion_tokens, max_tokens),
            )
        if content is None:
            raise TransientFailure("malformed reply from the server: no message in it")
        content = clean_model_text(content)
        if not content.strip():
            raise TransientFailure("the model returned an empty reply")
        return content, prompt_tokens, completion_tokens

    def _start(self, body: Mapping[str, Any]) -> _Exchange:
        """Send ``body`` on a thread of its own; return what the caller waits on."""
        with self._usage_lock:
            if self._closing:
                raise CallCancelled("the model client is closed")
            self._exchanges += 1
        exchange = _Exchange()
        thread = threading.Thread(
            target=self._exchange, args=(exchange, body), name="cassia-sc-request", daemon=True
        )
        try:
            thread.start()
        except BaseException:
            self._exchange_over()
            raise
        return exchange

    def _exchange(self, exchange: _Exchange, body: Mapping[str, Any]) -> None:
        """Run one SDK call on the request's thread, keeping its outcome for the caller."""
        _current.exchange = exchange
        try:
            # The SDK's low-level post: same pool, auth and error types as
            # chat.completions.create, without its per-call transformation of the typed
            # request, which costs more CPU than the rest of the call under many workers.
            exchange.response = self._client.post(
                "/chat/completions", body=body, cast_to=object, options={"timeout": self.timeout}
            )
        except Exception as err:  # handed to the caller, which decides
            exchange.error = err
        finally:
            _current.exchange = None
            exchange.finish()
            self._exchange_over()

    def _exchange_over(self) -> None:
        with self._usage_lock:
            self._exchanges -= 1
            last = self._closing and self._exchanges == 0
        if last:
            self._client.close()

    def _body(self, request: Mapping[str, Any], max_tokens: int | None) -> dict[str, Any]:
        refused = self._downgrades.refused
        body: dict[str, Any] = {"model": request["model"], "messages": request["messages"]}
        if request["temperature"] is not None and "temperature" not in refused:
            body["temperature"] = request["temperature"]
        if request["reasoning"] and "reasoning" not in refused:
            body.update(self.endpoint.reasoning_fields(request["reasoning"]))
        if request["schema"] and "response_format" not in refused:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "reply", "schema": request["schema"], "strict": False},
            }
        if max_tokens and "max_tokens" not in refused:
            body[self.endpoint.quirks.max_tokens_field] = max_tokens
        return body

    def _failure(self, error: Exception | None, sent: Mapping[str, Any]) -> BaseException | None:
        """Turn what the SDK raised into ours (None: it raised nothing)."""
        if error is None:
            return None
        if isinstance(error, openai.APIStatusError):
            return self._status_failure(error, sent)
        if isinstance(error, openai.APITimeoutError):  # the SDK's own timeouts
            return TransientFailure(
                f"request timed out ({self.endpoint.display_url})", timed_out=True
            )
        if isinstance(error, openai.APIConnectionError):
            reason = self._redact(str(error.__cause__ or error))[:_DETAIL]
            return TransientFailure(
                f"connection failed ({self.endpoint.display_url}): {reason}", unreachable=reason
            )
        if isinstance(error, ValueError):  # the SDK could not decode the body
            detail = self._redact(str(error))[:_DETAIL]
            return TransientFailure(f"malformed reply from the server: {detail}")
        return error

    def _status_failure(self, err: openai.APIStatusError, sent: Mapping[str, Any]) -> Exception:
        status = err.status_code
        # Redacted whole, then cut: a cut key would no longer be recognised.
        detail = self._redact(_error_message(err))[:_DETAIL]
        if status in (401, 403):
            return AuthenticationFailed(
                f"The provider refused the API key (HTTP {status}: {detail}). Check "
                f"{self.endpoint.key_variable} or api_key=, and the key's access to "
                f"{self.model!r}."
            )
        if status == 404 or (status == 400 and _UNKNOWN_MODEL.search(detail)):
            return ModelNotFound(
                f"Model {self.model!r} is not available at {self.endpoint.display_url} "
                f"(HTTP {status}: {detail}). Check the model name, or the base URL."
            )
        if status != 429:  # a refusal naming a parameter, whatever its status (llama-cpp: 500)
            for parameter, sent_as in OPTIONAL_PARAMETERS.items():
                if parameter in detail.lower() and any(option in sent for option in sent_as):
                    name = sent_as[0]
                    if self._downgrades.drop(name):
                        logger.warning(
                            "The endpoint refused %r (HTTP %d); continuing without it (%s).",
                            name,
                            status,
                            detail,
                        )
                    return ParameterRefused()
        if status == 400:
            return LLMError(f"The server rejected the request (HTTP 400: {detail}).")
        if status in _RETRY_STATUSES or status >= 500:
            return TransientFailure(
                f"HTTP {status} from the server: {detail}",
                retry_after=_retry_after(err.response.headers),
                rate_limited=status == 429,
            )
        return LLMError(f"The server answered HTTP {status}: {detail}.")


def clean_model_text(text: str) -> str:
    r"""Remove what no table or file should hold from a model's text.

    Control characters go, but newline and tab (a carriage return becomes a newline);
    lone surrogates go; and so do the JSON escapes of both (``\u0000``, ``\ud800``),
    which parsing the reply's JSON would otherwise turn back into them.

    Parameters
    ----------
    text
        What the model sent, or a cache entry of it.

    Returns
    -------
    str
        The text, safe for ``write_h5ad``, CSV and JSON.

    Examples
    --------
    >>> clean_model_text("T\x00 cell\r\nCD3E\\u0000")
    'T cell\nCD3E'
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _UNSAFE_ESCAPES.sub(_kept_escape, text)
    return _UNSAFE_CHARACTERS.sub("", text)


def _kept_escape(match: re.Match[str]) -> str:
    escape = match.group(0)
    return escape if len(escape) == 12 or escape.lower() in _KEPT_ESCAPES else ""


def _token_count(value: object) -> int:
    """Return a usage figure as a count: a finite, non-negative whole number, else 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if isinstance(value, float) and not value.is_integer():  # inf and nan included
        return 0
    return int(value) if 0 <= value <= _MOST_TOKENS else 0


def _content_and_usage(response: object) -> tuple[str | None, int, int, str | None]:
    """Return a chat completion's first text, its two token counts and its finish reason."""
    if not isinstance(response, Mapping):
        return None, 0, 0, None
    choices = response.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, Mapping) else None
    content = message.get("content") if isinstance(message, Mapping) else None
    finish_reason = first.get("finish_reason") if isinstance(first, Mapping) else None
    usage = response.get("usage") if isinstance(response.get("usage"), Mapping) else {}
    return (
        content if isinstance(content, str) else None,
        _token_count(usage.get("prompt_tokens")),
        _token_count(usage.get("completion_tokens")),
        finish_reason if isinstance(finish_reason, str) else None,
    )


def _redactor(secrets: Iterable[str]) -> Callable[[str], str]:
    """Return a function that removes every secret of ``secrets`` from a text.

    Each is removed whole, URL-encoded, masked as providers echo keys (same first three
    and last four characters, anything between), and in pieces: any end of it of 8
    characters or more, any start of 12 or more.
    """
    kept = {s for s in secrets if len(s) >= _SHORTEST_SECRET}
    forms = sorted(
        {form for s in kept for form in (s, quote(s, safe=""), quote_plus(s))},
        key=len,
        reverse=True,
    )
    masked = [
        re.compile(re.escape(s[:3]) + r"[\w\-.*/+=%\u2022\u2026]*?" + re.escape(s[-4:]))
        for s in kept
        if len(s) >= _SHORTEST_TAIL
    ]

    def redact(text: str) -> str:
        for form in forms:  # whole, before any piece of another form cuts one in two
            text = text.replace(form, _REDACTED)
        for form in forms:
            text = _without_pieces(text, form)
        for pattern in masked:
            text = pattern.sub(_REDACTED, text)
        return text

    return redact


def _without_pieces(text: str, secret: str) -> str:
    """Redact each end of ``secret`` of 8 characters or more, and each start of 12 or more."""
    spans = []
    if len(secret) > _SHORTEST_TAIL:
        for found in re.finditer(re.escape(secret[-_SHORTEST_TAIL:]), text):
            start, length = found.start(), _SHORTEST_TAIL
            while start and length < len(secret) and text[start - 1] == secret[-length - 1]:
                start, length = start - 1, length + 1
            spans.append((start, found.end()))
    if len(secret) > _SHORTEST_HEAD:
        for found in re.finditer(re.escape(secret[:_SHORTEST_HEAD]), text):
            end, length = found.end(), _SHORTEST_HEAD
            while end < len(text) and length < len(secret) and text[end] == secret[length]:
                end, length = end + 1, length + 1
            spans.append((found.start(), end))
    if not spans:
        return text
    pieces, at = [], 0
    for start, end in sorted(spans):
        if end <= at:
            continue
        pieces += [text[at : max(start, at)], _REDACTED]
        at = end
    return "".join([*pieces, text[at:]])


def _error_message(err: openai.APIStatusError) -> str:
    """Return the server's whole message (shortened by the caller, once redacted)."""
    body = err.body
    if isinstance(body, Mapping) and body.get("message"):
        return str(body["message"])
    return (err.message or "").strip()


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms`` or ``retry-after``)."""
    try:
        if headers.get("retry-after-ms"):
            return float(headers["retry-after-ms"]) / 1000
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return max(float(value), 0.0)
        except ValueError:
            moment = parsedate_to_datetime(value)
            return max(moment.timestamp() - time.time(), 0.0)
    except (TypeError, ValueError, OverflowError):
        return None


def _batch_api_of(batch_api: bool | str, endpoint: Any) -> str | None:
    """Which batch API ``batch_api=`` means for ``endpoint``, or None for live calls."""
    if batch_api is False or batch_api is None:
        return None
    if batch_api is True:
        own = endpoint.quirks.batch_api
        if own is None:
            raise CassiaError(
                f"{endpoint.display_name} has no batch API that cassia_sc knows; use "
                f"OpenAI or Anthropic, or say which one a base URL speaks (batch_api="
                f"{' or '.join(repr(a) for a in BATCH_APIS)})."
            )
        return own
    if batch_api not in BATCH_APIS:
        raise CassiaError(
            f"batch_api must be True, False, or one of {list(BATCH_APIS)}, not {batch_api!r}."
        )
    return str(batch_api)
