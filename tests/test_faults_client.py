"""The model client under faults: a dripping server, an unwritable cache, hostile text and
numbers, keys echoed in errors, replies cut off by ``max_tokens``, and rate-limit storms.

Everything goes through real HTTP: the scripted server of ``llm_server`` with the real
``openai`` client, or, for bytes sent one at a time, a raw socket server written here. No
assertion rests on a duration: the tests wait on events, count requests and compare the
order in which the server saw them; a long timeout only guards against a hang.
"""

from __future__ import annotations

import json
import logging
import math
import re
import select
import socket
import threading
import time
from pathlib import Path
from urllib.parse import quote, quote_plus

import pandas as pd
import pytest
import scanpy as sc
from llm_server import RecordedRequest, Reply
from scripted_model import ScriptedModel, agent_of, annotation_reply, signature, verdict_reply

import cassia_sc
from cassia_sc import LLMClient
from cassia_sc.cli import main
from cassia_sc.errors import CallCancelled
from cassia_sc.llm import RequestPacer

EXAMPLE = cassia_sc.loadmarker("pbmc68k_processed")
SIGNATURES = {row.cluster: signature(row.markers.split(", ")) for row in EXAMPLE.itertuples()}
#: Quick retries: no test waits out a real backoff.
FAST = {"retry_delay": 0.01, "max_retry_delay": 2.0, "timeout": 30.0}
MESSAGES = [
    {"role": "system", "content": "You are a cell-type annotator."},
    {"role": "user", "content": "Markers: CD3E, CD3D, CD2. Which cell type?"},
]
HANG = 60  # seconds; only a hang waits this long


def run(client: LLMClient, marker=EXAMPLE, **options) -> cassia_sc.BatchResult:
    """run_batch on ``marker`` with ``client``, quietly."""
    settings = {"tissue": "blood", "species": "human", "client": client, "progress": False}
    return cassia_sc.run_batch(marker, **(settings | options))


# ----------------------------------------------------------------- a server that drips bytes


def _chat_reply(content: str = "T cell") -> bytes:
    body = json.dumps(
        {
            "id": "chatcmpl-drip",
            "object": "chat.completion",
            "created": 0,
            "model": "test-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
        }
    ).encode()
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


class DripServer:
    """A raw HTTP/1.1 server on 127.0.0.1 that sends its replies one byte at a time.

    Each connection is kept alive and answered request after request with a valid chat
    completion. Requests from number ``drip_from`` on (0-based, over the server's life) are
    answered a byte every ``interval`` seconds: status line and headers included, or only
    the body when ``headers_at_once``. A whole dripped reply takes about 30 s.

    Attributes
    ----------
    dripping
        Set when a dripped reply has begun.
    finished
        Set when a dripped reply was sent whole.
    hung_up
        Set when the client closed a connection in the middle of a dripped reply.
    """

    def __init__(
        self, *, interval: float = 0.1, drip_from: int = 0, headers_at_once: bool = False
    ) -> None:
        self.interval = interval
        self.drip_from = drip_from
        self.headers_at_once = headers_at_once
        self.requests = 0
        self.connections = 0
        self.dripping = threading.Event()
        self.finished = threading.Event()
        self.hung_up = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/v1"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            pending = b""
            while not self._closed.is_set():
                try:
                    while b"\r\n\r\n" not in pending:
                        chunk = connection.recv(65536)
                        if not chunk:
                            return
                        pending += chunk
                    head, _, pending = pending.partition(b"\r\n\r\n")
                    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
                    while len(pending) < length:
                        chunk = connection.recv(65536)
                        if not chunk:
                            return
                        pending += chunk
                    pending = pending[length:]
                    with self._lock:
                        index = self.requests
                        self.requests += 1
                    reply = _chat_reply()
                    if index < self.drip_from:
                        connection.sendall(reply)
                    elif not self._drip(connection, reply):
                        return
                except OSError:
                    return

    def _drip(self, connection: socket.socket, reply: bytes) -> bool:
        start = reply.index(b"\r\n\r\n") + 4 if self.headers_at_once else 0
        connection.sendall(reply[:start])
        self.dripping.set()
        for position in range(start, len(reply)):
            readable, _, _ = select.select([connection], [], [], self.interval)
            if self._closed.is_set():
                return False
            if readable and not connection.recv(1):  # the client hung up
                self.hung_up.set()
                return False
            try:
                connection.sendall(reply[position : position + 1])
            except OSError:
                self.hung_up.set()
                return False
        self.finished.set()
        return True

    def close(self) -> None:
        self._closed.set()
        self._listener.close()


