"""The expression data behind the markers, and the evidence an agent reads from it.

When the markers come from an AnnData, each cluster's context carries a
:class:`DataHandle`: the AnnData itself and how ``rank_genes_groups`` used it (grouping,
layer, raw), so an agent can look genes up in the data as the ranking saw them.
:meth:`DataHandle.evidence` makes, once per handle, the :class:`ExpressionEvidence` of the
data: one pass over the matrix gives each cluster's sum and count of non-zero values per
gene, and every look-up afterwards is a table look-up. It tells, for any gene asked about,
how much of the cluster expresses it, how that compares with the rest of the cells and with
the most similar clusters, and whether a measured gene is *not* expressed (the negative
evidence a marker list cannot give). When the markers came from a table (Seurat, a Scanpy
data frame), :class:`MarkerTableEvidence` answers from the cluster's own rows of the table.
"""

from __future__ import annotations

import difflib
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .errors import EvidenceError, MarkerError
from .markers import STAT_COLUMNS

#: A measured gene is ``"not expressed"`` in a cluster when fewer than this share of the
#: cluster's cells have a non-zero value for it (for a cluster of fewer than 100 cells: none).
NOT_EXPRESSED_BELOW = 0.01
#: Clusters are compared over this many genes, those whose cluster means vary most.
SIMILARITY_GENES = 2000
#: Close symbols offered for a gene that is not measured.
N_SUGGESTIONS = 3
#: How close (:func:`difflib.get_close_matches`) a symbol must be to be offered.
SUGGESTION_CUTOFF = 0.75
#: Stored values read per chunk by default (about 200 MB of working memory per chunk).
CHUNK_VALUES = 1 << 23

EXPRESSED = "expressed"
NOT_EXPRESSED = "not expressed"
NOT_MEASURED = "not measured"
AMONG_MARKERS = "among the markers"
NOT_AMONG_MARKERS = "not among this cluster's markers"

#: Pseudo-count of the fold change, as in :func:`scanpy.tl.rank_genes_groups`.
_PSEUDO_COUNT = 1e-9
_PUNCTUATION = re.compile(r"[^0-9A-Z]")


@runtime_checkable
class Evidence(Protocol):
    """What an agent can ask about one cluster's genes, whatever the markers came from."""

    clusters: list[str]

    def lookup(self, cluster: str, genes: Sequence[str]) -> pd.DataFrame:
        """Return one row of figures per gene asked."""

    def describe(self, cluster: str, genes: Sequence[str]) -> str:
        """Return the figures as a plain-text table for a language model."""


class _Once:
    """A value computed by the first caller; callers arriving meanwhile wait for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value: Any = None

    def get(self, compute: Callable[[], Any]) -> Any:
        value = self._value
        if value is None:
            with self._lock:
                if self._value is None:
                    self._value = compute()
                value = self._value
        return value


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
    marker_key
        The ``uns`` key of the ``rank_genes_groups`` result, for each gene's rank among a
        cluster's markers.

    Examples
    --------
    >>> import scanpy as sc
    >>> adata = sc.datasets.pbmc68k_reduced()
    >>> sc.tl.rank_genes_groups(adata, "louvain", method="wilcoxon")
    >>> handle = DataHandle.from_markers(adata, key="rank_genes_groups")
    >>> handle.groupby, int(handle.cells_of("0").sum())
    ('louvain', 130)
    >>> handle.evidence() is handle.evidence()  # computed once, then kept
    True
    """

    adata: AnnData
    groupby: str
    layer: str | None = None
    use_raw: bool = False
    gene_symbols: str | None = None
    marker_key: str | None = None
    _evidence: _Once = field(default_factory=_Once, init=False, repr=False, compare=False)

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
            marker_key=key,
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

    def evidence(self) -> ExpressionEvidence:
        """Return the expression evidence of the data, computed on the first call only.

        Safe to call from many threads at once: the first computes it (one pass over the
        matrix), the others wait for it; every later call returns the same object.

        Returns
        -------
        ExpressionEvidence
            Per-cluster figures of every gene, as ``rank_genes_groups`` saw the data.
        """
        return self._evidence.get(
            lambda: ExpressionEvidence.from_adata(
                self.adata,
                groupby=self.groupby,
                layer=self.layer,
                use_raw=self.use_raw,
                gene_symbols=self.gene_symbols,
                marker_key=self.marker_key,
            )
        )


# --------------------------------------------------------------------------- expression


