"""tl.annotate on pbmc68k_reduced through the local server: obs, uns, h5ad round trips."""

from __future__ import annotations

import json
import logging
import pickle

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from conftest import ScriptedLLM
from llm_server import Reply
from scripted_model import signature

import cassia_sc


def type_per_cluster(adata, key="rank_genes_groups") -> dict[str, str]:
    """Cell types that call each cluster "type <cluster>", recognising it by its markers."""
    markers = cassia_sc.top_markers(adata, key=key)
    return {signature(g): f"type {c}" for c, g in markers.items()}


def annotate(adata, llm: ScriptedLLM, **options):
    """tl.annotate through a client of ``llm`` with quick retries."""
    client = llm.client(retry_delay=0.01)
    settings = {"tissue": "blood", "species": "human", "client": client, "progress": False}
    return cassia_sc.tl.annotate(adata, **(settings | options))


def test_bulk_labels_with_slashes_and_the_stored_logreg_result(pbmc, scripted_llm, tmp_path):
    before = pickle.dumps(pbmc.uns["rank_genes_groups"])
    assert annotate(pbmc, scripted_llm(type_per_cluster(pbmc))) is None

    labels = pbmc.obs["cassia_celltype"]
    assert isinstance(labels.dtype, pd.CategoricalDtype)
    expected = "type " + pbmc.obs["bulk_labels"].astype(str)
    assert (labels.astype(str) == expected).all()
    assert (pbmc.obs["cassia_subtype"].astype(str) == expected + " subtype A").all()
    record = pbmc.uns["cassia"]
    assert (
        record["params"]["groupby"] == "bulk_labels"
        and record["params"]["key"] == "rank_genes_groups"
    )
    table = record["results"]
    assert table["cluster"].tolist() == list(pbmc.obs["bulk_labels"].cat.categories)
    assert set(table["status"]) == {"ok"} and set(table["validation"]) == {"passed"}
    assert json.loads(record["conversations"])[0]["cluster"] == "CD4+/CD25 T Reg"
    assert record["usage"]["requests"] == 20
    assert set(record["versions"]) >= {"cassia_sc", "anndata", "scanpy"}
    assert pickle.dumps(pbmc.uns["rank_genes_groups"]) == before

    path = tmp_path / "pbmc.h5ad"
    pbmc.write_h5ad(path)
    back = sc.read_h5ad(path)
    for column in ("cassia_celltype", "cassia_subtype"):
        # pandas 3 reads the categories back as its own string dtype: compare the content
        assert list(back.obs[column].cat.categories) == list(pbmc.obs[column].cat.categories)
        assert back.obs[column].astype(str).equals(pbmc.obs[column].astype(str))
    pd.testing.assert_frame_equal(
        back.uns["cassia"]["results"], table, check_dtype=False, check_index_type=False
    )
    assert back.uns["cassia"]["params"] == record["params"]
    assert back.uns["cassia"]["conversations"] == record["conversations"]


def test_louvain_wilcoxon_groupby_defaults_to_the_result(pbmc_wilcoxon, scripted_llm):
    llm = scripted_llm(type_per_cluster(pbmc_wilcoxon, key="wilcoxon"))
    annotate(pbmc_wilcoxon, llm, key="wilcoxon", key_added="louvain_llm")
    assert pbmc_wilcoxon.uns["louvain_llm"]["params"]["groupby"] == "louvain"
    assert (
        pbmc_wilcoxon.obs["louvain_llm_celltype"].astype(str)
        == "type " + pbmc_wilcoxon.obs["louvain"].astype(str)
    ).all()


def test_numeric_cluster_names_keep_their_order(pbmc, scripted_llm, tmp_path):
    codes = pbmc.obs["louvain"].cat.codes.to_numpy() + 1  # clusters "1" ... "11"
    pbmc.obs["cluster"] = pd.Categorical(
        codes.astype(str), categories=[str(i) for i in range(1, 12)]
    )
    sc.tl.rank_genes_groups(pbmc, "cluster", method="t-test", key_added="numeric")
    annotate(pbmc, scripted_llm(type_per_cluster(pbmc, key="numeric")), key="numeric")
    table = pbmc.uns["cassia"]["results"]
    assert table["cluster"].tolist() == [str(i) for i in range(1, 12)]  # "2" before "10"
    path = tmp_path / "numeric.h5ad"
    pbmc.write_h5ad(path)
    back = sc.read_h5ad(path)
    assert back.uns["cassia"]["results"]["cluster"].tolist() == [str(i) for i in range(1, 12)]
    assert (
        back.obs["cassia_celltype"].astype(str) == "type " + back.obs["cluster"].astype(str)
    ).all()