@pytest.mark.parametrize(
    ("drip_from", "headers_at_once"),
    [(0, False), (0, True), (1, True)],
    ids=["status-line-on", "body-only", "body-on-a-kept-alive-connection"],
)
def test_timeout_bounds_the_whole_request_against_a_server_dripping_bytes(
    drip_from, headers_at_once
):
    server = DripServer(drip_from=drip_from, headers_at_once=headers_at_once)
    client = LLMClient(
        model="test-model", provider=server.base_url, timeout=1.0, max_retries=0, cache=False
    )
    try:
        if drip_from:
            assert client.complete(MESSAGES).content == "T cell"  # answered at once
        with pytest.raises(cassia_sc.LLMError, match="timed out"):
            client.complete(MESSAGES, sample=1)
        # It gave up while the server still had most of the reply to send (a whole reply
        # takes 30 s at a byte every 0.1 s), and hung up on it: nothing is left reading.
        assert server.dripping.is_set() and not server.finished.is_set()
        assert server.hung_up.wait(HANG)
        assert server.connections == 1
    finally:
        client.close()
        server.close()


# ------------------------------------------------------------------ a cache that cannot be written


def _paid_replies(request: RecordedRequest, index: int) -> Reply:
    """Every annotator reply costs 700 + 90 tokens, every validator reply 800 + 20."""
    if agent_of(request) == "validator":
        return Reply(content=verdict_reply(True), prompt_tokens=800, completion_tokens=20)
    return Reply(
        content=annotation_reply("T cell", key_markers=("CD3E",)),
        prompt_tokens=700,
        completion_tokens=90,
    )


def _file_in_place_of_the_folder(tmp_path: Path) -> Path:
    (tmp_path / "a-file").write_text("not a folder")
    return tmp_path / "a-file" / "cache"


def _half_the_shards_blocked(tmp_path: Path) -> Path:
    folder = tmp_path / "half-full"
    folder.mkdir()
    for shard in range(128):  # entries go to folder/<first two hex digits>/: half are files
        (folder / f"{shard:02x}").write_text("in the way")
    return folder


@pytest.mark.parametrize("blocked", [_file_in_place_of_the_folder, _half_the_shards_blocked])
def test_a_cache_that_cannot_be_written_warns_once_and_counts_every_token(
    scripted_llm, tmp_path, caplog, blocked
):
    caplog.set_level(logging.WARNING, logger="cassia_sc")
    llm = scripted_llm(handler=_paid_replies)
    client = llm.client(cache_dir=blocked(tmp_path), **FAST)

    result = run(client)

    assert [c.status for c in result.clusters] == ["ok"] * 11
    assert llm.server.request_count == 22
    assert (result.usage["prompt_tokens"], result.usage["completion_tokens"]) == (
        11 * 1500,
        11 * 110,
    )
    assert (client.usage.prompt_tokens, client.usage.completion_tokens) == (11 * 1500, 11 * 110)
    about_the_cache = [r for r in caplog.records if "cache" in r.getMessage().lower()]
    assert len(about_the_cache) == 1, [r.getMessage() for r in about_the_cache]


# ------------------------------------------------------------------ hostile text and numbers

#: Raw control characters, a C1 control, a lone surrogate, CRLF and a tab.
HOSTILE_TEXT = "B\x00 cell\x07\x1b[0m\ud800 \x85ok\r\nnext\tline\x7f"
CLEANED_TEXT = "B cell[0m ok\nnext\tline"