class ExpressionEvidence:
    """Each cluster's mean and fraction expressing of every gene, from one pass over the data.

    Make it with :meth:`from_adata` (or :meth:`DataHandle.evidence`). Every figure of
    :meth:`lookup` comes from the tables below and the per-gene totals over all clusters:
    "the rest" of a cluster is every other cell in a cluster, computed as total minus
    cluster.

    Attributes
    ----------
    clusters
        Cluster names, in the order of the ``groupby`` categories that have cells.
    genes
        Gene names as the user sees them: ``var[gene_symbols]`` when given (the ID where a
        symbol is missing), else ``var_names``; those of ``raw.var`` when ``use_raw``.
    n_cells
        Cells per cluster.
    mean
        Clusters x genes, the mean value (float64).
    fraction
        Clusters x genes, the share of the cluster's cells with a non-zero value (the
        ``pts`` of :func:`scanpy.tl.rank_genes_groups`; a value stored as an explicit zero
        does not count).
    log1p
        Whether the values are log1p-transformed, which decides the fold change.
    log1p_base
        The base of the logarithm when not e (``adata.uns["log1p"]["base"]``), else None.

    Examples
    --------
    >>> import scanpy as sc
    >>> adata = sc.datasets.pbmc68k_reduced()
    >>> evidence = ExpressionEvidence.from_adata(adata, groupby="louvain", use_raw=True)
    >>> len(evidence.clusters), evidence.genes.size, int(evidence.n_cells[0])
    (11, 765, 130)
    >>> evidence.lookup("0", ["cd3e", "NOTAGENE"])[["gene", "found", "status"]]
           gene found        status
    0      cd3e  CD3E     expressed
    1  NOTAGENE        not measured
    """

    def __init__(
        self,
        *,
        clusters: Sequence[str],
        genes: pd.Index,
        n_cells: np.ndarray,
        mean: np.ndarray,
        fraction: np.ndarray,
        total_sum: np.ndarray,
        total_count: np.ndarray,
        log1p: bool,
        log1p_base: float | None = None,
        ids: pd.Index | None = None,
        marker_names: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Hold computed tables; :meth:`from_adata` computes them.

        Parameters
        ----------
        clusters, genes, n_cells, mean, fraction, log1p, log1p_base
            As the attributes.
        total_sum, total_count
            Per gene, the sum and the count of non-zero values over every clustered cell.
        ids
            The ``var_names`` (a gene asked by its ID is found too); ``genes`` when None.
        marker_names
            Each cluster's ranked genes (``rank_genes_groups``' ``names``), by cluster.
        """
        self.clusters = [str(c) for c in clusters]
        self.genes = pd.Index(genes, dtype=object)
        self.n_cells = np.asarray(n_cells, dtype=np.int64)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.fraction = np.asarray(fraction, dtype=np.float64)
        self.log1p = bool(log1p)
        self.log1p_base = float(log1p_base) if log1p_base is not None else None
        self._total_sum = np.asarray(total_sum, dtype=np.float64)
        self._total_count = np.asarray(total_count, dtype=np.float64)
        self._n_total = int(self.n_cells.sum())
        self._ids = pd.Index(ids if ids is not None else self.genes, dtype=object)
        self._marker_names = dict(marker_names or {})
        self._position = {name: k for k, name in enumerate(self.clusters)}
        self._index: dict[str, int] = {}
        self._lower: dict[str, int] = {}
        for names in (self.genes, self._ids):  # symbols first, then IDs
            for column, name in enumerate(names):
                self._index.setdefault(name, column)
                self._lower.setdefault(name.lower(), column)
        self._correlation, self.similarity_genes = _similarity(self.mean)
        self._ranks: dict[int, np.ndarray] = {}
        self._suggestions: dict[str, str] = {}
        self._upper = _Once()

    def __repr__(self) -> str:
        return (
            f"ExpressionEvidence({len(self.clusters)} clusters x {self.genes.size} genes, "
            f"{self._n_total} cells, log1p={self.log1p})"
        )

    @classmethod
    def from_adata(
        cls,
        adata: AnnData,
        *,
        groupby: str,
        layer: str | None = None,
        use_raw: bool = False,
        gene_symbols: str | None = None,
        marker_key: str | None = None,
        chunk_size: int | None = None,
    ) -> ExpressionEvidence:
        """Compute the evidence of an AnnData in one pass over its matrix.

        The matrix may be dense, scipy sparse (CSR, CSC or another format, converted),
        backed (``read_h5ad(path, backed="r")``: read in chunks, never whole) or a Dask
        array (reduced by Dask, block by block, on its own scheduler).

        Parameters
        ----------
        adata
            The data.
        groupby
            The ``obs`` column of the clusters. Cells with no cluster (NaN) are left out,
            of the clusters and of their rests.
        layer
            Read this layer instead of ``X``.
        use_raw
            Read ``adata.raw`` (its ``X`` and ``var``) instead of ``X``.
        gene_symbols
            Column of ``adata.var`` (or ``adata.raw.var``) holding gene symbols, for when
            ``var_names`` are IDs such as Ensembl's; a gene can then be asked by symbol or
            by ID.
        marker_key
            Key of a :func:`scanpy.tl.rank_genes_groups` result in ``adata.uns``, for each
            gene's rank among the cluster's markers.
        chunk_size
            Cells read at a time from a sparse CSR, dense or backed matrix (a CSC matrix
            is read by columns, as many values at a time), or per block of a Dask array.
            None: about 8 million stored values per chunk; a Dask array's blocks are kept,
            or merged when they are smaller.

        Returns
        -------
        ExpressionEvidence
            The figures, ready for :meth:`lookup`.

        Raises
        ------
        EvidenceError
            When ``groupby``, ``layer``, ``raw`` or ``gene_symbols`` is not in the data.
        ValueError
            When both ``layer`` and ``use_raw`` are given.
        """
        matrix, ids = _matrix_of(adata, layer=layer, use_raw=use_raw)
        codes, clusters = _cluster_codes(adata, groupby)
        n_clusters = len(clusters)
        totals = _accumulate(matrix, codes, n_clusters + 1, chunk_size=chunk_size)
        # The last row holds the cells without a cluster: left out.
        sums, counts = totals.sums[:n_clusters], totals.counts[:n_clusters]
        n_cells = np.bincount(codes, minlength=n_clusters + 1)[:n_clusters]
        # uns["log1p"] is about X: a layer or raw is judged by its values only.
        logged = adata.uns.get("log1p")
        log1p = not totals.integers or (layer is None and not use_raw and logged is not None)
        base = logged.get("base") if log1p and isinstance(logged, Mapping) else None
        marker_names = None
        result = adata.uns.get(marker_key) if marker_key is not None else None
        if isinstance(result, Mapping) and "names" in result:
            names = result["names"]
            marker_names = {str(group): names[group] for group in names.dtype.names}
        return cls(
            clusters=clusters,
            genes=_gene_names(adata, ids, gene_symbols, use_raw=use_raw),
            n_cells=n_cells,
            mean=sums / n_cells[:, None],
            fraction=counts / n_cells[:, None],
            total_sum=sums.sum(axis=0),
            total_count=counts.sum(axis=0),
            log1p=log1p,
            log1p_base=base,
            ids=ids,
            marker_names=marker_names,
        )

    # ----------------------------------------------------------------------- queries

    def similar(self, cluster: str, n: int = 3) -> list[str]:
        """Return the ``n`` clusters most similar to ``cluster``, most similar first.

        Similarity is the Pearson correlation of the clusters' mean profiles over the
        genes whose cluster means vary most across clusters (up to
        :data:`SIMILARITY_GENES`; see :attr:`similarity_genes`); ties go to the earlier
        cluster, so the answer is always the same. The cluster itself is never among them.

        Parameters
        ----------
        cluster
            The cluster's name.
        n
            How many; fewer when there are fewer other clusters.

        Returns
        -------
        list[str]
            Cluster names.
        """
        k = self._cluster(cluster)
        return [self.clusters[j] for j in self._similar(k, n)]

    def correlation(self, cluster: str, other: str) -> float:
        """Return the Pearson correlation :meth:`similar` ranks by, of two clusters.

        Parameters
        ----------
        cluster, other
            Cluster names.

        Returns
        -------
        float
            The correlation; NaN when a profile is constant.
        """
        return float(self._correlation[self._cluster(cluster), self._cluster(other)])

    def lookup(self, cluster: str, genes: Sequence[str], *, n_similar: int = 3) -> pd.DataFrame:
        """Return the figures of each gene asked about, in ``cluster`` and around it.

        A gene is matched by its exact name (symbol or ID), else ignoring case (``"cd3e"``
        finds ``"CD3E"``). Its status is ``"not measured"`` when it is not in the data,
        ``"not expressed"`` when fewer than :data:`NOT_EXPRESSED_BELOW` (1 %) of the
        cluster's cells have a non-zero value (negative evidence: the gene is measured and
        the cluster does not express it), else ``"expressed"``.

        The fold change is Scanpy's: ``log2((expm1(mean) + 1e-9) / (expm1(rest_mean) +
        1e-9))`` when the values are log1p-transformed (:attr:`log1p`: they are not all
        integers, or ``X`` is read and ``adata.uns`` has ``"log1p"``), else
        ``log2((mean + 1e-9) / (rest_mean + 1e-9))``. As in Scanpy, ``expm1(x)`` is
        ``expm1(x * ln(base))`` when ``adata.uns["log1p"]["base"]`` is set.

        Parameters
        ----------
        cluster
            The cluster's name.
        genes
            Gene names; a name asked twice gets one row.
        n_similar
            How many of the most similar clusters (:meth:`similar`) to show beside it.

        Returns
        -------
        pandas.DataFrame
            One row per gene, in the order asked, with columns ``gene`` (as asked),
            ``found`` (its name in the data, ``""`` when none), ``status``, ``mean``,
            ``fraction``, ``rest_mean`` and ``rest_fraction`` (over every cell of the other
            clusters), ``log2fc``, ``marker_rank`` (1-based rank among the cluster's genes
            in the ``rank_genes_groups`` result; NaN when not there), ``suggestions``
            (for a gene not measured: up to three close names that are in the data,
            comma-separated) and, for each similar cluster ``i`` = 1, 2, ...,
            ``similar_i`` (its name), ``mean_similar_i`` and ``fraction_similar_i``.
            Figures of a gene not measured are NaN. ``attrs`` holds ``cluster``,
            ``n_cells``, ``n_rest`` and ``similar``.

        Raises
        ------
        EvidenceError
            When ``cluster`` is not one of :attr:`clusters`.
        """
        columns, similar = self._columns(cluster, genes, n_similar=n_similar)
        frame = pd.DataFrame(columns, copy=False)
        k = self._position[str(cluster)]
        frame.attrs.update(
            cluster=str(cluster),
            n_cells=int(self.n_cells[k]),
            n_rest=self._n_total - int(self.n_cells[k]),
            similar=[self.clusters[j] for j in similar],
        )
        return frame

    def describe(self, cluster: str, genes: Sequence[str], *, n_similar: int = 3) -> str:
        """Return the figures of :meth:`lookup` as a compact plain-text table for a model.

        Parameters
        ----------
        cluster
            The cluster's name.
        genes
            Gene names.
        n_similar
            How many of the most similar clusters to show beside it.

        Returns
        -------
        str
            A few header lines saying what each column is and which clusters are the
            similar ones, then one line per gene.
        """
        columns, similar = self._columns(cluster, genes, n_similar=n_similar)
        k = self._position[str(cluster)]
        n_rest = self._n_total - int(self.n_cells[k])
        scale = "log1p scale" if self.log1p else "as stored"
        fold = "from the expm1 of the means" if self.log1p else "ratio of the means"
        lines = [
            f'Expression in cluster "{self.clusters[k]}" ({self.n_cells[k]:,} cells) against the '
            f"other {n_rest:,} cells.",
            f"pct = % of the cluster's cells with the gene detected; mean = mean expression "
            f"({scale}); rest pct / rest mean = the same over all other cells; log2FC = "
            f"cluster vs rest ({fold}).",
        ]
        if similar:
            named = ", ".join(
                f'S{i} = "{self.clusters[j]}" (r = {self._correlation[k, j]:.2f})'
                for i, j in enumerate(similar, start=1)
            )
            lines.append(
                f"Most similar clusters (Pearson correlation of mean expression over the "
                f"{self.similarity_genes:,} most variable genes): {named}; S1 pct / S1 mean ... "
                "= pct and mean in each."
            )
        has_ranks = bool(self._marker_names)
        if has_ranks:
            lines.append("rank = rank among the cluster's marker genes (- = not ranked).")
        lines.append(
            f"Status: not expressed = measured, but in fewer than {NOT_EXPRESSED_BELOW:.0%} of "
            "the cluster's cells; not measured = not in the data."
        )
        header = ["gene", "status", "pct", "mean", "rest pct", "rest mean", "log2FC"]
        header += ["rank"] * has_ranks
        for i in range(1, len(similar) + 1):
            header += [f"S{i} pct", f"S{i} mean"]
        rows = []
        for r, gene in enumerate(columns["gene"]):
            found = columns["found"][r]
            name = gene if found in ("", gene) else f"{gene} ({found})"
            status = columns["status"][r]
            if status == NOT_MEASURED:
                hint = columns["suggestions"][r]
                rows.append(
                    [name, status + (f" (close names in the data: {hint})" if hint else "")]
                )
                continue
            row = [
                name,
                status,
                _percent(columns["fraction"][r]),
                _number(columns["mean"][r]),
                _percent(columns["rest_fraction"][r]),
                _number(columns["rest_mean"][r]),
                _number(columns["log2fc"][r], digits=2),
            ]
            if has_ranks:
                rank = columns["marker_rank"][r]
                row.append("-" if np.isnan(rank) else f"{int(rank)}")
            for i in range(1, len(similar) + 1):
                row += [
                    _percent(columns[f"fraction_similar_{i}"][r]),
                    _number(columns[f"mean_similar_{i}"][r]),
                ]
            rows.append(row)
        return "\n".join([*lines, *_render(header, rows)])

    # ----------------------------------------------------------------------- inside

    def _cluster(self, cluster: str) -> int:
        k = self._position.get(str(cluster))
        if k is None:
            raise EvidenceError(
                f"No cluster {str(cluster)!r} in the data; its clusters are {self.clusters}."
            )
        return k

    def _similar(self, k: int, n: int) -> list[int]:
        correlation = np.nan_to_num(self._correlation[k], nan=-np.inf)
        others = np.delete(np.arange(len(self.clusters)), k)
        order = others[np.lexsort((others, -correlation[others]))]
        return order[: max(n, 0)].tolist()

    def _find(self, gene: str) -> int:
        column = self._index.get(gene)
        if column is None:
            column = self._lower.get(gene.lower(), -1)
        return column

    def _columns(
        self, cluster: str, genes: Sequence[str], *, n_similar: int
    ) -> tuple[dict[str, Any], list[int]]:
        """Look the genes up: each column of :meth:`lookup` as an array."""
        k = self._cluster(cluster)
        asked = list(dict.fromkeys([genes] if isinstance(genes, str) else map(str, genes)))
        found = np.fromiter((self._find(g.strip()) for g in asked), np.int64, len(asked))
        measured = found >= 0
        at = np.where(measured, found, 0)
        n_in = float(self.n_cells[k])
        n_rest = float(self._n_total - self.n_cells[k])
        mean = self.mean[k, at]
        fraction = self.fraction[k, at]
        count = np.rint(fraction * n_in)
        rest_count = self._total_count[at] - count
        with np.errstate(divide="ignore", invalid="ignore"):
            rest_mean = np.where(rest_count > 0, (self._total_sum[at] - mean * n_in) / n_rest, 0.0)
            rest_mean = np.where(n_rest > 0, rest_mean, np.nan)
            rest_fraction = rest_count / n_rest
            if self.log1p:
                scale = np.log(self.log1p_base) if self.log1p_base is not None else 1.0
                log2fc = np.log2(
                    (np.expm1(mean * scale) + _PSEUDO_COUNT)
                    / (np.expm1(rest_mean * scale) + _PSEUDO_COUNT)
                )
            else:
                log2fc = np.log2((mean + _PSEUDO_COUNT) / (rest_mean + _PSEUDO_COUNT))
        ranks = self._marker_ranks(k)
        marker_rank = ranks[at].astype(np.float64) if ranks is not None else np.zeros(len(at))
        marker_rank[marker_rank == 0] = np.nan
        status = np.where(fraction < NOT_EXPRESSED_BELOW, NOT_EXPRESSED, EXPRESSED).astype(object)
        status[~measured] = NOT_MEASURED
        columns: dict[str, Any] = {
            "gene": np.array(asked, dtype=object),
            "found": np.where(measured, self.genes.to_numpy()[at], ""),
            "status": status,
            "mean": mean,
            "fraction": fraction,
            "rest_mean": rest_mean,
            "rest_fraction": rest_fraction,
            "log2fc": log2fc,
            "marker_rank": marker_rank,
            "suggestions": np.array(
                ["" if m else self._suggest(g) for g, m in zip(asked, measured, strict=True)],
                dtype=object,
            ),
        }
        similar = self._similar(k, n_similar)
        for i, j in enumerate(similar, start=1):
            columns[f"similar_{i}"] = np.full(len(asked), self.clusters[j], dtype=object)
            columns[f"mean_similar_{i}"] = self.mean[j, at]
            columns[f"fraction_similar_{i}"] = self.fraction[j, at]
        for values in columns.values():
            if values.dtype.kind == "f":
                values[~measured] = np.nan
        return columns, similar

    def _marker_ranks(self, k: int) -> np.ndarray | None:
        """1-based rank of each gene among cluster ``k``'s markers, 0 where not ranked."""
        ranks = self._ranks.get(k)
        names = self._marker_names.get(self.clusters[k])
        if ranks is None and names is not None:
            names = pd.Index(np.asarray(names).astype(str), dtype=object)
            columns = self._ids.get_indexer(names)
            missing = columns < 0
            if missing.any():  # a result whose names are symbols
                columns[missing] = self.genes.get_indexer(names[missing])
            ranks = np.zeros(self.genes.size, dtype=np.int32)
            ranked = np.flatnonzero(columns >= 0)[::-1]  # reversed: the first rank wins
            ranks[columns[ranked]] = ranked + 1
            self._ranks[k] = ranks  # the same array whichever thread gets here first
        return ranks

    def _suggest(self, gene: str) -> str:
        """Return up to three names in the data close to ``gene``, for a gene not measured.

        First the names equal to it but for case and punctuation (``HLA.DRA``, as R writes
        ``HLA-DRA``), then those it begins (``CD3``: ``CD3D``, ``CD3E``, ``CD3G``), then
        the closest by :func:`difflib.get_close_matches`, all ignoring case.
        """
        if gene in self._suggestions:
            return self._suggestions[gene]
        by_key, by_upper = self._upper.get(self._upper_names)
        upper = gene.strip().upper()
        close = list(by_key.get(_PUNCTUATION.sub("", upper), []))
        if len(upper) > 1:
            family = sorted((n for n in by_upper if n.startswith(upper)), key=lambda n: (len(n), n))
            close += [by_upper[n] for n in family[:N_SUGGESTIONS]]
        matches = difflib.get_close_matches(
            upper, list(by_upper), n=N_SUGGESTIONS, cutoff=SUGGESTION_CUTOFF
        )
        close += [by_upper[n] for n in matches]
        text = ", ".join(list(dict.fromkeys(close))[:N_SUGGESTIONS])
        self._suggestions[gene] = text
        return text

    def _upper_names(self) -> tuple[dict[str, list[str]], dict[str, str]]:
        by_key: dict[str, list[str]] = {}
        by_upper: dict[str, str] = {}
        for name in self.genes:
            by_upper.setdefault(name.upper(), name)
            by_key.setdefault(_PUNCTUATION.sub("", name.upper()), []).append(name)
        return by_key, by_upper


