"""Cell-type levels: the offline Cell Ontology method, the model's, and CASSIA's merge functions.

The model's names reach clusters by key only. CASSIA 1.4.0's ``merge_annotations`` read its
reply by position, so a reply with its keys in another order, or one key missing, put labels
on the wrong clusters; each such reply is scripted here against the local server, and every
label must land on its own cluster.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import scanpy as sc
from conftest import MARKER100
from llm_server import RecordedRequest, Reply
from scripted_model import ScriptedModel, annotation_reply, grouping_request, signature

import cassia_sc
from cassia_sc import BatchResult, ClusterResult
from cassia_sc.agents import Grouper, group_levels, model_levels
from cassia_sc.agents.grouper import ATTEMPTS
from cassia_sc.errors import AuthenticationFailed, CassiaError
from cassia_sc.levels import (
    BROAD,
    BROAD_TERM,
    DETAILED,
    LEVELS_NOTE,
    VERY_DETAILED,
    broad_class,
    broad_classes,
    ontology_levels,
)
from cassia_sc.ontology import cell_ontology

# ------------------------------------------------------------------ a batch, and the grouper

#: Five answered clusters, named out of order, with the broad lineage each should get.
ANSWERS = {
    "3": ("Regulatory T cell", "T cell"),
    "10": ("Classical monocyte", "myeloid cell"),
    "1": ("Naive B cell", "B cell"),
    "7": ("NK cell", "NK cell"),
    "2": ("Plasmacytoid dendritic cell", "myeloid cell"),
}


def batch_of(answers=ANSWERS, *, failed=("4",), not_run=()) -> BatchResult:
    clusters = [
        ClusterResult(name, ["CD3D"], status="ok", main_cell_type=main)
        for name, (main, _) in answers.items()
    ]
    clusters += [ClusterResult(n, [], status="failed", error="HTTP 400: refused") for n in failed]
    clusters += [ClusterResult(n, [], status="not_run") for n in not_run]
    return BatchResult(clusters, settings={"tissue": "blood", "species": "human"})


def label_of(level: str, main: str) -> str:
    """What the scripted grouper calls a cluster: its own, recognisable name."""
    return f"{level}: {main}"


def grouper_requests(llm) -> list[RecordedRequest]:
    return [r for r in llm.server.requests if r.messages[0]["content"].startswith("You name")]


def keyed(clusters: dict[str, str], order: list[str], level: str) -> str:
    return json.dumps({name: label_of(level, clusters[name]) for name in order})


def test_a_reply_with_its_keys_in_reverse_order_names_each_cluster_by_its_key(scripted_llm):
    def reversed_keys(request, _):
        level, clusters = grouping_request(request)
        return Reply(content=keyed(clusters, list(reversed(clusters)), level))

    llm = scripted_llm(handler=ScriptedModel(grouper=reversed_keys))
    grouping = Grouper().group("broad", batch_of().clusters[:5], llm.client())

    assert grouping.names == {name: label_of("broad", main) for name, (main, _) in ANSWERS.items()}
    assert grouping.problems == () and len(grouper_requests(llm)) == 1
    # CASSIA read the reply's values in order onto its rows: every label but the middle
    # one would have gone to another cluster.
    reply = json.loads(grouping.replies[0].content)
    by_position = dict(zip(ANSWERS, reply.values(), strict=True))
    assert sum(by_position[n] != grouping.names[n] for n in ANSWERS) == 4


def test_a_missing_key_is_asked_again_and_never_shifts_a_label(scripted_llm):
    def first_without_cluster_1(request, _):
        level, clusters = grouping_request(request)
        order = list(clusters)
        if len(request.messages) == 2:  # the first reply lacks cluster "1"
            order.remove("1")
        return Reply(content=keyed(clusters, order, level))

    llm = scripted_llm(handler=ScriptedModel(grouper=first_without_cluster_1))
    grouping = Grouper().group("detailed", batch_of().clusters, llm.client())

    assert grouping.names == {n: label_of("detailed", m) for n, (m, _) in ANSWERS.items()}
    assert grouping.problems == ('lacked the key "1"',)
    first, second = grouper_requests(llm)
    # The model was told what was wrong, after its own reply, and asked for every key.
    assert second.messages[:2] == first.messages[:2]
    assert second.messages[2] == {"role": "assistant", "content": grouping.replies[0].content}
    assert 'lacked the key "1"' in second.messages[3]["content"]
    assert '"3", "10", "1", "7", "2"' in second.messages[3]["content"]


def test_an_extra_key_is_a_fault_told_to_the_model(scripted_llm):
    def with_an_extra_key(request, _):
        level, clusters = grouping_request(request)
        answer = {name: label_of(level, main) for name, main in clusters.items()}
        if len(request.messages) == 2:
            answer["Cluster 4"] = "T cell"
        return Reply(content=json.dumps(answer))

    llm = scripted_llm(handler=ScriptedModel(grouper=with_an_extra_key))
    grouping = Grouper().group("broad", batch_of().clusters, llm.client())

    assert grouping.problems == ('had the key "Cluster 4", of no cluster listed',)
    assert grouping.names == {n: label_of("broad", m) for n, (m, _) in ANSWERS.items()}
    assert len(grouper_requests(llm)) == 2


def test_a_cluster_left_out_of_every_reply_keeps_its_level_empty_with_the_reason(scripted_llm):
    def never_cluster_7(request, _):
        level, clusters = grouping_request(request)
        return Reply(content=keyed(clusters, [n for n in clusters if n != "7"], level))

    llm = scripted_llm(handler=ScriptedModel(grouper=never_cluster_7))
    result = model_levels(batch_of(), llm.client())

    assert len(grouper_requests(llm)) == 3 * ATTEMPTS  # every level asked again, in vain
    seven = result["7"]
    assert [seven.get(f) for f in (BROAD, DETAILED, VERY_DETAILED)] == ["", "", ""]
    assert seven.get(LEVELS_NOTE).startswith(f"broad: no name from the model in {ATTEMPTS}")
    assert 'lacked the key "7"' in seven.get(LEVELS_NOTE)
    assert result["3"].get(BROAD) == label_of("broad", "Regulatory T cell")


def test_failed_clusters_are_not_sent_and_say_why_one_request_per_level(scripted_llm):
    llm = scripted_llm(handler=ScriptedModel())
    client = llm.client()
    result = model_levels(batch_of(not_run=("9",)), client)

    requests = grouper_requests(llm)
    assert sorted(grouping_request(r)[0] for r in requests) == sorted(
        ["broad", "detailed", "very_detailed"]
    )
    for request in requests:
        sent = grouping_request(request)[1]
        assert list(sent) == list(ANSWERS)  # the answered ones, in batch order
        schema = request.body["response_format"]["json_schema"]["schema"]
        assert schema["required"] == list(ANSWERS)
        assert schema["additionalProperties"] is False
        assert '"4"' not in request.messages[1]["content"]
        assert "nan" not in request.messages[1]["content"].lower()
    failed, skipped = result["4"], result["9"]
    assert failed.get(BROAD) == "" and skipped.get(DETAILED) == ""
    assert failed.get(LEVELS_NOTE) == "no levels: the annotation failed (HTTP 400: refused)"
    assert skipped.get(LEVELS_NOTE) == "no levels: the cluster was not annotated (not run)"
    # The scripted model names each cluster after its main cell type, at every level.
    assert result["10"].get(VERY_DETAILED) == "Classical monocyte"
    assert result.settings["levels_method"] == "model"
    assert result.settings["levels_calls"] == 3 and result.settings["levels_requests"] == 3
    assert client.usage.calls == 3  # the client's own count, as every call of a run


def test_the_calls_are_cached_and_a_bad_key_stops_them(scripted_llm):
    llm = scripted_llm(handler=ScriptedModel())
    model_levels(batch_of(), llm.client())
    again = model_levels(batch_of(), llm.client())
    assert len(grouper_requests(llm)) == 3
    assert again.settings["levels_cached_calls"] == 3 and again.settings["levels_requests"] == 0

    refused = scripted_llm(handler=lambda request, index: Reply(status=401))
    with pytest.raises(AuthenticationFailed):
        group_levels(batch_of().clusters, refused.client())


def test_a_failed_call_leaves_its_level_empty_for_every_cluster(scripted_llm):
    def refuse_broad(request, _):
        if grouping_request(request)[0] == "broad":
            return Reply(status=400, error_message="context too long")
        return None

    llm = scripted_llm(handler=ScriptedModel(grouper=refuse_broad))
    result = model_levels(batch_of(), llm.client(max_retries=0))
    for name in ANSWERS:
        assert result[name].get(BROAD) == ""
        assert result[name].get(LEVELS_NOTE).startswith("broad: the call failed (")
        assert result[name].get(DETAILED) == ANSWERS[name][0]


# ------------------------------------------------------------------------- offline, with CL


@pytest.fixture
def ontology():
    """The Cell Ontology; the test is skipped without the cassia-sc[ontology] extra."""
    pytest.importorskip("cellxgene_ontology_guide")
    pytest.importorskip("rapidfuzz")
    return cell_ontology()


def test_the_broad_classes_are_live_terms_and_the_most_specific_comes_first(ontology):
    rows = broad_classes()
    assert all(ontology.label(row.term_id) == row.term_label for row in rows)
    assert len({row.term_id for row in rows}) == len(rows)
    order = [row.name for row in rows]
    assert order.index("NK cell") < order.index("innate lymphoid cell") < order.index("lymphocyte")
    assert order.index("hepatocyte") < order.index("epithelial cell")
    # Terms CL files under several classes go to the most specific one.
    cases = {
        "CL:0000623": "NK cell",  # natural killer cell, also an innate lymphoid cell
        "CL:0000129": "myeloid cell",  # microglial cell, also a glial cell
        "CL:0000169": "endocrine cell",  # pancreatic beta cell, also epithelial
        "CL:0000182": "hepatocyte",
        "CL:0000037": "hematopoietic stem and progenitor cell",
        "CL:0000576": "myeloid cell",  # monocyte, which CL also files as a precursor
        "CL:0000786": "B cell",  # plasma cell: of the B lineage, not under B cell in CL
    }
    assert {term: broad_class(term, ontology).name for term in cases} == cases
    assert broad_class("CL:0000000", ontology) is None  # "cell" says nothing


#: 20 rows of marker100 (row number, true cell type, tissue) and the broad class each is,
#: checked by hand: the lineage a biologist gives it, by the classes of the levels guide.
MARKER100_BROAD = {
    0: "endothelial cell",  # Ascending vasa recta endothelium
    1: "B cell",
    3: "T cell",  # CD8 T cell
    9: "epithelial cell",  # Intercalated cell (collecting duct)
    10: "mast cell",
    11: "myeloid cell",  # MNP-a/classical monocyte derived
    15: "fibroblast",  # Myofibroblast
    16: "granulocyte",  # Neutrophil
    18: "T cell",  # NKT cell: a T cell (TCR), not an NK cell
    22: "epithelial cell",  # Podocyte: the glomerulus's visceral epithelium
    26: "epithelial cell",  # Transitional urothelium
    29: "epithelial cell",  # Epithelial cell (alveolar type I)
    41: "",  # Pericyte/SMC: two types, no one term
    52: "endocrine cell",  # intestinal enteroendocrine cell
    60: "B cell",  # plasma cell: B lineage
    64: "erythroid cell",
    70: "muscle cell",  # Muscle progenitor cell
    73: "",  # Proliferating cell: a state, no type
    77: "glial cell",  # Astrocyte
    88: "stromal cell",  # Decidual stromal cell
}


def test_marker100_true_cell_types_walk_up_to_their_broad_class(ontology):
    table = pd.read_csv(MARKER100, encoding="utf-8-sig")
    chosen = table.loc[list(MARKER100_BROAD)]
    found = {}
    for tissue, rows in chosen.groupby("Tissue", sort=False):
        batch = BatchResult(
            [
                ClusterResult(str(i), [], status="ok", main_cell_type=row["True Cell Type"])
                for i, row in rows.iterrows()
            ],
            settings={"tissue": tissue, "species": "human"},
        )
        for cluster in ontology_levels(batch, ontology=ontology).clusters:
            found[int(cluster.cluster)] = cluster
    assert {i: c.get(BROAD) for i, c in found.items()} == MARKER100_BROAD
    assert found[41].get(LEVELS_NOTE) == "broad: no Cell Ontology term for 'Pericyte/SMC'"
    assert found[73].get(LEVELS_NOTE) == (
        "broad: its Cell Ontology term, cell (CL:0000000), is under no broad class"
    )
    # detailed: the CL label when mapped, else the label; very detailed: with its state.
    assert found[0].get(DETAILED) == "endothelial cell"
    assert found[0].get(VERY_DETAILED) == "Ascending vasa recta endothelium"
    assert found[3].get(DETAILED) == "CD8-positive, alpha-beta T cell"
    assert found[41].get(DETAILED) == "Pericyte/SMC"
    assert found[73].get(DETAILED) == "Proliferating cell"
    assert found[60].get(BROAD_TERM) == "CL:0000946"  # antibody secreting cell


# ------------------------------------------------------ tl.levels on an annotated pbmc68k

#: Real names for pbmc68k_reduced's Louvain clusters (close to their bulk labels), with
#: subtypes; cluster 10 fails.
PBMC = {
    "0": ("Regulatory T cell", ("Effector regulatory T cell",)),
    "1": ("Inflammatory classical monocyte", ("CD14+ classical monocyte",)),
    "2": ("Conventional dendritic cell", ("cDC2",)),
    "3": ("Cytotoxic CD8+ T cell", ()),
    "4": ("Naive B cell", ("Transitional B cell",)),
    "5": ("Non-classical monocyte", ("CD16+ monocyte",)),
    "6": ("Activated dendritic cell", ()),
    "7": ("Plasmacytoid dendritic cell", ()),
    "8": ("Memory B cell", ("Switched memory B cell",)),
    "9": ("Mixed T/NK cells", ()),
}
PBMC_BROAD = {
    "0": "T cell",
    "1": "myeloid cell",
    "2": "myeloid cell",
    "3": "T cell",
    "4": "B cell",
    "5": "myeloid cell",
    "6": "myeloid cell",
    "7": "myeloid cell",
    "8": "B cell",
    "9": "",
    "10": "",
}


@pytest.fixture
def annotated(pbmc_wilcoxon, scripted_llm):
    """pbmc68k_reduced annotated by the scripted model with PBMC's names; 10 fails."""
    markers = cassia_sc.top_markers(pbmc_wilcoxon, key="wilcoxon")
    cluster_of = {signature(genes): cluster for cluster, genes in markers.items()}

    def annotator(request, genes):
        cluster = cluster_of[signature(genes)]
        if cluster == "10":
            return Reply(status=400, error_message="refused")
        main, subtypes = PBMC[cluster]
        return Reply(content=annotation_reply(main, subtypes=subtypes, key_markers=genes[:3]))

    llm = scripted_llm(handler=ScriptedModel(annotator=annotator))
    cassia_sc.tl.annotate(
        pbmc_wilcoxon, tissue="blood", species="human", key="wilcoxon", **llm.options()
    )
    return pbmc_wilcoxon, llm


