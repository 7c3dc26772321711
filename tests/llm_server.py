"""A scriptable OpenAI-compatible HTTP server for tests, built on the standard library only.

Tests start it on 127.0.0.1 (random free port), point the real ``openai`` client at
``server.base_url`` and decide per request what to answer through a handler::

    def handler(request: RecordedRequest, index: int) -> Reply:
        if "cluster 3" in text_of(request):
            return Reply(status=429, headers={"Retry-After": "1"})
        return Reply(content="T cell")

    with LLMServer(handler) as server:
        client = OpenAI(base_url=server.base_url, api_key="test-key", max_retries=0)
        ...
        assert server.request_count == 1

Routes: ``POST /v1/chat/completions`` (or ``/chat/completions``) and ``GET /v1/models``
(or ``/models``); everything else is a 404 in OpenAI's error shape. GET requests are
recorded apart, in ``server.get_requests`` (``request_count`` counts chat completions
only), and a ``get_handler`` may answer them instead (an error status, another body, a
route of its own such as OpenRouter's ``/key``)::

    def refuse(request: RecordedRequest, index: int) -> Reply | None:
        return Reply(status=401)  # None: the default answer (the model list, or 404)

    with LLMServer(get_handler=refuse) as server:
        ...
        assert [r.path for r in server.get_requests] == ["/v1/models"]

Batch routes (tests/batch_endpoints.py), each also without ``/v1`` like the chat route:

* OpenAI's Batch API: ``POST /v1/files`` (multipart: ``purpose=batch``, ``file`` = JSONL
  lines ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}``; a line
  that is not a JSON object, or another purpose, is a 400), ``GET /v1/files/{id}``,
  ``GET /v1/files/{id}/content``, ``DELETE /v1/files/{id}``; ``POST /v1/batches``
  (``input_file_id``, ``endpoint`` = ``/v1/chat/completions``, ``completion_window`` =
  ``24h``, ``metadata``; an unknown file is a 404), ``GET /v1/batches`` (newest first),
  ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel`` (409 once ended).
* Anthropic's Message Batches: ``POST /v1/messages/batches`` (``{"requests": [{"custom_id",
  "params"}]}``; 400 for a custom_id off ``^[a-zA-Z0-9_-]{1,64}$``, a repeated one, no
  requests), ``GET /v1/messages/batches`` (newest first), ``GET .../{id}``,
  ``GET .../{id}/results`` (the ``results_url``, an absolute URL on this server),
  ``POST .../{id}/cancel``, ``DELETE .../{id}``. They want an ``anthropic-version`` header
  and a key (``x-api-key``, or the bearer token Anthropic's SDK 2.x sends) and answer
  errors in Anthropic's shape ``{"type": "error", "error": {"type", "message"}}``.

Each item is answered by ``handler``, like a live request: its RecordedRequest carries the
item's chat request (Anthropic's ``params`` as OpenAI-style messages, ``system`` first),
``custom_id`` and ``batch_id``, and is recorded apart in ``server.batch_items`` (the
handler's index numbers those), so ``request_count`` still counts live requests only. A
Reply with another status than 200 makes the item fail with it (OpenAI: a line of the
error file whose ``response`` holds that status and an OpenAI error body; Anthropic:
``errored`` with the error type of that status); ``finish_reason="length"`` is Anthropic's
``stop_reason`` ``max_tokens``; ``raw_body`` replaces the item's body (JSON if it parses);
``delay`` is not slept. Anthropic's item ``params`` are checked as Anthropic checks them,
while the batch runs: no ``max_tokens``, a ``system`` role among the messages... end the
item ``errored`` (``invalid_request_error``) without asking the handler.

Time: a batch ends ``batch_delay`` seconds after it was made, its items run in order, item
i of n once ``batch_delay * (i + 1) / n`` has passed, each when a request about the batch
comes (a poll, a download, a cancel). OpenAI answers a new batch ``validating``, then
``in_progress`` with ``request_counts`` growing, then ``completed`` with
``output_file_id`` (the 200s) and ``error_file_id`` (the rest; null when empty); Anthropic
keeps every item ``processing`` until the batch is ``ended``. ``server.batch_clock``
(default ``time.monotonic``) may be replaced by a clock of the test's own, to move a batch
on without waiting. A cancel makes it ``cancelling``; the next request finds it
``cancelled`` (Anthropic: ``canceling`` then ``ended``) with the items not yet run
``batch_cancelled`` (``canceled``). Results come in reverse input order
(``batch_out_of_order``), as the providers warn they may not match the input's.

Scripting knobs, constructor arguments and attributes (read when a batch is made or an
item runs): ``batch_delay`` (0); ``batch_item_fault(custom_id, index)`` returning None (the
handler answers), ``"error"`` (a 500 the handler never sees), an int status, or
``"expire"`` (not run: the batch ends ``expired``, the item in the error file with
``{"code": "batch_expired"}`` / Anthropic's ``{"type": "expired"}``);
``batch_expire_after=k`` (each batch expires with only its first k items run);
``batch_fail="token_limit_exceeded"`` (each new OpenAI batch ends ``failed`` with that
code in ``errors``; lines that cannot run, such as a repeated custom_id or another url,
fail it too); ``batch_handler(request, index)``, a get_handler for every batch route
(an error status, a delay; None: the default answer). Records: ``batch_requests`` (every
request to a batch route), ``batch_items``, ``uploads``, ``files``, ``batches`` (id ->
``BatchRecord`` with ``custom_ids``, ``status``, ``polls``, ``downloads``, ``kinds``),
``poll_count``, ``download_count``::

    with LLMServer(ScriptedModel(cell_types), batch_delay=0.05) as server:
        ...  # the client uploads, creates, polls and downloads
        assert server.request_count == 0 and len(server.batch_items) == 12
        assert next(iter(server.batches.values())).downloads == 1
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batch_endpoints import (
        BatchEndpoints,
        BatchHandler,
        BatchRecord,
        ItemFault,
        StoredFile,
        _Route,
    )

__all__ = [
    "DEFAULT_MODEL",
    "GetHandler",
    "Handler",
    "LLMServer",
    "RecordedRequest",
    "Reply",
    "last_user_message",
    "reply_always",
    "reply_sequence",
    "text_of",
]

DEFAULT_MODEL = "test-model"

# Errors raised when the client went away before (or while) we answer.
_DISCONNECT_ERRORS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)

# OpenAI's ``error.type`` for the statuses tests commonly script.
_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    408: "timeout",
    409: "conflict",
    422: "invalid_request_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    502: "server_error",
    503: "server_error",
    504: "server_error",
}


@dataclass
class RecordedRequest:
    """One request as the server received it."""

    path: str
    headers: dict[str, str]  # keys lower-cased
    body: dict[str, Any]  # parsed JSON ({} for an empty or non-JSON body)
    time: float  # time.monotonic() at arrival
    method: str = "POST"
    status: int | None = None  # the status answered, once the reply is written
    answered_at: float | None = None  # time.monotonic() once the reply is written
    # time.monotonic() just before the reply is written: the client cannot have it sooner,
    # so a request that arrives later was sent after the client could have read it.
    replying_at: float | None = None
    query: str = ""  # what followed "?" in the URL (GET requests)
    # The usage the reply reported (a 200 built from a Reply; None otherwise).
    usage: dict[str, int] | None = None
    custom_id: str | None = None  # a batch item's custom_id (None: a request on the wire)
    batch_id: str | None = None  # the batch of a batch item

    @property
    def model(self) -> str | None:
        """The ``model`` field of the request body, if any."""
        model = self.body.get("model")
        return model if isinstance(model, str) else None

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The ``messages`` list of the request body (empty if missing)."""
        messages = self.body.get("messages")
        return messages if isinstance(messages, list) else []


