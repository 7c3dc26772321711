"""CASSIA's entry points, with its names, parameters and output files, for its users.

Above :mod:`cassia_sc.batch` and :mod:`cassia_sc.export`: each function here runs a batch
and writes what CASSIA's function of the same name writes.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pandas as pd

from ._docs import fill_docs
from ._keys import Default
from .batch import run_batch
from .errors import BatchInterrupted
from .export import write_outputs
from .markers import MarkerInput, RankingMethod
from .results import BatchResult

logger = logging.getLogger("cassia_sc")

# CASSIA's HTTP client retries every call twice before its own per-cluster retries.
_CASSIA_CLIENT_RETRIES = 2


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


@fill_docs
def run_batch_to_files(
    marker: MarkerInput, output_name: str | os.PathLike, **options: Any
) -> BatchResult:
    """Run :func:`cassia_sc.run_batch` and write its four files; also when Ctrl-C cuts it short.

    Parameters
    ----------
    {marker}
    {output_name}
    **options
        Options of :func:`cassia_sc.run_batch`. A dry run writes nothing.

    Returns
    -------
    BatchResult
        The batch.
    """
    try:
        result = run_batch(marker, **options)
    except BatchInterrupted as interruption:
        write_outputs(interruption.result, output_name)  # keep what finished, then stop
        raise
    if not result.dry_run:
        paths = write_outputs(result, output_name)
        logger.info("Wrote %s", ", ".join(str(p) for p in paths.values()))
    return result
