"""``tl.annotate``: annotate the clusters of an AnnData and store labels and reasoning in it."""

from __future__ import annotations

import json
import logging
import os
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ..batch import run_batch
from ..errors import CassiaError, MarkerError
from ..results import BatchResult, h5_safe_frame
from ..uncertainty import DEFAULT_AGREEMENT_THRESHOLD, consensus, consensus_batch, run_repeated

logger = logging.getLogger("cassia_sc")


def annotate(
    adata: AnnData,
    groupby: str | None = None,
    *,
    tissue: str | None,
    species: str,
    model: str | None = None,
    provider: str = "openrouter",
    key: str = "rank_genes_groups",
    key_added: str = "cassia",
    n_genes: int = 50,
    gene_symbols: str | None = None,
    max_workers: int = 4,
    output_name: str | os.PathLike | None = None,
    copy: bool = False,
    n_runs: int = 1,
    models: list[str] | None = None,
    agreement_threshold: float = DEFAULT_AGREEMENT_THRESHOLD,
    **options: Any,
) -> AnnData | BatchResult | None:
    """Annotate every cluster with a language model, from ``adata.uns[key]``.

    Reads the markers of :func:`scanpy.tl.rank_genes_groups` (never recomputing or
    changing them), annotates each cluster as :func:`cassia_sc.run_batch` does, and
    writes the labels to ``adata.obs`` and the full record to ``adata.uns``.

    Parameters
    ----------
    adata
        The annotated data matrix, with a ``rank_genes_groups`` result in ``uns[key]``.
    groupby
        The ``obs`` column of the clusters; by default the one ``uns[key]`` was computed for.
    tissue
        Tissue of the sample, e.g. ``"blood"``; None for a tissue-blind annotation.
    species
        E.g. ``"human"``.
    model
        Model name as the provider spells it, e.g. ``"openai/gpt-4o-mini"``.
    provider
        ``"openrouter"``, ``"openai"``, ``"anthropic"`` or an OpenAI-compatible base URL.
    key
        Key of the ``rank_genes_groups`` result in ``adata.uns``.
    key_added
        Prefix of the ``obs`` columns and key of the ``uns`` entry written.
    n_genes
        Markers per cluster given to the model.
    gene_symbols
        ``var`` column with gene symbols, when ``var_names`` are IDs.
    max_workers
        Clusters annotated at the same time.
    output_name
        When given, also write ``runCASSIA_batch``'s four files with this path prefix.
    copy
        Return an annotated copy instead of annotating ``adata``.
        With ``dry_run=True`` (see :func:`cassia_sc.run_batch`), nothing is written and
        the plan is returned instead: a :class:`~cassia_sc.BatchResult` whose clusters carry
        their prompts and ``estimated_prompt_tokens`` (for every run, with ``n_runs``).
    n_runs
        Annotate this many times (at a ``temperature`` above 0) and keep each cluster's
        consensus, with how many runs agree; see :mod:`cassia_sc.uncertainty`.
    models
        Annotate with each of these models (``n_runs`` times each) instead of ``model``,
        and keep the consensus.
    agreement_threshold
        With repeated runs, clusters whose agreement is below it are flagged for review.
    **options
        Any other option of :func:`cassia_sc.run_batch` (``api_key``, ``additional_info``,
        ``validator_involvement``, ``ranking_method``, ``cache_dir``, ``progress``, ...).

    Returns
    -------
    AnnData, BatchResult or None
        The annotated copy when ``copy=True``, the plan of a dry run, else None. Written:

        ``adata.obs[f"{key_added}_celltype"]``
            Categorical main cell type of each cell's cluster; NaN for cells of a
            cluster without an answer (a warning names those clusters).
        ``adata.obs[f"{key_added}_subtype"]``
            Categorical most likely subtype (the main type when none was given).
        ``adata.uns[key_added]["params"]``
            The run's parameters (never an API key), ``groupby`` and ``key`` included.
        ``adata.uns[key_added]["results"]``
            :meth:`~cassia_sc.BatchResult.table`, one row per cluster: ``cluster``,
            ``main_cell_type``, ``sub_cell_types``,
            ``possible_mixed_cell_types``, ``possible_tissues``, ``key_markers``,
            ``unsupported_markers``, ``markers`` (lists joined with ``", "``),
            ``status`` (``ok``, ``failed``, ``not_run``), ``validation`` (``passed``,
            ``failed``, ``unknown``), ``validation_feedback``, ``iterations``,
            ``prompt_tokens``, ``completion_tokens``, ``requests``, ``calls``,
            ``cached_calls``, ``error``.
        ``adata.uns[key_added]["conversations"]``
            Every cluster's conversation, as JSON text.
        ``adata.uns[key_added]["usage"]``
            Totals: tokens, HTTP requests, calls and cached calls.
        ``adata.uns[key_added]["versions"]``
            Versions of cassia_sc, anndata, scanpy and openai.
        ``adata.obs[f"{key_added}_celltype_ontology_term_id"]``
            With the ``ontology`` extra: the Cell Ontology term of each cell's main cell
            type (``"unknown"`` when none fits; the label and score are in ``results``).
        ``adata.obs[f"{key_added}_agreement"]``, ``adata.uns[key_added]["uncertainty"]``
            With repeated runs: the share of runs agreeing with each cell's label, and per
            cluster the consensus, agreement, ``flagged`` and every run's answer.

    Examples
    --------
    >>> import scanpy as sc
    >>> import cassia_sc
    >>> adata = sc.datasets.pbmc68k_reduced()
    >>> cassia_sc.tl.annotate(  # doctest: +SKIP
    ...     adata, tissue="blood", species="human", model="openai/gpt-4o-mini"
    ... )
    >>> adata.obs["cassia_celltype"].value_counts()  # doctest: +SKIP
    """
    if copy:
        adata = adata.copy()
    groupby = _grouping(adata, groupby, key)
    settings = {
        "tissue": tissue,
        "species": species,
        "provider": provider,
        "key": key,
        "groupby": groupby,
        "n_genes": n_genes,
        "gene_symbols": gene_symbols,
        "max_workers": max_workers,
        **options,
    }
    result, agreement = run_annotation(
        adata,
        model=model,
        n_runs=n_runs,
        models=models,
        agreement_threshold=agreement_threshold,
        **settings,
    )
    if result.dry_run:  # nothing was annotated: leave adata as it was
        return result
    store_result(
        adata, result, groupby=groupby, key=key, key_added=key_added, uncertainty=agreement
    )
    if output_name is not None:
        from ..export import write_outputs

        write_outputs(result, output_name, adata=adata, key=key_added)
    return adata if copy else None


