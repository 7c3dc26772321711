"""How sure is each label: the scorer and the annotation boost, through the local server.

A small AnnData with a T, a B and an NK cluster, whose B cluster the scripted model first
calls a T cell: the judge scores that low, the boost asks for CD3E and MS4A1, sees CD3E
not expressed and MS4A1 high in that cluster and low elsewhere, and changes its answer.
"""

from __future__ import annotations

import json
import re
import signal
import threading

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from conftest import cli
from llm_server import RecordedRequest, Reply
from scripted_model import (
    ScriptedModel,
    annotation_reply,
    gene_request_reply,
    score_reply,
    signature,
)

import cassia_sc
from cassia_sc.cli import main

LINEAGES = {
    "0": ("CD3E", "CD3D", "IL7R"),
    "1": ("MS4A1", "CD79A", "CD79B"),
    "2": ("NKG7", "GNLY", "KLRD1"),
}
HANG = 60  # seconds; only a hang waits this long
WRONG_FIRST = {"0": "T cell", "1": "T cell", "2": "NK cell"}  # cluster 1 is B cells


@pytest.fixture
def lymphocytes() -> ad.AnnData:
    """60 cells, 3 clusters of 20, 30 genes: each cluster expresses its own 3 markers."""
    rng = np.random.default_rng(0)
    genes = [g for markers in LINEAGES.values() for g in markers] + [f"G{i}" for i in range(21)]
    counts = rng.poisson(0.3, size=(60, len(genes))).astype(float)
    for k, markers in enumerate(LINEAGES.values()):
        for gene in markers:
            counts[20 * k : 20 * (k + 1), genes.index(gene)] = rng.poisson(8, size=20) + 1
    counts[20:40, genes.index("CD3E")] = 0  # B cells: CD3E measured, expressed by none
    adata = ad.AnnData(counts, var=pd.DataFrame(index=genes))
    adata.obs["cluster"] = pd.Categorical(np.repeat(["0", "1", "2"], 20))
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.tl.rank_genes_groups(adata, "cluster", method="wilcoxon", pts=True)
    return adata


def final_answer(text: str) -> str:
    """The last main cell type an exchange settles on."""
    found = re.findall(r'"main_cell_type": "([^"]+)"', text)
    return found[-1] if found else ""


def evidence_says(text: str, gene: str) -> str:
    """The status of ``gene`` in the evidence shown to the boost: its line's second column."""
    found = re.search(rf"^{gene}\s+(not expressed|not measured|expressed)", text, re.MULTILINE)
    return found.group(1) if found else ""


class Lab:
    """The scripted model of the scenario; it counts what each agent was asked."""

    def __init__(self, adata: ad.AnnData, *, asks: list[str] | None = None) -> None:
        markers = cassia_sc.top_markers(adata)
        self.by_signature = {signature(g): c for c, g in markers.items()}
        self.asks = asks or ["CD3E", "MS4A1"]
        self.model = ScriptedModel(
            {signature(g): WRONG_FIRST[c] for c, g in markers.items()},
            scorer=self.score,
            booster=self.boost,
        )

    def __call__(self, request: RecordedRequest, index: int) -> Reply:
        return self.model(request, index)

    def score(self, request: RecordedRequest, markers: list[str]) -> Reply:
        cluster = self.by_signature[signature(markers)]
        answer = final_answer(request.messages[1]["content"])
        wrong = cluster == "1" and answer != "B cell"
        return Reply(content=score_reply(40 if wrong else 92, f"{answer} for cluster {cluster}"))

    def boost(self, request: RecordedRequest, markers: list[str]) -> Reply:
        last = request.messages[-1]["content"]
        if len(request.messages) == 2:  # the opening: ask for genes
            return Reply(content=gene_request_reply(self.asks))
        if (
            evidence_says(last, "CD3E") == "not expressed"
            and evidence_says(last, "MS4A1") == "expressed"
        ):
            return Reply(
                content=annotation_reply(
                    "B cell", subtypes=("naive B cell",), key_markers=("MS4A1", "CD79A")
                )
            )
        return Reply(content=annotation_reply("T cell", key_markers=("CD3E",)))


def annotate(adata, llm, **options):
    cassia_sc.tl.annotate(adata, tissue="blood", species="human", **llm.options(**options))


