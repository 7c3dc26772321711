"""``tl.annotate``: annotate the clusters of an AnnData and store labels and reasoning in it."""

from __future__ import annotations

import difflib
import functools
import inspect
import logging
import os
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

from anndata import AnnData

from .._docs import fill_docs
from .._keys import Default, Key
from ..batch import run_batch
from ..errors import CassiaError, MarkerError
from ..export import write_outputs
from ..export.adata import check_key_added, store_result
from ..subclusters import RestrictTo, restricted
from ..workflow import run_annotation
from ._subclusters import refuse_replacing_other_cells, store_restricted

logger = logging.getLogger("cassia_sc")

F = TypeVar("F", bound=Callable)


def accepted_options(*functions: Callable, leave_out: Collection[str] = ()) -> set[str]:
    """Return the names of the named parameters of ``functions``, but those in ``leave_out``.

    Parameters
    ----------
    functions
        The tool and every function its ``**options`` are forwarded to.
    leave_out
        Parameters the tool fills itself (e.g. ``marker``), not the caller.

    Returns
    -------
    set of str
        Every keyword a caller may give.
    """
    named = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    return {
        name
        for function in functions
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind not in named and name not in leave_out
    }


def check_options(tool: str, given: Collection[str], accepted: Collection[str]) -> None:
    """Refuse a keyword no function down the line takes, naming the closest valid one.

    Forwarded ``**options`` would otherwise fail in a function the caller never called
    (``run_batch``), or be ignored without a word.

    Parameters
    ----------
    tool
        The function the caller called, as they wrote it (``"tl.annotate"``).
    given
        The keywords given.
    accepted
        The keywords the tool and the functions it forwards to take.

    Raises
    ------
    TypeError
        For the first unknown keyword, with the closest valid one if any is close.
    """
    valid = sorted(accepted)
    for name in sorted(set(given) - set(accepted)):
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"see help(cassia_sc.{tool})."
        raise TypeError(f"{tool}() got an unexpected keyword argument {name!r}; {hint}")


def check_adata(tool: str, adata: object, *, command: str | None = None) -> None:
    """Refuse anything but an AnnData, saying what to do with a path.

    Parameters
    ----------
    tool
        The function the caller called (``"tl.annotate"``).
    adata
        What the caller gave as ``adata``.
    command
        The ``cassia-sc`` subcommand that does the same to a file, if any.

    Raises
    ------
    TypeError
        When ``adata`` is not an :class:`~anndata.AnnData`.
    """
    if isinstance(adata, AnnData):
        return
    if isinstance(adata, str | os.PathLike):
        path = os.fspath(adata)
        instead = (
            f", or edit the file in place on the command line: cassia-sc {command} {path} ..."
            if command
            else ""
        )
        raise TypeError(
            f"{tool} takes an AnnData, not a path: read it first with "
            f"adata = sc.read_h5ad({path!r}){instead}"
        )
    raise TypeError(f"{tool} takes an AnnData, not a {type(adata).__name__}.")


def _explain_arguments(function: F) -> F:
    """Check the keywords of ``tl.annotate`` before Python or ``run_batch`` does.

    Python's own message for a missing ``tissue`` cannot say that None is a choice, and
    a misspelt option would reach ``run_batch``, which the caller never called; the
    signature stays the function's own.
    """
    accepted = accepted_options(function, run_annotation, run_batch, leave_out={"marker", "sample"})

    @functools.wraps(function)
    def checked(*args: Any, **kwargs: Any) -> Any:
        check_options("tl.annotate", kwargs, accepted)
        if "tissue" not in kwargs:
            raise TypeError(
                "tl.annotate() missing the keyword argument 'tissue': give the sample's "
                'tissue (tissue="blood"), or tissue=None for a tissue-blind annotation, '
                "whose answers also propose tissues of origin."
            )
        return function(*args, **kwargs)

    return checked  # type: ignore[return-value]


