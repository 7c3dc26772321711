"""CASSIA 1.4.0's own functions read our files with the conversation in them, and ours read its.

One scripted server on 127.0.0.1 (:class:`cassia_model.CassiaModel`) answers both programs
and records every prompt. Our ``runCASSIA_batch`` annotates a few clusters of the bundled
FindAllMarkers table; then CASSIA 1.4.0, in its own venv (``tests/cassia_env.py``), runs
its scorer on our summary (which reads our conversations JSON) and on our full CSV (which
reads the ``Conversation History`` column), its annotation boost on one cluster, and its
report generators. Each annotator reply carries a sentence unique to its program and
cluster (:meth:`CassiaModel.trace`): CASSIA saw a cluster's conversation when the prompt
it sent for that cluster holds that cluster's sentence and no other's. CASSIA falls back
silently to an empty history when it cannot read one, so an empty ``<annotation_history>``
would fail these tests, not pass them.

The other way round: CASSIA's ``runCASSIA_batch`` annotates the same clusters, and our
``runCASSIA_score_batch`` grades its files with CASSIA's conversation in the judge's prompt.

Each CASSIA step names its own model, so that its requests are told apart from the
others' in the server's record. All of them run in one CASSIA process (importing CASSIA
takes 4 s), one after the other, each with its own outcome, checked by the tests that use
it.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from cassia_env import cassia_environment, cassia_python
from cassia_model import CassiaModel, Exchange, split_markers
from llm_server import LLMServer
from scripted_model import signature

import cassia_sc

pytestmark = pytest.mark.slow

DRIVER = Path(__file__).with_name("cassia_driver.py")
CLUSTERS = ("0", "3", "4", "8")  # Louvain clusters of pbmc68k_reduced: a T, NK, B, plasma
BOOSTED = "3"
KEY = "interop-test-key"  # CASSIA reads it from CUSTOMIZED_API_KEY; the server needs none
# One model name per step, so each step's requests are told apart in the record.
OUR_ANNOTATOR = "ours-annotator"
JUDGE_OF_JSON = "cassia-judge-json"  # CASSIA's scorer on our summary + conversations JSON
JUDGE_OF_CSV = "cassia-judge-csv"  # CASSIA's scorer on our full CSV's history column
CASSIA_BOOSTER = "cassia-booster"
CASSIA_ANNOTATOR = "cassia-annotator"
OUR_JUDGE = "ours-judge"
# The files of the CASSIA steps, in the work folder.
SCORED_FROM_JSON = "cassia_scored_summary.csv"
SCORED_FROM_CSV = "cassia_scored_full.csv"
REPORT_FROM_JSON = "cassia_report_from_json.html"
CASSIA_BATCH = "cassia_batch"
# A CASSIA step takes seconds here (4 of them to import CASSIA); a hung one is stopped.
TIMEOUT = 600


@dataclass(frozen=True)
class Outcome:
    """What one command of ``cassia_driver.py`` did in the shared CASSIA process."""

    status: int
    error: str  # its traceback, when it raised
    output: str  # what it printed


@dataclass
class Interop:
    """The shared run: the server, its model, the work folder and our batch's files."""

    server: LLMServer
    model: CassiaModel
    work: Path
    markers: Path  # the FindAllMarkers table of CLUSTERS, as CSV
    ours: Path  # our runCASSIA_batch's output prefix

    def file(self, suffix: str) -> Path:
        """One of our batch's files, e.g. ``"_summary.csv"``."""
        return Path(f"{self.ours}{suffix}")

    def cassia(self, commands: dict[str, list[str]]) -> dict[str, Outcome]:
        """Run ``cassia_driver.py``'s commands, in order, in one CASSIA process in the work
        folder; return each one's outcome by its name."""
        plan, outcomes = self.work / "cassia_steps.json", self.work / "cassia_outcomes.json"
        plan.write_text(json.dumps(commands), encoding="utf-8")
        done = subprocess.run(
            [str(cassia_python()), str(DRIVER), "steps", str(plan), str(outcomes)],
            cwd=self.work,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env=cassia_environment(CUSTOMIZED_API_KEY=KEY),
        )
        assert done.returncode == 0, f"CASSIA's process failed:\n{done.stdout}\n{done.stderr}"
        ran = json.loads(outcomes.read_text(encoding="utf-8"))
        return {name: Outcome(**ran[name]) for name in commands}

    def keys(self, table: Path) -> dict[str, str]:
        """Cluster -> signature of its markers, as a results table lists them."""
        rows = pd.read_csv(table, dtype={"Cluster ID": str})
        return {
            c: signature(split_markers(m))
            for c, m in zip(rows["Cluster ID"], rows["Marker List"], strict=True)
        }