def test_scores_are_stored_everywhere(lymphocytes, scripted_llm, tmp_path):
    llm = scripted_llm(handler=Lab(lymphocytes))
    annotate(lymphocytes, llm, score=True, output_name=tmp_path / "run")

    table = lymphocytes.uns["cassia"]["results"].set_index("cluster")
    assert table["score"].to_dict() == {"0": 92, "1": 40, "2": 92}
    assert table.loc["1", "score_reasoning"] == "T cell for cluster 1"
    obs = lymphocytes.obs
    assert (obs.loc[obs["cluster"] == "1", "cassia_score"] == 40).all()
    assert lymphocytes.uns["cassia"]["params"]["score"]

    summary = pd.read_csv(tmp_path / "run_summary.csv", dtype={"Cluster ID": str})
    assert summary.set_index("Cluster ID")["Score"].to_dict() == {"0": 92, "1": 40, "2": 92}
    assert "Scoring_Reasoning" in summary.columns

    html = (tmp_path / "run_report.html").read_text(encoding="utf-8")
    assert 'data-score="40.0" data-score-band="low"' in html and 'id="scored"' in html
    assert '<option value="score">' in html and "score 40</span>" in html

    ax = cassia_sc.pl.review(lymphocytes, show=False)
    titles = [t.get_text() for t in ax.get_xticklabels()]
    assert titles[-1] == "score"
    assert ax.images[0].get_array()[1, -1] == 2  # cluster 1: below 75
    judged = [r for r in llm.server.requests if r.messages[0]["content"].startswith("You grade")]
    assert len(judged) == 3
    # The judge read the markers and the whole exchange, the validator's verdict included.
    assert "[validator, reply]" in judged[0].messages[1]["content"]


def test_the_boost_changes_a_call_the_evidence_contradicts(lymphocytes, scripted_llm, tmp_path):
    llm = scripted_llm(handler=Lab(lymphocytes))
    annotate(lymphocytes, llm, score=True, boost_below=75, output_name=tmp_path / "run")

    table = lymphocytes.uns["cassia"]["results"].set_index("cluster")
    assert table.loc["1", "main_cell_type"] == "B cell"
    assert table.loc["1", "initial_cell_type"] == "T cell" and bool(table.loc["1", "boosted"])
    assert table.loc["1", "score"] == 92 and table.loc["1", "initial_score"] == 40
    assert table.loc["1", "boost_genes"] == "CD3E, MS4A1"
    assert "score 40 is below 75" in table.loc["1", "boost_reason"]
    assert not table.loc["0", "boosted"] and not table.loc["2", "boosted"]  # scored 92

    obs = lymphocytes.obs
    b_cells = obs["cluster"] == "1"
    assert (obs.loc[b_cells, "cassia_celltype"] == "B cell").all()
    assert (obs.loc[b_cells, "cassia_celltype_initial"] == "T cell").all()
    initial, final = obs["cassia_celltype_initial"].astype(str), obs["cassia_celltype"].astype(str)
    assert (initial[~b_cells] == final[~b_cells]).all()

    boosts = [r for r in llm.server.requests if "settle a doubtful" in r.messages[0]["content"]]
    assert len(boosts) == 2  # the gene request, then the answer
    shown = boosts[1].messages[-1]["content"]
    assert (
        evidence_says(shown, "CD3E") == "not expressed"
        and evidence_says(shown, "MS4A1") == "expressed"
    )

    conversations = json.loads(lymphocytes.uns["cassia"]["conversations"])
    booster_turns = conversations[1]["booster"]
    assert any("not expressed" in t["content"] for t in booster_turns if t["role"] == "user")
    summary = pd.read_csv(tmp_path / "run_summary.csv", dtype={"Cluster ID": str})
    assert summary.set_index("Cluster ID").loc["1", "Predicted General Cell Type"] == "B cell"
    html = (tmp_path / "run_report.html").read_text(encoding="utf-8")
    assert "boosted</span>" in html and "<dt>First call</dt><dd>T cell</dd>" in html


