"""Interrupted runs: killed or Ctrl-C'd in a real process, then resumed from the cache."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from llm_server import LLMServer
from scripted_model import ScriptedModel

import cassia_sc
from cassia_sc.cache import ResponseCache

HERE = Path(__file__).parent
PLAN = 22  # 11 clusters x (annotator + validator) on the happy path


def start_batch(server: LLMServer, tmp_path: Path, workers: int = 2) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            str(HERE / "batch_process.py"),
            server.base_url,
            str(tmp_path / "cache"),
            str(tmp_path / "out"),
            str(workers),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for_requests(server: LLMServer, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while server.request_count < count:
        assert time.monotonic() < deadline, "the batch process made no progress"
        time.sleep(0.02)


def resume(server: LLMServer, tmp_path: Path, **options) -> cassia_sc.BatchResult:
    return cassia_sc.run_batch(
        cassia_sc.loadmarker("processed"),
        tissue="blood",
        species="human",
        model="test-model",
        provider=server.base_url,
        cache_dir=tmp_path / "cache",
        progress=False,
        **options,
    )


def test_a_killed_run_resumes_with_only_the_requests_it_had_not_completed(tmp_path):
    with LLMServer(ScriptedModel(delay=0.15)) as server:
        process = start_batch(server, tmp_path)
        wait_for_requests(server, 9)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        completed = len(ResponseCache(tmp_path / "cache"))
        assert 0 < completed < PLAN
        server.requests.clear()

        result = resume(server, tmp_path)

    assert server.request_count == PLAN - completed
    assert all(c.status == "ok" for c in result.clusters)
    assert result.usage["cached_calls"] == completed


def test_ctrl_c_stops_promptly_and_keeps_what_finished(tmp_path):
    with LLMServer(ScriptedModel(delay=0.3)) as server:
        process = start_batch(server, tmp_path, workers=2)
        wait_for_requests(server, 7)
        interrupted_at = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=15)
        stopped_after = time.monotonic() - interrupted_at
        assert process.returncode != 0
        assert stopped_after < 3, stderr.decode()
        assert b"KeyboardInterrupt" in stderr or b"BatchInterrupted" in stderr

        summary = pd.read_csv(tmp_path / "out_summary.csv", dtype={"Cluster ID": str})
        assert summary["Cluster ID"].tolist() == [str(i) for i in range(11)]
        statuses = summary["Status"].value_counts().to_dict()
        assert statuses.get("ok", 0) >= 1 and statuses.get("not_run", 0) >= 1
        assert set(statuses) <= {"ok", "not_run"}
        completed = len(ResponseCache(tmp_path / "cache"))
        server.requests.clear()

        result = resume(server, tmp_path)
    assert all(c.status == "ok" for c in result.clusters)
    assert server.request_count == PLAN - completed


@pytest.mark.parametrize("workers", [1, 4])
def test_interrupting_in_process_raises_with_every_cluster(tmp_path, workers):
    """A KeyboardInterrupt inside the main thread (as Ctrl-C in a notebook) keeps results."""
    with LLMServer(ScriptedModel(delay=0.2)) as server:
        timer = threading.Timer(0.5, lambda: signal.raise_signal(signal.SIGINT))
        timer.start()
        with pytest.raises(cassia_sc.BatchInterrupted) as raised:
            resume(server, tmp_path, max_workers=workers)
    partial = raised.value.result
    assert partial.interrupted and len(partial) == 11
    assert {c.status for c in partial.clusters} <= {"ok", "not_run"}
    assert any(c.status == "not_run" for c in partial.clusters)
