"""Subclusters: the T cells of pbmc68k_reduced, annotated with their parent as context.

A first run names the louvain clusters; the T cells' subclusters (here the louvain
clusters inside them, named as ``sc.tl.leiden(restrict_to=...)`` names them, since no
graph-clustering package is installed for the tests) are ranked on the T cells alone,
then annotated with ``restrict_to`` or on a subset AnnData, through the scripted model.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from conftest import cli
from llm_server import Reply
from scripted_model import (
    agent_of,
    annotation_reply,
    first_annotation,
    gene_request_reply,
    signature,
)

import cassia_sc
from cassia_sc import compat
from cassia_sc.cli import main
from cassia_sc.errors import CassiaError, KeyAddedError, MarkerError
from cassia_sc.tl import transfer

# The first run's answers, by louvain cluster; 0, 3 and 9 are the T cells.
FIRST = {
    "0": "T cell",
    "1": "monocyte",
    "2": "dendritic cell",
    "3": "T cell",
    "4": "B cell",
    "5": "monocyte",
    "6": "dendritic cell",
    "7": "dendritic cell",
    "8": "B cell",
    "9": "T cell",
    "10": "progenitor cell",
}
# The T cells' subclusters, named as sc.tl.leiden(restrict_to=...) names them.
SUBCLUSTERS = {"0": "T cell,0", "3": "T cell,1", "9": "T cell,2"}
SUBTYPES = {
    "T cell,0": "naive T cell",
    "T cell,1": "cytotoxic T cell",
    "T cell,2": "cycling T cell",
}
RESTRICT_TO = ("cassia_celltype", ["T cell"])
OTHER_PYTHON = os.environ.get("CASSIA_SC_OTHER_PYTHON")


def _subset(adata: ad.AnnData) -> ad.AnnData:
    return adata[adata.obs["cassia_celltype"] == "T cell"].copy()


@pytest.fixture
def annotated(pbmc_wilcoxon, scripted_llm):
    """pbmc68k_reduced after a first run, with the T cells' subclusters ranked among themselves.

    Returns the data and a scripted model that knows the clusters and the subclusters.
    """
    adata = pbmc_wilcoxon
    first = cassia_sc.top_markers(adata, key="wilcoxon")
    answers = {signature(genes): FIRST[cluster] for cluster, genes in first.items()}
    louvain = adata.obs["louvain"].astype(str)
    subset_of_t = louvain.isin(list(SUBCLUSTERS))
    adata.obs["leiden_T"] = pd.Categorical(
        np.where(subset_of_t, louvain.map(SUBCLUSTERS), louvain.map(FIRST))
    )
    t_cells = adata[subset_of_t.to_numpy()].copy()
    sc.tl.rank_genes_groups(t_cells, "leiden_T", method="wilcoxon")
    adata.uns["markers_T"] = t_cells.uns["rank_genes_groups"]
    for cluster, genes in cassia_sc.top_markers(adata, key="markers_T").items():
        answers[signature(genes)] = SUBTYPES[cluster]
    llm = scripted_llm(answers)
    cassia_sc.tl.annotate(
        adata, key="wilcoxon", tissue="blood", species="human", **llm.options(ontology=False)
    )
    return adata, llm


def _annotate_t(adata, llm, **extra):
    options = {
        "groupby": "leiden_T",
        "restrict_to": RESTRICT_TO,
        "key": "markers_T",
        "key_added": "cassia_T",
        "tissue": "blood",
        "species": "human",
    }
    return cassia_sc.tl.annotate(adata, **(options | llm.options(ontology=False) | extra))


def test_the_parent_reaches_the_annotator_and_the_validator(annotated):
    adata, llm = annotated
    first_run = list(llm.server.requests)
    assert not any("Population:" in m["content"] for r in first_run for m in r.messages)
    _annotate_t(adata, llm)
    mine = llm.server.requests[len(first_run) :]
    by_agent = {
        agent: [r for r in mine if agent_of(r) == agent] for agent in ("annotator", "validator")
    }
    assert len(by_agent["annotator"]) == len(by_agent["validator"]) == 3
    for request in mine:
        system, task = request.messages[0]["content"], request.messages[1]["content"]
        assert 'identified as "T cell"' in system
        assert 'Population: a subcluster of "T cell", its markers ranked against' in task
    assert adata.uns["cassia_T"]["params"]["parent"] == "T cell"


def test_restrict_to_writes_inside_the_population_only(annotated, tmp_path):
    adata, llm = annotated
    before_obs = adata.obs.copy()
    before_results = adata.uns["cassia"]["results"].copy()
    before_params = dict(adata.uns["cassia"]["params"])
    _annotate_t(adata, llm, output_name=tmp_path / "t_cells")

    t_cells = (before_obs["cassia_celltype"] == "T cell").to_numpy()
    labels = adata.obs["cassia_T_celltype"]
    assert labels[~t_cells].isna().all() and adata.obs["cassia_T_subtype"][~t_cells].isna().all()
    expected = before_obs["leiden_T"][t_cells].astype(str).map(SUBTYPES)
    assert labels[t_cells].astype(str).tolist() == expected.tolist()
    # nothing of the first run changed: its columns, its record, the markers
    pd.testing.assert_frame_equal(adata.obs[before_obs.columns], before_obs)
    pd.testing.assert_frame_equal(adata.uns["cassia"]["results"], before_results)
    assert dict(adata.uns["cassia"]["params"]) == before_params
    record = adata.uns["cassia_T"]
    assert record["results"]["cluster"].tolist() == ["T cell,0", "T cell,1", "T cell,2"]
    assert json.loads(record["params"]["restrict_to"]) == ["cassia_celltype", ["T cell"]]
    assert record["params"]["groupby"] == "leiden_T" and record["params"]["key"] == "markers_T"
    summary = pd.read_csv(tmp_path / "t_cells_summary.csv", dtype=str)
    assert summary["Cluster ID"].tolist() == list(SUBTYPES)


def test_a_second_identical_run_comes_from_the_cache(annotated):
    adata, llm = annotated
    _annotate_t(adata, llm)
    first = adata.obs["cassia_T_celltype"].copy()
    count = llm.server.request_count
    _annotate_t(adata, llm)  # the same key_added: its own earlier run may be replaced
    assert llm.server.request_count == count
    pd.testing.assert_series_equal(adata.obs["cassia_T_celltype"], first)
    assert adata.uns["cassia_T"]["usage"]["cached_calls"] == 6


def test_markers_of_another_grouping_or_of_all_cells_are_refused(annotated):
    adata, llm = annotated
    count = llm.server.request_count
    with pytest.raises(MarkerError, match="computed for groupby='louvain'") as refused:
        _annotate_t(adata, llm, key="wilcoxon")
    assert "sc.tl.rank_genes_groups(sub, 'leiden_T')" in str(refused.value)
    assert "adata.obs['cassia_celltype'].isin(['T cell'])" in str(refused.value)

    sc.tl.rank_genes_groups(adata, "leiden_T", method="wilcoxon", key_added="all_cells")
    with pytest.raises(MarkerError, match=r"have no cell there.*rank_genes_groups\(sub"):
        _annotate_t(adata, llm, key="all_cells")

    subclusters = list(SUBTYPES)
    sc.tl.rank_genes_groups(
        adata, "leiden_T", groups=subclusters, method="wilcoxon", key_added="against_all"
    )
    with pytest.raises(MarkerError, match="against all other cells"):
        _annotate_t(adata, llm, key="against_all")
    assert llm.server.request_count == count  # refused before any call
    assert "cassia_T_celltype" not in adata.obs


def test_the_first_run_cannot_be_replaced_by_a_subcluster_run(annotated):
    adata, llm = annotated
    before = adata.obs["cassia_celltype"].copy()
    count = llm.server.request_count
    with pytest.raises(KeyAddedError, match=r"annotation of all cells.*key_added='cassia_T'"):
        _annotate_t(adata, llm, key_added="cassia")
    assert llm.server.request_count == count
    pd.testing.assert_series_equal(adata.obs["cassia_celltype"], before)


def test_each_subcluster_gets_the_full_treatment(annotated):
    adata, llm = annotated
    count = llm.server.request_count
    _annotate_t(adata, llm, score=True)
    scorer = [r for r in llm.server.requests[count:] if agent_of(r) == "scorer"]
    assert len(scorer) == 3  # every subcluster, after its annotator and validator
    assert all('subcluster of "T cell"' in r.messages[1]["content"] for r in scorer)
    t_cells = (adata.obs["cassia_celltype"] == "T cell").to_numpy()
    assert (adata.obs["cassia_T_score"][t_cells] == 90).all()
    assert adata.obs["cassia_T_score"][~t_cells].isna().all()


def _ask_for_genes(request, markers):
    """A booster that looks two genes up before it answers."""
    if len(request.messages) == 2:
        return Reply(content=gene_request_reply(["CD3E", "NKG7"]))
    return Reply(content=annotation_reply(first_annotation(request), key_markers=("CD3E",)))


def _evidence_shown(requests) -> list[str]:
    """The gene figures each boost was shown: the last message of its follow-up requests."""
    followed = [r for r in requests if agent_of(r) == "booster" and len(r.messages) > 2]
    return [r.messages[-1]["content"] for r in followed]


def test_the_boost_looks_genes_up_among_the_siblings(annotated):
    adata, llm = annotated
    llm.server.handler.overrides["booster"] = _ask_for_genes
    count = llm.server.request_count
    _annotate_t(adata, llm, score=True, boost_below=95)  # the scorer gives 90: all boosted
    assert adata.uns["cassia_T"]["results"]["boosted"].tolist() == [True] * 3
    shown = _evidence_shown(llm.server.requests[count:])
    assert len(shown) == 3
    t_cells = adata.obs["leiden_T"][adata.obs["cassia_celltype"] == "T cell"].astype(str)
    for text in shown:
        cluster = text.split('"')[1]
        siblings = int((t_cells != cluster).sum())
        assert f"against the other {siblings} cells" in text  # not every other cell
        assert "monocyte" not in text and "B cell" not in text


def test_score_and_boost_afterwards_stay_inside_the_population(annotated, caplog):
    adata, llm = annotated
    _annotate_t(adata, llm)
    llm.server.handler.overrides["booster"] = _ask_for_genes
    count = llm.server.request_count
    options = llm.options(ontology=False)
    cassia_sc.tl.score(adata, key="cassia_T", **options)
    with caplog.at_level(logging.WARNING, logger="cassia_sc"):
        cassia_sc.tl.boost(adata, key="cassia_T", boost_below=95, **options)
    assert "No cell type for clusters" not in caplog.text
    sent = llm.server.requests[count:]
    booster = [r for r in sent if agent_of(r) == "booster" and len(r.messages) == 2]
    assert len(booster) == 3
    assert all('Population: a subcluster of "T cell"' in r.messages[1]["content"] for r in booster)
    t_cells = adata.obs["leiden_T"][adata.obs["cassia_celltype"] == "T cell"].astype(str)
    for text in _evidence_shown(sent):
        siblings = int((t_cells != text.split('"')[1]).sum())
        assert f"against the other {siblings} cells" in text
    outside = (adata.obs["cassia_celltype"] != "T cell").to_numpy()
    assert adata.obs["cassia_T_celltype"][outside].isna().all()
    assert adata.obs["cassia_T_score"][outside].isna().all()


def test_levels_of_a_subcluster_annotation_stay_inside_the_population(annotated, caplog):
    pytest.importorskip("cellxgene_ontology_guide")
    adata, llm = annotated
    _annotate_t(adata, llm)
    # A cell outside the population whose cluster has a subcluster's name gets no label.
    outside = (adata.obs["cassia_celltype"] != "T cell").to_numpy()
    names = adata.obs["leiden_T"].astype(str).to_numpy()
    names[np.flatnonzero(outside)[0]] = adata.obs["leiden_T"][~outside].astype(str).iloc[0]
    adata.obs["leiden_T"] = pd.Categorical(names)
    with caplog.at_level(logging.WARNING, logger="cassia_sc"):
        cassia_sc.tl.levels(adata, key="cassia_T")
    assert "No cell type for clusters" not in caplog.text
    for column in ("cassia_T_celltype", "cassia_T_celltype_broad"):
        assert adata.obs[column][outside].isna().all(), column
    assert adata.obs["cassia_T_celltype_broad"][~outside].notna().any()


def test_a_subset_annotated_with_its_parent_goes_back_by_transfer(annotated):
    adata, llm = annotated
    _annotate_t(adata, llm)
    restricted = adata.obs["cassia_T_celltype"].copy()
    count = llm.server.request_count

    full = adata.copy()
    del full.uns["cassia_T"]
    full.obs = full.obs.drop(columns=["cassia_T_celltype", "cassia_T_subtype", "leiden_T"])
    t_cells = _subset(adata)
    sc.tl.rank_genes_groups(t_cells, "leiden_T", method="wilcoxon")
    cassia_sc.tl.annotate(
        t_cells,
        parent="T cell",
        key_added="cassia_T",
        tissue="blood",
        species="human",
        **llm.options(ontology=False),
    )
    assert llm.server.request_count == count  # the same prompts as restrict_to's: cached
    transfer(full, t_cells, key="cassia_T")
    pd.testing.assert_series_equal(full.obs["cassia_T_celltype"], restricted)
    assert full.obs["leiden_T"][full.obs["cassia_celltype"] != "T cell"].isna().all()
    assert json.loads(full.uns["cassia_T"]["params"]["restrict_to"])[0] == "leiden_T"
    assert cassia_sc.get.results(full, "cassia_T")["main_cell_type"].tolist() == list(
        SUBTYPES.values()
    )


def test_transfer_refuses_what_it_cannot_place(annotated):
    adata, llm = annotated
    t_cells = _subset(adata)
    cassia_sc.tl.annotate(
        t_cells,
        groupby="leiden_T",
        key="markers_T",
        parent="T cell",
        key_added="cassia_T",
        tissue="blood",
        species="human",
        **llm.options(ontology=False),
    )
    with pytest.raises(KeyAddedError, match="annotation of all cells"):
        transfer(adata, t_cells, key="cassia_T", key_added="cassia")
    relabelled = t_cells.copy()
    relabelled.obs["leiden_T"] = relabelled.obs["leiden_T"].cat.rename_categories(
        lambda c: c.replace("T cell", "T")
    )
    with pytest.raises(CassiaError, match=r"differs from subset\.obs"):
        transfer(adata, relabelled, key="cassia_T")
    stranger = t_cells.copy()
    stranger.obs_names = [f"other-{name}" for name in stranger.obs_names]
    with pytest.raises(CassiaError, match=r"not in adata.*sc\.tl\.ingest"):
        transfer(adata, stranger, key="cassia_T")
    assert "cassia_T" not in adata.uns


def test_plan_shows_the_population_and_its_subclusters_only(annotated):
    adata, _ = annotated
    preview = cassia_sc.plan(
        adata,
        groupby="leiden_T",
        restrict_to=RESTRICT_TO,
        key="markers_T",
        tissue="blood",
        species="human",
        model="any-model",
        progress=False,
    )
    assert [c.cluster for c in preview.clusters] == list(SUBTYPES)
    assert preview.settings["parent"] == "T cell"


def test_restrict_to_names_real_values(annotated):
    adata, llm = annotated
    with pytest.raises(CassiaError, match=r"no cell has obs\['cassia_celltype'\] == 'T cells'"):
        _annotate_t(adata, llm, restrict_to=("cassia_celltype", ["T cells"]))
    with pytest.raises(CassiaError, match="restrict_to must be"):
        _annotate_t(adata, llm, restrict_to="cassia_celltype")


def _roundtrip_script() -> str:
    return (
        "import sys, json, anndata as ad\n"
        "a = ad.read_h5ad(sys.argv[1])\n"
        "t = (a.obs['cassia_celltype'] == 'T cell').to_numpy()\n"
        "assert a.obs['cassia_T_celltype'][~t].isna().all()\n"
        "assert a.obs['cassia_T_celltype'][t].notna().all()\n"
        "assert a.obs['cassia_celltype'].notna().all()\n"
        "p = a.uns['cassia_T']['params']\n"
        "assert json.loads(p['restrict_to']) == ['cassia_celltype', ['T cell']], p\n"
        "assert str(p['parent']) == 'T cell'\n"
        # anndata 0.12 writes the string index pandas 3 gave var_names only when told to;
        # that holds for any file of anndata 0.13, with or without an annotation
        "if hasattr(ad.settings, 'allow_write_nullable_strings'):\n"
        "    ad.settings.allow_write_nullable_strings = True\n"
        "a.write_h5ad(sys.argv[1])\n"
    )


def test_the_subcluster_annotation_survives_h5ad(annotated, tmp_path):
    adata, llm = annotated
    _annotate_t(adata, llm, score=True)
    path = tmp_path / "t.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    pd.testing.assert_series_equal(
        back.obs["cassia_T_celltype"].astype(object), adata.obs["cassia_T_celltype"].astype(object)
    )
    assert np.isnan(back.obs["cassia_T_score"][back.obs["cassia_celltype"] != "T cell"]).all()
    subprocess.run([os.sys.executable, "-c", _roundtrip_script(), str(path)], check=True)


@pytest.mark.skipif(not OTHER_PYTHON, reason="needs the other anndata's Python (set by .ci/run)")
def test_the_subcluster_annotation_survives_the_other_anndata(annotated, tmp_path):
    adata, llm = annotated
    _annotate_t(adata, llm)
    path = tmp_path / "t.h5ad"
    adata.write_h5ad(path)
    subprocess.run([OTHER_PYTHON, "-c", _roundtrip_script(), str(path)], check=True)
    back = ad.read_h5ad(path)  # rewritten by the other anndata, read by ours
    t_cells = (back.obs["cassia_celltype"] == "T cell").to_numpy()
    assert set(back.obs["cassia_T_celltype"][t_cells].astype(str)) == set(SUBTYPES.values())
    assert back.obs["cassia_T_celltype"][~t_cells].isna().all()
    assert cassia_sc.get.results(back, "cassia_T")["cluster"].tolist() == list(SUBTYPES)


def test_the_command_line_restricts_to_the_population(annotated, tmp_path):
    adata, llm = annotated
    path = tmp_path / "pbmc.h5ad"
    adata.write_h5ad(path)
    args = cli(
        llm,
        "annotate",
        str(path),
        "--groupby",
        "leiden_T",
        "--key",
        "markers_T",
        "--key-added",
        "cassia_T",
        "--restrict-to",
        "cassia_celltype",
        "T cell",
        "--quiet",
    )
    assert main(args) == 0
    back = ad.read_h5ad(path)
    t_cells = (back.obs["cassia_celltype"] == "T cell").to_numpy()
    assert back.obs["cassia_T_celltype"][~t_cells].isna().all()
    assert set(back.obs["cassia_T_celltype"][t_cells].astype(str)) == set(SUBTYPES.values())
    assert back.uns["cassia_T"]["params"]["parent"] == "T cell"
    # the first run's annotation may not be replaced from the shell either
    assert main([*args[:7], "cassia", *args[8:]]) == 2


def test_the_command_line_boosts_among_the_siblings(annotated, tmp_path):
    adata, llm = annotated
    llm.server.handler.overrides["booster"] = _ask_for_genes
    path = tmp_path / "pbmc.h5ad"
    adata.write_h5ad(path)
    count = llm.server.request_count
    restrict = ["--restrict-to", "cassia_celltype", "T cell", "--groupby", "leiden_T"]
    args = ["--key", "markers_T", "--key-added", "cassia_T", "--score", "--boost-below", "95"]
    assert main(cli(llm, "annotate", str(path), *restrict, *args, "--quiet")) == 0
    shown = _evidence_shown(llm.server.requests[count:])
    assert len(shown) == 3  # read from the file's cells of the population only
    assert all("against the other 130 cells" not in text for text in shown)
    assert any("against the other 89 cells" in text for text in shown)
    back = ad.read_h5ad(path)
    assert back.uns["cassia_T"]["results"]["boosted"].tolist() == [True] * 3


# ------------------------------------------------------------------- CASSIA's functions


@pytest.fixture
def cd8(scripted_llm):
    """CASSIA's subcluster example and a model that tells its six subclusters apart."""
    table = cassia_sc.loadmarker("subcluster_results")
    markers = cassia_sc.top_markers(table)
    llm = scripted_llm({signature(g): f"CD8 subtype {c}" for c, g in markers.items()})
    return table, llm


