"""The evidence engine of the annotation boost: every figure of a look-up, on every input.

The expected figures are computed here with numpy on a small hand-made matrix (and a few
are written out by hand), never with the engine.
"""

from __future__ import annotations

import threading
import time

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

import cassia_sc
from cassia_sc.errors import CassiaError, EvidenceError
from cassia_sc.evidence import (
    AMONG_MARKERS,
    EXPRESSED,
    NOT_AMONG_MARKERS,
    NOT_EXPRESSED,
    NOT_MEASURED,
    DataHandle,
    Evidence,
    ExpressionEvidence,
    MarkerTableEvidence,
)

# 13 cells x 6 genes; three clusters of four cells, interleaved, and one cell in no cluster
# (with large values, which must count nowhere). Values are multiples of 0.5: not integers,
# so the data count as log1p-transformed.
GENES = ["CD3E", "MS4A1", "LYZ", "GAPDH", "CD8A", "NKG7"]
IDS = [f"ENSG{i:02d}" for i in range(len(GENES))]
LABELS = ["A", "B", "C", "A", "B", "C", "A", "B", "C", "A", "B", "C", None]
X = np.array(
    [
        [2.0, 0.0, 0.0, 1.5, 0.5, 0.0],  # A
        [0.5, 2.5, 0.0, 1.0, 0.0, 0.0],  # B
        [0.0, 0.0, 3.0, 0.5, 0.0, 0.0],  # C
        [1.0, 0.0, 0.0, 1.5, 0.0, 0.0],  # A
        [0.0, 1.5, 0.0, 2.0, 0.0, 0.0],  # B
        [0.0, 0.0, 2.0, 0.0, 0.0, 0.0],  # C
        [3.0, 0.0, 0.0, 0.5, 0.0, 0.0],  # A
        [0.0, 3.5, 0.5, 1.0, 0.0, 0.0],  # B
        [0.0, 0.0, 1.0, 1.0, 0.0, 0.0],  # C
        [0.0, 0.0, 0.0, 0.5, 0.0, 0.0],  # A
        [0.0, 0.5, 0.0, 0.0, 0.0, 0.0],  # B
        [0.0, 0.0, 4.0, 2.5, 0.0, 0.0],  # C
        [9.0, 9.0, 9.0, 9.0, 9.0, 9.0],  # no cluster
    ],
    dtype=np.float32,
)
FIGURES = ["mean", "fraction", "rest_mean", "rest_fraction", "log2fc"]


def make_adata(matrix=None) -> ad.AnnData:
    """The hand-made data; categories in another order, and one with no cells."""
    obs = pd.DataFrame(
        {"cluster": pd.Categorical(LABELS, categories=["C", "A", "B", "D"])},
        index=[f"cell{i}" for i in range(len(LABELS))],
    )
    return ad.AnnData(
        X=X.copy() if matrix is None else matrix,
        obs=obs,
        var=pd.DataFrame(index=GENES),
    )


def ranked_adata() -> ad.AnnData:
    """The data, for rank_genes_groups: which needs two cells or more in every category."""
    adata = make_adata()
    adata.obs["cluster"] = adata.obs["cluster"].cat.remove_unused_categories()
    return adata


def expected(matrix: np.ndarray, cluster: str, gene: int, *, log1p: bool) -> dict[str, float]:
    """The figures of one gene in one cluster, from the matrix with numpy."""
    values = np.asarray(matrix, dtype=np.float64)[:, gene]
    labels = np.array([label or "" for label in LABELS])
    inside = labels == cluster
    rest = (labels != cluster) & (labels != "")
    mean, rest_mean = values[inside].mean(), values[rest].mean()
    if log1p:
        log2fc = np.log2((np.expm1(mean) + 1e-9) / (np.expm1(rest_mean) + 1e-9))
    else:
        log2fc = np.log2((mean + 1e-9) / (rest_mean + 1e-9))
    return {
        "mean": mean,
        "fraction": np.count_nonzero(values[inside]) / inside.sum(),
        "rest_mean": rest_mean,
        "rest_fraction": np.count_nonzero(values[rest]) / rest.sum(),
        "log2fc": log2fc,
    }


