"""Marker ingestion and selection on real inputs: pbmc68k_reduced, Seurat tables, marker100.csv."""

from __future__ import annotations

import logging
import math
import pickle

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from conftest import MARKER100

import cassia_sc
from cassia_sc import MarkerError, read_markers, top_markers
from cassia_sc.datasets import build_example_markers, example_truth

B_CELL_BY_LOG2FC = ["MS4A1", "FCRLA", "BLK", "CD79A", "BANK1", "AC079767.4"]


# --------------------------------------------------------------------------- AnnData


def test_logreg_result_falls_back_to_its_own_order_with_a_warning(pbmc, caplog):
    caplog.set_level(logging.WARNING, logger="cassia_sc")
    markers = top_markers(pbmc, n_genes=3)

    assert list(markers) == list(pbmc.obs["bulk_labels"].cat.categories)
    # The stored logreg result lists RGS19, HIST1H4C, IL32 first for the Treg group.
    assert markers["CD4+/CD25 T Reg"] == ["RGS19", "HIST1H4C", "IL32"]
    assert "log2fc" in caplog.text and "source's own order" in caplog.text
    # "Score" ranks by logreg's scores, which is the same order, and needs no fallback.
    caplog.clear()
    assert top_markers(pbmc, n_genes=3, ranking_method="Score") == markers
    assert caplog.text == ""


def test_wilcoxon_with_pts_filters_then_ranks_by_log2fc(pbmc_wilcoxon):
    markers = top_markers(pbmc_wilcoxon, key="wilcoxon", n_genes=6)

    assert list(markers) == [str(i) for i in range(11)]
    # Worked out from rank_genes_groups_df(group="4"): every gene passes the filters, sorted
    # by log2 fold change (MS4A1 7.79, FCRLA 6.90, BLK 6.88, CD79A 6.63, BANK1 6.21, ...).
    assert markers["4"] == B_CELL_BY_LOG2FC
    assert all(len(genes) == 6 for genes in markers.values())


def test_pts_are_aligned_with_each_groups_ranked_names(pbmc_wilcoxon):
    table = read_markers(pbmc_wilcoxon, key="wilcoxon")
    reference = sc.get.rank_genes_groups_df(pbmc_wilcoxon, group=None, key="wilcoxon")

    assert len(table) == len(reference)
    assert table["cluster"].astype(str).tolist() == reference["group"].astype(str).tolist()
    assert table["gene"].astype(str).tolist() == reference["names"].astype(str).tolist()
    for ours, theirs in [
        ("pct_in", "pct_nz_group"),
        ("pct_out", "pct_nz_reference"),
        ("log2fc", "logfoldchanges"),
        ("pval_adj", "pvals_adj"),
        ("score", "scores"),
    ]:
        np.testing.assert_allclose(table[ours], reference[theirs].astype(float), rtol=1e-6)


def test_the_fraction_filter_uses_pts(pbmc_wilcoxon):
    # MS4A1, the top B-cell gene by fold change, seen in only 5 % of its cluster's cells:
    pbmc_wilcoxon.uns["wilcoxon"]["pts"].loc["MS4A1", "4"] = 0.05
    assert top_markers(pbmc_wilcoxon, key="wilcoxon", n_genes=5)["4"] == B_CELL_BY_LOG2FC[1:]
    del pbmc_wilcoxon.uns["wilcoxon"]["pts"]
    assert top_markers(pbmc_wilcoxon, key="wilcoxon", n_genes=5)["4"] == B_CELL_BY_LOG2FC[:5]


def test_gene_symbols_replace_ensembl_ids(pbmc_wilcoxon):
    symbols = pbmc_wilcoxon.raw.var_names.tolist()
    ids = [f"ENSG{i:011d}" for i in range(len(symbols))]
    adata = sc.AnnData(pbmc_wilcoxon.raw.X.copy(), obs=pbmc_wilcoxon.obs.copy())
    adata.var_names = ids
    adata.var["symbol"] = symbols
    adata.var.loc[ids[symbols.index("FCRLA")], "symbol"] = np.nan  # no symbol: keep the ID
    sc.tl.rank_genes_groups(adata, "louvain", method="wilcoxon", pts=True)

    markers = top_markers(adata, gene_symbols="symbol", n_genes=6)

    fcrla_id = ids[symbols.index("FCRLA")]
    assert markers["4"] == [fcrla_id if g == "FCRLA" else g for g in B_CELL_BY_LOG2FC]
    assert top_markers(adata, n_genes=1)["4"] == [ids[symbols.index("MS4A1")]]
    with pytest.raises(MarkerError, match="gene_symbols='gene_name' is not a column"):
        top_markers(adata, gene_symbols="gene_name")