def test_runCASSIA_subclusters_writes_each_subcluster_under_its_name(cd8, tmp_path):
    table, llm = cd8
    prefix = tmp_path / "subclustering_results"
    written = compat.runCASSIA_subclusters(
        table, "cd8 t cell", str(prefix), **llm.options(ontology=False)
    )
    cassia_table = pd.read_csv(f"{prefix}.csv", dtype=str, keep_default_na=False)
    assert cassia_table.columns.tolist() == [
        "Result ID",
        "main_cell_type",
        "sub_cell_type",
        "key_markers",
        "reason",
    ]
    assert cassia_table["Result ID"].tolist() == ["0", "1", "2", "3", "4", "5"]
    for _, row in cassia_table.iterrows():  # joined by name, not by position
        assert row["main_cell_type"] == f"CD8 subtype {row['Result ID']}"
        assert row["sub_cell_type"] == f"CD8 subtype {row['Result ID']} subtype A"
        assert row["reason"].startswith("Step 1.")
    pd.testing.assert_frame_equal(written, cassia_table.astype(object))
    summary = pd.read_csv(f"{prefix}_summary.csv", dtype=str)
    assert summary["Cluster ID"].tolist() == cassia_table["Result ID"].tolist()
    assert all(
        (tmp_path / f"subclustering_results{suffix}").is_file()
        for suffix in ("_full.csv", "_conversations.json", "_report.html", "_record.json")
    )
    requests = llm.server.requests
    assert len(requests) == 12  # an annotator and a validator per subcluster
    assert all('identified as "cd8 t cell"' in r.messages[0]["content"] for r in requests)
    assert all("Species: not given" in r.messages[1]["content"] for r in requests)