@pytest.mark.parametrize(
    ("sent", "counted"),
    [
        ((700, 90), (700, 90)),
        ((1e30, 90), (0, 90)),
        ((math.inf, 90), (0, 90)),
        ((math.nan, -3), (0, 0)),
        ((2.5, 10**40), (0, 0)),
    ],
    ids=["plain", "1e30", "Infinity", "NaN-and-negative", "fraction-and-huge"],
)
def test_text_and_usage_are_cleaned_where_the_client_receives_them(scripted_llm, sent, counted):
    prompt, completion = sent
    llm = scripted_llm(
        handler=lambda r, i: Reply(
            content=HOSTILE_TEXT, prompt_tokens=prompt, completion_tokens=completion
        )
    )
    client = llm.client(**FAST)
    reply = client.complete(MESSAGES)
    assert reply.content == CLEANED_TEXT
    assert (reply.prompt_tokens, reply.completion_tokens) == counted
    again = client.complete(MESSAGES)  # from the cache, which could be written
    assert again.cached and again.content == CLEANED_TEXT
    assert (again.prompt_tokens, again.completion_tokens) == counted


def test_a_hostile_cache_entry_is_cleaned_when_read(scripted_llm):
    llm = scripted_llm(handler=lambda r, i: Reply(content="T cell"))
    client = llm.client(**FAST)
    client.complete(MESSAGES)
    (entry,) = llm.cache_dir.rglob("*.json")  # as an older version could have written it
    stored = json.loads(entry.read_text())
    stored["reply"] |= {"content": HOSTILE_TEXT, "prompt_tokens": 1e30, "completion_tokens": -1}
    entry.write_text(json.dumps(stored))  # ASCII: the lone surrogate is an escape

    reply = client.complete(MESSAGES)
    assert reply.cached and llm.server.request_count == 1
    assert reply.content == CLEANED_TEXT
    assert (reply.prompt_tokens, reply.completion_tokens) == (0, 0)


def _hostile_model(markers_of_cluster: dict[str, str]) -> ScriptedModel:
    """Labels with a NUL, control characters and a lone surrogate, raw in the text and as
    JSON escapes; usage of 1e30 (annotator) and Infinity (validator)."""

    def annotator(request: RecordedRequest, markers: list[str]) -> Reply:
        name = markers_of_cluster[signature(markers)]
        answer = (
            '{"main_cell_type": "Type\\u0000 ' + name + '\x00\\ud800\x07", '
            '"sub_cell_types": ["Sub\\u001b ' + name + '\ud800"], '
            '"key_markers": ["' + markers[0] + '\\u0000"]}'
        )
        return Reply(
            content=f"Step 1.\x00 The markers\x1b agree\ud800.\n```json\n{answer}\n```",
            prompt_tokens=1e30,
            completion_tokens=80,
        )

    def validator(request: RecordedRequest, markers: list[str]) -> Reply:
        return Reply(
            content='{"verdict": "pass", "feedback": "Fine\\u0000 by\x00 me\\udfff."}',
            prompt_tokens=math.inf,
            completion_tokens=20,
        )

    return ScriptedModel(annotator=annotator, validator=validator)


def test_hostile_replies_give_a_result_that_round_trips_through_h5ad(pbmc, scripted_llm, tmp_path):
    sc.tl.rank_genes_groups(pbmc, "louvain", method="wilcoxon")
    markers = cassia_sc.top_markers(pbmc)
    names = {signature(genes): f"cell {cluster}" for cluster, genes in markers.items()}
    llm = scripted_llm(handler=_hostile_model(names))
    settings = {"tissue": "blood", "species": "human", **llm.options(timeout=30.0)}

    def annotate_and_round_trip(name: str, *, paid: bool) -> pd.Series:
        adata = pbmc.copy()
        cassia_sc.tl.annotate(adata, **settings)
        table = adata.uns["cassia"]["results"]
        assert set(table["status"]) == {"ok"}, table["error"].tolist()
        path = tmp_path / f"{name}.h5ad"
        adata.write_h5ad(path)
        back = sc.read_h5ad(path)
        labels = back.obs["cassia_celltype"].astype(str)
        assert labels.tolist() == adata.obs["cassia_celltype"].astype(str).tolist()
        assert back.uns["cassia"]["usage"]["prompt_tokens"] == 0  # 1e30 and Infinity
        # Replies from the cache cost nothing this time.
        assert back.uns["cassia"]["usage"]["completion_tokens"] == len(markers) * 100 * paid
        text = json.dumps(back.uns["cassia"]["conversations"])
        assert "\\u0000" not in text and "\\ud800" not in text and "\\udfff" not in text
        return labels

    first = annotate_and_round_trip("first", paid=True)
    expected = "Type " + pbmc.obs["louvain"].astype(str).map(lambda c: f"cell {c}")
    assert first.tolist() == expected.tolist()

    requests = llm.server.request_count
    assert annotate_and_round_trip("from-the-cache", paid=False).tolist() == first.tolist()
    assert llm.server.request_count == requests

    # Entries written by a version that did not clean: served cleaned.
    for entry in llm.cache_dir.rglob("*.json"):
        stored = json.loads(entry.read_text())
        stored["reply"]["content"] = stored["reply"]["content"].replace(
            "Step 1.", "Step 1.\x00\x1b\ud800"
        )
        stored["reply"]["prompt_tokens"] = 1e30
        entry.write_text(json.dumps(stored))
    assert annotate_and_round_trip("old-entries", paid=False).tolist() == first.tolist()
    assert llm.server.request_count == requests


