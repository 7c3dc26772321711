"""The batch annotator end to end: the real openai client against a scripted local server."""

from __future__ import annotations

import json
import logging
import threading
import time

import pandas as pd
import pytest
from conftest import MARKER100, ScriptedLLM
from llm_server import LLMServer, RecordedRequest, Reply
from scripted_model import (
    ScriptedModel,
    agent_of,
    annotation_reply,
    is_revision,
    markers_of,
    signature,
    verdict_reply,
)

import cassia_sc
from cassia_sc.datasets import example_truth
from cassia_sc.results import SUMMARY_COLUMNS

EXAMPLE = cassia_sc.loadmarker("pbmc68k_processed")
SIGNATURES = {row.cluster: signature(row.markers.split(", ")) for row in EXAMPLE.itertuples()}
TRUTH = dict(zip(example_truth()["cluster"], example_truth()["cell_type"], strict=True))
#: The scripted model knows each example cluster's truth.
KNOWN = {SIGNATURES[c]: TRUTH[c] for c in SIGNATURES}
#: Client settings for quick retries: no test waits out a real backoff.
FAST_RETRIES = {"retry_delay": 0.01, "max_retry_delay": 2.0, "timeout": 5.0}


@pytest.fixture
def llm(scripted_llm) -> ScriptedLLM:
    """The scripted model that knows each example cluster's truth."""
    return scripted_llm(KNOWN)


def run(llm: ScriptedLLM, marker=EXAMPLE, *, client_options=None, **options):
    """run_batch on ``marker`` through a fresh client of ``llm`` (its shared cache)."""
    client = llm.client(**(FAST_RETRIES | (client_options or {})))
    settings = {"tissue": "blood", "species": "human", "progress": False, "client": client}
    try:
        return cassia_sc.run_batch(marker, **(settings | options))
    finally:
        client.close()


def requests_by_cluster(server: LLMServer) -> dict[str, int]:
    counts: dict[str, int] = {}
    cluster_of = {v: k for k, v in SIGNATURES.items()}
    for request in server.requests:
        cluster = cluster_of[signature(markers_of(request))]
        counts[cluster] = counts.get(cluster, 0) + 1
    return counts


# --------------------------------------------------------------------------- happy path


def test_happy_path_two_round_trips_per_cluster_in_cluster_order(llm):
    result = run(llm, max_workers=4)

    assert [c.cluster for c in result.clusters] == [str(i) for i in range(11)]
    assert all(c.status == "ok" for c in result.clusters)
    assert [c.main_cell_type for c in result.clusters] == [TRUTH[str(i)] for i in range(11)]
    assert set(requests_by_cluster(llm.server).values()) == {2}  # annotator, validator
    assert [agent_of(r) for r in llm.server.requests].count("formatter") == 0
    first = result["0"]
    assert first.iterations == 1 and first.validation_passed is True
    assert first.key_markers == first.markers[:3] and first.unsupported_markers == []
    assert first.sub_cell_types == [f"{TRUTH['0']} subtype A", f"{TRUTH['0']} subtype B"]
    assert first.prompt_tokens > 0 and first.completion_tokens > 0 and first.requests == 2
    assert [t.agent for t in first.conversation] == ["annotator"] * 3 + ["validator"] * 3
    assert result.usage["requests"] == 22


def test_prompts_carry_context_and_never_the_text_none(llm, tmp_path):
    run(llm, additional_info="None")
    run(llm, client_options={"cache_dir": tmp_path / "2"}, additional_info="  ")
    assert llm.server.request_count == 44
    for request in llm.server.requests:
        task = request.messages[1]["content"]
        assert task.startswith("Species: human\nTissue: blood")
        assert "None" not in task and "About this sample" not in task
    given = [markers_of(r) for r in llm.server.requests if agent_of(r) == "annotator"]
    assert EXAMPLE["markers"][0].split(", ") in given

    llm.server.requests.clear()
    run(
        llm,
        client_options={"cache_dir": tmp_path / "3"},
        additional_info="Sorted CD45+ cells from a healthy donor.",
    )
    for request in llm.server.requests:
        assert (
            "About this sample: Sorted CD45+ cells from a healthy donor."
            in request.messages[1]["content"]
        )