def test_an_unknown_symbol_and_200_genes_at_once(lymphocytes, scripted_llm):
    asked = ["CD3E", "MS4A1", "NOTAGENE", "cd79a"] + [f"X{i}" for i in range(196)]
    llm = scripted_llm(handler=Lab(lymphocytes, asks=asked))
    annotate(lymphocytes, llm, score=True, boost_below=75)
    boosts = [r for r in llm.server.requests if "settle a doubtful" in r.messages[0]["content"]]
    shown = boosts[1].messages[-1]["content"]
    assert "You asked for 200 genes; only the first 50 were looked up." in shown
    assert evidence_says(shown, "NOTAGENE") == "not measured"
    assert "CD79A" in shown and "X45" in shown and "X46" not in shown
    table = lymphocytes.uns["cassia"]["results"].set_index("cluster")
    assert len(table.loc["1", "boost_genes"].split(", ")) == 50


def test_a_judge_that_fails_leaves_the_label_and_says_why(lymphocytes, scripted_llm):
    lab = Lab(lymphocytes)

    def broken_judge(request, index):
        if request.messages[0]["content"].startswith("You grade"):
            return Reply(status=500)
        return lab(request, index)

    llm = scripted_llm(handler=broken_judge)
    annotate(lymphocytes, llm, score=True, boost_below=75, max_retries=1)
    table = lymphocytes.uns["cassia"]["results"].set_index("cluster")
    assert table["status"].tolist() == ["ok"] * 3
    assert table["score"].isna().all()
    assert table.loc["1", "score_reasoning"].startswith("Not scored: the judge's call failed")
    assert table.loc["1", "main_cell_type"] == "T cell"
    assert "boosted" not in table.columns  # without scores, no cluster was in doubt
    assert "cassia_score" not in lymphocytes.obs


def test_a_boost_that_fails_keeps_the_first_label(lymphocytes, scripted_llm):
    lab = Lab(lymphocytes)

    def rambling(request, index):
        if "settle a doubtful" in request.messages[0]["content"]:
            return Reply(content="Let me think about it some more.")
        return lab(request, index)

    llm = scripted_llm(handler=rambling)
    annotate(lymphocytes, llm, score=True, boost_below=75, boost_rounds=3)
    table = lymphocytes.uns["cassia"]["results"].set_index("cluster")
    assert table.loc["1", "main_cell_type"] == "T cell" and not table.loc["1", "boosted"]
    assert (
        table.loc["1", "boost_error"] == "No final answer after 3 rounds; the first label is kept."
    )
    assert table.loc["1", "score"] == 40  # not scored again: nothing changed
    assert sum("settle a doubtful" in r.messages[0]["content"] for r in llm.server.requests) == 3


def test_a_marker_table_boost_reads_only_that_clusters_rows(scripted_llm, tmp_path):
    # CD3E is listed first for cluster "B" with a high fold change; cluster "T" has its
    # own, lower row further down. CASSIA 1.4.0 showed the first row of any cluster.
    rows = [
        ("B", "CD3E", 9.9),
        ("B", "MS4A1", 5.0),
        ("B", "CD79A", 4.0),
        ("T", "IL7R", 3.0),
        ("T", "CCR7", 2.5),
        ("T", "CD3E", 1.2),
    ]
    table = pd.DataFrame(rows, columns=["cluster", "gene", "avg_log2FC"])
    table["p_val_adj"], table["pct.1"], table["pct.2"] = 0.001, 0.9, 0.1
    path = tmp_path / "markers.csv"
    table.to_csv(path, index=False)

    def doubtful(request, markers):
        return Reply(content=score_reply(50))

    def ask(request, markers):
        if len(request.messages) == 2:
            return Reply(content=gene_request_reply(["CD3E", "MS4A1"]))
        return Reply(content=annotation_reply("T cell", key_markers=("CD3E",)))

    llm = scripted_llm(scorer=doubtful, booster=ask)
    result, _ = cassia_sc.workflow.run_annotation(
        path, tissue="blood", species="human", score=True, boost_below=75, **llm.options()
    )
    t_boost = next(
        r
        for r in llm.server.requests
        if "settle a doubtful" in r.messages[0]["content"]
        and len(r.messages) == 4
        and "IL7R" in r.messages[1]["content"]
    )
    shown = t_boost.messages[-1]["content"]
    line = next(line for line in shown.splitlines() if line.startswith("CD3E"))
    assert "1.20" in line and "9.9" not in line
    assert re.search(r"^MS4A1\s+not among this cluster's markers", shown, re.MULTILINE)
    assert result["T"].extra["boosted"]


