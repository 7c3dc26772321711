"""Repeated runs through the local server, answering differently each time: consensus,
agreement, flagged clusters, and what tl.annotate writes."""

from __future__ import annotations

import logging
import threading
from collections import Counter

import pandas as pd
import pytest
import scanpy as sc
from conftest import ScriptedLLM
from llm_server import Reply
from scripted_model import annotation_reply, signature

import cassia_sc

pytest.importorskip("cellxgene_ontology_guide")

EXAMPLE = cassia_sc.loadmarker("pbmc68k_processed").head(4)
SIGNATURES = {row.cluster: signature(row.markers.split(", ")) for row in EXAMPLE.itertuples()}
#: What the model says for each cluster on its 1st, 2nd and 3rd time.
ANSWERS = {
    "0": ["B cell", "B cell", "T cell"],  # 2 of 3
    "1": ["B cell", "T cell", "natural killer cell"],  # 1 of 3: flagged
    "2": ["naive B cell", "B cell", "B cells"],  # one term is the other's ancestor: 3 of 3
    "3": ["monocyte", "monocyte", "monocyte"],
}


class Sampler:
    """A model that gives the n-th answer of ANSWERS the n-th time it sees a cluster."""

    def __init__(self):
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()

    def annotator(self, request, markers):
        cluster = next(c for c, s in SIGNATURES.items() if s == signature(markers))
        with self.lock:
            turn = self.seen[cluster]
            self.seen[cluster] += 1
        main = ANSWERS[cluster][turn % 3]
        return Reply(
            content=annotation_reply(
                main, subtypes=(f"{main} subtype",), key_markers=tuple(markers[:2])
            )
        )


@pytest.fixture
def llm(scripted_llm) -> ScriptedLLM:
    """The scripted model answering as a fresh Sampler."""
    return scripted_llm(annotator=Sampler().annotator)


def test_consensus_agreement_and_flags(llm):
    with llm.client(temperature=0.7) as shared:
        runs = cassia_sc.run_repeated(
            EXAMPLE, n_runs=3, tissue="blood", species="human", client=shared, progress=False
        )
    assert len(runs) == 3 and llm.server.request_count == 3 * 4 * 2
    table = cassia_sc.consensus(runs).set_index("cluster")
    assert table.loc["0", "consensus"] == "B cell" and table.loc["0", "agreement"] == pytest.approx(
        2 / 3
    )
    assert table.loc["1", "consensus"] == "B cell" and table.loc["1", "agreement"] == pytest.approx(
        1 / 3
    )
    assert table.loc["2", "agreement"] == 1.0  # naive B cell is a B cell
    assert table.loc["2", "consensus"] == "naive B cell"  # the earliest of equals
    assert table.loc["3", "agreement"] == 1.0
    assert table["flagged"].tolist() == [False, True, False, False]
    assert table.loc["1", "answers"] == "B cell; T cell; natural killer cell"


def test_each_run_has_its_own_cache_entries(llm):
    with llm.client(temperature=0.7) as shared:
        cassia_sc.run_repeated(
            EXAMPLE, n_runs=3, tissue="blood", species="human", client=shared, progress=False
        )
        before = llm.server.request_count
        again = cassia_sc.run_repeated(
            EXAMPLE, n_runs=3, tissue="blood", species="human", client=shared, progress=False
        )
    assert llm.server.request_count == before  # all 3 x 4 x 2 replies came from the cache
    assert [r["1"].main_cell_type for r in again] == ANSWERS["1"]


def test_tl_annotate_writes_consensus_agreement_and_flags(scripted_llm, tmp_path):
    adata = sc.datasets.pbmc68k_reduced()
    markers = cassia_sc.top_markers(adata)
    clusters = list(markers)
    # The model hesitates on the first cluster only.
    hesitant = signature(markers[clusters[0]])
    seen: Counter[str] = Counter()

    def annotator(request, genes):
        key = signature(genes)
        seen[key] += 1
        if key == hesitant:
            main = ["regulatory T cell", "CD4-positive, alpha-beta T cell", "B cell"][
                (seen[key] - 1) % 3
            ]
        else:
            main = "monocyte"
        return Reply(content=annotation_reply(main, key_markers=tuple(genes[:2])))

    with scripted_llm(annotator=annotator).client(temperature=0.7) as shared:
        cassia_sc.tl.annotate(
            adata, tissue="blood", species="human", n_runs=3, client=shared, progress=False
        )
    agreement = adata.obs["cassia_agreement"]
    first = adata.obs["bulk_labels"] == clusters[0]
    assert agreement[first].round(3).unique().tolist() == [round(1 / 3, 3)]
    assert (agreement[~first] == 1.0).all()
    table = adata.uns["cassia"]["uncertainty"]
    assert table["flagged"].tolist() == [True] + [False] * (len(clusters) - 1)
    assert adata.obs["cassia_celltype_ontology_term_id"][~first].unique().tolist() == ["CL:0000576"]
    path = tmp_path / "a.h5ad"
    adata.write_h5ad(path)
    back = sc.read_h5ad(path)
    pd.testing.assert_frame_equal(
        back.uns["cassia"]["uncertainty"], table, check_dtype=False, check_index_type=False
    )
    assert back.obs["cassia_agreement"].equals(adata.obs["cassia_agreement"])
    ax = cassia_sc.pl.review(adata, show=False)
    assert [t.get_text() for t in ax.get_xticklabels()][-1] == "agreement"


def test_several_models_are_compared(scripted_llm):
    def annotator(request, genes):
        main = {"model-a": "B cell", "model-b": "B cells", "model-c": "T cell"}[
            request.body["model"]
        ]
        return Reply(content=annotation_reply(main, key_markers=tuple(genes[:1])))

    runs = cassia_sc.run_repeated(
        EXAMPLE,
        models=["model-a", "model-b", "model-c"],
        n_runs=1,
        tissue="blood",
        species="human",
        **scripted_llm(annotator=annotator).options(model=None),  # models= names them
    )
    assert [r.settings["model"] for r in runs] == ["model-a", "model-b", "model-c"]
    table = cassia_sc.consensus(runs)
    assert table["consensus"].unique().tolist() == ["B cell"]
    assert table["agreement"].round(3).unique().tolist() == [round(2 / 3, 3)]


def test_dry_run_costs_every_run_and_warns_at_temperature_zero(caplog):
    caplog.set_level(logging.WARNING, logger="cassia_sc")
    single = cassia_sc.run_batch(
        EXAMPLE, tissue="blood", species="human", model="m", dry_run=True, progress=False
    )
    [plan] = cassia_sc.run_repeated(
        EXAMPLE, n_runs=3, model="m", tissue="blood", species="human", dry_run=True, progress=False
    )
    assert [c.estimated_prompt_tokens for c in plan.clusters] == [
        3 * c.estimated_prompt_tokens for c in single.clusters
    ]
    assert plan.settings["runs"] == 3
    assert "temperature 0" in caplog.text