def test_tissue_blind_mode_asks_for_and_keeps_possible_tissues(llm):
    result = run(llm, tissue=None)
    request = next(r for r in llm.server.requests if agent_of(r) == "annotator")
    assert "Tissue: unknown" in request.messages[1]["content"]
    assert '"possible_tissues"' in request.messages[0]["content"]
    assert result["4"].possible_tissues == ["blood", "spleen"]
    assert result.summary()["Possible Tissues"].iloc[4] == "blood, spleen"


def test_tolerant_parsing_needs_no_formatting_call(scripted_llm):
    def annotator(request, markers):
        return Reply(
            content=annotation_reply(
                "B cell", key_markers=("MS4A1",), fence="```JSON", newline="\r\n"
            )
        )

    llm = scripted_llm(annotator=annotator)
    result = run(llm)
    assert {c.main_cell_type for c in result.clusters} == {"B cell"}
    assert llm.server.request_count == 22


# --------------------------------------------------------------------------- the conversation


def test_validation_fails_then_the_revision_passes(scripted_llm):
    def validator(request, markers):
        answered_twice = "Revised" in request.messages[1]["content"]
        if signature(markers) == SIGNATURES["4"] and not answered_twice:
            return Reply(content=verdict_reply(False, "MS4A1 and CD79A say B cell, not T cell."))
        return None

    def annotator(request, markers):
        if signature(markers) == SIGNATURES["4"]:
            main = "Revised B cell" if is_revision(request) else "T cell"
            return Reply(content=annotation_reply(main, key_markers=("MS4A1",)))
        return None

    llm = scripted_llm(KNOWN, annotator=annotator, validator=validator)
    result = run(llm)

    b_cell = result["4"]
    assert b_cell.main_cell_type == "Revised B cell"
    assert b_cell.iterations == 2 and b_cell.validation_passed is True
    assert requests_by_cluster(llm.server)["4"] == 4
    revision = next(r for r in llm.server.requests if is_revision(r))
    assert len(revision.messages) == 4  # system, task, first answer, review
    assert "MS4A1 and CD79A say B cell, not T cell." in revision.messages[3]["content"]
    assert all(result[c].iterations == 1 for c in SIGNATURES if c != "4")


def test_rejected_in_every_round_keeps_the_last_answer_unvalidated(scripted_llm):
    def validator(request, markers):
        return Reply(content=verdict_reply(False, "Not convinced."))

    def annotator(request, markers):
        main = "Second try" if is_revision(request) else "First try"
        return Reply(content=annotation_reply(main, key_markers=tuple(markers[:1])))

    llm = scripted_llm(KNOWN, annotator=annotator, validator=validator)
    result = run(llm, validator_involvement="v1")
    assert all(c.status == "ok" and c.validation_passed is False for c in result.clusters)
    assert {c.main_cell_type for c in result.clusters} == {"Second try"}
    assert {c.iterations for c in result.clusters} == {2}
    assert llm.server.request_count == 11 * 4


def test_no_json_asks_the_formatter_once(scripted_llm):
    def annotator(request, markers):
        return Reply(
            content=f"These are clearly plasma cells: MZB1 and IGJ, not {signature(markers)}."
        )

    def formatter(request, markers):
        assert request.messages[1]["content"].startswith("These are clearly plasma cells")
        return Reply(content='{"main_cell_type": "Plasma cell", "key_markers": ["MZB1", "IGJ"]}')

    llm = scripted_llm(annotator=annotator, formatter=formatter)
    result = run(llm)
    assert {c.main_cell_type for c in result.clusters} == {"Plasma cell"}
    assert llm.server.request_count == 11 * 3  # annotator, formatter, validator
    formatter_request = next(r for r in llm.server.requests if agent_of(r) == "formatter")
    assert formatter_request.body["response_format"]["type"] == "json_schema"
    assert result["8"].unsupported_markers == []  # both are in cluster 8's list
    assert result["0"].unsupported_markers == ["MZB1", "IGJ"]


