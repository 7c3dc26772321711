"""Marker genes: every input format read into one canonical table, and each cluster's top markers.

The canonical table is a :class:`pandas.DataFrame` with one row per (cluster, gene):

``cluster``
    Categorical; its categories are the clusters in input order. Rows of a cluster are
    contiguous and keep the source's own order (the source's ranking).
``gene``
    Categorical gene names (symbols when ``gene_symbols`` is given).
``log2fc``, ``pval_adj``, ``pct_in``, ``pct_out``, ``score``
    The statistics the source has; a column the source lacks is absent, not filled.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import logging
import lzma
import math
import os
import re
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from numpy.lib import recfunctions

from ._keys import Default, Key
from .errors import MarkerError

logger = logging.getLogger("cassia_sc")

MarkerInput = AnnData | pd.DataFrame | str | os.PathLike
RankingMethod = Literal["avg_log2FC", "p_val_adj", "pct_diff", "Score"]

STAT_COLUMNS = ("log2fc", "pval_adj", "pct_in", "pct_out", "score")

#: Column names of each table format, mapped to the canonical statistic they hold.
_SEURAT_STATS = {
    "avg_log2FC": "log2fc",
    "p_val_adj": "pval_adj",
    "pct.1": "pct_in",
    "pct.2": "pct_out",
}
_SCANPY_STATS = {
    "logfoldchanges": "log2fc",
    "pvals_adj": "pval_adj",
    "pct_nz_group": "pct_in",
    "pct_nz_reference": "pct_out",
    "scores": "score",
}
_RANK_GENES_GROUPS_STATS = {"logfoldchanges": "log2fc", "pvals_adj": "pval_adj", "scores": "score"}
#: Seurat < 4 wrote natural-log fold changes under this name.
_SEURAT_V3_LOGFC = "avg_logFC"

#: The filters CASSIA documents; each applies only where its column exists.
MAX_PVAL_ADJ = 0.05
MIN_LOG2FC = 0.25
MIN_PCT_IN = 0.1

_FILTERS = {
    "pval_adj": lambda values: values < MAX_PVAL_ADJ,
    "log2fc": lambda values: values > MIN_LOG2FC,
    "pct_in": lambda values: values > MIN_PCT_IN,
}

#: ranking_method -> (canonical columns it needs, ascending by default)
RANKING_METHODS: dict[str, tuple[tuple[str, ...], bool]] = {
    "avg_log2FC": (("log2fc",), False),
    "p_val_adj": (("pval_adj",), True),
    "pct_diff": (("pct_in", "pct_out"), False),
    "Score": (("score",), False),
}

# Tokens that stand for "no gene" in hand-made or exported lists, and "no value" in a
# statistic's column (R writes NA); a cluster may be named so.
_EMPTY_TOKENS = frozenset({"", "nan", "none", "null", "na"})
# Separators a marker file may use: comma, semicolon (a spreadsheet set to a language with
# decimal commas), tab.
_SEPARATORS = (",", ";", "\t")
_DECIMAL_COMMA = re.compile(r"[+-]?\d+,\d+(?:[eE][+-]?\d+)?")
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
# An Ensembl gene ID (with its version or not) or an Entrez Gene number.
_GENE_ID = re.compile(r"ENS[A-Z]*G\d{11}(\.\d+)?|\d+")


def looks_like_gene_ids(genes: Iterable[str]) -> bool:
    """Return whether most names are Ensembl gene IDs (ENSG..., ENSMUSG...) or Entrez numbers.

    Parameters
    ----------
    genes
        Gene names.

    Returns
    -------
    bool
        True when more than half are IDs.

    Examples
    --------
    >>> looks_like_gene_ids(["ENSG00000167286", "ENSMUSG00000002111.3", "CD3E"])
    True
    >>> looks_like_gene_ids(["CD3E", "7157"])
    False
    """
    names = [str(g) for g in genes]
    return sum(bool(_GENE_ID.fullmatch(name)) for name in names) > len(names) / 2


def top_markers(
    marker: MarkerInput,
    *,
    n_genes: int = Default.n_genes,
    ranking_method: RankingMethod = Default.ranking_method,
    ascending: bool | None = None,
    celltype_column: str | None = None,
    gene_column_name: str | None = None,
    key: str = Key.uns.markers,
    groupby: str | None = None,
    gene_symbols: str | None = None,
) -> dict[str, list[str]]:
    """Rank each cluster's marker genes and keep the top ``n_genes``.

    Genes are kept when their adjusted p-value is below 0.05, their log2 fold change
    above 0.25 and the fraction of cluster cells expressing them above 0.1, each filter
    applied only when the source has that statistic. The survivors are ranked by
    ``ranking_method``; a gene listed twice in a cluster counts once, at its best rank.
    When no gene of a cluster passes, or the source lacks the ranking statistic (a
    ``logreg`` result has neither p-values nor fold changes), the source's own order
    is used and a warning is logged.

    Parameters
    ----------
    marker
        An :class:`~anndata.AnnData` with a :func:`scanpy.tl.rank_genes_groups` result in
        ``uns[key]``; or a table, as a :class:`~pandas.DataFrame` or the path of a CSV/TSV
        file, in one of three formats: Seurat ``FindAllMarkers`` output (``cluster``,
        ``gene``, ``avg_log2FC``, ``p_val_adj``, ``pct.1``, ``pct.2``), Scanpy
        :func:`scanpy.get.rank_genes_groups_df` output with ``group=None`` (``group``,
        ``names``, ``scores``, ``logfoldchanges``, ``pvals_adj``, optionally
        ``pct_nz_group`` and ``pct_nz_reference``), or the simplified format: one row per
        cluster, its name in the first column and its genes, comma-separated, in one other
        column; further columns, such as the ``Tissue``, ``Species`` and ``Dataset`` of
        CASSIA's benchmark tables, are ignored.
    n_genes
        How many genes to keep per cluster; fewer when fewer pass the filters.
    ranking_method
        ``"avg_log2FC"`` (descending), ``"p_val_adj"`` (ascending), ``"pct_diff"``
        (fraction in the cluster minus fraction outside, descending) or ``"Score"``
        (Scanpy's ``scores``, descending).
    ascending
        Override the ranking direction of ``ranking_method``.
    celltype_column
        Column of a table that names the cluster; overrides detection.
    gene_column_name
        Column of a table that names the gene (or lists the genes); overrides detection.
    key
        Key of the :func:`scanpy.tl.rank_genes_groups` result in ``adata.uns``.
    groupby
        The ``obs`` column the clusters come from; when given, it must be the one the
        result in ``uns[key]`` was computed for.
    gene_symbols
        Column of ``adata.var`` (or ``adata.raw.var``) holding gene symbols, for when
        ``var_names`` are IDs such as Ensembl's. IDs without a symbol are kept.

    Returns
    -------
    dict[str, list[str]]
        Cluster name to its ranked genes, clusters in input order.

    Raises
    ------
    MarkerError
        When the input cannot be read as markers; the message says what to change.
    FileNotFoundError
        When ``marker`` is a path that does not exist.

    Examples
    --------
    >>> import scanpy as sc
    >>> import cassia_sc
    >>> adata = sc.datasets.pbmc68k_reduced()
    >>> sc.tl.rank_genes_groups(adata, "louvain", method="wilcoxon", pts=True)
    >>> markers = cassia_sc.top_markers(adata, n_genes=10)
    >>> markers["0"][:3]
    ['CD3D', 'IL32', 'CD40LG']
    """
    method = RANKING_METHODS.get(ranking_method)
    table = _read_markers(
        marker,
        celltype_column=celltype_column,
        gene_column_name=gene_column_name,
        key=key,
        groupby=groupby,
        gene_symbols=gene_symbols,
        candidates_for=_checked_n_genes(n_genes),
        # Unknown methods are refused by select_markers, after the input's own errors.
        ranking=None
        if method is None
        else (method[0], method[1] if ascending is None else ascending),
    )
    chosen = select_markers(
        table, n_genes=n_genes, ranking_method=ranking_method, ascending=ascending
    )
    # One pass over the rows: a mask per cluster would be quadratic in the clusters.
    by_cluster: dict[Any, list[str]] = {c: [] for c in chosen["cluster"].cat.categories}
    for cluster, gene in zip(chosen["cluster"], chosen["gene"].astype(str), strict=True):
        by_cluster[cluster].append(gene)
    return {str(cluster): listed for cluster, listed in by_cluster.items()}


# --------------------------------------------------------------------------- reading


def read_markers(
    marker: MarkerInput,
    *,
    celltype_column: str | None = None,
    gene_column_name: str | None = None,
    key: str = Key.uns.markers,
    groupby: str | None = None,
    gene_symbols: str | None = None,
    candidates_for: int | None = None,
) -> pd.DataFrame:
    """Read markers from any supported input into the canonical table.

    Parameters
    ----------
    marker, celltype_column, gene_column_name, key, groupby, gene_symbols
        As in :func:`top_markers`.
    candidates_for
        For an AnnData only: keep just the rows that can be among the top
        ``candidates_for`` markers of their cluster (those that pass the p-value and
        fold-change filters, and each cluster's first ``candidates_for`` rows). Selecting
        from this smaller table gives the same markers, faster; :func:`top_markers` uses it.

    Returns
    -------
    pandas.DataFrame
        Columns ``cluster``, ``gene`` and whichever of ``log2fc``, ``pval_adj``,
        ``pct_in``, ``pct_out`` and ``score`` the source has; see :mod:`cassia_sc.markers`.

    Examples
    --------
    >>> import cassia_sc
    >>> table = cassia_sc.read_markers(cassia_sc.loadmarker("pbmc68k_unprocessed"))
    >>> list(table.columns)
    ['cluster', 'gene', 'log2fc', 'pval_adj', 'pct_in', 'pct_out']
    """
    return _read_markers(
        marker,
        celltype_column=celltype_column,
        gene_column_name=gene_column_name,
        key=key,
        groupby=groupby,
        gene_symbols=gene_symbols,
        candidates_for=candidates_for,
    )


def _read_markers(
    marker: MarkerInput,
    *,
    celltype_column: str | None,
    gene_column_name: str | None,
    key: str,
    groupby: str | None,
    gene_symbols: str | None,
    candidates_for: int | None,
    ranking: tuple[tuple[str, ...], bool] | None = None,
) -> pd.DataFrame:
    """:func:`read_markers`, with the ranking the candidates are for.

    ``ranking`` is ``(columns, ascending)`` of :data:`RANKING_METHODS`; with
    ``candidates_for``, an AnnData's rows are pruned further to those that can be among
    the top ``candidates_for`` by that ranking.
    """
    if isinstance(marker, AnnData):
        if celltype_column is not None or gene_column_name is not None:
            raise MarkerError(
                "celltype_column and gene_column_name apply to marker tables; for an AnnData, "
                "pass groupby= and key= instead."
            )
        return _from_rank_genes_groups(
            marker,
            key=key,
            groupby=groupby,
            gene_symbols=gene_symbols,
            candidates_for=candidates_for,
            ranking=ranking,
        )
    if groupby is not None or gene_symbols is not None:
        raise MarkerError(
            "groupby and gene_symbols apply to an AnnData; for a marker table, "
            "pass celltype_column= and gene_column_name= instead."
        )
    if isinstance(marker, str | os.PathLike):
        path = Path(marker)
        frame = _read_table_file(path)
        try:
            return _from_table(
                frame, celltype_column=celltype_column, gene_column_name=gene_column_name
            )
        except MarkerError as err:
            raise MarkerError(f"{path}: {err}") from None
    if not isinstance(marker, pd.DataFrame):
        raise MarkerError(
            f"markers must be an AnnData, a DataFrame or the path of a CSV file, "
            f"not {type(marker).__name__}."
        )
    return _from_table(marker, celltype_column=celltype_column, gene_column_name=gene_column_name)


def _read_table_file(path: Path) -> pd.DataFrame:
    """Read a marker file as text; its index is each row's line number in the file."""
    if not path.is_file():
        raise FileNotFoundError(f"Marker file not found: {str(path)!r}.")
    text = _decoded(path, _file_bytes(path))
    if not text.strip():
        raise MarkerError(f"{path} is empty: export the marker table to it again.")
    separator = _separator(path, text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=separator)
    header: list[str] | None = None
    rows, lines = [], []
    start = 1
    for record in reader:
        line, start = start, reader.line_num + 1
        if not any(field.strip() for field in record):
            continue  # a blank line
        if header is None:
            header = record
            continue
        rows.append(record)
        lines.append(line)
    assert header is not None  # the text is not blank
    widths = {len(row) for row in rows}
    if widths == {len(header) + 1}:  # R's write.table: row names, and no header for them
        rows = [row[1:] for row in rows]
    for row, line in zip(rows, lines, strict=True):
        if len(row) > len(header):
            raise MarkerError(
                f"{path}: line {line} has {len(row)} fields, the header {len(header)}; "
                "quote values that hold the separator."
            )
    rows = [row + [""] * (len(header) - len(row)) for row in rows]
    # Everything as text: cluster names such as "01" or "NA" stay as written; statistics
    # are converted later, column by column, with errors that name the column. Only an
    # empty cell is missing.
    frame = pd.DataFrame(rows, columns=header, index=pd.Index(lines, name="line"), dtype=object)
    return frame.mask(frame.apply(lambda column: column.str.strip() == ""))


def _file_bytes(path: Path) -> bytes:
    suffix = path.suffix.lower()
    if suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.namelist() if not m.endswith("/")]
            if len(members) != 1:
                raise MarkerError(f"{path} holds {len(members)} files; zip one marker table.")
            return archive.read(members[0])
    opener = _OPENERS.get(suffix)
    if opener is None:
        return path.read_bytes()
    with opener(path, "rb") as file:
        return file.read()


def _decoded(path: Path, raw: bytes) -> str:
    """UTF-8 (with or without a byte-order mark); else Windows-1252 / Latin-1, with a warning."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    for encoding, name in (("cp1252", "Windows-1252"), ("latin-1", "Latin-1")):
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            continue
        logger.warning(
            "%s is not UTF-8; read it as %s. Check that names with accents or symbols read "
            "right, or save the file as UTF-8.",
            path,
            name,
        )
        return text
    raise AssertionError("Latin-1 decodes any bytes")


def _separator(path: Path, text: str) -> str:
    """Return the header line's separator: the suffix's when it has one, else its most common.

    The suffix's separator is a tab for ``.tsv``, ``.tab`` and ``.txt``, else a comma.
    """
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in _OPENERS.keys() | {".zip"}]
    expected = "\t" if suffixes and suffixes[-1] in {".tsv", ".tab", ".txt"} else ","
    header = next((line for line in text.splitlines() if line.strip()), "")
    counts = {sep: _count_outside_quotes(header, sep) for sep in _SEPARATORS}
    if counts[expected] or not any(counts.values()):
        return expected
    found = max(counts, key=counts.__getitem__)
    logger.info("%s is separated by %r, not %r; read it so.", path, found, expected)
    return found


def _count_outside_quotes(line: str, separator: str) -> int:
    count, quoted = 0, False
    for character in line:
        if character == '"':
            quoted = not quoted
        elif character == separator and not quoted:
            count += 1
    return count


def _rows(labels: pd.Index) -> str:
    """How an error points at rows: file lines, or a DataFrame's index labels."""
    shown = labels[:5].tolist()
    more = f" and {len(labels) - 5} more" if len(labels) > 5 else ""
    if labels.name == "line":
        return f"line{'s' if len(labels) > 1 else ''} {', '.join(map(str, shown))}{more}"
    return f"rows with index {shown}{more}"


def _from_table(
    frame: pd.DataFrame, *, celltype_column: str | None, gene_column_name: str | None
) -> pd.DataFrame:
    frame = frame.rename(columns=lambda c: str(c).strip().lstrip("\ufeff"))
    columns = list(frame.columns)
    if frame.empty:
        raise MarkerError(f"The marker table is empty (columns: {columns}).")

    for given, name in (
        (celltype_column, "celltype_column"),
        (gene_column_name, "gene_column_name"),
    ):
        if given is not None and given not in frame.columns:
            raise MarkerError(
                f"{name}={given!r} is not a column of the marker table; it has {columns}."
            )
    cluster_column, gene_column = _detect_columns(
        frame, celltype_column=celltype_column, gene_column_name=gene_column_name
    )
    if cluster_column is None or gene_column is None:
        raise MarkerError(
            f"Cannot tell which marker format this table is; it has the columns {columns}. "
            "Expected Seurat FindAllMarkers (cluster, gene, avg_log2FC, p_val_adj, pct.1, pct.2), "
            "Scanpy rank_genes_groups_df (group, names, scores, logfoldchanges, pvals_adj) or "
            "one row per cluster: its name in the first column and its genes, comma-separated, "
            "in one other column (as CASSIA's benchmark tables: True Cell Type, Marker List, "
            "Tissue, Species, Dataset). Name the columns with celltype_column= and "
            "gene_column_name=."
        )

    stats = _table_statistics(frame)
    names = frame[cluster_column]
    empty = names.isna() | (names.astype(str).str.strip() == "")
    if empty.any():
        raise MarkerError(
            f"Column {cluster_column!r} has empty cluster names, at {_rows(frame.index[empty])}; "
            "name those clusters or drop their rows."
        )
    _refuse_names_that_read_alike(names, cluster_column)
    clusters = names.astype(str).str.strip()
    cluster_order = pd.unique(clusters)
    if isinstance(names.dtype, pd.CategoricalDtype):  # e.g. a Seurat factor
        levels = names.cat.categories.astype(str).str.strip()
        cluster_order = levels[levels.isin(cluster_order)].to_numpy()
    genes = frame[gene_column]
    missing = genes.isna() | genes.astype(str).str.strip().str.lower().isin(_EMPTY_TOKENS)
    if missing.any():
        affected = pd.unique(clusters[missing])[:10].tolist()
        if clusters.is_unique:
            raise MarkerError(
                f"Clusters {affected} have no marker genes, at {_rows(frame.index[missing])}; "
                "give them genes or drop them."
            )
        raise MarkerError(
            f"{int(missing.sum())} rows of column {gene_column!r} have no gene name "
            f"(clusters {affected}), at {_rows(frame.index[missing])}; remove those rows or "
            "fix the table."
        )
    if stats.empty:  # the simplified format: comma-separated genes, in rank order
        if genes.astype(str).str.contains(",").any():
            clusters = _unique_row_names(clusters)
            cluster_order = clusters.to_numpy()
        canonical = _explode_gene_lists(clusters, genes)
    else:
        canonical = pd.DataFrame({"cluster": clusters, "gene": genes.astype(str).str.strip()})
        canonical = pd.concat([canonical, stats.set_axis(canonical.index)], axis=1)
    return _finish(canonical, cluster_order)


def _refuse_names_that_read_alike(names: pd.Series, column: str) -> None:
    """Refuse cluster names of different types that are the same text (0 and "0")."""
    if names.dtype != object and not (
        isinstance(names.dtype, pd.CategoricalDtype) and names.cat.categories.dtype == object
    ):
        return
    kinds: dict[str, dict[str, object]] = {}
    for value in pd.unique(names.to_numpy(dtype=object)):
        kinds.setdefault(str(value).strip(), {}).setdefault(type(value).__name__, value)
    alike = {text: seen for text, seen in kinds.items() if len(seen) > 1}
    if alike:
        text, seen = next(iter(alike.items()))
        shown = " and ".join(f"{value!r} ({kind})" for kind, value in seen.items())
        raise MarkerError(
            f"Column {column!r} names clusters {shown}, which read the same as text and "
            f"would be merged into cluster {text!r}. Make the column one type, e.g. "
            f"df[{column!r}] = df[{column!r}].astype(str), or rename one of them."
        )


def _detect_columns(
    frame: pd.DataFrame, *, celltype_column: str | None, gene_column_name: str | None
) -> tuple[str | None, str | None]:
    """Return the cluster and gene columns: those given, else found by name, else by content.

    A column is None when it cannot be told; several columns that could each be the
    gene lists are refused, naming them.
    """
    columns = list(frame.columns)
    if {"cluster", "gene"} <= set(columns):
        found: tuple[str | None, str | None] = ("cluster", "gene")
    elif {"group", "names"} <= set(columns):
        found = ("group", "names")
    else:
        # Row names written by pandas ("Unnamed: 0") or R (an empty header) are no data.
        named = [c for c in columns if c and not c.startswith("Unnamed:")]
        if len(named) == 2:
            found = (named[0], named[1])
        else:
            # One row per cluster, as CASSIA reads it: the names in the first column, the
            # genes in the one column of comma-separated lists; the rest is ignored.
            cluster = celltype_column or next((c for c in named if c != gene_column_name), None)
            gene = gene_column_name or _gene_list_column(frame, [c for c in named if c != cluster])
            found = (cluster, gene)
    return celltype_column or found[0], gene_column_name or found[1]


def _gene_list_column(frame: pd.DataFrame, columns: list[str]) -> str | None:
    """Return the one column of ``columns`` holding gene lists; None when none does."""
    lists = [column for column in columns if _holds_gene_lists(frame[column])]
    if len(lists) > 1:
        raise MarkerError(
            f"Columns {lists} could each hold the comma-separated marker genes of each "
            f"cluster; name the one to use with gene_column_name=, e.g. "
            f"gene_column_name={lists[0]!r}."
        )
    return lists[0] if lists else None


def _holds_gene_lists(column: pd.Series) -> bool:
    """Return whether ``column`` reads as comma-separated gene names.

    Some value must hold a comma, and no name may hold a space (prose such as
    "cd8-positive, alpha-beta t cell" is not a gene list) or be only a number (as
    "1,5" with a decimal comma, or "1,234").
    """
    if column.dtype.kind in "biufcmM":
        return False
    text = column[column.notna()].astype(str)
    if not text.str.contains(",", regex=False).any():
        return False
    tokens = text.str.split(",").explode().str.strip()
    tokens = tokens[tokens != ""]
    return not tokens.str.contains(r"\s").any() and not tokens.str.fullmatch(_NUMBER).all()


def _table_statistics(frame: pd.DataFrame) -> pd.DataFrame:
    """Canonical statistic columns from whichever Seurat or Scanpy columns the table has."""
    stats = {}
    for source, canonical in (_SEURAT_STATS | _SCANPY_STATS).items():
        if source in frame.columns and canonical not in stats:
            stats[canonical] = _numeric(frame[source], source)
    if "log2fc" not in stats and _SEURAT_V3_LOGFC in frame.columns:
        stats["log2fc"] = _numeric(frame[_SEURAT_V3_LOGFC], _SEURAT_V3_LOGFC) / math.log(2)
    return pd.DataFrame(stats, index=frame.index)


def _numeric(column: pd.Series, name: str) -> np.ndarray:
    """Return a statistic's column as floats: NA and the like are missing, decimal commas read."""
    if column.dtype.kind in "biuf":
        return column.to_numpy(dtype=float)
    text = column.astype(object).where(column.notna(), "").astype(str).str.strip()
    text = text.where(~text.str.lower().isin(_EMPTY_TOKENS), "nan")
    commas = text.str.fullmatch(_DECIMAL_COMMA.pattern)
    if commas.any():  # "1,5" from a spreadsheet set to a language with decimal commas
        text = text.where(~commas, text.str.replace(",", ".", regex=False))
    values = pd.to_numeric(text, errors="coerce")
    bad = values.isna() & (text.str.lower() != "nan")
    if bad.any():
        examples = pd.unique(column[bad].astype(str))[:3].tolist()
        raise MarkerError(
            f"Column {name!r} of the marker table should be numeric, but holds {examples} "
            f"at {_rows(column.index[bad])}; fix those values or drop the column."
        )
    return values.to_numpy(dtype=float)


def _unique_row_names(clusters: pd.Series) -> pd.Series:
    """Each row of a gene-list table is its own cluster: number repeated names " (2)", " (3)"."""
    repeat = clusters.groupby(clusters, sort=False).cumcount()
    if not repeat.any():
        return clusters
    renamed = clusters.where(repeat == 0, clusters + " (" + (repeat + 1).astype(str) + ")")
    logger.warning(
        "Cluster names repeated on several rows were numbered to keep every row: %s.",
        renamed[repeat > 0].tolist(),
    )
    return renamed


def _explode_gene_lists(clusters: pd.Series, genes: pd.Series) -> pd.DataFrame:
    tokens = genes.fillna("").astype(str).str.split(",")
    long = pd.DataFrame({"cluster": clusters, "gene": tokens}).explode("gene")
    long["gene"] = long["gene"].astype(str).str.strip()
    return long[~long["gene"].str.lower().isin(_EMPTY_TOKENS)]


def _from_rank_genes_groups(
    adata: AnnData,
    *,
    key: str,
    groupby: str | None,
    gene_symbols: str | None,
    candidates_for: int | None,
    ranking: tuple[tuple[str, ...], bool] | None = None,
) -> pd.DataFrame:
    result = adata.uns.get(key)
    run = (
        f"sc.tl.rank_genes_groups(adata, {groupby!r})"
        if groupby
        else "sc.tl.rank_genes_groups(adata, groupby)"
    )
    if result is None:
        raise MarkerError(
            f"adata.uns[{key!r}] not found: run {run} first"
            + (f" (with key_added={key!r})" if key != Key.uns.markers else "")
            + ", or pass key= naming the result to use."
        )
    if not isinstance(result, Mapping) or "names" not in result:
        raise MarkerError(
            f"adata.uns[{key!r}] is not a sc.tl.rank_genes_groups result (it has no 'names'); "
            f"run {run}."
        )
    computed_for = result.get("params", {}).get("groupby")
    if groupby is not None and computed_for is not None and str(computed_for) != groupby:
        raise MarkerError(
            f"adata.uns[{key!r}] was computed for groupby={str(computed_for)!r}, not {groupby!r}: "
            f"run sc.tl.rank_genes_groups(adata, {groupby!r}, key_added=...) and pass that key."
        )

    names = result["names"]
    groups = list(names.dtype.names)
    if not groups:
        raise MarkerError(f"adata.uns[{key!r}] holds no groups.")
    genes_per_group = len(names)
    # genes x groups, as the result stores them; only the kept rows are ever flattened.
    matrices = {
        canonical: _by_gene_and_group(result[field], groups)
        for field, canonical in _RANK_GENES_GROUPS_STATS.items()
        if field in result
    }
    position = np.arange(genes_per_group)[:, None]
    if candidates_for is None:
        keep = np.ones((genes_per_group, len(groups)), dtype=bool)
        return _canonical_table(adata, result, groups, names, matrices, keep, gene_symbols)

    # Rows failing a filter can only be chosen among the first rows of their group (the
    # fallback when nothing passes): the first `candidates_for` distinct genes. With a
    # ranking, passing rows can only be chosen among the best ranked. Every other row is
    # dropped here, before the costly gene lookups.
    passing = _passing_filters(matrices, (genes_per_group, len(groups)))
    has = set(matrices) | {
        c for f, c in (("pts", "pct_in"), ("pts_rest", "pct_out")) if result.get(f) is not None
    }
    candidates = None
    if ranking is not None:
        candidates = _ranked_candidates(matrices, has, passing, ranking, candidates_for)
    chosen_from = passing if candidates is None else candidates.copy()
    first_rows = np.full(len(groups), candidates_for)
    while True:
        first = position < first_rows
        keep = chosen_from | first
        table = _canonical_table(adata, result, groups, names, matrices, keep, gene_symbols)
        in_table = keep.T
        # Too few distinct genes among the first rows (genes repeat): take more of them.
        few_first = _short_groups(table, first.T[in_table], False, len(groups), candidates_for)
        few_first &= first_rows < genes_per_group
        # Too few distinct passing genes among the best ranked (the fraction filter, the
        # dedup): the group is read again with every row that passes.
        short = np.zeros(len(groups), dtype=bool)
        if candidates is not None:
            is_candidate = chosen_from.T[in_table]
            short = _short_groups(table, is_candidate, True, len(groups), candidates_for)
            short &= (passing & ~chosen_from).any(axis=0)
        if not (few_first.any() or short.any()):
            return table
        first_rows[few_first] *= 2
        chosen_from[:, short] = passing[:, short]


def _by_gene_and_group(records: np.ndarray, groups: list[str]) -> np.ndarray:
    """Return a genes x groups record array of numbers as one float matrix."""
    try:  # one block of one dtype, the usual case: a view, then one conversion
        matrix = recfunctions.structured_to_unstructured(records[groups])
    except (TypeError, ValueError):
        matrix = np.column_stack([np.asarray(records[g]) for g in groups])
    return np.asarray(matrix, dtype=float)


def _ranked_candidates(
    matrices: Mapping[str, np.ndarray],
    columns: set[str],
    passing: np.ndarray,
    ranking: tuple[tuple[str, ...], bool],
    n: int,
) -> np.ndarray | None:
    """Return about the first ``3 n`` passing rows of each group by rank, ties included.

    Rows outside rank after all of these, so the top ``n`` are among them whenever
    ``n`` distinct genes of them pass every filter; None when the ranking statistic is
    only known after the fraction lookup (``pct_diff`` with ``pts``).
    """
    needs, ascending = ranking
    if all(c in matrices for c in needs):
        # The keys of select_markers, in place (15 M values: each pass over them counts).
        keys = matrices[needs[0]].copy()
        if len(needs) == 2:
            keys -= matrices[needs[1]]
        if not ascending:
            np.negative(keys, out=keys)
        keys[np.isnan(keys)] = np.inf
    elif all(c in columns for c in needs):
        return None
    else:  # select_markers falls back to the source's order: rank by position
        keys = np.repeat(np.arange(passing.shape[0], dtype=float)[:, None], passing.shape[1], 1)
    keys[~passing] = np.inf
    rows = passing.shape[0]
    m = min(3 * n, rows)
    # Any cutoff is right (rows above it rank after all below); a strided sample's
    # quantile, about the m-th key, costs a tenth of a partition of every row.
    step = max(1, rows // (20 * m))
    j = min(-(-m // step), len(range(0, rows, step)))
    cutoff = np.partition(keys[::step], j - 1, axis=0)[j - 1]
    return passing & (keys <= cutoff)


def _short_groups(
    table: pd.DataFrame, rows: np.ndarray, passing: bool, n_groups: int, n: int
) -> np.ndarray:
    """Return the groups with fewer than ``n`` distinct genes among ``rows`` of ``table``.

    With ``passing``, only the rows that pass every filter count.
    """
    if passing:
        rows = rows & _passing_filters(table, len(table))
    genes = table["gene"].cat.codes.to_numpy().astype(np.int64)[rows]
    clusters = table["cluster"].cat.codes.to_numpy().astype(np.int64)[rows]
    width = int(genes.max(initial=0)) + 1
    pairs = np.unique(clusters * width + genes)  # one per distinct (group, gene)
    return np.bincount(pairs // width, minlength=n_groups) < n


def _canonical_table(
    adata: AnnData,
    result: Mapping,
    groups: list[str],
    names: np.ndarray,
    matrices: Mapping[str, np.ndarray],
    keep: np.ndarray,
    gene_symbols: str | None,
) -> pd.DataFrame:
    """Build the canonical table of the rows ``keep`` (genes x groups) marks, group by group."""
    cluster_codes, rows = np.nonzero(keep.T)  # group after group, rows in source order
    stats = {canonical: values[rows, cluster_codes] for canonical, values in matrices.items()}
    bounds = np.searchsorted(cluster_codes, np.arange(len(groups) + 1))
    kept_names = np.concatenate(
        [
            np.asarray(names[g], dtype=object)[rows[start:stop]]
            for g, start, stop in zip(groups, bounds[:-1], bounds[1:], strict=True)
        ]
    )

    pts = result.get("pts")
    universe = _gene_universe(adata, result, pts)
    gene_codes = universe.get_indexer(kept_names)  # the one per-gene cost: a hash lookup
    unknown = gene_codes < 0
    if unknown.any():  # names no longer in var (e.g. genes removed since): keep them as they are
        extra = pd.Index(pd.unique(kept_names[unknown]))
        gene_codes[unknown] = len(universe) + extra.get_indexer(kept_names[unknown])
        universe = universe.append(extra)

    labels = _gene_labels(adata, universe, gene_symbols, use_raw=_used_raw(adata, result))
    label_values, label_codes = np.unique(labels, return_inverse=True)
    table = {
        "cluster": pd.Categorical.from_codes(cluster_codes, categories=groups),
        "gene": pd.Categorical.from_codes(label_codes[gene_codes], categories=label_values),
        **stats,
    }
    for field, canonical in (("pts", "pct_in"), ("pts_rest", "pct_out")):
        if result.get(field) is not None:
            table[canonical] = _lookup_fractions(
                result[field], groups, cluster_codes, gene_codes, universe
            )
    return pd.DataFrame(table, copy=False)  # the columns are ours already: no second copy


def _lookup_fractions(
    frame: pd.DataFrame,
    groups: list[str],
    cluster_codes: np.ndarray,
    gene_codes: np.ndarray,
    universe: pd.Index,
) -> np.ndarray:
    """Values of a genes x groups frame (``pts``), one per row of the canonical table."""
    if list(frame.columns) != groups:
        frame = frame.reindex(columns=groups)
    # A one-dtype frame is one block: a view, indexed at the kept rows only, never copied.
    by_gene = frame.to_numpy(dtype=float)
    index = frame.index.astype(str)
    if index.equals(universe[: len(index)]):  # the usual case: pts is where the universe came from
        rows = np.where(gene_codes < len(index), gene_codes, -1)
    else:
        rows = index.get_indexer(universe)[gene_codes]
    values = by_gene[np.maximum(rows, 0), cluster_codes]
    return np.where(rows >= 0, values, np.nan)


def _used_raw(adata: AnnData, result: Mapping) -> bool:
    use_raw = result.get("params", {}).get("use_raw", False)
    return bool(np.asarray(use_raw).any()) and adata.raw is not None


def _gene_universe(adata: AnnData, result: Mapping, pts: pd.DataFrame | None) -> pd.Index:
    if pts is not None:
        return pd.Index(pts.index.astype(str))
    if _used_raw(adata, result):
        return pd.Index(adata.raw.var_names.astype(str))
    return pd.Index(adata.var_names.astype(str))


def _gene_labels(
    adata: AnnData, universe: pd.Index, gene_symbols: str | None, *, use_raw: bool
) -> np.ndarray:
    """Names to show for the genes of ``universe``: their symbols when asked for."""
    ids = universe.to_numpy(dtype=object)
    if gene_symbols is None:
        return ids.astype(str)
    sources = [adata.raw.var, adata.var] if use_raw else [adata.var]
    columns = [var[gene_symbols] for var in sources if gene_symbols in var.columns]
    if not columns:
        raise MarkerError(
            f"gene_symbols={gene_symbols!r} is not a column of adata.var; "
            f"it has {list(adata.var.columns)}."
        )
    symbols = pd.concat(columns)
    symbols = symbols[~symbols.index.duplicated()].reindex(universe)
    symbols = symbols.astype(object).where(
        symbols.notna() & (symbols.astype(str).str.strip() != "")
    )
    return np.where(symbols.isna().to_numpy(), ids, symbols.to_numpy(dtype=object)).astype(str)


def _finish(table: pd.DataFrame, cluster_order: np.ndarray) -> pd.DataFrame:
    """Order clusters as in the input, keep each cluster's rows together, check none is empty."""
    table = table.reset_index(drop=True)
    table["cluster"] = pd.Categorical(table["cluster"], categories=[str(c) for c in cluster_order])
    counts = table["cluster"].value_counts(sort=False)
    empty = counts.index[counts.to_numpy() == 0].tolist()
    if empty:
        raise MarkerError(f"Clusters {empty} have no marker genes; give them genes or drop them.")
    table["gene"] = table["gene"].astype("category")
    order = np.argsort(table["cluster"].cat.codes.to_numpy(), kind="stable")
    return table.iloc[order].reset_index(drop=True)


# --------------------------------------------------------------------------- selecting


def select_markers(
    table: pd.DataFrame,
    *,
    n_genes: int = Default.n_genes,
    ranking_method: RankingMethod = Default.ranking_method,
    ascending: bool | None = None,
) -> pd.DataFrame:
    """Filter, rank and cut the canonical table to each cluster's top markers.

    Parameters
    ----------
    table
        The canonical table from :func:`read_markers`.
    n_genes, ranking_method, ascending
        As in :func:`top_markers`.

    Returns
    -------
    pandas.DataFrame
        The chosen rows of ``table``, each cluster's in rank order, clusters in input order.

    Examples
    --------
    >>> import cassia_sc
    >>> table = cassia_sc.read_markers(cassia_sc.loadmarker("pbmc68k_unprocessed"))
    >>> top = cassia_sc.select_markers(table, n_genes=5, ranking_method="pct_diff")
    >>> int(top.groupby("cluster", observed=True).size().max())
    5
    """
    if ranking_method not in RANKING_METHODS:
        raise MarkerError(
            f"Unknown ranking_method {ranking_method!r}; choose one of {list(RANKING_METHODS)}."
        )
    n_genes = _checked_n_genes(n_genes)
    needs, default_ascending = RANKING_METHODS[ranking_method]
    keys = _ranking_keys(table, needs, default_ascending if ascending is None else ascending)
    if keys is None:
        level = logging.WARNING if any(c in table.columns for c in STAT_COLUMNS) else logging.INFO
        logger.log(
            level,
            "ranking_method=%r needs %s, which these markers lack; using the source's own order.",
            ranking_method,
            " and ".join(needs),
        )

    passing = _passing_filters(table, len(table))
    genes = table["gene"].cat.codes.to_numpy()
    bounds = np.searchsorted(
        table["cluster"].cat.codes.to_numpy(), np.arange(len(table["cluster"].cat.categories) + 1)
    )
    chosen, unfiltered = [], []
    for cluster, start, stop in zip(
        table["cluster"].cat.categories, bounds[:-1], bounds[1:], strict=True
    ):
        rows = np.arange(start, stop)
        keep = rows[passing[start:stop]]
        if keep.size == 0:
            unfiltered.append(cluster)
            chosen.append(_first_unique(genes, rows)[:n_genes])
        elif keys is None:
            chosen.append(_first_unique(genes, keep)[:n_genes])
        else:
            chosen.append(keep[_top_unique(genes[keep], keys[keep], n_genes)])
    if unfiltered:
        logger.warning(
            "No gene of clusters %s passes the filters (adjusted p < %s, log2FC > %s, "
            "fraction in cluster > %s); using their top genes in the source's own order.",
            unfiltered,
            MAX_PVAL_ADJ,
            MIN_LOG2FC,
            MIN_PCT_IN,
        )
    return table.iloc[np.concatenate(chosen)].reset_index(drop=True)


def _checked_n_genes(n_genes: int) -> int:
    if isinstance(n_genes, bool) or not isinstance(n_genes, int | np.integer) or n_genes < 1:
        raise MarkerError(f"n_genes must be a positive integer, not {n_genes!r}.")
    return int(n_genes)


def _ranking_keys(
    table: pd.DataFrame, needs: tuple[str, ...], ascending: bool
) -> np.ndarray | None:
    """Sort keys, smallest first, with missing values last; None when a statistic is absent."""
    if not all(column in table.columns for column in needs):
        return None
    values = table[needs[0]].to_numpy(dtype=float)
    if len(needs) == 2:
        values = values - table[needs[1]].to_numpy(dtype=float)
    keys = values if ascending else -values
    return np.where(np.isnan(keys), np.inf, keys)


def _passing_filters(columns: Mapping | pd.DataFrame, n_rows: int | tuple[int, int]) -> np.ndarray:
    """Rows that pass CASSIA's filters, each applied only where ``columns`` has its statistic."""
    passing = np.ones(n_rows, dtype=bool)
    with np.errstate(invalid="ignore"):
        for column, passes in _FILTERS.items():
            if column in columns:
                passing &= passes(np.asarray(columns[column], dtype=float))
    return passing


def _first_unique(genes: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """``positions`` without those whose gene already appeared earlier in it."""
    _, first = np.unique(genes[positions], return_index=True)
    return positions[np.sort(first)]


def _top_unique(genes: np.ndarray, keys: np.ndarray, n: int) -> np.ndarray:
    """Positions of the ``n`` smallest keys (ties by position) with one position per gene."""
    if keys.size > 4 * n:
        # Cheap path: only the keys up to the n-th smallest can make the cut.
        cutoff = np.partition(keys, n - 1)[n - 1]
        candidates = np.flatnonzero(keys <= cutoff)
        ranked = _first_unique(genes, candidates[np.argsort(keys[candidates], kind="stable")])
        if ranked.size >= n:
            return ranked[:n]
    return _first_unique(genes, np.argsort(keys, kind="stable"))[:n]