def check_every_figure(evidence: ExpressionEvidence, matrix: np.ndarray, *, log1p: bool):
    assert evidence.clusters == ["C", "A", "B"]  # category order; D has no cells
    assert list(evidence.n_cells) == [4, 4, 4]
    assert evidence.log1p is log1p
    for cluster in evidence.clusters:
        frame = evidence.lookup(cluster, GENES)
        assert list(frame["gene"]) == GENES
        assert list(frame["found"]) == GENES
        for row, _ in enumerate(GENES):
            want = expected(matrix, cluster, row, log1p=log1p)
            got = {name: frame[name].iloc[row] for name in FIGURES}
            assert got == pytest.approx(want, rel=1e-6, abs=1e-9), (cluster, GENES[row])


# --------------------------------------------------------------------------- every input


def dense(tmp_path):
    return make_adata()


def csr(tmp_path):
    return make_adata(sp.csr_matrix(X))


def csc(tmp_path):
    return make_adata(sp.csc_matrix(X))


def csr_array(tmp_path):
    return make_adata(sp.csr_array(X))


def _backed(tmp_path, matrix):
    path = tmp_path / "data.h5ad"
    make_adata(matrix).write_h5ad(path)
    return ad.read_h5ad(path, backed="r")


def backed_csr(tmp_path):
    adata = _backed(tmp_path, sp.csr_matrix(X))
    assert adata.isbacked and not sp.issparse(adata.X)  # read chunk by chunk
    return adata


def backed_csc(tmp_path):
    return _backed(tmp_path, sp.csc_matrix(X))


def backed_dense(tmp_path):
    adata = _backed(tmp_path, X.copy())
    assert isinstance(adata.X, h5py.Dataset)
    return adata


def dask_dense(tmp_path):
    da = pytest.importorskip("dask.array")
    return make_adata(da.from_array(X, chunks=(5, 4)))  # blocks across clusters and genes


def dask_lazy_csr(tmp_path):
    pytest.importorskip("dask.array")
    from anndata.experimental import read_elem_lazy

    path = tmp_path / "data.h5ad"
    make_adata(sp.csr_matrix(X)).write_h5ad(path)
    file = h5py.File(path, "r")
    lazy = read_elem_lazy(file["X"], chunks=(4, 6))
    assert sp.issparse(lazy.blocks[0, 0].compute())
    return make_adata(lazy)


def dask_lazy_csc(tmp_path):
    pytest.importorskip("dask.array")
    from anndata.experimental import read_elem_lazy

    path = tmp_path / "data.h5ad"
    make_adata(sp.csc_matrix(X)).write_h5ad(path)
    lazy = read_elem_lazy(h5py.File(path, "r")["X"], chunks=(13, 4))
    assert lazy.blocks[0, 0].compute().format == "csc"
    return make_adata(lazy)


INPUTS = [
    dense,
    csr,
    csc,
    csr_array,
    backed_csr,
    backed_csc,
    backed_dense,
    dask_dense,
    dask_lazy_csr,
    dask_lazy_csc,
]


@pytest.mark.parametrize("chunk_size", [None, 5])
@pytest.mark.parametrize("make", INPUTS, ids=lambda f: f.__name__)
def test_every_figure_of_every_gene_on_every_input(make, chunk_size, tmp_path):
    adata = make(tmp_path)
    evidence = ExpressionEvidence.from_adata(adata, groupby="cluster", chunk_size=chunk_size)
    check_every_figure(evidence, X, log1p=True)


def test_figures_written_out_by_hand():
    frame = ExpressionEvidence.from_adata(make_adata(), groupby="cluster").lookup(
        "A", ["CD3E", "MS4A1", "CD8A"]
    )
    cd3e, ms4a1, cd8a = (frame.iloc[i] for i in range(3))
    # CD3E in A: 2, 1, 3, 0; in B and C: one 0.5 among eight cells.
    assert (cd3e["mean"], cd3e["fraction"]) == (1.5, 0.75)
    assert (cd3e["rest_mean"], cd3e["rest_fraction"]) == (0.0625, 0.125)
    assert cd3e["log2fc"] == pytest.approx(np.log2(np.expm1(1.5) / np.expm1(0.0625)))
    assert cd3e["status"] == EXPRESSED
    # MS4A1: measured, no cell of A has it: the negative evidence, with figures 0.
    assert ms4a1["status"] == NOT_EXPRESSED
    assert (ms4a1["mean"], ms4a1["fraction"]) == (0.0, 0.0)
    assert (ms4a1["rest_mean"], ms4a1["rest_fraction"]) == (1.0, 0.5)
    # CD8A: one cell of four.
    assert (cd8a["mean"], cd8a["fraction"], cd8a["rest_mean"]) == (0.125, 0.25, 0.0)
    assert cd8a["status"] == EXPRESSED


