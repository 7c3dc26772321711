"""Plots of the label levels of ``tl.levels``: broad, detailed and very detailed cell types.

``pl.levels`` colours the embedding at each level side by side, ``pl.level_tree`` draws
the parent -> child tree of the labels with their cells, and ``level_counts`` is that tree
as a table. They read the ``obs`` columns ``{key}_celltype_broad``, ``_detailed`` and
``_very_detailed``, nothing else.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd
from anndata import AnnData

from .._docs import fill_docs
from .._keys import Default, Key
from ..errors import CassiaError
from ._plots import _finish

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: The levels, coarse to fine, and the ``obs`` column of each.
LEVELS: Final = ("broad", "detailed", "very_detailed")
_COLUMN: Final = {
    "broad": Key.obs.celltype_broad,
    "detailed": Key.obs.celltype_detailed,
    "very_detailed": Key.obs.celltype_very_detailed,
}
#: The label of cells that have no label at a level (their cluster has none).
UNASSIGNED: Final = "unassigned"
# Scanpy's na_color: cells without a label are grey in the panels, so in the tree too.
_NA_COLOUR: Final = "#d3d3d3"
# Labels whose parent is unassigned: a darker grey, for Scanpy fails when a label's
# colour is its na_color and some cells have no label.
_NO_LINEAGE: Final = "#969696"


def _columns(adata: AnnData, key: str, levels: Sequence[str]) -> list[str]:
    """Return the ``obs`` column of each level, or raise an error that says what to run."""
    if isinstance(levels, str) or not levels:
        raise CassiaError(f"levels= takes a sequence of levels among {list(LEVELS)}.")
    unknown = [level for level in levels if level not in LEVELS]
    if unknown or len(set(levels)) != len(levels):
        raise CassiaError(
            f"levels={list(levels)!r}: each level once, among {list(LEVELS)} (coarse to fine)."
        )
    columns = [_COLUMN[level](key) for level in levels]
    missing = [c for c in columns if c not in adata.obs.columns]
    if missing:
        raise CassiaError(
            f"adata.obs has no {', '.join(map(repr, missing))}: run cassia_sc.tl.levels on "
            f"the annotation {key!r} first, or choose levels= among those it made."
        )
    return columns


@fill_docs
def level_counts(
    adata: AnnData,
    *,
    key: str = Default.key_added,
    levels: Sequence[str] = LEVELS,
) -> pd.DataFrame:
    """Return the parent -> child tree of the labels with their cells, one row per label.

    Rows are in the tree's order: each broad label (most cells first), then its detailed
    labels, each followed by its very detailed ones. Cells without a label at a level
    (their cluster has none, or its annotation failed) are counted as ``"unassigned"`` at
    that level, so that the labels of each parent add up to its cells and those of the
    first level to all cells. A label none of whose cells has a finer label has no
    children. A label under two parents is a row under each.

    Parameters
    ----------
    adata
        Data with the levels of :func:`cassia_sc.tl.levels` in ``obs``.
    {key_read}
    levels
        The levels, coarse to fine, among ``"broad"``, ``"detailed"`` and
        ``"very_detailed"``.

    Returns
    -------
    pandas.DataFrame
        ``level`` (the row's level), one column per level (the row's label and those of
        its parents, empty below its level), ``n_cells`` and ``share`` (of all cells).

    Raises
    ------
    CassiaError
        When a level's column is missing: :func:`cassia_sc.tl.levels` makes them.

    Examples
    --------
    >>> import anndata as ad, pandas as pd
    >>> obs = pd.DataFrame({
    ...     "cassia_celltype_broad": ["T cell", "T cell", "T cell", "B cell", None],
    ...     "cassia_celltype_detailed": ["CD4+ T cell", "CD4+ T cell", None, None, None],
    ...     "cassia_celltype_very_detailed": [None] * 5,
    ... }, index=[f"cell{i}" for i in range(5)])
    >>> level_counts(ad.AnnData(obs=obs))
          level       broad     detailed very_detailed  n_cells  share
    0     broad      T cell                                   3    0.6
    1  detailed      T cell  CD4+ T cell                      2    0.4
    2  detailed      T cell   unassigned                      1    0.2
    3     broad      B cell                                   1    0.2
    4     broad  unassigned                                   1    0.2
    """
    levels = tuple(levels)
    columns = _columns(adata, key, levels)
    # The tree is built from the distinct label paths, not from the cells: a few rows.
    grouped = adata.obs[columns].groupby(columns, observed=True, dropna=False, sort=False)
    paths = grouped.size().rename("n_cells").reset_index()
    paths.columns = [*levels, "n_cells"]
    for level in levels:  # object, not categorical: "unassigned" is no category
        paths[level] = paths[level].astype(object).fillna(UNASSIGNED).astype(str)
    rows: list[dict[str, Any]] = []

    def walk(group: pd.DataFrame, depth: int, parents: dict[str, str]) -> None:
        level = levels[depth]
        counts = group.groupby(level, sort=False)["n_cells"].sum()
        order = sorted(counts.index, key=lambda label: (label == UNASSIGNED, -counts[label], label))
        for label in order:
            here = {**parents, level: label}
            path = {name: here.get(name, "") for name in levels}
            rows.append({"level": level, **path, "n_cells": int(counts[label])})
            children = group[group[level] == label]
            finer = list(levels[depth + 1 :])
            if finer and (children[finer] != UNASSIGNED).to_numpy().any():
                walk(children, depth + 1, here)

    walk(paths, 0, {})
    table = pd.DataFrame(rows, columns=["level", *levels, "n_cells"]).astype({"n_cells": int})
    table["share"] = table["n_cells"] / max(adata.n_obs, 1)
    return table


def _categories(values: pd.Series) -> list[str]:
    """Return the categories Scanpy gives a column: all of a categorical's, used or not."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return [str(c) for c in values.cat.categories]
    return [str(c) for c in pd.Categorical(values.dropna()).categories]


