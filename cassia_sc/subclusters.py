"""The subclusters of one population: which cells they are, and whether their markers fit.

Annotating the subclusters of a population (the T cells, reclustered) asks for markers
that set each subcluster apart from its siblings, which is what
:func:`scanpy.tl.rank_genes_groups` gives when run on that population alone. A result
computed on all cells contrasts each subcluster with every other cell instead, and its
top genes are then the population's own lineage genes, the same for every subcluster:
such markers are refused here, with the call that computes the right ones.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ._keys import Key
from .errors import CassiaError, MarkerError

logger = logging.getLogger("cassia_sc")

#: ``restrict_to``: an ``obs`` column and the values of the population's cells in it.
RestrictTo = tuple[str, Sequence[str]]

# The check of what the markers were contrasted with reads this many top genes of each of
# this many subclusters: enough to tell, cheap on any number of cells.
_CHECKED_GENES = 10
_CHECKED_GROUPS = 3
# Median error (log2 units) of the fold changes under the hypothesis that fits, and the
# gap to the other one, for the check to speak; between the two it stays silent.
_FITS = 0.02
_DOES_NOT_FIT = 0.15


@dataclass(frozen=True)
class Population:
    """The cells of one population, whose subclusters are annotated.

    Attributes
    ----------
    column
        The ``obs`` column that names the population (``restrict_to[0]``).
    values
        Its values that make up the population (``restrict_to[1]``).
    parent
        The population's name for the model: ``parent=`` when given, else the values.
    cells
        A boolean mask over all cells: True for the population's.

    Examples
    --------
    >>> import pandas as pd
    >>> labels = pd.Series(["T cell", "B cell", "T cell"], name="cassia_celltype")
    >>> population = Population.of(labels, ("cassia_celltype", ["T cell"]))
    >>> population.parent, population.cells.tolist()
    ('T cell', [True, False, True])
    >>> population.setting()
    '["cassia_celltype", ["T cell"]]'
    """

    column: str
    values: tuple[str, ...]
    parent: str
    cells: np.ndarray = field(repr=False, compare=False)

    @classmethod
    def of(
        cls, labels: pd.Series, restrict_to: RestrictTo, *, parent: str | None = None
    ) -> Population:
        """Return the population that ``restrict_to`` names in ``labels``.

        Parameters
        ----------
        labels
            Every cell's value of ``obs[restrict_to[0]]``.
        restrict_to
            ``(column, values)``; a single value may be given as a string.
        parent
            The population's name for the model; None: the values, joined.

        Returns
        -------
        Population
            Its column, values, name and cells.

        Raises
        ------
        CassiaError
            ``restrict_to`` is not a column and values, or names a value no cell has.
        """
        column, values = _checked(restrict_to)
        present = pd.unique(labels.dropna().astype(str))
        missing = [value for value in values if value not in set(present)]
        if missing:
            raise CassiaError(
                f"restrict_to: no cell has obs[{column!r}] == {missing[0]!r}; its values are "
                f"{sorted(present)[:20]}."
            )
        cells = labels.astype(str).isin(values).to_numpy() & labels.notna().to_numpy()
        name = (parent or "").strip() or ", ".join(values)
        if not (parent or "").strip() and all(value.isdigit() for value in values):
            logger.warning(
                "restrict_to=(%r, %s) names clusters by number: pass parent= with the "
                "population's cell type, or the model is told it is %r.",
                column,
                list(values),
                name,
            )
        return cls(column=column, values=values, parent=name, cells=cells)

    def setting(self) -> str:
        """Return ``restrict_to`` as JSON text, as the annotation's record keeps it."""
        return json.dumps([self.column, list(self.values)], ensure_ascii=False)


def population(adata: AnnData, restrict_to: RestrictTo, *, parent: str | None = None) -> Population:
    """Return the population of ``adata`` that ``restrict_to`` names.

    Parameters
    ----------
    adata
        The data.
    restrict_to
        ``(column, values)``: the cells whose ``obs[column]`` is one of ``values``.
    parent
        The population's name for the model; None: the values, joined.

    Returns
    -------
    Population
        Its cells and name.

    Raises
    ------
    CassiaError
        No such column, or a value no cell has.
    """
    column, _ = _checked(restrict_to)
    if column not in adata.obs.columns:
        raise CassiaError(
            f"restrict_to: {column!r} is not a column of adata.obs; it has "
            f"{list(adata.obs.columns)}."
        )
    return Population.of(adata.obs[column], restrict_to, parent=parent)


