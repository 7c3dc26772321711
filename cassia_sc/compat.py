"""CASSIA's entry points, with its names, parameters and output files, for its users.

Above :mod:`cassia_sc.batch` and :mod:`cassia_sc.export`: each function here runs a batch
and writes what CASSIA's function of the same name writes.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
from anndata import AnnData

from ._docs import fill_docs
from ._io import atomic_write_text
from ._keys import Default, Key
from .agents.grouper import group_levels, model_levels
from .agents.pipelines import known_fields
from .api_keys import check_api_key
from .batch import connection_options
from .cassia_files import conversations_beside, read_cassia
from .errors import AuthenticationFailed, BatchInterrupted, CassiaError, FatalLLMError, MarkerError
from .export import bounded, csv_text, output_paths, render_report, write_outputs
from .llm import LLMClient
from .markers import MarkerInput, RankingMethod, looks_like_gene_ids, top_markers
from .results import BatchResult, ClusterResult
from .uncertainty import consensus, consensus_batch, run_repeated
from .workflow import refine, run_annotation

logger = logging.getLogger("cassia_sc")

# CASSIA's HTTP client retries every call twice before its own per-cluster retries.
_CASSIA_CLIENT_RETRIES = 2


@fill_docs
def runCASSIA_batch(  # CASSIA's name, kept for its users
    marker: MarkerInput,
    output_name: str | os.PathLike = "cell_type_analysis_results.json",
    n_genes: int = Default.n_genes,
    model: str | None = None,
    temperature: float | None = None,
    tissue: str | None = "lung",
    species: str = "human",
    additional_info: str | None = None,
    celltype_column: str | None = None,
    gene_column_name: str | None = None,
    max_workers: int = 10,
    provider: str = Default.provider,
    max_retries: int = 1,
    ranking_method: RankingMethod = Default.ranking_method,
    ascending: bool | None = None,
    validator_involvement: str = Default.validator_involvement,
    reasoning: str | None = None,
    use_reference: bool = False,
    reference_model: str | None = None,
    reference_cell_type_hint: str | None = None,
    verbose: bool = True,
    validate_api_key_before_start: bool = True,
    auto_convert_ids: bool = True,
    proxy: str | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Annotate every cluster and write CASSIA's files.

    CASSIA 1.4.0's parameters, in its order and with its defaults, so that a CASSIA call
    (positional or not) binds the same way; the work is done by
    :func:`cassia_sc.run_batch`. Writes, each atomically:

    - ``{output_name}_summary.csv``: one row per cluster, failed ones included, in the
      order of the input clusters (CASSIA sorts its rows by cluster name; every reader of
      ours joins by ``Cluster ID``, never by row position), ending with the
      ``Conversation History`` column, which CASSIA's scorer reads for a cluster named
      ``"0"``;
    - ``{output_name}_full.csv``: the summary plus each cluster's replies, in CASSIA's
      ``Conversation History`` section format;
    - ``{output_name}_conversations.json``: CASSIA's shape, cluster name -> its
      ``annotations``, ``validations``, ``formatting`` and ``scoring`` replies, as read by
      CASSIA's scorer, booster and report generators;
    - ``{output_name}_report.html``: a self-contained report;
    - ``{output_name}_record.json``: ours, the settings and every turn with its tokens.

    A dry run (``dry_run=True``) writes nothing.

    Parameters
    ----------
    {marker}
    {output_name}
    {n_genes}
    {model}
    temperature
        Sampling temperature; None: 0.
    {tissue}
    {species}
    {additional_info}
    {celltype_column}
    {gene_column_name}
    {max_workers}
    {provider}
    max_retries
        As in CASSIA: further attempts for a cluster whose calls failed. CASSIA repeats
        the whole cluster on top of its HTTP client's 2 retries per call; here each failed
        call is retried up to ``2 + max_retries`` times, which covers the same faults
        without repeating the calls that had succeeded.
    {ranking_method}
    {ascending}
    {validator_involvement}
    {reasoning}
    use_reference, reference_model, reference_cell_type_hint
        CASSIA's retrieval of its bundled reference documents: not available here; asking
        for it raises :class:`~cassia_sc.CassiaError`.
    verbose
        Show progress (unless ``progress=`` is given).
    validate_api_key_before_start
        Check the key with one cheap request before the first cluster
        (:func:`cassia_sc.validate_api_keys`: the model list, which costs no tokens);
        skipped for a dry run and when ``client=`` is given.
    auto_convert_ids
        Ensembl or Entrez gene IDs: for an AnnData whose ``var`` also has gene symbols,
        the symbols are sent (``gene_symbols=`` chosen for you); for a marker table,
        converting needs a network look-up that cassia_sc does not make, so IDs raise
        :class:`~cassia_sc.MarkerError` (convert them first, or pass ``False`` to send
        them as they are). Symbols are sent as they are either way.
    proxy
        CASSIA's proxy presets are not available: give the proxy's base URL as
        ``provider``, or set ``HTTPS_PROXY``; any other value than None raises.
    **options
        Any other option of :func:`cassia_sc.run_batch` (``api_key``, ``cache_dir``,
        ``timeout``, ``requests_per_minute``, ``progress``, ``dry_run``, ...).

    Returns
    -------
    pandas.DataFrame
        The summary table, as written to ``{output_name}_summary.csv`` (CASSIA returns
        a dictionary of its results instead).

    Raises
    ------
    CassiaError
        An option of CASSIA's that is not available here, or a missing ``model``.
    AuthenticationFailed
        ``validate_api_key_before_start`` and the key was refused.

    Notes
    -----
    CASSIA's defaults are kept for its callers, ``tissue="lung"`` and ``max_workers=10``
    among them: give the tissue (None for a tissue-blind annotation). ``model`` is
    required: CASSIA picks one per provider, cassia_sc does not choose a model for you.

    Examples
    --------
    >>> import cassia_sc
    >>> summary = cassia_sc.runCASSIA_batch(  # doctest: +SKIP
    ...     cassia_sc.loadmarker("unprocessed"), "intestine", 50, "openai/gpt-4o",
    ...     tissue="large intestine", species="human",
    ... )
    """
    _refuse_unavailable(
        use_reference=use_reference,
        reference_model=reference_model,
        reference_cell_type_hint=reference_cell_type_hint,
        proxy=proxy,
    )
    _require_model(model)
    options.setdefault("progress", verbose)
    if auto_convert_ids:
        options |= _symbols_for_gene_ids(
            marker,
            celltype_column=celltype_column,
            gene_column_name=gene_column_name,
            gene_symbols=options.get("gene_symbols"),
        )
    if validate_api_key_before_start and not options.get("dry_run") and "client" not in options:
        _check_key(provider, options.get("api_key"), model)
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
        temperature=Default.temperature if temperature is None else temperature,
        validator_involvement=validator_involvement,
        reasoning=reasoning,
        ranking_method=ranking_method,
        ascending=ascending,
        celltype_column=celltype_column,
        gene_column_name=gene_column_name,
        max_retries=_CASSIA_CLIENT_RETRIES + max_retries,
        **options,
    ).summary()