def test_unreadable_reply_and_formatter_fail_the_cluster_with_the_raw_text(scripted_llm):
    raw = "I cannot decide; the markers are ambiguous."

    def annotator(request, markers):
        return Reply(content=raw) if signature(markers) == SIGNATURES["2"] else None

    def formatter(request, markers):
        return Reply(content="Sorry, nothing to convert.")

    result = run(scripted_llm(KNOWN, annotator=annotator, formatter=formatter))
    failed = result["2"]
    assert failed.status == "failed" and failed.raw_reply == raw
    assert "No annotation could be read" in failed.error
    assert [c.cluster for c in result.failed] == ["2"]


def test_v0_sends_unsupported_citations_back_where_v1_only_reports_them(scripted_llm, tmp_path):
    def annotator(request, markers):
        if is_revision(request):
            return Reply(content=annotation_reply("T cell", key_markers=(markers[0],)))
        return Reply(content=annotation_reply("T cell", key_markers=(markers[0], "FAKEGENE1")))

    llm = scripted_llm(annotator=annotator)
    moderate = run(llm, client_options={"cache_dir": tmp_path / "v1"}, validator_involvement="v1")
    moderate_requests = list(llm.server.requests)
    llm.server.requests.clear()
    strict = run(llm, client_options={"cache_dir": tmp_path / "v0"}, validator_involvement="v0")
    strict_requests = list(llm.server.requests)

    # v1: the validator is told about the gene, passes the call; the gene stays recorded.
    assert moderate["0"].unsupported_markers == ["FAKEGENE1"]
    assert moderate["0"].iterations == 1 and moderate["0"].validation_passed is True
    assert len(moderate_requests) == 22
    validator_task = next(r for r in moderate_requests if agent_of(r) == "validator").messages[1][
        "content"
    ]
    assert "not in this list: FAKEGENE1" in validator_task
    assert (
        "Be strict"
        not in next(r for r in moderate_requests if agent_of(r) == "validator").messages[0][
            "content"
        ]
    )
    # v0: the answer goes straight back for revision, without a validator call, then is
    # reviewed under the strict prompt.
    assert strict["0"].unsupported_markers == [] and strict["0"].iterations == 2
    assert len(strict_requests) == 33  # annotator, revised annotator, validator
    revision = next(r for r in strict_requests if is_revision(r))
    assert "not in the cluster's marker list: FAKEGENE1" in revision.messages[-1]["content"]
    assert (
        "Be strict"
        in next(r for r in strict_requests if agent_of(r) == "validator").messages[0]["content"]
    )


# --------------------------------------------------------------------------- faults


def test_empty_reply_is_retried(scripted_llm):
    seen: set[str] = set()

    def annotator(request, markers):
        if signature(markers) not in seen:
            seen.add(signature(markers))
            return Reply(content="")
        return None

    llm = scripted_llm(KNOWN, annotator=annotator)
    result = run(llm)
    assert all(c.status == "ok" for c in result.clusters)
    assert llm.server.request_count == 33 and result["0"].requests == 3


def test_always_empty_fails_that_cluster_with_a_clear_error(scripted_llm):
    def annotator(request, markers):
        return Reply(content="") if signature(markers) == SIGNATURES["3"] else None

    result = run(scripted_llm(KNOWN, annotator=annotator), client_options={"max_retries": 2})
    assert result["3"].status == "failed"
    assert result["3"].error == "the model returned an empty reply (gave up after 3 attempts)"
    assert sum(c.status == "ok" for c in result.clusters) == 10