def test_result_survives_h5ad_round_trip(pbmc_wilcoxon, tmp_path):
    path = tmp_path / "pbmc.h5ad"
    pbmc_wilcoxon.write_h5ad(path)
    reloaded = sc.read_h5ad(path)
    for key in ("wilcoxon", "rank_genes_groups"):
        assert top_markers(reloaded, key=key) == top_markers(pbmc_wilcoxon, key=key)


def test_missing_result_says_which_call_to_run(pbmc):
    del pbmc.uns["rank_genes_groups"]
    with pytest.raises(MarkerError, match=r"run sc\.tl\.rank_genes_groups\(adata, 'louvain'\)"):
        top_markers(pbmc, groupby="louvain")
    with pytest.raises(MarkerError, match=r"sc\.tl\.rank_genes_groups\(adata, groupby\)"):
        top_markers(pbmc)
    with pytest.raises(MarkerError, match="key_added='mine'"):
        top_markers(pbmc, key="mine")


def test_groupby_must_match_the_stored_result(pbmc):
    assert list(top_markers(pbmc, groupby="bulk_labels")) == list(
        pbmc.obs["bulk_labels"].cat.categories
    )
    with pytest.raises(MarkerError, match="computed for groupby='bulk_labels', not 'louvain'"):
        top_markers(pbmc, groupby="louvain")


def test_uns_is_never_altered(pbmc_wilcoxon, caplog):
    before = pickle.dumps(pbmc_wilcoxon.uns)
    top_markers(pbmc_wilcoxon, key="wilcoxon", ranking_method="pct_diff")
    top_markers(pbmc_wilcoxon)  # the logreg result, with its fallback
    with pytest.raises(MarkerError):
        top_markers(pbmc_wilcoxon, key="wilcoxon", groupby="bulk_labels")
    assert pickle.dumps(pbmc_wilcoxon.uns) == before


def test_table_options_are_refused_for_an_anndata_and_vice_versa(pbmc):
    with pytest.raises(MarkerError, match="pass groupby= and key="):
        top_markers(pbmc, celltype_column="cluster")
    with pytest.raises(MarkerError, match="celltype_column= and gene_column_name="):
        top_markers(cassia_sc.loadmarker("pbmc68k_unprocessed"), groupby="louvain")


# --------------------------------------------------------------------------- Seurat


def test_seurat_table_hand_checked_cluster_and_csv_path(tmp_path):
    seurat = cassia_sc.loadmarker("pbmc68k_unprocessed")
    path = tmp_path / "findallmarkers.csv"
    seurat.to_csv(path)  # with R-style row names in an unnamed first column

    from_frame = top_markers(seurat, n_genes=5)
    # Cluster 8 (plasma cells), passing genes by avg_log2FC: TNFRSF17 9.32, MZB1 8.98,
    # IGJ 8.86, IGLL5 7.13, AL928768.3 6.55.
    assert from_frame["8"] == ["TNFRSF17", "MZB1", "IGJ", "IGLL5", "AL928768.3"]
    # By pct.1 - pct.2 the fifth place goes to FKBP11 (1.0 - 0.146).
    assert top_markers(seurat, n_genes=5, ranking_method="pct_diff")["8"][4] == "FKBP11"
    assert top_markers(path, n_genes=5) == from_frame
    assert top_markers(str(path), n_genes=5) == from_frame


def test_p_value_ranking_and_ascending_override():
    seurat = cassia_sc.loadmarker("pbmc68k_unprocessed")
    cluster = seurat[seurat["cluster"] == "8"]
    passing = cluster[
        (cluster["p_val_adj"] < 0.05) & (cluster["avg_log2FC"] > 0.25) & (cluster["pct.1"] > 0.1)
    ]

    by_p = top_markers(seurat, ranking_method="p_val_adj", n_genes=10)["8"]
    assert by_p == passing.sort_values("p_val_adj", kind="stable")["gene"].head(10).tolist()
    weakest = top_markers(seurat, ascending=True, n_genes=3)["8"]
    assert weakest == passing.sort_values("avg_log2FC")["gene"].head(3).tolist()
    assert all(passing.set_index("gene").loc[weakest, "avg_log2FC"] > 0.25)


