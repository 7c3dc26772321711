"""Annotate, score, boost: cassia_sc's ``runCASSIA_pipeline`` beside CASSIA 1.4.0's.

Both programs get the same Seurat FindAllMarkers table (CASSIA's boost accepts no other
marker format) and talk to one scripted OpenAI-compatible server on 127.0.0.1 with a fixed
latency per request and the same ``max_workers``. The scripted annotator first answers a
decoy for every fifth cluster (20 %); the scripted judge grades the decoys 40 and the right
answers 90, so exactly those clusters fall below the threshold of 75; the scripted booster
asks for three genes once, then answers the right type. Each program's server requests
are counted by agent, and its final table and report are read for the boosted labels.

Run: ``python benchmarks/bench_pipeline.py`` (200 clusters, max_workers 16, 0.2 s a
request; writes its section of RESULTS.md) or ``--quick`` (10 clusters, prints only).
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_batch import synthetic_markers
from bench_server import BenchModel, signature, split_markers
from cassia_model import (
    cassia_agent,
    cassia_boost_conclusion,
    cassia_boost_report,
    cassia_gene_request,
    cassia_score,
    cassia_summary,
)
from llm_server import LLMServer, RecordedRequest, Reply
from run import CASSIA_VERSION, _env, cassia_python

TITLE = "Score and boost pipeline, side by side with CASSIA 1.4.0 (runCASSIA_pipeline)"
RESULTS = HERE / "RESULTS.md"
WRONG_EVERY = 5  # every fifth cluster is first annotated wrong: 20 %
LOW, HIGH, THRESHOLD = 40, 90, 75
TISSUE, SPECIES = "blood", "human"
PROGRAMS = ("ours", "cassia")
NAMES = {"ours": "cassia_sc", "cassia": f"CASSIA {CASSIA_VERSION}"}

# Who sent a request: a phrase of the agent's prompt, and where its markers are.
_OUR_SCORER = "You grade cell-type annotations"
_OUR_BOOSTER = "asked to settle a doubtful cell-type annotation"
_OUR_MARKERS = re.compile(r"Ranked marker genes of the cluster \(\d+\):\n(.+)")
# CASSIA's agents past the annotation, as tests/cassia_model.py tells them apart.
_CASSIA_LATER_AGENTS = ("scorer", "booster", "summarizer", "reporter")
_LAST_ANSWER = re.compile(r'"main_cell_type"\s*:\s*"([^"]*)"')

# The rows of the table, in order: the agents of both programs.
AGENTS = {
    "annotator": "annotator",
    "validator": "validator",
    "formatter": "formatter",
    "scorer": "scorer (first scores)",
    "rescorer": "scorer (boosted labels again)",
    "summarizer": "boost: summary of the first annotation",
    "booster": "boost: gene requests and answers",
    "reporter": "boost: report writer",
}
BOOST_AGENTS = ("rescorer", "summarizer", "booster", "reporter")


def decoy(right: str) -> str:
    """The scripted annotator's first, wrong answer: no substring of the right one."""
    return "decoy " + right.removeprefix("type ")