# --------------------------------------------------------------------------- marker table


class MarkerTableEvidence:
    """Evidence from a marker table alone (Seurat, a Scanpy data frame): no expression data.

    A gene is looked up in the cluster's own rows only (CASSIA 1.4.0 took the first row of
    any cluster). A gene not among them may still be expressed in the cluster, below the
    table's thresholds: the table cannot tell.

    Parameters
    ----------
    table
        The canonical table of :func:`cassia_sc.read_markers`: columns ``cluster``,
        ``gene`` and any of ``log2fc``, ``pval_adj``, ``pct_in``, ``pct_out``, ``score``;
        each cluster's rows in rank order.

    Attributes
    ----------
    clusters
        Cluster names, in the table's order.

    Examples
    --------
    >>> import pandas as pd
    >>> table = pd.DataFrame(
    ...     {"cluster": ["B", "B", "T"], "gene": ["CD3E", "MS4A1", "CD3E"], "log2fc": [0.5, 3, 4]}
    ... )
    >>> MarkerTableEvidence(table).lookup("T", ["CD3E", "MS4A1"])[["gene", "status", "log2fc"]]
        gene                            status  log2fc
    0   CD3E                 among the markers     4.0
    1  MS4A1  not among this cluster's markers     NaN
    """

    def __init__(self, table: pd.DataFrame) -> None:
        missing = {"cluster", "gene"} - set(table.columns)
        if missing:
            raise MarkerError(
                f"A marker table needs the columns cluster and gene (it lacks {sorted(missing)}); "
                "read it with cassia_sc.read_markers."
            )
        clusters = table["cluster"]
        if isinstance(clusters.dtype, pd.CategoricalDtype):
            names = clusters.cat.categories.astype(str)
            codes = clusters.cat.codes.to_numpy().astype(np.int64)
        else:
            codes, names = pd.factorize(clusters.astype(str))
        self.clusters = [str(c) for c in names]
        self._position = {name: k for k, name in enumerate(self.clusters)}
        self._cluster_codes = np.asarray(codes, dtype=np.int64)
        gene_codes, gene_names = pd.factorize(table["gene"].astype(str).str.strip())
        self._gene_names = np.asarray(gene_names, dtype=object)
        self._stats = {
            name: table[name].to_numpy(dtype=np.float64)
            for name in STAT_COLUMNS
            if name in table.columns
        }
        # Each row's rank among its cluster's rows (the table's own order), and its gene's
        # rows side by side.
        within = pd.Series(self._cluster_codes).groupby(self._cluster_codes).cumcount()
        self._rank = within.to_numpy() + 1
        self._n_markers = np.bincount(
            self._cluster_codes[self._cluster_codes >= 0], minlength=len(self.clusters)
        )
        self._by_gene = np.argsort(gene_codes, kind="stable")
        self._gene_start = np.searchsorted(
            gene_codes[self._by_gene], np.arange(len(gene_names) + 1)
        )
        self._index: dict[str, int] = {}
        self._lower: dict[str, int] = {}
        for code, name in enumerate(self._gene_names):
            self._index.setdefault(name, code)
            self._lower.setdefault(name.lower(), code)

    def __repr__(self) -> str:
        return f"MarkerTableEvidence({len(self.clusters)} clusters, {self._rank.size} rows)"

    def lookup(self, cluster: str, genes: Sequence[str]) -> pd.DataFrame:
        """Return each gene's row among ``cluster``'s markers, if it has one.

        A gene is matched by its exact name, else ignoring case.

        Parameters
        ----------
        cluster
            The cluster's name.
        genes
            Gene names; a name asked twice gets one row.

        Returns
        -------
        pandas.DataFrame
            One row per gene, in the order asked: ``gene`` (as asked), ``found`` (its name
            in the table, ``""`` when no cluster lists it), ``status`` (``"among the
            markers"`` or ``"not among this cluster's markers"``), ``rank`` (1-based, among
            the cluster's rows), the statistics the table has (``log2fc``, ``pval_adj``,
            ``pct_in``, ``pct_out``, ``score``) from the cluster's own row (its first, if
            listed twice), NaN when not listed; and ``marker_of``, the other clusters that
            list it, comma-separated.

        Raises
        ------
        EvidenceError
            When ``cluster`` is not in the table.
        """
        k = self._position.get(str(cluster))
        if k is None:
            raise EvidenceError(
                f"No cluster {str(cluster)!r} in the marker table; its clusters are "
                f"{self.clusters}."
            )
        asked = list(dict.fromkeys([genes] if isinstance(genes, str) else map(str, genes)))
        rows = np.full(len(asked), -1, dtype=np.int64)
        found = []
        others = []
        for i, gene in enumerate(asked):
            code = self._index.get(gene.strip())
            if code is None:
                code = self._lower.get(gene.strip().lower())
            if code is None:
                found.append("")
                others.append("")
                continue
            listed = self._by_gene[self._gene_start[code] : self._gene_start[code + 1]]
            owners = self._cluster_codes[listed]
            own = listed[owners == k]
            if own.size:
                rows[i] = own[0]
            found.append(self._gene_names[code])
            other = np.unique(owners[(owners != k) & (owners >= 0)])
            others.append(", ".join(self.clusters[j] for j in other))
        listed = rows >= 0
        at = np.where(listed, rows, 0)
        columns: dict[str, Any] = {
            "gene": asked,
            "found": found,
            "status": np.where(listed, AMONG_MARKERS, NOT_AMONG_MARKERS).astype(object),
            "rank": np.where(listed, self._rank[at], np.nan),
        }
        for name, values in self._stats.items():
            columns[name] = np.where(listed, values[at], np.nan)
        columns["marker_of"] = others
        frame = pd.DataFrame(columns)
        frame.attrs.update(cluster=self.clusters[k], n_markers=int(self._n_markers[k]))
        return frame

    def describe(self, cluster: str, genes: Sequence[str]) -> str:
        """Return the figures of :meth:`lookup` as a compact plain-text table for a model.

        Parameters
        ----------
        cluster
            The cluster's name.
        genes
            Gene names.

        Returns
        -------
        str
            A few header lines saying what each column is, then one line per gene.
        """
        frame = self.lookup(cluster, genes)
        stats = [name for name in STAT_COLUMNS if name in self._stats]
        labels = {
            "log2fc": ("log2FC", "log2 fold change"),
            "pval_adj": ("p_adj", "adjusted p-value"),
            "pct_in": ("pct in", "% of the cluster's cells expressing it"),
            "pct_out": ("pct out", "% of the other cells expressing it"),
            "score": ("score", "the ranking's score"),
        }
        explained = "; ".join(f"{labels[s][0]} = {labels[s][1]}" for s in stats)
        lines = [
            f'Marker table of cluster "{frame.attrs["cluster"]}" ({frame.attrs["n_markers"]} '
            "markers); no expression data, so a gene not listed may still be expressed, below "
            "the table's thresholds.",
            "rank = rank among the cluster's markers"
            + (f"; {explained}" if explained else "")
            + "; also listed for = other clusters whose markers include it.",
        ]
        header = ["gene", "status", "rank", *(labels[s][0] for s in stats), "also listed for"]
        rows = []
        for record in frame.itertuples(index=False):
            name = (
                record.gene
                if record.found in ("", record.gene)
                else (f"{record.gene} ({record.found})")
            )
            row = [name, record.status, "-" if np.isnan(record.rank) else f"{int(record.rank)}"]
            for stat in stats:
                value = getattr(record, stat)
                if stat in ("pct_in", "pct_out"):
                    row.append(_percent(value))
                elif stat == "pval_adj":
                    row.append("-" if np.isnan(value) else f"{value:.2g}")
                else:
                    row.append(_number(value, digits=2))
            row.append(record.marker_of or "-")
            rows.append(row)
        return "\n".join([*lines, *_render(header, rows)])


