"""Read an annotation back from an AnnData, in the spirit of :mod:`scanpy.get`.

Every reader (``pl``, ``tl.evaluate``, the report) goes through here; nothing here writes.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from anndata import AnnData

from ._docs import fill_docs
from ._keys import Default, Key
from .agents import known_fields
from .errors import CassiaError
from .fields import Field
from .results import BatchResult


@fill_docs
def annotation_record(adata: AnnData, key: str = Default.key_added) -> dict[str, Any]:
    """Return ``adata.uns[key]`` as ``tl.annotate`` wrote it, or say which call makes it.

    Parameters
    ----------
    {annotated}
    {key_read}

    Returns
    -------
    dict
        The record (``params``, ``results``, ...).

    Raises
    ------
    CassiaError
        When there is no annotation under ``key``.

    Examples
    --------
    >>> record = cassia_sc.get.annotation_record(adata)  # doctest: +SKIP
    >>> record["results"].head()  # doctest: +SKIP
    """
    record = adata.uns.get(key)
    if not isinstance(record, dict) or Key.uns.results not in record:
        raise CassiaError(
            f"adata.uns[{key!r}] holds no cassia_sc annotation: run "
            f"cassia_sc.tl.annotate(adata, ..., key_added={key!r}) first."
        )
    return record


@fill_docs
def results(adata: AnnData, key: str = Default.key_added) -> pd.DataFrame:
    """Return the annotation's table: one row per cluster, a column per field.

    Parameters
    ----------
    {annotated}
    {key_read}

    Returns
    -------
    pandas.DataFrame
        ``adata.uns[key]["results"]``.

    Examples
    --------
    >>> cassia_sc.get.results(adata)[["cluster", "main_cell_type"]]  # doctest: +SKIP
    """
    return annotation_record(adata, key)[Key.uns.results]


@fill_docs
def fields(adata: AnnData, key: str = Default.key_added) -> tuple[Field, ...]:
    """Return the declared fields of an annotation's table, in its column order.

    Parameters
    ----------
    {annotated}
    {key_read}

    Returns
    -------
    tuple of Field
        The declaration of each stored column that a core field or a known step (of a
        registered pipeline, the scorer, the boost) declares; a column none declares is
        read as a number or as text by :func:`annotation`.
    """
    known = {f.name: f for f in known_fields()}
    return tuple(known[name] for name in results(adata, key).columns if name in known)


@fill_docs
def annotation(adata: AnnData, key: str = Default.key_added) -> BatchResult:
    """Return the annotation as a :class:`~cassia_sc.BatchResult`, conversations included.

    Parameters
    ----------
    {annotated}
    {key_read}

    Returns
    -------
    BatchResult
        One :class:`~cassia_sc.ClusterResult` per cluster, in order.

    Examples
    --------
    >>> result = cassia_sc.get.annotation(adata)  # doctest: +SKIP
    >>> result.summary()  # doctest: +SKIP
    """
    return BatchResult.from_uns(annotation_record(adata, key), declared=fields(adata, key))