def test_a_failed_cluster_leaves_its_cells_nan_with_a_warning(pbmc, scripted_llm, caplog):
    target = signature(cassia_sc.top_markers(pbmc)["CD34+"])

    def annotator(request, markers):
        return Reply(status=400, error_message="refused") if signature(markers) == target else None

    caplog.set_level(logging.WARNING, logger="cassia_sc")
    annotate(pbmc, scripted_llm(type_per_cluster(pbmc), annotator=annotator))
    labels = pbmc.obs["cassia_celltype"]
    is_cd34 = pbmc.obs["bulk_labels"] == "CD34+"
    assert labels[is_cd34].isna().all() and labels[~is_cd34].notna().all()
    assert "No cell type for clusters ['CD34+']" in caplog.text
    row = pbmc.uns["cassia"]["results"].set_index("cluster").loc["CD34+"]
    assert row["status"] == "failed" and "refused" in row["error"]


def test_copy_and_a_second_key_added_keep_everything(pbmc, scripted_llm, tmp_path):
    llm = scripted_llm(type_per_cluster(pbmc))
    annotated = annotate(pbmc, llm, copy=True)
    assert "cassia" not in pbmc.uns and "cassia_celltype" not in pbmc.obs
    annotate(
        annotated,
        llm,
        key_added="second",
        validator_involvement="v0",
        output_name=tmp_path / "run",
    )
    assert {"cassia", "second"} <= set(annotated.uns)
    assert {"cassia_celltype", "cassia_subtype", "second_celltype", "second_subtype"} <= set(
        annotated.obs
    )
    assert annotated.uns["second"]["params"]["validator_involvement"] == "v0"
    for suffix in ("summary.csv", "full.csv", "conversations.json", "report.html"):
        assert (tmp_path / f"run_{suffix}").is_file()


def test_the_api_key_is_not_stored(pbmc, scripted_llm, tmp_path, monkeypatch):
    secret = "fake-key-for-tests-NOT-A-SECRET-9999"
    monkeypatch.setenv("CASSIA_API_KEY", secret)
    llm = scripted_llm(type_per_cluster(pbmc))
    cassia_sc.tl.annotate(pbmc, tissue="blood", species="human", **llm.options())
    path = tmp_path / "pbmc.h5ad"
    pbmc.write_h5ad(path)
    assert secret.encode() not in path.read_bytes()
    assert secret not in repr(pbmc.uns["cassia"])


def test_missing_result_and_bad_groupby_are_clear_errors(pbmc):
    with pytest.raises(cassia_sc.MarkerError, match=r"not a column of adata\.obs"):
        cassia_sc.tl.annotate(pbmc, "clusters", tissue="blood", species="human", model="m")
    del pbmc.uns["rank_genes_groups"]
    with pytest.raises(
        cassia_sc.MarkerError, match=r"run sc\.tl\.rank_genes_groups\(adata, groupby\)"
    ):
        cassia_sc.tl.annotate(pbmc, tissue="blood", species="human", model="m")


def test_a_plan_leaves_adata_as_it_was_and_annotate_points_to_it(pbmc):
    before = (pbmc.obs.copy(), pickle.dumps(pbmc.uns))
    plan = cassia_sc.plan(pbmc, tissue="blood", species="human", model="m", progress=False)
    repeated = cassia_sc.plan(
        pbmc, tissue="blood", species="human", model="m", progress=False, n_runs=3
    )
    with pytest.raises(cassia_sc.CassiaError, match=r"cassia_sc\.plan\(adata"):
        cassia_sc.tl.annotate(pbmc, tissue="blood", species="human", model="m", dry_run=True)
    tokens = [c.estimated_prompt_tokens for c in plan.clusters]
    assert len(tokens) == 10 and all(t > 500 for t in tokens)
    assert [c.estimated_prompt_tokens for c in repeated.clusters] == [3 * t for t in tokens]
    pd.testing.assert_frame_equal(pbmc.obs, before[0])
    assert pickle.dumps(pbmc.uns) == before[1]


def test_tissue_blind_values_are_stored(pbmc, scripted_llm):
    annotate(pbmc, scripted_llm(type_per_cluster(pbmc)), tissue=None)
    table = pbmc.uns["cassia"]["results"]
    assert set(table["possible_tissues"]) == {"blood, spleen"}
    assert "tissue" not in pbmc.uns["cassia"]["params"]  # None is not stored
    assert np.all(pbmc.obs["cassia_celltype"].notna())


def test_the_uns_record_rebuilds_the_batch(pbmc, scripted_llm, tmp_path):
    annotate(pbmc, scripted_llm(type_per_cluster(pbmc)))
    pbmc.write_h5ad(tmp_path / "a.h5ad")
    record = sc.read_h5ad(tmp_path / "a.h5ad").uns["cassia"]
    rebuilt = cassia_sc.BatchResult.from_uns(record)
    pd.testing.assert_frame_equal(
        rebuilt.table(), record["results"], check_dtype=False, check_index_type=False
    )
    first = rebuilt.clusters[0]
    assert [(t.agent, t.role) for t in first.conversation] == [
        ("annotator", "system"),
        ("annotator", "user"),
        ("annotator", "assistant"),
        ("validator", "system"),
        ("validator", "user"),
        ("validator", "assistant"),
    ]
    assert rebuilt.settings["model"] == "test-model"