@dataclass
class PipelineModel:
    """The server's handler: the happy-path model, plus both programs' judge and booster.

    ``first`` maps a cluster's signature to the annotator's first answer (a decoy for the
    wrong-first clusters), ``truth`` to the right one.
    """

    truth: dict[str, str]
    first: dict[str, str]
    latency: float = 0.2
    annotation: BenchModel = field(init=False)

    def __post_init__(self) -> None:
        self.annotation = BenchModel(self.first, latency=self.latency)

    def __call__(self, request: RecordedRequest, index: int) -> Reply:
        program, agent, key = self.identify(request)
        if agent in ("annotator", "validator", "formatter"):
            reply = self.annotation.answer(program, agent, key)
        else:
            reply = self.answer(program, agent, key, request)
        reply.delay = self.latency
        return reply

    def identify(self, request: RecordedRequest) -> tuple[str, str, str | None]:
        """(program, agent, signature of the cluster) of a request."""
        first = request.messages[0]["content"] if request.messages else ""
        text = "\n".join(m["content"] or "" for m in request.messages)
        if first.startswith(_OUR_SCORER):
            agent = "rescorer" if "\n[booster, " in text else "scorer"
            return "ours", agent, _key(_OUR_MARKERS, text)
        if _OUR_BOOSTER in first:
            return "ours", "booster", _key(_OUR_MARKERS, text)
        found = cassia_agent(request)
        if found is not None and found[0] in _CASSIA_LATER_AGENTS:
            agent, markers = found
            return "cassia", agent, signature(markers) if markers else None
        return self.annotation.identify(request)

    def answer(self, program: str, agent: str, key: str | None, request: RecordedRequest) -> Reply:
        right = self.truth.get(key or "", "Unknown")
        genes = (key or "A|B|C").split("|")
        text = "\n".join(m["content"] or "" for m in request.messages)
        if agent in ("scorer", "rescorer"):
            graded = _graded(text)
            score = HIGH if graded == right else LOW
            reasoning = (
                f"The final answer, {graded}, "
                + ("agrees" if score == HIGH else "does not agree")
                + f" with the lineage-defining markers {', '.join(genes)}."
            )
            if program == "ours":
                return Reply(content=json.dumps({"score": score, "reasoning": reasoning}))
            return Reply(content=cassia_score(score, reasoning))
        if agent == "summarizer":
            return Reply(content=cassia_summary(self.first.get(key or "", "Unknown"), genes))
        if agent == "reporter":
            return Reply(content=cassia_boost_report(text))
        # The booster: genes once, then the right type.
        asked = any(m.get("role") == "assistant" for m in request.messages)
        hypotheses = ["the first annotation", right]
        if program == "ours":
            if not asked:
                block = {"hypotheses": hypotheses, "genes": genes}
                return Reply(
                    content="Two hypotheses; these genes tell them apart.\n"
                    f"```json\n{json.dumps(block)}\n```"
                )
            block = {
                "main_cell_type": right,
                "sub_cell_types": [f"{right} subtype A"],
                "possible_mixed_cell_types": [],
                "key_markers": genes,
            }
            return Reply(
                content=f"The evidence supports {right}.\n```json\n{json.dumps(block)}\n```"
            )
        if not asked:
            return Reply(content=cassia_gene_request(genes, "The first call rests on few markers."))
        return Reply(content=cassia_boost_conclusion(right, genes))


def _key(pattern: re.Pattern[str], text: str) -> str | None:
    found = pattern.search(text)
    return signature(split_markers(found.group(1))) if found else None


def _graded(text: str) -> str | None:
    """The final answer a judge's request shows: the last ``main_cell_type`` in it."""
    found = _LAST_ANSWER.findall(text)
    return found[-1] if found else None


# --------------------------------------------------------------------------- input


@dataclass
class Case:
    """The marker table both programs read, and what the server and the checks know."""

    path: Path
    right: dict[str, str]  # cluster -> right type
    wrong_first: list[str]  # clusters first annotated with a decoy
    keys: dict[str, str]  # cluster -> signature
    index: dict[str, int]  # cluster -> its number, which its rows' p-values carry

    @property
    def truth(self) -> dict[str, str]:
        return {self.keys[c]: a for c, a in self.right.items()}

    @property
    def first(self) -> dict[str, str]:
        return {
            self.keys[c]: decoy(a) if c in self.wrong_first else a for c, a in self.right.items()
        }


def make_case(work: Path, clusters: int) -> Case:
    """Synthetic clusters as a FindAllMarkers table; every fifth one first annotated wrong.

    Rows are ranked by log2 fold change; cluster k's adjusted p-values are 1e-(50 + k), so
    a looked-up row shown to the booster tells which cluster it came from.
    """
    markers = synthetic_markers(clusters)
    names = list(markers["cluster"])
    rows = [
        {"p_val": 10.0 ** -(50 + k), "avg_log2FC": round(6.0 - 0.1 * rank, 2), "pct.1": 0.9,
         "pct.2": 0.1, "p_val_adj": 10.0 ** -(50 + k), "cluster": cluster, "gene": gene}
        for k, (cluster, genes) in enumerate(zip(names, markers["markers"], strict=True))
        for rank, gene in enumerate(split_markers(genes))
    ]  # fmt: skip
    path = work / "markers_findallmarkers.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return Case(
        path=path,
        right={c: f"type {k:03d}" for k, c in enumerate(names)},
        wrong_first=[c for k, c in enumerate(names) if k % WRONG_EVERY == 0],
        keys={
            c: signature(split_markers(m)) for c, m in zip(names, markers["markers"], strict=True)
        },
        index={c: k for k, c in enumerate(names)},
    )


