"""Annotate every cluster of a marker set in parallel: ``run_batch``, or ``run_batches``.

Clusters run on a thread pool sharing one model client; ``run_batches`` puts the clusters
of several inputs in the same pool. One failing cluster never stops the others, and every
cluster is in the result, in input order, whatever happened to it. Ctrl-C stops promptly
and keeps what finished; a bad key or an unknown model stops the run at once with a
single message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import Future
from copy import deepcopy
from dataclasses import dataclass, replace
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any

import pandas as pd
from anndata import AnnData

from ._docs import fill_docs
from ._keys import Default, Key
from ._version import __version__
from .agents import ClusterContext, ClusterTask, Pipeline, Step, annotate_cluster, get_pipeline
from .budget import Budget
from .costs import CHARS_PER_TOKEN, DEFAULT_REPLY_TOKENS, CostEstimate, estimate_step
from .errors import (
    BatchInterrupted,
    BudgetReached,
    CallCancelled,
    CassiaError,
    FatalLLMError,
    MarkerError,
    OntologyUnavailable,
)
from .evidence import DataHandle
from .llm import LLMClient
from .markers import MarkerInput, RankingMethod, top_markers
from .ontology import cell_ontology, load_in_background
from .pricing import PriceBook, PriceTable
from .providers import display_name
from .results import BatchResult, ClusterResult, Turn
from .rounds import BatchRounds

if TYPE_CHECKING:
    from .evidence import MarkerTableEvidence

logger = logging.getLogger("cassia_sc")


@fill_docs
def run_batch(
    marker: MarkerInput,
    *,
    tissue: str | None,
    species: str,
    model: str | None = None,
    provider: str = Default.provider,
    api_key: str | None = None,
    max_workers: int = Default.max_workers,
    n_genes: int = Default.n_genes,
    additional_info: str | None = None,
    parent: str | None = None,
    temperature: float | None = Default.temperature,
    validator_involvement: str = Default.validator_involvement,
    reasoning: str | None = None,
    ranking_method: RankingMethod = Default.ranking_method,
    ascending: bool | None = None,
    celltype_column: str | None = None,
    gene_column_name: str | None = None,
    key: str = Key.uns.markers,
    groupby: str | None = None,
    gene_symbols: str | None = None,
    max_retries: int = Default.max_retries,
    timeout: float = Default.timeout,
    max_tokens: int | None = Default.max_tokens,
    requests_per_minute: float | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    batch_api: bool | str = False,
    batch_poll_interval: float = Default.batch_poll_interval,
    max_cost: float | None = None,
    max_tokens_total: int | None = None,
    prices: PriceTable | None = None,
    budget: Budget | None = None,
    dry_run: bool = False,
    progress: bool = True,
    client: LLMClient | None = None,
    ontology: bool | None = None,
    sample: int = 0,
) -> BatchResult:
    """Annotate every cluster of a marker set with a language model, in parallel.

    Each cluster's top markers (see :func:`cassia_sc.top_markers`) go to an annotator,
    whose answer is checked against the markers and reviewed by a validator, with
    bounded revision rounds.

    Parameters
    ----------
    {marker}
    {tissue}
    {species}
    {model}
    {provider}
    {api_key}
    {max_workers}
    {n_genes}
    {additional_info}
    {parent}
    {temperature}
    {validator_involvement}
    {reasoning}
    {ranking_method}
    {ascending}
    {celltype_column}
    {gene_column_name}
    {key}
    {groupby}
    {gene_symbols}
    {max_retries}
    {timeout}
    {max_tokens}
    {requests_per_minute}
    {cache}
    {cache_dir}
    {batch_api}
    {batch_poll_interval}
    {max_cost}
    {max_tokens_total}
    {prices}
    budget
        A :class:`~cassia_sc.budget.Budget` shared with other runs (its limits then
        apply to them all, and ``max_cost``, ``max_tokens_total`` and ``prices`` are not
        used); by default one of this run's own.
    dry_run
        Build every prompt and estimate the prompt tokens, without calling a model;
        works offline and needs no key.
    {progress}
    {client}
    {ontology}
    sample
        Which of several repeated runs this is; each gets its own answers (and cache
        entries) from a model sampling at a temperature above 0. 0 for a single run.

    Returns
    -------
    BatchResult
        One :class:`~cassia_sc.results.ClusterResult` per cluster, in input order.

    Raises
    ------
    MissingAPIKeyError
        Before any work, when there is no key for the provider.
    AuthenticationFailed, ModelNotFound
        When the provider refuses the key or does not know the model.
    BatchInterrupted
        On Ctrl-C; its ``result`` holds every cluster, finished or not.

    Examples
    --------
    >>> import cassia_sc
    >>> plan = cassia_sc.run_batch(
    ...     cassia_sc.loadmarker("pbmc68k_processed"), tissue="blood", species="human",
    ...     model="any-model", dry_run=True, progress=False,
    ... )
    >>> len(plan), plan.clusters[0].status
    (11, 'not_run')
    """
    # run_batch is run_batches of one input: every option goes on as it was given.
    options = {name: value for name, value in locals().items() if name != "marker"}
    try:
        (batch,) = run_batches([marker], **options)
    except BatchInterrupted as stopped:
        raise BatchInterrupted(stopped.result[0]) from None
    return batch


@fill_docs
def run_batches(
    markers: Sequence[MarkerInput],
    *,
    tissue: str | None,
    species: str,
    model: str | None = None,
    provider: str = Default.provider,
    api_key: str | None = None,
    max_workers: int = Default.max_workers,
    n_genes: int = Default.n_genes,
    additional_info: str | None = None,
    parent: str | None = None,
    temperature: float | None = Default.temperature,
    validator_involvement: str = Default.validator_involvement,
    reasoning: str | None = None,
    ranking_method: RankingMethod = Default.ranking_method,
    ascending: bool | None = None,
    celltype_column: str | None = None,
    gene_column_name: str | None = None,
    key: str = Key.uns.markers,
    groupby: str | Sequence[str | None] | None = None,
    gene_symbols: str | None = None,
    max_retries: int = Default.max_retries,
    timeout: float = Default.timeout,
    max_tokens: int | None = Default.max_tokens,
    requests_per_minute: float | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    batch_api: bool | str = False,
    batch_poll_interval: float = Default.batch_poll_interval,
    max_cost: float | None = None,
    max_tokens_total: int | None = None,
    prices: PriceTable | None = None,
    budget: Budget | None = None,
    dry_run: bool = False,
    progress: bool = True,
    client: LLMClient | None = None,
    ontology: bool | None = None,
    sample: int = 0,
) -> list[BatchResult]:
    """Annotate the clusters of several marker sets in one run: one pool, one client.

    What :func:`run_batch` does for one input, for all of them at once: every cluster
    of every input is a job of the same pool, asking the same model client. So
    ``max_workers``, the pacing, the cache, the budget (``max_cost``,
    ``max_tokens_total``) and the rounds of ``batch_api`` are shared, and a marker list
    found in several inputs is asked once: its identical requests are served by the one
    on its way (or by the cache), never sent twice. Every input is read before any call,
    so a bad one stops the run before it costs anything.

    Parameters
    ----------
    markers
        The inputs, each in any format :func:`cassia_sc.top_markers` reads (an AnnData
        with a ``rank_genes_groups`` result, a marker table or its path).
    {tissue}
    {species}
    {model}
    {provider}
    {api_key}
    {max_workers}
    {n_genes}
    {additional_info}
    {parent}
    {temperature}
    {validator_involvement}
    {reasoning}
    {ranking_method}
    {ascending}
    {celltype_column}
    {gene_column_name}
    {key}
    groupby
        The ``obs`` column of the clusters: one for every input, or a sequence with one
        per input (None: the one each ``rank_genes_groups`` result was computed for).
    {gene_symbols}
    {max_retries}
    {timeout}
    {max_tokens}
    {requests_per_minute}
    {cache}
    {cache_dir}
    {batch_api}
    {batch_poll_interval}
    {max_cost}
    {max_tokens_total}
    {prices}
    budget
        A :class:`~cassia_sc.budget.Budget` shared with other runs, as in
        :func:`run_batch`.
    dry_run
        Build every prompt and estimate the prompt tokens, without calling a model.
        Each input's plan counts its own clusters; a note says how many repeat a marker
        list planned before, which the run asks once.
    {progress}
    {client}
    {ontology}
    sample
        Which of several repeated runs this is (0 for a single run).

    Returns
    -------
    list of BatchResult
        One per input, in input order, each with one
        :class:`~cassia_sc.results.ClusterResult` per cluster. With several inputs,
        ``settings["inputs"]`` says how many were annotated together, and
        ``settings["cost"]`` is the whole run's (all inputs), not the input's own; each
        cluster's ``requests`` counts what was sent for it (0 for a marker list another
        input had asked already, which is counted as a cached call).

    Raises
    ------
    MissingAPIKeyError
        Before any work, when there is no key for the provider.
    MarkerError
        Before any call, when an input cannot be read; the message says which one.
    AuthenticationFailed, ModelNotFound
        When the provider refuses the key or does not know the model.
    BatchInterrupted
        On Ctrl-C; its ``result`` is the list of every input's batch, finished or not.

    Examples
    --------
    >>> import cassia_sc
    >>> table = cassia_sc.loadmarker("pbmc68k_processed")
    >>> plans = cassia_sc.run_batches(
    ...     [table, table.head(3)], tissue="blood", species="human", model="any-model",
    ...     dry_run=True, progress=False,
    ... )
    >>> [len(plan) for plan in plans], plans[1].estimate.notes[-1]
    ([11, 3], '3 clusters repeat a marker list planned before: it is asked once')
    """
    if isinstance(markers, str | os.PathLike | AnnData | pd.DataFrame):
        raise CassiaError("run_batches takes a list of marker inputs; for one, call run_batch.")
    markers = list(markers)
    if not markers:
        raise CassiaError("run_batches needs at least one marker input.")
    groupbys = per_input(groupby, len(markers), name="groupby")
    pipeline = get_pipeline(validator_involvement)
    if not isinstance(max_workers, int) or max_workers < 1:
        raise CassiaError(f"max_workers must be a positive integer, not {max_workers!r}.")
    if not species or not isinstance(species, str):
        raise CassiaError("species must be given, e.g. species='human'.")
    if client is None and not model:
        raise CassiaError("model must be given, e.g. model='openai/gpt-4o'.")

    inputs = [
        _input_tasks(
            marker,
            number=number,
            total=len(markers),
            n_genes=n_genes,
            ranking_method=ranking_method,
            ascending=ascending,
            celltype_column=celltype_column,
            gene_column_name=gene_column_name,
            key=key,
            groupby=groupbys[number],
            gene_symbols=gene_symbols,
            task=ClusterTask(
                cluster="",
                markers=(),
                species=species,
                tissue=tissue or None,
                additional_info=_clean_text(additional_info),
                parent=_clean_text(parent),
                pipeline=pipeline.name,
                sample=sample,
            ),
        )
        for number, marker in enumerate(markers)
    ]
    settings: dict[str, Any] = {
        "model": client.model if client else model,
        "provider": display_name(client.provider if client else provider),
        "tissue": tissue,
        "species": species,
        "additional_info": _clean_text(additional_info),
        "parent": _clean_text(parent),
        "n_genes": n_genes,
        "ranking_method": ranking_method,
        "ascending": ascending,
        "validator_involvement": validator_involvement,
        "temperature": client.temperature if client else temperature,
        "reasoning": client.reasoning if client else reasoning,
        "max_workers": max_workers,
        "sample": sample,
        "cassia_sc_version": __version__,
    }
    if len(markers) > 1:
        settings["inputs"] = len(markers)
    if dry_run:
        plans = [_dry_run(tasks, dict(settings), pipeline) for tasks in inputs]
        return _with_repeats_noted(plans, inputs) if len(markers) > 1 else plans

    own_client = client is None
    if client is not None:
        budget = client.budget
    elif budget is None:
        book = PriceBook(prices, cache_dir=cache_dir, providers=[provider])
        budget = Budget(max_cost=max_cost, max_tokens_total=max_tokens_total, prices=book)
    if client is None:
        client = LLMClient(
            model=model,
            provider=provider,
            api_key=api_key,
            temperature=temperature,
            reasoning=reasoning,
            **connection_options(
                timeout=timeout,
                max_tokens=max_tokens,
                max_retries=max_retries,
                requests_per_minute=requests_per_minute,
                cache=cache,
                cache_dir=cache_dir,
                batch_api=batch_api,
                batch_poll_interval=batch_poll_interval,
                budget=budget,
            ),
        )
    if ontology is not False:
        load_in_background()  # ready by the time the answers need their terms
    client.check_model()
    try:
        # One pool over every input's clusters: identical requests meet in one client.
        jobs = [_annotation_job(task, client) for tasks in inputs for task in tasks]
        with _batch_rounds((client,), len(jobs)) as rounds:
            results, interrupted = _run_pool(
                jobs,
                max_workers=max_workers,
                progress=progress,
                desc="Annotating clusters",
                rounds=rounds,
            )
    finally:
        if own_client:
            client.close()
    batches = []
    for tasks in inputs:
        batch = BatchResult(
            clusters=results[: len(tasks)],
            settings=dict(settings),
            interrupted=interrupted,
            fields=pipeline.fields,
        )
        results = results[len(tasks) :]
        record_spending(batch, budget)
        batches.append(batch)
    if interrupted:
        raise BatchInterrupted(batches)
    for number, batch in enumerate(batches):
        if ontology is not False:
            map_to_ontology(batch, required=bool(ontology))
        _log_outcome(batch, where=f"input {number + 1}: " if len(batches) > 1 else "")
    return batches


def per_input(value: Any, n_inputs: int, *, name: str) -> list[Any]:
    """Return a value given once for every input, or one per input, as one per input.

    Parameters
    ----------
    value
        None, a text (the same for every input), or a sequence with one per input.
    n_inputs
        How many inputs.
    name
        The parameter's name, for the message.

    Returns
    -------
    list
        One value per input.

    Raises
    ------
    CassiaError
        When a sequence does not have one value per input.

    Examples
    --------
    >>> per_input("louvain", 2, name="groupby"), per_input(["a", None], 2, name="groupby")
    (['louvain', 'louvain'], ['a', None])
    """
    if value is None or isinstance(value, str):
        return [value] * n_inputs
    values = list(value)
    if len(values) != n_inputs:
        raise CassiaError(
            f"{name} must be one value for every input or one per input: {len(values)} "
            f"given for {n_inputs} inputs."
        )
    return values


def _input_tasks(
    marker: MarkerInput,
    *,
    number: int,
    total: int,
    task: ClusterTask,
    key: str,
    groupby: str | None,
    gene_symbols: str | None,
    **selection: Any,
) -> list[ClusterTask]:
    """Read one input's markers into one task per cluster, like ``task`` but its cluster.

    With several inputs, a marker error says which input it is about.
    """
    try:
        markers = top_markers(
            marker, key=key, groupby=groupby, gene_symbols=gene_symbols, **selection
        )
    except MarkerError as err:
        if total == 1:
            raise
        raise MarkerError(f"Input {number + 1} of {total}: {err}") from err
    data = (
        DataHandle.from_markers(marker, key=key, groupby=groupby, gene_symbols=gene_symbols)
        if isinstance(marker, AnnData)
        else None
    )
    return [
        replace(task, cluster=cluster, markers=tuple(genes), data=data)
        for cluster, genes in markers.items()
    ]


def _with_repeats_noted(
    plans: list[BatchResult], inputs: Sequence[Sequence[ClusterTask]]
) -> list[BatchResult]:
    """Say in each plan how many of its clusters repeat a request planned before."""
    seen: set[tuple[Any, ...]] = set()
    noted = []
    for plan_, tasks in zip(plans, inputs, strict=True):
        repeats = 0
        for task in tasks:
            asked = (task.markers, task.tissue, task.additional_info, task.parent, task.species)
            repeats += asked in seen
            seen.add(asked)
        if repeats and plan_.estimate is not None:
            note = f"{repeats} clusters repeat a marker list planned before: it is asked once"
            estimate = replace(plan_.estimate, notes=(*plan_.estimate.notes, note))
            plan_ = replace(plan_, estimate=estimate)
        noted.append(plan_)
    return noted


def connection_options(
    *,
    timeout: float = Default.timeout,
    max_tokens: int | None = Default.max_tokens,
    max_retries: int = Default.max_retries,
    requests_per_minute: float | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    batch_api: bool | str = False,
    batch_poll_interval: float = Default.batch_poll_interval,
    budget: Budget | None = None,
    **_: Any,
) -> dict[str, Any]:
    """Pick the options of :class:`~cassia_sc.LLMClient` that every client of a run shares.

    Parameters
    ----------
    timeout, max_tokens, max_retries, requests_per_minute, cache, cache_dir, batch_api
    batch_poll_interval, budget
        As in :func:`run_batch`.
    **_
        Any other option of :func:`run_batch`, ignored.

    Returns
    -------
    dict
        Keyword arguments for :class:`~cassia_sc.LLMClient`.
    """
    return {
        "timeout": timeout,
        "max_tokens": max_tokens,
        "max_retries": max_retries,
        "requests_per_minute": requests_per_minute,
        "cache": cache,
        "cache_dir": cache_dir,
        "batch_api": batch_api,
        "batch_poll_interval": batch_poll_interval,
        "budget": budget,
    }


def record_spending(batch: BatchResult, budget: Budget | None) -> None:
    """Write what the run spent, and its limits, into the batch's settings.

    ``cost`` is the dollars of the replies received in this run (cached ones cost
    nothing), left out when a price was unknown.
    """
    if budget is None:
        return
    if budget.spent_dollars is not None:
        batch.settings["cost"] = round(budget.spent_dollars, 6)
    if budget.max_cost is not None:
        batch.settings["max_cost"] = budget.max_cost
    if budget.max_tokens_total is not None:
        batch.settings["max_tokens_total"] = budget.max_tokens_total
    refused = sum(c.status == "not_run" and "budget" in (c.error or "") for c in batch.clusters)
    if refused:
        logger.warning(
            "The budget is reached: %d clusters were left not run; run again with a larger "
            "budget to go on (what was asked is in the cache).",
            refused,
        )


def run_steps(
    batch: BatchResult,
    steps: Sequence[Step],
    *,
    client: LLMClient,
    judge: LLMClient | None = None,
    clusters: Collection[str] | None = None,
    data: DataHandle | None = None,
    table_evidence: MarkerTableEvidence | None = None,
    max_workers: int = Default.max_workers,
    progress: bool = True,
    desc: str = "Refining clusters",
) -> BatchResult:
    """Run further steps (a scorer, a boost) on the clusters of a finished batch, in parallel.

    Each cluster is worked on as a copy, which replaces it only when its steps finish: a
    step that fails, a crash or Ctrl-C leaves the cluster as it was.

    Parameters
    ----------
    batch
        The batch, e.g. from :func:`run_batch` or :func:`cassia_sc.get.annotation`.
    steps
        The steps to run on each cluster, in order.
    client
        The model client (the boost's model).
    judge
        The judge's client, for steps that score; None: ``client``.
    clusters
        The clusters to work on; None: all.
    data, table_evidence
        Where genes are looked up: the expression data, or the marker table.
    max_workers, progress
        As in :func:`run_batch`.
    desc
        The progress bar's label.

    Returns
    -------
    BatchResult
        The batch with the clusters worked on replaced, and the steps' fields declared.

    Raises
    ------
    BatchInterrupted
        On Ctrl-C; its ``result`` holds every cluster, the unfinished ones as they were.
    """
    wanted = set(batch.clusters_named(clusters))
    chosen = [c for c in batch.clusters if c.cluster in wanted]
    jobs = [
        _step_job(
            result,
            steps,
            ClusterTask.of(result, batch.settings, data=data, table_evidence=table_evidence),
            client,
            judge,
        )
        for result in chosen
    ]
    with _batch_rounds((client, judge), len(jobs)) as rounds:
        done, interrupted = _run_pool(
            jobs, max_workers=max_workers, progress=progress, desc=desc, rounds=rounds
        )
    replaced = {r.cluster: r for r in done}
    declared = {f.name: f for f in batch.fields}
    for step in steps:
        declared |= {f.name: f for f in step.fields if f.name not in declared}
    refined = replace(
        batch,
        clusters=[replaced.get(c.cluster, c) for c in batch.clusters],
        fields=tuple(declared.values()),
        interrupted=interrupted,
    )
    if interrupted:
        raise BatchInterrupted(refined)
    return refined


def _step_job(
    result: ClusterResult,
    steps: Sequence[Step],
    task: ClusterTask,
    client: LLMClient,
    judge: LLMClient | None,
) -> _Job:
    def work(stop: threading.Event) -> ClusterResult:
        copy = deepcopy(result)
        context = ClusterContext(task, copy, client, stop, judge=judge)
        context.annotation_text = next(
            (
                t.content
                for t in reversed(copy.conversation)
                if t.role == "assistant" and t.agent == "annotator"
            ),
            None,
        )
        for step in steps:
            step(context)
        return copy

    def kept(_: object) -> ClusterResult:
        return result  # nothing lost: the cluster as it was before these steps

    return _Job(result.cluster, work, kept, kept)


def map_to_ontology(
    batch: BatchResult, *, required: bool = False, clusters: Collection[str] | None = None
) -> None:
    """Give each answered cluster the Cell Ontology term of its main cell type, in place.

    Parameters
    ----------
    batch
        The batch to complete.
    clusters
        Only these clusters (e.g. those a boost gave a new label); None: every one.
    required
        Raise when the ``cassia-sc[ontology]`` extra is missing, instead of skipping.

    Raises
    ------
    OntologyUnavailable
        When ``required`` and the extra is missing.

    Examples
    --------
    >>> from cassia_sc.batch import map_to_ontology
    >>> map_to_ontology(result)  # doctest: +SKIP
    >>> result.clusters[0].ontology_term_id  # doctest: +SKIP
    'CL:0000236'
    """
    wanted = set(batch.clusters_named(clusters))
    answered = [c for c in batch.clusters if c.main_cell_type and c.cluster in wanted]
    try:
        ontology = cell_ontology()
        tissue = batch.settings.get("tissue") or None
        matches = ontology.match_many([c.main_cell_type for c in answered], tissue=tissue)
    except OntologyUnavailable:
        if required:
            raise
        logger.info("Cell Ontology terms skipped: the cassia-sc[ontology] extra is not installed.")
        return
    for cluster, match in zip(answered, matches, strict=True):
        cluster.ontology_term_id = match.term_id
        cluster.ontology_label = match.term_label
        cluster.ontology_score = match.score
        cluster.set("ontology_method", match.method)
        cluster.set("ontology_broader", match.broader)
        cluster.set("cell_state", match.state)
        cluster.subtype_ontology_term_ids = [
            m.term_id for m in ontology.match_many(cluster.sub_cell_types, tissue=tissue)
        ]
    unmapped = [
        f"{c.cluster}: {c.main_cell_type}" for c in answered if c.ontology_term_id == "unknown"
    ]
    if unmapped:
        logger.warning(
            "No Cell Ontology term fits %d cell types; they are 'unknown', not forced: %s",
            len(unmapped),
            "; ".join(unmapped[:10]),
        )


@dataclass(frozen=True)
class _Job:
    """One cluster's work in the pool, and what stands for it when the work cannot finish.

    Attributes
    ----------
    cluster
        The cluster's name, for messages.
    work
        Does the work; ``stop`` is set to cancel it.
    unfinished
        The result to keep when the work did not finish (Ctrl-C, cancelled), given why.
    crashed
        The result to keep when the work raised an unexpected error.
    """

    cluster: str
    work: Callable[[threading.Event], ClusterResult]
    unfinished: Callable[[str], ClusterResult]
    crashed: Callable[[Exception], ClusterResult]


@contextlib.contextmanager
def _batch_rounds(clients: Sequence[LLMClient | None], n_jobs: int) -> Iterator[BatchRounds | None]:
    """Gather the jobs' calls into rounds of provider batches, for clients that batch."""
    batching = [c for c in clients if c is not None and c.batch_api]
    if not batching:
        yield None
        return
    rounds = BatchRounds(n_jobs)
    for client in batching:
        client.rounds = rounds
    try:
        yield rounds
    finally:
        for client in batching:
            client.rounds = None
        rounds.close()


def _run_pool(
    jobs: list[_Job],
    *,
    max_workers: int,
    progress: bool,
    desc: str,
    rounds: BatchRounds | None = None,
) -> tuple[list[ClusterResult], bool]:
    """Run every job; return the results in job order and whether Ctrl-C cut the run short.

    The workers are daemon threads of our own rather than a ``ThreadPoolExecutor``, whose
    threads the interpreter joins at exit: after Ctrl-C, a worker still waiting for a reply
    holds neither this function nor the process. It stays only while the process lives, to
    cache the reply it was waiting for; no request starts after the stop. With ``rounds``
    (provider batches) every job runs at once, so that each round holds every cluster's
    call; each job tells the rounds when it is over.
    """
    if rounds is not None:
        max_workers = len(jobs)
    stop = threading.Event()
    done: dict[int, ClusterResult] = {}
    futures: list[Future] = [Future() for _ in jobs]
    # Each job as it ends: looking over every pending future at each end would make
    # thousands of jobs (provider batches) quadratic.
    ended: SimpleQueue[int] = SimpleQueue()
    for index, future in enumerate(futures):
        future.add_done_callback(lambda _, index=index: ended.put(index))
    queue: SimpleQueue[int] = SimpleQueue()
    for index in range(len(jobs)):
        queue.put(index)
    bar = _progress_bar(total=len(jobs), desc=desc, unit="cluster", disable=not progress)
    interrupted = False
    try:  # from the first worker on: a Ctrl-C at any point stops every one
        for number in range(min(max_workers, len(jobs))):
            threading.Thread(
                target=_worker,
                args=(jobs, futures, queue, stop, rounds),
                name=f"cassia-sc-worker-{number}",
                daemon=True,
            ).start()
        statuses: Counter[str] = Counter()
        while len(done) < len(jobs):
            try:  # a short timeout keeps the main thread responsive to Ctrl-C
                index = ended.get(timeout=0.25)
            except Empty:
                continue
            done[index] = _outcome(futures[index], jobs[index])
            bar.update(1)
            statuses.update(_status_counts([done[index]]))
            bar.set_postfix(statuses, refresh=False)
    except KeyboardInterrupt:
        interrupted = True
    except BaseException:  # a bad key, an unknown model: the run stops here
        _stop_all(stop, futures)
        bar.close()
        raise
    while True:  # a second Ctrl-C while wrapping up must not lose what finished
        try:
            _stop_all(stop, futures)
            bar.close()
            if interrupted:
                logger.warning("Interrupted: keeping the %d clusters that finished.", len(done))
            unfinished = "The run was interrupted before this cluster finished."
            results = [done.get(i) or job.unfinished(unfinished) for i, job in enumerate(jobs)]
            return results, interrupted
        except KeyboardInterrupt:
            interrupted = True


def _stop_all(stop: threading.Event, futures: list[Future]) -> None:
    """Cancel the waits and retries of the jobs running, and the jobs not started."""
    stop.set()
    for future in futures:
        future.cancel()


def _worker(
    jobs: list[_Job],
    futures: list[Future],
    queue: SimpleQueue[int],
    stop: threading.Event,
    rounds: BatchRounds | None,
) -> None:
    """Take jobs until there are none left or the run stopped; settle each one's future."""
    while not stop.is_set():
        try:
            index = queue.get_nowait()
        except Empty:
            return
        future = futures[index]
        if not future.set_running_or_notify_cancel():
            continue
        try:
            future.set_result(_work_or_stop_all(jobs[index], stop))
        except BaseException as err:  # the main thread decides what it means
            future.set_exception(err)
        finally:
            if rounds is not None:
                rounds.job_done()


def _work_or_stop_all(job: _Job, stop: threading.Event) -> ClusterResult:
    try:
        return job.work(stop)
    except FatalLLMError:
        stop.set()  # at once, from this worker: no other request may start
        raise


def _progress_bar(**options: Any):
    """Return a notebook progress bar in Jupyter, a text one elsewhere."""
    with warnings.catch_warnings():
        # Without ipywidgets, tqdm.auto warns on import and falls back to the text bar,
        # which is fine: say nothing.
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm

    return tqdm(**options)


def _outcome(future: Future, job: _Job) -> ClusterResult:
    try:
        return future.result()
    except FatalLLMError:
        raise  # stops the run: every other call would fail the same way
    except BudgetReached as reached:
        return job.unfinished(str(reached))
    except CallCancelled:
        return job.unfinished("Cancelled.")
    except Exception as err:  # one cluster's bug must not sink the others
        logger.exception("Cluster %r failed unexpectedly.", job.cluster)
        return job.crashed(err)


def _annotation_job(task: ClusterTask, client: LLMClient) -> _Job:
    def not_run(reason: str) -> ClusterResult:
        return ClusterResult(task.cluster, list(task.markers), status="not_run", error=reason)

    def failed(err: Exception) -> ClusterResult:
        error = f"Unexpected error: {err!r}"
        return ClusterResult(task.cluster, list(task.markers), status="failed", error=error)

    return _Job(
        task.cluster, lambda stop: annotate_cluster(task, client, stop=stop), not_run, failed
    )


def _dry_run(tasks: list[ClusterTask], settings: dict[str, Any], pipeline: Pipeline) -> BatchResult:
    """Build each cluster's prompts and estimate their tokens, step by step; call nothing."""
    results = []
    characters = dict.fromkeys((step.name for step in pipeline.steps), 0)
    for task in tasks:
        planned = pipeline.plan(task)
        for name, messages in planned:
            characters[name] += sum(len(m["content"]) for m in messages)
        cluster_characters = sum(len(m["content"]) for _, messages in planned for m in messages)
        first_agent, first_messages = planned[0]  # the opening prompts, shown in the report
        results.append(
            ClusterResult(
                cluster=task.cluster,
                markers=list(task.markers),
                conversation=[Turn(first_agent, m["role"], m["content"]) for m in first_messages],
                estimated_prompt_tokens=-(-cluster_characters // CHARS_PER_TOKEN),
            )
        )
    model, provider = str(settings["model"]), str(settings["provider"])
    estimate = CostEstimate(
        tuple(
            estimate_step(
                step.name,
                model,
                provider,
                calls=len(tasks),
                prompt_characters=characters[step.name],
                reply_tokens=getattr(step, "reply_tokens", DEFAULT_REPLY_TOKENS),
            )
            for step in pipeline.steps
        ),
        notes=(
            "revisions of rejected answers add more; completion tokens are each agent's "
            "usual reply length, a guess",
        ),
    )
    logger.info(
        "Dry run: %d clusters, about %d prompt tokens in all (%d per cluster) on the happy "
        "path of %d calls per cluster; revisions add more.",
        len(results),
        estimate.prompt_tokens,
        estimate.prompt_tokens // max(len(results), 1),
        len(pipeline.steps),
    )
    return BatchResult(
        clusters=results,
        settings=settings,
        dry_run=True,
        fields=pipeline.fields,
        estimate=estimate,
    )


def _status_counts(clusters: Iterable[ClusterResult]) -> dict[str, int]:
    """Count the clusters of each status other than ``ok``, in the order first met."""
    return dict(Counter(c.status.replace("_", " ") for c in clusters if c.status != "ok"))


def _log_outcome(batch: BatchResult, *, where: str = "") -> None:
    failed = [c for c in batch.clusters if c.status != "ok"]
    usage = batch.usage
    others = "".join(f", {n} {status}" for status, n in _status_counts(batch.clusters).items())
    logger.info(
        "%sAnnotated %d clusters: %d ok%s; %d HTTP requests, %d of %d replies from "
        "the cache, %d prompt + %d completion tokens.",
        where,
        len(batch),
        len(batch) - len(failed),
        others,
        usage["requests"],
        usage["cached_calls"],
        usage["calls"],
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    if failed:
        logger.warning(
            "%s%d clusters have no answer: %s",
            where,
            len(failed),
            "; ".join(
                f"{c.cluster} ({c.status.replace('_', ' ')}): {c.error}" for c in failed[:10]
            ),
        )


def _clean_text(text: str | None) -> str | None:
    """Free text from the user, or None: never the string "None" or blanks."""
    if text is None:
        return None
    text = str(text).strip()
    return None if not text or text.lower() in {"none", "nan", "null"} else text
