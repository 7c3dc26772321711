"""What real local servers did that our scripted one never had (issue 19), reproduced on the
scripted server: a reply that never ends, a refused structured output answered with HTTP
500, a validator that cannot be asked, the cost of failed calls, and a model name the
server does not list."""

from __future__ import annotations

import logging
import threading

import pandas as pd
import pytest
from llm_server import RecordedRequest, Reply
from scripted_model import ScriptedModel, agent_of, signature

import cassia_sc
from cassia_sc import LLMClient
from cassia_sc.cli import main

EXAMPLE = cassia_sc.loadmarker("pbmc68k_processed")
SIGNATURES = {row.cluster: signature(row.markers.split(", ")) for row in EXAMPLE.itertuples()}
FAST = {"retry_delay": 0.01, "max_retry_delay": 0.5}
HANG = 60.0


def run(client: LLMClient, marker=EXAMPLE, **options) -> cassia_sc.BatchResult:
    settings = {"tissue": "blood", "species": "human", "client": client, "progress": False}
    return cassia_sc.run_batch(marker, **(settings | options))


def test_after_a_timeout_the_request_asks_for_less_room(scripted_llm):
    """A model that never stops fills its room until the timeout; asking again for the same
    room would time out the same way, so the retry asks for half."""
    model = ScriptedModel({SIGNATURES["0"]: "T cell"})
    released = threading.Event()

    def handler(request: RecordedRequest, index: int) -> Reply:
        if request.body.get("max_tokens", 0) >= 4096:  # generates until the context is full
            released.wait(HANG)
        return model(request, index)

    llm = scripted_llm(handler=handler)
    try:
        result = run(llm.client(timeout=0.5, max_retries=2, **FAST), EXAMPLE.head(1))
    finally:
        released.set()
    assert result["0"].status == "ok"
    rooms = [(agent_of(r), r.body.get("max_tokens")) for r in llm.server.requests]
    assert rooms[:2] == [("annotator", 4096), ("annotator", 2048)]
    assert ("validator", 2048) in rooms  # the room stays small for the rest of the run


def test_a_reply_cut_off_is_asked_again_once_with_more_room(scripted_llm):
    def handler(request: RecordedRequest, index: int) -> Reply:
        room = request.body["max_tokens"]  # the reply filled all of it
        return Reply(
            content='{"main_cell_type": "T', finish_reason="length", completion_tokens=room
        )

    llm = scripted_llm(handler=handler)
    result = run(llm.client(max_retries=3, **FAST), EXAMPLE.head(1))
    assert result["0"].status == "failed" and "cut off" in result["0"].error
    assert [r.body["max_tokens"] for r in llm.server.requests] == [4096, 8192]


def test_a_reply_stopped_by_the_servers_context_fails_at_once(scripted_llm):
    """llama-server ends a reply with "length" when its slot's context is full, long before
    max_tokens: more room cannot help, so the call fails at once and says why."""

    def handler(request: RecordedRequest, index: int) -> Reply:
        return Reply(
            content='{"main_cell_type": "T',
            finish_reason="length",
            prompt_tokens=400,
            completion_tokens=112,
        )

    llm = scripted_llm(handler=handler)
    result = run(llm.client(max_retries=3, **FAST), EXAMPLE.head(1))
    cluster = result["0"]
    assert cluster.status == "failed"
    assert "context" in cluster.error and "112" in cluster.error
    assert llm.server.request_count == 1
    assert (result.usage["requests"], result.usage["completion_tokens"]) == (1, 112)


@pytest.mark.parametrize("status", [400, 422, 500])
def test_a_refused_structured_output_is_dropped_whatever_the_status(scripted_llm, status, caplog):
    """llama-cpp-python answers a json_schema it cannot take with HTTP 500 naming it."""
    model = ScriptedModel({SIGNATURES["0"]: "T cell"})

    def handler(request: RecordedRequest, index: int) -> Reply:
        if "response_format" in request.body:
            return Reply(
                status=status,
                error_message="1 validation error for CreateChatCompletionRequest\n"
                "response_format.json_schema: Extra inputs are not permitted",
            )
        return model(request, index)

    caplog.set_level(logging.WARNING, logger="cassia_sc")
    llm = scripted_llm(handler=handler)
    result = run(llm.client(max_retries=3, **FAST), EXAMPLE.head(1))
    assert result["0"].status == "ok" and result["0"].main_cell_type == "T cell"
    with_schema = [r for r in llm.server.requests if "response_format" in r.body]
    assert len(with_schema) == 1  # refused once, never sent again
    assert "refused 'response_format'" in caplog.text


def test_a_validator_that_cannot_be_asked_keeps_the_annotation(scripted_llm):
    model = ScriptedModel({SIGNATURES["0"]: "T cell"})

    def handler(request: RecordedRequest, index: int) -> Reply:
        if agent_of(request) == "validator":
            return Reply(status=503, error_message="the model is overloaded")
        return model(request, index)

    llm = scripted_llm(handler=handler)
    result = run(llm.client(max_retries=1, **FAST), EXAMPLE.head(1))
    cluster = result["0"]
    assert cluster.status == "ok" and cluster.main_cell_type == "T cell"
    assert cluster.validation_passed is None  # unknown, not failed
    assert "could not be asked" in cluster.validation_feedback
    assert "HTTP 503" in cluster.validation_feedback
    # Its two failed attempts are counted with the rest of the cluster's requests.
    assert cluster.requests == 3


