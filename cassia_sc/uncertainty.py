"""How sure is each call: repeated annotations, a consensus label and an agreement score.

Runs are repeated at a temperature above 0 (``n_runs``) or across models (``models``);
each run's replies are cached on their own, so a repeated batch is still free to re-run.
Two answers agree when they name the same Cell Ontology term or one term is an ancestor
of the other (with the ``ontology`` extra), else when their normalised text is the same.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pandas as pd

from ._keys import Default
from .batch import run_batch
from .costs import CostEstimate
from .errors import CassiaError, OntologyUnavailable
from .evaluation import same_text
from .markers import MarkerInput
from .ontology import cell_ontology
from .results import BatchResult, ClusterResult

logger = logging.getLogger("cassia_sc")

UNCERTAINTY_COLUMNS = ["cluster", "consensus", "agreement", "flagged", "answers", "consensus_run"]


def run_repeated(
    marker: MarkerInput,
    *,
    n_runs: int = 3,
    models: Sequence[str] | None = None,
    model: str | None = None,
    **options: Any,
) -> list[BatchResult]:
    """Annotate the same clusters several times, for :func:`consensus`.

    Parameters
    ----------
    marker
        Markers in any format :func:`cassia_sc.top_markers` reads.
    n_runs
        Runs per model. Use a ``temperature`` above 0, or the runs of one model will
        mostly repeat one answer.
    models
        Several models, each run ``n_runs`` times; else ``model`` alone.
    model
        The model when ``models`` is not given.
    **options
        Options of :func:`cassia_sc.run_batch` (``tissue``, ``species``, ``provider``,
        ``temperature``, ...). With ``dry_run=True`` one plan is returned, whose token
        estimates cover every run.

    Returns
    -------
    list of BatchResult
        One per run, in the order model by model, run by run.

    Examples
    --------
    >>> import cassia_sc
    >>> runs = cassia_sc.run_repeated(  # doctest: +SKIP
    ...     adata, n_runs=3, model="openai/gpt-4o-mini", temperature=0.7,
    ...     tissue="blood", species="human",
    ... )
    >>> cassia_sc.consensus(runs)  # doctest: +SKIP
    """
    if n_runs < 1:
        raise CassiaError(f"n_runs must be at least 1, not {n_runs!r}.")
    if models and options.get("client") is not None:
        raise CassiaError("Pass either models= or client=, not both.")
    client = options.get("client")
    chosen = list(models) if models else [model or (client.model if client else None)]
    if not all(chosen):
        raise CassiaError("model must be given, e.g. model='openai/gpt-4o', or models=[...].")
    schedule = [(name, sample) for name in chosen for sample in range(n_runs)]
    if len(schedule) > 1 and n_runs > 1 and not options.get("temperature"):
        logger.warning(
            "Repeating runs of one model at temperature 0 mostly repeats its answer; "
            "set temperature above 0 (e.g. 0.7) or compare models=[...]."
        )
    if options.get("dry_run"):
        single = run_batch(marker, model=chosen[0], **options)
        return [_scaled_plan(single, [name for name, _ in schedule])]
    return [run_batch(marker, model=name, sample=sample, **options) for name, sample in schedule]


def _scaled_plan(single: BatchResult, models: list[str]) -> BatchResult:
    """One run's plan made into the plan of a run per entry of ``models``."""
    runs = len(models)
    clusters = [
        replace(c, estimated_prompt_tokens=(c.estimated_prompt_tokens or 0) * runs)
        for c in single.clusters
    ]
    total = sum(c.estimated_prompt_tokens for c in clusters)
    logger.info("Dry run of %d runs: about %d prompt tokens in all.", runs, total)
    settings = single.settings | {"runs": runs}
    estimate = single.estimate
    if estimate is not None:
        every_run = [step for name in models for step in estimate.for_model(name).steps]
        estimate = CostEstimate(notes=estimate.notes).plus(every_run)
    return BatchResult(
        clusters=clusters,
        settings=settings,
        dry_run=True,
        fields=single.fields,
        estimate=estimate,
    )


