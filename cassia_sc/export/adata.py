"""Write an annotation into an AnnData: labels to ``obs``, the record to ``uns``.

The one place that writes; :mod:`cassia_sc.get` reads back. ``cassia-sc annotate`` uses
the same columns and record to edit an ``.h5ad`` file in place.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._keys import Key
from ..errors import KeyAddedError
from ..results import BatchResult, h5_safe_frame
from .limits import bounded

logger = logging.getLogger("cassia_sc")


def check_key_added(
    key_added: str,
    *,
    uns: Mapping[str, Any] | None = None,
    obs: Iterable[str] = (),
    groupby: str | None = None,
    columns: Iterable[str] = (),
) -> None:
    """Refuse a ``key_added`` that is no ``uns`` key, or whose writing would replace foreign data.

    Writing an annotation replaces ``uns[key_added]`` and the ``obs`` columns named
    after it. Only what cassia_sc wrote may be replaced: an ``uns`` entry with the shape
    of an annotation record (see :func:`is_annotation_record`), and the ``obs`` columns
    of such an annotation. An entry such as ``rank_genes_groups``, ``neighbors`` or
    ``louvain_colors``, or a column of the same name as one of ours while no annotation of
    ours is stored under ``key_added``, is refused.

    Parameters
    ----------
    key_added
        The prefix of the ``obs`` columns and key of the ``uns`` entry.
    uns
        The ``uns`` the annotation goes to (of an AnnData, or
        :attr:`cassia_sc.h5ad.FileOutline.uns`); None checks the name only.
    obs
        The ``obs`` columns it has.
    groupby
        The ``obs`` column of the clusters, which must not be replaced either.
    columns
        The ``obs`` columns to write, on top of those :func:`label_column_names` names.

    Raises
    ------
    KeyAddedError
        With what would be lost, and what to pass instead.

    Examples
    --------
    >>> ours = {"params": {"cassia_sc_version": "1.0"}, "results": None}
    >>> check_key_added("cassia", uns={"cassia": ours}, obs=["cassia_celltype"])
    >>> check_key_added("rank_genes_groups", uns={"rank_genes_groups": {"names": None}})
    Traceback (most recent call last):
    ...
    cassia_sc.errors.KeyAddedError: key_added='rank_genes_groups' would replace ...
    """
    if not isinstance(key_added, str) or not key_added.strip():
        raise KeyAddedError(
            f"key_added must be a name, not {key_added!r} (an unset shell variable?); "
            "leave it out for the default, 'cassia'."
        )
    if "/" in key_added:
        raise KeyAddedError(f"key_added must not contain '/': {key_added!r}.")
    if uns is None:
        return
    ours = key_added in uns and is_annotation_record(uns[key_added])
    if key_added in uns and not ours:
        raise KeyAddedError(
            f"key_added={key_added!r} would replace uns[{key_added!r}], which cassia_sc did "
            "not write; pass another key_added."
        )
    present = set(obs)
    written = [*label_column_names(key_added), *columns]
    if groupby is not None and groupby in written:
        raise KeyAddedError(
            f"key_added={key_added!r} would replace obs[{groupby!r}], the clusters being "
            "annotated; pass another key_added."
        )
    foreign = [] if ours else sorted({name for name in written if name in present})
    if foreign:
        raise KeyAddedError(
            f"key_added={key_added!r} would replace obs columns {foreign}, which no "
            f"annotation of cassia_sc under uns[{key_added!r}] wrote; pass another key_added."
        )


def is_annotation_record(entry: Any) -> bool:
    """Tell whether an ``uns`` entry has the shape of an annotation record cassia_sc wrote.

    Parameters
    ----------
    entry
        The entry, or its outline (names, as :func:`cassia_sc.h5ad.read_outline` gives).

    Returns
    -------
    bool
        True when it holds a ``results`` table and ``params`` with ``cassia_sc_version``.

    Examples
    --------
    >>> is_annotation_record({"params": {"cassia_sc_version": "1.0"}, "results": None})
    True
    >>> is_annotation_record({"params": {"groupby": "louvain"}, "names": None})
    False
    """
    if not isinstance(entry, Mapping) or Key.uns.results not in entry:
        return False
    params = entry.get(Key.uns.params)
    return isinstance(params, Mapping) and "cassia_sc_version" in params


def label_column_names(key_added: str) -> list[str]:
    """Return every ``obs`` column an annotation under ``key_added`` may write.

    Parameters
    ----------
    key_added
        The prefix.

    Returns
    -------
    list of str
        The names :func:`label_columns` may return.
    """
    return [
        Key.obs.celltype(key_added),
        Key.obs.subtype(key_added),
        Key.obs.ontology_term_id(key_added),
        Key.obs.agreement(key_added),
        Key.obs.score(key_added),
        Key.obs.celltype_initial(key_added),
        Key.obs.cell_state(key_added),
    ]


def store_result(
    adata: AnnData,
    result: BatchResult,
    *,
    groupby: str,
    key: str,
    key_added: str,
    uncertainty: pd.DataFrame | None = None,
    cells: np.ndarray | None = None,
) -> list[str]:
    """Write a batch's labels to ``adata.obs`` and its record to ``adata.uns[key_added]``.

    Parameters
    ----------
    adata
        The data whose clusters were annotated.
    result
        The batch result.
    groupby
        The ``obs`` column of the clusters.
    key
        The ``rank_genes_groups`` key the markers came from.
    key_added
        Prefix of the ``obs`` columns and key of the ``uns`` entry.
    uncertainty
        After repeated runs, their :func:`cassia_sc.consensus` table.
    cells
        For subclusters of one population: a boolean mask over all cells, the
        population's; the labels go to those cells, NaN to the others.

    Returns
    -------
    list of str
        The ``obs`` columns written.

    Raises
    ------
    KeyAddedError
        When ``key_added`` would replace an ``uns`` entry or ``obs`` columns that
        cassia_sc did not write (see :func:`check_key_added`); nothing is written then.
    """
    result = bounded(result)
    if cells is None:
        columns = label_columns(adata.obs[groupby], result, key_added=key_added)
    else:
        inside = label_columns(adata.obs[groupby][cells], result, key_added=key_added)
        columns = restricted_columns(inside, cells)
    check_key_added(
        key_added, uns=adata.uns, obs=adata.obs.columns, groupby=groupby, columns=columns
    )
    for name, values in columns.items():
        adata.obs[name] = values
    adata.uns[key_added] = uns_record(result, groupby=groupby, key=key, uncertainty=uncertainty)
    return list(columns)


def label_columns(
    clusters: pd.Series, result: BatchResult, *, key_added: str
) -> dict[str, pd.Categorical | np.ndarray]:
    """Return the ``obs`` columns of a batch: each cell's main cell type and subtype.

    Parameters
    ----------
    clusters
        Each cell's cluster (the ``groupby`` column).
    result
        The batch result.
    key_added
        Prefix of the column names.

    Returns
    -------
    dict[str, pandas.Categorical or numpy.ndarray]
        :meth:`Key.obs.celltype <cassia_sc._keys.Key.obs.celltype>` and ``subtype``, and
        when the batch has them the ontology term, the agreement, the score and the label
        before the boost; NaN for cells of a cluster without an answer, which a warning
        names.
    """
    answered = [c for c in result.clusters if c.main_cell_type and c.status != "implausible"]
    main = {c.cluster: c.main_cell_type for c in answered}
    subtype = {c.cluster: (c.sub_cell_types or [c.main_cell_type])[0] for c in answered}
    terms = {c.cluster: c.ontology_term_id for c in answered if c.ontology_term_id}
    agreement = {c.cluster: c.agreement for c in answered if c.agreement is not None}
    scores = {c.cluster: c.extra["score"] for c in answered if c.extra.get("score") is not None}
    states = {c.cluster: c.extra["cell_state"] for c in answered if c.extra.get("cell_state")}
    initial = {c.cluster: c.extra.get("initial_cell_type") or c.main_cell_type for c in answered}
    boosted = any(c.extra.get("boosted") for c in answered)
    names = pd.Series(clusters).astype(str)
    missing = [cluster for cluster in pd.unique(names) if cluster not in main]
    if missing:
        logger.warning(
            "No cell type for clusters %s (failed, implausible or not run); their cells are NaN in "
            "obs[%r]. See uns[%r][%r].",
            missing,
            Key.obs.celltype(key_added),
            key_added,
            Key.uns.results,
        )
    columns: dict[str, pd.Categorical | np.ndarray] = {
        Key.obs.celltype(key_added): _labels(names, main),
        Key.obs.subtype(key_added): _labels(names, subtype),
    }
    if terms:
        columns[Key.obs.ontology_term_id(key_added)] = _labels(names, terms)
    if agreement:
        columns[Key.obs.agreement(key_added)] = names.map(agreement).to_numpy(dtype=float)
    if states:
        columns[Key.obs.cell_state(key_added)] = _labels(names, states)
    if scores:
        columns[Key.obs.score(key_added)] = names.map(scores).to_numpy(dtype=float)
    if boosted:
        columns[Key.obs.celltype_initial(key_added)] = _labels(names, initial)
    return columns


def _labels(clusters: pd.Series, labels: dict[str, str]) -> pd.Categorical:
    values = clusters.map(labels).to_numpy(dtype=object)
    present = pd.unique(pd.Series(list(labels.values()), dtype=object))
    return pd.Categorical(values, categories=pd.Index(present, dtype=object))


def uns_record(
    result: BatchResult, *, groupby: str, key: str, uncertainty: pd.DataFrame | None = None
) -> dict[str, Any]:
    """Return what ``tl.annotate`` stores in ``uns``: only types that ``.h5ad`` keeps.

    Parameters
    ----------
    result
        The batch result.
    groupby, key
        Where the clusters and their markers came from.
    uncertainty
        After repeated runs, their :func:`cassia_sc.consensus` table.

    Returns
    -------
    dict
        ``params``, ``results``, ``conversations``, ``usage``, ``versions`` and, after
        repeated runs, ``uncertainty``; long values cut as :func:`~.limits.bounded` cuts
        them.
    """
    result = bounded(result)
    params = {name: value for name, value in result.settings.items() if value is not None}
    params |= {"groupby": groupby, "key": key}
    record = {
        Key.uns.params: {name: _h5_scalar(value) for name, value in params.items()},
        Key.uns.results: result.table(),
        Key.uns.conversations: json.dumps(result.conversations(), ensure_ascii=False),
        Key.uns.usage: {name: int(value) for name, value in result.usage.items()},
        Key.uns.versions: _versions(),
    }
    if uncertainty is not None:
        record[Key.uns.uncertainty] = h5_safe_frame(uncertainty)
    return record


def _h5_scalar(value: Any) -> Any:
    if isinstance(value, bool | int | float | str | np.generic):
        return value
    return str(value)


def _versions() -> dict[str, str]:
    found = {}
    for package in ("cassia-sc", "anndata", "scanpy", "openai", "pandas"):
        try:
            found[package.replace("-", "_")] = version(package)
        except PackageNotFoundError:
            found[package.replace("-", "_")] = "unknown"
    return found


def restricted_columns(
    inside: Mapping[str, pd.Categorical | np.ndarray], cells: np.ndarray
) -> dict[str, pd.Categorical | np.ndarray]:
    """Spread columns of the population's cells over all cells, NaN outside.

    Parameters
    ----------
    inside
        Columns with one value per cell of the population, in the cells' order.
    cells
        A boolean mask over all cells: the population.

    Returns
    -------
    dict
        The same columns over all cells: categorical ones keep their categories.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> spread = restricted_columns(
    ...     {"x": pd.Categorical(["a", "b"]), "s": np.array([1.0, 2.0])},
    ...     np.array([False, True, True]),
    ... )
    >>> spread["x"].tolist(), spread["s"].tolist()
    ([nan, 'a', 'b'], [nan, 1.0, 2.0])
    """
    mask = np.asarray(cells, dtype=bool)
    positions = np.flatnonzero(mask)
    return {
        name: spread_over_cells(values, positions, mask.size) for name, values in inside.items()
    }


def spread_over_cells(
    values: Any, positions: np.ndarray, n_cells: int
) -> pd.Categorical | np.ndarray:
    """Return one column over all cells: ``values`` at ``positions``, NaN elsewhere."""
    if isinstance(values, pd.Series):
        values = values.array if isinstance(values.dtype, pd.CategoricalDtype) else values
    if isinstance(values, pd.Categorical):
        codes = np.full(n_cells, -1, dtype=np.int32)
        codes[positions] = values.codes
        return pd.Categorical.from_codes(codes, categories=values.categories)
    array = np.asarray(values)
    if array.dtype.kind in "biuf":
        spread = np.full(n_cells, np.nan)
        spread[positions] = array
        return spread
    # Text of no declared kind: categorical, as every label column is.
    return spread_over_cells(pd.Categorical(array.astype(object)), positions, n_cells)