@pytest.fixture(scope="module")
def interop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Interop]:
    """Our runCASSIA_batch on four clusters, against a CassiaModel server."""
    cassia_python()  # build CASSIA's venv first, so that a failing build says so plainly
    work = tmp_path_factory.mktemp("interop")
    table = cassia_sc.loadmarker("pbmc68k_unprocessed")
    table = table[table["cluster"].astype(str).isin(CLUSTERS)]
    markers = work / "markers.csv"
    table.to_csv(markers, index=False)
    answers = {signature(g): f"type {c}" for c, g in cassia_sc.top_markers(table).items()}
    model = CassiaModel(answers)
    with LLMServer(model) as server:
        prefix = work / "ours"
        cassia_sc.runCASSIA_batch(
            table,
            str(prefix),
            50,
            OUR_ANNOTATOR,
            tissue="blood",
            species="human",
            provider=server.base_url,
            max_workers=2,
            validate_api_key_before_start=False,
            auto_convert_ids=False,
            verbose=False,
            cache_dir=work / "cache",
        )
        yield Interop(server, model, work, markers, prefix)


def one(exchanges: list[Exchange], what: str) -> Exchange:
    assert len(exchanges) == 1, f"{what}: {len(exchanges)} requests, expected 1"
    return exchanges[0]


def assert_only_its_own(text: str, keys: dict[str, str], cluster: str, program: str) -> None:
    """``text`` holds ``cluster``'s trace of ``program`` and no other cluster's."""
    trace = CassiaModel.trace
    assert trace(program, keys[cluster]) in text, f"cluster {cluster}: its conversation is missing"
    others = [c for c in keys if c != cluster and trace(program, keys[c]) in text]
    assert not others, f"cluster {cluster}: carries the conversation of {others}"


# -- our files, as CASSIA's readers expect them -------------------------------------------


def test_our_files_hold_each_clusters_conversation_in_cassias_shape(interop):
    keys = interop.keys(interop.file("_summary.csv"))
    assert sorted(keys) == sorted(CLUSTERS)
    conversations = json.loads(interop.file("_conversations.json").read_text(encoding="utf-8"))
    assert sorted(conversations) == sorted(CLUSTERS)  # keyed by cluster name
    full = pd.read_csv(interop.file("_full.csv"), dtype={"Cluster ID": str})
    histories = dict(zip(full["Cluster ID"], full["Conversation History"], strict=True))
    for cluster, key in keys.items():
        # What our annotator was told for this cluster is what the JSON and the CSV keep.
        reply = one(
            interop.model.sent("ours", "annotator", key=key, model=OUR_ANNOTATOR), cluster
        ).reply
        entry = conversations[cluster]
        assert entry["annotations"] == [reply]
        assert len(entry["validations"]) == 1
        assert histories[cluster].startswith(f"Final Annotation Agent: {reply}")
        assert " | Coupling Validator: " in histories[cluster]
    assert interop.file("_record.json").is_file()


# -- CASSIA's steps, in one process ----------------------------------------------------------


@pytest.fixture(scope="module")
def cassia(interop) -> dict[str, Outcome]:
    """Every CASSIA step of this module, by name, run in one CASSIA process.

    A step's files are what a later step reads: the reports read the scored tables.
    """
    work, url = interop.work, ["--base-url", interop.server.base_url]
    return interop.cassia(
        {
            # runCASSIA_score_batch on our summary: it finds our conversations JSON.
            "score of the summary": [
                "score", str(interop.file("_summary.csv")), str(work / SCORED_FROM_JSON),
                *url, "--model", JUDGE_OF_JSON,
            ],
            # runCASSIA_score_batch on our full CSV: it reads the history column.
            "score of the full CSV": [
                "score", str(interop.file("_full.csv")), str(work / SCORED_FROM_CSV),
                *url, "--model", JUDGE_OF_CSV,
            ],
            # runCASSIA_annotationboost on one cluster of our files.
            "boost": [
                "boost", str(interop.file("_summary.csv")), str(interop.markers), BOOSTED,
                str(work / f"cassia_boost_{BOOSTED}"), *url, "--model", CASSIA_BOOSTER,
            ],
            # The batch report of the scored summary, with our conversations JSON.
            "batch report": [
                "batch-report", str(work / SCORED_FROM_JSON),
                str(interop.file("_conversations.json")), str(work / REPORT_FROM_JSON),
            ],
            "score report": ["score-report", str(work / SCORED_FROM_CSV), "cassia_score_index"],
            # CASSIA's own batch, for our scorer.
            "batch": [
                "batch", str(interop.markers), str(work / CASSIA_BATCH),
                *url, "--model", CASSIA_ANNOTATOR,
            ],
        }
    )  # fmt: skip