@dataclass
class Reply:
    """What the server answers to one chat-completion request.

    A 200 with ``raw_body=None`` is a well-formed ``chat.completion``; any other status is
    an OpenAI-shaped error with ``error_message``; ``raw_body`` overrides the body entirely.
    ``finish_reason`` is the choice's (``"length"`` says the reply was cut off by
    ``max_tokens``); ``prompt_tokens`` and ``completion_tokens`` go into ``usage`` as given,
    any JSON number included (``float("inf")`` is written as ``Infinity``).
    """

    content: str | None = ""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    raw_body: bytes | None = None
    error_message: str | None = None
    prompt_tokens: float | None = None
    completion_tokens: float | None = None
    finish_reason: str = "stop"


Handler = Callable[[RecordedRequest, int], Reply]
#: Answers a GET request, or returns None for the default answer (the model list, or 404).
GetHandler = Callable[[RecordedRequest, int], "Reply | None"]


def _message_text(content: Any) -> str:
    """Flatten a message ``content`` (string or list of content parts) to text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return str(content)


def text_of(request: RecordedRequest) -> str:
    """Join the contents of all messages of a recorded request, one per line."""
    return "\n".join(
        _message_text(m.get("content")) for m in request.messages if isinstance(m, dict)
    )


def last_user_message(request: RecordedRequest) -> str:
    """Return the content of the last ``user`` message of a request ("" if there is none)."""
    for message in reversed(request.messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _message_text(message.get("content"))
    return ""


def reply_always(content: str) -> Handler:
    """Return a handler answering every request with ``content``."""

    def handler(request: RecordedRequest, index: int) -> Reply:
        return Reply(content=content)

    return handler


def reply_sequence(replies: Sequence[Reply | str]) -> Handler:
    """Return a handler serving ``replies`` by arrival index, repeating the last one afterwards.

    ``str`` items are shorthand for ``Reply(content=item)``.
    """
    if not replies:
        raise ValueError("reply_sequence needs at least one reply")
    items = [Reply(content=r) if isinstance(r, str) else r for r in replies]

    def handler(request: RecordedRequest, index: int) -> Reply:
        return items[min(index, len(items) - 1)]

    return handler


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def _error_body(message: str, status: int, code: str | None = None) -> bytes:
    payload = {
        "error": {
            "message": message,
            "type": _ERROR_TYPES.get(status, "server_error" if status >= 500 else "api_error"),
            "param": None,
            "code": code if code is not None else _ERROR_TYPES.get(status, str(status)),
        }
    }
    return json.dumps(payload).encode()


class _RequestHandler(BaseHTTPRequestHandler):
    """Per-connection HTTP handler; all state lives on the owning :class:`LLMServer`."""

    protocol_version = "HTTP/1.1"  # keep-alive; every reply carries Content-Length
    # Headers and body go out in two writes; without TCP_NODELAY, Nagle + delayed ACK
    # add ~40 ms to every request on a keep-alive connection.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- routing ---------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        owner = self.server.owner
        owner._enter()
        try:
            raw = self._read_body()
            path, _, query = self.path.partition("?")
            path = path.rstrip("/")
            if method == "POST" and path in ("/v1/chat/completions", "/chat/completions"):
                self._chat_completion(owner, path, raw)
            elif (route := owner._batch_api.route(method, path)) is not None:
                self._batch_route(owner, route, method, path, query, raw)
            elif method == "GET":
                self._get(owner, path, query)
            else:
                message = f"Unknown request URL: {method} {self.path}"
                self._send(404, _error_body(message, 404, "unknown_url"))
        except _DISCONNECT_ERRORS:
            self.close_connection = True
        finally:
            owner._leave()

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()  # a streamed upload (a file object of unknown size)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()  # the CRLF closing the chunk

    # -- chat completions ------------------------------------------------------------
    def _chat_completion(self, owner: LLMServer, path: str, raw: bytes) -> None:
        try:
            body = json.loads(raw) if raw else {}
        except (ValueError, UnicodeDecodeError):
            body = {}
        if not isinstance(body, dict):
            body = {}
        request = RecordedRequest(
            path=path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            time=time.monotonic(),
            method="POST",
        )
        index = owner._record(request)
        try:
            reply = owner.handler(request, index)
            if not isinstance(reply, Reply):
                raise TypeError(f"handler returned {type(reply).__name__}, expected Reply")
        except Exception as exc:
            message = f"test handler raised {type(exc).__name__}: {exc}"
            self._send(500, _error_body(message, 500, "handler_error"))
            return

        if reply.delay > 0:
            time.sleep(reply.delay)

        if reply.raw_body is not None:
            payload = reply.raw_body
        elif reply.status == 200:
            completion = _completion(request, reply)
            request.usage = completion["usage"]
            payload = json.dumps(completion).encode()
        else:
            message = reply.error_message or _phrase(reply.status)
            payload = _error_body(message, reply.status)
        request.replying_at = time.monotonic()
        self._send(reply.status, payload, reply.headers)
        request.status, request.answered_at = reply.status, time.monotonic()

    # -- batch routes (batch_endpoints.py) -------------------------------------------
    def _batch_route(
        self, owner: LLMServer, route: _Route, method: str, path: str, query: str, raw: bytes
    ) -> None:
        try:
            body = json.loads(raw) if raw else {}
        except (ValueError, UnicodeDecodeError):
            body = {}  # a multipart upload: its route records its form fields
        request = RecordedRequest(
            path=path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body if isinstance(body, dict) else {},
            time=time.monotonic(),
            method=method,
            query=query,
        )
        status, payload, headers = owner._batch_api.serve(route, request, raw)
        request.replying_at = time.monotonic()
        self._send(status, payload, headers)
        request.status, request.answered_at = status, time.monotonic()

    # -- GET routes: the model list, and whatever a get_handler answers --------------
    def _get(self, owner: LLMServer, path: str, query: str) -> None:
        request = RecordedRequest(
            path=path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body={},
            time=time.monotonic(),
            method="GET",
            query=query,
        )
        index = owner._record_get(request)
        models_route = path in ("/v1/models", "/models")
        try:
            reply = owner.get_handler(request, index) if owner.get_handler else None
            if reply is not None and not isinstance(reply, Reply):
                raise TypeError(f"get_handler returned {type(reply).__name__}, expected Reply")
        except Exception as exc:
            message = f"test get_handler raised {type(exc).__name__}: {exc}"
            self._send(500, _error_body(message, 500, "handler_error"))
            return
        if reply is None:
            reply = Reply() if models_route else Reply(status=404)
        if reply.delay > 0:
            time.sleep(reply.delay)
        if reply.raw_body is not None:
            payload = reply.raw_body
        elif reply.status == 200:
            payload = json.dumps(owner._models_payload() if models_route else {}).encode()
        elif reply.status == 404 and reply.error_message is None and not models_route:
            payload = _error_body(f"Unknown request URL: GET {self.path}", 404, "unknown_url")
        else:
            payload = _error_body(reply.error_message or _phrase(reply.status), reply.status)
        self._send(reply.status, payload, reply.headers)
        request.status, request.answered_at = reply.status, time.monotonic()

    # -- output ----------------------------------------------------------------------
    def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        extra = dict(headers or {})
        lowered = {k.lower() for k in extra}
        if "content-type" not in lowered:
            self.send_header("Content-Type", "application/json")
        for name, value in extra.items():
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()


def _completion(request: RecordedRequest, reply: Reply) -> dict[str, Any]:
    text = reply.content or ""
    prompt_tokens = (
        reply.prompt_tokens
        if reply.prompt_tokens is not None
        else _estimate_tokens(text_of(request))
    )
    completion_tokens = (
        reply.completion_tokens if reply.completion_tokens is not None else _estimate_tokens(text)
    )
    return {
        "id": f"chatcmpl-test-{next(_ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model or DEFAULT_MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.content, "refusal": None},
                "logprobs": None,
                "finish_reason": reply.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


_ids = itertools.count(1)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Don't join connection threads on close: a keep-alive connection held open by a
    # still-alive client would block forever. close() hangs those connections up instead.
    block_on_close = False
    allow_reuse_address = True
    # The default backlog of 5 drops the SYNs of a burst of new connections (64 workers
    # connecting at once), and each dropped one costs the client a 1 s retransmit.
    request_queue_size = 256

    def __init__(self, owner: LLMServer) -> None:
        self.owner = owner
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _RequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def hang_up_all(self) -> None:
        """Shut down every open client connection (idle keep-alive ones included)."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-request is normal in timeout tests: stay quiet.
        # Anything else is a bug in this module and should be visible.
        exc = sys.exc_info()[1]
        if isinstance(exc, _DISCONNECT_ERRORS):
            return
        super().handle_error(request, client_address)