def test_levels_offline_on_pbmc(annotated, ontology, tmp_path):
    adata, llm = annotated
    before = len(llm.server.requests)
    cassia_sc.tl.levels(adata)
    assert len(llm.server.requests) == before  # offline: no call

    table = adata.uns["cassia"]["results"].set_index("cluster")
    assert table["celltype_broad"].to_dict() == PBMC_BROAD
    assert table.loc["1", "celltype_detailed"] == "classical monocyte"
    assert table.loc["1", "celltype_very_detailed"] == "CD14+ classical monocyte (Inflammatory)"
    assert table.loc["6", "celltype_very_detailed"] == "Activated dendritic cell"
    assert table.loc["3", "celltype_very_detailed"] == "Cytotoxic CD8+ T cell"
    assert table.loc["9", "levels_note"] == "broad: no Cell Ontology term for 'Mixed T/NK cells'"
    assert table.loc["10", "levels_note"].startswith("no levels: the annotation failed (")
    assert adata.uns["cassia"]["params"]["levels_method"] == "ontology"

    obs = adata.obs
    assert isinstance(obs["cassia_celltype_broad"].dtype, pd.CategoricalDtype)
    for cluster, broad in PBMC_BROAD.items():
        cells = obs.loc[obs["louvain"] == cluster, "cassia_celltype_broad"]
        assert (cells == broad).all() if broad else cells.isna().all()
    assert obs.loc[obs["louvain"] == "10", "cassia_celltype_detailed"].isna().all()
    assert (obs.loc[obs["louvain"] == "4", "cassia_celltype_detailed"] == "naive B cell").all()

    path = tmp_path / "levels.h5ad"
    adata.write_h5ad(path)
    back = sc.read_h5ad(path)
    for column in ("broad", "detailed", "very_detailed"):
        name = f"cassia_celltype_{column}"
        assert back.obs[name].astype(object).equals(obs[name].astype(object))
    pd.testing.assert_frame_equal(
        back.uns["cassia"]["results"],
        adata.uns["cassia"]["results"],
        check_dtype=False,  # text comes back as pandas 3's string dtype
        check_index_type=False,
    )


