"""Read an annotation back from an AnnData, in the spirit of :mod:`scanpy.get`.

Every reader (``pl``, ``tl.evaluate``, the report) goes through here; nothing here writes.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from anndata import AnnData

from ._docs import fill_docs
from ._keys import Default, Key
from .agents import PIPELINES
from .errors import CassiaError
from .fields import CORE_FIELDS, Field
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
    """Return the declared fields of an annotation: the core ones and its pipeline's.

    Parameters
    ----------
    {annotated}
    {key_read}

    Returns
    -------
    tuple of Field
        The fields of the pipeline named in the annotation's parameters (the core fields
        when that pipeline is not registered in this session).
    """
    params = annotation_record(adata, key).get(Key.uns.params, {})
    pipeline = PIPELINES.get(str(params.get("validator_involvement", "")))
    return pipeline.fields if pipeline is not None else CORE_FIELDS


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