# --------------------------------------------------------------------------- one pass


class _Totals:
    """Per cluster and gene, the sum and the count of non-zero values, filled chunk by chunk.

    Each chunk's stored values are keyed by (cluster, gene) and summed with
    :func:`numpy.bincount`: one sweep over the values, whatever the number of clusters.
    """

    def __init__(self, n_groups: int, n_genes: int, *, check_integers: bool = True) -> None:
        self.sums = np.zeros((n_groups, n_genes))
        self.counts = np.zeros((n_groups, n_genes), dtype=np.int64)
        self.integers = True
        self._check = check_integers

    def add_csr(
        self, data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, codes: np.ndarray
    ) -> None:
        """Add rows stored as CSR (``indptr`` need not start at 0)."""
        n_genes = self.sums.shape[1]
        keys = np.repeat(codes * n_genes, np.diff(indptr))
        keys += indices
        self._add(keys, data, 0, n_genes)

    def add_csc(
        self,
        data: np.ndarray,
        indices: np.ndarray,
        indptr: np.ndarray,
        codes: np.ndarray,
        start: int,
    ) -> None:
        """Add the columns ``start, start + 1, ...`` stored as CSC over every cell."""
        width = len(indptr) - 1
        keys = codes[indices] * width
        keys += np.repeat(np.arange(width), np.diff(indptr))
        self._add(keys, data, start, width)

    def add_dense(self, block: np.ndarray, codes: np.ndarray) -> None:
        """Add dense rows."""
        n_rows = len(codes)
        indicator = sp.csr_matrix(
            (np.ones(n_rows), (codes, np.arange(n_rows))), shape=(self.sums.shape[0], n_rows)
        )
        self.sums += indicator @ block
        self.counts += np.rint(indicator @ (block != 0)).astype(np.int64)
        self._check_integers(block)

    def add(self, chunk: Any, codes: np.ndarray, start: int = 0) -> None:
        """Add an in-memory chunk: rows of every gene, or (CSC) columns of every cell."""
        if sp.issparse(chunk) and chunk.format == "csc":
            self.add_csc(chunk.data, chunk.indices, chunk.indptr, codes, start)
        elif sp.issparse(chunk):
            chunk = chunk if chunk.format == "csr" else chunk.tocsr()
            self.add_csr(chunk.data, chunk.indices, chunk.indptr, codes)
        else:
            self.add_dense(np.asarray(chunk), codes)

    def _add(self, keys: np.ndarray, values: np.ndarray, start: int, width: int) -> None:
        size = self.sums.shape[0] * width
        self._check_integers(values)
        sums = np.bincount(keys, weights=values, minlength=size)
        nonzero = values != 0
        counts = np.bincount(keys if nonzero.all() else keys[nonzero], minlength=size)
        self.sums[:, start : start + width] += sums.reshape(-1, width)
        self.counts[:, start : start + width] += counts.reshape(-1, width)

    def _check_integers(self, values: np.ndarray) -> None:
        if self._check and self.integers and values.dtype.kind == "f":
            self.integers = bool((np.floor(values) == values).all())


