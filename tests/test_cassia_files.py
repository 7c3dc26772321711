"""CASSIA's file shapes both ways, its runCASSIA_batch signature, and its runs brought into AnnData.

Files "made by CASSIA" here are written by hand in the shapes CASSIA 1.4.0 writes (its
summary columns, rows sorted by cluster name, its conversations JSON keyed by cluster);
tests/test_cassia_interop.py runs CASSIA itself.
"""

from __future__ import annotations

import inspect
import json

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
from conftest import ScriptedLLM
from llm_server import LLMServer, Reply
from scripted_model import ScriptedModel, signature

import cassia_sc
from cassia_sc import ClusterResult
from cassia_sc.cassia_files import (
    cassia_conversation,
    history_text,
    read_conversations,
    turns_from_history,
)
from cassia_sc.errors import AuthenticationFailed, CassiaError, MarkerError
from cassia_sc.results import Turn

matplotlib.use("Agg")

EXAMPLE = cassia_sc.loadmarker("pbmc68k_processed")
THREE = EXAMPLE.head(3)
#: CASSIA 1.4.0's runCASSIA_batch parameters, in its order (engine/tools_function.py).
CASSIA_BATCH_PARAMETERS = [
    "marker",
    "output_name",
    "n_genes",
    "model",
    "temperature",
    "tissue",
    "species",
    "additional_info",
    "celltype_column",
    "gene_column_name",
    "max_workers",
    "provider",
    "max_retries",
    "ranking_method",
    "ascending",
    "validator_involvement",
    "reasoning",
    "use_reference",
    "reference_model",
    "reference_cell_type_hint",
    "verbose",
    "validate_api_key_before_start",
    "auto_convert_ids",
    "proxy",
]


@pytest.fixture
def llm(scripted_llm) -> ScriptedLLM:
    """A scripted model that calls each example cluster "type <cluster>"."""
    return scripted_llm(
        {signature(row.markers.split(", ")): f"type {row.cluster}" for row in EXAMPLE.itertuples()}
    )


def cassia_made_run(folder, clusters: list[str], *, scored: bool = False) -> tuple[str, dict]:
    """Write a summary CSV and conversations JSON as CASSIA 1.4.0 does; return the CSV path."""
    rows = [
        {
            "Cluster ID": c,
            "Predicted General Cell Type": f"cell type {c}",
            "Predicted Detailed Cell Type": f"subtype {c}a, subtype {c}b",
            "Possible Mixed Cell Types": "",
            "Marker Number": 3,
            "Marker List": "CD3E, CD3D, IL7R",
            "Iterations": 1,
            "Model": "some/model",
            "Provider": "openrouter",
            "Tissue": "blood",
            "Species": "human",
        }
        | ({"Score": 80 + i, "Scoring_Reasoning": f"because {c}"} if scored else {})
        for i, c in enumerate(clusters)
    ]
    # CASSIA sorts its rows by cluster name: "10" before "2" is not its order, but any order
    # other than the data's is what matters here, so the rows go in reverse.
    pd.DataFrame(rows[::-1]).to_csv(folder / "run_summary.csv", index=False)
    conversations = {
        c: {
            "annotations": [f"Annotation of cluster {c}: the markers say cell type {c}."],
            "validations": [f"VALIDATION PASSED for {c}"],
            "formatting": json.dumps({"main_cell_type": f"cell type {c}"}),
            "scoring": "",
        }
        for c in clusters
    }
    (folder / "run_conversations.json").write_text(json.dumps(conversations))
    return str(folder / "run_summary.csv"), conversations


# -- writing CASSIA's shapes ---------------------------------------------------------------


