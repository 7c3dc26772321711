"""Subcluster annotations in the full AnnData: written inside their population only.

``tl.annotate(restrict_to=...)`` stores its labels with :func:`store_restricted`;
:func:`transfer` copies an annotation made on a subset AnnData (the T cells, reclustered)
into the full one. Either way the cells outside the population get NaN, and no column
or ``uns`` entry of another annotation (the first run's) is replaced.
"""

from __future__ import annotations

import copy as copying
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData, read_h5ad

from .._docs import fill_docs
from .._keys import Default, Key
from ..errors import CassiaError, KeyAddedError
from ..export import bounded
from ..export.adata import (
    check_key_added,
    is_annotation_record,
    label_column_names,
    label_columns,
    restricted_columns,
    spread_over_cells,
    store_result,
)
from ..get import annotation_record
from ..results import BatchResult
from ..subclusters import Population, check_markers, population

logger = logging.getLogger("cassia_sc")


def refuse_replacing_other_cells(
    uns: Mapping[str, Any], key_added: str, population: Population
) -> None:
    """Refuse a ``key_added`` that holds an annotation of other cells (the first run's).

    A subcluster annotation may replace only an earlier one of the same population (a
    re-run, or the same run scored): never the annotation of all cells it refines, nor
    that of another population.

    Parameters
    ----------
    uns
        The ``uns`` of the full data.
    key_added
        Where the subcluster annotation goes.
    population
        Its population.

    Raises
    ------
    KeyAddedError
        Saying which annotation would be lost and what to pass instead.
    """
    entry = uns.get(key_added)
    if not is_annotation_record(entry):
        return  # nothing there, or not ours: check_key_added speaks for that
    earlier = entry[Key.uns.params].get("restrict_to")
    if earlier is not None and str(earlier) == population.setting():
        return
    covered = "all cells" if earlier is None else f"another population ({earlier})"
    raise KeyAddedError(
        f"key_added={key_added!r} holds the annotation of {covered}, which the subclusters "
        f"of {population.parent!r} must not replace; pass another key_added, e.g. "
        f"key_added={_suggested_key(key_added, population)!r}."
    )


def store_restricted(
    adata: AnnData,
    result: BatchResult,
    *,
    population: Population,
    groupby: str,
    key: str,
    key_added: str,
    uncertainty: pd.DataFrame | None = None,
) -> list[str]:
    """Write a subcluster annotation to ``adata``: labels inside the population, NaN outside.

    Parameters
    ----------
    adata
        The full data.
    result
        The batch of the population's subclusters.
    population
        The population (``restrict_to``).
    groupby, key, key_added, uncertainty
        As for :func:`cassia_sc.export.adata.store_result`.

    Returns
    -------
    list of str
        The ``obs`` columns written.

    Raises
    ------
    KeyAddedError
        ``key_added`` would replace what another annotation wrote; nothing is written.
    """
    refuse_replacing_other_cells(adata.uns, key_added, population)
    result = replace(result, settings=result.settings | {"restrict_to": population.setting()})
    return store_result(
        adata,
        result,
        groupby=groupby,
        key=key,
        key_added=key_added,
        uncertainty=uncertainty,
        cells=population.cells,
    )


def read_population(
    path: str | os.PathLike,
    restrict_to: Sequence[str],
    *,
    key: str,
    groupby: str,
    key_added: str,
    parent: str | None = None,
) -> Population:
    """Return the population of an ``.h5ad`` file's cells, once its markers are checked.

    For ``cassia-sc annotate --restrict-to COLUMN VALUE ...``: reads ``obs`` and ``uns``
    (never ``X``), checks the markers as :func:`cassia_sc.subclusters.check_markers` does
    and that ``key_added`` replaces no annotation of other cells, before any model call.

    Parameters
    ----------
    path
        The file.
    restrict_to
        The column, then its values.
    key, groupby
        The subclusters' markers and column.
    key_added
        Where the annotation goes.
    parent
        The population's name for the model; None: the values, joined.

    Returns
    -------
    Population
        The population.
    """
    column, *values = restrict_to
    cells = read_h5ad(path, backed="r")
    try:
        found = population(cells, (column, values), parent=parent)
        clusters = cells.obs[groupby]
        check_markers(cells.uns.get(key), found, key=key, groupby=groupby, clusters=clusters)
        refuse_replacing_other_cells(cells.uns, key_added, found)
    finally:
        cells.file.close()
    return found


