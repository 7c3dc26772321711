"""The scripted server's batch routes, driven by the real clients.

OpenAI's Batch API through the ``openai`` SDK (upload, create, retrieve, download, cancel);
Anthropic's Message Batches through plain HTTP (``httpx2``, the client ``openai`` is built
on). Time is scripted: most tests give the server a clock of their own, so a batch's
progress is set, not waited for.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
from batch_endpoints import BatchRecord, chat_body_of
from llm_server import LLMServer, RecordedRequest, Reply, last_user_message, reply_always
from openai import OpenAI
from openai.types.chat import ChatCompletion
from scripted_model import ScriptedModel

CHAT = "/v1/chat/completions"
ENDED = ("completed", "expired", "cancelled", "failed")
CELL_TYPES = {"CD3E, CD3D, CD2": "T cell", "MS4A1, CD79A, CD19": "B cell"}
CLUSTERS = {"c0": ["CD3E", "CD3D", "CD2", "IL7R"], "c1": ["MS4A1", "CD79A", "CD19"]}
SYSTEM = "You name the cell type of one single-cell cluster from its markers."
ANTHROPIC_HEADERS = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}


class Clock:
    """A batch clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def annotation_messages(markers: list[str]) -> list[dict[str, str]]:
    task = (
        "Tissue: blood. Species: human.\n"
        f"Ranked marker genes of the cluster ({len(markers)}):\n{', '.join(markers)}"
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": task}]


def chat_line(custom_id: str, content: str, model: str = "gpt-test") -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def make_client(server: LLMServer, **kwargs: Any) -> OpenAI:
    options: dict[str, Any] = {"max_retries": 0, "timeout": 5.0} | kwargs
    return OpenAI(base_url=server.base_url, api_key="test-key", **options)


def submit(client: OpenAI, lines: list[dict[str, Any]]) -> openai.types.Batch:
    uploaded = client.files.create(file=("requests.jsonl", jsonl(lines)), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")


def wait(client: OpenAI, batch_id: str) -> openai.types.Batch:
    """Poll until the batch ends (the 30 s only guards a hang)."""
    give_up = time.monotonic() + 30
    while (batch := client.batches.retrieve(batch_id)).status not in ENDED:
        assert time.monotonic() < give_up, f"batch still {batch.status}"
        time.sleep(0.01)
    return batch


def lines_of(client: OpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    """custom_id -> line of a batch's output or error file."""
    assert file_id is not None
    text = client.files.content(file_id).text
    return {line["custom_id"]: line for line in map(json.loads, text.splitlines())}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def echo() -> Iterator[LLMServer]:
    """Answers "echo: <last user message>"; a message naming a status fails with it."""

    def handler(request: RecordedRequest, index: int) -> Reply:
        text = last_user_message(request)
        if text.startswith("status "):
            status = int(text.split()[1])
            return Reply(status=status, error_message=f"scripted {status}")
        return Reply(content=f"echo: {text}", finish_reason="length" if "long" in text else "stop")

    with LLMServer(handler) as server:
        yield server


# -- OpenAI -------------------------------------------------------------------------


def test_openai_batch_answers_as_the_live_route_does() -> None:
    with LLMServer(ScriptedModel(CELL_TYPES), batch_delay=0.05) as server:
        with make_client(server) as client:
            lines = [
                {
                    "custom_id": cid,
                    "method": "POST",
                    "url": CHAT,
                    "body": {"model": "gpt-test", "messages": annotation_messages(markers)},
                }
                for cid, markers in CLUSTERS.items()
            ]
            uploaded = client.files.create(file=("requests.jsonl", jsonl(lines)), purpose="batch")
            assert (uploaded.object, uploaded.purpose, uploaded.filename) == (
                "file",
                "batch",
                "requests.jsonl",
            )
            assert uploaded.bytes == len(jsonl(lines))
            made = client.batches.create(
                input_file_id=uploaded.id,
                endpoint=CHAT,
                completion_window="24h",
                metadata={"round": "1"},
            )
            assert made.status == "validating"  # as OpenAI answers a new batch
            assert made.id.startswith("batch_") and made.input_file_id == uploaded.id
            assert made.metadata == {"round": "1"}
            batch = wait(client, made.id)
            assert batch.status == "completed"
            assert batch.completed_at is not None and batch.error_file_id is None
            assert batch.request_counts is not None
            counts = batch.request_counts
            assert (counts.total, counts.completed, counts.failed) == (2, 2, 0)
            output = lines_of(client, batch.output_file_id)
            live = {
                cid: client.chat.completions.create(
                    model="gpt-test",
                    messages=annotation_messages(markers),  # type: ignore[arg-type]
                )
                for cid, markers in CLUSTERS.items()
            }
        assert set(output) == {"c0", "c1"}
        for cid, line in output.items():
            assert line["id"].startswith("batch_req_") and line["error"] is None
            assert line["response"]["status_code"] == 200
            assert line["response"]["request_id"]
            completion = ChatCompletion.model_validate(line["response"]["body"])
            assert completion.choices[0].message.content == live[cid].choices[0].message.content
            assert completion.usage == live[cid].usage
        assert (
            '"main_cell_type": "T cell"'
            in output["c0"]["response"]["body"]["choices"][0]["message"]["content"]
        )
        assert batch.usage is not None and batch.usage.input_tokens > 0

        # Batch items are recorded apart: request_count counts the two live calls only.
        assert server.request_count == 2
        assert [(r.custom_id, r.batch_id) for r in server.batch_items] == [
            ("c0", made.id),
            ("c1", made.id),
        ]
        assert server.batch_items[0].messages == annotation_messages(CLUSTERS["c0"])
        assert server.batch_items[0].path == CHAT
        assert len(server.uploads) == 1 and list(server.batches) == [made.id]
        record = server.batches[made.id]
        assert record.custom_ids == ["c0", "c1"] and record.status == "completed"
        assert record.polls >= 1 and record.downloads == 1
        assert server.poll_count == record.polls and server.download_count == 1
        assert server.get_requests == []


def test_openai_items_run_in_order_over_the_scripted_delay(echo: LLMServer, clock: Clock) -> None:
    echo.batch_clock = clock
    echo.batch_delay = 10.0  # four items: due at 2.5, 5, 7.5 and 10 s
    with make_client(echo) as client:
        batch = submit(client, [chat_line(f"r{i}", f"item {i}") for i in range(4)])
        seen = client.batches.retrieve(batch.id)
        assert seen.status == "in_progress" and seen.in_progress_at is not None
        assert seen.request_counts is not None
        assert (seen.request_counts.total, seen.request_counts.completed) == (4, 0)
        assert seen.output_file_id is None and seen.completed_at is None
        clock.now = 5.0
        seen = client.batches.retrieve(batch.id)
        assert seen.status == "in_progress"
        assert seen.request_counts is not None and seen.request_counts.completed == 2
        assert [r.custom_id for r in echo.batch_items] == ["r0", "r1"]
        clock.now = 10.0
        seen = client.batches.retrieve(batch.id)
        assert seen.status == "completed" and seen.finalizing_at is not None
        output = lines_of(client, seen.output_file_id)
    assert [r.custom_id for r in echo.batch_items] == ["r0", "r1", "r2", "r3"]
    assert {
        cid: line["response"]["body"]["choices"][0]["message"]["content"]
        for cid, line in output.items()
    } == {f"r{i}": f"echo: item {i}" for i in range(4)}
    assert echo.batches[batch.id].polls == 3


def test_openai_partial_failures_go_to_the_error_file(echo: LLMServer) -> None:
    # Items fail three ways: the handler answers an error status, or the fault hook says
    # "error" (a 500 the handler never sees) or names a status.
    faults: dict[str, str | int] = {"hook-error": "error", "hook-429": 429}
    echo.batch_item_fault = lambda custom_id, index: faults.get(custom_id)
    lines = [
        chat_line("ok", "fine"),
        chat_line("handler-400", "status 400"),
        chat_line("handler-503", "status 503"),
        chat_line("hook-error", "never asked"),
        chat_line("hook-429", "never asked either"),
        chat_line("cut", "a long answer"),
    ]
    with make_client(echo) as client:
        batch = wait(client, submit(client, lines).id)
        assert batch.status == "completed"
        assert batch.request_counts is not None
        counts = batch.request_counts
        assert (counts.total, counts.completed, counts.failed) == (6, 2, 4)
        output = lines_of(client, batch.output_file_id)
        errors = lines_of(client, batch.error_file_id)
    assert set(output) == {"ok", "cut"}
    assert output["cut"]["response"]["body"]["choices"][0]["finish_reason"] == "length"
    assert set(errors) == {"handler-400", "handler-503", "hook-error", "hook-429"}
    statuses = {cid: line["response"]["status_code"] for cid, line in errors.items()}
    assert statuses == {"handler-400": 400, "handler-503": 503, "hook-error": 500, "hook-429": 429}
    for line in errors.values():
        assert line["error"] is None  # an answered request: the error is in its response
        assert set(line["response"]["body"]["error"]) >= {"message", "type", "code"}
    assert errors["handler-400"]["response"]["body"]["error"]["message"] == "scripted 400"
    assert errors["handler-400"]["response"]["body"]["error"]["type"] == "invalid_request_error"
    asked = [r.custom_id for r in echo.batch_items]
    assert asked == ["ok", "handler-400", "handler-503", "cut"]
    assert [r.status for r in echo.batch_items] == [200, 400, 503, 200]


def test_openai_batch_expires_with_part_of_its_items_done(echo: LLMServer) -> None:
    echo.batch_expire_after = 2
    with make_client(echo) as client:
        batch = wait(client, submit(client, [chat_line(f"r{i}", f"{i}") for i in range(4)]).id)
        assert batch.status == "expired"
        assert batch.expired_at is not None and batch.completed_at is None
        assert batch.request_counts is not None
        assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 0)
        output = lines_of(client, batch.output_file_id)
        errors = lines_of(client, batch.error_file_id)
    assert set(output) == {"r0", "r1"} and set(errors) == {"r2", "r3"}
    expired = {
        "code": "batch_expired",
        "message": "This request could not be executed before the completion window expired.",
    }
    for line in errors.values():
        assert line["response"] is None and line["error"] == expired
    assert [r.custom_id for r in echo.batch_items] == ["r0", "r1"]

    # The fault hook expires chosen items instead.
    echo.batch_expire_after = None
    echo.batch_item_fault = lambda custom_id, index: "expire" if custom_id == "b" else None
    with make_client(echo) as client:
        batch = wait(client, submit(client, [chat_line(c, c) for c in "abc"]).id)
        assert batch.status == "expired"
        assert set(lines_of(client, batch.output_file_id)) == {"a", "c"}
        assert set(lines_of(client, batch.error_file_id)) == {"b"}


def test_openai_cancel_keeps_the_items_done(echo: LLMServer, clock: Clock) -> None:
    echo.batch_clock = clock
    echo.batch_delay = 10.0
    with make_client(echo) as client:
        batch = submit(client, [chat_line(f"r{i}", f"{i}") for i in range(4)])
        clock.now = 5.0  # r0 and r1 are due
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
        clock.now = 100.0  # the rest never run
        cancelled = client.batches.retrieve(batch.id)
        assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
        assert set(lines_of(client, cancelled.output_file_id)) == {"r0", "r1"}
        errors = lines_of(client, cancelled.error_file_id)
        assert set(errors) == {"r2", "r3"}
        assert errors["r2"]["response"] is None
        assert errors["r2"]["error"]["code"] == "batch_cancelled"
        with pytest.raises(openai.ConflictError):  # an ended batch cannot be cancelled
            client.batches.cancel(batch.id)
    assert [r.custom_id for r in echo.batch_items] == ["r0", "r1"]


def test_openai_batch_fails_as_a_whole(echo: LLMServer) -> None:
    echo.batch_fail = "token_limit_exceeded"
    with make_client(echo) as client:
        batch = submit(client, [chat_line("a", "x")])
        assert batch.status == "validating"
        failed = client.batches.retrieve(batch.id)
        assert failed.status == "failed" and failed.failed_at is not None
        assert failed.errors is not None and failed.errors.data is not None
        assert failed.errors.data[0].code == "token_limit_exceeded"
        assert failed.output_file_id is None and failed.error_file_id is None

        # Lines the endpoint cannot run fail validation, each named with its line number.
        echo.batch_fail = None
        bad = [
            chat_line("a", "x"),
            chat_line("a", "duplicate"),
            {"custom_id": "b", "method": "POST", "url": "/v1/embeddings", "body": {}},
        ]
        failed = client.batches.retrieve(submit(client, bad).id)
        assert failed.status == "failed" and failed.errors is not None
        found = [(e.code, e.line) for e in failed.errors.data or []]
        assert found == [("duplicate_custom_id", 2), ("invalid_url", 3)]
    assert echo.batch_items == []


def test_openai_rejects_a_bad_upload_or_batch(echo: LLMServer) -> None:
    with make_client(echo) as client:
        with pytest.raises(openai.BadRequestError) as info:
            client.files.create(
                file=("requests.jsonl", b'{"custom_id": "a"}\nnot json\n'), purpose="batch"
            )
        assert "Line 2" in info.value.body["message"]  # type: ignore[index]
        assert set(info.value.response.json()["error"]) == {"message", "type", "param", "code"}
        with pytest.raises(openai.BadRequestError) as info:
            client.files.create(
                file=("data.jsonl", jsonl([chat_line("a", "x")])), purpose="fine-tune"
            )
        assert info.value.body["param"] == "purpose"  # type: ignore[index]
        with pytest.raises(openai.NotFoundError):
            client.batches.create(input_file_id="file-nope", endpoint=CHAT, completion_window="24h")
        uploaded = client.files.create(
            file=("r.jsonl", jsonl([chat_line("a", "x")])), purpose="batch"
        )
        with pytest.raises(openai.BadRequestError):
            client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
            )
        with pytest.raises(openai.NotFoundError):
            client.batches.retrieve("batch_nope")
    assert len(echo.uploads) == 1 and echo.batches == {}


def test_openai_files_and_batch_list(echo: LLMServer) -> None:
    with make_client(echo) as client:
        first = submit(client, [chat_line("a", "x")])
        second = submit(client, [chat_line("b", "y")])
        assert [b.id for b in client.batches.list()] == [second.id, first.id]  # newest first
        done = client.batches.retrieve(first.id)
        assert done.output_file_id is not None
        output = client.files.retrieve(done.output_file_id)
        assert (output.purpose, output.filename) == ("batch_output", f"{first.id}_output.jsonl")
        assert client.files.content(first.input_file_id).content == jsonl([chat_line("a", "x")])
        assert client.files.delete(done.output_file_id).deleted
        with pytest.raises(openai.NotFoundError):
            client.files.content(done.output_file_id)


def test_openai_routes_without_the_v1_prefix(echo: LLMServer) -> None:
    base = echo.base_url.removesuffix("/v1")
    with OpenAI(base_url=base, api_key="test-key", max_retries=0, timeout=5.0) as client:
        batch = wait(client, submit(client, [chat_line("a", "hello")]).id)
        assert lines_of(client, batch.output_file_id)["a"]["response"]["status_code"] == 200
    assert [r.path for r in echo.batch_requests][:2] == ["/files", "/batches"]


def test_a_chunked_upload_is_read_whole(echo: LLMServer) -> None:
    # A client streaming a file of unknown size sends it chunked, without Content-Length.
    files = {"file": ("requests.jsonl", jsonl([chat_line(f"r{i}", "x" * 900) for i in range(9)]))}
    built = httpx2.Request("POST", "http://x/", data={"purpose": "batch"}, files=files)
    body = built.read()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    headers = {"Content-Type": built.headers["Content-Type"], "Authorization": "Bearer k"}
    answer = httpx2.post(echo.base_url + "/files", content=chunks(), headers=headers, timeout=5)
    assert answer.status_code == 200, answer.text
    assert echo.batch_requests[0].headers["transfer-encoding"] == "chunked"
    assert echo.uploads[0].content == files["file"][1]


def test_batch_handler_scripts_the_routes_themselves(echo: LLMServer) -> None:
    # A poll answered 503 once (then the default), and a slow download.
    def batch_handler(request: RecordedRequest, index: int) -> Reply | None:
        polls = [r for r in echo.batch_requests if r.method == "GET" and "/batches/" in r.path]
        if request.method == "GET" and "/batches/" in request.path and len(polls) == 1:
            return Reply(status=503, headers={"Retry-After": "0"})
        return None

    echo.batch_handler = batch_handler
    with make_client(echo) as client:
        batch = submit(client, [chat_line("a", "x")])
        with pytest.raises(openai.InternalServerError):
            client.batches.retrieve(batch.id)
        assert client.batches.retrieve(batch.id).status == "completed"
    statuses = [(r.method, r.status) for r in echo.batch_requests]
    assert statuses == [("POST", 200), ("POST", 200), ("GET", 503), ("GET", 200)]
    assert echo.request_count == 0 and echo.get_requests == []

    echo.reset()  # forgets the records, keeps the batches
    assert echo.batch_requests == [] and echo.batch_items == []
    assert list(echo.batches) == [batch.id]


# -- Anthropic ----------------------------------------------------------------------


def anthropic_client(server: LLMServer, **headers: str) -> httpx2.Client:
    return httpx2.Client(
        base_url=server.base_url + "/", headers=ANTHROPIC_HEADERS | headers, timeout=5.0
    )


def params(content: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-test",
        "max_tokens": 256,
        "messages": [{"role": "user", "content": content}],
    } | extra


def wait_ended(http: httpx2.Client, batch_id: str) -> dict[str, Any]:
    give_up = time.monotonic() + 30
    while (batch := http.get(f"messages/batches/{batch_id}").json())[
        "processing_status"
    ] != "ended":
        assert time.monotonic() < give_up, f"batch still {batch['processing_status']}"
        time.sleep(0.01)
    return batch


def results_of(http: httpx2.Client, batch: dict[str, Any]) -> dict[str, dict[str, Any]]:
    response = http.get(batch["results_url"])
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.text.splitlines()]
    return {line["custom_id"]: line["result"] for line in lines}


