"""The providers' batch APIs on the wire, and the batches sent, remembered on disk.

OpenAI's Batch API (a JSONL file uploaded to ``/files``, then ``/batches``) and
Anthropic's Message Batches (``/messages/batches``) take many requests at once and answer
within a day at half the price. :class:`OpenAIBatches` and :class:`AnthropicBatches` speak
them through the ``openai`` package's HTTP client (the same pool, key, proxy and errors
as live calls; Anthropic's routes need only JSON over HTTP, so its SDK is not needed).
Each request is named by its cache key (the ``custom_id``), so that a result finds its
cache entry whoever collects it.

:class:`JobStore` keeps one small JSON file per batch sent, in the cache folder
(``batches/``): its id, provider, keys and state. A run asked for a key that an open
batch holds waits for that batch instead of sending a new one, so that a run killed while
waiting, or run again, never pays twice; ``cassia-sc jobs`` lists them.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import openai

from ._io import atomic_write_text
from ._version import __version__
from .errors import CassiaError

#: The batch APIs known, by the name ``batch_api=`` takes.
BATCH_APIS = ("openai", "anthropic")
#: Most requests put in one batch (the providers allow more; a smaller file uploads and
#: fails more gracefully).
MAX_BATCH_ITEMS = 10_000
_ANTHROPIC_VERSION = "2023-06-01"
_OPENAI_ENDED = frozenset({"completed", "expired", "cancelled", "failed"})
#: Anthropic's error types that the same request would get again.
_ANTHROPIC_FINAL = frozenset({"invalid_request_error", "authentication_error", "permission_error"})
#: Default completion room of an Anthropic request, which must always say one.
_ANTHROPIC_MAX_TOKENS = 4096


@dataclass(frozen=True)
class ItemResult:
    """What a batch gave for one request.

    Attributes
    ----------
    content
        The reply's text, or None when the request failed.
    prompt_tokens, completion_tokens
        The tokens the provider counted (billed even for a reply cut off).
    cut_off
        Whether the reply stopped at its ``max_tokens``.
    error
        Why it failed, for the message.
    retry
        Whether sending it again may succeed (expired, server errors); False for a
        request the provider refused as it is.
    """

    content: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cut_off: bool = False
    error: str | None = None
    retry: bool = True


@dataclass(frozen=True)
class JobState:
    """A batch as the provider last described it.

    Attributes
    ----------
    status
        The provider's word (``"in_progress"``, ``"completed"``, ``"ended"``, ...).
    ended
        Whether it will change no more: its results can be read.
    done, total
        Requests answered so far, and in all (0 when the provider does not say).
    """

    status: str
    ended: bool
    done: int = 0
    total: int = 0


class BatchWire(Protocol):
    """One provider's batch API: send, ask about, read and cancel a batch."""

    api: str

    def submit(self, items: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
        """Send ``(custom_id, chat request body)`` pairs as one batch; return its id."""

    def state(self, batch_id: str) -> JobState:
        """Return the batch's state."""

    def results(self, batch_id: str) -> dict[str, ItemResult]:
        """Return the result of each request of an ended batch, by custom_id."""

    def cancel(self, batch_id: str) -> None:
        """Ask the provider to stop the batch."""


class OpenAIBatches:
    """OpenAI's Batch API: a JSONL file of chat requests, then a batch over it.

    Parameters
    ----------
    client
        The run's ``openai.OpenAI`` client.
    """

    api = "openai"

    def __init__(self, client: openai.OpenAI) -> None:
        self._client = client

    def submit(self, items: Sequence[tuple[str, Mapping[str, Any]]]) -> str:  # noqa: D102
        lines = (
            json.dumps(
                {"custom_id": key, "method": "POST", "url": "/v1/chat/completions", "body": body},
                ensure_ascii=False,
            )
            for key, body in items
        )
        data = ("\n".join(lines) + "\n").encode("utf-8")
        uploaded = self._client.files.create(file=("requests.jsonl", data), purpose="batch")
        batch = self._client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"made_by": f"cassia_sc {__version__}"},
        )
        return batch.id

    def state(self, batch_id: str) -> JobState:  # noqa: D102
        batch = self._client.batches.retrieve(batch_id)
        counts = batch.request_counts
        return JobState(
            status=batch.status,
            ended=batch.status in _OPENAI_ENDED,
            done=(counts.completed + counts.failed) if counts else 0,
            total=counts.total if counts else 0,
        )

    def results(self, batch_id: str) -> dict[str, ItemResult]:  # noqa: D102
        batch = self._client.batches.retrieve(batch_id)
        found: dict[str, ItemResult] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            text = self._client.files.content(file_id).text
            for line in _json_lines(text):
                key = line.get("custom_id")
                if isinstance(key, str):
                    found[key] = _openai_item(line)
        return found

    def cancel(self, batch_id: str) -> None:  # noqa: D102
        self._client.batches.cancel(batch_id)