def test_malformed_body_is_retried(scripted_llm):
    calls = []

    def annotator(request, markers):
        calls.append(1)
        return Reply(raw_body=b"{not json") if len(calls) == 1 else None

    llm = scripted_llm(KNOWN, annotator=annotator)
    result = run(llm, max_workers=1)
    assert all(c.status == "ok" for c in result.clusters)
    assert llm.server.request_count == 23


def test_429_retry_after_is_honoured_and_slows_the_whole_pool(scripted_llm):
    limited: list[float] = []

    def annotator(request, markers):
        if not limited:
            limited.append(time.monotonic())
            # answered at once, while the others take 0.3 s
            return Reply(status=429, headers={"Retry-After": "1"}, error_message="no", delay=1e-3)
        return None

    llm = scripted_llm(KNOWN, annotator=annotator, delay=0.3)
    result = run(llm, max_workers=4)
    assert all(c.status == "ok" for c in result.clusters)
    assert llm.server.request_count == 23
    after = [r.time - limited[0] for r in llm.server.requests[1:]]
    # The three other workers may have sent their first request already (each is answered
    # in 0.3 s); after that, nobody sends for the second the server asked for.
    assert sorted(after)[3] >= 0.95


def test_a_burst_of_500s_is_retried(scripted_llm):
    model = ScriptedModel(KNOWN)

    def handler(request: RecordedRequest, index: int) -> Reply:
        if index < 6:
            return Reply(status=500, error_message="upstream exploded")
        return model(request, index)

    llm = scripted_llm(handler=handler)
    client = llm.client(**FAST_RETRIES, max_retries=5)
    result = cassia_sc.run_batch(
        EXAMPLE, tissue="blood", species="human", client=client, max_workers=2, progress=False
    )
    assert all(c.status == "ok" for c in result.clusters)
    assert llm.server.request_count == 22 + 6
    assert client.usage.requests == result.usage["requests"] == 28
    assert client.usage.calls == 22 and client.usage.cached_calls == 0


def test_a_timed_out_request_is_retried(scripted_llm):
    held: list[RecordedRequest] = []
    release = threading.Event()

    def annotator(request, markers):
        if not held:
            held.append(request)
            release.wait(60)  # held until the run is over (60 s only guards a hang)
            return Reply(content="late")
        return None

    llm = scripted_llm(KNOWN, annotator=annotator)
    try:
        result = run(llm, client_options={"timeout": 0.5})
        # The run finished without the held reply: that call timed out and was sent again.
        assert held[0].answered_at is None
    finally:
        release.set()
    assert all(c.status == "ok" for c in result.clusters)
    assert llm.server.request_count == 23


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_aborts_the_run_once(scripted_llm, status):
    secret = "fake-key-for-tests-NOT-A-SECRET-0001"
    masked = f"{secret[:6]}*****{secret[-4:]}"  # as providers echo a key
    llm = scripted_llm(
        handler=lambda r, i: Reply(status=status, error_message=f"Bad key {secret}; got {masked}")
    )
    with pytest.raises(cassia_sc.AuthenticationFailed) as raised:
        run(llm, max_workers=2, client_options={"api_key": secret, "max_retries": 3})
    assert f"HTTP {status}" in str(raised.value) and "CASSIA_API_KEY" in str(raised.value)
    assert "Bad key [redacted]; got [redacted]" in str(raised.value)
    assert llm.server.request_count <= 2  # no retries, no further clusters


def test_an_unknown_model_aborts_the_run(scripted_llm):
    llm = scripted_llm(
        handler=lambda r, i: Reply(status=404, error_message="The model `nope` does not exist")
    )
    with pytest.raises(cassia_sc.ModelNotFound, match="Model 'test-model' is not available"):
        run(llm, max_workers=3)
    assert llm.server.request_count <= 3
    message = "nope is not a valid model ID"
    llm = scripted_llm(handler=lambda r, i: Reply(status=400, error_message=message))
    with pytest.raises(cassia_sc.ModelNotFound, match="not a valid model ID"):
        run(llm, max_workers=1)