def test_tl_score_and_tl_boost_on_an_annotated_anndata(lymphocytes, scripted_llm):
    llm = scripted_llm(handler=Lab(lymphocytes))
    annotate(lymphocytes, llm)
    assert "score" not in lymphocytes.uns["cassia"]["results"]
    cassia_sc.tl.score(lymphocytes, **llm.options())
    assert lymphocytes.uns["cassia"]["results"]["score"].tolist() == [92, 40, 92]
    boosted = cassia_sc.tl.boost(lymphocytes, copy=True, **llm.options())
    assert boosted.uns["cassia"]["results"]["main_cell_type"].tolist() == [
        "T cell",
        "B cell",
        "NK cell",
    ]
    assert boosted.uns["cassia"]["results"]["score"].tolist() == [92, 92, 92]  # rescored
    assert lymphocytes.uns["cassia"]["results"]["main_cell_type"].iloc[1] == "T cell"  # copy=True
    assert "cassia_celltype_initial" in boosted.obs


def test_ctrl_c_during_the_boost_keeps_the_first_labels_and_resumes(lymphocytes, scripted_llm):
    lab = Lab(lymphocytes)
    released = threading.Event()
    held = []

    def interrupt_at_the_answer(request, index):
        is_boost = "settle a doubtful" in request.messages[0]["content"]
        if is_boost and len(request.messages) == 4 and not held:
            held.append(index)
            signal.raise_signal(signal.SIGINT)  # Ctrl-C while the boost's answer is asked for
            released.wait(HANG)  # and that answer never arrives in this run
        return lab(request, index)

    llm = scripted_llm(handler=interrupt_at_the_answer)
    try:
        with pytest.raises(cassia_sc.BatchInterrupted) as raised:
            annotate(lymphocytes, llm, score=True, boost_below=75, max_workers=1)
        partial = raised.value.result
        assert partial["1"].main_cell_type == "T cell" and not partial["1"].extra.get("boosted")
        assert partial["1"].extra["score"] == 40  # the scoring phase was kept
        assert "cassia" not in lymphocytes.uns  # nothing half-written
        before = llm.server.request_count

        annotate(lymphocytes, llm, score=True, boost_below=75, max_workers=1)
        resumed = llm.server.requests[before:]
    finally:
        released.set()
    # Only what had not been answered is asked again: the boost's final answer and the new
    # score (the annotator, validator, first scores and gene request come from the cache).
    assert len(resumed) == 2
    assert lymphocytes.uns["cassia"]["results"]["main_cell_type"].iloc[1] == "B cell"


def test_a_plan_counts_scoring_and_an_assumed_share_of_boosts(lymphocytes):
    options = {"tissue": "blood", "species": "human", "model": "m", "progress": False}
    plain = cassia_sc.plan(lymphocytes, **options)
    scored = cassia_sc.plan(lymphocytes, score=True, **options)
    boosted = cassia_sc.plan(lymphocytes, score=True, boost_below=75, **options)
    for a, b, c in zip(plain.clusters, scored.clusters, boosted.clusters, strict=True):
        assert a.estimated_prompt_tokens < b.estimated_prompt_tokens < c.estimated_prompt_tokens
    assert "25%" in boosted.settings["estimate_includes"]


def test_the_command_scores_and_boosts_a_file_in_place(lymphocytes, scripted_llm, tmp_path):
    path = tmp_path / "lymphocytes.h5ad"
    lymphocytes.write_h5ad(path)
    llm = scripted_llm(handler=Lab(lymphocytes))
    code = main(cli(llm, "annotate", str(path), "--score", "--boost", "--quiet"))
    assert code == 0
    back = ad.read_h5ad(path)
    table = back.uns["cassia"]["results"].set_index("cluster")
    assert table.loc["1", "main_cell_type"] == "B cell" and table.loc["1", "score"] == 92
    assert (back.obs.loc[back.obs["cluster"] == "1", "cassia_celltype_initial"] == "T cell").all()


# ------------------------------------------------------------------- CASSIA's entry points


def batch_files(adata, llm, prefix) -> None:
    """CASSIA's four files of a first annotation, through the scripted server."""
    cassia_sc.runCASSIA_batch(
        adata,
        str(prefix),
        model=llm.model,
        tissue="blood",
        species="human",
        provider=llm.base_url,
        cache_dir=llm.cache_dir,
        progress=False,
    )


