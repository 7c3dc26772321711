"""CASSIA's entry points, with its names, parameters and output files, for its users.

Above :mod:`cassia_sc.batch` and :mod:`cassia_sc.export`: each function here runs a batch
and writes what CASSIA's function of the same name writes.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from ._docs import fill_docs
from ._io import atomic_write_text
from ._keys import Default, Key
from .errors import BatchInterrupted, CassiaError
from .export import bounded, csv_text, output_paths, render_report, write_outputs
from .fields import CORE_FIELDS, split_list
from .markers import MarkerInput, RankingMethod
from .results import BatchResult, ClusterResult, Turn, turns_from_record
from .workflow import refine, run_annotation

logger = logging.getLogger("cassia_sc")

# CASSIA's HTTP client retries every call twice before its own per-cluster retries.
_CASSIA_CLIENT_RETRIES = 2
# runCASSIA_pipeline's options that have no meaning here (merging, report styles, ID
# conversion, per-stage reasoning): accepted so CASSIA's calls run, and ignored.
_CASSIA_ONLY = frozenset(
    {
        "merge_model",
        "merge_provider",
        "merge_reasoning",
        "conversation_history_mode",
        "report_style",
        "validate_api_keys_before_start",
        "auto_convert_ids",
        "annotation_reasoning",
        "score_reasoning",
        "annotationboost_reasoning",
    }
)


@fill_docs
def runCASSIA_batch(  # CASSIA's name, kept for its users
    marker: MarkerInput,
    output_name: str,
    model: str,
    tissue: str | None,
    species: str,
    provider: str = Default.provider,
    max_workers: int = Default.max_workers,
    n_genes: int = Default.n_genes,
    additional_info: str | None = None,
    temperature: float = 0,
    validator_involvement: str = Default.validator_involvement,
    reasoning: str | None = None,
    ranking_method: RankingMethod = Default.ranking_method,
    ascending: bool | None = None,
    celltype_column: str | None = None,
    gene_column_name: str | None = None,
    max_retries: int = 1,
    **options: Any,
) -> pd.DataFrame:
    """Annotate every cluster and write CASSIA's four output files.

    The same parameters as CASSIA's ``runCASSIA_batch``; the work is done by
    :func:`cassia_sc.run_batch`. Writes, each atomically:

    - ``{output_name}_summary.csv``: one row per cluster, failed ones included;
    - ``{output_name}_full.csv``: the summary plus each cluster's conversation;
    - ``{output_name}_conversations.json``: per cluster, the annotator, validator and
      formatter turns;
    - ``{output_name}_report.html``: a self-contained report.

    A dry run (``dry_run=True``) writes nothing.

    Parameters
    ----------
    {marker}
    {output_name}
    {model}
    {tissue}
    {species}
    {provider}
    {max_workers}
    {n_genes}
    {additional_info}
    {temperature}
    {validator_involvement}
    {reasoning}
    {ranking_method}
    {ascending}
    {celltype_column}
    {gene_column_name}
    max_retries
        As in CASSIA: further attempts for a cluster whose calls failed. CASSIA repeats
        the whole cluster on top of its HTTP client's 2 retries per call; here each failed
        call is retried up to ``2 + max_retries`` times, which covers the same faults
        without repeating the calls that had succeeded.
    **options
        Any other option of :func:`cassia_sc.run_batch` (``api_key``, ``cache_dir``, ``timeout``,
        ``requests_per_minute``, ``progress``, ``dry_run``, ...).

    Returns
    -------
    pandas.DataFrame
        The summary table, as written to ``{output_name}_summary.csv``.

    Examples
    --------
    >>> import cassia_sc
    >>> summary = cassia_sc.runCASSIA_batch(  # doctest: +SKIP
    ...     cassia_sc.loadmarker("pbmc68k_unprocessed"), "pbmc", "openai/gpt-4o", "blood", "human"
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


@fill_docs
def run_batch_to_files(
    marker: MarkerInput, output_name: str | os.PathLike, **options: Any
) -> BatchResult:
    """Annotate (and score and boost, if asked) and write the four files, even after Ctrl-C.

    Parameters
    ----------
    {marker}
    {output_name}
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
    if not model:
        raise CassiaError("model must be given: the judge's model, e.g. model='openai/gpt-4o'.")
    table = pd.read_csv(source, dtype={Key.csv.cluster: str}, keep_default_na=False)
    batch = _batch_from_table(table, _conversations_beside(source, conversations_json_path))
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
    table = pd.read_csv(source, dtype={Key.csv.cluster: str}, keep_default_na=False)
    journal = None if conversations_json_path == "auto" else conversations_json_path
    batch = _batch_from_table(table, _conversations_beside(source, journal))
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
    ranking_method: RankingMethod = Default.ranking_method,
    ascending: bool | None = None,
    validator_involvement: str = Default.validator_involvement,
    output_dir: str | os.PathLike | None = None,
    n_genes: int = Default.n_genes,
    overall_reasoning: str | None = None,
    **options: Any,
) -> BatchResult:
    """Annotate, score, boost the clusters scored below ``score_threshold``, and rescore.

    CASSIA's pipeline, whose final table and report carry the boosted labels (CASSIA
    1.4.0 writes them before its boost runs). Writes the four files of
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
    merge_annotations
        CASSIA's grouping of labels into broader levels: not available yet, skipped with
        a warning.
    {ranking_method}
    {ascending}
    {validator_involvement}
    output_dir
        Folder of the output files; default the working folder.
    {n_genes}
    overall_reasoning
        Reasoning effort of every stage.
    **options
        Other options of :func:`cassia_sc.run_batch` (``api_key``, ``cache_dir``, ...);
        CASSIA's options that have no meaning here are accepted and ignored.

    Returns
    -------
    BatchResult
        The final batch, boosted labels included.
    """
    if not annotation_model:
        raise CassiaError("annotation_model must be given, e.g. 'openai/gpt-4o'.")
    if merge_annotations:
        logger.warning("merge_annotations: grouping labels into levels is not available yet.")
    ignored = {name: options.pop(name) for name in list(options) if name in _CASSIA_ONLY}
    if ignored:
        logger.info("Ignoring CASSIA options that have no meaning here: %s", sorted(ignored))
    prefix = Path(output_dir or ".") / output_file_name
    return run_batch_to_files(
        marker,
        prefix,
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
        reasoning=overall_reasoning,
        max_retries=_CASSIA_CLIENT_RETRIES + max_retries,
        score=True,
        score_model=score_model,
        score_provider=score_provider or (overall_provider if score_model else None),
        boost_below=score_threshold,
        boost_model=annotationboost_model,
        boost_provider=annotationboost_provider,
        **options,
    )


def _batch_from_table(table: pd.DataFrame, conversations: dict[str, list[Turn]]) -> BatchResult:
    """Rebuild a batch from a summary or full CSV of ``runCASSIA_batch`` (CASSIA's or ours)."""
    by_csv = {f.csv: f for f in CORE_FIELDS if f.csv}
    first = table.iloc[0] if len(table) else {}
    clusters = []
    for _, row in table.iterrows():
        name = str(row[Key.csv.cluster])
        result = ClusterResult(
            cluster=name,
            markers=split_list(row.get(Key.csv.markers, "")),
            status="ok" if row.get(Key.csv.main_cell_type) else "failed",
            main_cell_type=str(row.get(Key.csv.main_cell_type, "")) or None,
            sub_cell_types=split_list(row.get(Key.csv.sub_cell_types, "")),
            possible_mixed_cell_types=split_list(row.get(Key.csv.possible_mixed_cell_types, "")),
            iterations=int(row.get(Key.csv.iterations) or 0),
        )
        for column, declared in by_csv.items():
            if str(row.get(column, "")) != "":
                value = row[column]
                if declared.kind == "verdict":  # the CSV holds True/False, not the names
                    result.set(declared.key, {"True": True, "False": False}.get(str(value)))
                else:
                    result.set(declared.key, declared.from_table(value))
        history = row.get(Key.csv.conversation, "")
        result.conversation = conversations.get(name) or (
            [Turn("annotator", "assistant", str(history))] if history else []
        )
        clusters.append(result)
    settings = {
        "model": first.get(Key.csv.model, ""),
        "provider": first.get(Key.csv.provider, ""),
        "tissue": first.get(Key.csv.tissue, "") or None,
        "species": first.get(Key.csv.species, ""),
    }
    return BatchResult(clusters=clusters, settings=settings)


def _conversations_beside(source: Path, given: str | os.PathLike | None) -> dict[str, list[Turn]]:
    """Each cluster's turns from a conversations JSON (``{prefix}_conversations.json``)."""
    if given is not None:
        path = Path(given)
    else:
        prefix = source.with_suffix("").name
        for suffix in ("_summary", "_full", "_scored"):
            prefix = prefix.removesuffix(suffix)
        path = source.with_name(f"{prefix}{Key.files.suffixes['conversations']}")
    if not path.is_file():
        return {}
    stored = json.loads(path.read_text(encoding="utf-8"))
    clusters = stored.get("clusters", []) if isinstance(stored, dict) else []
    return {str(c["cluster"]): turns_from_record(c) for c in clusters if "cluster" in c}