def test_failed_calls_are_counted_in_the_result_and_the_summary(scripted_llm, tmp_path, capsys):
    def handler(request: RecordedRequest, index: int) -> Reply:
        return Reply(status=500, error_message="out of memory")

    llm = scripted_llm(handler=handler)
    client = llm.client(max_retries=2, **FAST)
    result = run(client, EXAMPLE.head(2))
    assert all(c.status == "failed" for c in result.clusters)
    assert result.usage["requests"] == llm.server.request_count == 6 == client.usage.requests

    markers = tmp_path / "markers.csv"
    EXAMPLE.head(2).to_csv(markers, index=False)
    args = ["batch", str(markers), "--output-name", str(tmp_path / "run"), "--max-retries", "1"]
    args += ["--model", "test-model", "--provider", llm.base_url, "--species", "human"]
    args += ["--cache-dir", str(tmp_path / "cache")]
    llm.server.reset()
    assert main(args) == 3
    assert "0 of 2 clusters annotated; 4 requests" in capsys.readouterr().out


def test_tokens_count_what_the_server_reported_once(scripted_llm):
    """A reply asked once and used twice (two clusters with the same markers) was paid for
    once; a second run served from the cache spends nothing."""
    twins = pd.concat([EXAMPLE.head(1), EXAMPLE.head(1).assign(cluster="twin")])
    llm = scripted_llm({SIGNATURES["0"]: "T cell"})
    first = run(llm.client(**FAST), twins)
    assert first.usage["cached_calls"] == first.usage["calls"] / 2
    reported = [request.usage for request in llm.server.requests]
    assert first.usage["prompt_tokens"] == sum(u["prompt_tokens"] for u in reported)
    assert first.usage["completion_tokens"] == sum(u["completion_tokens"] for u in reported)
    # A cluster still shows what its answer took, whoever paid for it.
    assert first["twin"].prompt_tokens == first["0"].prompt_tokens > 0
    again = run(llm.client(**FAST), twins)
    assert again.usage["prompt_tokens"] == again.usage["completion_tokens"] == 0
    assert again["0"].prompt_tokens == first["0"].prompt_tokens


@pytest.mark.parametrize(("flag", "sent"), [("512", 512), ("0", None)])
def test_max_tokens_is_a_flag_and_an_option(scripted_llm, tmp_path, flag, sent):
    """llama-server's -n does not cap a request that sends max_tokens: the user caps it here."""
    llm = scripted_llm({SIGNATURES["0"]: "T cell"})
    markers = tmp_path / "markers.csv"
    EXAMPLE.head(1).to_csv(markers, index=False)
    args = ["batch", str(markers), "--output-name", str(tmp_path / "run"), "--max-tokens", flag]
    args += ["--model", "test-model", "--provider", llm.base_url, "--species", "human"]
    args += ["--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    assert {r.body.get("max_tokens") for r in llm.server.requests} == {sent}

    llm.server.reset()
    options = llm.options(cache=False, max_tokens=300)
    cassia_sc.run_batch(EXAMPLE.head(1), tissue="blood", species="human", **options)
    assert {r.body.get("max_tokens") for r in llm.server.requests} == {300}


def test_a_bad_max_tokens_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["batch", "markers.csv", "--output-name", "run", "--max-tokens", "many"])
    assert exited.value.code == 2
    assert "'many' is not a number of tokens" in capsys.readouterr().err


def test_a_model_the_server_does_not_list_is_warned_about_once(scripted_llm, caplog):
    """A local server answers whatever the model is called; a typo would go unnoticed."""
    llm = scripted_llm({SIGNATURES[c]: "T cell" for c in SIGNATURES})
    caplog.set_level(logging.WARNING, logger="cassia_sc")
    client = llm.client(model="test-modle", **FAST)
    result = run(client, EXAMPLE.head(3))
    assert all(c.status == "ok" for c in result.clusters)
    warnings = [r for r in caplog.records if "test-modle" in r.getMessage()]
    assert len(warnings) == 1
    assert "does not list" in warnings[0].getMessage()
    assert "test-model" in warnings[0].getMessage()  # what it does list
    assert len(llm.server.get_requests) == 1  # asked once per client


def test_a_listed_model_or_a_server_without_a_list_says_nothing(scripted_llm, caplog):
    caplog.set_level(logging.WARNING, logger="cassia_sc")
    listed = scripted_llm({SIGNATURES["0"]: "T cell"})
    run(listed.client(**FAST), EXAMPLE.head(1))
    unlisted = scripted_llm({SIGNATURES["0"]: "T cell"})
    unlisted.server.get_handler = lambda request, index: Reply(status=404)
    run(unlisted.client(model="other", **FAST), EXAMPLE.head(1))
    assert len(unlisted.server.get_requests) == 1  # asked, and no list came
    assert not [r for r in caplog.records if "does not list" in r.getMessage()]
