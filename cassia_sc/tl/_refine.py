"""``tl.score`` and ``tl.boost``: grade, or settle, the labels of an annotated AnnData."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from functools import partial
from typing import Any

from anndata import AnnData

from .._docs import fill_docs
from .._keys import Default, Key
from ..batch import run_batch
from ..export.adata import store_result
from ..get import annotation, annotation_record
from ..results import BatchResult
from ..subclusters import Population, population
from ..workflow import refine
from ._annotate import accepted_options, check_adata, check_options
from ._subclusters import restriction, store_restricted

logger = logging.getLogger("cassia_sc")


@fill_docs
def score(
    adata: AnnData,
    *,
    key: str = Default.key_added,
    score_model: str | None = None,
    score_provider: str | None = None,
    clusters: Collection[str] | None = None,
    copy: bool = False,
    **options: Any,
) -> AnnData | None:
    """Have a judge model grade each label of an annotation from 0 to 100.

    The judge reads each cluster's ranked markers and the whole exchange that produced
    its label; see :class:`~cassia_sc.agents.Scorer`. A score that cannot be had leaves
    the label as it was, with the score missing and the reason in ``score_reasoning``.

    Parameters
    ----------
    {annotated}
    {key_read}
    {score_model}
    {score_provider}
    clusters
        Only these clusters; None: every one.
    {copy}
    **options
        Options of :func:`cassia_sc.run_batch` for the calls (``api_key``,
        ``temperature``, ``cache_dir``, ``max_workers``, ``progress``, ...).

    Returns
    -------
    AnnData or None
        The scored copy when ``copy=True``, else None. Writes ``score`` and
        ``score_reasoning`` to ``adata.uns[key]["results"]`` and
        ``adata.obs[f"{key}_score"]``.

    Examples
    --------
    >>> cassia_sc.tl.score(adata, score_model="anthropic/claude-sonnet-4")  # doctest: +SKIP
    >>> adata.uns["cassia"]["results"][["cluster", "score"]]  # doctest: +SKIP
    """
    _check("tl.score", adata, options, score)
    return _refined(
        adata,
        key,
        copy,
        score=True,
        score_model=score_model,
        score_provider=score_provider,
        clusters=clusters,
        **options,
    )


@fill_docs
def boost(
    adata: AnnData,
    *,
    key: str = Default.key_added,
    boost_below: float = Default.boost_below,
    boost_rounds: int = Default.boost_rounds,
    rescore: bool | None = None,
    score_model: str | None = None,
    clusters: Collection[str] | None = None,
    copy: bool = False,
    **options: Any,
) -> AnnData | None:
    """Settle the doubtful labels of an annotation by looking genes up in the data.

    Clusters scored below ``boost_below``, rejected by the validator, or (after repeated
    runs) with too little agreement are boosted: the model states hypotheses, asks for
    genes, and sees per gene the cluster's mean expression and fraction of expressing
    cells against the rest and its most similar clusters; see
    :class:`~cassia_sc.agents.Booster`. A new answer replaces the label, the first is
    kept; a boost that fails keeps the first label.

    Parameters
    ----------
    {annotated}
    {key_read}
    {boost_below}
    {boost_rounds}
    rescore
        Score the new answers; by default when the annotation was scored.
    {score_model}
    clusters
        Only these clusters (still only when doubtful); None: every doubtful one.
    {copy}
    **options
        Options of :func:`cassia_sc.run_batch` for the calls (``model`` and ``provider``
        default to the annotation's; ``api_key``, ``cache_dir``, ``progress``, ...).

    Returns
    -------
    AnnData or None
        The boosted copy when ``copy=True``, else None. Writes the new labels to
        ``adata.obs`` and the first ones to ``adata.obs[f"{key}_celltype_initial"]``,
        and ``boosted``, ``initial_cell_type``, ``boost_reason``, ``boost_genes``,
        ``boost_rounds`` and ``boost_error`` to ``adata.uns[key]["results"]``.

    Examples
    --------
    >>> cassia_sc.tl.boost(adata, boost_below=75)  # doctest: +SKIP
    >>> adata.obs["cassia_celltype_initial"].value_counts()  # doctest: +SKIP
    """
    _check("tl.boost", adata, options, boost)
    scored = "score" in annotation_record(adata, key)[Key.uns.results].columns
    return _refined(
        adata,
        key,
        copy,
        rescore=scored if rescore is None else rescore,
        score_model=score_model,
        boost_below=boost_below,
        boost_rounds=boost_rounds,
        clusters=clusters,
        **options,
    )


def _check(tool: str, adata: object, options: dict[str, Any], function: Callable[..., Any]) -> None:
    """Refuse a non-AnnData, and an option neither the tool nor what it forwards to takes."""
    check_adata(tool, adata)
    # The tool fills in the annotation, its markers and their grouping itself.
    filled = {"result", "marker", "sample", "groupby", "agreement_threshold"}
    check_options(tool, options, accepted_options(function, refine, run_batch, leave_out=filled))


def _refined(adata: AnnData, key: str, copy: bool, **options: Any) -> AnnData | None:
    """Run :func:`cassia_sc.workflow.refine` on the annotation under ``key``; store it back."""
    if copy:
        adata = adata.copy()
    record = annotation_record(adata, key)
    params = record[Key.uns.params]
    groupby, markers_key = str(params["groupby"]), str(params.get("key", Key.uns.markers))
    # A subcluster annotation is refined among its population's cells: the boost contrasts
    # a subcluster with its siblings, and the cells outside keep NaN.
    found = population_of(adata, params)
    result = refine(
        annotation(adata, key),
        adata if found is None else adata[found.cells],
        key=markers_key,
        groupby=groupby,
        agreement_threshold=float(params.get("agreement_threshold", Default.agreement_threshold)),
        **options,
    )
    columns = store_back(adata, result, key=key, record=record, found=found)
    logger.info("updated\n%s    %r (adata.uns)", "".join(f"    {c!r}\n" for c in columns), key)
    return adata if copy else None


def population_of(adata: AnnData, params: Mapping[str, Any]) -> Population | None:
    """Return the population of a subcluster annotation (its ``restrict_to``), else None."""
    restrict_to = restriction(params)
    return population(adata, restrict_to, parent=params.get("parent")) if restrict_to else None


def store_back(
    adata: AnnData,
    result: BatchResult,
    *,
    key: str,
    record: Mapping[str, Any],
    found: Population | None,
) -> list[str]:
    """Store a changed annotation where it was: for subclusters, among the population's cells.

    Parameters
    ----------
    adata
        The annotated data.
    result
        The annotation, changed.
    key
        Its ``key_added``.
    record
        Its ``uns`` entry before the change (groupby, markers key, uncertainty).
    found
        Its population (:func:`population_of`), or None.

    Returns
    -------
    list of str
        The ``obs`` columns written.
    """
    params = record[Key.uns.params]
    store = store_result if found is None else partial(store_restricted, population=found)
    return store(
        adata,
        result,
        groupby=str(params["groupby"]),
        key=str(params.get("key", Key.uns.markers)),
        key_added=key,
        uncertainty=record.get(Key.uns.uncertainty),
    )
