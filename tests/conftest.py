from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # plots render to files, never to a screen

import anndata as ad
import pytest
import scanpy as sc

DATA = Path(__file__).parent / "data"
MARKER100 = DATA / "marker100.csv"


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path_factory, monkeypatch):
    """No test reads a real key or writes to the user's cache folder."""
    monkeypatch.setenv("CASSIA_SC_CACHE_DIR", str(tmp_path_factory.mktemp("default-cache")))
    for variable in ("OPENROUTER_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "CASSIA_API_KEY"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture(scope="session")
def _pbmc_wilcoxon_once() -> ad.AnnData:
    adata = sc.datasets.pbmc68k_reduced()
    sc.tl.rank_genes_groups(adata, "louvain", method="wilcoxon", pts=True, key_added="wilcoxon")
    return adata


@pytest.fixture
def pbmc() -> ad.AnnData:
    """pbmc68k_reduced as shipped: bulk_labels, a stored logreg rank_genes_groups, X_umap."""
    return sc.datasets.pbmc68k_reduced()


@pytest.fixture
def pbmc_wilcoxon(_pbmc_wilcoxon_once: ad.AnnData) -> ad.AnnData:
    """pbmc68k_reduced with a Wilcoxon result on louvain, with pts, in uns['wilcoxon']."""
    return _pbmc_wilcoxon_once.copy()