def _accumulate(
    matrix: Any, codes: np.ndarray, n_groups: int, *, chunk_size: int | None
) -> _Totals:
    """One pass over ``matrix``: the sums and counts of non-zero values of each group."""
    n_obs, n_vars = matrix.shape
    if type(matrix).__module__.split(".")[0] == "dask":
        return _accumulate_dask(matrix, codes, n_groups, chunk_size=chunk_size)
    totals = _Totals(n_groups, n_vars)
    stored = _stored_values(matrix)
    if getattr(matrix, "format", None) == "csc":  # in memory or backed: by columns
        per_column = max(stored / max(n_vars, 1), 1.0)
        width = _chunk(n_vars, per_column, chunk_size, scale=n_vars / max(n_obs, 1))
        for start in range(0, n_vars, width):
            stop = min(start + width, n_vars)
            if sp.issparse(matrix):
                a, b = matrix.indptr[start], matrix.indptr[stop]
                indptr = matrix.indptr[start : stop + 1]
                totals.add_csc(matrix.data[a:b], matrix.indices[a:b], indptr, codes, start)
            else:
                totals.add(matrix[:, start:stop], codes, start)
        return totals
    if sp.issparse(matrix) and matrix.format != "csr":
        matrix = matrix.tocsr()  # COO, LIL, ...: one conversion
    per_row = max(stored / max(n_obs, 1), 1.0)
    height = _chunk(n_obs, per_row, chunk_size, table=n_groups * n_vars)
    for start in range(0, n_obs, height):
        stop = min(start + height, n_obs)
        if sp.issparse(matrix):  # in memory: views of the arrays, no copy
            a, b = matrix.indptr[start], matrix.indptr[stop]
            indptr = matrix.indptr[start : stop + 1]
            totals.add_csr(matrix.data[a:b], matrix.indices[a:b], indptr, codes[start:stop])
        else:  # dense, or backed: this chunk is read now
            totals.add(matrix[start:stop], codes[start:stop])
    return totals