def file_label_columns(
    clusters: pd.Series, result: BatchResult, population: Population | None, *, key_added: str
) -> dict[str, pd.Categorical | np.ndarray]:
    """Return the ``obs`` columns of a file's annotation, inside ``population`` when given.

    Records the population in the result's settings, for its ``uns`` record.

    Parameters
    ----------
    clusters
        Every cell's cluster.
    result
        The batch.
    population
        The population of ``--restrict-to``, or None for every cell.
    key_added
        The columns' prefix.

    Returns
    -------
    dict
        The columns, over every cell.
    """
    if population is None:
        return label_columns(clusters, bounded(result), key_added=key_added)
    result.settings["restrict_to"] = population.setting()
    inside = label_columns(clusters[population.cells], bounded(result), key_added=key_added)
    return restricted_columns(inside, population.cells)


@fill_docs
def transfer(
    adata: AnnData,
    subset: AnnData,
    *,
    key: str = Default.key_added,
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Copy the annotation of a subset of the cells (e.g. the T cells) into the full data.

    For the subclusters of a population annotated on their own AnnData (subset,
    reclustered, ranked with :func:`scanpy.tl.rank_genes_groups`, then
    ``tl.annotate(subset, parent=...)``): the labels go to the same cells of ``adata``,
    matched by ``obs_names``; every other cell gets NaN. This copies, it predicts nothing:
    to carry labels over to other data, see :func:`scanpy.tl.ingest`.

    Parameters
    ----------
    adata
        The full data, holding every cell of ``subset``.
    subset
        The subset, annotated by :func:`cassia_sc.tl.annotate`.
    {key_read}
    key_added
        Prefix of the ``obs`` columns and key of the ``uns`` entry in ``adata``; default
        ``key``. It must not name another annotation of ``adata`` (the first run's).
    {copy}

    Returns
    -------
    AnnData or None
        The full data with the annotation when ``copy=True``, else None. Written:

        ``adata.obs[f"{key_added}_celltype"]``, ``adata.obs[f"{key_added}_subtype"]``, ...
            Each column the annotation wrote in ``subset.obs``; NaN outside the subset.
        ``adata.obs[groupby]``
            The subset's clusters, when ``adata`` has no such column (NaN outside). An
            existing column must agree with the subset's on its cells.
        ``adata.uns[key_added]``
            The subset's record, with ``params["restrict_to"]`` naming the subclusters.

    Raises
    ------
    CassiaError
        A cell of ``subset`` is not in ``adata``, or ``adata.obs[groupby]`` disagrees
        with the subset's clusters.
    KeyAddedError
        ``key_added`` would replace another annotation, or columns not written by one.

    Examples
    --------
    >>> t_cells = adata[adata.obs["cassia_celltype"] == "T cell"].copy()  # doctest: +SKIP
    >>> sc.pp.neighbors(t_cells); sc.tl.leiden(t_cells, key_added="leiden_T")  # doctest: +SKIP
    >>> sc.tl.rank_genes_groups(t_cells, "leiden_T")  # doctest: +SKIP
    >>> cassia_sc.tl.annotate(t_cells, parent="T cell", key_added="cassia_T", ...)  # doctest: +SKIP
    >>> cassia_sc.tl.transfer(adata, t_cells, key="cassia_T")  # doctest: +SKIP
    """
    key_added = key_added or key
    check_key_added(key_added)
    record = annotation_record(subset, key)
    params = record[Key.uns.params]
    groupby = str(params["groupby"])
    if copy:
        adata = adata.copy()
    positions = _positions(adata, subset)
    clusters = subset.obs[groupby]
    subclusters = [str(c) for c in pd.unique(clusters.dropna().astype(str))]
    mask = np.zeros(adata.n_obs, dtype=bool)
    mask[positions] = True
    population = Population(
        column=groupby,
        values=tuple(subclusters),
        parent=str(params.get("parent") or ", ".join(subclusters)),
        cells=mask,
    )
    columns: dict[str, pd.Categorical | np.ndarray] = {}
    if groupby in adata.obs.columns:
        _check_same_clusters(adata.obs[groupby], clusters, positions, mask, subclusters, groupby)
    else:
        columns[groupby] = spread_over_cells(clusters, positions, adata.n_obs)
    for old, new in zip(label_column_names(key), label_column_names(key_added), strict=True):
        if old in subset.obs.columns:
            columns[new] = spread_over_cells(subset.obs[old], positions, adata.n_obs)
    refuse_replacing_other_cells(adata.uns, key_added, population)
    check_key_added(
        key_added,
        uns=adata.uns,
        obs=adata.obs.columns,
        groupby=groupby,
        columns=[c for c in columns if c != groupby],
    )
    for name, values in columns.items():
        adata.obs[name] = values
    entry = copying.deepcopy(dict(record))
    entry[Key.uns.params] = dict(entry[Key.uns.params]) | {"restrict_to": population.setting()}
    adata.uns[key_added] = entry
    logger.info(
        "added\n%s    %r, the annotation's record (adata.uns)",
        "".join(f"    {name!r}, labels per cell (adata.obs)\n" for name in columns),
        key_added,
    )
    return adata if copy else None


def _positions(adata: AnnData, subset: AnnData) -> np.ndarray:
    """Where each cell of ``subset`` is in ``adata``, or say why it cannot be found."""
    if not adata.obs_names.is_unique or not subset.obs_names.is_unique:
        raise CassiaError(
            "transfer matches cells by obs_names, which must be unique in both: call "
            "adata.obs_names_make_unique() before taking the subset."
        )
    positions = adata.obs_names.get_indexer(subset.obs_names)
    missing = subset.obs_names[positions < 0]
    if len(missing):
        raise CassiaError(
            f"{len(missing)} cells of the subset are not in adata (e.g. {missing[0]!r}): "
            "transfer copies labels to the same cells; to map labels onto other data, see "
            "sc.tl.ingest."
        )
    return positions


def _check_same_clusters(
    existing: pd.Series,
    clusters: pd.Series,
    positions: np.ndarray,
    mask: np.ndarray,
    subclusters: list[str],
    groupby: str,
) -> None:
    """Accept an existing ``obs[groupby]`` only if it names the subset's clusters as it does."""
    theirs = existing.iloc[positions].astype(str).to_numpy()
    ours = clusters.astype(str).to_numpy()
    differ = int((theirs != ours).sum())
    outside = int(existing[~mask].astype(str).isin(subclusters).sum())
    if differ or outside:
        what = (
            f"differs from subset.obs[{groupby!r}] on {differ} of the subset's cells"
            if differ
            else f"gives {outside} cells outside the subset the names of its clusters"
        )
        raise CassiaError(
            f"adata.obs[{groupby!r}] {what}: give the subset's clusters a name of their own "
            f"(e.g. sc.tl.leiden(subset, key_added='{groupby}_sub')) and annotate them again "
            "with groupby= that name; the replies come from the cache."
        )


def _suggested_key(key_added: str, population: Population) -> str:
    """Suggest a ``key_added`` for the subclusters: the old one and the population's word."""
    words = "".join(c if c.isalnum() else "_" for c in population.parent).strip("_")
    first = words.split("_")[0] if words else "sub"
    return f"{key_added}_{first}"


def restriction(params: Mapping[str, Any]) -> tuple[str, list[str]] | None:
    """Return the ``restrict_to`` an annotation's parameters name, or None.

    Parameters
    ----------
    params
        ``adata.uns[key]["params"]``.

    Returns
    -------
    tuple or None
        ``(column, values)``, for :func:`cassia_sc.subclusters.population`.
    """
    text = params.get("restrict_to")
    if text is None:
        return None
    column, values = json.loads(str(text))
    return str(column), [str(v) for v in values]