def test_runCASSIA_n_subcluster_writes_n_runs(cd8, tmp_path):
    table, llm = cd8
    base = tmp_path / "subclustering_results_n"
    runs = compat.runCASSIA_n_subcluster(
        2, table, "cd8 t cell", str(base), species="human", **llm.options(ontology=False)
    )
    assert len(runs) == 2
    for run in (1, 2):
        written = pd.read_csv(f"{base}_{run}.csv", dtype=str)
        assert written["Result ID"].tolist() == ["0", "1", "2", "3", "4", "5"]
        assert (tmp_path / f"subclustering_results_n_{run}_summary.csv").is_file()
    assert {r.body.get("temperature") for r in llm.server.requests} == {0.3}
    assert llm.server.request_count == 2 * 6 * 2  # each run is a sample of its own
    agreement = compat.runCASSIA_similarity_score_batch(
        table, f"{base}_*_summary.csv", tmp_path / "agreement", generate_report=False
    )
    assert agreement["agreement"].tolist() == [1.0] * 6


def test_CASSIA_options_without_a_counterpart_are_refused(cd8, tmp_path):
    table, llm = cd8
    for refused in (
        {"use_reference": True},
        {"reference_provider": "openai"},
        {"reference_cell_type_hint": "t cell"},
    ):
        with pytest.raises(CassiaError, match="use_reference"):
            compat.runCASSIA_subclusters(
                table, "cd8 t cell", str(tmp_path / "x"), **llm.options(), **refused
            )
    with pytest.raises(CassiaError, match="model must be given"):
        compat.runCASSIA_subclusters(table, "cd8 t cell", str(tmp_path / "x"))
    assert llm.server.request_count == 0


def test_the_batch_command_takes_the_parent(cd8, tmp_path):
    table, llm = cd8
    path = tmp_path / "subclusters.csv"
    table.to_csv(path, index=False)
    prefix = tmp_path / "cd8"
    args = cli(llm, "batch", str(path), "--output-name", str(prefix), "--parent", "cd8 t cell")
    assert main([*args, "--quiet"]) == 0
    assert llm.server.request_count == 12
    assert all(
        'identified as "cd8 t cell"' in r.messages[0]["content"] for r in llm.server.requests
    )
    summary = pd.read_csv(f"{prefix}_summary.csv", dtype=str)
    assert summary["Predicted General Cell Type"].tolist() == [f"CD8 subtype {c}" for c in "012345"]