@fill_docs
@_explain_arguments
def annotate(
    adata: AnnData,
    groupby: str | None = None,
    *,
    tissue: str | None,
    species: str,
    model: str | None = None,
    provider: str = Default.provider,
    key: str = Key.uns.markers,
    key_added: str = Default.key_added,
    restrict_to: RestrictTo | None = None,
    parent: str | None = None,
    n_genes: int = Default.n_genes,
    gene_symbols: str | None = None,
    max_workers: int = Default.max_workers,
    output_name: str | os.PathLike | None = None,
    copy: bool = False,
    n_runs: int = Default.n_runs,
    models: Sequence[str] | None = None,
    agreement_threshold: float = Default.agreement_threshold,
    score: bool = False,
    score_model: str | None = None,
    boost_below: float | None = None,
    boost_rounds: int = Default.boost_rounds,
    **options: Any,
) -> AnnData | None:
    """Annotate every cluster with a language model, from ``adata.uns[key]``.

    Reads the markers of :func:`scanpy.tl.rank_genes_groups` (never recomputing or
    changing them), annotates each cluster as :func:`cassia_sc.run_batch` does, and
    writes the labels to ``adata.obs`` and the full record to ``adata.uns``.

    To see the prompts and their cost first, offline and without a key, call
    :func:`cassia_sc.plan` with the same arguments.

    Subclusters: after a first run, annotate the subclusters of one population with
    ``restrict_to`` (the markers ranked on that population) and a new ``key_added``, or
    annotate a subset AnnData with ``parent=`` and bring its labels back with
    :func:`cassia_sc.tl.transfer`; see the subclusters guide.

    Parameters
    ----------
    adata
        The annotated data matrix, with a ``rank_genes_groups`` result in ``uns[key]``.
    {groupby}
    {tissue}
    {species}
    {model}
    {provider}
    {key}
    {key_added}
    {restrict_to}
    {parent}
    {n_genes}
    {gene_symbols}
    {max_workers}
    output_name
        When given, also write ``runCASSIA_batch``'s files with this path prefix
        (CASSIA's ``_summary.csv``, ``_full.csv``, ``_conversations.json`` and
        ``_report.html``, and our ``_record.json``).
    {copy}
    {n_runs}
    {models}
    {agreement_threshold}
    {score}
    {score_model}
    {boost_below}
    {boost_rounds}
    **options
        Any other option of :func:`cassia_sc.run_batch` (``api_key``, ``additional_info``,
        ``validator_involvement``, ``ranking_method``, ``cache_dir``, ``progress``, ...),
        and ``score_provider``.

    Returns
    -------
    AnnData or None
        The annotated copy when ``copy=True``, else None. Written (with ``restrict_to``,
        for the population's cells only: NaN elsewhere, and ``params["restrict_to"]``):

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
        ``adata.obs[f"{key_added}_score"]``
            With ``score=True``: the judge's score of each cell's label (``score`` and
            ``score_reasoning`` in ``results``).
        ``adata.obs[f"{key_added}_celltype_initial"]``
            With ``boost_below``: each cell's main cell type before the boost (the same
            where no boost changed it); ``boosted``, ``initial_cell_type``,
            ``boost_reason``, ``boost_genes`` and the rest of the boost in ``results``.

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
    check_adata("tl.annotate", adata, command="annotate")
    if options.get("dry_run"):
        raise CassiaError(
            "tl.annotate always annotates; to see the prompts and their cost without calling "
            "a model, use cassia_sc.plan(adata, ...) with the same arguments."
        )
    if copy:
        adata = adata.copy()
    groupby = _grouping(adata, groupby, key)
    check_key_added(key_added, uns=adata.uns, obs=adata.obs.columns, groupby=groupby)
    cells, population = adata, None
    if restrict_to is not None:
        # Everything that would stop the write is found now, before a model is paid.
        cells, population = restricted(adata, restrict_to, key=key, groupby=groupby, parent=parent)
        refuse_replacing_other_cells(adata.uns, key_added, population)
        parent = population.parent
    result, agreement = run_annotation(
        cells,
        model=model,
        parent=parent,
        n_runs=n_runs,
        models=models,
        agreement_threshold=agreement_threshold,
        score=score,
        score_model=score_model,
        boost_below=boost_below,
        boost_rounds=boost_rounds,
        tissue=tissue,
        species=species,
        provider=provider,
        key=key,
        groupby=groupby,
        n_genes=n_genes,
        gene_symbols=gene_symbols,
        max_workers=max_workers,
        **options,
    )
    if population is None:
        columns = store_result(
            adata, result, groupby=groupby, key=key, key_added=key_added, uncertainty=agreement
        )
    else:
        columns = store_restricted(
            adata,
            result,
            population=population,
            groupby=groupby,
            key=key,
            key_added=key_added,
            uncertainty=agreement,
        )
    logger.info(
        "added\n%s    %r, the annotation's record (adata.uns)",
        "".join(f"    {name!r}, labels per cell (adata.obs)\n" for name in columns),
        key_added,
    )
    if output_name is not None:
        write_outputs(result, output_name, adata=adata, key=key_added)
    return adata if copy else None


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