def test_seurat_v3_natural_log_fold_changes_are_converted():
    seurat = cassia_sc.loadmarker("pbmc68k_unprocessed")
    v3 = seurat.rename(columns={"avg_log2FC": "avg_logFC"})
    v3["avg_logFC"] = v3["avg_logFC"] * math.log(2)
    table = read_markers(v3)
    np.testing.assert_allclose(table["log2fc"], read_markers(seurat)["log2fc"])
    assert top_markers(v3) == top_markers(seurat)


def test_infinite_fold_changes_and_duplicated_genes():
    table = pd.DataFrame(
        {
            "cluster": ["a"] * 6 + ["b"] * 2,
            "gene": ["G1", "G2", "G3", "G2", "G4", "G5", "G1", "G2"],
            "avg_log2FC": [1.0, 2.0, np.inf, 5.0, -np.inf, np.nan, 1.0, 1.0],
            "p_val_adj": [0.01] * 8,
            "pct.1": [0.5] * 8,
            "pct.2": [0.1] * 8,
        }
    )
    markers = top_markers(table)
    # +inf ranks first; G2 counts once, at its best fold change; -inf and NaN fail the filter.
    assert markers == {"a": ["G3", "G2", "G1"], "b": ["G1", "G2"]}
    assert top_markers(table, ranking_method="p_val_adj", n_genes=2)["a"] == ["G1", "G2"]


def test_fewer_passing_genes_than_asked_gives_all_that_pass():
    table = pd.DataFrame(
        {
            "cluster": ["x"] * 4,
            "gene": ["A", "B", "C", "D"],
            "avg_log2FC": [3.0, 0.1, 2.0, 1.0],
            "p_val_adj": [0.001, 0.001, 0.2, 0.01],
            "pct.1": [0.9, 0.9, 0.9, 0.05],
            "pct.2": [0.1] * 4,
        }
    )
    # B fails log2FC, C fails the p-value, D fails the fraction in the cluster.
    assert top_markers(table, n_genes=50) == {"x": ["A"]}


def test_no_passing_gene_falls_back_to_source_order_with_a_warning(caplog):
    table = pd.DataFrame(
        {
            "cluster": ["good", "good", "weak", "weak", "weak"],
            "gene": ["A", "B", "C", "D", "E"],
            "avg_log2FC": [1.0, 2.0, 0.1, 0.2, 0.05],
            "p_val_adj": [0.01, 0.01, 0.5, 0.5, 0.5],
        }
    )
    caplog.set_level(logging.WARNING, logger="cassia_sc")
    markers = top_markers(table, n_genes=2)
    assert markers == {"good": ["B", "A"], "weak": ["C", "D"]}
    assert "['weak']" in caplog.text


def test_clusters_keep_their_input_order():
    table = pd.DataFrame(
        {
            "cluster": [2, 2, 10, 10, 1],
            "gene": ["A", "B", "C", "D", "E"],
            "avg_log2FC": [1.0, 2.0, 1.0, 3.0, 1.0],
        }
    )
    assert list(top_markers(table)) == ["2", "10", "1"]
    interleaved = table.iloc[[0, 2, 1, 3, 4]]
    assert top_markers(interleaved) == {"2": ["B", "A"], "10": ["D", "C"], "1": ["E"]}


# --------------------------------------------------------------------------- Scanpy table


def test_scanpy_rank_genes_groups_df_matches_the_anndata(pbmc_wilcoxon, tmp_path):
    frame = sc.get.rank_genes_groups_df(pbmc_wilcoxon, group=None, key="wilcoxon")
    path = tmp_path / "rank_genes_groups.csv"
    frame.to_csv(path)

    expected = top_markers(pbmc_wilcoxon, key="wilcoxon", n_genes=10)
    assert top_markers(frame, n_genes=10) == expected
    assert top_markers(path, n_genes=10) == expected
    assert top_markers(frame, n_genes=6)["4"] == B_CELL_BY_LOG2FC
    # By Scanpy's scores, the order is rank_genes_groups' own: CD79B, CD79A, MS4A1.
    assert top_markers(frame, n_genes=3, ranking_method="Score")["4"] == ["CD79B", "CD79A", "MS4A1"]


