"""``tl.evaluate``: score an annotation against known labels, per cluster."""

from __future__ import annotations

from typing import Any

import pandas as pd
from anndata import AnnData

from .._docs import fill_docs
from .._keys import Default, Key
from ..agents import judge_pairs
from ..batch import connection_options
from ..errors import CassiaError
from ..evaluation import evaluation_record, score_labels
from ..get import annotation_record
from ..llm import LLMClient


@fill_docs
def evaluate(
    adata: AnnData,
    truth_key: str,
    *,
    key: str = Default.key_added,
    judge_model: str | None = None,
    judge_provider: str | None = None,
    copy: bool = False,
    **options: Any,
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
    judge_model
        A model that grades, from 0 to 100 as CASSIA's benchmark did, the pairs the ontology
        cannot relate (``related`` is False); None: none. Each call is cached.
    judge_provider
        The judge's provider; by default the annotation's.
    copy
        Return an evaluated copy instead of writing to ``adata``.
    **options
        With ``judge_model``: options of the calls (``api_key``, ``cache_dir``, ``timeout``,
        ``max_workers``, ...).

    Returns
    -------
    AnnData or None
        The evaluated copy when ``copy=True``, else None. Writes
        ``adata.uns[key]["evaluation"]``: ``table`` (per cluster: ``cluster``, ``truth``,
        ``predicted``, their terms and term labels, ``score``, ``grade``, ``score_100``,
        ``relation``, ``related``, each label's state and broader flag; with a judge,
        ``judge_score`` and ``judge_reasoning`` for the pairs it graded), ``mean``,
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
    if judge_model:
        table = _judged(table, params, judge_model, judge_provider, options)
    record[Key.uns.evaluation] = evaluation_record(table) | {"truth_key": truth_key}
    return adata if copy else None


def _judged(
    table: pd.DataFrame,
    params: dict[str, Any],
    model: str,
    provider: str | None,
    options: dict[str, Any],
) -> pd.DataFrame:
    """Add a model's grade of the pairs the ontology could not relate."""
    unrelated = ~table["related"].astype(bool)
    pairs = list(zip(table.loc[unrelated, "predicted"], table.loc[unrelated, "truth"], strict=True))
    client = LLMClient(
        model=model,
        provider=provider or str(params.get("provider") or Default.provider),
        api_key=options.get("api_key"),
        **connection_options(**options),
    )
    with client:
        grades = judge_pairs(
            pairs,
            client,
            tissue=params.get("tissue"),
            species=params.get("species"),
            max_workers=options.get("max_workers", Default.max_workers),
        )
    table = table.copy()
    table["judge_score"] = float("nan")
    table["judge_reasoning"] = ""
    table.loc[unrelated, "judge_score"] = [
        g.score if g.score is not None else float("nan") for g in grades
    ]
    table.loc[unrelated, "judge_reasoning"] = [g.reasoning for g in grades]
    return table
