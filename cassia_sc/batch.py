"""Annotate every cluster of a marker set in parallel: ``run_batch`` and ``runCASSIA_batch``.

Clusters run on a thread pool sharing one model client. One failing cluster never stops
the others, and every cluster is in the result, in input order, whatever happened to it.
Ctrl-C stops promptly and keeps what finished; a bad key or an unknown model stops the
run at once with a single message.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import pandas as pd

from .agents import VALIDATOR_POLICIES, ClusterTask, ValidatorInvolvement, annotate_cluster
from .errors import BatchInterrupted, CassiaError, FatalLLMError
from .llm import CallCancelled, LLMClient
from .markers import MarkerInput, RankingMethod, top_markers
from .results import BatchResult, ClusterResult, Turn

logger = logging.getLogger("cassia_sc")

# A dry run cannot know the annotator's reply, which the validator reads; this is a
# typical length of one (reasoning plus the JSON answer), in characters.
_TYPICAL_ANNOTATION_CHARS = 2500
# CASSIA's HTTP client retries every call twice before its own per-cluster retries.
_CASSIA_CLIENT_RETRIES = 2
# Rough characters per token of English prose and gene lists, for estimates only.
_CHARS_PER_TOKEN = 4


def run_batch(
    marker: MarkerInput,
    *,
    tissue: str | None,
    species: str,
    model: str | None = None,
    provider: str = "openrouter",
    api_key: str | None = None,
    max_workers: int = 4,
    n_genes: int = 50,
    additional_info: str | None = None,
    temperature: float | None = 0.0,
    validator_involvement: ValidatorInvolvement = "v1",
    reasoning: str | None = None,
    ranking_method: RankingMethod = "avg_log2FC",
    ascending: bool | None = None,
    celltype_column: str | None = None,
    gene_column_name: str | None = None,
    key: str = "rank_genes_groups",
    groupby: str | None = None,
    gene_symbols: str | None = None,
    max_retries: int = 3,
    timeout: float = 120.0,
    requests_per_minute: float | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
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
    marker
        Markers in any format :func:`cassia_sc.top_markers` reads, an AnnData included.
    tissue
        Tissue of the sample, e.g. ``"blood"``; None for a tissue-blind annotation, in
        which the answer also proposes tissues of origin.
    species
        E.g. ``"human"`` or ``"mouse"``.
    model
        Model name as the provider spells it, e.g. ``"openai/gpt-4o"`` on OpenRouter.
    provider
        ``"openrouter"``, ``"openai"``, ``"anthropic"`` or the base URL of any
        OpenAI-compatible server (Ollama, vLLM, LM Studio, a proxy).
    api_key
        The key; by default ``OPENROUTER_API_KEY``, ``OPENAI_API_KEY``,
        ``ANTHROPIC_API_KEY``, or ``CASSIA_API_KEY`` for a base URL. A server on this
        machine needs none.
    max_workers
        Clusters annotated at the same time.
    n_genes
        Markers per cluster given to the model.
    additional_info
        Free text about the sample (treatment, sorting, disease), or None.
    temperature
        Sampling temperature; sent where the endpoint accepts it.
    validator_involvement
        ``"v1"`` (moderate; up to 2 rounds) or ``"v0"`` (strict: a stricter review, an
        answer citing genes outside the marker list is sent back at once, up to 3 rounds).
    reasoning
        Reasoning effort (``"low"``, ``"medium"``, ``"high"``) for models that reason.
    ranking_method, ascending, celltype_column, gene_column_name, key, groupby, gene_symbols
        Marker selection; see :func:`cassia_sc.top_markers`.
    max_retries
        Further attempts of a failed request (HTTP 408/409/429/5xx, timeouts, connection
        errors, malformed or empty replies), with exponential backoff.
    timeout
        Seconds before one request is abandoned and retried.
    requests_per_minute
        Cap on requests per minute across all workers.
    cache
        Keep every reply on disk: a re-run costs nothing and an interrupted run resumes.
    cache_dir
        Cache folder; default ``$CASSIA_SC_CACHE_DIR`` or the user cache folder.
    dry_run
        Build every prompt and estimate the prompt tokens, without calling a model;
        works offline and needs no key.
    progress
        Show a progress bar.
    client
        A client to use instead of building one from ``model``, ``provider`` and the
        connection options (e.g. to share one pool between runs).
    ontology
        Map each main cell type to a Cell Ontology term (offline; see
        :mod:`cassia_sc.ontology`). None: when the ``cassia-sc[ontology]`` extra is
        installed; True: always (an error without the extra); False: never.
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
    ...     cassia_sc.loadmarker("processed"), tissue="blood", species="human",
    ...     model="any-model", dry_run=True, progress=False,
    ... )
    >>> len(plan), plan.clusters[0].status
    (11, 'not_run')
    """
    if validator_involvement not in VALIDATOR_POLICIES:
        raise CassiaError(
            f"validator_involvement must be one of {list(VALIDATOR_POLICIES)}, "
            f"not {validator_involvement!r}."
        )
    if not isinstance(max_workers, int) or max_workers < 1:
        raise CassiaError(f"max_workers must be a positive integer, not {max_workers!r}.")
    if not species or not isinstance(species, str):
        raise CassiaError("species must be given, e.g. species='human'.")
    if client is None and not model:
        raise CassiaError("model must be given, e.g. model='openai/gpt-4o'.")

    markers = top_markers(
        marker,
        n_genes=n_genes,
        ranking_method=ranking_method,
        ascending=ascending,
        celltype_column=celltype_column,
        gene_column_name=gene_column_name,
        key=key,
        groupby=groupby,
        gene_symbols=gene_symbols,
    )
    tasks = [
        ClusterTask(
            cluster=cluster,
            markers=tuple(genes),
            species=species,
            tissue=tissue or None,
            additional_info=_clean_text(additional_info),
            validator_involvement=validator_involvement,
            sample=sample,
        )
        for cluster, genes in markers.items()
    ]
    from . import __version__

    settings: dict[str, Any] = {
        "model": client.model if client else model,
        "provider": client.provider if client else provider,
        "tissue": tissue,
        "species": species,
        "additional_info": _clean_text(additional_info),
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
    if dry_run:
        return _dry_run(tasks, settings)

    own_client = client is None
    if client is None:
        client = LLMClient(
            model=model,
            provider=provider,
            api_key=api_key,
            temperature=temperature,
            reasoning=reasoning,
            timeout=timeout,
            max_retries=max_retries,
            requests_per_minute=requests_per_minute,
            cache=cache,
            cache_dir=cache_dir,
        )
    try:
        results, interrupted = _run_pool(tasks, client, max_workers=max_workers, progress=progress)
    finally:
        if own_client:
            client.close()
    batch = BatchResult(clusters=results, settings=settings, interrupted=interrupted)
    if interrupted:
        raise BatchInterrupted(batch)
    if ontology is not False:
        map_to_ontology(batch, required=bool(ontology))
    _log_outcome(batch)
    return batch


def map_to_ontology(batch: BatchResult, *, required: bool = False) -> None:
    """Give each answered cluster the Cell Ontology term of its main cell type, in place.

    Parameters
    ----------
    batch
        The batch to complete.
    required
        Raise when the ``cassia-sc[ontology]`` extra is missing, instead of skipping.

    Raises
    ------
    cassia_sc.ontology.OntologyUnavailable
        When ``required`` and the extra is missing.

    Examples
    --------
    >>> from cassia_sc.batch import map_to_ontology
    >>> map_to_ontology(result)  # doctest: +SKIP
    >>> result.clusters[0].ontology_term_id  # doctest: +SKIP
    'CL:0000236'
    """
    from .ontology import OntologyUnavailable, cell_ontology

    answered = [c for c in batch.clusters if c.main_cell_type]
    try:
        ontology = cell_ontology()
        matches = ontology.match_many([c.main_cell_type for c in answered])
    except OntologyUnavailable:
        if required:
            raise
        logger.info("Cell Ontology terms skipped: the cassia-sc[ontology] extra is not installed.")
        return
    for cluster, match in zip(answered, matches, strict=True):
        cluster.ontology_term_id = match.term_id
        cluster.ontology_label = match.term_label
        cluster.ontology_score = match.score
        cluster.subtype_ontology_term_ids = [
            m.term_id for m in ontology.match_many(cluster.sub_cell_types)
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


def _run_pool(
    tasks: list[ClusterTask], client: LLMClient, *, max_workers: int, progress: bool
) -> tuple[list[ClusterResult], bool]:
    """Run every task; return the results in task order and whether Ctrl-C cut the run short."""
    stop = threading.Event()
    done: dict[int, ClusterResult] = {}
    executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="cassia-sc")
    futures: dict[Future, int] = {
        executor.submit(_annotate_or_stop_all, task, client, stop): index
        for index, task in enumerate(tasks)
    }
    bar = _progress_bar(
        total=len(tasks), desc="Annotating clusters", unit="cluster", disable=not progress
    )
    interrupted = False
    try:
        pending = set(futures)
        while pending:
            # A short timeout keeps the main thread responsive to Ctrl-C.
            finished, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            for future in finished:
                index = futures[future]
                done[index] = _outcome(future, tasks[index])
                bar.update(1)
                failed = sum(r.status == "failed" for r in done.values())
                bar.set_postfix(failed=failed, refresh=False)
    except KeyboardInterrupt:
        interrupted = True
        logger.warning("Interrupted: keeping the %d clusters that finished.", len(done))
    finally:
        finished_all = len(done) == len(tasks)
        if not finished_all:
            stop.set()  # cancels the waits and retries of calls still running
        executor.shutdown(wait=finished_all, cancel_futures=True)
        bar.close()
    results = [
        done.get(index)
        or ClusterResult(
            cluster=task.cluster,
            markers=list(task.markers),
            status="not_run",
            error="The run was interrupted before this cluster finished.",
        )
        for index, task in enumerate(tasks)
    ]
    return results, interrupted


def _annotate_or_stop_all(
    task: ClusterTask, client: LLMClient, stop: threading.Event
) -> ClusterResult:
    try:
        return annotate_cluster(task, client, stop=stop)
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


def _outcome(future: Future, task: ClusterTask) -> ClusterResult:
    try:
        return future.result()
    except FatalLLMError:
        raise  # stops the run: every other call would fail the same way
    except CallCancelled:
        return ClusterResult(task.cluster, list(task.markers), status="not_run", error="Cancelled.")
    except Exception as err:  # one cluster's bug must not sink the others
        logger.exception("Cluster %r failed unexpectedly.", task.cluster)
        return ClusterResult(
            task.cluster, list(task.markers), status="failed", error=f"Unexpected error: {err!r}"
        )


def _dry_run(tasks: list[ClusterTask], settings: dict[str, Any]) -> BatchResult:
    """Build each cluster's prompts and estimate their tokens; call nothing."""
    results = []
    placeholder = "x" * _TYPICAL_ANNOTATION_CHARS
    for task in tasks:
        annotator = task.annotator_messages()
        validator = task.validator_messages(placeholder, [])
        characters = sum(len(m["content"]) for m in annotator + validator)
        results.append(
            ClusterResult(
                cluster=task.cluster,
                markers=list(task.markers),
                conversation=[Turn("annotator", m["role"], m["content"]) for m in annotator],
                estimated_prompt_tokens=-(-characters // _CHARS_PER_TOKEN),
            )
        )
    total = sum(r.estimated_prompt_tokens for r in results)
    logger.info(
        "Dry run: %d clusters, about %d prompt tokens in all (%d per cluster) on the happy "
        "path of 2 calls per cluster; revisions add more.",
        len(results),
        total,
        total // max(len(results), 1),
    )
    return BatchResult(clusters=results, settings=settings, dry_run=True)


def _log_outcome(batch: BatchResult) -> None:
    failed = batch.failed
    usage = batch.usage
    logger.info(
        "Annotated %d clusters: %d ok, %d failed; %d HTTP requests, %d of %d replies from the "
        "cache, %d prompt + %d completion tokens.",
        len(batch),
        len(batch) - len(failed),
        len(failed),
        usage["requests"],
        usage["cached_calls"],
        usage["calls"],
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    if failed:
        logger.warning(
            "%d clusters failed: %s",
            len(failed),
            "; ".join(f"{c.cluster}: {c.error}" for c in failed[:10]),
        )


def _clean_text(text: str | None) -> str | None:
    """Free text from the user, or None: never the string "None" or blanks."""
    if text is None:
        return None
    text = str(text).strip()
    return None if not text or text.lower() in {"none", "nan", "null"} else text


def runCASSIA_batch(  # CASSIA's name, kept for its users
    marker: MarkerInput,
    output_name: str,
    model: str,
    tissue: str | None,
    species: str,
    provider: str = "openrouter",
    max_workers: int = 4,
    n_genes: int = 50,
    additional_info: str | None = None,
    temperature: float = 0,
    validator_involvement: ValidatorInvolvement = "v1",
    reasoning: str | None = None,
    ranking_method: RankingMethod = "avg_log2FC",
    ascending: bool | None = None,
    celltype_column: str | None = None,
    gene_column_name: str | None = None,
    max_retries: int = 1,
    **options: Any,
) -> pd.DataFrame:
    """Annotate every cluster and write CASSIA's four output files.

    The same parameters as CASSIA's ``runCASSIA_batch``; the work is done by
    :func:`run_batch`. Writes, each atomically:

    - ``{output_name}_summary.csv``: one row per cluster, failed ones included;
    - ``{output_name}_full.csv``: the summary plus each cluster's conversation;
    - ``{output_name}_conversations.json``: per cluster, the annotator, validator and
      formatter turns;
    - ``{output_name}_report.html``: a self-contained report.

    A dry run (``dry_run=True``) writes nothing.

    Parameters
    ----------
    marker
        Markers in any format :func:`cassia_sc.top_markers` reads.
    output_name
        Path prefix of the output files (a ``.csv`` or ``.json`` suffix is dropped).
    model, tissue, species, provider, max_workers, n_genes, additional_info, temperature
        As in :func:`run_batch`.
    validator_involvement, reasoning, ranking_method, ascending, celltype_column
        As in :func:`run_batch`.
    gene_column_name
        As in :func:`run_batch`.
    max_retries
        As in CASSIA: further attempts for a cluster whose calls failed. CASSIA repeats
        the whole cluster on top of its HTTP client's 2 retries per call; here each failed
        call is retried up to ``2 + max_retries`` times, which covers the same faults
        without repeating the calls that had succeeded.
    **options
        Any other option of :func:`run_batch` (``api_key``, ``cache_dir``, ``timeout``,
        ``requests_per_minute``, ``progress``, ``dry_run``, ...).

    Returns
    -------
    pandas.DataFrame
        The summary table, as written to ``{output_name}_summary.csv``.

    Examples
    --------
    >>> import cassia_sc
    >>> summary = cassia_sc.runCASSIA_batch(  # doctest: +SKIP
    ...     cassia_sc.loadmarker("unprocessed"), "pbmc", "openai/gpt-4o", "blood", "human"
    ... )
    """
    return run_batch_to_files(
        marker,
        output_name,
        tissue=tissue,
        species=species,
        model=model,
        provider=provider,
        max_workers=max_workers,
        n_genes=n_genes,
        additional_info=additional_info,
        temperature=temperature,
        validator_involvement=validator_involvement,
        reasoning=reasoning,
        ranking_method=ranking_method,
        ascending=ascending,
        celltype_column=celltype_column,
        gene_column_name=gene_column_name,
        max_retries=_CASSIA_CLIENT_RETRIES + max_retries,
        **options,
    ).summary()


def run_batch_to_files(
    marker: MarkerInput, output_name: str | os.PathLike, **options: Any
) -> BatchResult:
    """Run :func:`run_batch` and write its four files; also when Ctrl-C cuts it short.

    Parameters
    ----------
    marker
        Markers in any format :func:`cassia_sc.top_markers` reads.
    output_name
        Path prefix of the output files (a ``.csv``, ``.json`` or ``.html`` suffix is dropped).
    **options
        Options of :func:`run_batch`. A dry run writes nothing.

    Returns
    -------
    BatchResult
        The batch.
    """
    from .export import write_outputs

    prefix = _output_prefix(output_name)
    try:
        result = run_batch(marker, **options)
    except BatchInterrupted as interruption:
        write_outputs(interruption.result, prefix)  # keep what finished, then stop
        raise
    if not result.dry_run:
        paths = write_outputs(result, prefix)
        logger.info("Wrote %s", ", ".join(str(p) for p in paths.values()))
    return result


def _output_prefix(output_name: str | os.PathLike) -> Path:
    path = Path(output_name)
    if path.suffix.lower() in {".csv", ".json", ".html"}:
        path = path.with_suffix("")
    return path