def test_a_layer_of_counts_gives_a_plain_ratio():
    adata = make_adata()
    counts = X * 2  # whole numbers
    adata.layers["counts"] = sp.csr_matrix(counts)
    adata.uns["log1p"] = {"base": None}  # about X, not about the layer
    evidence = ExpressionEvidence.from_adata(adata, groupby="cluster", layer="counts")
    check_every_figure(evidence, counts, log1p=False)
    cd3e = evidence.lookup("A", ["CD3E"]).iloc[0]
    assert cd3e["log2fc"] == pytest.approx(np.log2(3.0 / 0.125))


@pytest.mark.parametrize("base", [None, 2.0])
def test_the_fold_change_is_rank_genes_groups_own(base):
    adata = ranked_adata()[:12].copy()  # Scanpy's rest would count the cell with no cluster
    adata.uns["log1p"] = {"base": base}
    sc.tl.rank_genes_groups(adata, "cluster", method="t-test")
    evidence = DataHandle.from_markers(adata, key="rank_genes_groups").evidence()
    assert evidence.log1p_base == base
    for cluster in ("A", "B", "C"):
        scanpy = sc.get.rank_genes_groups_df(adata, cluster).set_index("names")
        ours = evidence.lookup(cluster, GENES).set_index("gene")["log2fc"]
        assert ours.to_numpy() == pytest.approx(
            scanpy["logfoldchanges"][GENES].to_numpy(), rel=1e-5, abs=1e-5
        )


def test_integer_values_count_as_logged_only_when_uns_says_so():
    plain = ExpressionEvidence.from_adata(make_adata(X * 2), groupby="cluster")
    assert plain.log1p is False
    adata = make_adata(X * 2)
    adata.uns["log1p"] = {"base": None}
    assert ExpressionEvidence.from_adata(adata, groupby="cluster").log1p is True


def test_raw_with_gene_symbols():
    var = pd.DataFrame({"symbol": GENES}, index=IDS)
    full = ad.AnnData(X=sp.csr_matrix(X), obs=make_adata().obs, var=var)
    full.raw = full
    adata = full[:, :4].copy()
    adata.X = adata.X * 10  # X is no longer what raw holds
    evidence = ExpressionEvidence.from_adata(
        adata, groupby="cluster", use_raw=True, gene_symbols="symbol"
    )
    assert list(evidence.genes) == GENES  # raw.var's genes, by symbol
    check_every_figure(evidence, X, log1p=True)
    by_id = evidence.lookup("A", ["ENSG00"]).iloc[0]  # an ID is found too
    assert by_id["found"] == "CD3E" and by_id["mean"] == 1.5


def test_a_missing_symbol_shows_the_id():
    adata = make_adata()
    adata.var["symbol"] = [*GENES[:5], np.nan]
    evidence = ExpressionEvidence.from_adata(adata, groupby="cluster", gene_symbols="symbol")
    assert list(evidence.genes) == GENES  # var_names stand in for the missing one


def test_explicit_zeros_are_not_counted_as_expressing():
    matrix = sp.csr_matrix(X)
    matrix.data[matrix.indices == 0] = 0.0  # CD3E stored, but zero
    assert matrix.nnz == np.count_nonzero(X)
    evidence = ExpressionEvidence.from_adata(make_adata(matrix), groupby="cluster")
    cd3e = evidence.lookup("A", ["CD3E"]).iloc[0]
    assert (cd3e["fraction"], cd3e["rest_fraction"], cd3e["status"]) == (0.0, 0.0, NOT_EXPRESSED)


# --------------------------------------------------------------------------- look-ups


@pytest.fixture
def evidence() -> ExpressionEvidence:
    return ExpressionEvidence.from_adata(make_adata(), groupby="cluster")


def test_genes_are_matched_ignoring_case_asked_once_in_order(evidence):
    frame = evidence.lookup("A", ["lyz", "cd3e", "LYZ", "lyz"])
    assert list(frame["gene"]) == ["lyz", "cd3e", "LYZ"]
    assert list(frame["found"]) == ["LYZ", "CD3E", "LYZ"]
    assert frame["mean"].iloc[1] == 1.5