def consensus(
    runs: Sequence[BatchResult], *, threshold: float = Default.agreement_threshold
) -> pd.DataFrame:
    """Return each cluster's consensus label and how many runs agree with it.

    Parameters
    ----------
    runs
        Batches over the same clusters, from :func:`run_repeated`.
    threshold
        Clusters whose agreement is below it are flagged for review.

    Returns
    -------
    pandas.DataFrame
        One row per cluster: ``cluster``, ``consensus`` (the answer that most runs agree
        with; the earliest on a tie; "" when every run failed), ``agreement`` (share of
        all runs agreeing with it, failed runs counted as disagreeing), ``flagged``,
        ``answers`` (each run's main cell type, ``"; "``-joined, ``-`` for a failed run)
        and ``consensus_run`` (index of the run whose answer is the consensus, -1 when none).

    Examples
    --------
    >>> from cassia_sc.results import BatchResult, ClusterResult
    >>> def run(label):
    ...     return BatchResult([ClusterResult("0", ["CD3D"], "ok", main_cell_type=label)])
    >>> table = consensus([run("T cell"), run("T cells"), run("B cell")])
    >>> table.loc[0, "consensus"], round(float(table.loc[0, "agreement"]), 2)
    ('T cell', 0.67)
    """
    if not runs:
        raise CassiaError("consensus needs at least one run.")
    ancestors = _ancestry()
    rows = []
    for index, first in enumerate(runs[0].clusters):
        results = [run.clusters[index] for run in runs]
        if any(r.cluster != first.cluster for r in results):
            raise CassiaError("The runs do not annotate the same clusters in the same order.")
        support = [
            sum(_agree(a, b, ancestors) for b in results) if a.main_cell_type else 0
            for a in results
        ]
        best = max(range(len(results)), key=lambda i: (support[i], -i))
        agreement = support[best] / len(results)
        rows.append(
            {
                "cluster": first.cluster,
                "consensus": results[best].main_cell_type or "",
                "agreement": agreement,
                "flagged": agreement < threshold,
                "answers": "; ".join(r.main_cell_type or "-" for r in results),
                "consensus_run": best if support[best] else -1,
            }
        )
    return pd.DataFrame(rows, columns=UNCERTAINTY_COLUMNS)


def consensus_batch(runs: Sequence[BatchResult], table: pd.DataFrame) -> BatchResult:
    """Return a batch made of each cluster's consensus answer, with its agreement.

    Parameters
    ----------
    runs
        The runs.
    table
        Their :func:`consensus`.

    Returns
    -------
    BatchResult
        For each cluster, the result of the run that gave the consensus (the first run's
        when every run failed), with ``agreement`` set; the settings of the first run plus
        the number of runs.

    Examples
    --------
    >>> merged = consensus_batch(runs, consensus(runs))  # doctest: +SKIP
    """
    clusters: list[ClusterResult] = []
    for index, row in enumerate(table.itertuples()):
        source = runs[max(row.consensus_run, 0)].clusters[index]
        clusters.append(replace(source, agreement=float(row.agreement)))
    models = list(dict.fromkeys(str(run.settings.get("model", "")) for run in runs))
    settings = runs[0].settings | {"runs": len(runs), "models": ", ".join(models)}
    return BatchResult(clusters=clusters, settings=settings, fields=runs[0].fields)


def _agree(a: ClusterResult, b: ClusterResult, ancestors) -> bool:
    if not a.main_cell_type or not b.main_cell_type:
        return False
    terms = (a.ontology_term_id, b.ontology_term_id)
    if all(t and t != "unknown" for t in terms) and ancestors is not None:
        first, second = terms
        return first == second or first in ancestors(second) or second in ancestors(first)
    return same_text(a.main_cell_type, b.main_cell_type)


def _ancestry():
    """Return the ontology's ancestor lookup, or None without the extra."""
    try:
        ontology = cell_ontology()
        ontology.ancestors("CL:0000000")  # loads it, or says it cannot
    except OntologyUnavailable:
        return None
    return ontology.ancestors