def test_levels_reach_get_annotation_the_summary_csv_and_the_report(annotated, ontology, tmp_path):
    adata, _ = annotated
    cassia_sc.tl.levels(adata)

    result = cassia_sc.get.annotation(adata)
    assert {c.cluster: c.get(BROAD) for c in result.clusters} == PBMC_BROAD
    paths = cassia_sc.export.write_outputs(result, tmp_path / "run")
    summary = pd.read_csv(paths["summary"], dtype={"Cluster ID": str}, keep_default_na=False)
    merged = summary.set_index("Cluster ID")
    assert merged["Merged_Grouping_1"].to_dict() == PBMC_BROAD
    assert merged.loc["4", "Merged_Grouping_2"] == "naive B cell"
    assert merged.loc["1", "Merged_Grouping_3"] == "CD14+ classical monocyte (Inflammatory)"
    html = paths["report"].read_text(encoding="utf-8")
    assert "Broad lineage" in html and "CD14+ classical monocyte (Inflammatory)" in html
    # The summary CSV read back (as tl.import_cassia reads it) keeps them.
    back = cassia_sc.read_cassia(paths["summary"], fields=cassia_sc.get.fields(adata))
    assert back["8"].get(DETAILED) == "memory B cell"


def test_levels_with_the_model_on_pbmc(annotated, tmp_path):
    adata, llm = annotated
    before = len(grouper_requests(llm))
    cassia_sc.tl.levels(adata, method="model", cache_dir=llm.cache_dir)

    requests = grouper_requests(llm)[before:]
    assert len(requests) == 3
    sent = grouping_request(requests[0])[1]
    assert list(sent) == [str(i) for i in range(10)]  # cluster 10 failed: not sent
    table = adata.uns["cassia"]["results"].set_index("cluster")
    assert table.loc["7", "celltype_broad"] == "Plasmacytoid dendritic cell"
    assert table.loc["10", "celltype_broad"] == ""
    params = adata.uns["cassia"]["params"]
    assert params["levels_method"] == "model" and params["levels_calls"] == 3
    cells = adata.obs.loc[adata.obs["louvain"] == "7", "cassia_celltype_broad"]
    assert (cells == "Plasmacytoid dendritic cell").all()

    adata.write_h5ad(tmp_path / "model.h5ad")
    back = sc.read_h5ad(tmp_path / "model.h5ad")
    name = "cassia_celltype_very_detailed"
    assert back.obs[name].astype(object).equals(adata.obs[name].astype(object))
    assert back.uns["cassia"]["params"]["levels_calls"] == 3
    pd.testing.assert_frame_equal(
        back.uns["cassia"]["results"],
        adata.uns["cassia"]["results"],
        check_dtype=False,  # text comes back as pandas 3's string dtype
        check_index_type=False,
    )