def test_an_unknown_gene_is_not_measured_with_close_names_from_the_data():
    names = ["CD3D", "CD3E", "CD3G", "HLA-DRA", "MS4A1", "LYZ"]
    adata = make_adata()
    adata.var_names = names
    evidence = ExpressionEvidence.from_adata(adata, groupby="cluster")
    frame = evidence.lookup("A", ["CD3", "HLA.DRA", "MS4A2", "NOTAGENE"]).set_index("gene")
    assert set(frame["status"]) == {NOT_MEASURED}
    assert (frame["found"] == "").all()
    assert frame[["mean", "fraction", "log2fc", "marker_rank"]].isna().all().all()
    assert frame.loc["CD3", "suggestions"] == "CD3D, CD3E, CD3G"
    assert frame.loc["HLA.DRA", "suggestions"] == "HLA-DRA"  # as R writes it
    assert frame.loc["MS4A2", "suggestions"].split(", ")[0] == "MS4A1"
    assert frame.loc["NOTAGENE", "suggestions"] == ""


def test_a_gene_no_cell_expresses_is_not_expressed_with_no_fold_change(evidence):
    nkg7 = evidence.lookup("A", ["NKG7"]).iloc[0]
    assert nkg7["status"] == NOT_EXPRESSED
    assert (nkg7["mean"], nkg7["rest_mean"], nkg7["log2fc"]) == (0.0, 0.0, 0.0)


def test_similar_clusters_by_correlation_of_mean_profiles(evidence):
    labels = np.array([label or "" for label in LABELS])
    names = ["C", "A", "B"]
    means = np.array([X[labels == c].astype(float).mean(axis=0) for c in names])
    correlation = np.corrcoef(means)  # six genes: all of them are the most variable
    for k, cluster in enumerate(names):
        others = sorted((j for j in range(3) if j != k), key=lambda j: -correlation[k, j])
        assert evidence.similar(cluster, n=2) == [names[j] for j in others]
        assert evidence.similar(cluster) == evidence.similar(cluster, n=2)  # only 2 others
        assert cluster not in evidence.similar(cluster)
        assert evidence.similar(cluster, n=1) == [names[others[0]]]
        assert evidence.correlation(cluster, names[others[0]]) == pytest.approx(
            correlation[k, others[0]]
        )
    again = ExpressionEvidence.from_adata(make_adata(sp.csc_matrix(X)), groupby="cluster")
    assert [again.similar(c) for c in names] == [evidence.similar(c) for c in names]


def test_the_similar_clusters_figures_sit_beside_the_clusters(evidence):
    frame = evidence.lookup("A", GENES)
    assert frame.attrs["similar"] == evidence.similar("A")
    for i, other in enumerate(evidence.similar("A"), start=1):
        assert (frame[f"similar_{i}"] == other).all()
        for row, _ in enumerate(GENES):
            want = expected(X, other, row, log1p=True)
            assert frame[f"mean_similar_{i}"].iloc[row] == pytest.approx(want["mean"])
            assert frame[f"fraction_similar_{i}"].iloc[row] == pytest.approx(want["fraction"])


def test_an_unknown_cluster_names_the_clusters(evidence):
    with pytest.raises(EvidenceError, match=r"'Z'.*\['C', 'A', 'B'\]") as raised:
        evidence.lookup("Z", ["CD3E"])
    assert isinstance(raised.value, KeyError) and isinstance(raised.value, CassiaError)
    with pytest.raises(EvidenceError):
        evidence.similar("D")  # a category with no cells is no cluster


def test_missing_column_layer_or_raw_say_what_there_is():
    adata = make_adata()
    with pytest.raises(EvidenceError, match="cluster"):
        ExpressionEvidence.from_adata(adata, groupby="leiden")
    with pytest.raises(EvidenceError, match="layer"):
        ExpressionEvidence.from_adata(adata, groupby="cluster", layer="counts")
    with pytest.raises(EvidenceError, match="raw"):
        ExpressionEvidence.from_adata(adata, groupby="cluster", use_raw=True)
    with pytest.raises(EvidenceError, match="symbol"):
        ExpressionEvidence.from_adata(adata, groupby="cluster", gene_symbols="symbol")


