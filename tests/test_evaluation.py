"""Scoring against known labels: a hand-worked table, tl.evaluate, the marker100 benchmark."""

from __future__ import annotations

import pandas as pd
import pytest
import scanpy as sc
from conftest import MARKER100
from scripted_model import signature

import cassia_sc
from cassia_sc.evaluation import evaluate_frame, score_labels, summarize

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
    # B cells = B cell (CL:0000236); T cell is an ancestor of CD8+ alpha-beta T cell, three
    # is_a steps up (60); monocyte and macrophage are siblings under mononuclear phagocyte
    # (70); hepatocyte is no NK cell; a cluster without an answer scores 0; "Cycling cell"
    # and "cycling cells" are both a cell, cycling.
    assert table["score"].tolist() == [1.0, 0.5, 0.5, 0.0, 0.0, 1.0]
    assert table["grade"].tolist() == ["full", "partial", "partial", "wrong", "wrong", "full"]
    assert table["score_100"].tolist() == [100.0, 60.0, 70.0, 0.0, 0.0, 100.0]
    assert table["relation"].tolist() == [
        "same term",
        "broader",
        "relative",
        "unrelated",
        "no answer",
        "same term",
    ]
    assert table["related"].tolist() == [True, True, True, False, False, True]
    assert table["truth_term_id"].tolist()[:4] == [
        "CL:0000236",
        "CL:0000625",
        "CL:0000576",
        "CL:0000623",
    ]
    assert summarize(table) == {
        "mean": 0.5,
        "mean_100": 55.0,
        "n": 6,
        "full": 2,
        "partial": 2,
        "wrong": 2,
    }


def test_tl_evaluate_scores_each_cluster_against_the_majority_label(
    pbmc, scripted_llm, tmp_path, monkeypatch
):
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
    seen: list[object] = []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("tissue"))
        return score_labels(*args, **kwargs)

    monkeypatch.setattr("cassia_sc.tl._evaluate.score_labels", spy)
    cassia_sc.tl.evaluate(pbmc, "bulk_labels")
    assert seen == ["blood"]  # the run's tissue reaches the mapping

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
    assert back["mean_100"] == pytest.approx(evaluation["table"]["score_100"].mean())
    assert {"score_100", "relation", "related"} <= set(back["table"].columns)
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
    # The truth joins the summary by cluster name (repeated names are numbered " (2)", as
    # cassia_sc names the clusters), never by position.
    seen: dict[str, int] = {}
    known = {}
    for label in truth:
        seen[label] = seen.get(label, 0) + 1
        known[label if seen[label] == 1 else f"{label} ({seen[label]})"] = label
    scored = cassia_sc.evaluate_frame(summary, truth=known)
    assert len(scored) == 100 and scored["score"].mean() == 1.0
    assert scored["score_100"].mean() == 100.0
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


# Real answers of GPT-4o and Claude 3.5 on marker100, with the CASSIA paper judge's score
# (CASSIA's benchmark folder): (answer, truth, tissue, judge, our score, our score_100,
# relation).
JUDGED = [
    ("Plasma Cells", "B cell", "Kidney", 90, 0.5, 80.0, "lineage"),  # a link CL lacks
    ("Activated Neutrophils", "Neutrophil", "Kidney", 90, 1.0, 100.0, "same term"),
    ("Conventional NK Cells", "NK cell", "Kidney", 90, 1.0, 100.0, "same term"),
    ("Connective Tissue Mast Cells", "Mast cell", "Kidney", 90, 0.5, 90.0, "more specific"),
    ("Proximal Tubule Cells (S1 Segment)", "Proximal tubule", "Kidney", 90, 1.0, 100.0,
     "same term"),
    ("Thick Ascending Limb (TAL) Cells", "Thick ascending limb of Loop of Henle", "Kidney",
     90, 1.0, 100.0, "same term"),
    ("Interstitial Fibroblasts", "Fibroblast", "Kidney", 90, 0.5, 90.0, "more specific"),
    ("Dermal Fibroblasts", "Dermis fibroblast", "Fetal Skin", 100, 1.0, 100.0, "same term"),
    ("Vascular Smooth Muscle Cells", "Pericyte/SMC", "lung", 90, 0.5, 90.0, "more specific"),
    ("PDGFRA+ Myofibroblast", "fibroblast", "large intestine", 90, 0.5, 80.0, "lineage"),
    ("Principal Cells", "Connecting tubule", "kidney", 90, 0.5, 70.0, "overlap"),
    ("Î±-Intercalated Cell", "Intercalated cell", "kidney", 90, 0.5, 90.0, "more specific"),
    ("Proximal Tubule Epithelial Cells", "Pelvic epithelium", "Kidney", 30, 0.0, 0.0,
     "unrelated"),
    ("Neural Progenitor Cells", "monocyte", "largeintestine", 0, 0.0, 0.0, "unrelated"),
    ("Cone Photoreceptor Cells", "Cartilage cell", "Whole Mouse Atlas", 0, 0.0, 0.0,
     "unrelated"),
    ("erythrocytes", "Cycling cell", "Whole Mouse Atlas", 0, 0.0, 0.0, "unrelated"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("answer", "truth", "tissue", "judge", "score", "score_100", "kind"), JUDGED
)
def test_scores_of_real_answers(answer, truth, tissue, judge, score, score_100, kind):
    row = score_labels([answer], [truth], tissue=tissue).iloc[0]
    assert (row["score"], row["score_100"], row["relation"]) == (score, score_100, kind)
    assert (judge >= 90) == (row["score"] >= 0.5)  # agrees with the judge on these
    assert row["related"] == (score_100 > 0)


def test_unrelated_and_unmapped_rows_are_left_for_a_judge():
    table = score_labels(
        ["Basal Keratinocytes", "L-cell", "Plasma Cells"],
        ["Proliferating cell", "intestinal enteroendocrine cell", "B cell"],
        tissue="skin",
    )
    assert table["relation"].tolist() == ["unrelated", "unmapped", "lineage"]
    assert table["related"].tolist() == [False, False, True]


def test_score_labels_reads_the_state_and_broader_flags():
    table = score_labels(["Activated Neutrophils", "Absorptive Enterocytes"], ["x", "y"])
    assert table["predicted_state"].tolist() == ["Activated", "Absorptive"]
    assert table["predicted_broader"].tolist() == [False, True]


def _summary() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "Cluster ID": ["kidney_1", "kidney_2", "kidney_3", "kidney_4"],
            "Predicted General Cell Type": [
                "Plasma Cells",
                "Interstitial Fibroblasts",
                "Neural Progenitor Cells",
                "Activated Neutrophils",
            ],
            "Tissue": ["kidney"] * 4,
        }
    )