def test_levels_refuses_what_it_cannot_do(annotated, ontology, pbmc):
    adata, _ = annotated
    with pytest.raises(CassiaError, match="method must be"):
        cassia_sc.tl.levels(adata, method="llm")
    with pytest.raises(CassiaError, match="options of method='model'"):
        cassia_sc.tl.levels(adata, model="gpt-4o")
    with pytest.raises(CassiaError, match=r"tl\.annotate"):
        cassia_sc.tl.levels(pbmc)
    copied = cassia_sc.tl.levels(adata, copy=True)
    assert "cassia_celltype_broad" in copied.obs and "cassia_celltype_broad" not in adata.obs


# ---------------------------------------------------------------- CASSIA's merge functions

#: A summary CSV as CASSIA 1.4.0 writes it; its rows are in another order than the reply.
CASSIA_SUMMARY = pd.DataFrame(
    {
        "Cluster ID": ["monocyte", "plasma cell", "cd8 t", "failed one", "b naive"],
        "Predicted General Cell Type": [
            "Classical monocyte",
            "Plasma cell",
            "CD8+ T cell",
            "",
            "Naive B cell",
        ],
        "Predicted Detailed Cell Type": [
            "CD14+ monocyte, Inflammatory monocyte",
            "IgA plasma cell",
            "Effector memory CD8+ T cell",
            "",
            "Transitional B cell",
        ],
        "Possible Mixed Cell Types": ["", "", "", "", ""],
        "Marker Number": [50, 50, 50, 50, 50],
        "Marker List": ["CD14, LYZ", "JCHAIN, MZB1", "CD8A, GZMK", "X, Y", "MS4A1, TCL1A"],
        "Iterations": [1, 1, 2, 0, 1],
        "Model": ["m"] * 5,
        "Provider": ["openrouter"] * 5,
        "Tissue": ["large intestine"] * 5,
        "Species": ["human"] * 5,
    }
)