# ------------------------------------------------------------------ keys in error messages


#: A proxy's password in a base URL.
PASSWORD = "fake-password-NOT-A-SECRET"


def _secret(tag: str) -> str:
    # "/", "+" and "=" make its URL-encoded forms differ from it.
    return f"fake-{tag}-NOT/A+SECRET=only-for-tests"


def _leaks(text: str, secret: str) -> list[str]:
    """Every piece of ``secret`` of 8 characters or more found in ``text``, in any form."""
    found = []
    for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
        for start in range(len(form) - 7):
            if form[start : start + 8] in text:
                found.append(form[start : start + 8])
    return found


def test_an_echoed_key_is_redacted_in_every_form_before_the_message_is_cut(
    scripted_llm, tmp_path, caplog
):
    secret = _secret("cassia-echo")
    forms = [
        "x" * 470 + f" key {secret} was rejected",  # cut at 500 in its middle
        f"the key ending in {secret[-8:]} is over quota",
        f"key={quote(secret, safe='')}&retry=no",
        f"key={quote_plus(secret)}",
        f"got {secret[:6]}****{secret[-4:]}",  # masked, as providers echo it
        f"key {secret[-20:]} and {secret[-9:]}",
    ]
    echoing = {SIGNATURES[str(n)]: message for n, message in enumerate(forms)}

    def annotator(request, markers):
        message = echoing.get(signature(markers))
        return None if message is None else Reply(status=400, error_message=message)

    caplog.set_level(logging.INFO, logger="cassia_sc")
    llm = scripted_llm(annotator=annotator)
    cassia_sc.runCASSIA_batch(
        EXAMPLE,
        str(tmp_path / "out"),
        model="test-model",
        tissue="blood",
        species="human",
        client=llm.client(api_key=secret, **FAST),
        progress=False,
    )
    summary = pd.read_csv(tmp_path / "out_summary.csv", dtype={"Cluster ID": str})
    assert (summary["Status"] == "failed").sum() == len(forms)
    assert summary["Error"].str.contains("[redacted]", regex=False).sum() == len(forms)
    for path in tmp_path.iterdir():
        assert _leaks(path.read_text(), secret) == [], path.name
    assert _leaks(caplog.text, secret) == []


def test_a_secret_in_the_base_url_user_info_is_never_shown(scripted_llm):
    secret = _secret("cassia-userinfo")
    llm = scripted_llm(handler=lambda r, i: Reply(status=404, error_message="no such model"))
    provider = llm.base_url.replace("http://", f"http://proxy:{quote(secret, safe='')}@")
    client = LLMClient(model="test-model", provider=provider, cache=False, **FAST)
    try:
        with pytest.raises(cassia_sc.ModelNotFound) as raised:
            client.complete(MESSAGES)
    finally:
        client.close()
    assert llm.server.request_count == 1
    assert _leaks(str(raised.value), secret) == [], str(raised.value)
    assert "127.0.0.1" in str(raised.value)

    llm.server.close()  # nothing listens any more: a connection error names the endpoint
    client = LLMClient(model="test-model", provider=provider, cache=False, **FAST)
    try:
        with pytest.raises(cassia_sc.LLMError) as raised:
            client.complete(MESSAGES)
    finally:
        client.close()
    assert "Cannot reach http://[redacted]@127.0.0.1:" in str(raised.value)
    assert _leaks(str(raised.value), secret) == [], str(raised.value)


