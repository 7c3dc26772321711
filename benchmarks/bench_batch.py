"""Orchestration overhead of ``run_batch`` against a loopback server with a fixed latency.

Target (issue 3): with N clusters, W workers and latency L per request, the wall time is
at most 1.1 x ceil(N / W) x (round trips per cluster) x L. Also timed: what a run with Cell
Ontology terms adds after the last reply, in a process that has not loaded the ontology yet
(issue 17: the index loads while the calls run, so only the mapping itself is left).

Run: ``python benchmarks/bench_batch.py [--clusters 200] [--workers 16] [--latency 0.2]``
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
MARKER100 = Path(__file__).resolve().parents[1] / "tests" / "data" / "marker100.csv"

import pandas as pd
from llm_server import LLMServer
from scripted_model import ScriptedModel, signature

import cassia_sc


def synthetic_markers(n_clusters: int, *, n_genes: int = 50, seed: int = 0) -> pd.DataFrame:
    """Simplified-format markers: n_clusters lists of n_genes distinct gene names."""
    rng = random.Random(seed)
    pool = [f"GENE{i}" for i in range(5000)]
    return pd.DataFrame(
        {
            "cluster": [f"c{i}" for i in range(n_clusters)],
            "markers": [", ".join(rng.sample(pool, n_genes)) for _ in range(n_clusters)],
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.2)
    args = parser.parse_args()

    markers = synthetic_markers(args.clusters)
    # Real cell-type names (marker100's, in turn), so that the mapping timed is a real one.
    names = pd.read_csv(MARKER100, encoding="utf-8-sig")["True Cell Type"].tolist()
    expected = {row.cluster: names[i % len(names)] for i, row in enumerate(markers.itertuples())}
    truth = {
        signature(row.markers.split(", ")): expected[row.cluster] for row in markers.itertuples()
    }
    model = ScriptedModel(truth, delay=args.latency)
    last_reply = [0.0]

    def handler(request, index):
        reply = model(request, index)  # sleeps the latency
        last_reply[0] = max(last_reply[0], time.perf_counter())
        return reply

    options = {
        "tissue": "blood",
        "species": "human",
        "model": "test-model",
        "max_workers": args.workers,
        "progress": False,
    }
    with LLMServer(handler) as server, tempfile.TemporaryDirectory() as cache:
        # First, in this fresh process: with terms, as users run it.
        cassia_sc.run_batch(markers, provider=server.base_url, cache_dir=f"{cache}/a", **options)
        after_calls = time.perf_counter() - last_reply[0]
        server.reset()
        # The orchestration alone, on an empty cache.
        start = time.perf_counter()
        result = cassia_sc.run_batch(
            markers, provider=server.base_url, cache_dir=f"{cache}/b", ontology=False, **options
        )
        wall = time.perf_counter() - start
        requests = server.request_count
        prompt_chars = sum(len(m["content"]) for r in server.requests for m in r.messages)
        concurrency = server.max_concurrency

    correct = sum(c.main_cell_type == expected[c.cluster] for c in result.clusters)
    trips = requests / args.clusters
    bound = 1.1 * math.ceil(args.clusters / args.workers) * trips * args.latency
    print(f"N={args.clusters} W={args.workers} L={args.latency}s")
    verdict = "met" if wall <= bound else "MISSED"
    print(f"wall time            {wall:.2f} s (bound {bound:.2f} s: {verdict})")
    print(f"round trips/cluster  {trips:.2f}")
    print(f"prompt chars/cluster {prompt_chars / args.clusters:,.0f}")
    print(f"max concurrency      {concurrency}")
    print(f"with ontology terms  {after_calls:.2f} s after the last reply (CL loaded meanwhile)")
    print(f"correct              {correct}/{args.clusters}; failed {len(result.failed)}")


if __name__ == "__main__":
    main()