def run_annotation(
    adata: AnnData,
    *,
    model: str | None,
    n_runs: int = 1,
    models: list[str] | None = None,
    agreement_threshold: float = DEFAULT_AGREEMENT_THRESHOLD,
    **options: Any,
) -> tuple[BatchResult, pd.DataFrame | None]:
    """Annotate once, or several times and keep each cluster's consensus.

    Parameters
    ----------
    adata
        The markers' AnnData (``uns[key]``; cells are not needed).
    model, n_runs, models, agreement_threshold
        As in :func:`annotate`.
    **options
        Options of :func:`cassia_sc.run_batch`.

    Returns
    -------
    tuple
        The batch (the consensus of repeated runs, or a dry run's plan) and, after
        repeated runs, the :func:`cassia_sc.consensus` table (else None).

    Examples
    --------
    >>> result, agreement = run_annotation(adata, model="m", n_runs=3)  # doctest: +SKIP
    """
    if n_runs <= 1 and not models:
        return run_batch(adata, model=model, **options), None
    runs = run_repeated(adata, n_runs=n_runs, models=models, model=model, **options)
    if runs[0].dry_run:
        return runs[0], None
    agreement = consensus(runs, threshold=agreement_threshold)
    result = consensus_batch(runs, agreement)
    result.settings["agreement_threshold"] = agreement_threshold
    return result, agreement


def annotation_record(adata: AnnData, key: str = "cassia") -> dict[str, Any]:
    """Return ``adata.uns[key]`` as ``tl.annotate`` wrote it, or say which call makes it.

    Parameters
    ----------
    adata
        Data annotated by :func:`annotate`.
    key
        The ``key_added`` of the annotation.

    Returns
    -------
    dict
        The record (``params``, ``results``, ...).

    Raises
    ------
    CassiaError
        When there is no annotation under ``key``.

    Examples
    --------
    >>> record = annotation_record(adata)  # doctest: +SKIP
    >>> record["results"].head()  # doctest: +SKIP
    """
    record = adata.uns.get(key)
    if not isinstance(record, dict) or "results" not in record:
        raise CassiaError(
            f"adata.uns[{key!r}] holds no cassia_sc annotation: run "
            f"cassia_sc.tl.annotate(adata, ..., key_added={key!r}) first."
        )
    return record


def _grouping(adata: AnnData, groupby: str | None, key: str) -> str:
    """Return the obs column of the clusters: given, or the one ``uns[key]`` was made for."""
    if groupby is None:
        result = adata.uns.get(key)
        params = result.get("params", {}) if isinstance(result, dict) else {}
        if "groupby" not in params:
            raise MarkerError(
                f"adata.uns[{key!r}] not found or without its groupby: run "
                "sc.tl.rank_genes_groups(adata, groupby) first, or pass groupby= and key=."
            )
        groupby = str(params["groupby"])
    if groupby not in adata.obs.columns:
        raise MarkerError(
            f"groupby={groupby!r} is not a column of adata.obs; it has {list(adata.obs.columns)}."
        )
    return groupby


