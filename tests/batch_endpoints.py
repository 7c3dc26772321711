"""The providers' batch APIs, served by :class:`llm_server.LLMServer` next to its chat route.

Two wire formats, each as the provider documents it:

* OpenAI's Batch API: a JSONL file uploaded to ``POST /files`` (``purpose=batch``), a
  batch made of it by ``POST /batches``, polled by ``GET /batches/{id}``, cancelled by
  ``POST /batches/{id}/cancel``; its output and error files read by
  ``GET /files/{id}/content``.
* Anthropic's Message Batches: ``POST /messages/batches`` with the requests inline, polled
  by ``GET /messages/batches/{id}``, results (JSONL) at the batch's ``results_url``,
  ``POST /messages/batches/{id}/cancel``.

Each item is answered by the server's ``handler``, the one that answers live chat
completions, from a :class:`~llm_server.RecordedRequest` holding the item's chat request
(Anthropic's ``params`` turned into OpenAI-style messages, the system prompt first), so a
scripted model answers an item exactly as it answers the same request sent live. The
server's docstring describes the timing and the scripting knobs; this module holds the
records (:class:`BatchRecord`, :class:`StoredFile`, :class:`ItemOutcome`) and the routes.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from llm_server import RecordedRequest, Reply, _completion, _error_body, _message_text, _phrase

if TYPE_CHECKING:
    from llm_server import LLMServer

__all__ = [
    "BatchHandler",
    "BatchRecord",
    "ItemFault",
    "ItemOutcome",
    "StoredFile",
    "chat_body_of",
]

#: ``(custom_id, position in its batch) -> None | "error" | "expire" | status``: how one item
#: goes wrong (None: it is answered by the handler).
ItemFault = Callable[[str, int], "str | int | None"]
#: Answers a request to a batch route instead of the default (an error status, a delay), or
#: returns None for the default answer.
BatchHandler = Callable[[RecordedRequest, int], "Reply | None"]

# (status, body, extra headers) of one answer.
_Answer = tuple[int, bytes, dict[str, str]]

_DAY = 86_400  # both providers' completion window, and how long their files are kept (x30)
_CHAT_ENDPOINT = "/v1/chat/completions"
# Anthropic's API reference for a custom_id: "pattern: ^[a-zA-Z0-9_-]{1,64}$".
_ANTHROPIC_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
# The texts of OpenAI's error-file lines for items that were not run (its batch guide).
_EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
_CANCELLED_MESSAGE = "This request was not executed because the batch was cancelled."
_FAULT_MESSAGE = "The server had an error while processing your request. Sorry about that!"
# What a scripted whole-batch failure says, by its code.
_FAILURES = {
    "token_limit_exceeded": (
        "Enqueued token limit reached for test-model in organization org-test. "
        "Please try again once some in_progress batches have been completed."
    ),
}
# OpenAI's finish_reason -> Anthropic's stop_reason.
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
# Anthropic's error.type by status (its "Errors" page).
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def _new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def _iso(timestamp: float | None) -> str | None:
    """RFC 3339 in UTC, as Anthropic writes its times (None stays None)."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat().replace("+00:00", "Z")


def _seconds(timestamp: float | None) -> int | None:
    """Unix seconds, as OpenAI writes its times (None stays None)."""
    return None if timestamp is None else int(timestamp)


def _json_answer(payload: Any, status: int = 200) -> _Answer:
    return status, json.dumps(payload).encode(), {}


def _openai_error(
    status: int, message: str, *, code: str | None = None, param: str | None = None
) -> _Answer:
    body = json.loads(_error_body(message, status, code))
    body["error"]["param"] = param
    return _json_answer(body, status)


def _anthropic_error_type(status: int) -> str:
    return _ANTHROPIC_ERROR_TYPES.get(
        status, "api_error" if status >= 500 else "invalid_request_error"
    )


def _anthropic_error(status: int, message: str) -> _Answer:
    body = {
        "type": "error",
        "error": {"type": _anthropic_error_type(status), "message": message},
        "request_id": _new_id("req_"),
    }
    return _json_answer(body, status)


def _parse_raw(raw: bytes) -> Any:
    """A ``Reply.raw_body`` as it goes into a JSONL line: its JSON, else its text."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw.decode("utf-8", "replace")


def _form_fields(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The parts of a multipart/form-data body: name -> (filename, content)."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1")
    message = email.message_from_bytes(head + raw, policy=email.policy.HTTP)
    if not message.is_multipart():
        return {}
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            fields[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return fields


def chat_body_of(params: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic request's ``params`` as the OpenAI-style chat request a handler reads.

    The system prompt becomes the first message; content blocks are flattened to text; the
    other fields (``model``, ``max_tokens``, ``temperature``...) are kept as they are.
    """
    messages: list[dict[str, Any]] = []
    if params.get("system"):
        messages.append({"role": "system", "content": _message_text(params["system"])})
    for message in params.get("messages") or []:
        if isinstance(message, dict):
            content = _message_text(message.get("content"))
            messages.append({"role": message.get("role"), "content": content})
    body = {k: v for k, v in params.items() if k not in ("system", "messages")}
    body["messages"] = messages
    return body