# --------------------------------------------------------------------------- running


@dataclass
class Outcome:
    """What one program's pipeline did: from the server's log and from its files."""

    out: Path
    wall: float
    returncode: int
    log: str
    by_agent: Counter = field(default_factory=Counter)
    unplaced: int = 0  # requests the server could not tie to a cluster
    boosted: int = 0  # distinct clusters the booster was asked about
    boost_phase: float = 0.0  # first boost request to the last boost reply, s
    own_rows: int = 0  # looked-up genes shown with the cluster's own row
    looked_up: int = 0
    files: dict[str, Path] = field(default_factory=dict)  # what -> file read
    final_right: int | None = None  # wrong-first clusters right in the final table
    final_score: float | None = None  # their mean score there
    report_right: int | None = None  # ... right on their card in the main report
    anywhere_right: int = 0  # ... whose right type is in any output file
    found_in: set[str] = field(default_factory=set)  # those files, cluster names as <cluster>
    written_before_boost: float | None = None  # s from the final table to the first boost

    @property
    def requests(self) -> int:
        return sum(self.by_agent.values())

    @property
    def per_boosted(self) -> float:
        boost = sum(self.by_agent[a] for a in BOOST_AGENTS)
        return boost / self.boosted if self.boosted else 0.0


def run_program(
    program: str, case: Case, server: LLMServer, model: PipelineModel, work: Path, *,
    workers: int, python: Path,
) -> Outcome:  # fmt: skip
    """Run one program's pipeline in its own process; read what it asked and wrote."""
    out = work / program
    out.mkdir(parents=True, exist_ok=True)
    if program == "ours":
        command = [sys.executable, str(HERE / "drive_ours_pipeline.py"), str(case.path), str(out),
                   server.base_url, str(workers), str(work / "cache"), TISSUE, SPECIES,
                   str(THRESHOLD)]  # fmt: skip
    else:
        command = [str(python), str(HERE / "drive_cassia_pipeline.py"), str(case.path), str(out),
                   server.base_url, str(workers), TISSUE, SPECIES, str(THRESHOLD)]  # fmt: skip
    server.reset()
    clock = time.time() - time.monotonic()  # the requests' times are monotonic
    log = work / f"{program}-log.txt"
    start = time.perf_counter()
    with open(log, "w") as sink:
        done = subprocess.run(
            command, stdout=sink, stderr=subprocess.STDOUT, env=_env(), timeout=1800
        )
    outcome = Outcome(
        out, time.perf_counter() - start, done.returncode, log.read_text(errors="replace")
    )

    requests = list(server.requests)
    seen = [model.identify(r) for r in requests]
    outcome.by_agent = Counter(agent for _, agent, _ in seen)
    outcome.unplaced = sum(key is None for _, agent, key in seen if agent != "reporter")
    outcome.boosted = len({key for _, agent, key in seen if agent == "booster"})
    boost = [r for r, (_, agent, _) in zip(requests, seen, strict=True) if agent in BOOST_AGENTS]
    first_boost = min((r.time for r in boost), default=None)
    if boost:
        outcome.boost_phase = max(r.answered_at or r.time for r in boost) - first_boost
    by_key = {key: cluster for cluster, key in case.keys.items()}
    for request, (_, agent, key) in zip(requests, seen, strict=True):
        if agent == "booster" and key in by_key:
            own, shown = _own_rows(request, case.index[by_key[key]])
            outcome.own_rows += own
            outcome.looked_up += shown

    (read_ours if program == "ours" else read_cassia)(case, out, outcome)
    _scan_outputs(case, out, outcome)
    final = outcome.files.get("final table")
    if final and first_boost is not None:
        outcome.written_before_boost = first_boost + clock - Path(final).stat().st_mtime
    return outcome


def _own_rows(request: RecordedRequest, index: int) -> tuple[int, int]:
    """Of the gene rows shown after the booster's first request, how many are its cluster's."""
    messages = request.messages
    asked = [k for k, m in enumerate(messages) if m.get("role") == "assistant"]
    if not asked or asked[0] + 1 >= len(messages):
        return 0, 0
    evidence = messages[asked[0] + 1]["content"] or ""
    exponents = re.findall(r"^\s*GENE\d+\s.*?e-(\d+)", evidence, re.M)
    return sum(int(e) == 50 + index for e in exponents), len(exponents)


