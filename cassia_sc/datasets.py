"""Example marker data shipped with the package, derived from Scanpy's ``pbmc68k_reduced``.

The files in ``cassia_sc/data/`` are rebuilt by :func:`build_example_markers`; their
provenance and the truth of each cluster are described in ``cassia_sc/data/README.md``.
"""

from __future__ import annotations

from importlib import resources
from typing import Literal

import pandas as pd

from .markers import top_markers

EXAMPLE_FILES = {
    "pbmc68k_processed": "pbmc68k_louvain_processed.csv",
    "pbmc68k_unprocessed": "pbmc68k_louvain_unprocessed.csv",
    "truth": "pbmc68k_louvain_truth.csv",
}

# Seurat FindAllMarkers' defaults before Seurat 5 (logfc.threshold, min.pct).
_SEURAT_MIN_ABS_LOG2FC = 0.25
_SEURAT_MIN_PCT = 0.1
_SIMPLIFIED_N_GENES = 50


def loadmarker(
    marker_type: Literal["pbmc68k_processed", "pbmc68k_unprocessed"] = "pbmc68k_processed",
) -> pd.DataFrame:
    """Load the bundled example markers: 11 Louvain clusters of 700 blood cells.

    The markers come from a Wilcoxon test of each Louvain cluster of
    :func:`scanpy.datasets.pbmc68k_reduced` against the rest (``pts=True``).

    Parameters
    ----------
    marker_type
        ``"pbmc68k_processed"``: the simplified format, one row per cluster (``cluster``,
        ``markers``: the top 50 genes, comma-separated). ``"pbmc68k_unprocessed"``: the Seurat
        ``FindAllMarkers`` format (``p_val``, ``avg_log2FC``, ``pct.1``, ``pct.2``,
        ``p_val_adj``, ``cluster``, ``gene``), one row per cluster and gene.

    Returns
    -------
    pandas.DataFrame
        The markers, cluster names as strings.

    Examples
    --------
    >>> import cassia_sc
    >>> cassia_sc.loadmarker("pbmc68k_processed").shape
    (11, 2)
    >>> cassia_sc.loadmarker("pbmc68k_unprocessed").columns.tolist()
    ['p_val', 'avg_log2FC', 'pct.1', 'pct.2', 'p_val_adj', 'cluster', 'gene']
    """
    if marker_type not in ("pbmc68k_processed", "pbmc68k_unprocessed"):
        raise ValueError(
            "marker_type must be 'pbmc68k_processed' or 'pbmc68k_unprocessed', "
            f"not {marker_type!r}."
        )
    return _read_packaged(EXAMPLE_FILES[marker_type])


def example_truth() -> pd.DataFrame:
    """Return the cell type of each example cluster: the majority ``bulk_labels`` of its cells.

    Returns
    -------
    pandas.DataFrame
        Columns ``cluster``, ``cell_type`` (majority label), ``fraction`` (share of the
        cluster's cells with that label) and ``n_cells``.

    Examples
    --------
    >>> from cassia_sc.datasets import example_truth
    >>> example_truth().set_index("cluster").loc["0", "cell_type"]
    'CD4+/CD25 T Reg'
    """
    return _read_packaged(EXAMPLE_FILES["truth"])


def _read_packaged(name: str) -> pd.DataFrame:
    with resources.files("cassia_sc.data").joinpath(name).open("rb") as handle:
        return pd.read_csv(handle, dtype={"cluster": str})


def build_example_markers() -> dict[str, pd.DataFrame]:
    """Recompute the bundled example tables from ``pbmc68k_reduced``.

    Used to write the files in ``cassia_sc/data/`` and, by the tests, to check that the
    shipped files are what this recipe gives.

    Returns
    -------
    dict[str, pandas.DataFrame]
        The ``"pbmc68k_processed"``, ``"pbmc68k_unprocessed"`` and ``"truth"`` tables.
    """
    import scanpy as sc  # only to rebuild the files: not needed to read them

    adata = sc.datasets.pbmc68k_reduced()
    sc.tl.rank_genes_groups(adata, "louvain", method="wilcoxon", pts=True, key_added="wilcoxon")
    frame = sc.get.rank_genes_groups_df(adata, group=None, key="wilcoxon")
    seurat = pd.DataFrame(
        {
            "p_val": frame["pvals"],
            "avg_log2FC": frame["logfoldchanges"],
            "pct.1": frame["pct_nz_group"],
            "pct.2": frame["pct_nz_reference"],
            "p_val_adj": frame["pvals_adj"],
            "cluster": frame["group"].astype(str),
            "gene": frame["names"].astype(str),
        }
    )
    kept = (seurat["avg_log2FC"].abs() >= _SEURAT_MIN_ABS_LOG2FC) & (
        seurat[["pct.1", "pct.2"]].max(axis=1) >= _SEURAT_MIN_PCT
    )
    seurat = seurat[kept].copy()
    # FindAllMarkers lists each cluster's genes by p-value, then by fold change.
    seurat["_order"] = pd.Categorical(
        seurat["cluster"], categories=adata.obs["louvain"].cat.categories
    )
    seurat["_neg_lfc"] = -seurat["avg_log2FC"]
    seurat = seurat.sort_values(["_order", "p_val", "_neg_lfc"], kind="stable")
    seurat = seurat.drop(columns=["_order", "_neg_lfc"]).reset_index(drop=True)
    seurat[["p_val", "p_val_adj"]] = seurat[["p_val", "p_val_adj"]].map(lambda v: float(f"{v:.6g}"))
    seurat[["avg_log2FC", "pct.1", "pct.2"]] = seurat[["avg_log2FC", "pct.1", "pct.2"]].round(6)

    genes = top_markers(seurat, n_genes=_SIMPLIFIED_N_GENES)
    processed = pd.DataFrame(
        {"cluster": list(genes), "markers": [", ".join(g) for g in genes.values()]}
    )

    counts = pd.crosstab(adata.obs["louvain"], adata.obs["bulk_labels"])
    truth = pd.DataFrame(
        {
            "cluster": counts.index.astype(str),
            "cell_type": counts.idxmax(axis=1).astype(str).to_numpy(),
            "fraction": (counts.max(axis=1) / counts.sum(axis=1)).round(3).to_numpy(),
            "n_cells": counts.sum(axis=1).to_numpy(),
        }
    )
    return {"pbmc68k_processed": processed, "pbmc68k_unprocessed": seurat, "truth": truth}


if __name__ == "__main__":  # python -m cassia_sc.datasets: rewrite the bundled files
    target = resources.files("cassia_sc.data")
    for kind, table in build_example_markers().items():
        table.to_csv(str(target.joinpath(EXAMPLE_FILES[kind])), index=False)