@fill_docs
def run_batch_to_files(
    marker: MarkerInput,
    output_name: str | os.PathLike,
    *,
    finish: Callable[[BatchResult], BatchResult] | None = None,
    **options: Any,
) -> BatchResult:
    """Annotate (and score and boost, if asked) and write the files, even after Ctrl-C.

    Parameters
    ----------
    {marker}
    {output_name}
    finish
        A last stage of the whole batch before the files are written (the pipeline's
        levels); not run after a dry run or an interruption.
    **options
        Options of :func:`cassia_sc.workflow.run_annotation` (those of
        :func:`cassia_sc.run_batch`, ``score``, ``boost_below``, ...). A dry run writes
        nothing.

    Returns
    -------
    BatchResult
        The batch.
    """
    try:
        result, _ = run_annotation(marker, **options)
    except BatchInterrupted as interruption:
        write_outputs(interruption.result, output_name)  # keep what finished, then stop
        raise
    if not result.dry_run:
        if finish is not None:
            result = finish(result)
        paths = write_outputs(result, output_name)
        logger.info("Wrote %s", ", ".join(str(p) for p in paths.values()))
    return result


@fill_docs
def runCASSIA_score_batch(  # CASSIA's name, kept for its users
    input_file: str | os.PathLike,
    output_file: str | os.PathLike | None = None,
    max_workers: int = Default.max_workers,
    model: str | None = None,
    temperature: float | None = None,
    provider: str = Default.provider,
    max_retries: int = 1,
    generate_report: bool = True,
    conversations_json_path: str | os.PathLike | None = None,
    reasoning: str | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Score every cluster of a ``runCASSIA_batch`` result file, as CASSIA's function does.

    Reads ``input_file`` (the summary or full CSV; ``.csv`` may be left out) and the
    conversations beside it, has a judge grade each row that has no ``Score`` yet, and
    writes the table with ``Score`` and ``Scoring_Reasoning`` columns.

    Parameters
    ----------
    input_file
        The CSV of a batch.
    output_file
        Where the scored table goes; default ``{input_file}_scored.csv``.
    {max_workers}
    model
        The judge's model (required: there is no default model here).
    temperature
        Sampling temperature; None: 0.
    {provider}
    max_retries
        As in CASSIA: further attempts of a failed call, on top of 2.
    generate_report
        Also write the HTML report beside ``output_file``.
    conversations_json_path
        The batch's conversations; by default ``{prefix}_conversations.json`` beside the
        input, when it exists, else the CSV's ``Conversation History`` column.
    {reasoning}
    **options
        Other options of :func:`cassia_sc.run_batch` (``api_key``, ``cache_dir``,
        ``progress``, ...).

    Returns
    -------
    pandas.DataFrame
        The scored table, as written.
    """
    source = Path(input_file)
    source = source if source.suffix.lower() == ".csv" else source.with_name(source.name + ".csv")
    target = Path(output_file) if output_file else source.with_name(f"{source.stem}_scored.csv")
    if target.suffix.lower() != ".csv":
        target = target.with_name(target.name + ".csv")
    _require_model(model)
    table = pd.read_csv(source, dtype={Key.csv.cluster: str}, keep_default_na=False)
    batch = read_cassia(
        table,
        conversations=conversations_json_path or conversations_beside(source),
        fields=known_fields(),
    )
    unscored = [
        row[Key.csv.cluster] for _, row in table.iterrows() if str(row.get("Score", "")) == ""
    ]
    scored = refine(
        batch,
        None,
        score=True,
        clusters=unscored,
        model=model,
        provider=provider,
        temperature=temperature if temperature is not None else Default.temperature,
        reasoning=reasoning,
        max_workers=max_workers,
        max_retries=_CASSIA_CLIENT_RETRIES + max_retries,
        **options,
    )
    by_cluster = {c.cluster: c for c in scored.clusters}
    for column, name in (("Score", "score"), ("Scoring_Reasoning", "score_reasoning")):
        table[column] = [
            by_cluster[c].extra.get(name)
            if c in unscored
            else table.get(column, [""] * len(table))[i]
            for i, c in enumerate(table[Key.csv.cluster])
        ]
    atomic_write_text(target, csv_text(table))
    if generate_report:
        atomic_write_text(target.with_suffix(".html"), render_report(bounded(scored)))
    return table


@fill_docs
def runCASSIA_annotationboost(  # CASSIA's name, kept for its users
    full_result_path: str | os.PathLike,
    marker: MarkerInput,
    cluster_name: str,
    major_cluster_info: str,
    output_name: str | os.PathLike,
    num_iterations: int = Default.boost_rounds,
    model: str | None = None,
    provider: str = Default.provider,
    temperature: float = 0,
    conversation_history_mode: str = "full",
    search_strategy: str = "breadth",
    report_style: str = "per_iteration",
    validator_involvement: str = Default.validator_involvement,
    conversations_json_path: str | os.PathLike | None = "auto",
    species: str = "human",
    auto_convert_ids: bool = True,
    reasoning: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Boost one cluster of a ``runCASSIA_batch`` result, as CASSIA's function does.

    The model states hypotheses and asks for genes; it sees that cluster's evidence: from
    an AnnData, the expression figures of the genes in the cluster, the rest of the cells
    and its most similar clusters; from a marker table, that cluster's own rows.

    Parameters
    ----------
    full_result_path
        The batch's summary (or full) CSV.
    marker
        The markers' AnnData (with its cells and ``rank_genes_groups``) or marker table.
    cluster_name
        The cluster to boost.
    major_cluster_info
        What the dataset is, e.g. ``"Human PBMC"``: given to the model.
    output_name
        Path prefix of the boosted cluster's summary CSV and report.
    num_iterations
        Rounds at most, the final answer included (CASSIA's default is 10; ours 5).
    {model}
    {provider}
    {temperature}
    conversation_history_mode, search_strategy, report_style, auto_convert_ids
        Accepted for CASSIA's callers; the boost always reads the whole first exchange,
        weighs hypotheses side by side, and writes one report.
    {validator_involvement}
    conversations_json_path
        The batch's conversations; ``"auto"``: ``{prefix}_conversations.json`` beside it.
    {species}
    {reasoning}
    **options
        Other options of :func:`cassia_sc.run_batch` (``api_key``, ``cache_dir``, ...).

    Returns
    -------
    dict
        ``result`` (the cluster's :class:`~cassia_sc.ClusterResult`), ``summary_path`` and
        ``report_path``.
    """
    source = Path(full_result_path)
    journal = conversations_json_path
    if journal == "auto":
        journal = conversations_beside(source)
    batch = read_cassia(source, conversations=journal, fields=known_fields())
    batch.settings |= {
        "species": species or batch.settings.get("species"),
        "additional_info": major_cluster_info,
        "validator_involvement": validator_involvement,
    }
    boosted = refine(
        batch,
        marker,
        boost_below=None,
        boost_all=True,
        boost_rounds=num_iterations,
        clusters=[str(cluster_name)],
        model=model,
        provider=provider,
        temperature=temperature,
        reasoning=reasoning,
        **options,
    )
    one = replace(boosted, clusters=[boosted[str(cluster_name)]])
    paths = output_paths(output_name)
    atomic_write_text(paths["summary"], csv_text(bounded(one).summary()))
    atomic_write_text(paths["report"], render_report(bounded(one)))
    return {
        "result": one.clusters[0],
        "summary_path": paths["summary"],
        "report_path": paths["report"],
    }


@fill_docs
def runCASSIA_pipeline(  # CASSIA's name, kept for its users
    output_file_name: str,
    tissue: str | None,
    species: str,
    marker: MarkerInput,
    max_workers: int = Default.max_workers,
    overall_provider: str = Default.provider,
    annotation_model: str | None = None,
    annotation_provider: str | None = None,
    score_model: str | None = None,
    score_provider: str | None = None,
    annotationboost_model: str | None = None,
    annotationboost_provider: str | None = None,
    score_threshold: float = Default.boost_below,
    additional_info: str | None = None,
    max_retries: int = 1,
    merge_annotations: bool = True,
    merge_model: str | None = None,
    merge_provider: str | None = None,
    conversation_history_mode: str = "final",
    ranking_method: RankingMethod = Default.ranking_method,
    ascending: bool | None = None,
    report_style: str = "per_iteration",
    validator_involvement: str = Default.validator_involvement,
    output_dir: str | os.PathLike | None = None,
    validate_api_keys_before_start: bool = True,
    auto_convert_ids: bool = True,
    n_genes: int = Default.n_genes,
    overall_reasoning: str | None = None,
    annotation_reasoning: str | None = None,
    score_reasoning: str | None = None,
    annotationboost_reasoning: str | None = None,
    merge_reasoning: str | None = None,
    **options: Any,
) -> BatchResult:
    """Annotate, score, boost the clusters scored below ``score_threshold``, and rescore.

    CASSIA's pipeline, whose final table and report carry the boosted labels (CASSIA
    1.4.0 writes them before its boost runs). Writes the files of
    :func:`runCASSIA_batch` under ``output_dir``.

    Parameters
    ----------
    output_file_name
        Prefix of the output files.
    {tissue}
    {species}
    {marker}
    {max_workers}
    overall_provider
        The provider of every stage, unless a stage names its own.
    annotation_model
        The annotator's model (required: there is no default model here).
    annotation_provider
        The annotator's provider.
    {score_model}
    {score_provider}
    annotationboost_model, annotationboost_provider
        The boost's model and provider; by default the annotator's.
    score_threshold
        Clusters scored below it are boosted.
    {additional_info}
    max_retries
        As in :func:`runCASSIA_batch`.
    merge_annotations, merge_model, merge_provider, merge_reasoning
        Name each cluster at CASSIA's three levels (``Merged_Grouping_1..3``; see
        :func:`merge_annotations_all`) with this model, provider and reasoning effort (by
        default the annotator's), after the boost and before the files are written.
    conversation_history_mode
        What the boost reads of the first exchange: here always all of it (``"full"``;
        CASSIA's default ``"final"`` summarises it first); ``"none"`` is refused.
    {ranking_method}
    {ascending}
    report_style
        One report holds every round of the boost, whichever style is asked.
    {validator_involvement}
    output_dir
        Folder of the output files; default the working folder.
    validate_api_keys_before_start, auto_convert_ids
        As in :func:`runCASSIA_batch`.
    {n_genes}
    overall_reasoning
        Reasoning effort of every stage.
    annotation_reasoning
        Reasoning effort of the annotation; default ``overall_reasoning``.
    score_reasoning, annotationboost_reasoning
        One effort serves every stage here: a value other than the annotation's is
        refused.
    **options
        Other options of :func:`cassia_sc.run_batch` (``api_key``, ``cache_dir``, ...).

    Returns
    -------
    BatchResult
        The final batch, boosted labels included.
    """
    _require_model(annotation_model, name="annotation_model")
    logger.debug("One report holds every style: report_style=%r", report_style)
    if conversation_history_mode == "none":
        raise CassiaError(
            "conversation_history_mode='none': the boost here always reads the first exchange."
        )
    reasoning = annotation_reasoning or overall_reasoning
    for name, effort in (
        ("score_reasoning", score_reasoning),
        ("annotationboost_reasoning", annotationboost_reasoning),
    ):
        if effort not in (None, reasoning):
            raise CassiaError(
                f"{name}={effort!r}: one reasoning effort serves every stage here; "
                f"give it as overall_reasoning (now {reasoning!r})."
            )
    if auto_convert_ids:
        options |= _symbols_for_gene_ids(
            marker,
            celltype_column=None,
            gene_column_name=None,
            gene_symbols=options.get("gene_symbols"),
        )
    if validate_api_keys_before_start and not options.get("dry_run") and "client" not in options:
        _check_key(
            annotation_provider or overall_provider, options.get("api_key"), annotation_model
        )

    def merged(result: BatchResult) -> BatchResult:
        """CASSIA's last stage: the three levels, named over all clusters at once."""
        client = LLMClient(
            model=merge_model or annotation_model,
            provider=merge_provider or annotation_provider or overall_provider,
            api_key=options.get("api_key"),
            temperature=Default.temperature,
            reasoning=merge_reasoning or reasoning,
            **connection_options(**options),
        )
        try:
            with client:
                return model_levels(result, client, additional_info=additional_info)
        except FatalLLMError as error:
            logger.warning(
                "merge_annotations failed (%s); the files are written without levels.", error
            )
            return result

    return run_batch_to_files(
        marker,
        Path(output_dir or ".") / output_file_name,
        finish=merged if merge_annotations else None,
        tissue=tissue,
        species=species,
        model=annotation_model,
        provider=annotation_provider or overall_provider,
        max_workers=max_workers,
        n_genes=n_genes,
        additional_info=additional_info,
        ranking_method=ranking_method,
        ascending=ascending,
        validator_involvement=validator_involvement,
        reasoning=reasoning,
        max_retries=_CASSIA_CLIENT_RETRIES + max_retries,
        score=True,
        score_model=score_model,
        score_provider=score_provider or (overall_provider if score_model else None),
        boost_below=score_threshold,
        boost_model=annotationboost_model,
        boost_provider=annotationboost_provider,
        **options,
    )


@fill_docs
def runCASSIA_batch_n_times(  # CASSIA's name, kept for its users
    n: int,
    marker: MarkerInput,
    output_name: str | os.PathLike = "cell_type_analysis_results",
    model: str | None = None,
    temperature: float | None = None,
    tissue: str | None = "lung",
    species: str = "human",
    additional_info: str | None = None,
    celltype_column: str | None = None,
    gene_column_name: str | None = None,
    max_workers: int = 10,
    batch_max_workers: int = 5,
    provider: str = Default.provider,
    max_retries: int = 1,
    validator_involvement: str = Default.validator_involvement,
    **options: Any,
) -> list[BatchResult]:
    """Annotate the same clusters ``n`` times and write each run's files, as CASSIA does.

    Run ``i`` (from 1) writes the files of :func:`runCASSIA_batch` under
    ``{output_name}_{i}``, so that ``file_pattern=f"{output_name}_*_summary.csv"`` finds
    them for :func:`runCASSIA_similarity_score_batch`. The work is done by
    :func:`cassia_sc.run_repeated`: each run has its own cache entries, so a repeated run
    is a new sample, and a restarted one asks only for what is missing.

    Parameters
    ----------
    n
        Runs.
    {marker}
    output_name
        Prefix of each run's files.
    {model}
    temperature
        Sampling temperature; None: 0 (as CASSIA's default for this function); above 0
        the runs differ more.
    {tissue}
    {species}
    {additional_info}
    {celltype_column}
    {gene_column_name}
    {max_workers}
    batch_max_workers
        CASSIA runs several batches at once; here the runs share one pool of
        ``max_workers`` calls, one run after another, which is as fast for the provider
        and keeps each run's files complete before the next starts.
    {provider}
    max_retries
        As in :func:`runCASSIA_batch`.
    {validator_involvement}
    **options
        Other options of :func:`cassia_sc.run_batch` (``api_key``, ``cache_dir``, ...).

    Returns
    -------
    list of BatchResult
        The runs, in order (CASSIA returns None).
    """
    _require_model(model)
    logger.debug("batch_max_workers=%s: runs share one pool here.", batch_max_workers)
    runs = run_repeated(
        marker,
        n_runs=n,
        model=model,
        temperature=Default.temperature if temperature is None else temperature,
        tissue=tissue,
        species=species,
        additional_info=additional_info,
        celltype_column=celltype_column,
        gene_column_name=gene_column_name,
        max_workers=max_workers,
        provider=provider,
        max_retries=_CASSIA_CLIENT_RETRIES + max_retries,
        validator_involvement=validator_involvement,
        **options,
    )
    if not options.get("dry_run"):
        for index, run in enumerate(runs, start=1):
            write_outputs(run, f"{output_name}_{index}")
    return runs


def runCASSIA_similarity_score_batch(  # CASSIA's name, kept for its users
    marker: MarkerInput,
    file_pattern: str,
    output_name: str | os.PathLike,
    celltype_column: str | None = None,
    max_workers: int = 10,
    model: str | None = None,
    provider: str = Default.provider,
    main_weight: float = 0.5,
    sub_weight: float = 0.5,
    temperature: float | None = None,
    generate_report: bool = True,
    report_output_path: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Measure how much repeated runs agree, per cluster, from their summary files.

    CASSIA asks a model to score the similarity of the runs' answers; here the agreement
    is computed without a model, by :func:`cassia_sc.consensus`: two answers agree when
    they name the same Cell Ontology term or one is an ancestor of the other, so the
    result is the same on every run and costs nothing. ``model``, ``provider``,
    ``temperature``, ``max_workers``, ``main_weight`` and ``sub_weight`` are accepted for
    CASSIA's callers and not used.

    Parameters
    ----------
    marker
        The markers the runs annotated: their clusters, in order, are the rows.
    file_pattern
        A glob of the runs' summary CSVs, e.g. ``"run_*_summary.csv"``; runs are joined
        by cluster name, whatever each file's row order.
    output_name
        The table's path (``.csv`` added when missing).
    celltype_column
        The marker table's cluster column, when not the first.
    max_workers, model, provider, main_weight, sub_weight, temperature
        Not used (see above).
    generate_report
        Also write the report of the consensus answers.
    report_output_path
        Its path; default ``{output_name}_report.html``.

    Returns
    -------
    pandas.DataFrame
        :func:`cassia_sc.consensus`'s table: per cluster ``cluster``, ``consensus``,
        ``agreement``, ``flagged``, ``answers`` and ``consensus_run``.

    Raises
    ------
    CassiaError
        No file matches ``file_pattern``.
    """
    unused = {"model": model, "temperature": temperature, "max_workers": max_workers}
    logger.debug("Agreement needs no model; not used: %s", unused)
    del provider, main_weight, sub_weight
    files = sorted(glob.glob(str(file_pattern)))
    if not files:
        raise CassiaError(f"No summary file matches {file_pattern!r}.")
    clusters = list(top_markers(marker, celltype_column=celltype_column))
    runs = [_aligned(read_cassia(path), clusters) for path in files]
    table = consensus(runs)
    target = Path(output_name)
    if target.suffix.lower() != ".csv":
        target = target.with_name(target.name + ".csv")
    atomic_write_text(target, csv_text(table))
    if generate_report:
        report = Path(report_output_path or target.with_name(f"{target.stem}_report.html"))
        atomic_write_text(report, render_report(bounded(consensus_batch(runs, table))))
    return table


def runCASSIA_generate_score_report(  # CASSIA's name, kept for its users
    csv_path: str | os.PathLike, index_name: str = "CASSIA_reports_summary"
) -> Path:
    """Write the report of a scored (or any) results CSV, beside it.

    CASSIA writes one page per cluster and an index; here one self-contained page holds
    every cluster, with its score, its judge's reasoning and its conversation (from the
    conversations file beside the CSV, else its ``Conversation History`` column).

    Parameters
    ----------
    csv_path
        The CSV of :func:`runCASSIA_score_batch` (or of a batch).
    index_name
        The report's name in the CSV's folder (``.html`` added).

    Returns
    -------
    pathlib.Path
        The report.
    """
    source = Path(csv_path)
    batch = read_cassia(source, fields=known_fields())
    target = source.with_name(f"{Path(index_name).name.removesuffix('.html')}.html")
    atomic_write_text(target, render_report(bounded(batch)))
    return target


def _aligned(run: BatchResult, clusters: list[str]) -> BatchResult:
    """Return the run with the markers' clusters in order; one it lacks is a failure."""
    by_name = {c.cluster: c for c in run.clusters}
    missing = [name for name in clusters if name not in by_name]
    if missing:
        logger.warning("%s has no row for clusters %s.", run.settings.get("source"), missing)
    ordered = [
        by_name.get(name) or ClusterResult(name, [], status="failed", error="no row in this run")
        for name in clusters
    ]
    return replace(run, clusters=ordered)


@fill_docs
def merge_annotations(  # CASSIA's name, kept for its users
    csv_path: str | os.PathLike,
    output_path: str | os.PathLike | None = None,
    provider: str = Default.provider,
    model: str | None = None,
    temperature: float | None = None,
    api_key: str | None = None,
    additional_context: str | None = None,
    batch_size: int = 20,
    detail_level: str = "broad",
    reasoning: str | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Name each cluster of a ``runCASSIA_batch`` table at one level, as CASSIA's function does.

    Adds CASSIA's column of ``detail_level``: ``Merged_Grouping_1`` (``"broad"``: the
    lineage, e.g. T cell, myeloid cell), ``Merged_Grouping_2`` (``"detailed"``: the type,
    e.g. CD8+ T cell, macrophage) or ``Merged_Grouping_3`` (``"very_detailed"``: the most
    specific type with its state). Unlike CASSIA 1.4.0, every answered cluster is named in
    one call, so that one type gets one name; the reply is keyed by cluster name and
    joined to the rows by name, never by position (a reply that lacks a cluster or names
    one too many is asked for again); failed rows are not sent and stay empty, with a
    warning that says why. See :class:`cassia_sc.agents.Grouper`.

    Parameters
    ----------
    csv_path
        The summary (or full, or scored) CSV of a ``runCASSIA_batch`` run, CASSIA's or
        ours: read with :func:`cassia_sc.read_cassia`, clusters named by ``Cluster ID``.
    output_path
        Where the table with the new column goes; None: not written.
    {provider}
    model
        The model (required: there is no default model here).
    {temperature}
        None: 0.
    {api_key}
    additional_context
        Free text about the sample for the model.
    batch_size
        Accepted for CASSIA's callers and not used: one call names every cluster.
    detail_level
        ``"broad"``, ``"detailed"`` or ``"very_detailed"``.
    {reasoning}
    **options
        Options of the calls (``cache_dir``, ``timeout``, ``max_retries``, ...).

    Returns
    -------
    pandas.DataFrame
        The table as read, in its row order, with the column added (empty for a row
        without a name).

    Examples
    --------
    >>> cassia_sc.merge_annotations("run_summary.csv", "run_merged.csv",
    ...     model="openai/gpt-4o", detail_level="detailed")  # doctest: +SKIP
    """
    return _merged_levels(
        csv_path,
        output_path,
        [detail_level],
        provider=provider,
        model=model,
        temperature=temperature,
        api_key=api_key,
        additional_context=additional_context,
        reasoning=reasoning,
        options=options,
    )


@fill_docs
def merge_annotations_all(  # CASSIA's name, kept for its users
    csv_path: str | os.PathLike,
    output_path: str | os.PathLike | None = None,
    provider: str = Default.provider,
    model: str | None = None,
    temperature: float | None = None,
    api_key: str | None = None,
    additional_context: str | None = None,
    batch_size: int = 20,
    reasoning: str | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Name each cluster of a ``runCASSIA_batch`` table at the three levels, as CASSIA does.

    One call per level, the three at once, each over every answered cluster; adds
    ``Merged_Grouping_1``, ``Merged_Grouping_2`` and ``Merged_Grouping_3``, joined to the
    rows by cluster name (see :func:`merge_annotations`).

    Parameters
    ----------
    csv_path
        The summary (or full, or scored) CSV of a ``runCASSIA_batch`` run.
    output_path
        Where the table with the new columns goes; None: not written.
    {provider}
    model
        The model (required: there is no default model here).
    {temperature}
        None: 0.
    {api_key}
    additional_context
        Free text about the sample for the model.
    batch_size
        Accepted for CASSIA's callers and not used: one call names every cluster.
    {reasoning}
    **options
        Options of the calls (``cache_dir``, ``timeout``, ``max_retries``, ...).

    Returns
    -------
    pandas.DataFrame
        The table as read, in its row order, with the three columns added.
    """
    return _merged_levels(
        csv_path,
        output_path,
        list(Key.csv.levels),
        provider=provider,
        model=model,
        temperature=temperature,
        api_key=api_key,
        additional_context=additional_context,
        reasoning=reasoning,
        options=options,
    )


def _merged_levels(
    csv_path: str | os.PathLike,
    output_path: str | os.PathLike | None,
    levels: list[str],
    *,
    provider: str,
    model: str | None,
    temperature: float | None,
    api_key: str | None,
    additional_context: str | None,
    reasoning: str | None,
    options: dict[str, Any],
) -> pd.DataFrame:
    """Add the columns of ``levels`` to a batch's table, named by the model, joined by name."""
    unknown = [level for level in levels if level not in Key.csv.levels]
    if unknown:
        raise CassiaError(
            f"detail_level must be one of {list(Key.csv.levels)}, not {unknown[0]!r}."
        )
    _require_model(model)
    table = pd.read_csv(csv_path, dtype={Key.csv.cluster: str}, keep_default_na=False)
    if Key.csv.main_cell_type not in table.columns:
        raise CassiaError(
            f"{csv_path} has no {Key.csv.main_cell_type!r} column: is it a table of "
            f"runCASSIA_batch? Its columns are {list(table.columns)}."
        )
    # One cluster per row, in the table's order; the model's names join them by name.
    batch = read_cassia(table, conversations=None, fields=known_fields())
    client = LLMClient(
        model=model,
        provider=provider,
        api_key=api_key,
        temperature=Default.temperature if temperature is None else temperature,
        reasoning=reasoning,
        **connection_options(**options),
    )
    with client:
        groupings = group_levels(
            batch.clusters,
            client,
            levels=levels,
            species=batch.settings.get("species") or None,
            tissue=batch.settings.get("tissue") or None,
            additional_info=additional_context,
        )
    for level, grouping in groupings.items():
        table[Key.csv.levels[level]] = [grouping.names.get(c.cluster, "") for c in batch.clusters]
        notes = dict(grouping.notes)
        notes |= {
            c.cluster: f"not annotated ({c.error or c.status})"
            for c in batch.clusters
            if c.status != "ok" or not c.main_cell_type
        }
        if notes:
            logger.warning(
                "%s: no name for %d clusters: %s",
                Key.csv.levels[level],
                len(notes),
                "; ".join(f"{cluster}: {note}" for cluster, note in list(notes.items())[:10]),
            )
    if output_path is not None:
        atomic_write_text(Path(output_path), csv_text(table))
    return table


def _require_model(model: str | None, *, name: str = "model") -> None:
    """Refuse a missing model: CASSIA picks one per provider, cassia_sc does not choose."""
    if not model:
        raise CassiaError(
            f"{name} must be given, e.g. {name}='openai/gpt-4o': cassia_sc does not choose one."
        )


def _refuse_unavailable(**asked: Any) -> None:
    """Refuse CASSIA's options that have no counterpart here, one line each, with the way out."""
    reasons = {
        "use_reference": "CASSIA's retrieval of its bundled reference documents is not "
        "available in cassia_sc; leave it False (evidence from the data: tl.boost)",
        "reference_model": "only used by use_reference, which is not available",
        "reference_provider": "only used by use_reference, which is not available",
        "reference_cell_type_hint": "only used by use_reference; give the parent "
        "population as additional_info instead",
        "proxy": "CASSIA's proxy presets are not available; give the proxy's base URL as "
        "provider=..., or set HTTPS_PROXY",
    }
    for name, value in asked.items():
        if value not in (None, False):
            raise CassiaError(f"{name}={value!r}: {reasons[name]}.")


# --------------------------------------------------------------------------- subclusters

# runCASSIA_n_subcluster's temperature when none is given: CASSIA's, so that runs differ.
_SUBCLUSTER_RUNS_TEMPERATURE = 0.3
# What the model is told when CASSIA's caller gives no species (CASSIA's prompt has none).
_SPECIES_NOT_GIVEN = "not given"


@fill_docs
def runCASSIA_subclusters(  # CASSIA's name, kept for its users
    marker: MarkerInput,
    major_cluster_info: str,
    output_name: str | os.PathLike,
    model: str | None = None,
    temperature: float | None = None,
    provider: str = Default.provider,
    n_genes: int = Default.n_genes,
    tissue: str | None = None,
    species: str | None = None,
    additional_context: str | None = None,
    use_reference: bool = False,
    reference_provider: str | None = None,
    reference_model: str | None = None,
    reference_cell_type_hint: str | None = None,
    reference_depth: str = "detailed",
    reference_max_content_length: int = 5000,
    reference_max_context_length: int = 12000,
    **options: Any,
) -> pd.DataFrame:
    """Annotate the subclusters of one population, as CASSIA's function of that name.

    CASSIA 1.4.0's parameters, in its order and with its defaults. Each subcluster gets
    the whole pipeline of :func:`runCASSIA_batch` (annotator, validator and, when asked,
    ``score=True`` and ``boost_below=``), with the population (``major_cluster_info``)
    in its prompts and its markers read as ranked against its siblings. CASSIA instead
    sends every subcluster in one prompt and reads the answer back with a second call,
    re-assigning cluster names by position when the model renamed them; here every
    answer is its cluster's own, joined by name. Writes, each atomically:

    - ``{output_name}.csv``: CASSIA's table, one row per subcluster in the input's order,
      with ``Result ID`` (the subcluster's name), ``main_cell_type``, ``sub_cell_type``
      (the most likely more specific type), ``key_markers`` (the markers the call rests
      on) and ``reason`` (the annotator's reasoning; a failed subcluster's error);
    - the five files of :func:`runCASSIA_batch` under the prefix ``output_name``:
      ``_summary.csv``, ``_full.csv``, ``_conversations.json``, ``_report.html`` and
      ``_record.json``.

    Parameters
    ----------
    {marker}
    major_cluster_info
        The population the subclusters come from, e.g. ``"cd8 t cell"``: the model's
        ``parent``.
    output_name
        CASSIA's table's path (``.csv`` added when missing) and our files' prefix.
    {model}
    temperature
        Sampling temperature; None: 0 (CASSIA's default here).
    {provider}
    {n_genes}
    tissue
        Tissue of the sample; None for a tissue-blind annotation.
    species
        Species of the sample; None: the model is told it is not given.
    additional_context
        Free text about the sample, given to the model (our ``additional_info``).
    use_reference, reference_provider, reference_model, reference_cell_type_hint
        CASSIA's retrieval of its bundled reference documents: not available here;
        asking for it raises :class:`~cassia_sc.CassiaError`.
    reference_depth, reference_max_content_length, reference_max_context_length
        Only read by that retrieval: accepted, not used.
    **options
        Any other option of :func:`cassia_sc.run_batch` (``api_key``, ``cache_dir``,
        ``max_workers``, ``validator_involvement``, ...) and of the whole run
        (``score``, ``boost_below``, ...). ``dry_run=True`` writes nothing.

    Returns
    -------
    pandas.DataFrame
        CASSIA's table, as written (CASSIA returns None).

    Raises
    ------
    CassiaError
        A missing ``model``, or CASSIA's reference retrieval asked for.

    Examples
    --------
    >>> import cassia_sc
    >>> table = cassia_sc.runCASSIA_subclusters(  # doctest: +SKIP
    ...     cassia_sc.loadmarker("subcluster_results"), "cd8 t cell", "cd8_subclusters",
    ...     model="openai/gpt-4o", species="human", tissue="large intestine",
    ... )
    """
    _refuse_unavailable(
        use_reference=use_reference,
        reference_provider=reference_provider,
        reference_model=reference_model,
        reference_cell_type_hint=reference_cell_type_hint,
    )
    logger.debug(
        "Only read with use_reference: %s",
        (reference_depth, reference_max_content_length, reference_max_context_length),
    )
    result = _annotate_subclusters(
        marker,
        major_cluster_info,
        output_name,
        model=model,
        temperature=Default.temperature if temperature is None else temperature,
        provider=provider,
        n_genes=n_genes,
        tissue=tissue,
        species=species,
        additional_context=additional_context,
        sample=0,
        **options,
    )
    return _subcluster_table(result)


@fill_docs
def runCASSIA_n_subcluster(  # CASSIA's name, kept for its users
    n: int,
    marker: MarkerInput,
    major_cluster_info: str,
    base_output_name: str | os.PathLike,
    model: str | None = None,
    temperature: float | None = None,
    provider: str = Default.provider,
    max_workers: int = 5,
    n_genes: int = Default.n_genes,
    tissue: str | None = None,
    species: str | None = None,
    additional_context: str | None = None,
    use_reference: bool = False,
    reference_provider: str | None = None,
    reference_model: str | None = None,
    reference_cell_type_hint: str | None = None,
    reference_depth: str = "detailed",
    reference_max_content_length: int = 5000,
    reference_max_context_length: int = 12000,
    **options: Any,
) -> list[BatchResult]:
    """Annotate the subclusters of one population ``n`` times, as CASSIA's function does.

    Run ``i`` (from 1) writes what :func:`runCASSIA_subclusters` writes with
    ``output_name=f"{base_output_name}_{i}"``: CASSIA's ``{base_output_name}_{i}.csv``
    and our five files. Each run has its own cache entries, so the runs are samples of
    the model (at ``temperature`` above 0) and a restarted call asks only for what is
    missing. Their agreement: :func:`cassia_sc.consensus` on the returned runs, or
    :func:`runCASSIA_similarity_score_batch` with
    ``file_pattern=f"{base_output_name}_*_summary.csv"`` (CASSIA's own pattern,
    ``f"{base_output_name}_*.csv"``, also matches our ``_full.csv`` files).

    Parameters
    ----------
    n
        Runs.
    {marker}
    major_cluster_info
        The population the subclusters come from: the model's ``parent``.
    base_output_name
        Prefix of each run's files.
    {model}
    temperature
        Sampling temperature; None: 0.3 (CASSIA's default here, so that runs differ).
    {provider}
    max_workers
        Subclusters annotated at the same time; the runs follow each other, so that each
        run's files are complete before the next starts (CASSIA runs them side by side).
    {n_genes}
    tissue, species, additional_context
        As in :func:`runCASSIA_subclusters`.
    use_reference, reference_provider, reference_model, reference_cell_type_hint
        Not available, as in :func:`runCASSIA_subclusters`.
    reference_depth, reference_max_content_length, reference_max_context_length
        Accepted, not used.
    **options
        As in :func:`runCASSIA_subclusters`.

    Returns
    -------
    list of BatchResult
        The runs, in order (CASSIA returns None).

    Raises
    ------
    CassiaError
        ``n`` below 1, a missing ``model``, or the reference retrieval asked for.
    """
    _refuse_unavailable(
        use_reference=use_reference,
        reference_provider=reference_provider,
        reference_model=reference_model,
        reference_cell_type_hint=reference_cell_type_hint,
    )
    logger.debug(
        "Only read with use_reference: %s",
        (reference_depth, reference_max_content_length, reference_max_context_length),
    )
    if not isinstance(n, int) or n < 1:
        raise CassiaError(f"n must be a positive number of runs, not {n!r}.")
    return [
        _annotate_subclusters(
            marker,
            major_cluster_info,
            f"{base_output_name}_{run}",
            model=model,
            temperature=_SUBCLUSTER_RUNS_TEMPERATURE if temperature is None else temperature,
            provider=provider,
            max_workers=max_workers,
            n_genes=n_genes,
            tissue=tissue,
            species=species,
            additional_context=additional_context,
            sample=run - 1,
            **options,
        )
        for run in range(1, n + 1)
    ]


def _annotate_subclusters(
    marker: MarkerInput,
    major_cluster_info: str,
    output_name: str | os.PathLike,
    *,
    model: str | None,
    species: str | None,
    additional_context: str | None,
    **options: Any,
) -> BatchResult:
    """Annotate the subclusters with their parent; write our files and CASSIA's table."""
    _require_model(model)
    if not str(major_cluster_info or "").strip():
        raise CassiaError(
            "major_cluster_info must name the population the subclusters come from, "
            "e.g. 'cd8 t cell'."
        )
    result = run_batch_to_files(
        marker,
        output_name,
        parent=major_cluster_info,
        model=model,
        species=species or _SPECIES_NOT_GIVEN,
        additional_info=additional_context,
        **options,
    )
    if not result.dry_run:
        target = Path(output_name)
        if target.suffix.lower() != ".csv":
            target = target.with_name(target.name + ".csv")
        atomic_write_text(target, csv_text(_subcluster_table(result)))
    return result


def _subcluster_table(result: BatchResult) -> pd.DataFrame:
    """Return CASSIA's subcluster table of a batch: one row per subcluster, joined by name."""
    rows = []
    for cluster in bounded(result).clusters:
        answered = cluster.main_cell_type is not None
        rows.append(
            [
                cluster.cluster,
                cluster.main_cell_type or "",
                (cluster.sub_cell_types or [""])[0],
                Key.list_separator.join(cluster.key_markers),
                _reasoning(cluster) if answered else f"{cluster.status}: {cluster.error or ''}",
            ]
        )
    return pd.DataFrame(rows, columns=list(Key.cassia.subcluster_columns), dtype=object)


def _reasoning(cluster: ClusterResult) -> str:
    """Return the reasoning of a cluster's final answer: its reply before the JSON block."""
    author = "booster" if cluster.extra.get("boosted") else "annotator"
    replies = [
        t.content for t in cluster.conversation if t.agent == author and t.role == "assistant"
    ]
    text = replies[-1] if replies else ""
    prose = text.split("```", 1)[0].strip()
    return " ".join(prose.split()) or cluster.validation_feedback or ""


def _symbols_for_gene_ids(
    marker: MarkerInput,
    *,
    celltype_column: str | None,
    gene_column_name: str | None,
    gene_symbols: str | None,
) -> dict[str, Any]:
    """Return the options that send symbols instead of IDs (``auto_convert_ids``)."""
    if isinstance(marker, AnnData):
        if gene_symbols is not None or not looks_like_gene_ids(marker.var_names):
            return {}
        for column in marker.var.columns:
            values = marker.var[column]
            textual = values.dtype.kind in "OSUT" or isinstance(values.dtype, pd.CategoricalDtype)
            if textual and values.notna().all() and not looks_like_gene_ids(values.astype(str)):
                logger.info("Gene IDs in var_names: sending the symbols of var[%r].", column)
                return {"gene_symbols": column}
        raise MarkerError(
            "var_names are Ensembl/Entrez gene IDs and no column of var holds symbols: "
            "pass gene_symbols='<column>', or auto_convert_ids=False to send the IDs."
        )
    genes = top_markers(
        marker, n_genes=5, celltype_column=celltype_column, gene_column_name=gene_column_name
    )
    if looks_like_gene_ids([g for listed in genes.values() for g in listed]):
        raise MarkerError(
            "The markers are Ensembl/Entrez gene IDs: converting them needs a network "
            "look-up (CASSIA asks mygene.info), which cassia_sc does not make. Convert them "
            "to symbols first, or pass auto_convert_ids=False to send the IDs."
        )
    return {}


def _check_key(provider: str, api_key: str | None, model: str | None) -> None:
    """``validate_api_key_before_start``: one request that costs no tokens, as CASSIA makes."""
    status = check_api_key(provider, api_key, model=model)
    if not status.valid:
        raise AuthenticationFailed(f"{status.reason} (validate_api_key_before_start=True)")