def _cards(path: Path) -> dict[str, str]:
    """cluster -> the main type on its card in a report (ours or CASSIA's)."""
    text = path.read_text(errors="replace")
    pattern = r'data-cluster="([^"]*)"\s+data-(?:type|maintype)="([^"]*)"'
    return {html.unescape(c): html.unescape(t) for c, t in re.findall(pattern, text)}


def _final(case: Case, table: pd.DataFrame, outcome: Outcome) -> None:
    table = table.set_index(table["Cluster ID"].astype(str))
    rows = table.reindex(case.wrong_first)
    shown = rows["Predicted General Cell Type"].fillna("").astype(str).str.strip()
    outcome.final_right = int(sum(shown[c] == case.right[c] for c in case.wrong_first))
    outcome.final_score = float(pd.to_numeric(rows["Score"], errors="coerce").mean())


def read_ours(case: Case, out: Path, outcome: Outcome) -> None:
    summary, report = out / "pipeline_summary.csv", out / "pipeline_report.html"
    if summary.exists():
        outcome.files["final table"] = summary
        _final(case, pd.read_csv(summary), outcome)
    if report.exists():
        outcome.files["report"] = report
        cards = _cards(report)
        outcome.report_right = sum(cards.get(c) == case.right[c] for c in case.wrong_first)


def read_cassia(case: Case, out: Path, outcome: Outcome) -> None:
    folders = sorted(out.glob("CASSIA_Pipeline_*"))
    if not folders:
        return
    folder = folders[-1]
    final = folder / "03_csv_files" / "pipeline_FINAL_RESULTS.csv"
    report = folder / "01_annotation_report" / "pipeline_report.html"
    if final.exists():
        outcome.files["final table"] = final
        _final(case, pd.read_csv(final), outcome)
    if report.exists():
        outcome.files["report"] = report
        cards = _cards(report)
        outcome.report_right = sum(cards.get(c) == case.right[c] for c in case.wrong_first)


def _scan_outputs(case: Case, out: Path, outcome: Outcome) -> None:
    """Which output files hold the right type of a wrong-first cluster (the boost's answer)."""
    texts = {p: p.read_text(errors="replace") for p in sorted(out.rglob("*")) if p.is_file()}
    for cluster in case.wrong_first:
        found = [p for p, text in texts.items() if case.right[cluster] in text]
        outcome.anywhere_right += bool(found)
        outcome.found_in |= {_shown(p, out).replace(cluster, "<cluster>") for p in found}


def _shown(path: Path | str, out: Path) -> str:
    """A path as the table shows it: from the program's output folder, without the date."""
    relative = str(Path(path).relative_to(out))
    return re.sub(r"CASSIA_Pipeline_(.*?)_\d{8}_\d{6}", r"CASSIA_Pipeline_\1_<date>", relative)


# --------------------------------------------------------------------------- reporting


def _figures(o: Outcome, n: int, wrong: int) -> dict[str, str]:
    """One program's column of the table: figure -> value."""

    def count(value: int | None) -> str:
        return "n/a (no file)" if value is None else f"{value} / {wrong}"

    before = o.written_before_boost
    return {
        "finished": "yes" if o.returncode == 0 else f"no (exit {o.returncode})",
        "wall time": f"{o.wall:.2f} s",
        "HTTP requests": str(o.requests),
        **{f"  {label}": str(o.by_agent[agent]) for agent, label in AGENTS.items()},
        "clusters boosted": f"{o.boosted} / {n}",
        "requests per boosted cluster": f"{o.per_boosted:.2f}",
        "boost phase (first boost request to last reply)": f"{o.boost_phase:.2f} s",
        "genes looked up, shown with the cluster's own row": f"{o.own_rows} / {o.looked_up}",
        "wrong-first clusters right in the final table": count(o.final_right),
        "  their mean score there": "n/a" if o.final_score is None else f"{o.final_score:.0f}",
        "wrong-first clusters right in the report": count(o.report_right),
        "wrong-first clusters right in any output file": count(o.anywhere_right),
        "final table written before the first boost request": (
            "n/a"
            if before is None
            else f"yes ({before:.2f} s before)"
            if before > 0
            else f"no ({-before:.2f} s after)"
        ),
    }