def test_history_sections_take_the_safe_separator_when_a_reply_has_a_bar():
    cluster = ClusterResult("0", ["CD3E"], status="ok", main_cell_type="T cell")
    cluster.conversation = [
        Turn("annotator", "system", "instructions"),
        Turn("annotator", "assistant", "| gene | role |\n| CD3E | TCR |"),
        Turn("validator", "assistant", "VALIDATION PASSED"),
    ]
    text = history_text(cluster)
    assert " |||SECTION||| Coupling Validator: VALIDATION PASSED" in text
    assert [t.content for t in turns_from_history(text)][:2] == [
        "| gene | role |\n| CD3E | TCR |",
        "VALIDATION PASSED",
    ]
    # CASSIA's older " | " cells: a part without a section title stays with its section.
    old = "Final Annotation Agent: A | B | Coupling Validator: ok | Formatting Agent: {}"
    assert [(t.agent, t.content) for t in turns_from_history(old)] == [
        ("annotator", "A | B"),
        ("validator", "ok"),
        ("formatter", "{}"),
    ]
    assert [t.agent for t in turns_from_history("free text")] == ["annotator"]


def test_a_boosted_cluster_ends_its_annotations_with_the_boost_answer():
    cluster = ClusterResult("0", ["CD3E"], status="ok", main_cell_type="NK cell")
    cluster.conversation = [
        Turn("annotator", "assistant", "first: T cell"),
        Turn("validator", "assistant", "VALIDATION PASSED"),
        Turn("booster", "assistant", "round 1: check NCAM1"),
        Turn("booster", "assistant", "final: NK cell"),
        Turn("scorer", "assistant", "<score>90</score>"),
    ]
    entry = cassia_conversation(cluster)
    assert entry["annotations"] == ["first: T cell", "final: NK cell"]
    assert entry["scoring"] == "<score>90</score>"
    assert json.loads(entry["formatting"])["main_cell_type"] == "NK cell"


# -- our files read back -------------------------------------------------------------------


def test_our_files_read_back_from_each_conversations_source(llm, tmp_path):
    prefix = tmp_path / "run"
    cassia_sc.runCASSIA_batch(THREE, str(prefix), tissue="blood", **llm.options())
    full = cassia_sc.read_cassia(tmp_path / "run_summary.csv")  # from _record.json
    assert [c.main_cell_type for c in full.clusters] == ["type 0", "type 1", "type 2"]
    replies = [t.content for t in full.clusters[1].conversation if t.role == "assistant"]
    assert [t.role for t in full.clusters[1].conversation][:2] == ["system", "user"]

    (tmp_path / "run_record.json").unlink()  # CASSIA's conversations JSON: replies only
    cassia_shape = cassia_sc.read_cassia(tmp_path / "run_full.csv")
    assert [t.content for t in cassia_shape.clusters[1].conversation][:2] == replies[:2]

    (tmp_path / "run_conversations.json").unlink()  # the full CSV's history column
    from_column = cassia_sc.read_cassia(tmp_path / "run_full.csv")
    assert [t.content for t in from_column.clusters[1].conversation][:2] == replies[:2]
    assert [t.agent for t in from_column.clusters[1].conversation] == [
        "annotator",
        "validator",
        "formatter",
    ]


def test_a_csv_cell_guarded_against_formulas_reads_back_as_written(tmp_path):
    table = pd.DataFrame(
        {"Cluster ID": ["=1+2", "b"], "Predicted General Cell Type": ["'=x", "-B cell"]}
    )
    (tmp_path / "t.csv").write_text(cassia_sc.export.csv_text(table))
    batch = cassia_sc.read_cassia(tmp_path / "t.csv")
    assert [c.cluster for c in batch.clusters] == ["=1+2", "b"]
    assert [c.main_cell_type for c in batch.clusters] == ["=x", "-B cell"]


def test_tables_and_files_that_cannot_be_read_are_refused(tmp_path):
    with pytest.raises(CassiaError, match="no cluster column"):
        cassia_sc.read_cassia(pd.DataFrame({"label": ["x"]}))
    with pytest.raises(CassiaError, match=r"\['a'\] more than once"):
        cassia_sc.read_cassia(pd.DataFrame({"Cluster ID": ["a", "a"]}))
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(CassiaError, match="expected a JSON object"):
        read_conversations(tmp_path / "bad.json")