def test_runcassia_pipeline_final_table_and_report_carry_the_boosted_labels(
    lymphocytes, scripted_llm, tmp_path
):
    llm = scripted_llm(handler=Lab(lymphocytes))
    result = cassia_sc.runCASSIA_pipeline(
        "pbmc",
        "blood",
        "human",
        lymphocytes,
        annotation_model=llm.model,
        overall_provider=llm.base_url,
        score_threshold=75,
        merge_annotations=False,
        output_dir=tmp_path,
        conversation_history_mode="final",  # CASSIA's default; the boost reads it all
        cache_dir=llm.cache_dir,
        progress=False,
    )
    assert result["1"].main_cell_type == "B cell"
    summary = pd.read_csv(tmp_path / "pbmc_summary.csv", dtype={"Cluster ID": str})
    row = summary.set_index("Cluster ID").loc["1"]
    assert row["Predicted General Cell Type"] == "B cell" and row["Score"] == 92
    assert row["Initial Cell Type"] == "T cell" and bool(row["Boosted"])
    assert "boosted</span>" in (tmp_path / "pbmc_report.html").read_text(encoding="utf-8")


def test_runcassia_score_batch_scores_the_rows_without_a_score(lymphocytes, scripted_llm, tmp_path):
    llm = scripted_llm(handler=Lab(lymphocytes))
    batch_files(lymphocytes, llm, tmp_path / "run")
    scored = cassia_sc.runCASSIA_score_batch(
        str(tmp_path / "run_summary"),
        model=llm.model,
        provider=llm.base_url,
        cache_dir=llm.cache_dir,
        progress=False,
    )
    assert scored["Score"].tolist() == [92, 40, 92]
    written = pd.read_csv(tmp_path / "run_summary_scored.csv")
    assert (
        written["Score"].tolist() == [92, 40, 92]
        and (tmp_path / "run_summary_scored.html").exists()
    )
    judged = [r for r in llm.server.requests if r.messages[0]["content"].startswith("You grade")]
    # The conversations JSON beside the CSV gave the judge the whole exchange.
    assert "[validator, reply]" in judged[0].messages[1]["content"]

    before = llm.server.request_count
    again = cassia_sc.runCASSIA_score_batch(
        str(tmp_path / "run_summary_scored.csv"),
        model=llm.model,
        provider=llm.base_url,
        cache_dir=llm.cache_dir,
        progress=False,
    )
    assert llm.server.request_count == before  # every row had its score
    assert again["Score"].tolist() == [92, 40, 92]


def test_runcassia_annotationboost_boosts_the_one_cluster_asked(
    lymphocytes, scripted_llm, tmp_path
):
    llm = scripted_llm(handler=Lab(lymphocytes))
    batch_files(lymphocytes, llm, tmp_path / "run")
    outcome = cassia_sc.runCASSIA_annotationboost(
        str(tmp_path / "run_summary.csv"),
        lymphocytes,
        "1",
        "Human PBMC",
        str(tmp_path / "boost_1"),
        model=llm.model,
        provider=llm.base_url,
        cache_dir=llm.cache_dir,
        progress=False,
    )
    assert outcome["result"].main_cell_type == "B cell"
    assert outcome["result"].extra["boost_reason"] == "asked for by the user"
    boosts = [r for r in llm.server.requests if "settle a doubtful" in r.messages[0]["content"]]
    assert all("About this sample: Human PBMC" in r.messages[1]["content"] for r in boosts)
    assert pd.read_csv(outcome["summary_path"])["Predicted General Cell Type"].tolist() == [
        "B cell"
    ]


def test_the_judge_is_its_own_model_at_the_runs_temperature(lymphocytes, scripted_llm):
    llm = scripted_llm(handler=Lab(lymphocytes))
    annotate(lymphocytes, llm, score=True, score_model="judge-model", temperature=0.3)
    judged = [r for r in llm.server.requests if r.messages[0]["content"].startswith("You grade")]
    others = [r for r in llm.server.requests if r not in judged]
    assert {r.model for r in judged} == {"judge-model"} and {r.model for r in others} == {llm.model}
    assert {r.body["temperature"] for r in llm.server.requests} == {0.3}
    assert lymphocytes.uns["cassia"]["params"]["score_model"] == "judge-model"