def test_a_refused_key_keeps_no_chained_error_that_holds_it(scripted_llm):
    secret = _secret("cassia-chain")
    llm = scripted_llm(handler=lambda r, i: Reply(status=401, error_message=f"Bad key {secret}"))
    client = llm.client(api_key=secret, **FAST)
    with pytest.raises(cassia_sc.AuthenticationFailed) as raised:
        client.complete(MESSAGES)
    error = raised.value
    assert error.__cause__ is None and error.__context__ is None
    assert _leaks(str(error), secret) == [] and "[redacted]" in str(error)


# ------------------------------------------------------------------ replies cut off by max_tokens


def _cut_below(room: int, model: ScriptedModel) -> object:
    """A handler that cuts every reply off when it is given less than ``room`` tokens."""

    def handler(request: RecordedRequest, index: int) -> Reply:
        reply = model(request, index)
        given = request.body.get("max_tokens", 0)
        if given < room:
            reply.content = (reply.content or "")[: len(reply.content or "") // 2]
            reply.finish_reason = "length"
            reply.completion_tokens = given  # it filled its room
        return reply

    return handler


def test_a_reply_cut_off_by_max_tokens_is_asked_again_with_more_room(scripted_llm):
    llm = scripted_llm(handler=_cut_below(5000, ScriptedModel({SIGNATURES["0"]: "T cell"})))
    client = llm.client(**FAST)
    result = run(client, EXAMPLE.head(1))

    assert result["0"].status == "ok" and result["0"].main_cell_type == "T cell"
    sent = [(agent_of(r), r.body.get("max_tokens")) for r in llm.server.requests]
    # Every request says how much room it has; a cut-off reply is asked again with twice.
    assert sent == [
        ("annotator", 4096),
        ("annotator", 8192),
        ("validator", 4096),
        ("validator", 8192),
    ]
    assert result["0"].requests == 4
    assert client.usage.requests == 4


def test_a_reply_always_cut_off_fails_its_cluster(scripted_llm):
    llm = scripted_llm(handler=_cut_below(10**9, ScriptedModel()))
    result = run(llm.client(max_retries=2, **FAST), EXAMPLE.head(1))

    cluster = result["0"]
    assert cluster.status == "failed" and cluster.main_cell_type is None
    # More room once: a reply longer still comes from a model that does not stop.
    assert "cut off" in cluster.error and "gave up after 2 attempts" in cluster.error
    assert [r.body["max_tokens"] for r in llm.server.requests] == [4096, 8192]
    assert not cluster.validation_passed


def test_max_tokens_is_a_client_option_dropped_when_the_endpoint_refuses_it(scripted_llm, caplog):
    model = ScriptedModel({SIGNATURES["0"]: "T cell"})

    def handler(request, index):
        if "max_tokens" in request.body:
            return Reply(status=400, error_message="Unrecognized request argument: max_tokens")
        return model(request, index)

    caplog.set_level(logging.WARNING, logger="cassia_sc")
    llm = scripted_llm(handler=handler)
    result = run(llm.client(max_tokens=1000, **FAST), EXAMPLE.head(1))
    assert result["0"].status == "ok"
    assert [r.body.get("max_tokens") for r in llm.server.requests] == [1000, None, None]
    assert "refused 'max_tokens'" in caplog.text


@pytest.mark.parametrize("said", ["unknown cell", "Unknown", "  UNKNOWN cell type. ", "unclear"])
def test_a_formatter_that_finds_no_cell_type_fails_the_cluster_with_the_raw_text(
    scripted_llm, said
):
    prose = "The markers are a mix of lineages; the reasoning stopped before an answer"

    def annotator(request, markers):
        return Reply(content=prose)

    def formatter(request, markers):
        return Reply(content=json.dumps({"main_cell_type": said, "key_markers": []}))

    llm = scripted_llm(annotator=annotator, formatter=formatter)
    result = run(llm.client(**FAST), EXAMPLE.head(1))

    cluster = result["0"]
    assert cluster.status == "failed" and cluster.raw_reply == prose
    assert cluster.main_cell_type is None and cluster.validation_passed is None
    assert "No annotation could be read" in cluster.error
    assert [agent_of(r) for r in llm.server.requests] == ["annotator", "formatter"]


# ------------------------------------------------------------------ rate-limit storms

RETRY_AFTER = 0.2  # seconds the server asks for
WINDOW = 1.0  # seconds it answers 429 for


class RateLimitedWindow:
    """Answers HTTP 429 with ``Retry-After: 0.2`` to every request that arrives in the first
    second after the first one, then as a ScriptedModel (0.05 s a reply)."""

    def __init__(self) -> None:
        self.model = ScriptedModel(delay=0.05)
        self.opened: float | None = None
        self.lock = threading.Lock()

    def __call__(self, request: RecordedRequest, index: int) -> Reply:
        with self.lock:
            if self.opened is None:
                self.opened = request.time
        if request.time < self.opened + WINDOW:
            return Reply(
                status=429, headers={"Retry-After": str(RETRY_AFTER)}, error_message="slow down"
            )
        return self.model(request, index)


def test_after_a_rate_limit_the_pool_resumes_gradually_and_no_cluster_fails(scripted_llm):
    llm = scripted_llm(handler=RateLimitedWindow())
    workers = 11
    # The defaults (max_retries=3), with a quick first backoff so that the 0.2 s asked for
    # is what the pool waits: four 429s in a row used to fail a cluster.
    client = llm.client(retry_delay=0.01, timeout=HANG)
    result = run(client, max_workers=workers)

    assert [c.status for c in result.clusters] == ["ok"] * 11
    requests = sorted(llm.server.requests, key=lambda r: r.time)
    limited = [r for r in requests if r.status == 429]
    answered = [r for r in requests if r.status == 200]
    assert len(answered) == 22 and len(limited) + len(answered) == len(requests)
    # Once the server answers again, one request goes first; only its answer lets the
    # next ones start (the pool does not send all its workers at once).
    first, second = answered[0], answered[1]
    assert first.time >= limited[-1].replying_at
    assert second.time >= first.replying_at
    # While it is limited, the pool sends one request per pause, not one per worker: past
    # each worker's first request, probes are at least a pause apart, all in the window.
    assert len(limited) <= workers + WINDOW / RETRY_AFTER + 1 + workers


def test_the_pacer_lets_one_request_through_after_a_rate_limit_then_widens():
    pacer = RequestPacer()
    stop = threading.Event()
    tickets = [pacer.wait_turn(stop) for _ in range(4)]  # four in flight, no limit yet
    pacer.done(tickets[0], rate_limited=True)  # a 429: from now on, one at a time
    for ticket in tickets[1:]:
        pacer.done(ticket, answered=True)  # sent before the 429: they open nothing

    started: list[int] = []
    cancelled: list[int] = []
    gate = threading.Semaphore(0)

    def worker(n: int) -> None:
        try:
            pacer.wait_turn(stop)  # taken and kept: never answered
        except CallCancelled:
            cancelled.append(n)
            return
        started.append(n)
        gate.release()

    probe = pacer.wait_turn(stop)  # the probe
    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(3)]
    for thread in threads:
        thread.start()
    # Nobody else starts while the probe is out (a slow machine only makes this easier).
    assert not gate.acquire(timeout=0.5)
    pacer.done(probe, answered=True)  # its answer lets two more start
    assert gate.acquire(timeout=HANG) and gate.acquire(timeout=HANG)
    stop.set()  # the third waits for another answer: cancelled
    for thread in threads:
        thread.join(timeout=HANG)
    assert len(started) == 2 and len(cancelled) == 1