# -- CASSIA's runs brought in -----------------------------------------------------------------


def test_a_cassia_run_joins_by_name_and_reaches_plots_evaluation_and_report(pbmc, tmp_path):
    clusters = list(pbmc.obs["louvain"].cat.categories)
    path, conversations = cassia_made_run(tmp_path, clusters, scored=True)
    cassia_sc.tl.import_cassia(pbmc, path, groupby="louvain")
    cells = pbmc.obs["louvain"].astype(str)
    assert (pbmc.obs["cassia_celltype"].astype(str) == "cell type " + cells).all()
    assert (pbmc.obs["cassia_subtype"].astype(str) == "subtype " + cells + "a").all()
    assert (pbmc.obs["cassia_score"] == 80 + cells.map(clusters.index)).all()
    batch = cassia_sc.get.annotation(pbmc)
    assert [c.cluster for c in batch.clusters] == clusters[::-1]  # the file's order
    two = next(c for c in batch.clusters if c.cluster == "2")
    assert two.conversation[0].content == conversations["2"]["annotations"][0]
    assert cassia_sc.pl.annotations(pbmc, show=False) is not None
    assert cassia_sc.pl.review(pbmc, show=False) is not None
    cassia_sc.tl.evaluate(pbmc, "bulk_labels")
    assert pbmc.uns["cassia"]["evaluation"]["n"] == len(clusters)
    html = cassia_sc.export.report(pbmc, tmp_path / "report.html").read_text()
    assert "Annotation of cluster 2: the markers say cell type 2." in html


def test_an_anndata_annotated_by_add_cassia_to_anndata(pbmc, tmp_path):
    clusters = list(pbmc.obs["louvain"].cat.categories)
    path, _ = cassia_made_run(tmp_path, clusters)
    # What CASSIA's add_cassia_to_anndata leaves: obs columns and the summary in uns.
    table = pd.read_csv(path, dtype={"Cluster ID": str})
    pbmc.uns["CASSIA"] = table[["Cluster ID", "Predicted General Cell Type"]]
    pbmc.obs["CASSIA_general_celltype"] = "cell type " + pbmc.obs["louvain"].astype(str)
    written = tmp_path / "cassia.h5ad"
    pbmc.write_h5ad(written)
    adata = ad.read_h5ad(written)
    with pytest.raises(CassiaError, match="groupby='leiden' is not a column"):
        cassia_sc.tl.import_cassia(adata, groupby="leiden")
    annotated = cassia_sc.tl.import_cassia(adata, groupby="louvain", copy=True)
    assert "cassia" not in adata.uns
    assert (
        annotated.obs["cassia_celltype"].astype(str) == adata.obs["CASSIA_general_celltype"]
    ).all()


def test_import_needs_results_and_clusters_that_match(pbmc, tmp_path):
    with pytest.raises(CassiaError, match="Give results="):
        cassia_sc.tl.import_cassia(pbmc, groupby="louvain")
    path, _ = cassia_made_run(tmp_path, ["cluster A", "cluster B"])
    with pytest.raises(CassiaError, match="None of the results' clusters"):
        cassia_sc.tl.import_cassia(pbmc, path, groupby="louvain")
    assert "cassia" not in pbmc.uns


# -- runCASSIA_batch as CASSIA's ---------------------------------------------------------------


def test_the_signature_is_cassias_and_a_positional_call_binds_as_in_cassia(llm, tmp_path):
    parameters = list(inspect.signature(cassia_sc.runCASSIA_batch).parameters)
    assert parameters[: len(CASSIA_BATCH_PARAMETERS)] == CASSIA_BATCH_PARAMETERS
    summary = cassia_sc.runCASSIA_batch(
        THREE, str(tmp_path / "run"), 7, llm.model, 0, "blood", "human", "healthy donor",
        provider=llm.base_url, cache_dir=llm.cache_dir, verbose=False,
    )  # fmt: skip
    assert summary["Marker Number"].tolist() == [7, 7, 7]
    assert summary["Tissue"].tolist() == ["blood"] * 3
    assert all("healthy donor" in json.dumps(r.body) for r in llm.server.requests)
    # One key check (the model list, which costs no tokens) before the six calls.
    assert [r.path for r in llm.server.get_requests] == ["/v1/models"]
    assert llm.server.request_count == 6