def _stored_values(matrix: Any) -> float:
    """How many values the matrix stores (its non-zeros when sparse, in memory or backed)."""
    if sp.issparse(matrix):
        return float(matrix.nnz)
    group = getattr(matrix, "group", None)  # anndata's backed sparse dataset
    if group is not None and "data" in group:
        return float(group["data"].shape[0])
    return float(np.prod(matrix.shape))


def _chunk(
    length: int,
    per_item: float,
    chunk_size: int | None,
    *,
    table: float = 0.0,
    scale: float = 1.0,
) -> int:
    """Items (rows or columns) per chunk: as asked, or about :data:`CHUNK_VALUES` values.

    A chunk holds at least twice as many values as the ``table`` it is added to (up to
    eight times :data:`CHUNK_VALUES`), so that adding it costs less than reading it.
    """
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, not {chunk_size}.")
        return max(1, min(length, round(chunk_size * scale)))
    budget = min(max(CHUNK_VALUES, 2 * table), 8 * CHUNK_VALUES)
    return max(1, min(length, int(budget / per_item)))


def _accumulate_dask(
    matrix: Any, codes: np.ndarray, n_groups: int, *, chunk_size: int | None
) -> _Totals:
    """Make the same pass as a Dask reduction: each block's table, then their sum.

    Each block gives a whole table (clusters x its genes), so blocks of few cells, such as
    the 1,000 of ``read_elem_lazy``, are merged first into blocks of about
    :data:`CHUNK_VALUES` values (judged from the first block), as many as ``chunk_size``
    cells when it is given.
    """
    import dask
    import dask.array as da

    rows = max(matrix.chunks[0])
    if chunk_size is not None:
        target = _chunk(matrix.shape[0], 1.0, chunk_size)
    else:
        first = matrix.blocks[0, 0].compute()
        stored = first.nnz if sp.issparse(first) else first.size
        per_row = max(stored / max(first.shape[0], 1), 1.0)
        target = _chunk(matrix.shape[0], per_row, None, table=n_groups * first.shape[1])
    if target != rows and (chunk_size is not None or target > rows):
        matrix = matrix.rechunk({0: target})

    def block_totals(block: Any, block_codes: np.ndarray) -> np.ndarray:
        totals = _Totals(n_groups, block.shape[1], check_integers=False)
        totals.add(block if sp.issparse(block) else np.asarray(block), block_codes)
        return np.stack([totals.sums, totals.counts.astype(np.float64)])[None]

    def block_integers(block: Any) -> np.ndarray:
        values = block.data if sp.issparse(block) else np.asarray(block)
        integers = values.dtype.kind != "f" or bool((np.floor(values) == values).all())
        return np.array([[integers]])

    by_cell = da.from_array(codes, chunks=(matrix.chunks[0],))
    parts = da.blockwise(
        block_totals,
        "iskj",
        matrix,
        "ij",
        by_cell,
        "i",
        new_axes={"s": 2, "k": n_groups},
        adjust_chunks={"i": 1},
        dtype=np.float64,
        meta=np.empty((0, 0, 0, 0)),
    )
    integers = da.blockwise(
        block_integers,
        "ij",
        matrix,
        "ij",
        adjust_chunks={"i": 1, "j": 1},
        dtype=bool,
        meta=np.empty((0, 0), dtype=bool),
    )
    summed, all_integers = dask.compute(parts.sum(axis=0), integers.all())
    totals = _Totals(0, 0)
    totals.sums = summed[0]
    totals.counts = np.rint(summed[1]).astype(np.int64)
    totals.integers = bool(all_integers)
    return totals