def render(case: Case, outcomes: dict[str, Outcome], *, workers: int, latency: float) -> str:
    n, wrong = len(case.right), len(case.wrong_first)
    columns = [_figures(outcome, n, wrong) for outcome in outcomes.values()]
    rows = [(figure, [column[figure] for column in columns]) for figure in columns[0]]
    header = ("figure", NAMES["ours"], NAMES["cassia"])
    widths = [max(len(r[0]) for r in [header, *[(f, *v) for f, v in rows]])]
    widths += [max(len(header[k]), *(len(v[k - 1]) for _, v in rows)) for k in (1, 2)]
    lines = [
        f"{n} synthetic clusters in a FindAllMarkers table (CASSIA's boost takes no other format).",
        f"{wrong} of them ({wrong / n:.0%}) first annotated wrong and scored {LOW}; right answers "
        f"scored {HIGH}; threshold {THRESHOLD}.",
        "The scripted booster asks for 3 genes once, then answers the right type.",
        f"max_workers = {workers}; every request answered after {latency} s.",
        "",
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    for figure, values in rows:
        cells = [figure, *values]
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    lines.append("")
    for program, outcome in outcomes.items():
        out = outcome.out
        read = "; ".join(f"{what} {_shown(path, out)}" for what, path in outcome.files.items())
        lines.append(f"{NAMES[program]}: read the {read or 'no file'}.")
        lines.append(
            f"{NAMES[program]}: the boost's answers are in "
            + (", ".join(sorted(outcome.found_in)) or "no file")
            + "."
        )
        if outcome.unplaced:
            lines.append(f"{NAMES[program]}: {outcome.unplaced} requests not tied to a cluster")
        if outcome.returncode:
            tail = " | ".join(outcome.log.strip().splitlines()[-5:])
            lines.append(f"{NAMES[program]} failed; its last lines: {tail}")
    lines += [
        "",
        "Requests per boosted cluster: all the boost's requests (with CASSIA's summary and report",
        "writer, and our rescore) over the clusters boosted. From CASSIA's code: runCASSIA_pipeline",
        "(pipeline/pipeline.py) writes FINAL_RESULTS.csv and the report, then boosts the clusters",
        "below the threshold one after another (a for loop, without max_workers); each boost has",
        "the model summarise a first annotation longer than 500 characters and write the boost's",
        "report, and its answer stays in 02_annotation_boost/<cluster>/: nothing reads it back or",
        "rescores it. Its gene look-up (get_marker_info) shows a gene's first row in the whole",
        "marker table, whichever cluster it belongs to.",
    ]
    return "\n".join(lines)


def write_section(text: str, command: str) -> None:
    """Put this benchmark's section into RESULTS.md, replacing an earlier one."""
    section = f"### {TITLE}\n\nCommand: `{command}`\n\n```\n{text}\n```\n"
    lines = RESULTS.read_text().splitlines(keepends=True) if RESULTS.exists() else []
    heading = f"### {TITLE}\n"
    if heading in lines:
        start = lines.index(heading)
        end = next(
            (k for k in range(start + 1, len(lines)) if lines[k].startswith(("## ", "### "))),
            len(lines),
        )
        lines[start:end] = [section, "\n"]
    else:
        if lines and lines[-1].strip():
            lines.append("\n")
        lines += [section, "\n"]
    RESULTS.write_text("".join(lines).rstrip("\n") + "\n\n")


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 clusters; print only")
    parser.add_argument("--clusters", type=int, default=None, help="200; quick 10")
    parser.add_argument("--workers", type=int, default=None, help="16; quick 8")
    parser.add_argument("--latency", type=float, default=None, help="s a request: 0.2; quick 0.05")
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs' files here")
    args = parser.parse_args()
    clusters = args.clusters or (10 if args.quick else 200)
    workers = args.workers or (8 if args.quick else 16)
    latency = args.latency if args.latency is not None else (0.05 if args.quick else 0.2)
    python = cassia_python()
    work = args.keep or Path(tempfile.mkdtemp(prefix="cassia-bench-pipeline-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        case = make_case(work, clusters)
        model = PipelineModel(case.truth, case.first, latency=latency)
        with LLMServer(model) as server:
            outcomes = {
                program: run_program(
                    program, case, server, model, work, workers=workers, python=python
                )
                for program in PROGRAMS
            }
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    text = render(case, outcomes, workers=workers, latency=latency)
    print(text)
    if not args.quick:
        write_section(text, "python " + " ".join(["benchmarks/bench_pipeline.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
