"""Plots of ``tl.annotate`` results: labels on an embedding, their markers, and a review.

Scanpy and pyplot are imported when a plot is drawn, not with the package: the
``cassia-sc`` command never plots, and importing them costs it a second and 150 MB.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._docs import fill_docs
from .._keys import Default, Key
from ..errors import CassiaError
from ..fields import CORE_FIELDS, Field, split_list
from ..get import annotation_record
from ..get import fields as declared_fields

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

logger = logging.getLogger("cassia_sc")


def _finish(
    fig: Figure,
    drawn: Any,
    *,
    show: bool | None,
    return_fig: bool | None,
    save: bool | str | None = None,
    writekey: str | None = None,
):
    """Return what a plot function returns, after showing or saving ``fig`` as Scanpy would.

    With a ``writekey``, ``save`` (or Scanpy's ``autosave``) writes the figure where
    Scanpy's own plots write theirs (see :func:`_save_as_scanpy`); a saved figure that is
    not shown is closed, so that a notebook does not show it again.
    """
    import matplotlib.pyplot as plt
    import scanpy as sc

    if return_fig:
        return fig
    show = sc.settings.autoshow if show is None else show
    save = sc.settings.autosave if save is None else save
    if save and writekey is not None:
        _save_as_scanpy(fig, writekey, save)
    if show:
        plt.show()
        return None
    if save and writekey is not None:
        plt.close(fig)
    return drawn


#: The formats a ``save`` name may end with (Scanpy's own list).
_FIGURE_FORMATS = (".svg", ".pdf", ".png")


def _save_as_scanpy(fig: Figure, writekey: str, save: bool | str) -> Path:
    """Write ``fig`` to ``sc.settings.figdir / f"{writekey}{save}"``, as Scanpy's plots do.

    ``save=True`` writes ``{writekey}.{file_format_figs}``; a ``save`` ending in a format's
    extension keeps that format. Done here rather than through Scanpy's private helper,
    which Scanpy 1.12 deprecates along with its plots' ``save``.
    """
    import scanpy as sc

    name = "" if save is True else str(save)
    ext = sc.settings.file_format_figs
    for known in _FIGURE_FORMATS:
        if name.endswith(known):
            name, ext = name.removesuffix(known), known[1:]
            break
    figdir = Path(sc.settings.figdir)
    figdir.mkdir(parents=True, exist_ok=True)
    path = figdir / f"{writekey}{name}{sc.settings.plot_suffix}.{ext}"
    logger.info("Saving the figure to %s.", path)
    fig.savefig(path, bbox_inches="tight")
    return path


@fill_docs
def annotations(
    adata: AnnData,
    *,
    basis: str = Default.basis,
    key: str = Default.key_added,
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
    {annotated}
    {basis}
    {key_read}
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

    column = Key.obs.label(key, label)
    if column not in adata.obs.columns:
        raise CassiaError(
            f"adata.obs has no {column!r} column: run cassia_sc.tl.annotate(adata, ..., "
            f"key_added={key!r}) first (label is 'celltype' or 'subtype')."
        )
    if Key.obsm.basis(basis) not in adata.obsm:
        raise CassiaError(
            f"adata.obsm has no {Key.obsm.basis(basis)!r}: compute it first "
            f"(e.g. sc.tl.{basis}(adata)) or choose basis= among "
            f"{[k.removeprefix('X_') for k in adata.obsm]}."
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


@fill_docs
def markers(
    adata: AnnData,
    *,
    key: str = Default.key_added,
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
    {annotated}
    {key_read}
    n_genes
        Key markers shown per cell type.
    groupby
        Rows of the plot; by default the clusters the annotation was made for.
    use_raw, gene_symbols
        As in :func:`scanpy.pl.dotplot`.
    show, return_fig
        As in :func:`scanpy.pl.dotplot`; the rows are titled with the clusters' column
        when this function draws the plot (not on a returned, undrawn
        :class:`~scanpy.pl.DotPlot`).
    **kwargs
        Passed on to :func:`scanpy.pl.dotplot` (``swap_axes``, ``cmap``, ...), but
        ``save``, which writes ``dotplot_{save}`` to ``sc.settings.figdir`` as Scanpy's
        dotplot would (see :func:`review`).

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
    groupby = groupby or record[Key.uns.params]["groupby"]
    known = _gene_lookup(adata, use_raw=use_raw, gene_symbols=gene_symbols)
    by_label: dict[str, list[str]] = {}
    table = record[Key.uns.results]
    answered = table[table["status"] == "ok"]
    if answered.empty:
        raise CassiaError(
            "No labels to show: every cluster failed (see the status and error columns of "
            f"adata.uns[{key!r}]['results'])."
        )
    for row in answered.itertuples():
        unsupported = {g.upper() for g in split_list(row.unsupported_markers)}
        genes = by_label.setdefault(row.main_cell_type, [])
        for gene in split_list(row.key_markers):
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
    save = kwargs.pop("save", None)
    dot = sc.pl.dotplot(
        adata,
        var_names,
        groupby,
        use_raw=use_raw,
        gene_symbols=gene_symbols,
        return_fig=True,
        **kwargs,
    )
    if return_fig:
        return dot
    # Drawn here rather than by dotplot, to name the rows: each cluster, by its own name.
    axes = dot.get_axes()
    rows = f"cluster ({groupby})"
    if kwargs.get("swap_axes"):
        axes["mainplot_ax"].set_xlabel(rows)
    else:
        axes["mainplot_ax"].set_ylabel(rows)
    return _finish(
        dot.fig,
        axes,
        show=show,
        return_fig=False,
        save=save,
        writekey=sc.pl.DotPlot.DEFAULT_SAVE_PREFIX,
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
#: The legend of the review, in the order shown: severity -> what it means.
_REVIEW_LEGEND = {0: "fine", 1: "worth a look", 2: "a problem", -1: "does not apply"}


@fill_docs
def review(
    adata: AnnData,
    *,
    key: str = Default.key_added,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool | None = None,
    save: bool | str | None = None,
) -> Axes | Figure | None:
    """Show at a glance which clusters need a look.

    One row per cluster, labelled with its cell type; a column per check that the
    annotation's fields declare: the status (failed or not run), the validator's verdict,
    key markers cited but not in the cluster's list, revision rounds, after repeated runs
    the share of runs agreeing (red below the threshold: flagged for review), and what
    further steps of the pipeline add. Green is fine, amber worth a look, red a problem,
    grey does not apply (a cluster without an answer); a legend says so.

    Parameters
    ----------
    {annotated}
    {key_read}
    {ax}
    {show}
    {return_fig}
    save
        As in Scanpy's plots: True writes ``review`` to ``sc.settings.figdir`` in
        ``sc.settings.file_format_figs``; a string is appended to the name, and its
        ``.png``, ``.pdf`` or ``.svg`` ending sets the format.

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
    from matplotlib.patches import Patch

    record = annotation_record(adata, key)
    table = record[Key.uns.results]
    titles, cells, texts = review_grid(
        table, params=record[Key.uns.params], declared=declared_fields(adata, key)
    )
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 0.6 + 0.32 * len(table)))
    fig = ax.figure
    ax.imshow(cells, cmap=ListedColormap(_REVIEW_COLOURS), vmin=-1, vmax=2, aspect="auto")
    for (row, column), text in np.ndenumerate(texts):
        ax.text(column, row, text, ha="center", va="center", fontsize=8)
    ax.set_xticks(range(cells.shape[1]), titles, fontsize=9)
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
    handles = [
        Patch(facecolor=_REVIEW_COLOURS[severity + 1], edgecolor="#999999", label=label)
        for severity, label in _REVIEW_LEGEND.items()
    ]
    # Below the grid: the check titles are on top.
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(0, -0.01),
        ncol=len(handles),
        frameon=False,
        fontsize=8,
    )
    return _finish(fig, ax, show=show, return_fig=return_fig, save=save, writekey="review")