def test_anthropic_batch_answers_as_the_live_route_does() -> None:
    model = ScriptedModel(CELL_TYPES)
    requests = []
    for cid, markers in CLUSTERS.items():
        system, task = annotation_messages(markers)
        item = params(task["content"], system=system["content"], temperature=0)
        requests.append({"custom_id": cid, "params": item})
    with LLMServer(model, batch_delay=0.05) as server, anthropic_client(server) as http:
        made = http.post("messages/batches", json={"requests": requests})
        assert made.status_code == 200
        batch = made.json()
        assert batch["id"].startswith("msgbatch_") and batch["type"] == "message_batch"
        assert batch["processing_status"] == "in_progress" and batch["results_url"] is None
        assert batch["request_counts"] == {
            "processing": 2,
            "succeeded": 0,
            "errored": 0,
            "canceled": 0,
            "expired": 0,
        }
        assert batch["created_at"].endswith("Z") and batch["ended_at"] is None
        ended = wait_ended(http, batch["id"])
        assert ended["request_counts"]["succeeded"] == 2 and ended["ended_at"] is not None
        assert ended["results_url"] == (
            f"http://127.0.0.1:{server.port}/v1/messages/batches/{batch['id']}/results"
        )
        results = results_of(http, ended)
        with make_client(server) as client:
            live = {
                cid: client.chat.completions.create(
                    model="claude-test",
                    messages=annotation_messages(markers),  # type: ignore[arg-type]
                )
                for cid, markers in CLUSTERS.items()
            }
    for cid, result in results.items():
        assert result["type"] == "succeeded"
        message = result["message"]
        assert (message["type"], message["role"], message["model"]) == (
            "message",
            "assistant",
            "claude-test",
        )
        assert message["id"].startswith("msg_") and message["stop_reason"] == "end_turn"
        assert message["content"] == [
            {"type": "text", "text": live[cid].choices[0].message.content}
        ]
        usage = live[cid].usage
        assert usage is not None
        assert (message["usage"]["input_tokens"], message["usage"]["output_tokens"]) == (
            usage.prompt_tokens,
            usage.completion_tokens,
        )
    # The handler saw OpenAI-style messages, the system prompt first.
    assert server.batch_items[0].messages == annotation_messages(CLUSTERS["c0"])
    assert server.batch_items[0].body["max_tokens"] == 256
    assert server.batch_items[0].headers["x-api-key"] == "test-key"
    assert server.request_count == 2  # the live calls only
    record = server.batches[batch["id"]]
    assert (record.provider, record.custom_ids, record.downloads) == ("anthropic", ["c0", "c1"], 1)
    assert record.polls >= 1


