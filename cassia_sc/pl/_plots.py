"""Plots of ``tl.annotate`` results: labels on an embedding, their markers, and a review.

Scanpy and pyplot are imported when a plot is drawn, not with the package: the
``cassia-sc`` command never plots, and importing them costs it a second and 150 MB.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ..errors import CassiaError
from ..results import _split
from ..tl._annotate import annotation_record

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _finish(fig: Figure, ax: Axes, *, show: bool | None, return_fig: bool | None):
    import matplotlib.pyplot as plt
    import scanpy as sc

    if return_fig:
        return fig
    if show is None:
        show = sc.settings.autoshow
    if show:
        plt.show()
        return None
    return ax


def annotations(
    adata: AnnData,
    *,
    basis: str = "umap",
    key: str = "cassia",
    label: str = "celltype",
    legend_loc: str | None = "right margin",
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool | None = None,
    **kwargs: Any,
) -> Axes | Figure | None:
    """Plot the cell-type labels on an embedding, over :func:`scanpy.pl.embedding`.

    Parameters
    ----------
    adata
        Data annotated by :func:`cassia_sc.tl.annotate`.
    basis
        Embedding in ``adata.obsm[f"X_{basis}"]``, e.g. ``"umap"``.
    key
        The ``key_added`` of the annotation.
    label
        ``"celltype"`` (main cell type) or ``"subtype"``.
    legend_loc
        As in :func:`scanpy.pl.embedding`: ``"right margin"``, ``"on data"`` or None.
    ax, show, return_fig
        As in :func:`scanpy.pl.embedding`.
    **kwargs
        Passed on to :func:`scanpy.pl.embedding` (``title``, ``palette``, ``size``, ...).

    Returns
    -------
    matplotlib.axes.Axes, matplotlib.figure.Figure or None
        The axes when ``show=False``, the figure when ``return_fig=True``.

    Examples
    --------
    >>> import cassia_sc
    >>> cassia_sc.pl.annotations(adata, basis="umap", show=False)  # doctest: +SKIP
    """
    import scanpy as sc

    column = f"{key}_{label}"
    if column not in adata.obs.columns:
        raise CassiaError(
            f"adata.obs has no {column!r} column: run cassia_sc.tl.annotate(adata, ..., "
            f"key_added={key!r}) first (label is 'celltype' or 'subtype')."
        )
    if f"X_{basis}" not in adata.obsm:
        raise CassiaError(
            f"adata.obsm has no 'X_{basis}': compute it first (e.g. sc.tl.{basis}(adata)) "
            f"or choose basis= among {[k.removeprefix('X_') for k in adata.obsm]}."
        )
    kwargs.setdefault("title", f"{key}: {label.replace('celltype', 'cell type')}")
    return sc.pl.embedding(
        adata,
        basis=basis,
        color=column,
        legend_loc=legend_loc,
        ax=ax,
        show=show,
        return_fig=return_fig,
        **kwargs,
    )


def markers(
    adata: AnnData,
    *,
    key: str = "cassia",
    n_genes: int = 3,
    groupby: str | None = None,
    use_raw: bool | None = None,
    gene_symbols: str | None = None,
    show: bool | None = None,
    return_fig: bool | None = None,
    **kwargs: Any,
):
    """Dot plot of the markers each label rests on, across the clusters.

    For every annotated cluster, up to ``n_genes`` of the key markers the model cited
    (those in the cluster's marker list and in the data), grouped under the cluster's
    cell type; one row per cluster.

    Parameters
    ----------
    adata
        Data annotated by :func:`cassia_sc.tl.annotate`.
    key
        The ``key_added`` of the annotation.
    n_genes
        Key markers shown per cell type.
    groupby
        Rows of the plot; by default the clusters the annotation was made for.
    use_raw, gene_symbols
        As in :func:`scanpy.pl.dotplot`.
    show, return_fig
        As in :func:`scanpy.pl.dotplot`.
    **kwargs
        Passed on to :func:`scanpy.pl.dotplot`.

    Returns
    -------
    dict, scanpy.pl.DotPlot or None
        The axes when ``show=False``, the :class:`~scanpy.pl.DotPlot` when
        ``return_fig=True``.

    Examples
    --------
    >>> import cassia_sc
    >>> cassia_sc.pl.markers(adata, n_genes=2, show=False)  # doctest: +SKIP
    """
    import scanpy as sc

    record = annotation_record(adata, key)
    groupby = groupby or record["params"]["groupby"]
    known = _gene_lookup(adata, use_raw=use_raw, gene_symbols=gene_symbols)
    by_label: dict[str, list[str]] = {}
    table = record["results"]
    for row in table[table["status"] == "ok"].itertuples():
        unsupported = {g.upper() for g in _split(row.unsupported_markers)}
        genes = by_label.setdefault(row.main_cell_type, [])
        for gene in _split(row.key_markers):
            name = known.get(gene.upper())
            if (
                name
                and gene.upper() not in unsupported
                and name not in genes
                and len(genes) < n_genes
            ):
                genes.append(name)
    var_names = {label: genes for label, genes in by_label.items() if genes}
    if not var_names:
        raise CassiaError(f"No key marker of adata.uns[{key!r}] is among the genes of adata.")
    return sc.pl.dotplot(
        adata,
        var_names,
        groupby,
        use_raw=use_raw,
        gene_symbols=gene_symbols,
        show=show,
        return_fig=return_fig,
        **kwargs,
    )


def _gene_lookup(
    adata: AnnData, *, use_raw: bool | None, gene_symbols: str | None
) -> dict[str, str]:
    """Upper-case gene name -> the name as the data spells it (models change the case)."""
    raw = adata.raw is not None and use_raw is not False
    var = adata.raw.var if raw else adata.var
    names = var[gene_symbols] if gene_symbols else var.index.to_series()
    return {str(n).upper(): str(n) for n in names.dropna()}


# Review cells: -1 does not apply, 0 fine, 1 worth a look, 2 a problem.
_REVIEW_COLOURS = ["#eeeeee", "#d7eedb", "#ffe7a8", "#f6b3b3"]


def review(
    adata: AnnData,
    *,
    key: str = "cassia",
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool | None = None,
) -> Axes | Figure | None:
    """Show at a glance which clusters need a look.

    One row per cluster, labelled with its cell type; columns for the annotation's
    status (failed or not run), the validator's verdict, key markers cited but not in the
    cluster's list, revision rounds and, after repeated runs, the share of runs agreeing
    (red below the threshold: flagged for review). Green is fine, yellow worth a look,
    red a problem.

    Parameters
    ----------
    adata
        Data annotated by :func:`cassia_sc.tl.annotate`.
    key
        The ``key_added`` of the annotation.
    ax
        Axes to draw on; a new figure when None.
    show, return_fig
        As in Scanpy's plotting functions.

    Returns
    -------
    matplotlib.axes.Axes, matplotlib.figure.Figure or None
        The axes when ``show=False``, the figure when ``return_fig=True``.

    Examples
    --------
    >>> import cassia_sc
    >>> cassia_sc.pl.review(adata, show=False)  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    record = annotation_record(adata, key)
    table = record["results"]
    repeated = "uncertainty" in record
    threshold = record["params"].get("agreement_threshold", 0.6) if repeated else None
    cells, texts = review_grid(table, agreement_threshold=threshold)
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 0.6 + 0.32 * len(table)))
    fig = ax.figure
    ax.imshow(cells, cmap=ListedColormap(_REVIEW_COLOURS), vmin=-1, vmax=2, aspect="auto")
    for (row, column), text in np.ndenumerate(texts):
        ax.text(column, row, text, ha="center", va="center", fontsize=8)
    columns = [*REVIEW_COLUMNS, AGREEMENT_COLUMN][: cells.shape[1]]
    ax.set_xticks(range(cells.shape[1]), columns, fontsize=9)
    ax.xaxis.tick_top()
    labels = [
        f"{c}: {t}" if t else f"{c}: —"
        for c, t in zip(table["cluster"], table["main_cell_type"], strict=True)
    ]
    ax.set_yticks(range(len(table)), labels, fontsize=8)
    ax.set_xticks(np.arange(-0.5, cells.shape[1]), minor=True)
    ax.set_yticks(np.arange(-0.5, len(table)), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    ax.set_title(f"{key}: clusters to review", loc="left", fontsize=10, pad=22)
    return _finish(fig, ax, show=show, return_fig=return_fig)


REVIEW_COLUMNS = ("status", "validation", "unsupported markers", "rounds")
AGREEMENT_COLUMN = "agreement"


def review_grid(
    table: pd.DataFrame, *, agreement_threshold: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return the severity and text of each review cell, per cluster and check.

    Severity: -1 does not apply (a cluster without an answer), 0 fine, 1 worth a look,
    2 a problem.

    Parameters
    ----------
    table
        ``uns[key_added]["results"]``.
    agreement_threshold
        With repeated runs: add an ``agreement`` column, a problem below this share.

    Returns
    -------
    tuple of numpy.ndarray
        Severities and texts, clusters x :data:`REVIEW_COLUMNS` (plus ``agreement``).

    Examples
    --------
    >>> import pandas as pd
    >>> row = {"status": "ok", "validation": "passed", "unsupported_markers": "",
    ...        "iterations": 1, "agreement": 1 / 3}
    >>> severity, text = review_grid(pd.DataFrame([row]), agreement_threshold=0.6)
    >>> severity.tolist(), text[0, -1]
    ([[0, 0, 0, 0, 2]], '33 %')
    """
    with_agreement = agreement_threshold is not None
    width = len(REVIEW_COLUMNS) + with_agreement
    severity = np.zeros((len(table), width), dtype=int)
    text = np.empty(severity.shape, dtype=object)
    for i, row in enumerate(table.itertuples()):
        if row.status != "ok":
            severity[i] = [1 if row.status == "not_run" else 2] + [-1] * (width - 1)
            text[i] = [row.status] + ["—"] * (width - 1)
            continue
        unsupported = _split(row.unsupported_markers)
        severity[i, :4] = [
            0,
            {"passed": 0, "unknown": 1}.get(row.validation, 2),
            2 if unsupported else 0,
            1 if row.iterations > 1 else 0,
        ]
        text[i, :4] = [
            row.status,
            row.validation,
            ", ".join(unsupported) or "none",
            str(row.iterations),
        ]
        if with_agreement:
            severity[i, 4] = 2 if row.agreement < agreement_threshold else 0
            text[i, 4] = f"{row.agreement:.0%}".replace("%", " %")
    return severity, text


def evaluation(
    adata: AnnData,
    *,
    key: str = "cassia",
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool | None = None,
) -> Axes | Figure | None:
    """Plot each cluster's evaluation score: full (1), partial (0.5) or wrong (0).

    Parameters
    ----------
    adata
        Data evaluated by :func:`cassia_sc.tl.evaluate`.
    key
        The ``key_added`` of the annotation.
    ax
        Axes to draw on; a new figure when None.
    show, return_fig
        As in Scanpy's plotting functions.

    Returns
    -------
    matplotlib.axes.Axes, matplotlib.figure.Figure or None
        The axes when ``show=False``, the figure when ``return_fig=True``.

    Examples
    --------
    >>> import cassia_sc
    >>> cassia_sc.tl.evaluate(adata, "bulk_labels")  # doctest: +SKIP
    >>> cassia_sc.pl.evaluation(adata, show=False)  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    record = annotation_record(adata, key)
    if "evaluation" not in record:
        raise CassiaError(
            f"adata.uns[{key!r}] has no evaluation: run cassia_sc.tl.evaluate(adata, truth_key, "
            f"key={key!r}) first."
        )
    evaluation = record["evaluation"]
    table = evaluation["table"]
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 0.6 + 0.32 * len(table)))
    colours = [_EVALUATION_COLOURS[g] for g in table["grade"]]
    rows = np.arange(len(table))
    ax.barh(rows, np.maximum(table["score"].to_numpy(dtype=float), 0.02), color=colours)
    labels = [
        f"{c}: {p or '—'} (truth: {t})"
        for c, p, t in zip(table["cluster"], table["predicted"], table["truth"], strict=True)
    ]
    ax.set_yticks(rows, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_xticks([0, 0.5, 1], ["wrong", "partial", "full"])
    ax.set_title(
        f"{key}: mean score {evaluation['mean']:.2f} ({evaluation['full']} full, "
        f"{evaluation['partial']} partial, {evaluation['wrong']} wrong)",
        loc="left",
        fontsize=10,
    )
    return _finish(ax.figure, ax, show=show, return_fig=return_fig)


_EVALUATION_COLOURS = {"full": "#4c9a5f", "partial": "#e0b13a", "wrong": "#c8504b"}