def test_a_poisoned_cluster_fails_alone_and_stays_in_every_output(scripted_llm, tmp_path):
    def annotator(request, markers):
        if signature(markers) == SIGNATURES["6"]:
            return Reply(status=400, error_message="This prompt trips a content filter.")
        return None

    llm = scripted_llm(KNOWN, annotator=annotator)
    summary = cassia_sc.runCASSIA_batch(
        EXAMPLE,
        str(tmp_path / "out"),
        model="test-model",
        tissue="blood",
        species="human",
        client=llm.client(**FAST_RETRIES),
        progress=False,
    )
    assert summary["Cluster ID"].tolist() == [str(i) for i in range(11)]
    poisoned = summary.set_index("Cluster ID").loc["6"]
    assert poisoned["Status"] == "failed" and "content filter" in poisoned["Error"]
    assert (summary["Status"] == "ok").sum() == 10
    full = pd.read_csv(tmp_path / "out_full.csv", dtype={"Cluster ID": str})
    assert full.set_index("Cluster ID").loc["6", "Status"] == "failed"
    conversations = json.loads((tmp_path / "out_conversations.json").read_text())
    assert list(conversations) == [str(i) for i in range(11)]  # CASSIA's shape, by name
    assert conversations["6"]["annotations"] == [] and conversations["6"]["formatting"] == ""
    record = json.loads((tmp_path / "out_record.json").read_text())
    assert [c["cluster"] for c in record["clusters"]] == [str(i) for i in range(11)]
    assert "content filter" in record["clusters"][6]["error"]
    assert "content filter" in (tmp_path / "out_report.html").read_text()


def test_400_refusing_structured_output_falls_back_without_it(scripted_llm, caplog):
    model = ScriptedModel(KNOWN)

    def handler(request, index):
        if "response_format" in request.body:
            return Reply(status=400, error_message="response_format json_schema is not supported")
        return model(request, index)

    caplog.set_level(logging.WARNING, logger="cassia_sc")
    llm = scripted_llm(handler=handler)
    result = run(llm, max_workers=1)
    assert all(c.status == "ok" and c.validation_passed for c in result.clusters)
    assert llm.server.request_count == 23  # one refused validator request, then none
    assert "refused 'response_format'" in caplog.text


# --------------------------------------------------------------------------- concurrency, cache


def test_concurrency_never_exceeds_max_workers(scripted_llm):
    model = ScriptedModel(KNOWN, delay=0.1)
    first_round = threading.Barrier(3, timeout=60)  # the first three replies wait for each other

    def handler(request: RecordedRequest, index: int) -> Reply:
        if index < 3:
            first_round.wait()
        return model(request, index)

    llm = scripted_llm(handler=handler)
    run(llm, max_workers=3, client_options={"timeout": 60})  # 60 s: only a hang waits this long
    assert llm.server.max_concurrency == 3


def test_a_rerun_is_served_from_the_cache(llm):
    first = run(llm)
    before = llm.server.request_count
    second = run(llm)
    assert llm.server.request_count == before == 22
    assert second.usage["cached_calls"] == 22 and second.usage["requests"] == 0
    assert second.summary().equals(first.summary())
    assert all(t.cached for c in second.clusters for t in c.conversation if t.role == "assistant")


def test_the_cache_is_off_with_cache_false(llm):
    run(llm, client_options={"cache": False})
    run(llm, client_options={"cache": False})
    assert llm.server.request_count == 44
    assert not llm.cache_dir.exists()


# --------------------------------------------------------------------------- keys and endpoints