def test_anthropic_counts_stay_processing_until_the_batch_ends(clock: Clock) -> None:
    with (
        LLMServer(reply_always("ok"), batch_delay=10.0) as server,
        anthropic_client(server) as http,
    ):
        server.batch_clock = clock
        requests = [{"custom_id": f"r{i}", "params": params(str(i))} for i in range(4)]
        batch = http.post("messages/batches", json={"requests": requests}).json()
        clock.now = 5.0
        seen = http.get(f"messages/batches/{batch['id']}").json()
        # Two items have run, but Anthropic counts them only once the batch ends.
        assert len(server.batch_items) == 2
        assert seen["processing_status"] == "in_progress"
        assert seen["request_counts"]["processing"] == 4
        assert http.get(f"messages/batches/{batch['id']}/results").status_code == 400
        clock.now = 10.0
        seen = http.get(f"messages/batches/{batch['id']}").json()
        assert seen["processing_status"] == "ended"
        assert seen["request_counts"]["succeeded"] == 4


def test_anthropic_partial_failures_and_bad_params(echo: LLMServer) -> None:
    echo.batch_item_fault = lambda custom_id, index: {"gone": "expire", "hook": 529}.get(custom_id)
    requests = [
        {"custom_id": "ok", "params": params("fine")},
        {"custom_id": "cut", "params": params("a long answer")},
        {"custom_id": "server-error", "params": params("status 500")},
        {"custom_id": "refused", "params": params("status 400")},
        {"custom_id": "hook", "params": params("never asked")},
        {"custom_id": "gone", "params": params("never asked")},
        {
            "custom_id": "no-max-tokens",
            "params": {"model": "m", "messages": [{"role": "user", "content": "x"}]},
        },
        {
            "custom_id": "system-role",
            "params": params("x")
            | {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "x"}]},
        },
    ]
    with anthropic_client(echo) as http:
        batch = http.post("messages/batches", json={"requests": requests}).json()
        ended = wait_ended(http, batch["id"])
        results = results_of(http, ended)
    assert ended["request_counts"] == {
        "processing": 0,
        "succeeded": 2,
        "errored": 5,
        "canceled": 0,
        "expired": 1,
    }
    assert results["ok"]["message"]["content"][0]["text"] == "echo: fine"
    assert results["cut"]["message"]["stop_reason"] == "max_tokens"
    assert results["gone"] == {"type": "expired"}
    errors = {
        cid: (r["error"]["type"], r["error"]["error"]["type"])
        for cid, r in results.items()
        if r["type"] == "errored"
    }
    assert errors == {
        "server-error": ("error", "api_error"),
        "refused": ("error", "invalid_request_error"),
        "hook": ("error", "overloaded_error"),
        "no-max-tokens": ("error", "invalid_request_error"),
        "system-role": ("error", "invalid_request_error"),
    }
    assert results["no-max-tokens"]["error"]["error"]["message"] == "max_tokens: Field required"
    # Bad params are refused before the handler is asked, as Anthropic validates them.
    assert [r.custom_id for r in echo.batch_items] == ["ok", "cut", "server-error", "refused"]