def _openai_item(line: Mapping[str, Any]) -> ItemResult:
    """One line of an output or error file."""
    response = line.get("response")
    if not isinstance(response, Mapping):
        error = line.get("error") if isinstance(line.get("error"), Mapping) else {}
        return ItemResult(None, error=str(error.get("message") or error.get("code") or "no reply"))
    status = response.get("status_code")
    body = response.get("body") if isinstance(response.get("body"), Mapping) else {}
    if status != 200:
        message = (
            body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else ""
        )
        retry = not isinstance(status, int) or status in (408, 409, 429) or status >= 500
        return ItemResult(None, error=f"HTTP {status} {message}".strip(), retry=retry)
    choices = body.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else {}
    message = first.get("message") if isinstance(first, Mapping) else None
    content = message.get("content") if isinstance(message, Mapping) else None
    usage = body.get("usage") if isinstance(body.get("usage"), Mapping) else {}
    return ItemResult(
        content if isinstance(content, str) else None,
        _count(usage.get("prompt_tokens")),
        _count(usage.get("completion_tokens")),
        cut_off=first.get("finish_reason") == "length" if isinstance(first, Mapping) else False,
        error=None if isinstance(content, str) else "no message in the reply",
    )


class AnthropicBatches:
    """Anthropic's Message Batches: each chat request turned into its Messages API form.

    Parameters
    ----------
    client
        The run's ``openai.OpenAI`` client (its base URL is Anthropic's ``/v1/``).
    api_key
        The key, sent in ``x-api-key`` as Anthropic's own routes want it.
    """

    api = "anthropic"

    def __init__(self, client: openai.OpenAI, api_key: str) -> None:
        self._client = client
        self._headers = {"x-api-key": api_key, "anthropic-version": _ANTHROPIC_VERSION}

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        options = {"headers": self._headers}
        if method == "post":
            return self._client.post(path, body=body, cast_to=object, options=options)
        return self._client.get(path, cast_to=object, options=options)

    def submit(self, items: Sequence[tuple[str, Mapping[str, Any]]]) -> str:  # noqa: D102
        requests = [{"custom_id": key, "params": _anthropic_params(body)} for key, body in items]
        made = self._call("post", "/messages/batches", {"requests": requests})
        return str(made["id"])

    def state(self, batch_id: str) -> JobState:  # noqa: D102
        batch = self._call("get", f"/messages/batches/{batch_id}")
        counts = batch.get("request_counts") or {}
        total = sum(_count(v) for v in counts.values())
        return JobState(
            status=str(batch.get("processing_status")),
            ended=batch.get("processing_status") == "ended",
            done=total - _count(counts.get("processing")),
            total=total,
        )

    def results(self, batch_id: str) -> dict[str, ItemResult]:  # noqa: D102
        batch = self._call("get", f"/messages/batches/{batch_id}")
        url = batch.get("results_url") or f"/messages/batches/{batch_id}/results"
        text = self._client.get(url, cast_to=str, options={"headers": self._headers})
        found: dict[str, ItemResult] = {}
        for line in _json_lines(text):
            if isinstance(line.get("custom_id"), str):
                found[line["custom_id"]] = _anthropic_item(line.get("result"))
        return found

    def cancel(self, batch_id: str) -> None:  # noqa: D102
        self._call("post", f"/messages/batches/{batch_id}/cancel", {})


def _anthropic_params(body: Mapping[str, Any]) -> dict[str, Any]:
    """Return a chat request in the Messages API's form: the system apart, a token cap."""
    messages = body.get("messages") or []
    system = "\n\n".join(m["content"] for m in messages if m.get("role") == "system")
    params: dict[str, Any] = {
        "model": body["model"],
        "max_tokens": body.get("max_tokens")
        or body.get("max_completion_tokens")
        or _ANTHROPIC_MAX_TOKENS,
        "messages": [
            {"role": m["role"], "content": m["content"]}
            for m in messages
            if m.get("role") != "system"
        ],
    }
    if system:
        params["system"] = system
    if body.get("temperature") is not None:
        params["temperature"] = body["temperature"]
    return params


