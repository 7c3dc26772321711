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

    A cluster's truth is the most common value of ``obs[truth_key]`` among its cells, joined
    to the cluster's answer by cluster name. Both labels are mapped to the Cell Ontology
    with the run's tissue. A cluster scores 1 when the predicted main cell type maps to the
    same term, 0.5 when the terms are related (an ancestor or descendant, a close relative,
    a lineage link), 0 otherwise; ``score_100`` grades the same on CASSIA's 0-100 scale (a
    more specific right answer 90, a broader one 80 to 50); see :mod:`cassia_sc.evaluation`.

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
        ``predicted``, their terms and term labels, ``score``, ``grade``, ``score_100``,
        ``relation``, ``related``, each label's state and broader flag), ``mean``,
        ``mean_100``, ``n``, ``full``, ``partial``, ``wrong`` and ``truth_key``.

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
    params = record[Key.uns.params]
    groupby = params["groupby"]
    clusters = adata.obs[groupby].astype(str)
    truth = (
        pd.DataFrame({"cluster": clusters, "truth": adata.obs[truth_key].astype(str)})
        .groupby("cluster", sort=False)["truth"]
        .agg(lambda labels: labels.value_counts().index[0])
    )
    results = record[Key.uns.results]
    names = results["cluster"].astype(str)
    present = results[names.isin(truth.index)]
    clusters = present["cluster"].astype(str).tolist()
    table = score_labels(
        present["main_cell_type"].tolist(),
        [truth[c] for c in clusters],  # joined by cluster name, never by position
        clusters=clusters,
        tissue=params.get("tissue"),
    )
    record[Key.uns.evaluation] = evaluation_record(table) | {"truth_key": truth_key}
    return adata if copy else None
