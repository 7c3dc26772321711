"""Size, load and filter times of the HTML report with 500 clusters, in headless Chromium.

Each cluster carries a full two-agent conversation of typical length (about 6 kB).
Run: ``python benchmarks/bench_report.py [--clusters 500]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

import cassia_sc
from cassia_sc.results import BatchResult, ClusterResult, Turn

REASONING = (
    "Step 1. CD3D, CD3E and CD2 are pan-T-cell genes; IL7R and CCR7 mark naive and central "
    "memory T cells. Step 2. No B-cell or myeloid marker is among the first twenty. "
)


def batch(n: int) -> BatchResult:
    markers = [f"GENE{i}" for i in range(50)]
    answer = '```json\n{"main_cell_type": "T cell", "key_markers": ["GENE1", "GENE2"]}\n```'
    conversation = [
        Turn("annotator", "system", "You are an expert in single-cell transcriptomics. " * 30),
        Turn("annotator", "user", "Species: human\nTissue: blood\n" + ", ".join(markers)),
        Turn("annotator", "assistant", REASONING * 8 + answer),
        Turn("validator", "system", "You review cell-type annotations. " * 30),
        Turn("validator", "user", ", ".join(markers) + "\n\n" + REASONING * 8 + answer),
        Turn("validator", "assistant", '{"verdict": "pass", "feedback": "Supported."}'),
    ]
    return BatchResult(
        clusters=[
            ClusterResult(
                cluster=str(i),
                markers=markers,
                status="failed" if i % 50 == 0 else "ok",
                main_cell_type=None if i % 50 == 0 else f"type {i % 37}",
                sub_cell_types=["naive", "memory"],
                key_markers=["GENE1", "GENE2"],
                validation_passed=i % 7 != 0,
                iterations=1,
                error="HTTP 400" if i % 50 == 0 else None,
                conversation=conversation,
            )
            for i in range(n)
        ],
        settings={"model": "m", "provider": "p", "tissue": "blood", "species": "human"},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        path = cassia_sc.export.report(batch(args.clusters), Path(folder) / "report.html")
        rendered = time.perf_counter() - start
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page()
            start = time.perf_counter()
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            loaded = time.perf_counter() - start
            start = time.perf_counter()
            page.select_option("#status", "failed")
            filtered = time.perf_counter() - start
            shown = page.text_content("#count")
            start = time.perf_counter()
            page.select_option("#sort", "type")
            sorted_ = time.perf_counter() - start
            browser.close()
        size = path.stat().st_size
    print(f"{args.clusters} clusters: {size / 1e6:.2f} MB, rendered in {rendered:.2f} s")
    print(f"Chromium: loaded in {loaded:.2f} s, status filter {filtered * 1000:.0f} ms ({shown})")
    print(f"          sort by type {sorted_ * 1000:.0f} ms (round trips from Python included)")


if __name__ == "__main__":
    main()
