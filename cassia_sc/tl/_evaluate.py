"""``tl.evaluate``: score an annotation against known labels, per cluster."""

from __future__ import annotations

import pandas as pd
from anndata import AnnData

from .._docs import fill_docs
from .._keys import Default, Key
from ..errors import CassiaError
from ..evaluation import evaluation_record, score_labels
from ..get import annotation_record


@fill_docs
def evaluate(
    adata: AnnData, truth_key: str, *, key: str = Default.key_added, copy: bool = False
) -> AnnData | None:
    """Score each cluster's label against the cells' known labels, with the Cell Ontology.

    A cluster's truth is the most common value of ``obs[truth_key]`` among its cells. It
    scores 1 when the predicted main cell type maps to the same Cell Ontology term (or a
    synonym), 0.5 when one term is an ancestor of the other or they are close relatives,
    0 otherwise; see :mod:`cassia_sc.evaluation`.

    Parameters
    ----------
    {annotated}
    truth_key
        ``obs`` column with the known labels.
    {key_read}
    copy
        Return an evaluated copy instead of writing to ``adata``.

    Returns
    -------
    AnnData or None
        The evaluated copy when ``copy=True``, else None. Writes
        ``adata.uns[key]["evaluation"]``: ``table`` (per cluster: ``cluster``, ``truth``,
        ``predicted``, their terms and term labels, ``score``, ``grade``), ``mean``, ``n``,
        ``full``, ``partial`` and ``wrong``.

    Raises
    ------
    OntologyUnavailable
        Without the ``cassia-sc[ontology]`` extra.

    Examples
    --------
    >>> import cassia_sc
    >>> cassia_sc.tl.evaluate(adata, "bulk_labels")  # doctest: +SKIP
    >>> adata.uns["cassia"]["evaluation"]["mean"]  # doctest: +SKIP
    """
    if copy:
        adata = adata.copy()
    record = annotation_record(adata, key)
    if truth_key not in adata.obs.columns:
        raise CassiaError(
            f"{truth_key!r} is not a column of adata.obs; it has {list(adata.obs.columns)}."
        )
    groupby = record[Key.uns.params]["groupby"]
    clusters = adata.obs[groupby].astype(str)
    truth = (
        pd.DataFrame({"cluster": clusters, "truth": adata.obs[truth_key].astype(str)})
        .groupby("cluster", sort=False)["truth"]
        .agg(lambda labels: labels.value_counts().index[0])
    )
    results = record[Key.uns.results]
    present = results[results["cluster"].astype(str).isin(truth.index)]
    table = score_labels(
        present["main_cell_type"].tolist(),
        [truth[c] for c in present["cluster"].astype(str)],
        clusters=present["cluster"].astype(str).tolist(),
    )
    record[Key.uns.evaluation] = evaluation_record(table) | {"truth_key": truth_key}
    return adata if copy else None