def _params_problem(params: dict[str, Any]) -> str | None:
    """What Anthropic would say is wrong with one item's ``params`` (None: nothing).

    Anthropic checks each item's params only while running the batch: a bad item ends
    ``errored`` (``invalid_request_error``) instead of failing the whole request.
    """
    if not isinstance(params.get("model"), str):
        return "model: Field required"
    max_tokens = params.get("max_tokens")
    if max_tokens is None:
        return "max_tokens: Field required"
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Input should be greater than or equal to 1"
    messages = params.get("messages")
    if not isinstance(messages, list):
        return "messages: Field required"
    if not messages:
        return "messages: at least one message is required"
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            return (
                f"messages.{i}.role: Input should be 'user' or 'assistant'"
                " (the system prompt goes in the top-level `system` parameter)"
            )
        if message.get("content") is None:
            return f"messages.{i}.content: Field required"
    system = params.get("system")
    if system is not None and not isinstance(system, (str, list)):
        return "system: Input should be a valid string or a list of text blocks"
    temperature = params.get("temperature")
    if temperature is not None and not (
        isinstance(temperature, (int, float)) and 0.0 <= temperature <= 1.0
    ):
        return "temperature: range: 0..1"
    return None


@dataclass
class StoredFile:
    """A file on the OpenAI side: an uploaded batch input, or a batch's output or error file."""

    id: str
    filename: str
    purpose: str  # "batch" (uploaded) or "batch_output" (written by a batch)
    content: bytes
    created_at: int
    batch_id: str | None = None  # the batch that wrote it
    downloads: int = 0  # GET /files/{id}/content answered

    def lines(self) -> list[dict[str, Any]]:
        """The file's JSONL lines, parsed."""
        return [json.loads(line) for line in self.content.decode().splitlines() if line.strip()]

    def as_json(self) -> dict[str, Any]:
        """The ``FileObject`` the API answers."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "expires_at": self.created_at + 30 * _DAY,  # batch files are kept 30 days
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


@dataclass
class ItemOutcome:
    """How one item of a batch ended.

    ``kind`` is ``"succeeded"``, ``"errored"`` (answered with an error ``status``, or a
    bad Anthropic ``params``), ``"expired"`` or ``"canceled"`` (never run). ``request`` is
    what the handler was asked (None when it was not asked).
    """

    kind: str
    id: str  # the line's id ("batch_req_..."), or the Anthropic message's ("msg_...")
    status: int = 200
    message: str = ""  # an errored item's error message
    completion: dict[str, Any] | None = None  # a succeeded item's chat.completion
    raw: Any = None  # a Reply.raw_body (its JSON, else its text): the answer's body as is
    request: RecordedRequest | None = None
    request_id: str = field(default_factory=lambda: _new_id("req_"))

    def usage(self) -> tuple[float, float]:
        """(prompt, completion) tokens the answer reports (0, 0 without usage)."""
        body = self.raw if self.raw is not None else self.completion
        usage = body.get("usage") if isinstance(body, dict) else None
        if not isinstance(usage, dict):
            return 0, 0
        return usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0


@dataclass
class BatchRecord:
    """One batch as the server keeps it, for either provider.

    ``status`` is the provider's status as of the last request about the batch (it moves
    on only when asked about). ``polls`` counts its retrievals (GET of the batch) and
    ``downloads`` the reads of its results (its output or error file, or its results).
    """

    id: str
    provider: str  # "openai" or "anthropic"
    custom_ids: list[str]
    bodies: list[dict[str, Any]]  # each item's chat request, as the handler sees it
    params: list[Any]  # each item as sent (the JSONL line's body, or Anthropic's params)
    started: float  # batch_clock() at creation
    created_at: float  # time.time() at creation
    delay: float  # seconds from creation to its end
    expire_after: int | None  # items run before it expires (None: it does not)
    headers: dict[str, str]  # of the request that made it
    state: str = "in_progress"  # "validating", "in_progress", "cancelling" or "ended"
    ended_as: str | None = None  # "completed", "expired", "cancelled" or "failed"
    input_file_id: str | None = None
    endpoint: str = _CHAT_ENDPOINT
    completion_window: str = "24h"
    metadata: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)  # why it failed validation
    outcomes: list[ItemOutcome | None] = field(default_factory=list)
    times: dict[str, float] = field(default_factory=dict)  # event -> time.time()
    output_file_id: str | None = None
    error_file_id: str | None = None
    polls: int = 0
    downloads: int = 0

    def __post_init__(self) -> None:
        if not self.outcomes:
            self.outcomes = [None] * len(self.custom_ids)

    @property
    def status(self) -> str:
        """What the provider shows: OpenAI's ``status``, Anthropic's ``processing_status``."""
        if self.provider == "anthropic":
            return {"cancelling": "canceling"}.get(self.state, self.state)
        return self.ended_as if self.state == "ended" and self.ended_as else self.state

    @property
    def kinds(self) -> dict[str, str]:
        """custom_id -> how its item ended (``"pending"`` while not yet run)."""
        return {
            cid: outcome.kind if outcome else "pending"
            for cid, outcome in zip(self.custom_ids, self.outcomes, strict=True)
        }

    def outcome(self, custom_id: str) -> ItemOutcome | None:
        """The outcome of the item named ``custom_id`` (None while it is not run)."""
        return self.outcomes[self.custom_ids.index(custom_id)]

    def due(self, index: int) -> float:
        """When item ``index`` runs: the items are run in order, spread over the delay."""
        return self.started + self.delay * (index + 1) / max(1, len(self.custom_ids))

    def count(self, kind: str) -> int:
        return sum(1 for outcome in self.outcomes if outcome and outcome.kind == kind)


@dataclass(frozen=True)
class _Route:
    provider: str
    serve: Callable[..., _Answer]
    args: dict[str, str]


class BatchEndpoints:
    """The batch routes of one :class:`~llm_server.LLMServer`; its records live on the server."""

    def __init__(self, owner: LLMServer) -> None:
        self.owner = owner
        # One lock for all batch state; held while items are answered, so a batch is
        # advanced by one request at a time.
        self._lock = threading.RLock()
        prefix = "(?:/v1)?"
        table: list[tuple[str, str, str, Callable[..., _Answer]]] = [
            ("POST", "/files", "openai", self._upload),
            ("GET", "/files/(?P<file_id>[^/]+)", "openai", self._file),
            ("DELETE", "/files/(?P<file_id>[^/]+)", "openai", self._delete_file),
            ("GET", "/files/(?P<file_id>[^/]+)/content", "openai", self._file_content),
            ("POST", "/batches", "openai", self._openai_create),
            ("GET", "/batches", "openai", self._openai_list),
            ("GET", "/batches/(?P<batch_id>[^/]+)", "openai", self._openai_retrieve),
            ("POST", "/batches/(?P<batch_id>[^/]+)/cancel", "openai", self._openai_cancel),
            ("POST", "/messages/batches", "anthropic", self._anthropic_create),
            ("GET", "/messages/batches", "anthropic", self._anthropic_list),
            ("GET", "/messages/batches/(?P<batch_id>[^/]+)", "anthropic", self._anthropic_retrieve),
            (
                "GET",
                "/messages/batches/(?P<batch_id>[^/]+)/results",
                "anthropic",
                self._anthropic_results,
            ),
            (
                "POST",
                "/messages/batches/(?P<batch_id>[^/]+)/cancel",
                "anthropic",
                self._anthropic_cancel,
            ),
            (
                "DELETE",
                "/messages/batches/(?P<batch_id>[^/]+)",
                "anthropic",
                self._anthropic_delete,
            ),
        ]
        self._table = [
            (method, re.compile(prefix + pattern), provider, serve)
            for method, pattern, provider, serve in table
        ]

    # -- routing (called from request threads) --------------------------------------
    def route(self, method: str, path: str) -> _Route | None:
        """The batch route serving ``method path``, or None when it is not one."""
        for route_method, pattern, provider, serve in self._table:
            found = pattern.fullmatch(path) if route_method == method else None
            if found:
                return _Route(provider, serve, found.groupdict())
        return None

    def serve(self, route: _Route, request: RecordedRequest, raw: bytes) -> _Answer:
        """Record ``request``, let ``batch_handler`` have its say, then answer it."""
        owner = self.owner
        with owner._lock:
            owner.batch_requests.append(request)
            index = len(owner.batch_requests) - 1
        error = _anthropic_error if route.provider == "anthropic" else _openai_error
        extra: dict[str, str] = {}
        if owner.batch_handler is not None:
            try:
                reply = owner.batch_handler(request, index)
                if reply is not None and not isinstance(reply, Reply):
                    raise TypeError(f"batch_handler returned {type(reply).__name__}")
            except Exception as exc:
                return error(500, f"test batch_handler raised {type(exc).__name__}: {exc}")
            if reply is not None:
                if reply.delay > 0:
                    time.sleep(reply.delay)
                if reply.raw_body is not None:
                    return reply.status, reply.raw_body, dict(reply.headers)
                if reply.status != 200:
                    status, payload, _ = error(
                        reply.status, reply.error_message or _phrase(reply.status)
                    )
                    return status, payload, dict(reply.headers)
                extra = dict(reply.headers)  # a 200: the default answer, late or with headers
        if route.provider == "anthropic":
            # Anthropic refuses a request without its key or API version (the key goes in
            # x-api-key; its SDK from 2.x sends it as a bearer token).
            if not request.headers.get("x-api-key") and not request.headers.get("authorization"):
                return _anthropic_error(401, "x-api-key header is required")
            if not request.headers.get("anthropic-version"):
                return _anthropic_error(400, "anthropic-version: header is required")
        with self._lock:
            status, payload, headers = route.serve(request, raw, **route.args)
        return status, payload, {**headers, **extra}

    # -- the life of a batch (callers hold self._lock) ------------------------------
    def _new_batch(self, record: BatchRecord) -> None:
        with self.owner._lock:
            self.owner.batches[record.id] = record

    def _advance(self, batch: BatchRecord) -> None:
        """Bring ``batch`` up to the clock: validate it, run the items now due, end it."""
        if batch.state == "ended":
            return
        if batch.state == "validating":
            if batch.errors:
                self._end(batch, "failed")
                return
            batch.state = "in_progress"
            batch.times["in_progress"] = time.time()
        if batch.state == "cancelling":
            for i, outcome in enumerate(batch.outcomes):
                if outcome is None:
                    batch.outcomes[i] = ItemOutcome("canceled", self._item_id(batch))
            self._end(batch, "cancelled")
            return
        now = self.owner.batch_clock()
        for i, outcome in enumerate(batch.outcomes):
            if outcome is not None:
                continue
            if batch.due(i) > now:
                break
            batch.outcomes[i] = self._run_item(batch, i)
        if all(outcome is not None for outcome in batch.outcomes):
            expired = any(outcome and outcome.kind == "expired" for outcome in batch.outcomes)
            self._end(batch, "expired" if expired else "completed")

    def _item_id(self, batch: BatchRecord) -> str:
        return _new_id("msg_" if batch.provider == "anthropic" else "batch_req_")

    def _run_item(self, batch: BatchRecord, index: int) -> ItemOutcome:
        """Run item ``index`` of ``batch``: its scripted fault, or the handler's answer."""
        owner = self.owner
        custom_id = batch.custom_ids[index]
        item_id = self._item_id(batch)
        fault: str | int | None = None
        if owner.batch_item_fault is not None:
            try:
                fault = owner.batch_item_fault(custom_id, index)
            except Exception as exc:
                message = f"test batch_item_fault raised {type(exc).__name__}: {exc}"
                return ItemOutcome("errored", item_id, 500, message)
        if fault is None and batch.expire_after is not None and index >= batch.expire_after:
            fault = "expire"
        if fault == "expire":
            return ItemOutcome("expired", item_id)
        if fault == "error":
            return ItemOutcome("errored", item_id, 500, _FAULT_MESSAGE)
        if isinstance(fault, int) and not isinstance(fault, bool):
            return ItemOutcome("errored", item_id, fault, _phrase(fault))
        if fault is not None:
            message = f"batch_item_fault returned {fault!r}: None, 'error', 'expire' or a status?"
            return ItemOutcome("errored", item_id, 500, message)
        if batch.provider == "anthropic":
            problem = _params_problem(batch.params[index])
            if problem:
                return ItemOutcome("errored", item_id, 400, problem)

        request = RecordedRequest(
            path="/v1/messages" if batch.provider == "anthropic" else batch.endpoint,
            headers=dict(batch.headers),
            body=batch.bodies[index],
            time=time.monotonic(),
            method="POST",
            custom_id=custom_id,
            batch_id=batch.id,
        )
        with owner._lock:
            owner.batch_items.append(request)
            number = len(owner.batch_items) - 1
        try:
            reply = owner.handler(request, number)
            if not isinstance(reply, Reply):
                raise TypeError(f"handler returned {type(reply).__name__}, expected Reply")
        except Exception as exc:
            message = f"test handler raised {type(exc).__name__}: {exc}"
            reply = Reply(status=500, error_message=message)
        # Reply.delay is not slept: a batch's timing is batch_delay's.
        request.status, request.answered_at = reply.status, time.monotonic()
        raw = _parse_raw(reply.raw_body) if reply.raw_body is not None else None
        if reply.status == 200:
            completion = _completion(request, reply)
            return ItemOutcome(
                "succeeded", item_id, completion=completion, raw=raw, request=request
            )
        message = reply.error_message or _phrase(reply.status)
        return ItemOutcome("errored", item_id, reply.status, message, raw=raw, request=request)

    def _end(self, batch: BatchRecord, ended_as: str) -> None:
        now = time.time()
        batch.state, batch.ended_as = "ended", ended_as
        batch.times["ended"] = now
        if batch.provider != "openai" or ended_as == "failed":
            return
        # OpenAI writes the successes to the output file and everything else to the error
        # file; a file with no line is not written (its id stays null).
        output: list[str] = []
        errors: list[str] = []
        for custom_id, outcome in zip(batch.custom_ids, batch.outcomes, strict=True):
            assert outcome is not None
            line = json.dumps(self._openai_line(custom_id, outcome))
            (output if outcome.kind == "succeeded" else errors).append(line)
        for lines, kind in ((output, "output"), (errors, "error")):
            if not lines:
                continue
            if self.owner.batch_out_of_order:
                lines.reverse()
            stored = StoredFile(
                id=_new_id("file-"),
                filename=f"{batch.id}_{kind}.jsonl",
                purpose="batch_output",
                content=("\n".join(lines) + "\n").encode(),
                created_at=int(now),
                batch_id=batch.id,
            )
            with self.owner._lock:
                self.owner.files[stored.id] = stored
            if kind == "output":
                batch.output_file_id = stored.id
            else:
                batch.error_file_id = stored.id

    # -- OpenAI: files -------------------------------------------------------------
    def _upload(self, request: RecordedRequest, raw: bytes) -> _Answer:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            return _openai_error(400, "Expected a multipart/form-data body.")
        fields = _form_fields(content_type, raw)
        purpose = fields.get("purpose", (None, b""))[1].decode("utf-8", "replace")
        request.body = {"purpose": purpose, "filename": fields.get("file", (None, b""))[0]}
        if "file" not in fields:
            return _openai_error(400, "Missing required parameter: 'file'.", param="file")
        if not purpose:
            return _openai_error(400, "Missing required parameter: 'purpose'.", param="purpose")
        if purpose != "batch":
            message = f"Invalid value for 'purpose': {purpose!r}; this server stores 'batch' files."
            return _openai_error(400, message, code="invalid_value", param="purpose")
        filename, content = fields["file"]
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError:
            return _openai_error(400, "Invalid file format for Batch API. Must be UTF-8 JSONL.")
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                parsed = json.loads(line)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                message = (
                    "Invalid file format for Batch API. "
                    f"Line {number} is not a JSON object: {line[:80]!r}"
                )
                return _openai_error(400, message, code="invalid_file_format", param="file")
        stored = StoredFile(
            id=_new_id("file-"),
            filename=filename or "upload.jsonl",
            purpose="batch",
            content=content,
            created_at=int(time.time()),
        )
        with self.owner._lock:
            self.owner.files[stored.id] = stored
            self.owner.uploads.append(stored)
        return _json_answer(stored.as_json())

    def _stored(self, file_id: str) -> StoredFile | None:
        return self.owner.files.get(file_id)

    def _no_file(self, file_id: str) -> _Answer:
        return _openai_error(404, f"No such File object: {file_id}", code="file_not_found")

    def _file(self, request: RecordedRequest, raw: bytes, file_id: str) -> _Answer:
        stored = self._stored(file_id)
        return _json_answer(stored.as_json()) if stored else self._no_file(file_id)

    def _delete_file(self, request: RecordedRequest, raw: bytes, file_id: str) -> _Answer:
        with self.owner._lock:
            stored = self.owner.files.pop(file_id, None)
        if stored is None:
            return self._no_file(file_id)
        return _json_answer({"id": file_id, "object": "file", "deleted": True})

    def _file_content(self, request: RecordedRequest, raw: bytes, file_id: str) -> _Answer:
        stored = self._stored(file_id)
        if stored is None:
            return self._no_file(file_id)
        stored.downloads += 1
        batch = self.owner.batches.get(stored.batch_id or "")
        if batch is not None:
            batch.downloads += 1
        return 200, stored.content, {"Content-Type": "application/octet-stream"}

    # -- OpenAI: batches -----------------------------------------------------------
    def _openai_create(self, request: RecordedRequest, raw: bytes) -> _Answer:
        owner = self.owner
        body = request.body
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not isinstance(body.get(name), str):
                message = f"Missing required parameter: '{name}'."
                return _openai_error(400, message, code="missing_required_parameter", param=name)
        if body["endpoint"] != _CHAT_ENDPOINT:
            message = f"Invalid value for 'endpoint': this server runs {_CHAT_ENDPOINT} only."
            return _openai_error(400, message, code="invalid_value", param="endpoint")
        if body["completion_window"] != "24h":
            message = "Invalid value for 'completion_window': only '24h' is supported."
            return _openai_error(400, message, code="invalid_value", param="completion_window")
        stored = self._stored(body["input_file_id"])
        if stored is None:
            return self._no_file(body["input_file_id"])
        if stored.purpose != "batch":
            message = f"File {stored.id} was not uploaded with purpose 'batch'."
            return _openai_error(400, message, code="invalid_value", param="input_file_id")

        custom_ids: list[str] = []
        bodies: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []

        def invalid(code: str, message: str, param: str | None, line: int | None) -> None:
            errors.append({"code": code, "message": message, "param": param, "line": line})

        for number, text in enumerate(stored.content.decode().splitlines(), start=1):
            if not text.strip():
                continue
            line = json.loads(text)  # checked at upload
            custom_id = line.get("custom_id")
            if not isinstance(custom_id, str) or not custom_id:
                invalid(
                    "missing_required_parameter",
                    "Missing required parameter: 'custom_id'.",
                    "custom_id",
                    number,
                )
            elif custom_id in custom_ids:
                message = (
                    "The custom_id for this request is a duplicate of another request. "
                    "The custom_id parameter must be unique for each request in a batch."
                )
                invalid("duplicate_custom_id", message, "custom_id", number)
            if line.get("method") != "POST":
                message = "The method of each request must be 'POST'."
                invalid("invalid_method", message, "method", number)
            if line.get("url") != body["endpoint"]:
                message = "The URL provided for this request does not match the batch endpoint."
                invalid("invalid_url", message, "url", number)
            if not isinstance(line.get("body"), dict):
                message = "Missing required parameter: 'body'."
                invalid("missing_required_parameter", message, "body", number)
            custom_ids.append(custom_id if isinstance(custom_id, str) else "")
            bodies.append(line.get("body") if isinstance(line.get("body"), dict) else {})
        if not custom_ids:
            invalid("empty_file", "The batch input file is empty.", None, None)
        if owner.batch_fail:
            message = _FAILURES.get(owner.batch_fail, f"The batch failed ({owner.batch_fail}).")
            errors = [{"code": owner.batch_fail, "message": message, "param": None, "line": None}]

        record = BatchRecord(
            id=_new_id("batch_"),
            provider="openai",
            custom_ids=custom_ids,
            bodies=bodies,
            params=[dict(b) for b in bodies],
            started=owner.batch_clock(),
            created_at=time.time(),
            delay=owner.batch_delay,
            expire_after=owner.batch_expire_after,
            headers=dict(request.headers),
            state="validating",  # as OpenAI answers a new batch; any later read moves it on
            input_file_id=stored.id,
            endpoint=body["endpoint"],
            completion_window=body["completion_window"],
            metadata=body.get("metadata"),
            errors=errors,
        )
        self._new_batch(record)
        return _json_answer(self._openai_json(record))

    def _openai_batch(self, batch_id: str) -> BatchRecord | None:
        batch = self.owner.batches.get(batch_id)
        return batch if batch is not None and batch.provider == "openai" else None

    def _no_batch(self, batch_id: str) -> _Answer:
        return _openai_error(404, f"No batch found with id '{batch_id}'.", code="not_found")

    def _openai_retrieve(self, request: RecordedRequest, raw: bytes, batch_id: str) -> _Answer:
        batch = self._openai_batch(batch_id)
        if batch is None:
            return self._no_batch(batch_id)
        batch.polls += 1
        self._advance(batch)
        return _json_answer(self._openai_json(batch))

    def _openai_list(self, request: RecordedRequest, raw: bytes) -> _Answer:
        batches = [b for b in reversed(self.owner.batches.values()) if b.provider == "openai"]
        for batch in batches:
            self._advance(batch)
        data = [self._openai_json(b) for b in batches]
        return _json_answer(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": False,
            }
        )

    def _openai_cancel(self, request: RecordedRequest, raw: bytes, batch_id: str) -> _Answer:
        batch = self._openai_batch(batch_id)
        if batch is None:
            return self._no_batch(batch_id)
        self._advance(batch)
        if batch.state == "ended":
            message = f"Cannot cancel a batch with status '{batch.status}'."
            return _openai_error(409, message, code="batch_not_cancellable")
        if batch.state != "cancelling":
            batch.state = "cancelling"
            batch.times["cancelling"] = time.time()
        return _json_answer(self._openai_json(batch))

    def _openai_json(self, batch: BatchRecord) -> dict[str, Any]:
        """The ``Batch`` object OpenAI answers."""
        times = batch.times
        ended = times.get("ended")
        ended_as = batch.ended_as if batch.state == "ended" else None
        validated = batch.state != "validating" and ended_as != "failed"
        usage = None
        if ended_as in ("completed", "expired", "cancelled"):
            prompt = completion = 0.0
            for outcome in batch.outcomes:
                if outcome is not None and outcome.kind == "succeeded":
                    p, c = outcome.usage()
                    prompt, completion = prompt + p, completion + c
            usage = {
                "input_tokens": prompt,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": completion,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt + completion,
            }
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "model": next((b.get("model") for b in batch.bodies if b.get("model")), None),
            "errors": {"object": "list", "data": batch.errors} if ended_as == "failed" else None,
            "input_file_id": batch.input_file_id,
            "completion_window": batch.completion_window,
            "status": batch.status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": int(batch.created_at),
            "in_progress_at": _seconds(times.get("in_progress")),
            "expires_at": int(batch.created_at) + _DAY,
            "finalizing_at": _seconds(ended) if ended_as in ("completed", "expired") else None,
            "completed_at": _seconds(ended) if ended_as == "completed" else None,
            "failed_at": _seconds(ended) if ended_as == "failed" else None,
            "expired_at": _seconds(ended) if ended_as == "expired" else None,
            "cancelling_at": _seconds(times.get("cancelling")),
            "cancelled_at": _seconds(ended) if ended_as == "cancelled" else None,
            "request_counts": {
                "total": len(batch.custom_ids) if validated else 0,
                "completed": batch.count("succeeded"),
                "failed": batch.count("errored"),
            },
            "metadata": batch.metadata,
            "usage": usage,
        }

    def _openai_line(self, custom_id: str, outcome: ItemOutcome) -> dict[str, Any]:
        """One line of a batch's output or error file."""
        line: dict[str, Any] = {"id": outcome.id, "custom_id": custom_id}
        if outcome.kind in ("expired", "canceled"):
            code, message = (
                ("batch_expired", _EXPIRED_MESSAGE)
                if outcome.kind == "expired"
                else ("batch_cancelled", _CANCELLED_MESSAGE)
            )
            return line | {"response": None, "error": {"code": code, "message": message}}
        if outcome.raw is not None:
            body = outcome.raw
        elif outcome.kind == "succeeded":
            body = outcome.completion
        else:
            body = json.loads(_error_body(outcome.message, outcome.status))
        response = {"status_code": outcome.status, "request_id": outcome.request_id, "body": body}
        return line | {"response": response, "error": None}

    # -- Anthropic: message batches --------------------------------------------------
    def _anthropic_create(self, request: RecordedRequest, raw: bytes) -> _Answer:
        owner = self.owner
        requests = request.body.get("requests")
        if not isinstance(requests, list):
            return _anthropic_error(400, "requests: Field required")
        if not requests:
            return _anthropic_error(
                400, "requests: List should have at least 1 item after validation, not 0"
            )
        custom_ids: list[str] = []
        for i, item in enumerate(requests):
            if not isinstance(item, dict):
                return _anthropic_error(400, f"requests.{i}: Input should be a valid dictionary")
            custom_id = item.get("custom_id")
            if not isinstance(custom_id, str) or not _ANTHROPIC_CUSTOM_ID.fullmatch(custom_id):
                message = (
                    f"requests.{i}.custom_id: String should match pattern "
                    f"'^[a-zA-Z0-9_-]{{1,64}}$' (got {custom_id!r})"
                )
                return _anthropic_error(400, message)
            if custom_id in custom_ids:
                message = f"requests.{i}.custom_id: {custom_id!r} is not unique within the batch"
                return _anthropic_error(400, message)
            if not isinstance(item.get("params"), dict):
                return _anthropic_error(400, f"requests.{i}.params: Field required")
            custom_ids.append(custom_id)
        created = time.time()
        record = BatchRecord(
            id=_new_id("msgbatch_"),
            provider="anthropic",
            custom_ids=custom_ids,
            bodies=[chat_body_of(item["params"]) for item in requests],
            params=[item["params"] for item in requests],
            started=owner.batch_clock(),
            created_at=created,
            delay=owner.batch_delay,
            expire_after=owner.batch_expire_after,
            headers=dict(request.headers),
            times={"in_progress": created},
        )
        self._new_batch(record)
        return _json_answer(self._anthropic_json(record))

    def _anthropic_batch(self, batch_id: str) -> BatchRecord | None:
        batch = self.owner.batches.get(batch_id)
        return batch if batch is not None and batch.provider == "anthropic" else None

    def _no_message_batch(self, batch_id: str) -> _Answer:
        return _anthropic_error(404, f"No Message Batch found with id '{batch_id}'.")

    def _anthropic_retrieve(self, request: RecordedRequest, raw: bytes, batch_id: str) -> _Answer:
        batch = self._anthropic_batch(batch_id)
        if batch is None:
            return self._no_message_batch(batch_id)
        batch.polls += 1
        self._advance(batch)
        return _json_answer(self._anthropic_json(batch))

    def _anthropic_list(self, request: RecordedRequest, raw: bytes) -> _Answer:
        # Most recent first, as Anthropic lists them; one page holds them all.
        batches = [b for b in reversed(self.owner.batches.values()) if b.provider == "anthropic"]
        for batch in batches:
            self._advance(batch)
        data = [self._anthropic_json(b) for b in batches]
        return _json_answer(
            {
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )

    def _anthropic_results(self, request: RecordedRequest, raw: bytes, batch_id: str) -> _Answer:
        batch = self._anthropic_batch(batch_id)
        if batch is None:
            return self._no_message_batch(batch_id)
        self._advance(batch)
        if batch.state != "ended":
            message = f"Message Batch {batch_id} has not ended yet: its results are not ready."
            return _anthropic_error(400, message)
        batch.downloads += 1
        lines = [
            json.dumps({"custom_id": custom_id, "result": self._anthropic_result(batch, i)})
            for i, custom_id in enumerate(batch.custom_ids)
        ]
        if self.owner.batch_out_of_order:
            lines.reverse()
        return 200, ("\n".join(lines) + "\n").encode(), {"Content-Type": "application/binary"}

    def _anthropic_cancel(self, request: RecordedRequest, raw: bytes, batch_id: str) -> _Answer:
        batch = self._anthropic_batch(batch_id)
        if batch is None:
            return self._no_message_batch(batch_id)
        self._advance(batch)
        if batch.state == "ended":
            message = f"Message Batch {batch_id} has already ended and cannot be canceled."
            return _anthropic_error(400, message)
        if batch.state != "cancelling":
            batch.state = "cancelling"
            batch.times["cancelling"] = time.time()
        return _json_answer(self._anthropic_json(batch))

    def _anthropic_delete(self, request: RecordedRequest, raw: bytes, batch_id: str) -> _Answer:
        batch = self._anthropic_batch(batch_id)
        if batch is None:
            return self._no_message_batch(batch_id)
        self._advance(batch)
        if batch.state != "ended":
            message = f"Message Batch {batch_id} is still processing: cancel it before deleting."
            return _anthropic_error(400, message)
        with self.owner._lock:
            del self.owner.batches[batch_id]
        return _json_answer({"id": batch_id, "type": "message_batch_deleted"})

    def _anthropic_json(self, batch: BatchRecord) -> dict[str, Any]:
        """The ``MessageBatch`` object Anthropic answers."""
        ended = batch.state == "ended"
        # Items count as processing until the whole batch ends (Anthropic's reference).
        counts = {
            "processing": 0 if ended else len(batch.custom_ids),
            "succeeded": batch.count("succeeded") if ended else 0,
            "errored": batch.count("errored") if ended else 0,
            "canceled": batch.count("canceled") if ended else 0,
            "expired": batch.count("expired") if ended else 0,
        }
        results_url = None
        if ended:
            owner = self.owner
            results_url = f"http://{owner.host}:{owner.port}/v1/messages/batches/{batch.id}/results"
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": batch.status,
            "request_counts": counts,
            "ended_at": _iso(batch.times.get("ended")),
            "created_at": _iso(batch.created_at),
            "expires_at": _iso(batch.created_at + _DAY),
            "archived_at": None,
            "cancel_initiated_at": _iso(batch.times.get("cancelling")),
            "results_url": results_url,
        }

    def _anthropic_result(self, batch: BatchRecord, index: int) -> dict[str, Any]:
        """The ``result`` of one line of a Message Batch's results."""
        outcome = batch.outcomes[index]
        assert outcome is not None
        if outcome.kind in ("expired", "canceled"):
            return {"type": outcome.kind}
        if outcome.kind == "errored":
            error = outcome.raw
            if error is None:
                detail = {"type": _anthropic_error_type(outcome.status), "message": outcome.message}
                error = {"type": "error", "error": detail}
            return {"type": "errored", "error": error}
        if outcome.raw is not None:
            return {"type": "succeeded", "message": outcome.raw}
        completion = outcome.completion or {}
        choice = completion["choices"][0]
        text = choice["message"]["content"]
        usage = completion["usage"]
        message = {
            "id": outcome.id,
            "type": "message",
            "role": "assistant",
            "model": batch.params[index].get("model"),
            "content": [] if text is None else [{"type": "text", "text": text}],
            "stop_reason": _STOP_REASONS.get(choice["finish_reason"], "end_turn"),
            "stop_sequence": None,
            "usage": {
                "input_tokens": usage["prompt_tokens"],
                "output_tokens": usage["completion_tokens"],
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "service_tier": "batch",
            },
        }
        return {"type": "succeeded", "message": message}