def test_scanpy_table_without_pts_is_still_read(pbmc_wilcoxon):
    frame = sc.get.rank_genes_groups_df(pbmc_wilcoxon, group=None, key="wilcoxon")
    frame = frame.drop(columns=["pct_nz_group", "pct_nz_reference"])
    table = read_markers(frame)
    assert set(table.columns) == {"cluster", "gene", "log2fc", "pval_adj", "score"}


# --------------------------------------------------------------------------- simplified


def test_marker100_with_named_columns_and_a_byte_order_mark():
    markers = top_markers(
        MARKER100, celltype_column="True Cell Type", gene_column_name="Marker List"
    )

    raw = MARKER100.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    # Every row is a cluster; repeated names (e.g. "B cell" of kidney, of mouse) are numbered.
    assert len(markers) == 100
    assert sum(len(genes) == 50 for genes in markers.values()) == 95
    assert len(markers["Neutrophil"]) == 23  # a shorter list is kept whole
    # The erythroid row lists HBM, AHSP, HBZ, ... twice: each counts once, at its first place.
    assert markers["Erythroid cell"][:12] == (
        [
            "HBB",
            "HBA1",
            "HBA2",
            "HBG2",
            "HBE1",
            "AHSP",
            "HBG1",
            "HBZ",
            "PRDX2",
            "HBM",
            "GYPA",
            "BLVRB",
        ]
    )
    assert len(markers["Erythroid cell"]) == 38
    assert markers["B cell (2)"][:3] == ["RP24-338A5.4", "Cr2", "Ms4a1"]  # the mouse row
    assert list(markers)[:3] == ["Ascending vasa recta endothelium", "B cell", "CD4 T cell"]
    # First and last genes of the B cell row, as written in the file.
    assert markers["B cell"][:4] == ["IGKC", "IGHG1", "IGLC2", "IGHG3"]
    assert markers["B cell"][-1] == "SMC1A"
    assert top_markers(
        MARKER100, celltype_column="True Cell Type", gene_column_name="Marker List", n_genes=3
    )["B cell"] == ["IGKC", "IGHG1", "IGLC2"]


def test_a_table_of_no_known_format_names_its_columns_and_the_parameters():
    # One gene per row under unknown names, and no column of comma-separated genes.
    table = pd.DataFrame(
        {
            "Cell type": ["T", "T", "B"],
            "Top gene": ["CD3D", "CD3E", "MS4A1"],
            "Tissue": ["blood, peripheral", "blood, peripheral", "lymph node"],
            "Fold change": ["2,5", "1,5", "3,0"],  # decimal commas: numbers, not genes
        }
    )
    with pytest.raises(MarkerError) as raised:
        top_markers(table)
    message = str(raised.value)
    assert "'Cell type'" in message and "'Top gene'" in message and "'Fold change'" in message
    assert "celltype_column=" in message and "gene_column_name=" in message


def benchmark_table() -> pd.DataFrame:
    """Two rows in the shape of CASSIA's benchmark tables (marker100.csv and the like)."""
    return pd.DataFrame(
        {
            "True Cell Type": ["Plasma cell", "cd8-positive, alpha-beta T cell"],
            "Marker List": ["JCHAIN, MZB1, IGKC, TNFRSF17", "CD8A,CD8B , GZMK,CCL5"],
            "Tissue": ["large intestine", "blood, peripheral"],  # a comma, but not genes
            "Species": ["Human", "Human"],
            "Dataset": ["GTEx", "TS"],
        }
    )


def test_cassias_benchmark_shape_is_read_first_column_and_gene_list(tmp_path):
    expected = {
        "Plasma cell": ["JCHAIN", "MZB1", "IGKC", "TNFRSF17"],
        "cd8-positive, alpha-beta T cell": ["CD8A", "CD8B", "GZMK", "CCL5"],
    }
    table = benchmark_table()
    assert top_markers(table) == expected
    canonical = read_markers(table)
    assert canonical.columns.tolist() == ["cluster", "gene"]  # Tissue, Species... are ignored
    assert canonical["cluster"].cat.categories.tolist() == list(expected)
    # The same from a file, whose row names R or pandas may have written first.
    table.to_csv(tmp_path / "benchmark.csv")
    assert pd.read_csv(tmp_path / "benchmark.csv").columns[0] == "Unnamed: 0"
    assert top_markers(tmp_path / "benchmark.csv") == expected
    assert top_markers(table, n_genes=2)["Plasma cell"] == ["JCHAIN", "MZB1"]


