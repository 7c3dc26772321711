"""All benchmarks in one command: cassia_sc beside CASSIA 1.4.0, under faults, and the
performance items of earlier issues; writes ``benchmarks/RESULTS.md``.

Run: ``python benchmarks/run.py`` (about 5 minutes) or ``python benchmarks/run.py --quick``
(tiny sizes, prints only, to keep the scripts working). Needs nothing but this repository
and the package registries: CASSIA 1.4.0 runs in the venv the tests use too, built once
per machine in the user's cache folder (``tests/cassia_env.py``). Both programs talk to one
scripted OpenAI-compatible server on 127.0.0.1 (``bench_server.py``) with a fixed latency
per request, with the same ``max_workers``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_batch import synthetic_markers
from bench_server import BenchModel, Faults, request_hash, signature, split_markers
from cassia_env import CASSIA_VERSION, cassia_python
from llm_server import LLMServer

MARKER100 = HERE.parent / "tests" / "data" / "marker100.csv"
NOTES = HERE / "notes"  # before/after figures measured by hand, one file per item
PROGRAMS = ("ours", "cassia")
NAMES = {"ours": "cassia_sc", "cassia": f"CASSIA {CASSIA_VERSION}"}
# A reply written this long before the kill was read and handled by the client.
COMPLETION_MARGIN = 0.05


@dataclass
class Input:
    """A marker set both programs annotate, and the answers the server knows."""

    name: str
    path: Path
    answers: dict[str, str]  # cluster -> answer
    tissue: str
    species: str = "human"

    @property
    def truth(self) -> dict[str, str]:  # signature -> answer, for the server
        table = pd.read_csv(self.path)
        return {
            signature(split_markers(m)): self.answers[c]
            for c, m in zip(table["cluster"].astype(str), table["markers"], strict=True)
        }


@dataclass
class Run:
    """What one run of one program did, as seen by the server and in its output files."""

    wall: float
    requests: int
    prompt_chars: int
    present: int
    correct: int
    clusters: int
    hashes: list[str] = field(default_factory=list)
    # Hashes of the requests whose 200 reply was written before the process was killed
    # (with a margin for the client to read it): the requests the run had completed.
    completed: set[str] = field(default_factory=set)
    repeated: int = 0
    first_requests: int = 0

    @property
    def per_cluster(self) -> float:
        return self.requests / self.clusters

    @property
    def chars_per_cluster(self) -> float:
        return self.prompt_chars / self.clusters


# --------------------------------------------------------------------------- setup


def make_inputs(work: Path, quick: bool, python: Path) -> list[Input]:
    """marker100.csv, 200 synthetic clusters and CASSIA's own example, as two-column CSVs."""
    inputs = []
    table = pd.read_csv(MARKER100, encoding="utf-8-sig")
    if quick:
        table = table.head(20)
    # Repeated names get " (2)", as cassia_sc does, so that CASSIA keeps every row too.
    repeat = table.groupby("True Cell Type").cumcount()
    names = table["True Cell Type"].where(
        repeat == 0, table["True Cell Type"] + " (" + (repeat + 1).astype(str) + ")"
    )
    frame = pd.DataFrame({"cluster": names, "markers": table["Marker List"]})
    inputs.append(
        _write(
            work,
            "marker100",
            frame,
            dict(zip(names, table["True Cell Type"], strict=True)),
            "mixed",
        )
    )

    synthetic = synthetic_markers(30 if quick else 200)
    answers = {c: f"cell type {c[1:]}" for c in synthetic["cluster"]}
    inputs.append(_write(work, "synthetic", synthetic, answers, "blood"))

    path = work / "cassia_example_raw.csv"
    script = f"import CASSIA; CASSIA.loadmarker('processed').to_csv({str(path)!r}, index=False)"
    subprocess.run([str(python), "-c", script], check=True, capture_output=True, env=_env())
    example = pd.read_csv(path)
    example.columns = ["cluster", "markers"]
    inputs.append(
        _write(
            work, "cassia_example", example, {c: c for c in example["cluster"]}, "large intestine"
        )
    )
    return inputs


def _write(
    work: Path, name: str, frame: pd.DataFrame, answers: dict[str, str], tissue: str
) -> Input:
    path = work / f"{name}.csv"
    frame.to_csv(path, index=False)
    return Input(name, path, answers, tissue)


def _env() -> dict[str, str]:
    return os.environ | {
        "MPLBACKEND": "Agg",
        "NO_PROXY": "127.0.0.1,localhost",
        "PYTHONWARNINGS": "ignore",
    }