def test_a_secret_in_the_provider_url_is_not_stored_in_the_settings():
    plan = cassia_sc.plan(
        cassia_sc.loadmarker("pbmc68k_processed"),
        tissue="blood",
        species="human",
        model="m",
        provider="https://me:" + PASSWORD + "@proxy.example.org/v1",
        progress=False,
    )
    assert plan.settings["provider"] == "https://[redacted]@proxy.example.org/v1"
    assert PASSWORD not in plan.summary().to_csv() + plan.to_json()


def _closed_port() -> int:
    """A port on this machine that nothing listens on: every connection is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_provider_never_reached_stops_the_run_with_one_message(pbmc, tmp_path, capsys):
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    with pytest.raises(cassia_sc.errors.ProviderUnreachable, match=f"Cannot reach {url}"):
        cassia_sc.run_batch(
            EXAMPLE, tissue="blood", species="human", model="m", provider=url,
            max_retries=1, cache_dir=tmp_path / "cache", progress=False,
        )  # fmt: skip
    # The command line writes nothing: no .h5ad, no files full of failed clusters. Its
    # requests are not retried (no option shortens its backoff of 1 s, doubled each time):
    # the retries' end is proved above, what is left unwritten here.
    markers = tmp_path / "markers.csv"
    EXAMPLE.head(3).to_csv(markers, index=False)
    args = ["batch", str(markers), "--output-name", str(tmp_path / "run"), "--quiet"]
    args += ["--model", "m", "--provider", url, "--species", "human", "--tissue", "blood"]
    code = main([*args, "--max-retries", "0", "--cache-dir", str(tmp_path / "cache")])
    assert code == 1
    assert "Cannot reach" in capsys.readouterr().err
    assert not list(tmp_path.glob("run_*"))
    # Nor does `annotate` on an .h5ad: no annotated copy, the input as it was.
    source = tmp_path / "pbmc.h5ad"
    pbmc.write_h5ad(source)
    before = source.read_bytes()
    args = ["annotate", str(source), "--output", str(tmp_path / "out.h5ad"), "--quiet"]
    args += ["--model", "m", "--provider", url, "--species", "human", "--tissue", "blood"]
    assert main([*args, "--max-retries", "0", "--cache-dir", str(tmp_path / "cache")]) == 1
    assert "Cannot reach" in capsys.readouterr().err
    assert not (tmp_path / "out.h5ad").exists() and source.read_bytes() == before


def test_a_provider_reached_once_is_not_unreachable(scripted_llm):
    # The server answers, then goes away: the failures are the clusters', not the run's.
    llm = scripted_llm(handler=lambda request, index: Reply(content="ok"))
    client = llm.client(**FAST)
    client.complete([{"role": "user", "content": "hello"}])
    llm.server.close()
    with pytest.raises(cassia_sc.LLMError) as raised:
        client.complete([{"role": "user", "content": "again"}])
    assert not isinstance(raised.value, cassia_sc.FatalLLMError)


# ------------------------------------------------------------------ waiting for the same request


def test_callers_waiting_for_the_same_request_leave_once_their_run_stops(scripted_llm):
    """A request already on its way for one caller is not sent again for the others; they
    wait for it, watched by one thread, and leave when their run stops."""
    released = threading.Event()

    def handler(request: RecordedRequest, index: int) -> Reply:
        released.wait(HANG)
        return Reply(content="T cell")

    llm = scripted_llm(handler=handler)
    client = llm.client(**(FAST | {"timeout": HANG}))
    leader = threading.Thread(target=client.complete, args=(MESSAGES,))
    leader.start()
    while llm.server.request_count < 1:  # the leader's request is on its way
        released.wait(0.01)
    stop, left = threading.Event(), []

    def follow() -> None:
        try:
            client.complete(MESSAGES, stop=stop)
        except CallCancelled as err:
            left.append(err)

    followers = [threading.Thread(target=follow) for _ in range(20)]
    for thread in followers:
        thread.start()

    def watchers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "cassia-sc-stops"]

    deadline = time.monotonic() + HANG  # against a hang, not a speed limit
    while not watchers() and time.monotonic() < deadline:  # the followers wait
        released.wait(0.01)
    assert len(watchers()) == 1  # one thread watches them all: none polls on its own
    stop.set()
    for thread in followers:
        thread.join(HANG)
    assert len(left) == 20
    released.set()
    leader.join(HANG)
    assert llm.server.request_count == 1
