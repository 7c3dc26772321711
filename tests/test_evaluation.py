"""Scoring against known labels: a hand-worked table, tl.evaluate, the marker100 benchmark."""

from __future__ import annotations

import pandas as pd
import pytest
import scanpy as sc
from conftest import MARKER100
from scripted_model import signature

import cassia_sc
from cassia_sc.evaluation import score_labels, summarize

pytest.importorskip("cellxgene_ontology_guide")


def test_a_hand_worked_table():
    table = score_labels(
        ["B cells", "T cell", "macrophage", "hepatocyte", "", "cycling cells"],
        [
            "B cell",
            "CD8-positive, alpha-beta T cell",
            "monocyte",
            "natural killer cell",
            "plasma cell",
            "Cycling cell",
        ],
    )
    # B cells = B cell (CL:0000236); T cell is an ancestor of CD8+ alpha-beta T cell; monocyte
    # and macrophage share the parent mononuclear phagocyte; hepatocyte is no NK cell; a
    # cluster without an answer scores 0; "Cycling cell" has no term, so text decides.
    assert table["score"].tolist() == [1.0, 0.5, 0.5, 0.0, 0.0, 1.0]
    assert table["grade"].tolist() == ["full", "partial", "partial", "wrong", "wrong", "full"]
    assert table["truth_term_id"].tolist()[:4] == [
        "CL:0000236",
        "CL:0000625",
        "CL:0000576",
        "CL:0000623",
    ]
    assert summarize(table) == {"mean": 0.5, "n": 6, "full": 2, "partial": 2, "wrong": 2}


def test_tl_evaluate_scores_each_cluster_against_the_majority_label(pbmc, scripted_llm, tmp_path):
    said = {
        "CD4+/CD25 T Reg": "regulatory T cell",  # an ancestor of CD4+ CD25+ ab Treg: 0.5
        "CD14+ Monocyte": "CD14-positive monocyte",  # the same term: 1
        "CD19+ B": "B cell",  # an ancestor of "B cell, CD19-positive": 0.5
        "CD56+ NK": "NK cells",  # natural killer cell: 1
        "Dendritic": "hepatocyte",  # 0
    }  # the five other clusters get "Unknown": 0
    markers = cassia_sc.top_markers(pbmc)
    known = {signature(markers[c]): answer for c, answer in said.items()}
    llm = scripted_llm(known)
    cassia_sc.tl.annotate(pbmc, tissue="blood", species="human", **llm.options())
    cassia_sc.tl.evaluate(pbmc, "bulk_labels")

    evaluation = pbmc.uns["cassia"]["evaluation"]
    scores = evaluation["table"].set_index("cluster")["score"]
    assert scores[list(said)].tolist() == [0.5, 1.0, 0.5, 1.0, 0.0]
    assert (scores.drop(list(said)) == 0).all()
    assert (evaluation["mean"], evaluation["full"], evaluation["partial"], evaluation["wrong"]) == (
        0.3,
        2,
        2,
        6,
    )
    pbmc.write_h5ad(tmp_path / "e.h5ad")
    back = sc.read_h5ad(tmp_path / "e.h5ad").uns["cassia"]["evaluation"]
    assert back["mean"] == pytest.approx(0.3) and back["truth_key"] == "bulk_labels"
    ax = cassia_sc.pl.evaluation(pbmc, show=False)
    assert len(ax.patches) == 10 and "mean score 0.30" in ax.get_title(loc="left")
    with pytest.raises(cassia_sc.CassiaError, match=r"not a column of adata\.obs"):
        cassia_sc.tl.evaluate(pbmc, "cell_type")


def test_marker100_summary_against_its_truth_column(scripted_llm, tmp_path):
    table = pd.read_csv(MARKER100, encoding="utf-8-sig")
    truth = table["True Cell Type"].tolist()
    # The model answers in the plural: every call is still right.
    known = {
        signature([g.strip() for g in m.split(",")]): f"{t}s"
        for m, t in zip(table["Marker List"], truth, strict=True)
    }
    llm = scripted_llm(known)
    summary = cassia_sc.runCASSIA_batch(
        MARKER100,
        str(tmp_path / "m100"),
        tissue=None,
        species="human",
        celltype_column="True Cell Type",
        gene_column_name="Marker List",
        **llm.options(max_workers=8),
    )
    summary["True Cell Type"] = truth
    scored = cassia_sc.evaluate_frame(summary, truth_column="True Cell Type")
    assert len(scored) == 100 and scored["score"].mean() == 1.0
    assert scored["cluster"].tolist() == summary["Cluster ID"].tolist()
    assert (summary["Ontology Term ID"] != "").sum() >= 80  # the terms are in the summary CSV too


def test_main_and_subtypes_get_terms_and_unmapped_ones_are_named(caplog):
    from cassia_sc.batch import map_to_ontology
    from cassia_sc.results import BatchResult, ClusterResult

    batch = BatchResult(
        [
            ClusterResult(
                "0",
                ["MS4A1"],
                "ok",
                main_cell_type="B cells",
                sub_cell_types=["naive B cell", "memory B cell"],
            ),
            ClusterResult("1", ["XIST"], "ok", main_cell_type="Doublets"),
            ClusterResult("2", ["CD3D"], "failed"),
        ]
    )
    map_to_ontology(batch, required=True)
    first, second, failed = batch.clusters
    assert (first.ontology_term_id, first.ontology_label) == ("CL:0000236", "B cell")
    assert first.subtype_ontology_term_ids == ["CL:0000788", "CL:0000787"]
    assert second.ontology_term_id == "unknown" and "1: Doublets" in caplog.text
    assert failed.ontology_term_id is None
    summary = batch.summary().set_index("Cluster ID")
    assert (
        summary.loc["0", "Ontology Term ID"] == "CL:0000236"
        and summary.loc["2", "Ontology Label"] == ""
    )