# --------------------------------------------------------------------------- running


def run(
    program: str,
    data: Input,
    server: LLMServer,
    work: Path,
    *,
    workers: int,
    python: Path,
    label: str,
    kill_after: int | None = None,
    cache: Path | None = None,
) -> Run:
    """Run one program on one input in its own process; read what it did and wrote."""
    out = work / f"{label}-{program}"
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / "result"
    if program == "ours":
        cache = cache or out / "cache"
        command = [sys.executable, str(HERE / "drive_ours.py"), str(data.path), str(prefix), server.base_url,
                   str(workers), str(cache), data.tissue, data.species]  # fmt: skip
    else:
        command = [str(python), str(HERE / "drive_cassia.py"), str(data.path), str(prefix), server.base_url,
                   str(workers), data.tissue, data.species]  # fmt: skip
    server.reset()
    killed_at = float("inf")
    start = time.perf_counter()
    with open(out / "log.txt", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_env())
        if kill_after is None:
            process.wait(timeout=1800)
        else:
            while server.request_count < kill_after and process.poll() is None:
                time.sleep(0.01)
            process.kill()
            killed_at = time.monotonic()
            process.wait()
    wall = time.perf_counter() - start
    requests = list(server.requests)
    summary = Path(f"{prefix}_summary.csv")
    present = correct = 0
    if summary.exists():
        table = pd.read_csv(summary, dtype={"Cluster ID": str})
        present = table["Cluster ID"].isin(data.answers).sum()
        predicted = dict(
            zip(table["Cluster ID"], table["Predicted General Cell Type"].fillna(""), strict=True)
        )
        correct = sum(predicted.get(c, "").strip() == a for c, a in data.answers.items())
    return Run(
        wall=wall,
        requests=len(requests),
        prompt_chars=sum(len(m["content"]) for r in requests for m in r.messages),
        present=int(present),
        correct=int(correct),
        clusters=len(data.answers),
        hashes=[request_hash(r) for r in requests],
        completed={
            request_hash(r)
            for r in requests
            if r.status == 200 and (r.answered_at or killed_at) < killed_at - COMPLETION_MARGIN
        },
    )


def compare(inputs: list[Input], work: Path, *, workers: int, latency: float, python: Path) -> dict:
    """Both programs on every input, on the happy path."""
    results = {}
    for data in inputs:
        model = BenchModel(data.truth, latency=latency)
        with LLMServer(model) as server:
            for program in PROGRAMS:
                print(f"  {data.name}: {NAMES[program]} ...", flush=True)
                results[data.name, program] = run(
                    program, data, server, work, workers=workers, python=python, label=data.name
                )
    return results


