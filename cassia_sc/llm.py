"""The model client of a run: one pooled ``openai.OpenAI`` behind retries, pacing and a cache.

Retries with backoff, pacing shared by all workers, the reply cache and token usage live
here; where each provider is and how it differs lives in :mod:`cassia_sc.providers`.

Every provider is spoken to through the chat-completions API of the ``openai`` SDK.
The SDK's own retries are switched off so that only this module decides what is
retried, how long to wait, and when the whole pool must slow down.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import openai

from ._keys import Default
from .cache import ResponseCache, default_cache_dir, request_key
from .errors import (
    AuthenticationFailed,
    CallCancelled,
    CassiaError,
    LLMError,
    ModelNotFound,
    ParameterRefused,
    TransientFailure,
)
from .providers import OPTIONAL_PARAMETERS, resolve_api_key, resolve_endpoint

logger = logging.getLogger("cassia_sc")

_RETRY_STATUSES = frozenset({408, 409, 429})
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
        Tokens of the replies returned (cached ones included, as they were once paid for).
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
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens


class RequestPacer:
    """Start times shared by all workers: a requests-per-minute cap and rate-limit pauses.

    When one call is told to wait (HTTP 429), every worker waits, instead of each one
    hammering the server until it is told the same.

    Parameters
    ----------
    requests_per_minute
        Upper bound on request starts per minute, or None for no cap.
    """

    def __init__(self, requests_per_minute: float | None = None) -> None:
        if requests_per_minute is not None and requests_per_minute <= 0:
            raise ValueError(f"requests_per_minute must be positive, not {requests_per_minute!r}.")
        self._interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self._lock = threading.Lock()
        self._next_start = 0.0
        self._paused_until = 0.0

    def wait_turn(self, stop: threading.Event) -> None:
        """Block until this worker may send its next request.

        Parameters
        ----------
        stop
            Set to give up waiting.

        Raises
        ------
        CallCancelled
            When ``stop`` is set while waiting.
        """
        while True:
            with self._lock:
                now = time.monotonic()
                start = max(now, self._paused_until, self._next_start)
                if start <= now:
                    self._next_start = now + self._interval
                    return
            if stop.wait(start - now):
                raise CallCancelled("stopped")

    def pause(self, seconds: float) -> None:
        """Hold every worker back for ``seconds`` from now.

        Parameters
        ----------
        seconds
            How long no request may start.
        """
        with self._lock:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)


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
        Seconds before one HTTP request is abandoned (and retried).
    max_retries
        Further attempts after a failed request: on HTTP 408, 409, 429 and 5xx,
        connection errors, timeouts and malformed or empty replies.
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
    ) -> None:
        if not model or not isinstance(model, str):
            raise CassiaError("model must be a model name, e.g. 'openai/gpt-4o'.")
        if max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, not {max_retries!r}.")
        self.model = model
        self.endpoint = resolve_endpoint(provider)
        # 0 and 0.0 must make the same request, and the same cache key.
        self.temperature = None if temperature is None else float(temperature)
        self.reasoning = reasoning
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.cache = ResponseCache(cache_dir or default_cache_dir()) if cache else None
        self.usage = Usage()
        self._usage_lock = threading.Lock()
        self._in_flight: dict[str, Future] = {}
        self._pacer = RequestPacer(requests_per_minute)
        self._downgrades = _Downgrades()
        key = resolve_api_key(self.endpoint, api_key)
        self._redact = _redactor(key)
        self._client = openai.OpenAI(
            api_key=key,
            base_url=self.endpoint.base_url,
            timeout=timeout,
            max_retries=0,
        )

    @property
    def provider(self) -> str:
        """The provider as given: a name or a base URL."""
        return self.endpoint.provider

    @property
    def cache_dir(self) -> Path | None:
        """The cache folder, or None when caching is off."""
        return self.cache.directory if self.cache else None

    def close(self) -> None:
        """Close the connection pool; calls in flight fail and are not retried."""
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
            Set by the batch to cancel waits and retries.
        sample
            Which of several independent answers to the same request this is (repeated
            runs at a temperature above 0); each sample is cached on its own.

        Returns
        -------
        Reply
            The reply text with its usage.

        Raises
        ------
        AuthenticationFailed, ModelNotFound
            When no call of this run can succeed.
        LLMError
            When this call failed after its retries.
        CallCancelled
            When ``stop`` was set.
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
            reply = replace(_wait_for(leader, stop), cached=True, requests=0)
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
        if self.cache is not None and (stored := self.cache.get(key)) is not None:
            return Reply(
                content=stored["content"],
                prompt_tokens=stored.get("prompt_tokens", 0),
                completion_tokens=stored.get("completion_tokens", 0),
                cached=True,
            )
        reply = self._request_with_retries(request, stop)
        if self.cache is not None:
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

    # ------------------------------------------------------------------ network

    def _request_with_retries(self, request: Mapping[str, Any], stop: threading.Event) -> Reply:
        attempt = 0
        requests = 0
        while True:
            if stop.is_set():
                raise CallCancelled("stopped")
            self._pacer.wait_turn(stop)
            requests += 1
            with self._usage_lock:
                self.usage.requests += 1
            try:
                content, prompt_tokens, completion_tokens = self._send(request)
                return Reply(content, prompt_tokens, completion_tokens, False, requests)
            except TransientFailure as failure:
                if attempt >= self.max_retries:
                    raise LLMError(f"{failure} (gave up after {requests} attempts)") from None
                delay = self._backoff(attempt, failure.retry_after)
                if failure.rate_limited:
                    self._pacer.pause(delay)
                logger.info("Retrying in %.1f s after: %s", delay, failure)
                attempt += 1
                if stop.wait(delay):
                    raise CallCancelled("stopped") from None
            except ParameterRefused:
                continue  # same attempt, without the parameter the endpoint refused

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        exponential = self.retry_delay * 2**attempt * random.uniform(0.5, 1.0)
        return min(max(exponential, retry_after or 0.0), self.max_retry_delay)

    def _send(self, request: Mapping[str, Any]) -> tuple[str, int, int]:
        body = self._body(request)
        try:
            # The SDK's low-level post: same pool, auth and error types as
            # chat.completions.create, without its per-call transformation of the typed
            # request, which costs more CPU than the rest of the call under many workers.
            response = self._client.post(
                "/chat/completions", body=body, cast_to=object, options={"timeout": self.timeout}
            )
        except openai.APIStatusError as err:
            self._raise_for_status(err, body)
        except openai.APIConnectionError as err:  # timeouts included
            kind = "timed out" if isinstance(err, openai.APITimeoutError) else "connection failed"
            raise TransientFailure(f"request {kind} ({self.endpoint.base_url})") from None
        except ValueError as err:  # the SDK could not decode the body
            raise TransientFailure(f"malformed reply from the server: {err}") from None
        content, usage = _content_and_usage(response)
        if content is None:
            raise TransientFailure("malformed reply from the server: no message in it")
        if not content.strip():
            raise TransientFailure("the model returned an empty reply")
        return content, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)

    def _body(self, request: Mapping[str, Any]) -> dict[str, Any]:
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
        return body

    def _raise_for_status(self, err: openai.APIStatusError, sent: Mapping[str, Any]) -> None:
        status = err.status_code
        detail = self._redact(_error_message(err))
        if status in (401, 403):
            raise AuthenticationFailed(
                f"The provider refused the API key (HTTP {status}: {detail}). Check "
                f"{self.endpoint.key_variable} or api_key=, and the key's access to "
                f"{self.model!r}."
            ) from None
        if status == 404 or (status == 400 and _UNKNOWN_MODEL.search(detail)):
            raise ModelNotFound(
                f"Model {self.model!r} is not available at {self.endpoint.base_url} "
                f"(HTTP {status}: {detail}). Check the model name, or the base URL."
            ) from None
        if status == 400:
            for parameter, sent_as in OPTIONAL_PARAMETERS.items():
                if parameter in detail.lower() and any(option in sent for option in sent_as):
                    name = sent_as[0]
                    if self._downgrades.drop(name):
                        logger.warning(
                            "The endpoint refused %r; continuing without it (%s).", name, detail
                        )
                    raise ParameterRefused() from None
            raise LLMError(f"The server rejected the request (HTTP 400: {detail}).") from None
        if status in _RETRY_STATUSES or status >= 500:
            raise TransientFailure(
                f"HTTP {status} from the server: {detail}",
                retry_after=_retry_after(err.response.headers),
                rate_limited=status == 429,
            ) from None
        raise LLMError(f"The server answered HTTP {status}: {detail}.") from None


def _wait_for(leader: Future, stop: threading.Event) -> Reply:
    """Wait for the same request sent by another worker; ``stop`` cancels the wait."""
    while True:
        try:
            return leader.result(timeout=0.2)
        except FutureTimeout:
            if stop.is_set():
                raise CallCancelled("stopped") from None


def _content_and_usage(response: object) -> tuple[str | None, dict[str, int]]:
    """Return the first choice's text and the token counts of a chat-completion body."""
    if not isinstance(response, Mapping):
        return None, {}
    choices = response.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, Mapping) else None
    content = message.get("content") if isinstance(message, Mapping) else None
    usage = response.get("usage") if isinstance(response.get("usage"), Mapping) else {}
    counts = {
        name: int(usage.get(name) or 0)
        for name in ("prompt_tokens", "completion_tokens")
        if isinstance(usage.get(name) or 0, int | float)
    }
    return (content if isinstance(content, str) else None), counts


def _redactor(key: str) -> Callable[[str], str]:
    """Return a function that removes ``key``, whole or masked as providers echo it."""
    if len(key) < 8:
        return lambda text: text.replace(key, "[redacted]") if key else text
    # Providers echo keys masked, like "sk-pro****abcd": same start, same end.
    masked = re.compile(re.escape(key[:3]) + r"\S*" + re.escape(key[-4:]))
    return lambda text: masked.sub("[redacted]", text.replace(key, "[redacted]"))


def _error_message(err: openai.APIStatusError) -> str:
    body = err.body
    if isinstance(body, Mapping) and body.get("message"):
        return str(body["message"])[:500]
    return (err.message or "").strip()[:500]


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