def _anthropic_item(result: object) -> ItemResult:
    if not isinstance(result, Mapping):
        return ItemResult(None, error="no result")
    kind = result.get("type")
    if kind == "succeeded":
        message = result.get("message") if isinstance(result.get("message"), Mapping) else {}
        blocks = message.get("content") if isinstance(message.get("content"), list) else []
        text = "".join(
            b.get("text", "") for b in blocks if isinstance(b, Mapping) and b.get("type") == "text"
        )
        usage = message.get("usage") if isinstance(message.get("usage"), Mapping) else {}
        return ItemResult(
            text,
            _count(usage.get("input_tokens")),
            _count(usage.get("output_tokens")),
            cut_off=message.get("stop_reason") == "max_tokens",
        )
    if kind == "errored":
        error = result.get("error") if isinstance(result.get("error"), Mapping) else {}
        inner = error.get("error") if isinstance(error.get("error"), Mapping) else error
        kind_of_error = str(inner.get("type") or "error")
        message = str(inner.get("message") or kind_of_error)
        return ItemResult(None, error=message, retry=kind_of_error not in _ANTHROPIC_FINAL)
    return ItemResult(None, error=str(kind or "no result"))  # expired, canceled: send again


def batch_wire(api: str, client: openai.OpenAI, api_key: str) -> BatchWire:
    """Return the wire of the batch API ``api`` (one of :data:`BATCH_APIS`).

    Parameters
    ----------
    api
        ``"openai"`` or ``"anthropic"``.
    client
        The run's ``openai.OpenAI`` client, pointed at the provider.
    api_key
        The key.

    Returns
    -------
    BatchWire
        The provider's batch API.

    Raises
    ------
    CassiaError
        For another name.
    """
    if api == "openai":
        return OpenAIBatches(client)
    if api == "anthropic":
        return AnthropicBatches(client, api_key)
    raise CassiaError(f"batch_api must be one of {list(BATCH_APIS)}, not {api!r}.")


# -- the batches sent, on disk ---------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """A batch sent to a provider, as the job store keeps it.

    Attributes
    ----------
    id
        The provider's batch id.
    api
        Which batch API (``"openai"``, ``"anthropic"``).
    provider
        Where it was sent (the base URL, any secret in it redacted).
    keys
        The cache keys of its requests (their ``custom_id``).
    created
        When it was sent (seconds since the epoch).
    status
        ``"running"`` until it ended, ``"ended"`` once the provider is done,
        ``"collected"`` once its results are in the cache, or ``"cancelled"``.
    provider_status
        The provider's own word for its state, when last asked.
    done, total
        Its requests answered so far, and in all, when last asked.
    """

    id: str
    api: str
    provider: str
    keys: tuple[str, ...]
    created: float
    status: str = "running"
    provider_status: str = ""
    done: int = 0
    total: int = 0

    @property
    def open(self) -> bool:
        """Whether its results are still to be collected."""
        return self.status in ("running", "ended")


class JobStore:
    """The batches sent from runs that use one cache folder, one JSON file each.

    Parameters
    ----------
    cache_dir
        The cache folder; the files live in its ``batches/`` folder.
    """

    def __init__(self, cache_dir: str | os.PathLike) -> None:
        self.directory = Path(cache_dir).expanduser() / "batches"
        self._lock = threading.Lock()

    def _path(self, job_id: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in job_id)
        return self.directory / f"{safe}.json"

    def add(self, job: Job) -> None:
        """Remember a batch just sent."""
        self._write(job)

    def update(self, job: Job, **changes: Any) -> Job:
        """Change a batch's record; return the new record."""
        changed = replace(job, **changes)
        self._write(changed)
        return changed

    def _write(self, job: Job) -> None:
        with self._lock:
            record = vars(job) | {"keys": list(job.keys)}  # asdict would copy every key
            atomic_write_text(self._path(job.id), json.dumps(record, indent=1))

    def jobs(self) -> list[Job]:
        """Return every batch remembered, oldest first (unreadable files skipped)."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.glob("*.json"):
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
                found.append(Job(**(record | {"keys": tuple(record["keys"])})))
            except (OSError, ValueError, TypeError, KeyError):
                continue
        return sorted(found, key=lambda job: job.created)

    def holding(self, provider: str, keys: Iterable[str]) -> dict[str, Job]:
        """Return, for each of ``keys`` an open batch of ``provider`` holds, that batch.

        The newest such batch when several do (an item that failed in one and was sent
        again in the next).
        """
        wanted = set(keys)
        found: dict[str, Job] = {}
        for job in self.jobs():  # oldest first: a newer batch replaces an older one
            if job.open and job.provider == provider:
                for key in wanted.intersection(job.keys):
                    found[key] = job
        return found


def _json_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for raw in text.splitlines():
        if raw.strip():
            try:
                value = json.loads(raw)
            except ValueError:
                continue  # a torn line: its request counts as not answered, sent again
            if isinstance(value, dict):
                lines.append(value)
    return lines


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
