"""Provider batch APIs end to end: rounds of batches through the real ``openai`` client
against the local server's batch routes (OpenAI's and Anthropic's wire formats), the job
records that keep a killed run from paying twice, and ``cassia-sc jobs``."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from llm_server import LLMServer
from scripted_model import ScriptedModel, agent_of, markers_of, signature

import cassia_sc
from cassia_sc.cli import main
from cassia_sc.datasets import example_truth
from cassia_sc.errors import AuthenticationFailed, CassiaError
from cassia_sc.provider_batches import JobStore

HERE = Path(__file__).parent
EXAMPLE = cassia_sc.loadmarker("pbmc68k_processed")
N = len(EXAMPLE)
SIGNATURES = {row.cluster: signature(row.markers.split(", ")) for row in EXAMPLE.itertuples()}
TRUTH = dict(zip(example_truth()["cluster"], example_truth()["cell_type"], strict=True))
KNOWN = {SIGNATURES[c]: TRUTH[c] for c in SIGNATURES}
BASE = {"tissue": "blood", "species": "human", "progress": False}
POLL = 0.02  # seconds between polls: no test waits out a real one
HANG = 60.0


def batch_client(llm, api: str = "openai", **options) -> cassia_sc.LLMClient:
    return llm.client(batch_api=api, batch_poll_interval=POLL, **options)


def rounds(server: LLMServer) -> list[list[str]]:
    """The agents of each batch's items, batch by batch, in the order they were made."""
    by_batch: dict[str, list[str]] = {}
    for item in server.batch_items:
        by_batch.setdefault(item.batch_id, []).append(agent_of(item))
    return [sorted(set(agents)) for agents in by_batch.values()]


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_a_batch_run_gives_the_live_runs_labels_round_by_round(scripted_llm, api):
    live = scripted_llm(KNOWN)
    expected = cassia_sc.run_batch(EXAMPLE, **(BASE | live.options()))

    llm = scripted_llm(KNOWN)
    result = cassia_sc.run_batch(EXAMPLE, **BASE, client=batch_client(llm, api))

    assert [c.main_cell_type for c in result.clusters] == [
        c.main_cell_type for c in expected.clusters
    ]
    assert all(c.status == "ok" for c in result.clusters)
    assert llm.server.request_count == 0  # nothing sent live
    # One batch per round: every annotator, then every validator.
    assert rounds(llm.server) == [["annotator"], ["validator"]]
    assert len(llm.server.batch_items) == 2 * N
    # Every reply is in the cache: the same run again sends nothing.
    again = cassia_sc.run_batch(EXAMPLE, **BASE, client=batch_client(llm, api))
    assert len(llm.server.batch_items) == 2 * N and len(llm.server.batches) == 2
    assert again.usage["cached_calls"] == 2 * N
    assert result.usage["requests"] == 2 * N  # an item is a request billed


def test_failed_and_expired_items_go_in_the_next_batch(scripted_llm):
    llm = scripted_llm(KNOWN)
    tried: dict[str, int] = {}

    faulted = []

    def fault(custom_id: str, index: int) -> str | None:
        tried[custom_id] = tried.get(custom_id, 0) + 1
        if tried[custom_id] > 1 or index > 1:
            return None
        faulted.append(custom_id)  # the first two items of a batch, the first time
        return "error" if index == 0 else "expire"

    llm.server.batch_item_fault = fault
    result = cassia_sc.run_batch(EXAMPLE, **BASE, client=batch_client(llm))
    assert all(c.status == "ok" for c in result.clusters)
    batches = [record.custom_ids for record in llm.server.batches.values()]
    # Each failed item goes again in the very next batch (beside the other clusters'
    # next calls), and nowhere else.
    for custom_id in faulted:
        holding = [number for number, ids in enumerate(batches) if custom_id in ids]
        assert len(holding) == 2 and holding[1] == holding[0] + 1
    assert sum(map(len, batches)) == 2 * N + len(faulted)  # sent
    assert len(llm.server.batch_items) == 2 * N  # answered
    assert len(faulted) >= 4  # both kinds, in more than one round


def test_an_item_that_keeps_failing_fails_its_cluster_alone(scripted_llm):
    llm = scripted_llm(KNOWN)
    doomed = SIGNATURES["3"]

    def handler(request, index):
        if agent_of(request) == "annotator" and signature(markers_of(request)) == doomed:
            from llm_server import Reply

            return Reply(status=500)
        return model(request, index)

    model = ScriptedModel(KNOWN)
    llm.server.handler = handler
    result = cassia_sc.run_batch(EXAMPLE, **BASE, client=batch_client(llm, max_retries=1))
    assert result["3"].status == "failed" and "HTTP 500" in result["3"].error
    assert all(c.status == "ok" for c in result.clusters if c.cluster != "3")