def store_result(
    adata: AnnData,
    result: BatchResult,
    *,
    groupby: str,
    key: str,
    key_added: str,
    uncertainty: pd.DataFrame | None = None,
) -> None:
    """Write a batch's labels to ``adata.obs`` and its record to ``adata.uns[key_added]``.

    Parameters
    ----------
    adata
        The data whose clusters were annotated.
    result
        The batch result.
    groupby
        The ``obs`` column of the clusters.
    key
        The ``rank_genes_groups`` key the markers came from.
    key_added
        Prefix of the ``obs`` columns and key of the ``uns`` entry.
    uncertainty
        After repeated runs, their :func:`cassia_sc.consensus` table.
    """
    if "/" in key_added:
        raise ValueError(f"key_added must not contain '/': {key_added!r}.")
    for name, values in label_columns(adata.obs[groupby], result, key_added=key_added).items():
        adata.obs[name] = values
    adata.uns[key_added] = uns_record(result, groupby=groupby, key=key, uncertainty=uncertainty)


def label_columns(
    clusters: pd.Series, result: BatchResult, *, key_added: str
) -> dict[str, pd.Categorical]:
    """Return the ``obs`` columns of a batch: each cell's main cell type and subtype.

    Parameters
    ----------
    clusters
        Each cell's cluster (the ``groupby`` column).
    result
        The batch result.
    key_added
        Prefix of the column names.

    Returns
    -------
    dict[str, pandas.Categorical or numpy.ndarray]
        ``f"{key_added}_celltype"`` and ``f"{key_added}_subtype"``, and when the batch has
        them ``f"{key_added}_celltype_ontology_term_id"`` and ``f"{key_added}_agreement"``;
        NaN for cells of a cluster without an answer, which a warning names.
    """
    answered = [c for c in result.clusters if c.main_cell_type]
    main = {c.cluster: c.main_cell_type for c in answered}
    subtype = {c.cluster: (c.sub_cell_types or [c.main_cell_type])[0] for c in answered}
    terms = {c.cluster: c.ontology_term_id for c in answered if c.ontology_term_id}
    agreement = {c.cluster: c.agreement for c in answered if c.agreement is not None}
    names = pd.Series(clusters).astype(str)
    present = list(pd.unique(names))
    missing = [cluster for cluster in present if cluster not in main]
    if missing:
        logger.warning(
            "No cell type for clusters %s (failed or not run); their cells are NaN in "
            "obs[%r]. See uns[%r]['results'].",
            missing,
            f"{key_added}_celltype",
            key_added,
        )
    columns = {
        f"{key_added}_celltype": _labels(names, main),
        f"{key_added}_subtype": _labels(names, subtype),
    }
    if terms:
        columns[f"{key_added}_celltype_ontology_term_id"] = _labels(names, terms)
    if agreement:
        columns[f"{key_added}_agreement"] = names.map(agreement).to_numpy(dtype=float)
    return columns


def _labels(clusters: pd.Series, labels: dict[str, str]) -> pd.Categorical:
    values = clusters.map(labels).to_numpy(dtype=object)
    present = pd.unique(pd.Series(list(labels.values()), dtype=object))
    return pd.Categorical(values, categories=pd.Index(present, dtype=object))


def uns_record(
    result: BatchResult, *, groupby: str, key: str, uncertainty: pd.DataFrame | None = None
) -> dict[str, Any]:
    """Return what ``tl.annotate`` stores in ``uns``: only types that ``.h5ad`` keeps.

    Parameters
    ----------
    result
        The batch result.
    groupby, key
        Where the clusters and their markers came from.
    uncertainty
        After repeated runs, their :func:`cassia_sc.consensus` table.

    Returns
    -------
    dict
        ``params``, ``results``, ``conversations``, ``usage``, ``versions`` and, after
        repeated runs, ``uncertainty``.
    """
    params = {name: value for name, value in result.settings.items() if value is not None}
    params |= {"groupby": groupby, "key": key}
    record = {
        "params": {name: _h5_scalar(value) for name, value in params.items()},
        "results": result.table(),
        "conversations": json.dumps(result.conversations(), ensure_ascii=False),
        "usage": {name: int(value) for name, value in result.usage.items()},
        "versions": _versions(),
    }
    if uncertainty is not None:
        record["uncertainty"] = h5_safe_frame(uncertainty)
    return record


def _h5_scalar(value: Any) -> Any:
    if isinstance(value, bool | int | float | str | np.generic):
        return value
    return str(value)


def _versions() -> dict[str, str]:
    found = {}
    for package in ("cassia-sc", "anndata", "scanpy", "openai", "pandas"):
        try:
            found[package.replace("-", "_")] = version(package)
        except PackageNotFoundError:
            found[package.replace("-", "_")] = "unknown"
    return found