def test_anthropic_batch_expires_with_part_of_its_items_done(echo: LLMServer) -> None:
    echo.batch_expire_after = 1
    requests = [{"custom_id": f"r{i}", "params": params(str(i))} for i in range(3)]
    with anthropic_client(echo) as http:
        batch = http.post("messages/batches", json={"requests": requests}).json()
        ended = wait_ended(http, batch["id"])
        results = results_of(http, ended)
    assert ended["request_counts"]["succeeded"] == 1 and ended["request_counts"]["expired"] == 2
    assert [results[f"r{i}"]["type"] for i in range(3)] == ["succeeded", "expired", "expired"]


def test_anthropic_cancel(echo: LLMServer, clock: Clock) -> None:
    echo.batch_clock = clock
    echo.batch_delay = 10.0
    requests = [{"custom_id": f"r{i}", "params": params(str(i))} for i in range(4)]
    with anthropic_client(echo) as http:
        batch = http.post("messages/batches", json={"requests": requests}).json()
        clock.now = 5.0
        canceling = http.post(f"messages/batches/{batch['id']}/cancel").json()
        assert canceling["processing_status"] == "canceling"
        assert canceling["cancel_initiated_at"] is not None
        ended = http.get(f"messages/batches/{batch['id']}").json()
        assert ended["processing_status"] == "ended"
        assert ended["request_counts"]["succeeded"] == 2
        assert ended["request_counts"]["canceled"] == 2
        results = results_of(http, ended)
        assert [results[f"r{i}"]["type"] for i in range(4)] == [
            "succeeded",
            "succeeded",
            "canceled",
            "canceled",
        ]
        again = http.post(f"messages/batches/{batch['id']}/cancel")
        assert again.status_code == 400
        listed = http.get("messages/batches").json()
        assert [b["id"] for b in listed["data"]] == [batch["id"]]
        deleted = http.delete(f"messages/batches/{batch['id']}").json()
        assert deleted == {"id": batch["id"], "type": "message_batch_deleted"}
        assert http.get(f"messages/batches/{batch['id']}").status_code == 404


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "requests: Field required"),
        ({"requests": []}, "at least 1 item"),
        ({"requests": [{"custom_id": "cluster:1", "params": params("x")}]}, "should match"),
        ({"requests": [{"custom_id": "a" * 65, "params": params("x")}]}, "should match"),
        (
            {"requests": [{"custom_id": "a", "params": params("x")}] * 2},
            "not unique",
        ),
        ({"requests": [{"custom_id": "a"}]}, "requests.0.params: Field required"),
    ],
)
def test_anthropic_rejects_a_malformed_batch(
    echo: LLMServer, body: dict[str, Any], message: str
) -> None:
    with anthropic_client(echo) as http:
        answer = http.post("messages/batches", json=body)
    assert answer.status_code == 400
    error = answer.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert message in error["error"]["message"]
    assert echo.batches == {}