def test_a_batch_dry_run_reads_the_benchmark_shape():
    plan = cassia_sc.run_batch(
        benchmark_table(),
        tissue="large intestine",
        species="human",
        model="m",
        dry_run=True,
        progress=False,
    )
    assert [c.cluster for c in plan.clusters] == [
        "Plasma cell",
        "cd8-positive, alpha-beta T cell",
    ]
    assert plan.clusters[1].markers == ["CD8A", "CD8B", "GZMK", "CCL5"]
    assert plan.clusters[0].conversation[1].content.endswith("JCHAIN, MZB1, IGKC, TNFRSF17")


def test_marker100_needs_no_column_names():
    named = top_markers(MARKER100, celltype_column="True Cell Type", gene_column_name="Marker List")
    assert top_markers(MARKER100) == named
    # Naming only the genes takes the names from the first column, as CASSIA does.
    assert top_markers(MARKER100, gene_column_name="Marker List") == named
    assert list(named)[:2] == ["Ascending vasa recta endothelium", "B cell"]


def test_several_gene_list_columns_are_refused_naming_them():
    table = benchmark_table()
    table["Reference markers"] = ["IGHA1,IGHA2", "CD8A, GZMB"]
    with pytest.raises(MarkerError) as raised:
        top_markers(table)
    message = str(raised.value)
    assert "['Marker List', 'Reference markers']" in message
    assert "gene_column_name=" in message
    chosen = top_markers(table, gene_column_name="Reference markers")
    assert list(chosen.values()) == [["IGHA1", "IGHA2"], ["CD8A", "GZMB"]]
    # Naming the names column alone still leaves two candidates for the genes.
    with pytest.raises(MarkerError, match="could each hold"):
        top_markers(table, celltype_column="True Cell Type")


def test_simplified_two_columns_detected_with_empty_tokens_dropped(caplog):
    caplog.set_level(logging.INFO, logger="cassia_sc")
    table = pd.DataFrame(
        {"Cluster": ["T", "B"], "Genes": ["CD3D, CD3E,, None ,CD2,", "MS4A1,CD79A,MS4A1"]}
    )
    assert top_markers(table) == {"T": ["CD3D", "CD3E", "CD2"], "B": ["MS4A1", "CD79A"]}
    assert top_markers(table, n_genes=1) == {"T": ["CD3D"], "B": ["MS4A1"]}
    assert "WARNING" not in caplog.text  # the list order is the ranking; nothing to warn about


def test_bundled_processed_example_is_detected():
    processed = cassia_sc.loadmarker("pbmc68k_processed")
    markers = top_markers(processed, n_genes=50)
    assert list(markers) == [str(i) for i in range(11)]
    assert markers["8"][:5] == ["TNFRSF17", "MZB1", "IGJ", "IGLL5", "AL928768.3"]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("table", "match"),
    [
        (pd.DataFrame({"cluster": [], "gene": []}), "empty"),
        (
            pd.DataFrame({"cluster": ["a", "b"], "markers": ["X, Y", np.nan]}),
            r"Clusters \['b'\] have no marker genes",
        ),
        (
            pd.DataFrame({"cluster": ["a", "b"], "markers": ["X, Y", " , ,"]}),
            r"Clusters \['b'\] have no marker genes",
        ),
        (
            pd.DataFrame(
                {
                    "cluster": ["a", "a", "b"],
                    "gene": ["X", None, "Z"],
                    "avg_log2FC": [1.0, 2.0, 3.0],
                }
            ),
            r"1 rows of column 'gene' have no gene name \(clusters \['a'\]\)",
        ),
        (pd.DataFrame({"cluster": ["a", None], "gene": ["X", "Y"]}), "empty cluster names"),
        (
            pd.DataFrame({"cluster": ["a"], "gene": ["X"], "avg_log2FC": ["high"]}),
            "Column 'avg_log2FC' of the marker table should be numeric",
        ),
    ],
)
def test_bad_tables_raise_clear_errors(table, match):
    with pytest.raises(MarkerError, match=match):
        top_markers(table)


def test_unknown_ranking_method_and_bad_n_genes():
    seurat = cassia_sc.loadmarker("pbmc68k_unprocessed")
    with pytest.raises(
        MarkerError, match=r"Unknown ranking_method 'logfc'; choose one of \['avg_log2FC'"
    ):
        top_markers(seurat, ranking_method="logfc")
    with pytest.raises(MarkerError, match="n_genes must be a positive integer"):
        top_markers(seurat, n_genes=0)