def _base_colours(adata: AnnData, column: str) -> dict[str, str]:
    """Return the colour of each first-level label, as Scanpy would colour its column."""
    import matplotlib as mpl
    import scanpy as sc
    from matplotlib.colors import to_hex

    categories = _categories(adata.obs[column])
    stored = adata.uns.get(f"{column}_colors")
    if stored is not None and len(stored) >= len(categories):
        colours = list(stored)  # the user's colours, or those of the last plot
    else:
        cycle = mpl.rcParams["axes.prop_cycle"].by_key().get("color", [])
        palettes = [cycle, sc.pl.palettes.default_20, sc.pl.palettes.default_28]
        palettes.append(sc.pl.palettes.default_102)
        colours = next((p for p in palettes if len(p) >= len(categories)), None)
        colours = colours or [_NO_LINEAGE] * len(categories)
    return {c: to_hex(colour) for c, colour in zip(categories, colours, strict=False)}


def _shades(colour: str, n: int) -> list[str]:
    """Return ``n`` shades of ``colour``, dark to light, turning its hue a little apart."""
    from matplotlib.colors import to_hex, to_rgb

    if n == 1:
        return [to_hex(colour)]
    hue, _, saturation = colorsys.rgb_to_hls(*to_rgb(colour))
    # Lightness tells siblings apart; a small turn of the hue helps in large lineages.
    reach = min(0.2, 0.1 * (n - 1))
    turn = min(0.01 * n, 0.05)
    return [
        to_hex(colorsys.hls_to_rgb((hue + h) % 1, lightness, saturation))
        for h, lightness in zip(
            np.linspace(-turn, turn, n), np.linspace(0.5 - reach, 0.5 + reach, n), strict=True
        )
    ]


@fill_docs
def level_colours(
    adata: AnnData,
    *,
    key: str = Default.key_added,
    levels: Sequence[str] = LEVELS,
) -> dict[str, dict[str, str]]:
    """Return the colour of each label at each level: children in shades of their lineage.

    The first level takes Scanpy's colours of its column (``adata.uns[f"{column}_colors"]``
    when set, else Scanpy's default palette). Each finer label takes a shade of the colour
    of its first-level ancestor, the lineage's labels of that level spread from dark to
    light in the tree's order, so that siblings sit next to each other and a label's
    children lie near its own shade. A label under two parents follows the one holding
    most of its cells. Cells without a label are light grey, as Scanpy draws them; labels
    whose parent is unassigned are in shades of a darker grey.

    Parameters
    ----------
    adata
        Data with the levels of :func:`cassia_sc.tl.levels` in ``obs``.
    {key_read}
    levels
        The levels, coarse to fine.

    Returns
    -------
    dict
        Level -> label -> hex colour; ``"unassigned"`` is grey.

    Examples
    --------
    >>> import anndata as ad, pandas as pd
    >>> obs = pd.DataFrame({
    ...     "cassia_celltype_broad": ["T cell", "T cell", "B cell"],
    ...     "cassia_celltype_detailed": ["CD4+ T cell", "CD8+ T cell", "B cell"],
    ...     "cassia_celltype_very_detailed": [None] * 3,
    ... }, index=["a", "b", "c"])
    >>> colours = level_colours(ad.AnnData(obs=obs), levels=("broad", "detailed"))
    >>> colours["broad"]["B cell"], colours["detailed"]["B cell"]
    ('#1f77b4', '#1f77b4')
    """
    levels = tuple(levels)
    table = level_counts(adata, key=key, levels=levels)
    return _colours(table, _base_colours(adata, _COLUMN[levels[0]](key)), levels)