def test_a_refused_key_stops_the_run_before_any_cluster(tmp_path):
    refuse = lambda request, index: Reply(status=401, error_message="invalid key")  # noqa: E731
    with LLMServer(ScriptedModel({}), get_handler=refuse) as server:
        with pytest.raises(AuthenticationFailed, match="validate_api_key_before_start"):
            cassia_sc.runCASSIA_batch(
                THREE, str(tmp_path / "run"), model="test-model", provider=server.base_url
            )
        assert server.request_count == 0 and not list(tmp_path.iterdir())
        cassia_sc.runCASSIA_batch(
            THREE, str(tmp_path / "run"), model="test-model", provider=server.base_url,
            validate_api_key_before_start=False, cache_dir=tmp_path / "cache", progress=False,
        )  # fmt: skip
        assert server.request_count == 6


def test_cassia_options_without_counterpart_are_refused_with_the_way_out(tmp_path):
    run = str(tmp_path / "run")
    for option, fix in [
        ({"use_reference": True}, "reference documents"),
        ({"reference_cell_type_hint": "T cell"}, "additional_info"),
        ({"proxy": "china"}, "HTTPS_PROXY"),
    ]:
        with pytest.raises(CassiaError, match=fix):
            cassia_sc.runCASSIA_batch(THREE, run, model="m", dry_run=True, **option)
    with pytest.raises(CassiaError, match="model must be given"):
        cassia_sc.runCASSIA_batch(THREE, run, dry_run=True)
    assert not list(tmp_path.iterdir())


def test_gene_ids_are_converted_from_var_or_refused_for_a_table(pbmc_wilcoxon, tmp_path):
    ids = pd.DataFrame(
        {"cluster": ["0"] * 3, "gene": ["ENSG00000167286", "ENSG00000198851", "ENSG00000160654"]}
    )
    with pytest.raises(MarkerError, match="auto_convert_ids=False"):
        cassia_sc.runCASSIA_batch(ids, str(tmp_path / "r"), model="m", dry_run=True)
    sent = cassia_sc.runCASSIA_batch(
        ids, str(tmp_path / "r"), model="m", dry_run=True, auto_convert_ids=False
    )
    assert sent["Marker List"].tolist() == [", ".join(ids["gene"])]

    adata = pbmc_wilcoxon
    symbols = adata.var_names.to_numpy()
    adata.var["feature_name"] = symbols
    adata.var_names = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    id_of = {g: f"ENSG{i:011d}" for i, g in enumerate(symbols)}
    names = adata.uns["wilcoxon"]["names"]
    adata.uns["wilcoxon"]["names"] = np.array(
        [tuple(id_of[g] for g in row) for row in names],
        dtype=[(group, "U20") for group in names.dtype.names],
    )
    summary = cassia_sc.runCASSIA_batch(
        adata, str(tmp_path / "a"), model="m", key="wilcoxon", dry_run=True
    )
    genes = summary["Marker List"][0].split(", ")
    assert set(genes) <= set(symbols) and not any(g.startswith("ENSG") for g in genes)


# -- CASSIA's repeated runs and score report --------------------------------------------------