def test_anthropic_wants_its_key_and_version(echo: LLMServer) -> None:
    body = {"requests": [{"custom_id": "a", "params": params("x")}]}
    with httpx2.Client(base_url=echo.base_url + "/", timeout=5.0) as http:
        no_key = http.post(
            "messages/batches", json=body, headers={"anthropic-version": "2023-06-01"}
        )
        assert no_key.status_code == 401
        assert no_key.json()["error"]["type"] == "authentication_error"
        no_version = http.post("messages/batches", json=body, headers={"x-api-key": "k"})
        assert no_version.status_code == 400
        assert (
            http.get("messages/batches/msgbatch_nope", headers=ANTHROPIC_HEADERS).json()["error"][
                "type"
            ]
            == "not_found_error"
        )
    assert echo.batches == {}
    assert [r.status for r in echo.batch_requests] == [401, 400, 404]


def test_chat_body_of_flattens_blocks_and_keeps_the_rest() -> None:
    body = chat_body_of(
        {
            "model": "m",
            "max_tokens": 5,
            "system": [{"type": "text", "text": "be brief"}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        }
    )
    assert body == {
        "model": "m",
        "max_tokens": 5,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
        ],
    }


def test_batch_record_kinds(echo: LLMServer, clock: Clock) -> None:
    echo.batch_clock = clock
    echo.batch_delay = 10.0
    with make_client(echo) as client:
        batch = submit(client, [chat_line("a", "x"), chat_line("b", "status 500")])
        clock.now = 5.0
        client.batches.retrieve(batch.id)
        record: BatchRecord = echo.batches[batch.id]
        assert record.kinds == {"a": "succeeded", "b": "pending"}
        clock.now = 10.0
        client.batches.retrieve(batch.id)
    assert record.kinds == {"a": "succeeded", "b": "errored"}
    outcome = record.outcome("b")
    assert outcome is not None and outcome.status == 500 and outcome.request is not None