def _colours(
    table: pd.DataFrame, base: dict[str, str], levels: Sequence[str]
) -> dict[str, dict[str, str]]:
    """Return :func:`level_colours` from :func:`level_counts` and the first level's colours."""
    colours: dict[str, dict[str, str]] = {levels[0]: dict(base)}
    for level in levels[1:]:
        rows = table[(table["level"] == level) & (table[level] != UNASSIGNED)]
        # A label under two parents follows the one holding most of its cells.
        main = rows.loc[rows.groupby(level, sort=False)["n_cells"].idxmax()].sort_index()
        colours[level] = {}
        for lineage, members in main.groupby(levels[0], sort=False):
            shades = _shades(base.get(str(lineage), _NO_LINEAGE), len(members))
            colours[level].update(zip(members[level], shades, strict=True))
    for level in levels:
        colours[level][UNASSIGNED] = _NA_COLOUR
    return colours


def _text_width(text: str, fontsize: float, *, weight: str = "normal") -> float:
    """Return the width of ``text`` in points, in the default font."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    prop = FontProperties(size=fontsize, weight=weight)
    return TextToPath().get_text_width_height_descent(text, prop, ismath=False)[0]


def _legend_columns(n_labels: int) -> int:
    """Return the columns of Scanpy's right-margin legend: one up to 14 labels, two to 30."""
    return 1 if n_labels <= 14 else 2 if n_labels <= 30 else 3


def _legend_width(labels: Sequence[str], fontsize: float) -> float:
    """Return the width in inches of Scanpy's right-margin legend of ``labels``."""
    if not labels:
        return 0.0
    # A marker and its gaps take about 2.8 font sizes per column, plus the borders.
    widest = max(_text_width(str(label), fontsize) for label in labels)
    return (_legend_columns(len(labels)) * (widest + 2.8 * fontsize) + fontsize) / 72


def _legend_in_tree_order(ax: Axes, order: Sequence[str]) -> None:
    """Redraw Scanpy's right-margin legend with its labels in ``order``, the others last."""
    handles, labels = ax.get_legend_handles_labels()
    fontsize = ax.get_legend().get_texts()[0].get_fontsize()
    rank = {label: i for i, label in enumerate(order)}
    pairs = sorted(zip(handles, labels, strict=True), key=lambda p: rank.get(p[1], len(rank)))
    # Scanpy's own placement, so that only the order changes.
    ax.legend(
        [h for h, _ in pairs],
        [label for _, label in pairs],
        frameon=False,
        loc="center left",
        bbox_to_anchor=(1, 0.5),
        ncol=_legend_columns(len(pairs)),
        fontsize=fontsize,
    )


