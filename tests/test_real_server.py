"""cassia_sc against real server software: llama.cpp's ``llama-server`` with SmolLM2-135M.

Every other test talks to our scripted server; these talk to a server written by others,
with a real (tiny) model, so that what such a server does (its chat templates, its grammar
for ``response_format``, its slots, its usage figures, its error messages) meets the
package at least once per CI run (issue 19).

The mechanics only are asserted: files written, every cluster present with a status, the
calls of each agent made, usage counted, a context overflow failing fast with the server's
own message. Never the labels: a 135M model cannot annotate cells (at temperature 0 it
often repeats itself until its context is full), and nothing here tests the biology.

Where a test must see the traffic, a pass-through proxy (our ``LLMServer``) sits between
the package and llama-server: it forwards each request body as the package sent it and
returns llama-server's response bytes and status untouched, and records both.

The server and the model are built and fetched by ``python tests/llama_env.py`` (minutes,
once per machine; ``.ci/run`` does it first). Without them these tests are skipped, unless
``CASSIA_SC_REQUIRE_REAL_SERVER=1`` (set by CI) makes their absence a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import anndata as ad
import pandas as pd
import pytest
from conftest import MARKER100
from llama_env import LlamaServer, built_server, fetched_model
from llm_server import LLMServer, RecordedRequest, Reply
from scripted_model import agent_of, annotation_reply

import cassia_sc

pytestmark = [pytest.mark.real_server, pytest.mark.slow]

MODEL = "smollm2-135m"
WORKERS = 2
#: Context per slot (-c is this x WORKERS). The annotator's prompt at 10 markers is about
#: 380 tokens; a reply that never ends (SmolLM2 at temperature 0, often) stops where the
#: slot is full: after 130 tokens here, instead of minutes. The validator's prompt carries
#: the annotation and may not fit: that failure is one of the mechanics too.
CTX_PER_SLOT = 512
#: The validator test's slots: room for its prompt (about 600 tokens) and a verdict.
CTX_PER_SLOT_VALIDATOR = 1024
N_GENES = 10
REQUIRE = "CASSIA_SC_REQUIRE_REAL_SERVER"
AGENTS = ("annotator", "validator", "formatter")
STATUSES = {"ok", "failed", "implausible"}
PREDICTED = "llamacpp:tokens_predicted_total"
#: llama-server's words for a prompt longer than the slot (tools/server/server-context.cpp).
OVERFLOW = "exceeds the available context size"
#: How the marker100 rows are read and what the model is told of them.
MARKER100_ROWS = {
    "tissue": "kidney",
    "species": "human",
    "celltype_column": "True Cell Type",
    "gene_column_name": "Marker List",
}


def _server_and_model() -> tuple[Path, Path]:
    binary, model = built_server(), fetched_model(MODEL)
    if binary is not None and model is not None:
        return binary, model
    missing = "llama-server" if binary is None else f"the {MODEL} model"
    if os.environ.get(REQUIRE):
        pytest.fail(f"{missing} is not built/fetched; .ci/run runs `python tests/llama_env.py`.")
    pytest.skip(f"needs {missing}: run `python tests/llama_env.py` (minutes, once per machine)")


def start(folder: Path, ctx_per_slot: int, slots: int = WORKERS) -> LlamaServer:
    """``llama-server -m SmolLM2 -c ctx_per_slot*slots -np slots`` on 127.0.0.1."""
    binary, model = _server_and_model()
    return LlamaServer(
        model,
        alias=MODEL,
        ctx=ctx_per_slot * slots,
        slots=slots,
        binary=binary,
        log=folder / "server.log",
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    with start(tmp_path_factory.mktemp("llama"), CTX_PER_SLOT) as running:
        yield running


class PassThrough:
    """Our LLMServer in front of llama-server: bodies in and bytes out as they are, recorded.

    ``answer(request)`` may return a Reply of its own instead (a scripted annotator).
    """

    def __init__(self, target: LlamaServer, answer: Callable[[RecordedRequest], Reply | None]):
        self.target = target
        self.answer = answer
        self.exchanges: list[tuple[str, int, dict]] = []  # agent, status, response JSON
        self._lock = threading.Lock()
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self.server = LLMServer(self._handle, models=[MODEL])
        self.base_url = self.server.base_url

    def _handle(self, request: RecordedRequest, index: int) -> Reply:
        scripted = self.answer(request)
        if scripted is not None:
            return scripted
        forwarded = urllib.request.Request(
            f"{self.target.base_url}/chat/completions",
            data=json.dumps(request.body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with self._opener.open(forwarded, timeout=300) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        with self._lock:
            self.exchanges.append((agent_of(request), status, json.loads(raw)))
        return Reply(status=status, raw_body=raw)

    def usage(self) -> tuple[int, int]:
        """Prompt and completion tokens llama-server reported, over all its replies."""
        replies = [body.get("usage") or {} for _, _, body in self.exchanges]
        return sum(u.get("prompt_tokens", 0) for u in replies), sum(
            u.get("completion_tokens", 0) for u in replies
        )

    def close(self) -> None:
        self.server.close()


def forward_all(request: RecordedRequest) -> Reply | None:
    return None


def calls(cluster: dict, agent: str) -> int:
    """Requests one agent made for a cluster: its user turns in the record's conversation
    (a failed call leaves its request and no reply)."""
    return sum(1 for turn in cluster.get(agent, []) if turn["role"] == "user")


def replies(cluster: dict, agent: str) -> list[str]:
    return [turn["content"] for turn in cluster.get(agent, []) if turn["role"] == "assistant"]


def cached_tokens(clusters: Iterable[dict]) -> tuple[int, int]:
    """Prompt and completion tokens of the replies served from the cache."""
    turns = [
        turn
        for cluster in clusters
        for agent in AGENTS
        for turn in cluster.get(agent, [])
        if turn["role"] == "assistant" and turn["cached"]
    ]
    return sum(t["prompt_tokens"] for t in turns), sum(t["completion_tokens"] for t in turns)


def assert_agents_called(cluster: dict) -> None:
    """The annotator was asked; an annotator reply without JSON went to the formatter; an
    answer that was kept (ok) went to the validator. ``cluster``: one record conversation."""
    assert cluster["status"] in STATUSES, cluster["status"]
    assert calls(cluster, "annotator") >= 1, cluster
    if any("{" not in reply for reply in replies(cluster, "annotator")):
        assert calls(cluster, "formatter") >= 1, cluster
    if cluster["status"] == "ok":
        assert calls(cluster, "validator") >= 1, cluster


def test_the_server_lists_the_model_with_one_slot_per_worker(server):
    status, body = server.get("/v1/models")
    assert status == 200 and MODEL in [m["id"] for m in json.loads(body)["data"]]
    status, body = server.get("/slots")
    assert status == 200 and len(json.loads(body)) == WORKERS


def test_the_command_annotates_the_example_against_the_server(server, tmp_path):
    environment = os.environ | {
        "CASSIA_SC_CACHE_DIR": str(tmp_path / "cache"),
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }
    command = [
        str(Path(sys.executable).parent / "cassia-sc"),  # where pip puts it; PATH may lack it
        "annotate",
        "pbmc68k_reduced",
        "--tissue",
        "blood",
        "--species",
        "human",
        "--model",
        MODEL,
        "--provider",
        server.base_url,
        "--max-workers",
        str(WORKERS),
        "--n-genes",
        str(N_GENES),
        "--output",
        str(tmp_path / "pbmc.h5ad"),
        "--output-name",
        str(tmp_path / "pbmc"),
    ]
    predicted = server.metrics()[PREDICTED]
    done = subprocess.run(
        command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=900
    )
    predicted = server.metrics()[PREDICTED] - predicted
    # 0: every cluster ok; 3: some failed. Both are the mechanics working.
    assert done.returncode in (0, 3), done.stderr[-3000:] + server.log_text()[-2000:]
    for suffix in ("summary.csv", "full.csv", "conversations.json", "report.html", "record.json"):
        assert (tmp_path / f"pbmc_{suffix}").is_file(), suffix

    clusters = sorted(str(c) for c in cassia_sc.datasets.example_truth()["cluster"])
    summary = pd.read_csv(tmp_path / "pbmc_summary.csv", dtype={"Cluster ID": str})
    assert sorted(summary["Cluster ID"]) == clusters
    assert set(summary["Status"]) <= STATUSES

    record = ad.read_h5ad(tmp_path / "pbmc.h5ad").uns["cassia"]
    table = record["results"]
    assert sorted(table["cluster"].astype(str)) == clusters
    assert set(table["status"]) <= STATUSES
    usage = {name: int(value) for name, value in record["usage"].items()}
    assert usage["requests"] >= len(clusters)  # every cluster's annotator, at least
    assert usage["requests"] == int(table["requests"].sum())

    conversations = {c["cluster"]: c for c in json.loads(record["conversations"])}
    assert sorted(conversations) == clusters
    # Each cluster keeps what its answer took; the run's usage leaves out the replies
    # served from the cache (a revision that repeats a request), paid for once.
    cached = cached_tokens(conversations.values())
    assert usage["prompt_tokens"] == int(table["prompt_tokens"].sum()) - cached[0] > 0
    assert usage["completion_tokens"] == int(table["completion_tokens"].sum()) - cached[1] > 0
    # Every token the server generated is counted, those of failed calls (cut off) too.
    assert usage["completion_tokens"] == predicted
    for cluster in conversations.values():
        assert_agents_called(cluster)


def test_runcassia_batch_on_three_marker100_rows(server, tmp_path):
    rows = pd.read_csv(MARKER100, encoding="utf-8-sig").head(3)
    proxy = PassThrough(server, forward_all)
    try:
        summary = cassia_sc.runCASSIA_batch(
            rows,
            str(tmp_path / "m100"),
            model=MODEL,
            provider=proxy.base_url,
            n_genes=N_GENES,
            max_workers=WORKERS,
            cache_dir=str(tmp_path / "cache"),
            **MARKER100_ROWS,
        )
    finally:
        proxy.close()
    for suffix in ("summary.csv", "full.csv", "conversations.json", "report.html", "record.json"):
        assert (tmp_path / f"m100_{suffix}").is_file(), suffix
    assert sorted(summary["Cluster ID"]) == sorted(rows["True Cell Type"])
    assert set(summary["Status"]) <= STATUSES
    record = json.loads((tmp_path / "m100_record.json").read_text())
    assert sorted(c["cluster"] for c in record["clusters"]) == sorted(rows["True Cell Type"])
    for cluster in record["clusters"]:
        assert_agents_called(cluster)
    # Every token llama-server reported is in the summary, those of failed calls (a reply
    # cut off) included. A reply served from the cache counts again, unsent: the summary
    # may hold more, never less.
    assert len(proxy.exchanges) >= 3
    counted = (int(summary["Prompt Tokens"].sum()), int(summary["Completion Tokens"].sum()))
    reported = proxy.usage()
    assert counted[0] >= reported[0] and counted[1] >= reported[1], (counted, reported)


def test_the_validator_and_formatter_get_llama_servers_replies(tmp_path):
    """The annotator's replies are scripted (a plausible answer; in prose, without JSON, for
    one cluster): the validator, and the formatter for the prose, are asked on llama-server
    itself with the package's response_format, and what it answers is read."""
    rows = pd.read_csv(MARKER100, encoding="utf-8-sig").head(3)
    types, lists = rows["True Cell Type"], rows["Marker List"]
    first_markers = {m.split(",")[0]: t for t, m in zip(types, lists, strict=True)}
    prose = rows["True Cell Type"][0]

    def annotator(request: RecordedRequest) -> Reply | None:
        if agent_of(request) != "annotator":
            return None
        # The marker list is a line of the first question (revisions come after it).
        lines = request.messages[1]["content"].splitlines()
        markers = next(line for line in lines if line.split(",")[0] in first_markers).split(", ")
        cell_type = first_markers[markers[0]]
        if cell_type == prose:
            reply = f"These markers point to the {cell_type}: {', '.join(markers[:3])}."
        else:
            reply = annotation_reply(cell_type, key_markers=tuple(markers[:3]))
        return Reply(content=reply, prompt_tokens=0, completion_tokens=0)

    with start(tmp_path, CTX_PER_SLOT_VALIDATOR) as server:
        proxy = PassThrough(server, annotator)
        try:
            result = cassia_sc.run_batch(
                rows,
                model=MODEL,
                provider=proxy.base_url,
                n_genes=N_GENES,
                max_workers=WORKERS,
                cache=False,
                progress=False,
                **MARKER100_ROWS,
            )
        finally:
            proxy.close()
    asked = [agent for agent, _, _ in proxy.exchanges]
    assert "annotator" not in asked
    assert asked.count("validator") >= 2 and asked.count("formatter") >= 1, asked
    for cluster in result.clusters:
        assert cluster.status in STATUSES, cluster.status
        # The verdict read from llama-server's reply, or None when none could be had (the
        # annotation is then kept, with the reason).
        assert cluster.validation_passed in (True, False, None)
    assert result.usage["prompt_tokens"] == proxy.usage()[0]
    assert result.usage["completion_tokens"] == proxy.usage()[1]


def test_a_context_overflow_fails_fast_with_the_servers_message(tmp_path):
    binary, model = _server_and_model()
    rows = pd.read_csv(MARKER100, encoding="utf-8-sig").head(1)  # 50 markers: ~600 tokens
    with LlamaServer(
        model, alias=MODEL, ctx=512, slots=1, binary=binary, log=tmp_path / "server.log"
    ) as small:
        result = cassia_sc.run_batch(
            rows,
            model=MODEL,
            provider=small.base_url,
            cache=False,
            progress=False,
            **MARKER100_ROWS,
        )
    (cluster,) = result.clusters
    assert cluster.status == "failed"
    assert OVERFLOW in (cluster.error or ""), cluster.error
    # Fast: the request and one retry at most, not a run of retries and timeouts.
    assert cluster.requests <= 2, cluster.requests