def test_repeated_runs_write_numbered_files_that_agree_by_name(llm, tmp_path):
    runs = cassia_sc.runCASSIA_batch_n_times(
        2, THREE, str(tmp_path / "uq"), model=llm.model, temperature=0.5, tissue="blood",
        provider=llm.base_url, cache_dir=llm.cache_dir, progress=False,
    )  # fmt: skip
    assert len(runs) == 2 and llm.server.request_count == 2 * 2 * 3  # a new sample per run
    for index in (1, 2):
        assert (tmp_path / f"uq_{index}_summary.csv").is_file()
    # One run's rows reordered and one cluster missing: joined by name, not by position.
    second = pd.read_csv(tmp_path / "uq_2_summary.csv", dtype={"Cluster ID": str})
    second.iloc[::-1].iloc[:-1].to_csv(tmp_path / "uq_2_summary.csv", index=False)
    table = cassia_sc.runCASSIA_similarity_score_batch(
        THREE, str(tmp_path / "uq_*_summary.csv"), str(tmp_path / "scores")
    )
    assert table["cluster"].tolist() == ["0", "1", "2"]
    assert table["consensus"].tolist() == ["type 0", "type 1", "type 2"]
    assert table["agreement"].tolist() == [0.5, 1.0, 1.0]  # cluster 0 has no row in run 2
    assert (tmp_path / "scores.csv").is_file() and (tmp_path / "scores_report.html").is_file()
    with pytest.raises(CassiaError, match="No summary file matches"):
        cassia_sc.runCASSIA_similarity_score_batch(THREE, str(tmp_path / "none_*.csv"), "x")


def test_the_score_report_shows_each_cluster_with_its_score_and_conversation(tmp_path):
    path, conversations = cassia_made_run(tmp_path, ["0", "1"], scored=True)
    report = cassia_sc.runCASSIA_generate_score_report(path, index_name="scores")
    assert report == tmp_path / "scores.html"
    html = report.read_text()
    assert conversations["1"]["annotations"][0] in html
    assert "because 1" in html


def test_the_pipeline_takes_cassias_parameters_in_order_and_refuses_what_it_cannot_do():
    parameters = list(inspect.signature(cassia_sc.runCASSIA_pipeline).parameters)
    expected = ["output_file_name", "tissue", "species", "marker", "max_workers"]
    expected += ["overall_provider", "annotation_model", "annotation_provider", "score_model"]
    expected += ["score_provider", "annotationboost_model", "annotationboost_provider"]
    expected += ["score_threshold", "additional_info", "max_retries", "merge_annotations"]
    expected += ["merge_model", "merge_provider", "conversation_history_mode", "ranking_method"]
    expected += ["ascending", "report_style", "validator_involvement", "output_dir"]
    expected += ["validate_api_keys_before_start", "auto_convert_ids", "n_genes"]
    expected += ["overall_reasoning", "annotation_reasoning", "score_reasoning"]
    expected += ["annotationboost_reasoning", "merge_reasoning"]
    assert parameters[: len(expected)] == expected
    common = {"annotation_model": "m", "merge_annotations": False, "dry_run": True}
    with pytest.raises(CassiaError, match="reads the first exchange"):
        cassia_sc.runCASSIA_pipeline(
            "p", "blood", "human", THREE, conversation_history_mode="none", **common
        )
    with pytest.raises(CassiaError, match="give it as overall_reasoning"):
        cassia_sc.runCASSIA_pipeline(
            "p", "blood", "human", THREE, overall_reasoning="low", score_reasoning="high", **common
        )


def test_the_pipeline_merges_annotations_into_cassias_three_levels(llm, tmp_path):
    result = cassia_sc.runCASSIA_pipeline(
        "pipe", "blood", "human", THREE, annotation_model=llm.model,
        overall_provider=llm.base_url, output_dir=tmp_path, cache_dir=llm.cache_dir,
        progress=False,
    )  # fmt: skip
    summary = pd.read_csv(tmp_path / "pipe_summary.csv", dtype={"Cluster ID": str})
    levels = ["Merged_Grouping_1", "Merged_Grouping_2", "Merged_Grouping_3"]
    # The scripted grouper names each cluster after its main cell type, at every level.
    for column in levels:
        assert summary[column].tolist() == ["type 0", "type 1", "type 2"]
    assert [c.celltype_broad for c in result.clusters] == ["type 0", "type 1", "type 2"]
    grouper = [r for r in llm.server.requests if "one level of detail" in json.dumps(r.body)]
    assert len(grouper) == 3  # one call per level, over every cluster