# --------------------------------------------------------------------------- the data


def _matrix_of(adata: AnnData, *, layer: str | None, use_raw: bool) -> tuple[Any, pd.Index]:
    """Return the matrix ``rank_genes_groups`` read, and its genes' IDs."""
    if use_raw and layer is not None:
        raise ValueError("Pass either layer= or use_raw=True, not both.")
    if use_raw:
        if adata.raw is None:
            raise EvidenceError(
                "use_raw=True, but adata.raw is None: pass use_raw=False to read X."
            )
        return adata.raw.X, pd.Index(adata.raw.var_names.astype(str), dtype=object)
    ids = pd.Index(adata.var_names.astype(str), dtype=object)
    if layer is not None:
        if layer not in adata.layers:
            raise EvidenceError(
                f"No layer {layer!r} in the data; its layers are {list(adata.layers)}."
            )
        return adata.layers[layer], ids
    if adata.X is None:
        raise EvidenceError("adata.X is None: pass layer= or use_raw=True.")
    return adata.X, ids


def _cluster_codes(adata: AnnData, groupby: str) -> tuple[np.ndarray, list[str]]:
    """Return each cell's cluster number, and the clusters' names.

    The clusters are the categories with cells, in category order; the cells without a
    cluster get the number after the last.
    """
    if groupby not in adata.obs.columns:
        raise EvidenceError(
            f"No column {groupby!r} in adata.obs; its columns are {list(adata.obs.columns)}."
        )
    column = adata.obs[groupby]
    if not isinstance(column.dtype, pd.CategoricalDtype):
        column = column.astype("category")
    codes = column.cat.codes.to_numpy().astype(np.int64)
    categories = column.cat.categories
    present = np.flatnonzero(np.bincount(codes[codes >= 0], minlength=len(categories)))
    renumber = np.full(len(categories) + 1, len(present), dtype=np.int64)  # [-1]: no cluster
    renumber[present] = np.arange(len(present))
    return renumber[codes], [str(categories[i]) for i in present]