def review_grid(
    table: pd.DataFrame,
    *,
    params: Mapping[str, Any] | None = None,
    declared: Sequence[Field] = CORE_FIELDS,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Return the titles, severity and text of each review cell, per cluster and check.

    The checks are the fields with a :class:`~cassia_sc.fields.Review`, in field order;
    one that applies only sometimes (agreement) is shown when a cluster has a value.
    Severity: -1 does not apply (a cluster without an answer), 0 fine, 1 worth a look,
    2 a problem.

    Parameters
    ----------
    table
        ``uns[key_added]["results"]``.
    params
        ``uns[key_added]["params"]`` (e.g. the agreement threshold).
    declared
        The annotation's fields.

    Returns
    -------
    tuple
        The column titles, then severities and texts as arrays, clusters x checks.

    Examples
    --------
    >>> import pandas as pd
    >>> row = {"status": "ok", "validation": "passed", "unsupported_markers": "",
    ...        "iterations": 1, "agreement": 1 / 3}
    >>> titles, severity, text = review_grid(
    ...     pd.DataFrame([row]), params={"agreement_threshold": 0.6})
    >>> titles[-1], severity.tolist(), text[0, -1]
    ('agreement', [[0, 0, 0, 0, 2]], '33 %')
    """
    checks = [
        f
        for f in declared
        if f.review is not None
        and f.name in table.columns
        and (f.review.always or _has_values(table[f.name]))
    ]
    severity = np.zeros((len(table), len(checks)), dtype=int)
    text = np.empty(severity.shape, dtype=object)
    for i, row in enumerate(table.to_dict("records")):
        if row["status"] != "ok":  # no answer to check: only its status applies
            severity[i] = [1 if row["status"] == "not_run" else 2] + [-1] * (len(checks) - 1)
            text[i] = [row["status"]] + ["—"] * (len(checks) - 1)
            continue
        for j, check in enumerate(checks):
            severity[i, j], text[i, j] = check.review.grade(row, params or {})
    return [c.review.title for c in checks], severity, text


def _has_values(column: pd.Series) -> bool:
    if column.dtype.kind in "biuf":
        return bool(column.notna().any())
    return bool((column.astype(str) != "").any())


@fill_docs
def evaluation(
    adata: AnnData,
    *,
    key: str = Default.key_added,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool | None = None,
) -> Axes | Figure | None:
    """Plot each cluster's evaluation score: full (1), partial (0.5) or wrong (0).

    Parameters
    ----------
    adata
        Data evaluated by :func:`cassia_sc.tl.evaluate`.
    {key_read}
    {ax}
    {show}
    {return_fig}

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
    if Key.uns.evaluation not in record:
        raise CassiaError(
            f"adata.uns[{key!r}] has no evaluation: run cassia_sc.tl.evaluate(adata, truth_key, "
            f"key={key!r}) first."
        )
    evaluation = record[Key.uns.evaluation]
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
        f"{key}: mean score {evaluation['mean']:.2f}"
        + (f", {evaluation['mean_100']:.0f} of 100" if "mean_100" in evaluation else "")
        + f" ({evaluation['full']} full, "
        f"{evaluation['partial']} partial, {evaluation['wrong']} wrong)",
        loc="left",
        fontsize=10,
    )
    return _finish(ax.figure, ax, show=show, return_fig=return_fig)


_EVALUATION_COLOURS = {"full": "#4c9a5f", "partial": "#e0b13a", "wrong": "#c8504b"}