def succeeded(cassia: dict[str, Outcome], step: str) -> Outcome:
    """The outcome of a CASSIA step, which must have run to the end."""
    done = cassia[step]
    assert done.status == 0, f"CASSIA's {step} failed:\n{done.output}\n{done.error}"
    return done


# -- CASSIA's scorer ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scored_from_json(interop, cassia) -> Path:
    """CASSIA's runCASSIA_score_batch on our summary: it finds our conversations JSON."""
    succeeded(cassia, "score of the summary")
    return interop.work / SCORED_FROM_JSON


@pytest.fixture(scope="module")
def scored_from_csv(interop, cassia) -> Path:
    """CASSIA's runCASSIA_score_batch on our full CSV: it reads the history column."""
    succeeded(cassia, "score of the full CSV")
    return interop.work / SCORED_FROM_CSV


def scorer_prompt(interop: Interop, judge: str, cluster: str, key: str) -> str:
    """The one prompt CASSIA's scorer sent its judge ``judge`` for a cluster."""
    prompt = one(
        interop.model.sent("cassia", "scorer", key=key, model=judge), f"cluster {cluster}"
    ).prompt
    assert "<annotation_history>\n\n</annotation_history>" not in prompt, f"cluster {cluster}"
    return prompt


def assert_scores_landed(scored: Path, keys: dict[str, str]) -> None:
    """The judge's grades and reasons are in CASSIA's output, each on its cluster's row."""
    table = pd.read_csv(scored, dtype={"Cluster ID": str})
    assert dict(zip(table["Cluster ID"], table["Score"], strict=True)) == {
        c: CassiaModel.score(k) for c, k in keys.items()
    }
    for cluster, reasoning in zip(table["Cluster ID"], table["Scoring_Reasoning"], strict=True):
        assert reasoning == CassiaModel.score_reasoning(keys[cluster])


def test_cassias_scorer_reads_our_conversations_json(interop, scored_from_json):
    keys = interop.keys(interop.file("_summary.csv"))
    for cluster, key in keys.items():
        if cluster == "0":
            continue  # CASSIA cannot look cluster 0 up in any JSON: see the next test
        prompt = scorer_prompt(interop, JUDGE_OF_JSON, cluster, key)
        assert_only_its_own(prompt, keys, cluster, "ours")
        # CASSIA's layout of a JSON entry: it read our file, not a column.
        assert "=== Annotation Attempt 1 ===\nTrace ours" in prompt
        assert "=== Validation 1 ===" in prompt
    assert_scores_landed(scored_from_json, keys)


def test_cassias_scorer_sees_cluster_0_of_our_summary(interop, scored_from_json):
    # CASSIA 1.4.0 reads the cluster column with pandas, so cluster "0" is the integer 0,
    # and it looks a cluster up in the conversations JSON only when that value is truthy;
    # otherwise it takes the row's own "Conversation History" (and "" when the table has
    # none, as CASSIA's own summary has not). Every Louvain or Leiden clustering has a
    # cluster 0: our summary must carry that column for CASSIA's judge to see it.
    keys = interop.keys(interop.file("_summary.csv"))
    prompt = scorer_prompt(interop, JUDGE_OF_JSON, "0", keys["0"])
    assert_only_its_own(prompt, keys, "0", "ours")


def test_cassias_scorer_reads_our_full_csvs_history_column(interop, scored_from_csv):
    keys = interop.keys(interop.file("_summary.csv"))
    for cluster, key in keys.items():
        prompt = scorer_prompt(interop, JUDGE_OF_CSV, cluster, key)
        assert_only_its_own(prompt, keys, cluster, "ours")
        # The column's sections, as CASSIA passes them on.
        assert "Final Annotation Agent: Trace ours" in prompt
        assert " | Coupling Validator: " in prompt
    assert_scores_landed(scored_from_csv, keys)


# -- CASSIA's annotation boost ----------------------------------------------------------------