def sorted_reply(request, _):
    """Answer with the clusters in alphabetical order, not the table's."""
    level, clusters = grouping_request(request)
    return Reply(content=keyed(clusters, sorted(clusters), level))


def test_merge_annotations_writes_each_grouping_on_its_own_row(scripted_llm, tmp_path):
    source = tmp_path / "run_summary.csv"
    CASSIA_SUMMARY.to_csv(source, index=False)
    llm = scripted_llm(handler=ScriptedModel(grouper=sorted_reply))
    target = tmp_path / "merged.csv"

    returned = cassia_sc.compat.merge_annotations(
        str(source), str(target), **llm.options(detail_level="detailed")
    )

    written = pd.read_csv(target, keep_default_na=False)
    assert list(written.columns) == [*CASSIA_SUMMARY.columns, "Merged_Grouping_2"]
    mains = dict(zip(CASSIA_SUMMARY["Cluster ID"], CASSIA_SUMMARY.iloc[:, 1], strict=True))
    expected = [label_of("detailed", mains[c]) if mains[c] else "" for c in mains]
    assert written["Merged_Grouping_2"].tolist() == expected
    assert returned["Merged_Grouping_2"].tolist() == expected
    (request,) = grouper_requests(llm)
    assert "failed one" not in request.messages[1]["content"]
    assert "Tissue: large intestine" in request.messages[1]["content"]


def test_merge_annotations_all_adds_three_columns_one_call_each(scripted_llm, tmp_path):
    source = tmp_path / "run_summary.csv"
    CASSIA_SUMMARY.to_csv(source, index=False)
    llm = scripted_llm(handler=ScriptedModel(grouper=sorted_reply))

    merged = cassia_sc.compat.merge_annotations_all(str(source), **llm.options())

    assert len(grouper_requests(llm)) == 3
    for level, column in zip(
        ("broad", "detailed", "very_detailed"),
        ("Merged_Grouping_1", "Merged_Grouping_2", "Merged_Grouping_3"),
        strict=True,
    ):
        rows = dict(zip(merged["Cluster ID"], merged[column], strict=True))
        assert rows["plasma cell"] == label_of(level, "Plasma cell")
        assert rows["b naive"] == label_of(level, "Naive B cell")
        assert rows["failed one"] == ""
    with pytest.raises(CassiaError, match="detail_level"):
        cassia_sc.compat.merge_annotations(str(source), model="m", detail_level="fine")
    with pytest.raises(CassiaError, match="model must be given"):
        cassia_sc.compat.merge_annotations_all(str(source))