def restricted(
    adata: AnnData,
    restrict_to: RestrictTo,
    *,
    key: str = Key.uns.markers,
    groupby: str | None = None,
    parent: str | None = None,
) -> tuple[AnnData, Population]:
    """Return the population's cells (a view) once its markers are found to fit it.

    Parameters
    ----------
    adata
        The data, with the subclusters' markers in ``uns[key]``.
    restrict_to
        ``(column, values)``: the population.
    key
        The ``rank_genes_groups`` result of the subclusters.
    groupby
        The ``obs`` column of the subclusters; by default the one the markers were
        computed for.
    parent
        The population's name for the model; None: the values, joined.

    Returns
    -------
    tuple
        A view of ``adata`` on the population's cells (its markers, expression and
        subclusters, never copied), and the :class:`Population`.

    Raises
    ------
    MarkerError
        The markers were not computed for these subclusters on this population
        (:func:`check_markers`).
    """
    found = population(adata, restrict_to, parent=parent)
    result = adata.uns.get(key)
    params = result.get("params", {}) if isinstance(result, Mapping) else {}
    groupby = groupby or (str(params["groupby"]) if "groupby" in params else None)
    if groupby is None or groupby not in adata.obs.columns:
        raise MarkerError(
            f"groupby={groupby!r} is not a column of adata.obs: name the subclusters' "
            "column with groupby=."
        )
    check_markers(result, found, key=key, groupby=groupby, clusters=adata.obs[groupby])
    _check_contrast(adata, result, found, key=key, groupby=groupby)
    return adata[found.cells], found


def check_markers(
    result: Any, population: Population, *, key: str, groupby: str, clusters: pd.Series
) -> None:
    """Refuse markers that were not computed for the subclusters of ``population``.

    Reads the result's parameters and groups only (no expression data), so it also
    serves a file whose cells are not loaded.

    Parameters
    ----------
    result
        ``uns[key]``: a :func:`scanpy.tl.rank_genes_groups` result, or None.
    population
        The population.
    key
        Where the result is, for the messages.
    groupby
        The ``obs`` column of the subclusters.
    clusters
        Every cell's subcluster (``obs[groupby]``).

    Raises
    ------
    MarkerError
        The result is missing, was computed for another grouping, or for groups that
        have cells outside the population (it was computed on all cells); the message
        shows how to compute the right one.
    """
    fix = how_to_rank(population, groupby=groupby)
    if not isinstance(result, Mapping) or "names" not in result:
        raise MarkerError(f"adata.uns[{key!r}] holds no rank_genes_groups result. {fix}")
    computed_for = result.get("params", {}).get("groupby")
    if computed_for is not None and str(computed_for) != groupby:
        raise MarkerError(
            f"adata.uns[{key!r}] was computed for groupby={str(computed_for)!r}, not for the "
            f"subclusters in {groupby!r}. {fix}"
        )
    inside = set(pd.unique(clusters[population.cells].dropna().astype(str)))
    outside = [str(group) for group in result["names"].dtype.names if str(group) not in inside]
    if outside:
        raise MarkerError(
            f"adata.uns[{key!r}] was computed on other cells than the population "
            f"obs[{population.column!r}] in {list(population.values)}: its groups "
            f"{outside[:5]} have no cell there. {fix}"
        )


def how_to_rank(population: Population, *, groupby: str) -> str:
    """Return the calls that compute the subclusters' markers, for error messages.

    Parameters
    ----------
    population
        The population.
    groupby
        The ``obs`` column of its subclusters.

    Returns
    -------
    str
        One sentence with the calls.

    Examples
    --------
    >>> import pandas as pd
    >>> labels = pd.Series(["T cell", "B cell"])
    >>> t_cells = Population.of(labels, ("cassia_celltype", ["T cell"]))
    >>> how_to_rank(t_cells, groupby="leiden_T").startswith("Rank each subcluster")
    True
    """
    suggested = f"{groupby}_{Key.uns.markers}"
    return (
        "Rank each subcluster against its siblings, on the population's cells only: "
        f"sub = adata[adata.obs[{population.column!r}].isin({list(population.values)!r})]"
        f".copy(); sc.tl.rank_genes_groups(sub, {groupby!r}); "
        f"adata.uns[{suggested!r}] = sub.uns[{Key.uns.markers!r}]; then pass "
        f"key={suggested!r}. (sc.tl.rank_genes_groups(adata, {groupby!r}, groups=...) on "
        "all cells ranks them against every other cell instead.)"
    )