def test_describe_shows_every_gene_the_similar_clusters_and_the_suggestions(evidence):
    text = evidence.describe("A", ["cd3e", "MS4A1", "NKG7", "CD8", "NOTAGENE"])
    for gene in ("cd3e (CD3E)", "MS4A1", "NKG7", "CD8", "NOTAGENE"):
        assert gene in text
    for other in evidence.similar("A"):
        assert f'"{other}"' in text
    assert "CD8A" in text  # the suggestion for CD8
    lines = text.splitlines()
    ms4a1 = next(line for line in lines if line.startswith("MS4A1"))
    assert NOT_EXPRESSED in ms4a1 and "0.0" in ms4a1
    cd3e = next(line for line in lines if line.startswith("cd3e"))
    assert "75.0" in cd3e and "1.500" in cd3e  # pct and mean, rounded
    assert "not measured" in next(line for line in lines if line.startswith("NOTAGENE"))


def test_marker_rank_from_rank_genes_groups():
    adata = ranked_adata()
    sc.tl.rank_genes_groups(adata, "cluster", method="t-test", key_added="markers")
    handle = DataHandle.from_markers(adata, key="markers")
    assert handle.marker_key == "markers"
    frame = handle.evidence().lookup("A", GENES)
    names = list(adata.uns["markers"]["names"]["A"])
    assert list(frame["marker_rank"]) == [names.index(g) + 1 for g in GENES]
    unranked = ExpressionEvidence.from_adata(adata, groupby="cluster")  # no marker_key
    assert unranked.lookup("A", GENES)["marker_rank"].isna().all()


def test_marker_rank_of_a_few_genes_ranked():
    adata = ranked_adata()
    sc.tl.rank_genes_groups(adata, "cluster", method="t-test", n_genes=2)
    evidence = DataHandle.from_markers(adata, key="rank_genes_groups").evidence()
    names = list(adata.uns["rank_genes_groups"]["names"]["A"])
    ranks = evidence.lookup("A", GENES).set_index("gene")["marker_rank"]
    assert [ranks[g] for g in names] == [1, 2]
    assert ranks.drop(names).isna().all()


# --------------------------------------------------------------------------- the handle


def test_the_handle_computes_its_evidence_once_for_eight_threads(monkeypatch):
    adata = make_adata()
    handle = DataHandle(adata=adata, groupby="cluster")
    passes = []
    compute = ExpressionEvidence.from_adata

    def counted(*args, **kwargs):
        passes.append(threading.get_ident())
        time.sleep(0.2)  # the other threads arrive meanwhile
        return compute(*args, **kwargs)

    monkeypatch.setattr(ExpressionEvidence, "from_adata", counted)
    start = threading.Barrier(8)
    got = []

    def worker():
        start.wait()
        got.append(handle.evidence())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(passes) == 1
    assert len(got) == 8 and all(e is got[0] for e in got)
    assert handle.evidence() is got[0] and len(passes) == 1
    check_every_figure(got[0], X, log1p=True)


def test_the_handle_reads_the_data_as_rank_genes_groups_did():
    adata = ranked_adata()
    adata.layers["counts"] = X * 2
    sc.tl.rank_genes_groups(adata, "cluster", method="t-test", layer="counts", key_added="c")
    handle = DataHandle.from_markers(adata, key="c")
    assert handle.layer == "counts"
    check_every_figure(handle.evidence(), X * 2, log1p=False)


def test_the_evidence_is_an_evidence(evidence):
    table = MarkerTableEvidence(pd.DataFrame({"cluster": ["A"], "gene": ["CD3E"]}))
    assert isinstance(evidence, Evidence) and isinstance(table, Evidence)


# --------------------------------------------------------------------------- marker tables


@pytest.fixture
def table() -> MarkerTableEvidence:
    seurat = pd.DataFrame(
        {
            "cluster": ["B", "B", "B", "T", "T"],
            "gene": ["CD3E", "MS4A1", "CD79A", "IL7R", "CD3E"],
            "avg_log2FC": [0.3, 4.0, 3.5, 2.5, 3.0],
            "p_val_adj": [0.04, 1e-30, 1e-20, 1e-10, 1e-12],
            "pct.1": [0.2, 0.9, 0.8, 0.7, 0.95],
            "pct.2": [0.3, 0.1, 0.05, 0.2, 0.25],
        }
    )
    return MarkerTableEvidence(cassia_sc.read_markers(seurat))