def faults(data: Input, work: Path, *, workers: int, latency: float, python: Path) -> dict:
    """The same fault scenarios for both programs, on one input."""
    poisoned = next(iter(data.truth))
    scenarios = {
        "10 % of requests answer 500": Faults(share_500=0.1, seed=1),
        "10 % answer 429 (Retry-After: 1)": Faults(share_429=0.1, seed=2),
        "one cluster always fails": Faults(poisoned=poisoned),
    }
    results = {}
    for label, fault in scenarios.items():
        model = BenchModel(data.truth, latency=latency, faults=fault)
        with LLMServer(model) as server:
            for program in PROGRAMS:
                print(f"  {label}: {NAMES[program]} ...", flush=True)
                results[label, program] = run(
                    program,
                    data,
                    server,
                    work,
                    workers=workers,
                    python=python,
                    label=f"fault{len(results)}",
                )
    # Killed half-way, then started again with the same command (and, for us, cache).
    for program in PROGRAMS:
        print(f"  killed half-way and restarted: {NAMES[program]} ...", flush=True)
        model = BenchModel(data.truth, latency=latency)
        calls = {"ours": 2, "cassia": 3}[program] * len(data.answers)
        with LLMServer(model) as server:
            cache = work / f"restart-{program}" / "cache"
            first = run(program, data, server, work, workers=workers, python=python, label="restart1",
                        kill_after=calls // 2, cache=cache)  # fmt: skip
            second = run(
                program,
                data,
                server,
                work,
                workers=workers,
                python=python,
                label="restart2",
                cache=cache,
            )
        second.repeated = sum(h in first.completed for h in second.hashes)
        second.first_requests = first.requests
        results["killed half-way, restarted", program] = second
    return results


def perf_items(quick: bool) -> list[tuple[str, str, str, str]]:
    """The earlier issues' performance items: (title, command, output, note).

    A note is what was measured by hand when a change was made (before/after figures),
    kept in ``benchmarks/notes/{name}.md`` so that regenerating RESULTS.md keeps it.
    """
    items = [
        ("markers", "Marker extraction, 500 clusters x 30,000 genes with pts (target < 2 s)",
         ["bench_markers.py", "--repeats", "5"], ["bench_markers.py", "--clusters", "50", "--genes", "3000", "--repeats", "1"]),
        ("markers-all-pass", "Marker extraction, worst case: most rows pass the filters (target < 0.5 s)",
         ["bench_markers.py", "--repeats", "5", "--all-pass"], ["bench_markers.py", "--clusters", "50", "--genes", "3000", "--repeats", "1", "--all-pass"]),
        ("batch", "Orchestration, N = 200, W = 16, L = 0.2 s (target <= 1.1 x ceil(N/W) x trips x L)",
         ["bench_batch.py", "--clusters", "200", "--workers", "16", "--latency", "0.2"], ["bench_batch.py", "--clusters", "40", "--workers", "8", "--latency", "0.05"]),
        ("h5ad", "In-place cassia-sc annotate of a 1,000,000-cell .h5ad (target: read + write < 3 s, < 500 MB)",
         ["bench_h5ad.py", "--cells", "1000000", "--genes", "2000"], ["bench_h5ad.py", "--cells", "20000", "--genes", "500", "--workdir", "/tmp/cassia-bench-h5ad-quick"]),
        ("report", "HTML report with 500 clusters in headless Chromium (target < 5 MB, smooth filtering)",
         ["bench_report.py", "--clusters", "500"], ["bench_report.py", "--clusters", "50"]),
        ("evidence", "Expression evidence of 1,000,000 cells x 20,000 genes (targets: in memory < 10 s and < 1.5 x the matrix; backed < 60 s and < 2 GB; a lookup of 50 genes < 1 ms)",
         ["bench_evidence.py"], ["bench_evidence.py", "--quick"]),
        ("pipeline", "Score and boost pipeline, side by side with CASSIA 1.4.0 (runCASSIA_pipeline)",
         ["bench_pipeline.py"], ["bench_pipeline.py", "--quick"]),
        ("ontology", "Cell Ontology mapping and scoring, offline (targets: load < 0.5 s, < 1 ms a label; terms for >= 97 % of main types and >= 90 % of first subtypes; of the judge's >= 90, >= 90 % score >= 0.5; of its <= 30, >= 90 % score 0)",
         ["bench_ontology.py", "--list"], ["bench_ontology.py", "--quick"]),
        ("batch-api", "Provider batch API, 2,000 clusters, 5 s a batch, against the local server (targets: one batch per round; peak RSS < 500 MB; < 10 s added beyond the batches' delay)",
         ["bench_batch_api.py", "--clusters", "2000", "--delay", "5", "--api", "openai", "--poll", "0.5"], ["bench_batch_api.py", "--quick"]),
    ]  # fmt: skip
    done = []
    for name, title, full, small in items:
        arguments = small if quick else full
        print(f"  {title} ...", flush=True)
        output = subprocess.run(
            [sys.executable, str(HERE / arguments[0]), *arguments[1:]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        note = NOTES / f"{name}.md"
        text = note.read_text(encoding="utf-8").strip() if note.is_file() else ""
        done.append((title, "python benchmarks/" + " ".join(arguments), output, text))
    return done


# --------------------------------------------------------------------------- reporting


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}" if theirs else "n/a"


def render(
    args, inputs, happy, faulty, perf, *, workers: int, latency: float, elapsed: float
) -> str:
    lines = [
        "# Benchmark results",
        "",
        "Generated by `python benchmarks/run.py` (do not edit by hand; run it again). Before/after"
        " figures measured by hand when a change was made live in `benchmarks/notes/`, one file per item.",
        "",
        f"- Date: {dt.date.today().isoformat()}; whole run {elapsed / 60:.1f} min.",
        f"- Machine: {os.cpu_count()} cores, {platform.machine()}, {platform.system()} {platform.release()};"
        f" Python {platform.python_version()}.",
        f"- cassia_sc {version('cassia-sc')}, CASSIA {CASSIA_VERSION} (own venv), openai {version('openai')},"
        f" anndata {version('anndata')}, pandas {version('pandas')}.",
        f"- Side by side: one scripted OpenAI-compatible server on 127.0.0.1 answering every request after"
        f" {latency} s, both programs with max_workers = {workers}, each run in its own process (import"
        " time included in the wall time), our cache empty at the start of every run.",
        "",
        "## Happy path, side by side",
        "",
    ]
    for data in inputs:
        ours, theirs = happy[data.name, "ours"], happy[data.name, "cassia"]
        lines += [
            f"### {data.name} ({ours.clusters} clusters)",
            "",
            "| figure | cassia_sc | CASSIA 1.4.0 | ours / CASSIA |",
            "| --- | --- | --- | --- |",
            f"| wall time | {ours.wall:.2f} s | {theirs.wall:.2f} s | {ratio(ours.wall, theirs.wall)} |",
            f"| HTTP requests per cluster | {ours.per_cluster:.2f} | {theirs.per_cluster:.2f} |"
            f" {ratio(ours.per_cluster, theirs.per_cluster)} |",
            f"| prompt characters per cluster | {ours.chars_per_cluster:,.0f} | {theirs.chars_per_cluster:,.0f} |"
            f" {ratio(ours.chars_per_cluster, theirs.chars_per_cluster)} |",
            f"| clusters annotated correctly | {ours.correct} / {ours.clusters} | {theirs.correct} / {theirs.clusters} | |",
            f"| clusters present in the outputs | {ours.present} / {ours.clusters} | {theirs.present} / {theirs.clusters} | |",
            "",
        ]
    lines += [
        f"## Under faults ({inputs[1].name} input, {happy[inputs[1].name, 'ours'].clusters} clusters)",
        "",
        "| scenario | program | wall time | requests | clusters present | correct |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for (label, program), result in faulty.items():
        requests = f"{result.requests}"
        if label.startswith("killed"):
            requests = (
                f"{result.first_requests} before the kill; {result.requests} after the restart,"
                f" {result.repeated} of them completed before the kill"
            )
        lines.append(
            f"| {label} | {NAMES[program]} | {result.wall:.2f} s | {requests} |"
            f" {result.present} / {result.clusters} | {result.correct} |"
        )
    lines += ["", "## Goals", ""]
    big = inputs[1].name
    wall = happy[big, "ours"].wall / happy[big, "cassia"].wall
    chars = [
        happy[d.name, "ours"].chars_per_cluster / happy[d.name, "cassia"].chars_per_cluster
        for d in inputs
    ]
    all_present = all(r.present == r.clusters for (label, p), r in faulty.items() if p == "ours")
    restart = faulty["killed half-way, restarted", "ours"]
    lines += [
        f"- Wall time at most 0.6 x CASSIA's on the happy path ({big}): {wall:.2f} x,"
        f" {'met' if wall <= 0.6 else 'not met'}.",
        f"- Prompt characters per cluster at most 0.7 x CASSIA's: {', '.join(f'{c:.2f}' for c in chars)} x"
        f" ({', '.join(d.name for d in inputs)}), {'met' if max(chars) <= 0.7 else 'not met'}.",
        f"- Every cluster present in our outputs in every fault scenario: {'met' if all_present else 'not met'}.",
        f"- A restarted run repeats no completed request: {restart.repeated} repeated,"
        f" {'met' if restart.repeated == 0 else 'not met'}.",
        "",
        "## Earlier performance items",
        "",
    ]
    for title, command, output, note in perf:
        lines += [f"### {title}", "", f"Command: `{command}`", "", "```", output, "```", ""]
        lines += [note, ""] if note else []
    real = NOTES / "real-models.md"  # minutes per model on a CPU: run by hand, kept as written
    if real.is_file():
        lines += ["## Real models, by hand (llama.cpp's server)", "", real.read_text().strip(), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes; print, do not write RESULTS.md"
    )
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument(
        "--latency", type=float, default=None, help="seconds per request (0.2; quick 0.05)"
    )
    args = parser.parse_args()
    latency = args.latency if args.latency is not None else (0.05 if args.quick else 0.2)
    workers = 8 if args.quick else args.workers
    started = time.perf_counter()
    python = cassia_python()
    work = Path(tempfile.mkdtemp(prefix="cassia-bench-"))
    try:
        inputs = make_inputs(work, args.quick, python)
        print("happy path:", flush=True)
        happy = compare(inputs, work, workers=workers, latency=latency, python=python)
        print("faults:", flush=True)
        faulty = faults(inputs[1], work, workers=workers, latency=latency, python=python)
        print("earlier performance items:", flush=True)
        perf = perf_items(args.quick)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = render(args, inputs, happy, faulty, perf, workers=workers, latency=latency,
                  elapsed=time.perf_counter() - started)  # fmt: skip
    if args.quick:
        print(text)
    else:
        (HERE / "RESULTS.md").write_text(text + "\n")
        print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