@fill_docs
def levels(
    adata: AnnData,
    *,
    key: str = Default.key_added,
    basis: str = Default.basis,
    levels: Sequence[str] = LEVELS,
    legend_loc: str | None = "right margin",
    show: bool | None = None,
    return_fig: bool | None = None,
    **kwargs: Any,
) -> list[Axes] | Figure | None:
    """Plot the embedding coloured by the labels at each level, side by side.

    One panel per level, coarse to fine, each over :func:`scanpy.pl.embedding` with its
    own legend, whose labels are in the order of :func:`cassia_sc.pl.level_tree`: lineage
    by lineage, most cells first. Each finer label is drawn in a shade of its broad
    lineage's colour (see :func:`cassia_sc.pl.level_colours`), so a lineage keeps its hue
    from panel to panel and its subtypes are told apart by their shade; ``palette=``
    colours every panel instead. As Scanpy does, the colours are kept in
    ``adata.uns[f"{column}_colors"]``.
    Cells without a label at a level are grey (``NA``).

    The figure is as wide as the panels and their legends, laid out so that no legend
    reaches the next panel; with many labels, ``legend_loc="on data"`` writes them on
    their cells instead.

    Parameters
    ----------
    adata
        Data with the levels of :func:`cassia_sc.tl.levels` in ``obs``.
    {key_read}
    {basis}
    levels
        The levels drawn, coarse to fine, among ``"broad"``, ``"detailed"`` and
        ``"very_detailed"``.
    legend_loc
        As in :func:`scanpy.pl.embedding`: ``"right margin"``, ``"on data"`` or None.
    {show}
    return_fig
        Return the figure instead of the list of axes.
    **kwargs
        Passed on to :func:`scanpy.pl.embedding` (``size``, ``palette``, ``frameon``,
        ``legend_fontsize``, ...); ``title`` is one title per panel.

    Returns
    -------
    list of matplotlib.axes.Axes, matplotlib.figure.Figure or None
        The axes of the panels when ``show=False``, the figure when ``return_fig=True``.

    Raises
    ------
    CassiaError
        When a level's column or the embedding is missing.

    Examples
    --------
    >>> import cassia_sc
    >>> cassia_sc.pl.levels(adata, basis="umap", show=False)  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt
    import scanpy as sc

    chosen = tuple(levels)
    columns = _columns(adata, key, chosen)
    if Key.obsm.basis(basis) not in adata.obsm:
        raise CassiaError(
            f"adata.obsm has no {Key.obsm.basis(basis)!r}: compute it first "
            f"(e.g. sc.tl.{basis}(adata)) or choose basis= among "
            f"{[k.removeprefix('X_') for k in adata.obsm]}."
        )
    titles = kwargs.pop("title", None) or [f"{key}: {level.replace('_', ' ')}" for level in chosen]
    if isinstance(titles, str) or len(titles) != len(chosen):
        raise CassiaError(f"title= takes one title per level: {len(chosen)} here.")
    table = level_counts(adata, key=key, levels=chosen)
    palette = kwargs.pop("palette", None)
    base = None if palette else _base_colours(adata, columns[0])
    colours = None if base is None else _colours(table, base, chosen)

    fontsize = kwargs.get("legend_fontsize") or plt.rcParams["legend.fontsize"]
    if isinstance(fontsize, str):  # "medium" and the like, relative to font.size
        from matplotlib.font_manager import FontProperties

        fontsize = FontProperties(size=fontsize).get_size_in_points()
    side = plt.rcParams["figure.figsize"][1]
    legends = [
        _legend_width(_categories(adata.obs[column]), fontsize)
        if legend_loc == "right margin"
        else 0.0
        for column in columns
    ]
    # Constrained layout keeps each legend beside its own panel and the panels of one
    # size; the legends' widths only set the figure's, so that the panels come out
    # about square. (A fixed aspect would move the axes after the layout is made and
    # push the last legend out of the figure.)
    fig, axes = plt.subplots(
        1,
        len(chosen),
        figsize=(sum(side + width for width in legends), side),
        layout="constrained",
        squeeze=False,
    )
    axes = list(axes[0])
    for ax, level, column, title in zip(axes, chosen, columns, titles, strict=True):
        if colours is not None:
            palette = [colours[level].get(c, _NO_LINEAGE) for c in _categories(adata.obs[column])]
        sc.pl.embedding(
            adata,
            basis=basis,
            color=column,
            legend_loc=legend_loc,
            palette=palette,
            title=title,
            ax=ax,
            show=False,
            **kwargs,
        )
        if legend_loc == "right margin" and ax.get_legend() is not None:
            # Lineage by lineage as in the tree, so a lineage's shades sit together.
            _legend_in_tree_order(ax, table.loc[table["level"] == level, level].unique())
    return _finish(fig, axes, show=show, return_fig=return_fig)


@fill_docs
def level_tree(
    adata: AnnData,
    *,
    key: str = Default.key_added,
    levels: Sequence[str] = LEVELS,
    fontsize: float = 9.0,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool | None = None,
) -> Axes | Figure | None:
    """Draw the parent -> child tree of the labels with their cells and share of cells.

    One row per label of :func:`cassia_sc.pl.level_counts`, indented under its parent,
    with the colour it has in :func:`cassia_sc.pl.levels`, its number of cells, its share
    of all cells and a bar of that share. Cells without a label at a level are counted
    as ``"unassigned"`` there, so each parent's children add up to it.

    Parameters
    ----------
    adata
        Data with the levels of :func:`cassia_sc.tl.levels` in ``obs``.
    {key_read}
    levels
        The levels drawn, coarse to fine, among ``"broad"``, ``"detailed"`` and
        ``"very_detailed"``.
    fontsize
        Size of the text, in points; the rows follow it.
    ax
        Axes to draw on; a new figure of the tree's size when None (on a given axes,
        rows are spaced to fill its height and the columns are placed in points from its
        left edge).
    {show}
    {return_fig}

    Returns
    -------
    matplotlib.axes.Axes, matplotlib.figure.Figure or None
        The axes when ``show=False``, the figure when ``return_fig=True``.

    Raises
    ------
    CassiaError
        When a level's column is missing.

    Examples
    --------
    >>> import cassia_sc
    >>> cassia_sc.pl.level_tree(adata, show=False)  # doctest: +SKIP
    >>> cassia_sc.pl.level_counts(adata)  # the same, as a table  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    chosen = tuple(levels)
    table = level_counts(adata, key=key, levels=chosen)
    if table.empty:
        raise CassiaError("adata has no cells: there is no tree to draw.")
    colours = _colours(table, _base_colours(adata, _COLUMN[chosen[0]](key)), chosen)
    depth = table["level"].map({level: i for i, level in enumerate(chosen)}).to_numpy()
    labels = [row[row["level"]] for _, row in table.iterrows()]

    # Columns in points from the left edge: tree, cells, share, then the share's bar.
    pitch = 1.9 * fontsize  # a row's height
    indent, swatch, pad = 1.6 * fontsize, 0.8 * fontsize, 0.5 * fontsize
    weights = ["bold" if d == 0 else "normal" for d in depth]
    label_x = pad + depth * indent + swatch + 0.5 * fontsize
    widths = [_text_width(s, fontsize, weight=w) for s, w in zip(labels, weights, strict=True)]
    tree_end = max(label_x + np.array(widths)) + 2 * fontsize
    cells_x = tree_end + max(_text_width(f"{n:,}", fontsize) for n in [*table["n_cells"], 0])
    cells_x = max(cells_x, tree_end + _text_width("cells", fontsize, weight="bold"))
    share_x = cells_x + 1.2 * fontsize + _text_width("100.0 %", fontsize)
    bar_x, bar_width = share_x + 1.2 * fontsize, 11 * fontsize
    title = f"{key}: cell types by level ({adata.n_obs:,} cells)"
    width = max(bar_x + bar_width, _text_width(title, 1.1 * fontsize, weight="bold")) + pad

    rows = len(table) + 2  # the title and the header above the labels
    if ax is None:
        fig = plt.figure(figsize=(width / 72, rows * pitch / 72 + 0.1))
        ax = fig.add_axes((0, 0, 1, 1))
    fig = ax.figure
    ax.set_axis_off()
    # x in points from the axes' left edge, y in rows from the title's.
    ax.set_xlim(0, ax.bbox.width * 72 / fig.dpi)
    ax.set_ylim(rows - 0.5, -0.5)

    ax.text(pad, 0, title, weight="bold", va="center", fontsize=fontsize * 1.1)
    header = {"ha": "right", "va": "center", "color": "#555555", "fontsize": fontsize}
    ax.text(cells_x, 1, "cells", **header)
    ax.text(share_x, 1, "share", **header)
    ax.plot([pad, width - pad], [1.5, 1.5], color="#bbbbbb", lw=0.8)
    height = swatch / pitch  # a square swatch, in rows
    parents: list[int] = []  # the latest row at each depth, down to the current one
    for i, (d, label, n, share) in enumerate(
        zip(depth, labels, table["n_cells"], table["share"], strict=True)
    ):
        del parents[d:]
        y, x = i + 2, pad + d * indent
        colour = colours[chosen[d]].get(label, _NA_COLOUR)
        if parents:  # an elbow from the parent's swatch down and across to this one
            elbow = pad + (d - 1) * indent + swatch / 2
            top = parents[-1] + 2 + height / 2
            ax.plot([elbow, elbow, x], [top, y, y], color="#999999", lw=0.8)
        parents.append(i)
        ax.add_patch(Rectangle((x, y - height / 2), swatch, height, color=colour, lw=0))
        ax.text(
            label_x[i],
            y,
            label,
            va="center",
            fontsize=fontsize,
            weight=weights[i],
            color="#666666" if label == UNASSIGNED else "black",
        )
        ax.text(cells_x, y, f"{n:,}", ha="right", va="center", fontsize=fontsize)
        ax.text(share_x, y, f"{100 * share:.1f} %", ha="right", va="center", fontsize=fontsize)
        ax.add_patch(Rectangle((bar_x, y - 0.3), bar_width, 0.6, color="#f0f0f0", lw=0))
        ax.add_patch(Rectangle((bar_x, y - 0.3), bar_width * share, 0.6, color=colour, lw=0))
    return _finish(fig, ax, show=show, return_fig=return_fig)