@pytest.fixture(scope="module")
def boosted(cassia) -> dict[str, object]:
    """CASSIA's runCASSIA_annotationboost on one cluster of our files: what it returned."""
    done = succeeded(cassia, "boost")
    return json.loads(done.output.strip().splitlines()[-1])


def test_cassias_boost_sees_the_clusters_conversation(interop, boosted):
    keys = interop.keys(interop.file("_summary.csv"))
    key = keys[BOOSTED]
    exchanges = interop.model.sent("cassia", "booster", key=key, model=CASSIA_BOOSTER)
    # A gene request, answered from our marker table, then the conclusion.
    assert [e.reply.startswith("FINAL ANNOTATION COMPLETED") for e in exchanges] == [False, True]
    first, last = exchanges
    assert_only_its_own(first.prompt, keys, BOOSTED, "ours")
    assert "No previous annotation available" not in first.prompt
    # Each requested gene came back as a row of our marker table's statistics.
    assert "gene avg_log2FC pct.1 pct.2 p_val_adj" in last.prompt
    for gene in key.split(", "):
        assert re.search(rf"^{gene}\s+-?\d", last.prompt, re.M), gene
    # CASSIA's own files of the boost keep the conversation it was given.
    raw = Path(str(boosted["raw_text_path"]))
    assert CassiaModel.trace("ours", key) in raw.read_text(encoding="utf-8")
    report = Path(str(boosted["summary_report_path"])).read_text(encoding="utf-8")
    assert f"type {BOOSTED}" in report  # the boost's final answer, from its report writer


# -- CASSIA's reports ----------------------------------------------------------------------------


def test_cassias_batch_report_shows_our_annotators_text_from_the_json(
    interop, cassia, scored_from_json
):
    # CASSIA's report of a scored table, given each cluster's entry of our conversations
    # JSON as CASSIA's own pipeline gives it.
    succeeded(cassia, "batch report")
    output = interop.work / REPORT_FROM_JSON
    page = html.unescape(output.read_text(encoding="utf-8"))
    keys = interop.keys(interop.file("_summary.csv"))
    for cluster, key in keys.items():
        assert CassiaModel.trace("ours", key) in page, f"cluster {cluster}"
    assert "No annotation data available" not in page


def test_cassias_reports_show_our_annotators_text_from_the_full_csv(
    interop, cassia, scored_from_csv
):
    keys = interop.keys(interop.file("_summary.csv"))
    # runCASSIA_generate_score_report: one page per row of the scored table, parsed from
    # its Conversation History sections.
    succeeded(cassia, "score report")
    for cluster, key in keys.items():
        page = (interop.work / f"report_{cluster}.html").read_text(encoding="utf-8")
        assert "Final Annotation Analysis" in page  # the annotator's section was found
        assert_only_its_own(page, keys, cluster, "ours")
        assert f'<div class="score-badge">{CassiaModel.score(key)}</div>' in page
    assert (interop.work / "cassia_score_index.html").is_file()
    # The batch report runCASSIA_score_batch wrote beside the scored full CSV, from the
    # same column.
    page = html.unescape(scored_from_csv.with_name("cassia_scored_full_report.html").read_text())
    for key in keys.values():
        assert CassiaModel.trace("ours", key) in page
    assert "No annotation data available" not in page


# -- the other way: our scorer on CASSIA's files ------------------------------------------------


def test_our_scorer_sees_the_conversation_of_cassias_batch(interop, cassia):
    succeeded(cassia, "batch")
    prefix = interop.work / CASSIA_BATCH
    summary = Path(f"{prefix}_summary.csv")
    keys = interop.keys(summary)
    assert sorted(keys) == sorted(CLUSTERS)
    scored = cassia_sc.runCASSIA_score_batch(
        str(summary),
        model=OUR_JUDGE,
        provider=interop.server.base_url,
        cache_dir=interop.work / "cache",
        progress=False,
    )
    for cluster, key in keys.items():
        # CASSIA's annotator wrote the trace for this cluster; our judge read it back.
        one(interop.model.sent("cassia", "annotator", key=key, model=CASSIA_ANNOTATOR), cluster)
        prompt = one(interop.model.sent("ours", "scorer", key=key, model=OUR_JUDGE), cluster).prompt
        assert_only_its_own(prompt, keys, cluster, "cassia")
        assert "VALIDATION PASSED" in prompt  # CASSIA's validator's reply, too
    assert dict(zip(scored["Cluster ID"].astype(str), scored["Score"], strict=True)) == {
        c: 90 for c in CLUSTERS
    }
    assert Path(f"{prefix}_summary_scored.csv").is_file()
