"""The whole run behind ``tl.annotate``: annotate (once or repeatedly), score, boost, rescore.

1. :func:`cassia_sc.run_batch` annotates every cluster (or :func:`run_repeated` several
   times, keeping each cluster's consensus);
2. with ``score=True``, the :class:`~cassia_sc.agents.Scorer` grades every answer;
3. with ``boost_below=``, the :class:`~cassia_sc.agents.Booster` takes on the clusters
   scored below it, rejected by the validator, or (after repeated runs) with too little
   agreement, looks genes up in the data, and has its new answers scored again.

Each phase is cached call by call like the first, so an interrupted run resumes.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import replace
from typing import Any

import pandas as pd
from anndata import AnnData

from ._docs import fill_docs
from ._keys import Default, Key
from .agents import Booster, ClusterTask, OntologyChooser, Scorer, harmonise_batches
from .agents.harmoniser import (
    MARKERS_SHOWN,
    Harmoniser,
    LabelEvidence,
    ontology_harmonised,
    with_harmonised,
)
from .batch import (
    connection_options,
    map_to_ontology,
    per_input,
    record_spending,
    run_batch,
    run_batches,
    run_steps,
)
from .budget import Budget
from .costs import CHARS_PER_TOKEN, CostEstimate, estimate_step
from .errors import CassiaError
from .evidence import DataHandle, MarkerTableEvidence
from .llm import LLMClient
from .markers import MarkerInput, read_markers
from .ontology import UNKNOWN, cell_ontology
from .pricing import PriceBook, PriceTable
from .providers import display_name
from .results import BatchResult
from .subclusters import restricted
from .uncertainty import consensus, consensus_batch, run_repeated

logger = logging.getLogger("cassia_sc")

# A plan's guess of a boost round's growth: the model's reasoning and the evidence shown.
_BOOST_ROUND_CHARS = 5500


@fill_docs
def run_annotation(
    marker: MarkerInput,
    *,
    model: str | None,
    n_runs: int = Default.n_runs,
    models: Sequence[str] | None = None,
    agreement_threshold: float = Default.agreement_threshold,
    score: bool = False,
    score_model: str | None = None,
    score_provider: str | None = None,
    boost_below: float | None = None,
    boost_rounds: int = Default.boost_rounds,
    boost_model: str | None = None,
    boost_provider: str | None = None,
    data: DataHandle | None = None,
    prices: PriceTable | None = None,
    **options: Any,
) -> tuple[BatchResult, pd.DataFrame | None]:
    """Annotate once or several times, then score and boost: what ``tl.annotate`` runs.

    Parameters
    ----------
    {marker}
    {model}
    {n_runs}
    {models}
    {agreement_threshold}
    {score}
    {score_model}
    {score_provider}
    {boost_below}
    {boost_rounds}
    boost_model, boost_provider
        The boost's model and provider, when they are not the run's.
    data
        The expression data the boost looks genes up in, when ``marker`` does not carry
        it (e.g. a backed ``.h5ad`` for the command line); by default the AnnData
        ``marker`` itself, or the rows of a marker table.
    {prices}
    **options
        Options of :func:`cassia_sc.run_batch`.

    Returns
    -------
    tuple
        The batch (the consensus of repeated runs, or a dry run's plan) and, after
        repeated runs, the :func:`cassia_sc.consensus` table (else None).

    Examples
    --------
    >>> result, agreement = run_annotation(adata, model="m", score=True)  # doctest: +SKIP
    """
    choose_terms = options.get("ontology") == "model"
    if choose_terms:
        options["ontology"] = True  # offline first; the model only for what stays unmapped
    provider = options.get("provider") or Default.provider
    providers = (provider, score_provider, boost_provider)
    budget, limits = _run_budget(options, prices, providers)
    if n_runs <= 1 and not models:
        result, agreement = run_batch(marker, model=model, **options), None
    else:
        runs = run_repeated(marker, n_runs=n_runs, models=models, model=model, **options)
        if runs[0].dry_run:
            result, agreement = runs[0], None
        else:
            agreement = consensus(runs, threshold=agreement_threshold)
            result = consensus_batch(runs, agreement)
            result.settings["agreement_threshold"] = agreement_threshold
    if result.dry_run:
        refinement = {
            "score": score,
            "score_model": score_model,
            "score_provider": score_provider,
            "boost_below": boost_below,
            "boost_rounds": boost_rounds,
            "boost_model": boost_model,
            "boost_provider": boost_provider,
        }
        planned = _finished_plan(
            result, provider=provider, prices=prices, limits=limits, options=options, **refinement
        )
        return planned, agreement
    if score or boost_below is not None or choose_terms:
        options.pop("provider", None)
        result = refine(
            result,
            marker,
            score=score,
            score_model=score_model,
            score_provider=score_provider,
            boost_below=boost_below,
            boost_rounds=boost_rounds,
            choose_terms=choose_terms,
            agreement_threshold=agreement_threshold,
            data=data,
            model=boost_model or model or (models[0] if models else None),
            provider=boost_provider or options.get("provider") or provider,
            **options,
        )
    record_spending(result, budget)  # the whole run's: every call, every model
    return result, agreement


#: What a run over several inputs returns per input: its batch, and the consensus table
#: of repeated runs (None without them).
Annotated = tuple[BatchResult, pd.DataFrame | None]


@fill_docs
def run_annotations(
    markers: Sequence[MarkerInput],
    *,
    model: str | None,
    n_runs: int = Default.n_runs,
    models: Sequence[str] | None = None,
    agreement_threshold: float = Default.agreement_threshold,
    score: bool = False,
    score_model: str | None = None,
    score_provider: str | None = None,
    boost_below: float | None = None,
    boost_rounds: int = Default.boost_rounds,
    boost_model: str | None = None,
    boost_provider: str | None = None,
    data: Sequence[DataHandle | None] | None = None,
    prices: PriceTable | None = None,
    harmonise: bool | str = False,
    **options: Any,
) -> list[Annotated]:
    """Annotate several inputs in one run, then score, boost and harmonise their labels.

    :func:`run_annotation` for several inputs: their clusters are annotated in one pool
    with one client (:func:`cassia_sc.batch.run_batches`: one cache, one budget, and a
    marker list found in several inputs asked once). Scores and boosts then run input by
    input, each with the same budget and cache. With ``harmonise``, one more call gives
    the labels of one cell type one name across the inputs (see
    :class:`~cassia_sc.agents.Harmoniser`). One input is annotated as
    :func:`run_annotation` does, repeated runs included.

    Parameters
    ----------
    markers
        The inputs, each an AnnData with a ``rank_genes_groups`` result or a marker table.
    {model}
    {n_runs}
    {models}
    {agreement_threshold}
    {score}
    {score_model}
    {score_provider}
    {boost_below}
    {boost_rounds}
    boost_model, boost_provider
        The boost's model and provider, when they are not the run's.
    data
        Per input, the expression data the boost looks genes up in, when the input does
        not carry it (see :func:`run_annotation`); None for all: the inputs themselves.
    {prices}
    harmonise
        After the run, give one name to the labels of one cell type across the inputs,
        recorded beside them (``celltype_harmonised``): ``True`` or ``"model"`` with one
        structured call to the run's model, ``"ontology"`` offline, by the Cell Ontology
        term each label maps to exactly (needs the ``ontology`` extra).
    **options
        Options of :func:`cassia_sc.batch.run_batches` (``groupby`` one for all inputs
        or one per input).

    Returns
    -------
    list of tuple
        Per input, in order: its batch (a dry run's plan) and, after repeated runs of
        one input, the :func:`cassia_sc.consensus` table (else None).

    Raises
    ------
    CassiaError
        For repeated runs (``n_runs``, ``models``) over several inputs, or an unknown
        ``harmonise``.
    BatchInterrupted
        On Ctrl-C.

    Examples
    --------
    >>> annotated = run_annotations([a, b], model="m", harmonise=True)  # doctest: +SKIP
    >>> [batch["0"].get(HARMONISED) for batch, _ in annotated]  # doctest: +SKIP
    """
    method = harmonise_method(harmonise)
    markers = list(markers)
    if not markers:
        raise CassiaError("run_annotations needs at least one input.")
    several = len(markers) > 1
    if several and (n_runs > 1 or models):
        raise CassiaError(
            "Repeated runs (n_runs=, models=) take one input at a time: annotate each input "
            "on its own, or leave them out."
        )
    if method == "ontology":
        cell_ontology().cl_version  # noqa: B018 - refused now, before any call, without the extra
        options["ontology"] = options.get("ontology") or True
    groupbys = per_input(options.pop("groupby", None), len(markers), name="groupby")
    handles = per_input(data, len(markers), name="data")
    provider = options.get("provider") or Default.provider
    providers = (provider, score_provider, boost_provider)
    budget, limits = _run_budget(options, prices, providers)
    refinement = {
        "score": score,
        "score_model": score_model,
        "score_provider": score_provider,
        "boost_below": boost_below,
        "boost_rounds": boost_rounds,
        "boost_model": boost_model,
        "boost_provider": boost_provider,
    }
    if not several:
        if limits["max_cost"] is not None or limits["max_tokens_total"] is not None:
            options |= limits  # a plan says when it passes them
        annotated = [
            run_annotation(
                markers[0],
                model=model,
                n_runs=n_runs,
                models=models,
                agreement_threshold=agreement_threshold,
                data=handles[0],
                prices=prices,
                groupby=groupbys[0],
                **refinement,
                **options,
            )
        ]
    else:
        results = _annotated_together(
            markers,
            model=model,
            groupbys=groupbys,
            data=handles,
            prices=prices,
            limits=limits,
            agreement_threshold=agreement_threshold,
            refinement=refinement,
            options=options,
        )
        annotated = [(result, None) for result in results]
    if method is None:
        return annotated
    batches = [result for result, _ in annotated]
    if batches[0].dry_run:
        batches = _with_harmonise_estimate(batches, method, prices=prices, options=options)
    else:
        harmonise_options = {**options, "provider": provider}
        batches = harmonise_results(batches, method=method, model=model, **harmonise_options)
        if budget is not None and budget.spent_dollars is not None:
            for batch in batches:  # the run's cost, the harmonisation's call included
                batch.settings["cost"] = round(budget.spent_dollars, 6)
    return [(batch, agreement) for batch, (_, agreement) in zip(batches, annotated, strict=True)]


def harmonise_method(harmonise: bool | str | None) -> str | None:
    """Return the method ``harmonise=`` asks for: ``"model"``, ``"ontology"`` or None.

    Parameters
    ----------
    harmonise
        False or None (no harmonisation), True or ``"model"``, or ``"ontology"``.

    Returns
    -------
    str or None
        The method.

    Raises
    ------
    CassiaError
        For any other value.

    Examples
    --------
    >>> harmonise_method(True), harmonise_method(False), harmonise_method("ontology")
    ('model', None, 'ontology')
    """
    if harmonise is None or harmonise is False:
        return None
    if harmonise is True:
        return "model"
    if harmonise in ("model", "ontology"):
        return str(harmonise)
    raise CassiaError(f"harmonise must be True, False, 'model' or 'ontology', not {harmonise!r}.")


def harmonise_results(
    results: Sequence[BatchResult],
    *,
    method: str = "model",
    model: str | None = None,
    provider: str | None = None,
    client: LLMClient | None = None,
    **options: Any,
) -> list[BatchResult]:
    """Give the labels of one cell type one name across the batches of a run.

    Parameters
    ----------
    results
        The inputs' batches.
    method
        ``"model"`` (one structured call) or ``"ontology"`` (offline).
    model, provider
        The model that names them; by default the run's.
    client
        A client to use instead of building one.
    **options
        Other options of :func:`cassia_sc.run_batch` for the call (``api_key``,
        ``temperature``, ``cache_dir``, ``budget``, ...).

    Returns
    -------
    list of BatchResult
        Copies of the batches with ``celltype_harmonised`` on every cluster (see
        :func:`cassia_sc.agents.harmoniser.with_harmonised`).
    """
    if method == "ontology":
        return with_harmonised(results, ontology_harmonised(results))
    if method != "model":
        raise CassiaError(f"method must be 'model' or 'ontology', not {method!r}.")
    settings = results[0].settings if results else {}
    own = client is None
    if client is None:
        client = LLMClient(
            model=model or str(settings.get("model") or ""),
            provider=provider or str(settings.get("provider") or Default.provider),
            api_key=options.get("api_key"),
            temperature=options.get("temperature", settings.get("temperature")),
            reasoning=options.get("reasoning", settings.get("reasoning")),
            **connection_options(**options),
        )
    try:
        return harmonise_batches(results, client)
    finally:
        if own:
            client.close()


def _annotated_together(
    markers: list[MarkerInput],
    *,
    model: str | None,
    groupbys: list[str | None],
    data: list[DataHandle | None],
    prices: PriceTable | None,
    limits: dict[str, Any],
    agreement_threshold: float,
    refinement: dict[str, Any],
    options: dict[str, Any],
) -> list[BatchResult]:
    """Annotate several inputs in one pool, then score and boost them input by input."""
    choose_terms = options.get("ontology") == "model"
    if choose_terms:
        options["ontology"] = True  # offline first; the model only for what stays unmapped
    provider = options.get("provider") or Default.provider
    results = run_batches(markers, model=model, groupby=groupbys, **options)
    if results[0].dry_run:
        return [
            _finished_plan(
                result,
                provider=provider,
                prices=prices,
                limits=limits,
                options=options,
                **refinement,
            )
            for result in results
        ]
    score, boost_below = refinement["score"], refinement["boost_below"]
    if score or boost_below is not None or choose_terms:
        further = {name: value for name, value in options.items() if name != "provider"}
        boost_model, boost_provider = refinement["boost_model"], refinement["boost_provider"]
        results = [
            refine(
                result,
                marker,
                score=score,
                score_model=refinement["score_model"],
                score_provider=refinement["score_provider"],
                boost_below=boost_below,
                boost_rounds=refinement["boost_rounds"],
                choose_terms=choose_terms,
                agreement_threshold=agreement_threshold,
                data=handle,
                groupby=groupby,
                model=boost_model or model,
                provider=boost_provider or provider,
                **further,
            )
            for result, marker, handle, groupby in zip(
                results, markers, data, groupbys, strict=True
            )
        ]
    for result in results:
        record_spending(result, options.get("budget"))  # the whole run's: every call
    return results


def _run_budget(
    options: dict[str, Any], prices: PriceTable | None, providers: Sequence[str | None]
) -> tuple[Budget | None, dict[str, Any]]:
    """Make the one budget of a run, in ``options["budget"]``, from its limits.

    Pops ``max_cost`` and ``max_tokens_total`` from ``options`` and returns them apart
    (a plan compares its estimate with them). A dry run, a client given or a budget given
    make none.
    """
    limits = {
        "max_cost": options.pop("max_cost", None),
        "max_tokens_total": options.pop("max_tokens_total", None),
    }
    budget = options.get("budget")
    if budget is None and not options.get("dry_run") and options.get("client") is None:
        # One budget for every call of the run: annotation, repeats, scores and boosts.
        book = PriceBook(prices, cache_dir=options.get("cache_dir"), providers=providers)
        budget = options["budget"] = Budget(**limits, prices=book)
    return budget, limits


def _finished_plan(
    plan_: BatchResult,
    *,
    provider: str,
    prices: PriceTable | None,
    limits: dict[str, Any],
    options: dict[str, Any],
    score: bool,
    score_model: str | None,
    score_provider: str | None,
    boost_below: float | None,
    boost_rounds: int,
    boost_model: str | None,
    boost_provider: str | None,
) -> BatchResult:
    """Add the scores' and boosts' calls to a plan, and price it."""
    run_model = str(plan_.settings.get("model"))
    plan_ = _with_refinement_estimate(
        plan_,
        score,
        boost_below,
        boost_rounds,
        score_at=(score_model or run_model, display_name(score_provider or provider)),
        boost_at=(boost_model or run_model, display_name(boost_provider or provider)),
    )
    providers = (provider, score_provider, boost_provider)
    return _priced(plan_, prices, providers, options.get("cache_dir"), limits)


def _with_harmonise_estimate(
    plans: list[BatchResult], method: str, *, prices: PriceTable | None, options: dict[str, Any]
) -> list[BatchResult]:
    """Add the harmonisation's one call to the first plan (none offline), and say so."""
    if method != "model" or plans[0].estimate is None:
        return plans
    first = plans[0]
    harmoniser = Harmoniser()
    # Every cluster's label taken as distinct: the most the call can hold.
    labels = [
        LabelEvidence("x" * 24, tuple(cluster.markers[:MARKERS_SHOWN]), 1, 1)
        for plan_ in plans
        for cluster in plan_.clusters
    ]
    characters = sum(len(m["content"]) for m in harmoniser.messages(labels))
    model, provider = str(first.settings["model"]), str(first.settings["provider"])
    step = estimate_step(
        harmoniser.name,
        model,
        provider,
        calls=1,
        prompt_characters=characters,
        reply_tokens=harmoniser.reply_tokens,
    )
    where = options.get("provider") or Default.provider
    book = PriceBook(prices, cache_dir=options.get("cache_dir"), providers=[where])
    note = "one harmonisation call over every input's labels, counted with the first input"
    estimate = first.estimate.plus([step], notes=[note]).priced(book.price, notes=book.notes)
    return [replace(first, estimate=estimate), *plans[1:]]


@fill_docs
def refine(
    result: BatchResult,
    marker: MarkerInput | None,
    *,
    score: bool = False,
    score_model: str | None = None,
    score_provider: str | None = None,
    boost_below: float | None = None,
    boost_rounds: int = Default.boost_rounds,
    rescore: bool | None = None,
    boost_all: bool = False,
    choose_terms: bool = False,
    agreement_threshold: float = Default.agreement_threshold,
    clusters: Collection[str] | None = None,
    data: DataHandle | None = None,
    model: str | None = None,
    provider: str | None = None,
    client: LLMClient | None = None,
    max_workers: int = Default.max_workers,
    progress: bool = True,
    **options: Any,
) -> BatchResult:
    """Score a finished batch's answers, and boost the doubtful ones.

    What ``tl.annotate(score=True, boost_below=...)`` runs after annotating, and what
    ``tl.score`` and ``tl.boost`` run on an annotated AnnData.

    Parameters
    ----------
    result
        The batch.
    marker
        Where its markers came from (an AnnData or a marker table), for the boost's
        evidence; None when ``data`` is given or no boost is asked for.
    {score}
    {score_model}
    {score_provider}
    {boost_below}
    {boost_rounds}
    rescore
        Score the boosted answers again; by default when ``score``.
    boost_all
        Boost every answered cluster of ``clusters``, doubtful or not.
    choose_terms
        Let the model choose a Cell Ontology term, among candidates found offline, for
        each main cell type the offline rules left unmapped (``ontology="model"``).
    {agreement_threshold}
    clusters
        Only these clusters; None: every one.
    data
        The expression data to look genes up in, instead of ``marker``.
    model, provider
        The boost's model and provider; by default those of ``result``.
    client
        A client to use instead of building one.
    {max_workers}
    {progress}
    **options
        Other options of :func:`cassia_sc.run_batch` (``api_key``, ``temperature``,
        ``cache_dir``, ...).

    Returns
    -------
    BatchResult
        The batch with ``score``/``score_reasoning`` and, for boosted clusters, their new
        answer, ``boosted``, ``initial_cell_type`` and the boost's record.

    Raises
    ------
    BatchInterrupted
        On Ctrl-C; its ``result`` holds every cluster, those not finished as they were.
    """
    settings = result.settings
    own: list[LLMClient] = []

    def connect(name: str | None, where: str | None) -> LLMClient:
        made = LLMClient(
            model=name or str(settings.get("model") or ""),
            provider=where or str(settings.get("provider") or Default.provider),
            api_key=options.get("api_key"),
            temperature=options.get("temperature", settings.get("temperature")),
            reasoning=options.get("reasoning", settings.get("reasoning")),
            **connection_options(**options),
        )
        own.append(made)
        return made

    try:
        main = client or connect(model, provider)
        judge = connect(score_model, score_provider) if score_model or score_provider else None
        scorer = Scorer() if score or rescore else None
        common = {
            "client": main,
            "judge": judge,
            "max_workers": max_workers,
            "progress": progress,
        }
        if score:
            result = run_steps(
                result, [scorer], clusters=clusters, desc="Scoring clusters", **common
            )
        if scorer is not None:
            result.settings |= {"score": True, "score_model": (judge or main).model}
        if choose_terms:
            unmapped = [
                c.cluster
                for c in result.clusters
                if c.main_cell_type and c.ontology_term_id in (None, UNKNOWN)
            ]
            if unmapped:
                chooser = OntologyChooser(cell_ontology())
                result = run_steps(
                    result, [chooser], clusters=unmapped, desc="Mapping labels", **common
                )
        if boost_below is not None or boost_all:
            booster = Booster(
                below=boost_below,
                agreement_threshold=agreement_threshold,
                rounds=boost_rounds,
                rescore=scorer if rescore is not False else None,
                always=boost_all,
            )
            named = set(result.clusters_named(clusters))
            doubtful = [
                c.cluster for c in result.clusters if c.cluster in named and booster.reason(c)
            ]
            if doubtful:
                data, table = _evidence_sources(marker, data, settings, options)
                result = run_steps(
                    result,
                    [booster],
                    clusters=doubtful,
                    data=data,
                    table_evidence=table,
                    desc="Boosting clusters",
                    **common,
                )
                # Only the new labels: a term the model chose for another cluster stays.
                relabelled = [
                    c.cluster
                    for c in result.clusters
                    if c.cluster in doubtful and c.extra.get("boosted")
                ]
                map_to_ontology(result, required=False, clusters=relabelled)
            if boost_below is not None:  # a boost of chosen clusters has no threshold
                result.settings["boost_below"] = boost_below
            result.settings |= {
                "boost_rounds": boost_rounds,
                "boosted": sum(bool(c.extra.get("boosted")) for c in result.clusters),
            }
            logger.info(
                "Boosted %d of %d doubtful clusters.", result.settings["boosted"], len(doubtful)
            )
    finally:
        for made in own:
            made.close()
    return result


def _evidence_sources(
    marker: MarkerInput | None,
    data: DataHandle | None,
    settings: dict[str, Any],
    options: dict[str, Any],
) -> tuple[DataHandle | None, MarkerTableEvidence | None]:
    """Where the boost looks genes up: the expression data, else the marker table."""
    if data is not None:
        return data, None
    key = options.get("key") or settings.get("key") or Key.uns.markers
    if isinstance(marker, AnnData):
        handle = DataHandle.from_markers(
            marker,
            key=str(key),
            groupby=options.get("groupby") or settings.get("groupby"),
            gene_symbols=options.get("gene_symbols"),
        )
        if handle is None:
            raise CassiaError(
                "The boost needs the cells of the AnnData (its X and the clusters' column); "
                "this one has none."
            )
        return handle, None
    if marker is None:
        raise CassiaError("The boost needs the markers' AnnData or table to look genes up in.")
    table = read_markers(
        marker,
        celltype_column=options.get("celltype_column"),
        gene_column_name=options.get("gene_column_name"),
    )
    return None, MarkerTableEvidence(table)


def _with_refinement_estimate(
    plan_: BatchResult,
    score: bool,
    boost_below: float | None,
    boost_rounds: int,
    *,
    score_at: tuple[str, str],
    boost_at: tuple[str, str],
) -> BatchResult:
    """Add the scoring and boost calls to a plan: per cluster, and step by step.

    ``score_at`` and ``boost_at`` are the (model, provider) each step calls.
    """
    if not score and boost_below is None:
        return plan_
    scorer, booster = Scorer(), Booster(rounds=boost_rounds)
    share = Default.boost_share if boost_below is not None else 0.0
    clusters = []
    score_characters = boost_characters = 0.0
    for cluster in plan_.clusters:
        task = ClusterTask.of(cluster, plan_.settings)
        scoring = sum(len(m["content"]) for m in scorer.plan(task)) if score else 0
        boosting = 0.0
        if share:
            opening = sum(len(m["content"]) for m in booster.plan(task))
            rounds = sum(opening + r * _BOOST_ROUND_CHARS for r in range(boost_rounds))
            boosting = share * rounds
            scoring += share * opening if score else 0  # the boosted label is scored again
        score_characters += scoring
        boost_characters += boosting
        extra = int(-(-(scoring + boosting) // CHARS_PER_TOKEN))
        clusters.append(
            replace(cluster, estimated_prompt_tokens=cluster.estimated_prompt_tokens + extra)
        )
    n = len(plan_.clusters)
    steps, note = [], []
    if score:
        calls = n * (1 + share)
        steps.append(
            estimate_step(
                scorer.name,
                *score_at,
                calls=calls,
                prompt_characters=score_characters,
                reply_tokens=scorer.reply_tokens,
            )
        )
        note.append("one scoring call per cluster")
    if share:
        steps.append(
            estimate_step(
                booster.name,
                *boost_at,
                calls=share * n * boost_rounds,
                prompt_characters=boost_characters,
                reply_tokens=booster.reply_tokens,
            )
        )
        note.append(
            f"a boost of all {boost_rounds} rounds for {share:.0%} of the clusters (a guess: "
            "how many need one is known only after scoring)"
        )
    settings = plan_.settings | {"estimate_includes": "; ".join(note)}
    estimate = (plan_.estimate or CostEstimate()).plus(steps, notes=note[1:])
    return replace(plan_, clusters=clusters, settings=settings, estimate=estimate)


def _priced(
    plan_: BatchResult,
    prices: PriceTable | None,
    providers: Collection[str | None],
    cache_dir,
    limits: dict[str, Any],
) -> BatchResult:
    """Give a plan's estimate its dollars; say when it passes the run's budget.

    The prices come from ``prices``, or the providers' own lists.
    """
    if plan_.estimate is None:
        return plan_
    book = PriceBook(prices, cache_dir=cache_dir, providers=providers)
    estimate = plan_.estimate.priced(book.price, notes=book.notes)
    over = []
    if limits["max_cost"] is not None and (estimate.dollars or 0) > limits["max_cost"]:
        over.append(f"max_cost={limits['max_cost']:g}")
    tokens = estimate.prompt_tokens + estimate.completion_tokens
    if limits["max_tokens_total"] is not None and tokens > limits["max_tokens_total"]:
        over.append(f"max_tokens_total={limits['max_tokens_total']:,}")
    if over:
        note = f"more than the budget ({', '.join(over)}): the run would stop short of the end"
        estimate = replace(estimate, notes=(*estimate.notes, note))
    return replace(plan_, estimate=estimate)


@fill_docs
def plan(
    marker: MarkerInput,
    *,
    model: str | None = None,
    n_runs: int = Default.n_runs,
    models: Sequence[str] | None = None,
    prices: PriceTable | None = None,
    **options: Any,
) -> BatchResult:
    """Show what an annotation would send and cost, without calling a model.

    Builds every prompt of the run that :func:`cassia_sc.tl.annotate` (or
    :func:`cassia_sc.run_batch`) would make with the same arguments, and estimates its
    calls and tokens step by step (``result.estimate``): the annotator's and the
    validator's call per cluster; with ``score=True`` a scoring call per cluster; with
    ``boost_below=`` a boost of every round for a quarter of the clusters (a guess, said
    in the estimate's notes). Prompt tokens are counted from the prompts, completion
    tokens are each agent's usual reply length. The cost in dollars comes from
    ``prices`` or the provider's own model list (OpenRouter's carries prices; the only
    request a plan makes, kept a day in the cache folder); without a price it is "price
    unknown". Needs no key; nothing is written.

    Parameters
    ----------
    {marker}
    {model}
    {n_runs}
    {models}
    {prices}
    **options
        Any other option of :func:`cassia_sc.tl.annotate` or :func:`cassia_sc.run_batch`
        (``tissue``, ``species``, ``score``, ``boost_below``, ``restrict_to``, ...).

    Returns
    -------
    BatchResult
        A dry run: every cluster ``not_run``, with its opening prompts in its
        conversation and ``estimated_prompt_tokens`` covering every run; ``estimate``
        holds the calls, tokens and dollars step by step (:class:`cassia_sc.costs.CostEstimate`).

    Examples
    --------
    >>> import cassia_sc
    >>> preview = cassia_sc.plan(cassia_sc.loadmarker("pbmc68k_processed"), tissue="blood",
    ...     species="human", model="any-model", n_runs=3, progress=False,
    ...     prices={"any-model": (0.15, 0.60)})
    >>> preview.dry_run, preview.settings["runs"]
    (True, 3)
    >>> preview.estimate.table()[["step", "calls"]].to_dict("list")
    {'step': ['annotator', 'validator'], 'calls': [33, 33]}
    >>> 0 < preview.estimate.dollars < 0.1
    True
    """
    options.pop("dry_run", None)
    restrict_to = options.pop("restrict_to", None)
    if restrict_to is not None:
        if not isinstance(marker, AnnData):
            raise CassiaError("restrict_to selects cells of an AnnData; a marker table has none.")
        marker, population = restricted(
            marker,
            restrict_to,
            key=options.get("key", Key.uns.markers),
            groupby=options.get("groupby"),
            parent=options.get("parent"),
        )
        options["parent"] = population.parent
    result, _ = run_annotation(
        marker, model=model, n_runs=n_runs, models=models, dry_run=True, prices=prices, **options
    )
    result.settings.setdefault("runs", max(n_runs, 1) * max(len(models or ()), 1))
    return result