def _checked(restrict_to: Any) -> tuple[str, tuple[str, ...]]:
    """Return ``restrict_to``'s column and values, or say what it should look like."""
    shape = (
        "restrict_to must be (column, values), e.g. ('cassia_celltype', ['T cell']), "
        f"not {restrict_to!r}."
    )
    if not isinstance(restrict_to, Sequence) or isinstance(restrict_to, str):
        raise CassiaError(shape)
    if len(restrict_to) != 2 or not isinstance(restrict_to[0], str):
        raise CassiaError(shape)
    column, values = restrict_to
    # A single value as a string is one value, not its characters.
    listed = [values] if isinstance(values, str) else list(values)
    cleaned = tuple(dict.fromkeys(str(value) for value in listed))
    if not cleaned:
        raise CassiaError(shape)
    return column, cleaned


def _check_contrast(
    adata: AnnData, result: Mapping, population: Population, *, key: str, groupby: str
) -> None:
    """Refuse markers whose fold changes show a contrast with all cells, not the siblings.

    ``rank_genes_groups(adata, groupby, groups=[...])`` on all cells stores the same
    groups and parameters as the right call on the population, so only the numbers tell
    them apart: Scanpy's fold change of a gene is
    ``log2((expm1(mean in group) + 1e-9) / (expm1(mean of the rest) + 1e-9))``, and "the
    rest" is either the siblings or every other cell. This recomputes it both ways for a
    few top genes, and speaks only when one fits and the other clearly does not; a result
    without fold changes, from other data (a subset normalised again) or in a backed file
    passes unread.
    """
    predicted = _fold_changes(adata, result, population, groupby=groupby)
    if predicted is None:
        return
    stored, siblings, everyone = predicted
    error_siblings = float(np.median(np.abs(stored - siblings)))
    error_everyone = float(np.median(np.abs(stored - everyone)))
    if error_everyone <= _FITS and error_siblings >= max(_DOES_NOT_FIT, 10 * error_everyone):
        raise MarkerError(
            f"adata.uns[{key!r}] ranks the subclusters of {groupby!r} against all other "
            "cells (its fold changes are those of a contrast with every cell outside each "
            "subcluster), not against their siblings, so every subcluster's top genes "
            f"would be the population's own. {how_to_rank(population, groupby=groupby)}"
        )


def _fold_changes(
    adata: AnnData, result: Mapping, population: Population, *, groupby: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Return stored fold changes and those predicted against siblings and everyone."""
    if "logfoldchanges" not in result or adata.isbacked:
        return None
    params = result.get("params", {})
    layer = params.get("layer")
    use_raw = bool(np.asarray(params.get("use_raw", False)).any()) and adata.raw is not None
    if use_raw:
        matrix, genes = adata.raw.X, adata.raw.var_names
    elif layer is not None and str(layer) in adata.layers:
        matrix, genes = adata.layers[str(layer)], adata.var_names
    else:
        matrix, genes = adata.X, adata.var_names
    if not isinstance(matrix, np.ndarray | sparse.spmatrix | sparse.sparray):
        return None  # a Dask array: not worth a pass for a check
    clusters = adata.obs[groupby].astype(str).to_numpy()
    names, changes = result["names"], result["logfoldchanges"]
    groups = [str(g) for g in names.dtype.names][:_CHECKED_GROUPS]
    log1p = adata.uns.get("log1p")
    base = log1p.get("base") if isinstance(log1p, Mapping) else None
    stored, siblings, everyone = [], [], []
    for group in groups:
        top = pd.Index(np.asarray(names[group][:_CHECKED_GENES]).astype(str))
        columns = genes.get_indexer(top)
        known = columns >= 0
        if not known.any():
            continue
        values = matrix[:, columns[known]]
        values = values.toarray() if sparse.issparse(values) else np.asarray(values)
        in_group = clusters == group
        rest_siblings = population.cells & ~in_group
        if not in_group.any() or not rest_siblings.any() or population.cells.all():
            return None  # nothing to tell apart
        mean = values[in_group].mean(axis=0)
        stored.append(np.asarray(changes[group][:_CHECKED_GENES], dtype=float)[known])
        siblings.append(_log2_ratio(mean, values[rest_siblings].mean(axis=0), base))
        everyone.append(_log2_ratio(mean, values[~in_group].mean(axis=0), base))
    if not stored:
        return None
    return np.concatenate(stored), np.concatenate(siblings), np.concatenate(everyone)


def _log2_ratio(group: np.ndarray, rest: np.ndarray, base: Any) -> np.ndarray:
    """Scanpy's fold change from the mean log-expression in a group and in the rest."""
    scale = np.log(float(base)) if base is not None else 1.0
    return np.log2((np.expm1(group * scale) + 1e-9) / (np.expm1(rest * scale) + 1e-9))