def test_a_refused_key_stops_the_run(scripted_llm):
    from llm_server import Reply

    llm = scripted_llm(KNOWN)
    llm.server.batch_handler = lambda request, index: Reply(status=401)
    with pytest.raises(AuthenticationFailed):
        cassia_sc.run_batch(EXAMPLE, **BASE, client=batch_client(llm))


def test_a_provider_without_a_batch_api_is_refused_before_any_call():
    with pytest.raises(CassiaError, match="no batch API"):
        cassia_sc.LLMClient(model="m", provider="openrouter", api_key="k", batch_api=True)
    with pytest.raises(CassiaError, match="batch_api must be"):
        cassia_sc.LLMClient(model="m", provider="http://127.0.0.1:9/v1", batch_api="vllm")
    with pytest.raises(CassiaError, match="needs the cache"):
        cassia_sc.LLMClient(model="m", provider="openai", api_key="k", batch_api=True, cache=False)


def start_batch_run(llm, tmp_path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            str(HERE / "batch_process.py"),
            llm.base_url,
            str(llm.cache_dir),
            str(tmp_path / "out"),
            "4",
            "openai",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
def test_a_run_killed_while_polling_resumes_without_sending_anything_twice(scripted_llm, tmp_path):
    llm = scripted_llm(KNOWN)
    llm.server.batch_delay = 3600.0  # the first batch does not end while the process lives
    process = start_batch_run(llm, tmp_path)
    deadline = time.monotonic() + HANG
    try:
        while llm.server.poll_count < 2:  # sent, and polled: the run is waiting
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the batch was never polled"
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=HANG)
    assert len(llm.server.batches) == 1
    (job,) = JobStore(llm.cache_dir).jobs()
    assert job.status == "running" and len(job.keys) == N

    # The listing shows it; then the provider finishes it.
    assert main(["jobs", "--cache-dir", str(llm.cache_dir)]) == 0
    llm.server.batch_delay = 0.0
    for record in llm.server.batches.values():
        record.delay = 0.0
    result = cassia_sc.run_batch(EXAMPLE, **BASE, client=batch_client(llm))
    assert all(c.status == "ok" for c in result.clusters)
    # The annotators' batch was polled again, never sent again: one more batch, the
    # validators'.
    assert len(llm.server.batches) == 2
    assert len(llm.server.batch_items) == 2 * N
    assert [job.status for job in JobStore(llm.cache_dir).jobs()] == ["collected"] * 2


def test_jobs_collect_caches_an_ended_batch_for_the_next_run(scripted_llm, tmp_path, capsys):
    llm = scripted_llm(KNOWN)
    client = batch_client(llm)
    stop_after_first_round = llm.server.batch_handler

    # A run stopped by Ctrl-C while its first batch is out: the batch is remembered.
    llm.server.batch_delay = 3600.0
    with pytest.raises(cassia_sc.BatchInterrupted):
        _interrupt_while_waiting(llm, client)
    assert stop_after_first_round is None
    for record in llm.server.batches.values():
        record.delay = 0.0
    llm.server.batch_delay = 0.0

    assert main(["jobs", "collect", "--cache-dir", str(llm.cache_dir)]) == 0
    printed = capsys.readouterr().out
    assert "collected" in printed and f"{N:,} of {N:,} requests" in printed
    items = len(llm.server.batch_items)
    result = cassia_sc.run_batch(EXAMPLE, **BASE, client=batch_client(llm))
    assert all(c.status == "ok" for c in result.clusters)
    assert len(llm.server.batch_items) == items + N  # the validators' only


def _interrupt_while_waiting(llm, client) -> None:
    """Run a batch and raise KeyboardInterrupt in it once its first batch was polled."""
    import threading

    def interrupt() -> None:
        while llm.server.poll_count < 1:
            time.sleep(0.01)
        import _thread

        _thread.interrupt_main()

    threading.Thread(target=interrupt, daemon=True).start()
    cassia_sc.run_batch(EXAMPLE, **BASE, client=client)


def test_a_reply_cut_off_in_a_batch_goes_again_once_with_twice_the_room(scripted_llm):
    from llm_server import Reply

    def filled(request, index):
        return Reply(
            content="{", finish_reason="length", completion_tokens=request.body["max_tokens"]
        )

    llm = scripted_llm(handler=filled)
    result = cassia_sc.run_batch(EXAMPLE[:1], **BASE, client=batch_client(llm, max_retries=3))
    assert result["0"].status == "failed" and "cut off" in result["0"].error
    assert [item.body["max_tokens"] for item in llm.server.batch_items] == [4096, 8192]


def test_a_reply_stopped_by_the_models_context_in_a_batch_does_not_go_again(scripted_llm):
    from llm_server import Reply

    def stopped(request, index):
        return Reply(content="{", finish_reason="length", completion_tokens=300)

    llm = scripted_llm(handler=stopped)
    result = cassia_sc.run_batch(EXAMPLE[:1], **BASE, client=batch_client(llm, max_retries=3))
    assert result["0"].status == "failed" and "context" in result["0"].error
    assert len(llm.server.batch_items) == 1