TRUTH = {"kidney_1": "B cell", "kidney_2": "Fibroblast", "kidney_3": "monocyte",
         "kidney_4": "Neutrophil"}  # fmt: skip


def test_evaluate_frame_joins_the_truth_by_cluster_name_not_by_position():
    summary = _summary()
    expected = evaluate_frame(summary, truth=TRUTH).set_index("cluster")
    assert expected["score_100"].tolist() == [80.0, 90.0, 0.0, 100.0]
    shuffled = summary.sample(frac=1, random_state=3).reset_index(drop=True)
    assert shuffled["Cluster ID"].tolist() != summary["Cluster ID"].tolist()
    truth_table = pd.DataFrame({"Cluster ID": list(TRUTH), "True Cell Type": list(TRUTH.values())})
    for truth in (TRUTH, pd.Series(TRUTH), truth_table.iloc[::-1]):
        got = evaluate_frame(shuffled, truth=truth, truth_column="True Cell Type")
        assert got["cluster"].tolist() == shuffled["Cluster ID"].tolist()  # the frame's order
        pd.testing.assert_frame_equal(got.set_index("cluster").loc[expected.index], expected)
    # the truth as a column of the frame: each row its own
    own = shuffled.assign(truth=shuffled["Cluster ID"].map(TRUTH))
    got = evaluate_frame(own, truth_column="truth").set_index("cluster")
    pd.testing.assert_frame_equal(got.loc[expected.index], expected)


def test_evaluate_frame_uses_the_tissue_column_or_the_given_tissue():
    summary = _summary().iloc[[1]]
    assert evaluate_frame(summary, truth=TRUTH)["predicted_term_id"].item() == "CL:1000692"
    elsewhere = summary.drop(columns="Tissue")
    got = evaluate_frame(elsewhere, truth=TRUTH)  # no tissue: the broader fibroblast
    assert got["predicted_term_id"].item() == "CL:0000057"
    got = evaluate_frame(elsewhere, truth=TRUTH, tissue="lung")
    assert got["predicted_term_id"].item() == "CL:0002241"  # pulmonary interstitial fibroblast


def test_evaluate_frame_refuses_a_missing_or_contradictory_truth():
    summary = _summary()
    with pytest.raises(KeyError, match="No truth for clusters"):
        evaluate_frame(summary, truth={"kidney_1": "B cell"})
    both = pd.DataFrame({"Cluster ID": ["kidney_1", "kidney_1"], "t": ["B cell", "T cell"]})
    with pytest.raises(ValueError, match="two true labels"):
        evaluate_frame(summary, truth=both, truth_column="t")
    with pytest.raises(KeyError, match="truth_column"):
        evaluate_frame(summary)


def test_a_truth_of_state_only_is_met_by_a_type_in_that_state():
    table = score_labels(
        ["Cycling B cells", "Proliferating T cells", "Proliferating Cells (G2/M Phase)",
         "erythrocytes", "Activated T cells"],
        ["Cycling cell", "Proliferating cell", "Proliferating cell", "Cycling cell",
         "Cycling cell"],
    )  # fmt: skip
    assert table["score_100"].tolist() == [90.0, 90.0, 100.0, 0.0, 0.0]
    assert table["relation"].tolist()[:2] == ["more specific", "more specific"]
