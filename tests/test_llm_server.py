"""Tests of the scriptable OpenAI-compatible test server, driven by the real ``openai`` client."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import openai
import pytest
from llm_server import (
    LLMServer,
    RecordedRequest,
    Reply,
    last_user_message,
    reply_always,
    reply_sequence,
    text_of,
)
from openai import OpenAI

MESSAGES = [
    {"role": "system", "content": "You are a cell-type annotator."},
    {"role": "user", "content": "Cluster 7 markers: CD3E, CD3D, CD2. Which cell type?"},
]


def make_client(server: LLMServer, **kwargs: object) -> OpenAI:
    options: dict[str, object] = {"max_retries": 0, "timeout": 5.0}
    options.update(kwargs)
    return OpenAI(base_url=server.base_url, api_key="test-key", **options)  # type: ignore[arg-type]


def ask(client: OpenAI, model: str = "test-model") -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model=model, messages=MESSAGES)  # type: ignore[arg-type]


@pytest.fixture
def server() -> Iterator[LLMServer]:
    with LLMServer(reply_always("T cell")) as srv:
        yield srv


def test_round_trip_content_usage_and_model_echo(server: LLMServer) -> None:
    with make_client(server) as client:
        completion = ask(client, model="gpt-test-mini")
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-test-mini"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "T cell"
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert usage.completion_tokens == 1  # len("T cell") // 4 == 1
    assert usage.prompt_tokens >= 1
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_explicit_token_counts() -> None:
    reply = Reply(content="B cell", prompt_tokens=120, completion_tokens=7)
    with LLMServer(lambda r, i: reply) as srv, make_client(srv) as client:
        usage = ask(client).usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (120, 7, 127)


def test_request_is_recorded(server: LLMServer) -> None:
    with make_client(server) as client:
        ask(client, model="my-model")
    assert server.request_count == 1
    request = server.requests[0]
    assert isinstance(request, RecordedRequest)
    assert request.path == "/v1/chat/completions"
    assert request.body["model"] == "my-model"
    assert request.body["messages"] == MESSAGES
    assert request.headers["authorization"] == "Bearer test-key"
    assert request.headers["content-type"].startswith("application/json")
    assert request.time <= time.monotonic()
    assert "Cluster 7" in text_of(request)
    assert "annotator" in text_of(request)
    assert last_user_message(request) == MESSAGES[1]["content"]


def test_path_without_v1_prefix_is_accepted(server: LLMServer) -> None:
    base = server.base_url.removesuffix("/v1")
    with OpenAI(base_url=base, api_key="test-key", max_retries=0, timeout=5.0) as client:
        completion = ask(client)
    assert completion.choices[0].message.content == "T cell"
    assert server.requests[0].path == "/chat/completions"


def test_models_list() -> None:
    with LLMServer(reply_always("x"), models=["model-a", "model-b"]) as srv:
        with make_client(srv) as client:
            ids = [m.id for m in client.models.list()]
        assert ids == ["model-a", "model-b"]
        assert srv.request_count == 0  # only chat completions are recorded
    with LLMServer() as srv, make_client(srv) as client:
        assert [m.id for m in client.models.list()] == ["test-model"]


def test_unknown_route_is_openai_shaped_404(server: LLMServer) -> None:
    with make_client(server) as client, pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model="test-model", input="hello")
    error = info.value.response.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    assert "/v1/embeddings" in error["message"]


def test_rate_limit_with_retry_after() -> None:
    reply = Reply(status=429, headers={"Retry-After": "1"}, error_message="Slow down")
    with LLMServer(lambda r, i: reply) as srv, make_client(srv) as client:
        with pytest.raises(openai.RateLimitError) as info:
            ask(client)
        assert srv.request_count == 1  # max_retries=0: no retry
    error = info.value
    assert error.status_code == 429
    assert error.response.headers["retry-after"] == "1"
    # The parsed error JSON is exposed as .body (the inner "error" object), .code and .type.
    assert isinstance(error.body, dict)
    assert error.body["message"] == "Slow down"
    assert error.code == "rate_limit_exceeded"
    assert "Slow down" in str(error)


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
        (401, openai.AuthenticationError),
        (404, openai.NotFoundError),
        (400, openai.BadRequestError),
    ],
)
def test_error_statuses_map_to_openai_exceptions(
    status: int, exception: type[openai.APIStatusError]
) -> None:
    with (
        LLMServer(lambda r, i: Reply(status=status)) as srv,
        make_client(srv) as client,
        pytest.raises(exception) as info,
    ):
        ask(client)
    assert info.value.status_code == status
    assert isinstance(info.value.body, dict)
    assert info.value.body["message"]


def test_client_retries_by_itself_when_allowed() -> None:
    # openai retries 429/5xx itself when max_retries > 0, honouring Retry-After (here 50 ms).
    replies = [
        Reply(status=429, headers={"Retry-After": "0.05"}),
        Reply(status=503, headers={"Retry-After-Ms": "20"}),
        "NK cell",
    ]
    with LLMServer(reply_sequence(replies)) as srv:
        with make_client(srv, max_retries=2) as client:
            # Retry-After-Ms takes precedence over Retry-After; without either header the
            # client would back off 0.5 s * 2**n (minus up to 25 % jitter).
            completion = ask(client)
        assert completion.choices[0].message.content == "NK cell"
        assert srv.request_count == 3
        assert srv.requests[1].time - srv.requests[0].time >= 0.05
        assert srv.requests[2].time - srv.requests[1].time >= 0.02


def test_malformed_body_with_status_200() -> None:
    # openai 3.52 does NOT wrap an unparseable JSON body in an openai exception: with
    # Content-Type application/json the raw json.JSONDecodeError escapes from create().
    with LLMServer(lambda r, i: Reply(raw_body=b"not json")) as srv, make_client(srv) as client:
        with pytest.raises(json.JSONDecodeError):
            ask(client)
        # An empty body fails the same way.
        srv.handler = lambda r, i: Reply(raw_body=b"")
        with pytest.raises(json.JSONDecodeError):
            ask(client)
        # With a non-JSON Content-Type, create() silently returns the body as a str.
        srv.handler = lambda r, i: Reply(
            raw_body=b"not json", headers={"Content-Type": "text/plain"}
        )
        assert ask(client) == "not json"  # type: ignore[comparison-overlap]
        # Valid JSON of the wrong shape is not validated: a ChatCompletion with choices=None.
        srv.handler = lambda r, i: Reply(raw_body=b'{"foo": 1}')
        completion = ask(client)
        assert completion.choices is None


def test_timeout_then_server_keeps_working(capfd: pytest.CaptureFixture[str]) -> None:
    release = threading.Event()
    held: list[threading.Thread] = []

    def handler(request: RecordedRequest, index: int) -> Reply:
        if index == 0:
            held.append(threading.current_thread())
            release.wait(60)  # held past the client's timeout; 60 s only guards a hang
            return Reply(content="slow")
        return Reply(content="fast")

    with LLMServer(handler) as srv:
        with make_client(srv, timeout=0.3) as client:
            with pytest.raises(openai.APITimeoutError):
                ask(client)
            # gave up at the timeout, the reply still pending, and did not retry
            assert srv.request_count == 1 and srv.requests[0].answered_at is None
            assert ask(client).choices[0].message.content == "fast"
        assert srv.request_count == 2
    # The dropped connection must not produce tracebacks on the server side.
    release.set()  # the held handler writes to the dropped connection
    held[0].join(timeout=60)  # and its connection thread ends, reporting any error
    assert not held[0].is_alive()
    assert "Traceback" not in capfd.readouterr().err


def test_handler_exception_becomes_500() -> None:
    def handler(request: RecordedRequest, index: int) -> Reply:
        raise KeyError("no script for this prompt")

    with (
        LLMServer(handler) as srv,
        make_client(srv) as client,
        pytest.raises(openai.InternalServerError) as info,
    ):
        ask(client)
    assert "KeyError" in str(info.value)
    assert "no script for this prompt" in str(info.value)


def test_max_concurrency_parallel_requests() -> None:
    all_in = threading.Barrier(4, timeout=60)  # no reply before all four requests are in

    def handler(request: RecordedRequest, index: int) -> Reply:
        all_in.wait()
        return Reply(content="ok")

    with LLMServer(handler) as srv:
        with make_client(srv, timeout=60) as client:  # 60 s: only a hang waits this long
            errors: list[BaseException] = []

            def worker() -> None:
                try:
                    ask(client)
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=worker) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert errors == []
        assert srv.request_count == 4
        assert srv.max_concurrency == 4


def test_max_concurrency_sequential_requests(server: LLMServer) -> None:
    with make_client(server) as client:
        for _ in range(3):
            ask(client)
    assert server.request_count == 3
    assert server.max_concurrency == 1


def test_reply_sequence_order_and_repeat_last() -> None:
    handler = reply_sequence(["first", Reply(content="second"), "third"])
    with LLMServer(handler) as srv, make_client(srv) as client:
        answers = [ask(client).choices[0].message.content for _ in range(5)]
    assert answers == ["first", "second", "third", "third", "third"]


def test_reply_sequence_rejects_empty() -> None:
    with pytest.raises(ValueError):
        reply_sequence([])


def test_close_with_live_keep_alive_client_does_not_hang() -> None:
    srv = LLMServer(reply_always("ok"))
    client = make_client(srv)
    ask(client)  # leaves a pooled keep-alive connection open
    closing = threading.Thread(target=srv.close)
    closing.start()
    closing.join(timeout=60)  # only a hang waits this long
    assert not closing.is_alive(), "close() waits for the client's keep-alive connection"
    srv.close()  # idempotent
    with pytest.raises(openai.APIConnectionError):
        ask(client)
    client.close()
