"""A run through a provider batch API (``batch_api=``) against the local server's batch routes.

Targets (issue 18): 2,000 clusters through the batch path, one batch per round, peak
memory under 500 MB, and under 10 s added by our side beyond the batches' scripted delay.
Each batch ends ``--delay`` seconds after the server made it; the rest of the wall time is
ours: starting the clusters and building their prompts, uploading, the polls' granularity,
downloading, parsing and caching the results, waking the clusters. The server runs in this
process (its share is shown apart) and its memory counts in the peak.

Run: ``python benchmarks/bench_batch_api.py [--clusters 2000] [--delay 5] [--api openai]
[--poll 0.5]``, or ``--quick`` (100 clusters, 0.2 s a batch) to keep the script working.
"""

from __future__ import annotations

import argparse
import re
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_batch import synthetic_markers
from llm_server import LLMServer
from scripted_model import ScriptedModel, agent_of, signature

import cassia_sc

MEMORY_TARGET_MB = 500
OVERHEAD_TARGET_S = 10.0
# Which batch route a request went to (either provider's, with or without /v1).
ROUTES = [
    ("upload", "POST", r"(/v1)?/files"),
    ("create", "POST", r"(/v1)?(/messages)?/batches"),
    ("poll", "GET", r"(/v1)?(/messages)?/batches/[^/]+"),
    ("download", "GET", r"(/v1)?(/files/[^/]+/content|/messages/batches/[^/]+/results)"),
]


def route_of(method: str, path: str) -> str:
    for name, route_method, pattern in ROUTES:
        if method == route_method and re.fullmatch(pattern, path):
            return name
    return "other"


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)  # bytes there, KB here


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def row(label: str, seconds: float, what: str) -> None:
    print(f"  {label:<28} {seconds:5.2f} s ({what})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--delay", type=float, default=5.0, help="seconds each batch takes")
    parser.add_argument("--api", choices=("openai", "anthropic"), default="openai")
    parser.add_argument("--poll", type=float, default=0.5, help="first poll interval (s)")
    parser.add_argument(
        "--quick", action="store_true", help="100 clusters, 0.2 s a batch, first poll 0.05 s"
    )
    args = parser.parse_args()
    if args.quick:
        args.clusters, args.delay, args.poll = 100, 0.2, 0.05

    markers = synthetic_markers(args.clusters)
    expected = {row.cluster: f"type {i % 97}" for i, row in enumerate(markers.itertuples())}
    model = ScriptedModel(
        {signature(row.markers.split(", ")): expected[row.cluster] for row in markers.itertuples()}
    )
    before_mb = peak_rss_mb()  # the imports and the markers
    with LLMServer(model, batch_delay=args.delay) as server, tempfile.TemporaryDirectory() as tmp:
        # The server stamps a batch's end with time.time() and its start with the
        # monotonic clock: one offset puts both on the monotonic clock.
        offset = time.time() - time.monotonic()
        start = time.monotonic()
        result = cassia_sc.run_batch(
            markers,
            tissue="blood",
            species="human",
            model="test-model",
            provider=server.base_url,
            batch_api=args.api,
            batch_poll_interval=args.poll,
            cache_dir=tmp,
            progress=False,
            ontology=False,
        )
        end = time.monotonic()
        peak_mb = peak_rss_mb()
        batches = sorted(server.batches.values(), key=lambda b: b.started)
        requests = list(server.batch_requests)
        items = list(server.batch_items)
        live = server.request_count

    wall = end - start
    scripted = sum(b.delay for b in batches)  # one provider: its batches go one after another
    overhead = wall - scripted
    routes = Counter(route_of(r.method, r.path) for r in requests)
    serving = sum((r.answered_at or r.time) - r.time for r in requests)
    agents = {b.id: Counter() for b in batches}
    for item in items:
        agents[item.batch_id][agent_of(item)] += 1
    one_per_round = all(len(kinds) == 1 for kinds in agents.values()) and len(
        {kind for kinds in agents.values() for kind in kinds}
    ) == len(batches)
    ok = sum(c.status == "ok" for c in result.clusters)
    correct = sum(c.main_cell_type == expected[c.cluster] for c in result.clusters)

    print(f"{args.clusters:,} clusters via the {args.api} batch API on 127.0.0.1: each batch")
    print(f"ends {args.delay} s after it was made; first poll interval {args.poll} s (x1.5 a poll,")
    print("sooner when the batch's count of requests done says it is due)")
    print(f"clusters             {ok:,} ok, {len(result.failed):,} failed; {correct:,} correct")
    print(f"batches              {len(batches)} (one per round: {verdict(one_per_round)})")
    for number, batch in enumerate(batches, start=1):
        kinds = ", ".join(f"{n:,} {kind}" for kind, n in agents[batch.id].items())
        print(f"  batch {number}: {len(batch.custom_ids):,} items ({kinds})")
    print(
        f"batch-route requests {len(requests)}: {routes['upload']} uploads, {routes['create']}"
        f" creates, {routes['poll']} polls, {routes['download']} downloads, {routes['other']} other"
    )
    print(f"live chat requests   {live}")
    print(f"wall time            {wall:.2f} s")
    print(f"scripted delay       {scripted:.2f} s ({len(batches)} batches x {args.delay} s)")
    print(
        f"our side adds        {overhead:.2f} s"
        f" (target < {OVERHEAD_TARGET_S:.0f} s: {verdict(overhead < OVERHEAD_TARGET_S)})"
    )
    # Where it goes: the wall time cut at each batch's creation and end (the end is the
    # poll that found it over: what comes after its due time is the polls' granularity).
    mark = start
    for number, batch in enumerate(batches, start=1):
        ended = batch.times.get("ended", end + offset) - offset
        before = "clusters start" if number == 1 else "results read, cached, clusters woken"
        row(f"until batch {number} was made", batch.started - mark, f"{before}, prompts, upload")
        row(f"batch {number} over, seen after", ended - batch.started - batch.delay, "polling")
        mark = ended
    row("then until the result", end - mark, "results read, cached, clusters end")
    row("of all that, the server", serving, "answering the batch routes")
    print(
        f"peak RSS             {peak_mb:.0f} MB (target < {MEMORY_TARGET_MB} MB:"
        f" {verdict(peak_mb < MEMORY_TARGET_MB)}); {before_mb:.0f} MB before the run, server"
        " included"
    )


if __name__ == "__main__":
    main()