def test_missing_key_is_an_error_before_any_work():
    with pytest.raises(cassia_sc.MissingAPIKeyError, match="OPENROUTER_API_KEY"):
        cassia_sc.run_batch(EXAMPLE, tissue="blood", species="human", model="m", progress=False)
    with pytest.raises(cassia_sc.MissingAPIKeyError, match="CASSIA_API_KEY"):
        cassia_sc.run_batch(
            EXAMPLE,
            tissue="blood",
            species="human",
            model="m",
            provider="https://llm.example.org/v1",
        )


def test_key_from_the_environment_is_sent_and_written_nowhere(llm, tmp_path, monkeypatch):
    secret = "fake-key-for-tests-NOT-A-SECRET-4242"
    monkeypatch.setenv("CASSIA_API_KEY", secret)
    cassia_sc.runCASSIA_batch(
        EXAMPLE, str(tmp_path / "out" / "pbmc"), tissue="blood", species="human", **llm.options()
    )
    assert {r.headers["authorization"] for r in llm.server.requests} == {f"Bearer {secret}"}
    written = list((tmp_path / "out").iterdir()) + list(llm.cache_dir.rglob("*.json"))
    assert len(written) == 5 + 22
    for path in written:
        assert secret not in path.read_text(), path


def test_dry_run_estimates_tokens_offline_without_a_key():
    plan = cassia_sc.run_batch(
        EXAMPLE, tissue="blood", species="human", model="m", dry_run=True, progress=False
    )
    assert plan.dry_run and all(c.status == "not_run" for c in plan.clusters)
    estimates = [c.estimated_prompt_tokens for c in plan.clusters]
    assert all(900 < e < 3000 for e in estimates)
    annotator_prompt = plan["0"].conversation[1].content
    assert annotator_prompt.endswith(EXAMPLE["markers"][0])


# --------------------------------------------------------------------------- real inputs


def test_marker100_end_to_end(scripted_llm):
    table = pd.read_csv(MARKER100, encoding="utf-8-sig")
    known = {
        signature([g.strip() for g in row["Marker List"].split(",")]): row["True Cell Type"]
        for _, row in table.iterrows()
    }
    llm = scripted_llm(known)
    result = run(
        llm,
        MARKER100,
        celltype_column="True Cell Type",
        gene_column_name="Marker List",
        max_workers=8,
    )
    assert len(result) == 100 and not result.failed
    predicted = [c.main_cell_type for c in result.clusters]
    assert predicted == table["True Cell Type"].tolist()
    # Two rows list exactly the same markers: the second is answered from the cache.
    assert table["Marker List"].nunique() == 99
    assert llm.server.request_count == 2 * 99


def test_runcassia_batch_writes_the_four_files_with_cassia_columns(llm, tmp_path):
    summary = cassia_sc.runCASSIA_batch(
        EXAMPLE, str(tmp_path / "pbmc.csv"), tissue="blood", species="human", **llm.options()
    )
    for suffix in ("summary.csv", "full.csv", "conversations.json", "report.html", "record.json"):
        assert (tmp_path / f"pbmc_{suffix}").is_file()
    on_disk = pd.read_csv(tmp_path / "pbmc_summary.csv", dtype={"Cluster ID": str})
    assert list(on_disk.columns) == [*SUMMARY_COLUMNS, "Conversation History"]
    assert on_disk["Predicted General Cell Type"].tolist() == [TRUTH[str(i)] for i in range(11)]
    assert on_disk["Marker Number"].tolist() == [len(m.split(", ")) for m in EXAMPLE["markers"]]
    assert list(summary.columns) == SUMMARY_COLUMNS
    record = json.loads((tmp_path / "pbmc_record.json").read_text())
    first = record["clusters"][0]
    # CASSIA's shapes: the conversations JSON and the full CSV hold the same replies.
    conversations = json.loads((tmp_path / "pbmc_conversations.json").read_text())
    assert list(conversations) == [str(i) for i in range(11)]
    replies = conversations["0"]
    assert replies["annotations"] == [first["annotator"][-1]["content"]]
    assert replies["validations"] == [first["validator"][-1]["content"]]
    assert json.loads(replies["formatting"])["main_cell_type"] == TRUTH["0"]
    assert replies["scoring"] == ""
    history = pd.read_csv(tmp_path / "pbmc_full.csv")["Conversation History"][0]
    assert history.startswith("Final Annotation Agent: " + replies["annotations"][0])
    assert " | Coupling Validator: " + replies["validations"][0] in history
    assert history.endswith(" | Formatting Agent: " + replies["formatting"])
    assert [t["role"] for t in first["annotator"]] == ["system", "user", "assistant"]
    assert [t["role"] for t in first["validator"]] == ["system", "user", "assistant"]
    assert first["formatter"] == []