class LLMServer:
    """A live OpenAI-compatible server on 127.0.0.1 answering with ``handler``.

    Starts on construction in a daemon thread; use as a context manager or call
    :meth:`close`. ``handler(request, index)`` receives the recorded request and its
    0-based arrival number and returns a :class:`Reply`. It may be called concurrently.
    ``get_handler(request, index)`` does the same for GET requests (numbered apart), or
    returns None for the default answer; a 200 without ``raw_body`` is the model list on
    ``/models`` (with OpenRouter's ``pricing`` for the models in ``prices``) and ``{}``
    elsewhere. The ``batch_*`` arguments script the batch routes (see the module's
    docstring); each is also an attribute a test may set while the server runs.
    """

    def __init__(
        self,
        handler: Handler | None = None,
        *,
        models: Iterable[str] = (DEFAULT_MODEL,),
        get_handler: GetHandler | None = None,
        prices: Mapping[str, tuple[float, float]] | None = None,
        batch_delay: float = 0.0,
        batch_item_fault: ItemFault | None = None,
        batch_expire_after: int | None = None,
        batch_fail: str | None = None,
        batch_handler: BatchHandler | None = None,
    ) -> None:
        # Imported here: batch_endpoints builds on this module's RecordedRequest and Reply.
        from batch_endpoints import BatchEndpoints

        self.handler: Handler = handler if handler is not None else reply_always("")
        self.get_handler: GetHandler | None = get_handler
        self.models: list[str] = list(models)
        # model -> (prompt, completion) dollars per token, listed as OpenRouter lists them
        self.prices: dict[str, tuple[float, float]] = dict(prices or {})
        self.requests: list[RecordedRequest] = []
        self.get_requests: list[RecordedRequest] = []
        # The batch routes' scripting knobs (read when a batch is made, or an item run) ...
        self.batch_delay = batch_delay
        self.batch_item_fault: ItemFault | None = batch_item_fault
        self.batch_expire_after = batch_expire_after
        self.batch_fail = batch_fail
        self.batch_handler: BatchHandler | None = batch_handler
        self.batch_clock: Callable[[], float] = time.monotonic
        self.batch_out_of_order = True
        # ... and their records.
        self.batch_requests: list[RecordedRequest] = []
        self.batch_items: list[RecordedRequest] = []
        self.batches: dict[str, BatchRecord] = {}
        self.files: dict[str, StoredFile] = {}
        self.uploads: list[StoredFile] = []
        self._batch_api: BatchEndpoints = BatchEndpoints(self)
        self.max_concurrency = 0
        self._active = 0
        self._lock = threading.Lock()
        self._httpd = _HTTPServer(self)
        host, port = self._httpd.server_address[:2]
        self.host: str = str(host)
        self.port: int = int(port)
        self.base_url = f"http://{self.host}:{self.port}/v1"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.01},
            name=f"LLMServer:{self.port}",
            daemon=True,
        )
        self._thread.start()
        self._closed = False

    # -- bookkeeping (called from request threads) ----------------------------------
    def _enter(self) -> None:
        with self._lock:
            self._active += 1
            self.max_concurrency = max(self.max_concurrency, self._active)

    def _leave(self) -> None:
        with self._lock:
            self._active -= 1

    def _record(self, request: RecordedRequest) -> int:
        with self._lock:
            self.requests.append(request)
            return len(self.requests) - 1

    def _record_get(self, request: RecordedRequest) -> int:
        with self._lock:
            self.get_requests.append(request)
            return len(self.get_requests) - 1

    def _models_payload(self) -> dict[str, Any]:
        listed = []
        for name in self.models:
            model = {"id": name, "object": "model", "created": 0, "owned_by": "cassia-tests"}
            if name in self.prices:
                prompt, completion = self.prices[name]
                model["pricing"] = {"prompt": str(prompt), "completion": str(completion)}
            listed.append(model)
        return {"object": "list", "data": listed}

    # -- public API ------------------------------------------------------------------
    @property
    def request_count(self) -> int:
        """Number of chat-completion requests received so far."""
        with self._lock:
            return len(self.requests)

    @property
    def poll_count(self) -> int:
        """Retrievals of all batches so far (GET of a batch, either provider)."""
        with self._lock:
            return sum(batch.polls for batch in self.batches.values())

    @property
    def download_count(self) -> int:
        """Reads of all batches' results so far (output and error files, Anthropic results)."""
        with self._lock:
            return sum(batch.downloads for batch in self.batches.values())

    @property
    def active(self) -> int:
        """Number of requests being handled right now."""
        with self._lock:
            return self._active

    def reset(self) -> None:
        """Forget recorded requests and the concurrency high-water mark.

        The batch routes' requests and items go too; the batches and files stay.
        """
        with self._lock:
            self.requests.clear()
            self.get_requests.clear()
            self.batch_requests.clear()
            self.batch_items.clear()
            self.max_concurrency = self._active

    def close(self) -> None:
        """Stop serving and release the port (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()  # stops accepting; returns once serve_forever has exited
        self._httpd.server_close()
        self._httpd.hang_up_all()
        self._thread.join(timeout=5)

    def __enter__(self) -> LLMServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LLMServer(base_url={self.base_url!r}, requests={self.request_count})"