def _gene_names(
    adata: AnnData, ids: pd.Index, gene_symbols: str | None, *, use_raw: bool
) -> pd.Index:
    """Return the names to show: the symbols when asked for (the ID where one is missing)."""
    if gene_symbols is None:
        return ids
    sources = [adata.raw.var, adata.var] if use_raw else [adata.var]
    columns = [var[gene_symbols] for var in sources if gene_symbols in var.columns]
    if not columns:
        raise EvidenceError(
            f"No column {gene_symbols!r} (gene_symbols) in adata.var; its columns are "
            f"{list(adata.var.columns)}."
        )
    symbols = pd.concat(columns)
    symbols = symbols[~symbols.index.duplicated()].reindex(ids).astype(object)
    usable = symbols.notna() & (symbols.astype(str).str.strip() != "")
    return pd.Index(np.where(usable, symbols.astype(str), ids), dtype=object)


def _similarity(mean: np.ndarray) -> tuple[np.ndarray, int]:
    """Pearson correlation of the clusters' mean profiles over the most variable genes."""
    n_clusters, n_genes = mean.shape
    n_top = min(SIMILARITY_GENES, n_genes)
    if n_clusters < 2 or n_top < 2:
        return np.full((n_clusters, n_clusters), np.nan), n_top
    spread = mean.var(axis=0)
    top = np.argsort(-spread, kind="stable")[:n_top]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.corrcoef(mean[:, top]), n_top


# --------------------------------------------------------------------------- text


def _percent(value: float) -> str:
    return "-" if np.isnan(value) else f"{100 * value:.1f}"


def _number(value: float, *, digits: int = 3) -> str:
    if np.isnan(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.{digits}f}"


def _render(header: list[str], rows: list[list[str]]) -> list[str]:
    """Return aligned lines: text columns to the left, figures to the right.

    A short row (a gene not measured) runs on past the columns it lacks.
    """
    widths = [len(h) for h in header]
    for row in rows:
        if len(row) == len(header):
            widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: list[str]) -> str:
        if len(cells) < len(header):
            return "  ".join([cells[0].ljust(widths[0]), *cells[1:]]).rstrip()
        return "  ".join(
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(header), *(line(row) for row in rows)]