def test_each_reply_keeps_its_own_token_usage(scripted_llm):
    def annotator(request, markers):
        return Reply(
            content=annotation_reply("T cell", key_markers=tuple(markers[:1])),
            prompt_tokens=700,
            completion_tokens=90,
        )

    def validator(request, markers):
        return Reply(content=verdict_reply(True), prompt_tokens=800, completion_tokens=20)

    result = run(scripted_llm(annotator=annotator, validator=validator))
    cluster = result["0"]
    assert (cluster.prompt_tokens, cluster.completion_tokens) == (1500, 110)
    replies = [t for t in cluster.conversation if t.role == "assistant"]
    assert [(t.prompt_tokens, t.completion_tokens) for t in replies] == [(700, 90), (800, 20)]
    assert result.conversations()[0]["validator"][-1]["prompt_tokens"] == 800
    assert result.usage["prompt_tokens"] == 11 * 1500


def test_requests_per_minute_paces_the_whole_pool(llm):
    began = time.monotonic()
    run(llm, max_workers=4, client_options={"requests_per_minute": 1200})
    starts = sorted(r.time for r in llm.server.requests)
    assert llm.server.request_count == 22
    # 1200 a minute is one start every 0.05 s across the pool, so the n-th request to arrive
    # came at least n such steps after the run began. A slow machine only adds to that.
    for n, start in enumerate(starts):
        assert start - began >= n * 0.05 - 1e-6, n


def test_reasoning_and_temperature_are_sent_and_dropped_when_refused(scripted_llm, caplog):
    model = ScriptedModel(KNOWN)

    def handler(request, index):
        if "reasoning_effort" in request.body:
            return Reply(
                status=400, error_message="Unrecognized request argument: reasoning_effort"
            )
        return model(request, index)

    caplog.set_level(logging.WARNING, logger="cassia_sc")
    llm = scripted_llm(handler=handler)
    result = run(llm, max_workers=1, client_options={"reasoning": "high", "temperature": 0.3})
    assert not result.failed
    assert llm.server.requests[0].body["reasoning_effort"] == "high"
    assert all(r.body["temperature"] == 0.3 for r in llm.server.requests)
    assert all("reasoning_effort" not in r.body for r in llm.server.requests[1:])
    assert "refused 'reasoning'" in caplog.text


def test_64_workers_share_the_client_and_the_cache_safely(scripted_llm):
    table = pd.read_csv(MARKER100, encoding="utf-8-sig")
    options = {
        "celltype_column": "True Cell Type",
        "gene_column_name": "Marker List",
        "max_workers": 64,
    }
    llm = scripted_llm(delay=0.05)
    first = run(llm, MARKER100, **options)
    # The two rows with the same markers make one request each time, even when they
    # are annotated at the same moment.
    assert llm.server.max_concurrency <= 64 and llm.server.request_count == 2 * 99
    second = run(llm, MARKER100, **options)
    assert llm.server.request_count == 2 * 99  # the re-run made none
    assert len(list(llm.cache_dir.rglob("*.json"))) == 2 * 99
    assert not first.failed and second.summary().equals(first.summary())
    assert len(table) == len(second)


