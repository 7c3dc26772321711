"""The expression data behind the markers, within reach of every agent.

When the markers come from an AnnData, each cluster's context carries a
:class:`DataHandle`: the AnnData itself and how ``rank_genes_groups`` used it (grouping,
layer, raw), so an agent can look genes up in the data as the ranking saw them. Nothing
here reads ``X`` yet: per-cluster statistics (mean, fraction expressing, contrast with
similar clusters) are for the annotation boost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from anndata import AnnData


@dataclass(frozen=True)
class DataHandle:
    """An AnnData and how its markers were computed: where a gene's expression is.

    Attributes
    ----------
    adata
        The data, shared (never copied) by every cluster's context.
    groupby
        The ``obs`` column of the clusters.
    layer
        The layer ``rank_genes_groups`` read, or None for ``X`` (or ``raw``).
    use_raw
        Whether it read ``adata.raw``.
    gene_symbols
        The ``var`` column of gene symbols, when ``var_names`` are IDs.

    Examples
    --------
    >>> import scanpy as sc
    >>> adata = sc.datasets.pbmc68k_reduced()
    >>> sc.tl.rank_genes_groups(adata, "louvain", method="wilcoxon")
    >>> handle = DataHandle.from_markers(adata, key="rank_genes_groups")
    >>> handle.groupby, int(handle.cells_of("0").sum())
    ('louvain', 130)
    """

    adata: AnnData
    groupby: str
    layer: str | None = None
    use_raw: bool = False
    gene_symbols: str | None = None

    @classmethod
    def from_markers(
        cls,
        adata: AnnData,
        *,
        key: str,
        groupby: str | None = None,
        gene_symbols: str | None = None,
    ) -> DataHandle | None:
        """Return the handle of an AnnData whose markers are in ``uns[key]``.

        Parameters
        ----------
        adata
            The data.
        key
            Key of the ``rank_genes_groups`` result.
        groupby
            The clusters' column, when it is not the one in the result's parameters.
        gene_symbols
            The ``var`` column of gene symbols.

        Returns
        -------
        DataHandle or None
            None when the AnnData holds no cells with that column (e.g. a file read for
            its markers only).
        """
        result = adata.uns.get(key)
        params = result.get("params", {}) if isinstance(result, Mapping) else {}
        groupby = groupby or (str(params["groupby"]) if "groupby" in params else None)
        if groupby is None or groupby not in adata.obs.columns or adata.n_obs == 0:
            return None
        layer = params.get("layer")
        return cls(
            adata=adata,
            groupby=groupby,
            layer=str(layer) if layer is not None else None,
            use_raw=bool(np.asarray(params.get("use_raw", False)).any()),
            gene_symbols=gene_symbols,
        )

    def cells_of(self, cluster: str) -> np.ndarray:
        """Return which cells belong to ``cluster`` (reads ``obs`` only).

        Parameters
        ----------
        cluster
            The cluster's name.

        Returns
        -------
        numpy.ndarray
            A boolean mask over the cells.
        """
        return (self.adata.obs[self.groupby].astype(str) == str(cluster)).to_numpy()
