"""Weak answers must not pass as answers (issue 19 item 4): a main cell type that is the
tissue, the species, a field's name, a letter, or a word that names no cell goes back to
the annotator once with the reason; still no cell type, the cluster is ``implausible``."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
from llm_server import Reply
from scripted_model import agent_of, annotation_reply, is_revision, signature

import cassia_sc
from cassia_sc.cli import main
from cassia_sc.plausibility import implausibility

EXAMPLE = cassia_sc.loadmarker("pbmc68k_processed")
SIGNATURES = {row.cluster: signature(row.markers.split(", ")) for row in EXAMPLE.itertuples()}
FAST = {"retry_delay": 0.01}

# What small models answered (SmolLM2-135M, Qwen2.5-0.5B), and why it is no cell type.
NOT_ANSWERS = [
    ("human kidney", "names the species and the tissue"),
    ("Human", "names the species"),
    ("kidney", "names the tissue"),
    ("main_cell_type", "name of a field"),
    ("species", "name of a field"),
    ("A", "too short"),
    ("doublet", "names no cell type"),
    ("", "empty"),
]
ANSWERS = ["Proximal tubule cell", "B cell", "NK", "DC", "Podocyte", "Platelet", "Endothelial",
           "Loop of Henle", "Microglia", "CD8 subtype 2", "Unknown"]  # fmt: skip


@pytest.mark.parametrize(("label", "why"), NOT_ANSWERS)
def test_labels_that_are_no_cell_type(label, why):
    pytest.importorskip("cellxgene_ontology_guide")  # "doublet" needs the ontology
    reason = implausibility(label, tissue="kidney", species="human")
    assert reason is not None and why in reason


@pytest.mark.parametrize("label", ANSWERS)
def test_labels_that_may_be_cell_types(label):
    pytest.importorskip("cellxgene_ontology_guide")
    assert implausibility(label, tissue="kidney", species="human") is None


def run(llm, marker=EXAMPLE[:2]):
    client = llm.client(**FAST)
    return cassia_sc.run_batch(
        marker, tissue="blood", species="human", client=client, progress=False
    )


def test_an_implausible_answer_is_revised_once_before_any_review(scripted_llm):
    def annotator(request, markers):
        main = "Monocyte" if is_revision(request) else "human blood"
        return Reply(content=annotation_reply(main, key_markers=tuple(markers[:2])))

    llm = scripted_llm(annotator=annotator)
    result = run(llm, EXAMPLE.head(1))
    cluster = result["0"]
    assert cluster.status == "ok" and cluster.main_cell_type == "Monocyte"
    agents = [agent_of(r) for r in llm.server.requests]
    assert agents == ["annotator", "annotator", "validator"]  # no review of "human blood"
    revision = llm.server.requests[1].messages[-1]["content"]
    assert '"human blood" names the species and the tissue' in revision


def test_an_answer_still_implausible_is_kept_with_its_own_status(scripted_llm, tmp_path):
    def annotator(request, markers):
        if signature(markers) == SIGNATURES["0"]:
            return Reply(content=annotation_reply("A", key_markers=tuple(markers[:1])))
        return None  # the default answer for the other cluster

    llm = scripted_llm({SIGNATURES["1"]: "B cell"}, annotator=annotator)
    result = run(llm)
    weak = result["0"]
    assert weak.status == "implausible" and "too short" in weak.error
    assert weak in result.failed and result["1"].status == "ok"
    assert [agent_of(r) for r in llm.server.requests].count("validator") == 1  # cluster 1's
    # No validator judged it: its verdict is unknown, not failed.
    assert weak.validation_passed is None and not weak.validation_feedback

    paths = cassia_sc.export.write_outputs(result, tmp_path / "run")
    summary = pd.read_csv(paths["summary"], dtype={"Cluster ID": str}).set_index("Cluster ID")
    assert summary.loc["0", "Status"] == "implausible"
    assert pd.isna(summary.loc["0", "Validation Passed"])  # unknown, not False
    report = cassia_sc.export.render_report(result)
    assert "1 implausible" in report and 'value="implausible"' in report


def test_the_run_counts_implausible_answers_apart_from_failures(scripted_llm, caplog):
    def annotator(request, markers):
        if signature(markers) == SIGNATURES["0"]:
            return Reply(content=annotation_reply("A", key_markers=tuple(markers[:1])))
        return None

    llm = scripted_llm({SIGNATURES["1"]: "B cell"}, annotator=annotator)
    with caplog.at_level(logging.INFO, logger="cassia_sc"):
        run(llm)
    assert "Annotated 2 clusters: 1 ok, 1 implausible;" in caplog.text
    assert '0 (implausible): "A" is too short' in caplog.text


def test_in_an_anndata_its_cells_get_no_label(scripted_llm, pbmc_wilcoxon):
    def annotator(request, markers):
        return Reply(content=annotation_reply("species", key_markers=tuple(markers[:1])))

    llm = scripted_llm(annotator=annotator)
    adata = pbmc_wilcoxon
    cassia_sc.tl.annotate(adata, key="wilcoxon", tissue="blood", species="human", **llm.options())
    assert adata.obs["cassia_celltype"].isna().all()
    table = adata.uns["cassia"]["results"]
    assert set(table["status"]) == {"implausible"}
    assert table["error"].str.contains("name of a field").all()


def test_the_command_line_exits_3_on_implausible_answers(scripted_llm, tmp_path):
    def annotator(request, markers):
        return Reply(content=annotation_reply("human", key_markers=tuple(markers[:1])))

    llm = scripted_llm(annotator=annotator)
    markers = tmp_path / "markers.csv"
    EXAMPLE.head(2).to_csv(markers, index=False)
    args = ["batch", str(markers), "--output-name", str(tmp_path / "run"), "--quiet"]
    args += ["--model", "test-model", "--provider", llm.base_url, "--species", "human"]
    args += ["--cache-dir", str(llm.cache_dir)]
    assert main(args) == 3
