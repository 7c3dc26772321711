"""Orchestration overhead of ``run_batch`` against a loopback server with a fixed latency.

Target (issue 3): with N clusters, W workers and latency L per request, the wall time is
at most 1.1 x ceil(N / W) x (round trips per cluster) x L.

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

import pandas as pd
from llm_server import LLMServer
from scripted_model import ScriptedModel, signature

import cassia_sc
from cassia_sc.batch import map_to_ontology


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
    truth = {
        signature(row.markers.split(", ")): f"type {row.cluster}" for row in markers.itertuples()
    }
    with (
        LLMServer(ScriptedModel(truth, delay=args.latency)) as server,
        tempfile.TemporaryDirectory() as cache,
    ):
        start = time.perf_counter()
        result = cassia_sc.run_batch(
            markers,
            tissue="blood",
            species="human",
            model="test-model",
            provider=server.base_url,
            max_workers=args.workers,
            cache_dir=cache,
            progress=False,
            ontology=False,  # the orchestration alone; the mapping is timed below
        )
        wall = time.perf_counter() - start
        start = time.perf_counter()
        map_to_ontology(result)
        mapping = time.perf_counter() - start
        requests = server.request_count
        prompt_chars = sum(len(m["content"]) for r in server.requests for m in r.messages)
        concurrency = server.max_concurrency

    correct = sum(c.main_cell_type == f"type {c.cluster}" for c in result.clusters)
    trips = requests / args.clusters
    bound = 1.1 * math.ceil(args.clusters / args.workers) * trips * args.latency
    print(f"N={args.clusters} W={args.workers} L={args.latency}s")
    verdict = "met" if wall <= bound else "MISSED"
    print(f"wall time            {wall:.2f} s (bound {bound:.2f} s: {verdict})")
    print(f"round trips/cluster  {trips:.2f}")
    print(f"prompt chars/cluster {prompt_chars / args.clusters:,.0f}")
    print(f"max concurrency      {concurrency}")
    print(f"ontology mapping     {mapping:.2f} s afterwards (loading CL included)")
    print(f"correct              {correct}/{args.clusters}; failed {len(result.failed)}")


if __name__ == "__main__":
    main()
