"""Example marker sets shipped with the package: CASSIA's own, and sets from ``pbmc68k_reduced``.

CASSIA's three example sets keep CASSIA's names (``"processed"``, ``"unprocessed"``,
``"subcluster_results"``), so CASSIA's tutorials run unchanged; they are copies of the files of
CASSIA 1.4.0 (MIT licence). Our own sets, from Scanpy's ``pbmc68k_reduced``, are rebuilt by
:func:`build_example_markers`. The provenance of every file is in ``cassia_sc/data/README.md``.

The bundled ``.h5ad`` example (``cassia-sc annotate pbmc68k_reduced``) is the same data with
the tutorial's ranking; it is built once, by :func:`pbmc68k_example_path`, into the cache
folder, rather than shipped.
"""

from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path

import h5py
import pandas as pd
from anndata import AnnData, read_h5ad

from ._io import remove_stale_temporaries, temporary_beside
from ._keys import Key
from .cache import CACHE_DIR_ENV, default_cache_dir
from .errors import MarkerError, NotWritable
from .markers import top_markers

logger = logging.getLogger("cassia_sc")

#: Version of the recipe of the example file; a file of another version is rebuilt.
EXAMPLE_RECIPE = 1
#: The example file, in its folder under the cache folder.
_EXAMPLE_FOLDER = "examples"
_EXAMPLE_NAME = "pbmc68k_reduced.h5ad"

#: CASSIA's example sets, by the name CASSIA's ``loadmarker`` gives them.
CASSIA_FILES = {
    "processed": "cassia_processed.csv",
    "unprocessed": "cassia_unprocessed.csv.gz",
    "subcluster_results": "cassia_subcluster_results.csv",
}

EXAMPLE_FILES = {
    "pbmc68k_processed": "pbmc68k_louvain_processed.csv",
    "pbmc68k_unprocessed": "pbmc68k_louvain_unprocessed.csv",
    "truth": "pbmc68k_louvain_truth.csv",
}

#: The marker sets of :func:`loadmarker`, CASSIA's first; ``"truth"`` is not one.
_MARKER_SETS = [*CASSIA_FILES, "pbmc68k_processed", "pbmc68k_unprocessed"]

# Seurat FindAllMarkers' defaults before Seurat 5 (logfc.threshold, min.pct).
_SEURAT_MIN_ABS_LOG2FC = 0.25
_SEURAT_MIN_PCT = 0.1
_SIMPLIFIED_N_GENES = 50


def loadmarker(marker_type: str = "processed") -> pd.DataFrame:
    """Load a bundled example marker set, by the names CASSIA's ``loadmarker`` uses.

    CASSIA's three sets come from CASSIA 1.4.0 and are read as CASSIA reads them
    (:func:`pandas.read_csv`, row-name columns dropped); cluster names are strings in
    every set.

    Parameters
    ----------
    marker_type
        One of :func:`list_available_markers`:

        ``"processed"`` (CASSIA's default)
            CASSIA's simplified example: 6 clusters of human large intestine, named by
            their cell type (``Broad.cell.type``, e.g. ``"plasma cell"``), with their top
            50 markers comma-separated (``Top.Markers``).
        ``"unprocessed"``
            The Seurat ``FindAllMarkers`` table of the same 6 clusters (``p_val``,
            ``avg_log2FC``, ``pct.1``, ``pct.2``, ``p_val_adj``, ``cluster``, ``gene``),
            31,313 rows, one per cluster and gene.
        ``"subcluster_results"``
            CASSIA's subclustering example: ``FindAllMarkers`` of 6 subclusters of one
            population (CD8 T cells in CASSIA's tutorial), same columns, 2,023 rows. The
            subclusters are named ``"0"`` to ``"5"``: strings here, where CASSIA's own
            reader gives integers.
        ``"pbmc68k_processed"``
            11 Louvain clusters of 700 blood cells of :func:`scanpy.datasets.pbmc68k_reduced`
            in the simplified format (``cluster``, ``markers``: the top 50 genes,
            comma-separated), from a Wilcoxon test of each cluster against the rest.
        ``"pbmc68k_unprocessed"``
            The same test in the ``FindAllMarkers`` format, one row per cluster and gene.

    Returns
    -------
    pandas.DataFrame
        The markers, with cluster names as strings.

    Raises
    ------
    MarkerError
        For an unknown ``marker_type``; the message lists the known ones.

    Examples
    --------
    >>> import cassia_sc
    >>> processed = cassia_sc.loadmarker()
    >>> processed.shape, processed.columns.tolist()
    ((6, 2), ['Broad.cell.type', 'Top.Markers'])
    >>> processed["Broad.cell.type"][1]
    'plasma cell'
    >>> cassia_sc.loadmarker("unprocessed").shape
    (31313, 7)
    >>> cassia_sc.loadmarker("subcluster_results")["cluster"].unique().tolist()
    ['0', '1', '2', '3', '4', '5']
    >>> cassia_sc.loadmarker("pbmc68k_processed").shape
    (11, 2)
    >>> cassia_sc.loadmarker("pbmc68k_unprocessed").columns.tolist()
    ['p_val', 'avg_log2FC', 'pct.1', 'pct.2', 'p_val_adj', 'cluster', 'gene']
    """
    if marker_type not in _MARKER_SETS:
        raise MarkerError(
            f"Unknown marker_type {marker_type!r}; choose one of {list_available_markers()}."
        )
    if marker_type in CASSIA_FILES:
        return _read_packaged(CASSIA_FILES[marker_type])
    return _read_packaged(EXAMPLE_FILES[marker_type])