def test_a_marker_table_answers_from_the_clusters_own_rows(table):
    # CD3E is B's first row; T's is its second. CASSIA 1.4.0 showed B's for T.
    cd3e = table.lookup("T", ["CD3E"]).iloc[0]
    assert cd3e["status"] == AMONG_MARKERS
    assert (cd3e["rank"], cd3e["log2fc"], cd3e["pval_adj"]) == (2, 3.0, 1e-12)
    assert (cd3e["pct_in"], cd3e["pct_out"]) == (0.95, 0.25)
    assert cd3e["marker_of"] == "B"
    b = table.lookup("B", ["CD3E"]).iloc[0]
    assert (b["rank"], b["log2fc"]) == (1, 0.3)


def test_a_gene_of_another_cluster_is_not_among_this_clusters_markers(table):
    frame = table.lookup("T", ["MS4A1", "ms4a1", "NOTAGENE", "il7r"])
    assert list(frame["status"]) == [NOT_AMONG_MARKERS, NOT_AMONG_MARKERS, NOT_AMONG_MARKERS,
                                     AMONG_MARKERS]  # fmt: skip
    assert list(frame["found"]) == ["MS4A1", "MS4A1", "", "IL7R"]
    assert list(frame["marker_of"]) == ["B", "B", "", ""]
    assert frame[["rank", "log2fc", "pval_adj"]].iloc[:3].isna().all().all()
    assert frame["rank"].iloc[3] == 1


def test_a_marker_table_describes_and_names_its_clusters(table):
    text = table.describe("T", ["CD3E", "MS4A1", "NOTAGENE"])
    assert all(gene in text for gene in ("CD3E", "MS4A1", "NOTAGENE"))
    cd3e = next(line for line in text.splitlines() if line.startswith("CD3E"))
    assert "3.00" in cd3e and "95.0" in cd3e and "1e-12" in cd3e
    with pytest.raises(EvidenceError, match=r"\['B', 'T'\]"):
        table.lookup("NK", ["CD3E"])


def test_a_two_column_table_has_ranks_only():
    evidence = MarkerTableEvidence(
        cassia_sc.read_markers(
            pd.DataFrame({"cluster": ["B", "T"], "genes": ["MS4A1, CD79A", "CD3E"]})
        )
    )
    frame = evidence.lookup("B", ["CD79A", "CD3E"])
    assert list(frame.columns) == ["gene", "found", "status", "rank", "marker_of"]
    assert frame["rank"].iloc[0] == 2 and frame["marker_of"].iloc[1] == "T"
    assert "CD79A" in evidence.describe("B", ["CD79A"])


# --------------------------------------------------------------------------- real data


def test_pbmc68k_reduced_raw_smoke():
    adata = sc.datasets.pbmc68k_reduced()
    sc.tl.rank_genes_groups(adata, "louvain", method="t-test")
    handle = DataHandle.from_markers(adata, key="rank_genes_groups")
    assert handle.use_raw
    frame = handle.evidence().lookup("0", ["CD3E", "MS4A1", "NOTAGENE"]).set_index("gene")
    assert list(frame["status"]) == [EXPRESSED, EXPRESSED, NOT_MEASURED]
    raw = adata.raw.to_adata()
    inside = (adata.obs["louvain"] == "0").to_numpy()
    cd3e = raw[:, "CD3E"].X.toarray().ravel()
    assert frame.loc["CD3E", "mean"] == pytest.approx(cd3e[inside].mean())
    assert frame.loc["CD3E", "fraction"] == pytest.approx(np.mean(cd3e[inside] != 0))
    assert frame.loc["CD3E", "rest_mean"] == pytest.approx(cd3e[~inside].mean())
    names = list(adata.uns["rank_genes_groups"]["names"]["0"])
    assert frame.loc["CD3E", "marker_rank"] == names.index("CD3E") + 1
    logfc = sc.get.rank_genes_groups_df(adata, "0").set_index("names")["logfoldchanges"]
    assert frame.loc["CD3E", "log2fc"] == pytest.approx(logfc["CD3E"], rel=1e-4)
    assert frame.loc["NOTAGENE", "suggestions"] == ""
    text = handle.evidence().describe("0", ["CD3E", "MS4A1", "NOTAGENE"])
    assert "CD3E" in text and "NOTAGENE" in text