def test_missing_path_and_missing_named_column(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Marker file not found: .*nope\.csv"):
        top_markers(tmp_path / "nope.csv")
    with pytest.raises(MarkerError, match="celltype_column='Type' is not a column"):
        top_markers(MARKER100, celltype_column="Type", gene_column_name="Marker List")


# --------------------------------------------------------------------------- example data


def test_shipped_example_files_are_what_the_recipe_gives():
    rebuilt = build_example_markers()
    pd.testing.assert_frame_equal(
        cassia_sc.loadmarker("pbmc68k_processed"), rebuilt["pbmc68k_processed"]
    )
    pd.testing.assert_frame_equal(
        cassia_sc.loadmarker("pbmc68k_unprocessed"),
        rebuilt["pbmc68k_unprocessed"],
        check_dtype=False,
        rtol=1e-5,
    )
    pd.testing.assert_frame_equal(example_truth(), rebuilt["truth"], check_dtype=False)


@pytest.mark.parametrize("ranking_method", ["avg_log2FC", "p_val_adj", "pct_diff", "Score"])
@pytest.mark.parametrize("ascending", [None, True])
def test_pruned_candidates_give_the_same_markers(pbmc_wilcoxon, pbmc, ranking_method, ascending):
    for adata, key in ((pbmc_wilcoxon, "wilcoxon"), (pbmc, "rank_genes_groups")):
        full = read_markers(adata, key=key)
        pruned = read_markers(adata, key=key, candidates_for=7)
        assert len(pruned) < len(full) or key == "rank_genes_groups"
        options = {"n_genes": 7, "ranking_method": ranking_method, "ascending": ascending}
        pd.testing.assert_frame_equal(
            cassia_sc.select_markers(pruned, **options), cassia_sc.select_markers(full, **options)
        )


def test_fractions_are_looked_up_by_gene_whatever_the_row_order(pbmc_wilcoxon):
    expected = read_markers(pbmc_wilcoxon, key="wilcoxon")
    result = pbmc_wilcoxon.uns["wilcoxon"]
    result["pts_rest"] = result["pts_rest"].iloc[::-1, ::-1]  # reversed genes and groups
    pd.testing.assert_frame_equal(read_markers(pbmc_wilcoxon, key="wilcoxon"), expected)


def test_a_categorical_cluster_column_keeps_its_level_order():
    seurat = cassia_sc.loadmarker("pbmc68k_unprocessed")
    levels = ["10", "9", "8", "7", "6", "5", "4", "3", "2", "1", "0", "unused"]
    seurat["cluster"] = pd.Categorical(seurat["cluster"], categories=levels)
    assert list(top_markers(seurat)) == levels[:-1]


# --------------------------------------------------------------------------- awkward files


def test_a_latin1_file_is_read_with_a_warning(tmp_path, caplog):
    path = tmp_path / "markers.csv"
    path.write_bytes("cluster,gene\nlymphocyte T,CD3D\ncélula B,MS4A1\n".encode("latin-1"))
    caplog.set_level(logging.WARNING, logger="cassia_sc")
    assert top_markers(path) == {"lymphocyte T": ["CD3D"], "célula B": ["MS4A1"]}
    assert f"{path} is not UTF-8; read it as Windows-1252" in caplog.text


def test_an_empty_file_names_itself(tmp_path):
    path = tmp_path / "markers.csv"
    path.write_bytes(b"")
    with pytest.raises(MarkerError, match=r"markers\.csv is empty: export the marker table"):
        top_markers(path)
    path.write_text("\n\n")
    with pytest.raises(MarkerError, match=r"markers\.csv is empty"):
        top_markers(path)


def test_a_semicolon_file_with_decimal_commas_is_read(tmp_path):
    path = tmp_path / "markers.csv"
    path.write_text(
        "cluster;gene;avg_log2FC;p_val_adj\n"
        "0;CD3D;2,5;0,001\n0;IL7R;1,5;0,01\n1;MS4A1;3,25;1e-5\n1;CD79A;0,1;0,2\n"
    )
    assert top_markers(path) == {"0": ["CD3D", "IL7R"], "1": ["MS4A1"]}


def test_clusters_named_na_none_or_nan_are_names(tmp_path):
    path = tmp_path / "markers.csv"
    path.write_text("cluster,gene,avg_log2FC\nNA,CD3D,2\nNone,MS4A1,3\nnan,LYZ,NA\nnan,CST3,1\n")
    assert top_markers(path) == {"NA": ["CD3D"], "None": ["MS4A1"], "nan": ["CST3"]}


def test_clusters_0_and_text_0_in_one_frame_are_refused():
    table = pd.DataFrame({"cluster": [0, "0", 1], "gene": ["CD3D", "MS4A1", "LYZ"]})
    with pytest.raises(MarkerError, match=r"0 \(int\) and '0' \(str\), which read the same"):
        top_markers(table)
    table["cluster"] = table["cluster"].astype(str)  # the fix the message gives
    assert top_markers(table) == {"0": ["CD3D", "MS4A1"], "1": ["LYZ"]}


def test_errors_point_at_file_lines(tmp_path):
    path = tmp_path / "markers.csv"
    path.write_text('cluster,gene,avg_log2FC\na,CD3D,1\n\nb,,2\n"",LYZ,3\nc,CST3,high\n')
    with pytest.raises(MarkerError, match=r"markers\.csv: Column 'avg_log2FC' .* at line 6;"):
        top_markers(path)
    path.write_text("cluster,gene\na,CD3D\n\nb,\n")
    with pytest.raises(MarkerError, match=r"markers\.csv: .* no marker genes, at line 4;"):
        top_markers(path)
    path.write_text("cluster,gene\na,CD3D\n\n,MS4A1\n")
    with pytest.raises(MarkerError, match=r"markers\.csv: .*empty cluster names, at line 4;"):
        top_markers(path)
    frame = pd.DataFrame({"cluster": ["a", None], "gene": ["X", "Y"]}, index=[10, 20])
    with pytest.raises(MarkerError, match=r"empty cluster names, at rows with index \[20\]"):
        top_markers(frame)


# ------------------------------------------------------------- the fast path, pinned


def reference_top_markers(
    result: dict, n_genes: int, ranking_method: str, ascending: bool | None
) -> dict[str, list[str]]:
    """top_markers of a rank_genes_groups result, one row at a time, as documented."""
    fields = {"log2fc": "logfoldchanges", "pval_adj": "pvals_adj", "score": "scores"}
    needs, default = cassia_sc.markers.RANKING_METHODS[ranking_method]
    ascending = default if ascending is None else ascending
    names = result["names"]
    chosen = {}
    for group in names.dtype.names:
        rows = []
        for i, gene in enumerate(names[group]):
            stats = {c: float(result[f][group][i]) for c, f in fields.items() if f in result}
            for column, frame in (("pct_in", "pts"), ("pct_out", "pts_rest")):
                if result.get(frame) is not None:
                    table = result[frame]
                    stats[column] = (
                        float(table.loc[gene, group]) if gene in table.index else math.nan
                    )
            passes = (
                stats.get("pval_adj", 0.0) < 0.05
                and stats.get("log2fc", 1.0) > 0.25
                and stats.get("pct_in", 1.0) > 0.1
            )
            rows.append((i, str(gene), stats, passes))
        passing = [row for row in rows if row[3]]
        if passing and all(c in passing[0][2] for c in needs):

            def key(row):
                value = row[2][needs[0]] - (row[2][needs[1]] if len(needs) == 2 else 0.0)
                value = value if ascending else -value
                return (math.inf if math.isnan(value) else value, row[0])

            passing.sort(key=key)
        ordered, genes = passing or rows, []
        for row in ordered:
            if row[1] not in genes:
                genes.append(row[1])
        chosen[group] = genes[:n_genes]
    return chosen


def random_result(seed: int, *, pts: bool, pass_rate: float) -> sc.AnnData:
    """A rank_genes_groups result with ties, NaN statistics, repeated and unknown genes.

    Group "none" has no passing gene (the fallback), group "few" only a handful.
    """
    rng = np.random.default_rng(seed)
    var_names = [f"G{i}" for i in range(120)]
    groups = ["a", "b", "c", "few", "none"]
    n_rows = 150
    # Names drawn with replacement: genes repeat inside a group; a few left var since.
    pool = np.array([*var_names, "GONE1", "GONE2"], dtype=object)
    names = [rng.choice(pool, n_rows) for _ in groups]
    scores = np.round(rng.normal(0, 3, (n_rows, len(groups))), 1).astype(np.float32)
    lfc = np.round(rng.normal(0.6, 1, scores.shape), 1).astype(np.float32)  # many ties
    pvals = np.where(rng.random(scores.shape) < pass_rate, 1e-4, 0.5)
    pvals[rng.random(scores.shape) < 0.05] = np.nan
    lfc[rng.random(scores.shape) < 0.05] = np.nan
    scores[rng.random(scores.shape) < 0.05] = np.nan
    pvals[:, groups.index("none")] = 0.9
    pvals[:, groups.index("few")] = np.where(np.arange(n_rows) % 50 == 7, 1e-4, 0.9)

    def records(values: np.ndarray) -> np.recarray:
        return np.rec.fromarrays(list(values.T), names=groups)

    adata = sc.AnnData(obs=pd.DataFrame(index=["c0"]), var=pd.DataFrame(index=var_names))
    result = {
        "params": {"groupby": "cluster", "use_raw": False},
        "names": np.rec.fromarrays(names, names=groups),
        "scores": records(scores),
        "logfoldchanges": records(lfc),
        "pvals_adj": records(pvals),
    }
    if pts:
        fractions = np.round(rng.random((len(var_names), len(groups))), 1)
        fractions[rng.random(fractions.shape) < 0.05] = np.nan
        result["pts"] = pd.DataFrame(fractions, index=var_names, columns=groups)
        result["pts_rest"] = pd.DataFrame(
            np.round(rng.random(fractions.shape), 1), index=var_names, columns=groups
        )
    adata.uns["rank_genes_groups"] = result
    return adata


@pytest.mark.parametrize("ranking_method", ["avg_log2FC", "p_val_adj", "pct_diff", "Score"])
@pytest.mark.parametrize("ascending", [None, True, False])
@pytest.mark.parametrize("pts", [True, False])
@pytest.mark.parametrize("pass_rate", [0.05, 0.95])
def test_top_markers_matches_the_row_by_row_reference(ranking_method, ascending, pts, pass_rate):
    for seed in range(3):
        adata = random_result(seed, pts=pts, pass_rate=pass_rate)
        result = adata.uns["rank_genes_groups"]
        for n_genes in (1, 3, 10, 40):
            options = {"n_genes": n_genes, "ranking_method": ranking_method, "ascending": ascending}
            expected = reference_top_markers(result, **options)
            assert top_markers(adata, **options) == expected
            assert n_genes < 10 or len(expected["few"]) < n_genes  # fewer pass than asked


@pytest.mark.parametrize("ranking_method", ["avg_log2FC", "pct_diff", "Score"])
def test_pruning_logs_what_the_whole_table_logs(ranking_method, caplog):
    adata = random_result(1, pts=False, pass_rate=0.5)
    caplog.set_level(logging.INFO, logger="cassia_sc")
    whole = cassia_sc.select_markers(read_markers(adata), n_genes=5, ranking_method=ranking_method)
    expected = [(r.levelno, r.getMessage()) for r in caplog.records]
    caplog.clear()
    fast = top_markers(adata, n_genes=5, ranking_method=ranking_method)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == expected
    assert "['none']" in caplog.text  # the cluster with no passing gene is named
    assert fast == {
        str(c): whole.loc[whole["cluster"] == c, "gene"].astype(str).tolist()
        for c in whole["cluster"].cat.categories
    }


def test_groups_short_of_candidates_are_read_again_whole():
    # Every gene passes p-value and fold change, but the best ranked ones are expressed by
    # too few cells: the candidates by rank give nothing, the whole group does.
    adata = random_result(2, pts=True, pass_rate=1.0)
    result = adata.uns["rank_genes_groups"]
    result["pvals_adj"] = np.rec.fromarrays(
        [np.full(150, 1e-4)] * 5, names=result["names"].dtype.names
    )
    lfc = np.linspace(5, 1, 150)
    result["logfoldchanges"] = np.rec.fromarrays([lfc] * 5, names=result["names"].dtype.names)
    names = [np.array([f"G{i % 120}" for i in range(150)], dtype=object)] * 5
    result["names"] = np.rec.fromarrays(names, names=result["names"].dtype.names)
    result["pts"].iloc[:100] = 0.05  # G0..G99 fail the fraction filter
    result["pts"].iloc[100:] = 0.5
    markers = top_markers(adata, n_genes=4)
    assert markers == reference_top_markers(result, 4, "avg_log2FC", None)
    assert markers["a"] == ["G100", "G101", "G102", "G103"]