def list_available_markers() -> list[str]:
    """Return the names of the example marker sets :func:`loadmarker` accepts.

    Returns
    -------
    list[str]
        CASSIA's three sets, then the two from ``pbmc68k_reduced``.

    Examples
    --------
    >>> import cassia_sc
    >>> cassia_sc.datasets.list_available_markers()
    ['processed', 'unprocessed', 'subcluster_results', 'pbmc68k_processed', 'pbmc68k_unprocessed']
    """
    return list(_MARKER_SETS)


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
    """Read a bundled CSV (gzip-compressed when its name ends in .gz) as CASSIA does."""
    compression = "gzip" if name.endswith(".gz") else None
    with resources.files("cassia_sc.data").joinpath(name).open("rb") as handle:
        frame = pd.read_csv(handle, dtype={"cluster": str}, compression=compression)
    # CASSIA's files keep R's row names in a column without a header: not data.
    return frame.drop(columns=[c for c in frame.columns if c.startswith("Unnamed:")])


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


def pbmc68k_example_path(*, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the bundled example file, building it on first use: the tutorial's data set.

    Scanpy's ``pbmc68k_reduced`` (700 blood cells, 11 Louvain clusters in
    ``obs["louvain"]``) with the marker ranking the tutorials compute,
    ``sc.tl.rank_genes_groups(adata, "louvain", method="wilcoxon", pts=True)``, in
    ``uns["rank_genes_groups"]``: it replaces the ranking Scanpy ships, which is by
    ``bulk_labels`` with logistic regression and has no fold changes. The file is written
    once (a few seconds) and reused; a file of an older recipe, or one that cannot be read,
    is built again. Read it, never edit it: copy it, or use :func:`pbmc68k_example`.

    Parameters
    ----------
    cache_dir
        The cache folder; by default :func:`cassia_sc.cache.default_cache_dir`
        (``$CASSIA_SC_CACHE_DIR`` when set). The file is ``examples/pbmc68k_reduced.h5ad``
        in it.

    Returns
    -------
    pathlib.Path
        The ``.h5ad`` file, complete: it is written beside under a temporary name and
        renamed, so two processes building it at once each leave a whole file.

    Raises
    ------
    NotWritable
        When the file has to be built and the cache folder cannot be written.

    Examples
    --------
    >>> from cassia_sc.datasets import pbmc68k_example_path
    >>> pbmc68k_example_path()  # doctest: +SKIP
    PosixPath('/home/me/.cache/cassia_sc/examples/pbmc68k_reduced.h5ad')
    """
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = folder / _EXAMPLE_FOLDER / _EXAMPLE_NAME
    if _recipe_of(path) == EXAMPLE_RECIPE:
        return path
    adata = _build_example()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        handle, temporary = temporary_beside(path)
    except OSError as err:
        raise NotWritable(
            f"Cannot write the example data in {str(path.parent)!r} "
            f"({err.strerror or type(err).__name__}): set {CACHE_DIR_ENV} to a folder "
            "you can write."
        ) from None
    os.close(handle)
    try:
        adata.write_h5ad(temporary)
        try:
            os.replace(temporary, path)
        except PermissionError:
            # Windows cannot replace a file another process has open: that process built it.
            if _recipe_of(path) != EXAMPLE_RECIPE:
                raise
    finally:
        temporary.unlink(missing_ok=True)
    logger.info("Built the example data once, in %s.", path)
    return path


def pbmc68k_example(*, cache_dir: str | os.PathLike | None = None) -> AnnData:
    """Return the bundled example in memory: ``pbmc68k_reduced`` ranked as in the tutorial.

    Parameters
    ----------
    cache_dir
        As in :func:`pbmc68k_example_path`.

    Returns
    -------
    anndata.AnnData
        A copy read from :func:`pbmc68k_example_path`'s file (edits stay in memory), with
        ``uns["rank_genes_groups"]`` by ``"louvain"`` (Wilcoxon, with ``pts``).

    Examples
    --------
    >>> from cassia_sc.datasets import pbmc68k_example
    >>> adata = pbmc68k_example()  # doctest: +SKIP
    >>> adata.uns["rank_genes_groups"]["params"]["groupby"]  # doctest: +SKIP
    'louvain'
    """
    return read_h5ad(pbmc68k_example_path(cache_dir=cache_dir))


def _build_example() -> AnnData:
    """Compute the example in memory by the recipe of :data:`EXAMPLE_RECIPE`."""
    import scanpy as sc  # only to build the example once: not needed to read it

    adata = sc.datasets.pbmc68k_reduced()
    sc.tl.rank_genes_groups(
        adata, "louvain", method="wilcoxon", pts=True, key_added=Key.uns.markers
    )
    adata.uns[Key.uns.example] = {
        "recipe": EXAMPLE_RECIPE,
        "source": "scanpy.datasets.pbmc68k_reduced()",
        "ranking": "sc.tl.rank_genes_groups(adata, 'louvain', method='wilcoxon', pts=True)",
    }
    return adata


def _recipe_of(path: Path) -> int | None:
    """Read the recipe version stored in an example file; None when missing or unreadable."""
    try:
        with h5py.File(path, "r") as file:
            return int(file[f"uns/{Key.uns.example}/recipe"][()])
    except (OSError, KeyError, TypeError, ValueError):  # missing, torn, or not ours
        return None


if __name__ == "__main__":  # python -m cassia_sc.datasets: rewrite the bundled files
    target = resources.files("cassia_sc.data")
    for kind, table in build_example_markers().items():
        table.to_csv(str(target.joinpath(EXAMPLE_FILES[kind])), index=False)