def test_an_unknown_provider_name_is_refused():
    with pytest.raises(cassia_sc.CassiaError, match="Unknown provider 'openrouterr'"):
        cassia_sc.run_batch(
            EXAMPLE, tissue="blood", species="human", model="m", provider="openrouterr"
        )


def test_connection_errors_are_retried_then_stop_a_run_that_never_reached_the_server(
    scripted_llm,
):
    closed = scripted_llm()
    closed.server.close()  # nothing listens on this port any more
    client = closed.client(cache=False, retry_delay=0.01, max_retries=1)
    with pytest.raises(cassia_sc.ProviderUnreachable, match=r"Cannot reach http://127.0.0.1:\d+"):
        cassia_sc.run_batch(EXAMPLE, tissue="blood", species="human", client=client, progress=False)
    # A call gave up after its retries; the run stopped rather than send 11 clusters' worth.
    assert client.usage.requests < 2 * 11


def test_progress_bar_counts_clusters_and_failures(scripted_llm, capsys):
    def annotator(request, markers):
        return (
            Reply(status=400, error_message="bad")
            if signature(markers) == SIGNATURES["1"]
            else None
        )

    run(scripted_llm(KNOWN, annotator=annotator), progress=True)
    err = capsys.readouterr().err
    assert "Annotating clusters" in err and "11/11" in err and "failed=1" in err


def test_model_text_is_escaped_in_the_report(scripted_llm, tmp_path):
    hostile = '<img src=x onerror=alert(1)></script><script>alert("x")</script>'

    def annotator(request, markers):
        return Reply(content=annotation_reply(hostile, key_markers=tuple(markers[:1])))

    llm = scripted_llm(annotator=annotator)
    cassia_sc.runCASSIA_batch(
        EXAMPLE,
        str(tmp_path / "x"),
        model="m",
        tissue="blood",
        species="human",
        client=llm.client(**FAST_RETRIES),
        progress=False,
    )
    html = (tmp_path / "x_report.html").read_text()
    assert "<img src=x" not in html and "<script>alert" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


def test_runcassia_batch_max_retries_counts_like_cassia(scripted_llm, tmp_path):
    """CASSIA's max_retries=0 still has its HTTP client's 2 retries per call: so do we."""
    failures: list[int] = []

    def annotator(request, markers):
        if signature(markers) == SIGNATURES["0"] and len(failures) < 2:
            failures.append(1)
            return Reply(status=500, error_message="flaky")
        return None

    llm = scripted_llm(KNOWN, annotator=annotator)
    summary = cassia_sc.runCASSIA_batch(
        EXAMPLE.head(1),
        str(tmp_path / "run"),
        tissue="blood",
        species="human",
        **llm.options(max_retries=0),
    )
    assert summary["Status"].tolist() == ["ok"]
    assert llm.server.request_count == 4  # the annotator three times, then the validator


def test_the_ontology_index_is_built_while_the_model_answers(scripted_llm, monkeypatch):
    """The 0.4 s index build is off the critical path: it runs during the first call."""
    pytest.importorskip("cellxgene_ontology_guide")
    import cassia_sc.ontology as ontology_module

    monkeypatch.setattr(ontology_module, "_shared_index", None)  # as in a fresh process
    monkeypatch.setattr(ontology_module, "_shared", {})
    model = ScriptedModel(KNOWN)
    built_during_calls = threading.Event()

    def handler(request: RecordedRequest, index: int) -> Reply:
        if index == 0:  # hold the first reply until the index is there (or 30 s pass)
            deadline = time.monotonic() + 30
            while ontology_module._shared_index is None and time.monotonic() < deadline:
                time.sleep(0.01)
            if ontology_module._shared_index is not None:
                built_during_calls.set()
        return model(request, index)

    # A client that waits as long as the held reply: no retry lets the run end meanwhile.
    result = run(scripted_llm(handler=handler), client_options={"timeout": 60})
    assert built_during_calls.is_set()
    assert result["0"].ontology_term_id.startswith("CL:")
