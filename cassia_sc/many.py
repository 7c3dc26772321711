"""``annotate_many``: annotate several AnnData in one run, each in place as ``tl.annotate`` does.

A module of its own, above ``tl``: a function over several AnnData does not follow the
conventions every ``tl`` function keeps (``adata`` first, ``copy=``, returning the AnnData
or None), and it reuses ``tl.annotate``'s checks of its arguments. Like
:func:`cassia_sc.run_batch` and :func:`cassia_sc.plan`, it is reached from the package:
``cassia_sc.annotate_many``. What it runs lives below, in
:func:`cassia_sc.workflow.run_annotations`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from anndata import AnnData

from ._docs import fill_docs
from ._keys import Default, Key
from .agents.harmoniser import harmonised_columns
from .batch import per_input, run_batches
from .errors import CassiaError, KeyAddedError, MarkerError
from .export import write_outputs
from .export.adata import check_key_added, store_result
from .results import BatchResult
from .tl._annotate import _grouping, accepted_options, check_adata, check_options
from .workflow import harmonise_method, run_annotations

logger = logging.getLogger("cassia_sc")

#: Suffixes a user may give with an output prefix, dropped as ``export.output_paths`` does.
_FILE_SUFFIXES = (".csv", ".json", ".html")


@fill_docs
def annotate_many(
    adatas: Sequence[AnnData],
    groupby: str | Sequence[str | None] | None = None,
    *,
    tissue: str | None,
    species: str,
    model: str | None = None,
    provider: str = Default.provider,
    key: str = Key.uns.markers,
    key_added: str = Default.key_added,
    names: Sequence[str] | None = None,
    n_genes: int = Default.n_genes,
    gene_symbols: str | None = None,
    max_workers: int = Default.max_workers,
    output_name: str | os.PathLike | None = None,
    score: bool = False,
    score_model: str | None = None,
    boost_below: float | None = None,
    boost_rounds: int = Default.boost_rounds,
    harmonise: bool | str = False,
    **options: Any,
) -> list[BatchResult]:
    """Annotate the clusters of several AnnData in one run, and store each one's labels in it.

    Every cluster of every AnnData is annotated in one pool, through one model client:
    one cache, one budget (``max_cost=``), one set of provider batches per round
    (``batch_api=``), and a marker list found in several AnnData is asked once. Each
    AnnData needs its own :func:`scanpy.tl.rank_genes_groups` result; all of them are
    checked before any model is called. Scores and boosts (``score=``,
    ``boost_below=``) then run AnnData by AnnData, within the same budget and cache.
    Each AnnData gets what :func:`cassia_sc.tl.annotate` writes, under ``key_added``.

    With ``harmonise``, one more call gives the labels of one cell type one name across
    all the AnnData ("T cells", "T cell" and "T lymphocyte" become "T cell"), recorded
    beside the annotator's labels, which stay as they were.

    Parameters
    ----------
    adatas
        The AnnData, each with a ``rank_genes_groups`` result in ``uns[key]``; each is
        annotated in place (the same object may not be given twice).
    groupby
        The ``obs`` column of the clusters: one name for all, or one per AnnData (None:
        the one each ``rank_genes_groups`` result was computed for).
    {tissue}
    {species}
    {model}
    {provider}
    {key}
    {key_added}
    names
        A name per AnnData, for messages and for the files of ``output_name``; by
        default ``"1"``, ``"2"``, ...
    {n_genes}
    {gene_symbols}
    {max_workers}
    output_name
        When given, also write ``runCASSIA_batch``'s files for each AnnData, with the
        path prefix ``f"{output_name}_{name}"`` (``run_1_summary.csv``, ...).
    {score}
    {score_model}
    {boost_below}
    {boost_rounds}
    harmonise
        ``True`` (or ``"model"``): after the run, one structured call to the model names
        the labels of one type alike across the AnnData; ``"ontology"``: offline, labels
        that map exactly to one Cell Ontology term take its label (needs the ``ontology``
        extra). A faulty reply is asked again once; then every label keeps its own name
        and a warning (and ``params["harmonise_note"]``) says why.
    **options
        Any other option of :func:`cassia_sc.run_batch` (``api_key``, ``batch_api``,
        ``max_cost``, ``additional_info``, ``cache_dir``, ``progress``, ...), and
        ``score_provider``, ``boost_model``, ``boost_provider``.

    Returns
    -------
    list of BatchResult
        Each AnnData's annotation, in order. Written to each AnnData, as
        :func:`cassia_sc.tl.annotate` writes them: ``obs[f"{key_added}_celltype"]``,
        ``obs[f"{key_added}_subtype"]`` and the others its Returns section lists, and
        ``uns[key_added]`` (``params`` has ``inputs``, how many AnnData were annotated
        together, and ``cost`` is the whole run's). With ``harmonise``:

        ``adata.obs[f"{key_added}_celltype_harmonised"]``
            Categorical shared name of each cell's main cell type (NaN where the
            cluster has no answer); ``obs[f"{key_added}_celltype"]`` keeps the
            annotator's own.
        ``adata.uns[key_added]["results"]["celltype_harmonised"]``
            The same per cluster; ``params`` holds ``harmonise_method``, ``harmonised``
            (False when every label kept its own name), ``harmonise_note`` and, with the
            model, ``harmonise_model`` and the call's ``harmonise_requests``,
            ``harmonise_prompt_tokens``, ...

    Raises
    ------
    MarkerError
        Before any call, when an AnnData has no usable ``rank_genes_groups`` result; the
        message names it.
    KeyAddedError
        Before any call, when ``key_added`` would replace what cassia_sc did not write.
    CassiaError
        For repeated runs (``n_runs=``, ``models=``), which take one AnnData at a time.

    Examples
    --------
    >>> results = cassia_sc.annotate_many(  # doctest: +SKIP
    ...     [adata_a, adata_b], tissue="blood", species="human",
    ...     model="openai/gpt-4o-mini", harmonise=True, names=["a", "b"],
    ... )
    >>> adata_a.obs["cassia_celltype_harmonised"].value_counts()  # doctest: +SKIP
    """
    accepted = accepted_options(
        annotate_many,
        run_annotations,
        run_batches,
        leave_out={"markers", "sample", "data", "celltype_column", "gene_column_name"},
    )
    check_options("annotate_many", options, accepted)
    if isinstance(adatas, AnnData) or not isinstance(adatas, Sequence):
        raise TypeError(
            "annotate_many takes a list of AnnData; for one, call cassia_sc.tl.annotate."
        )
    adatas = list(adatas)
    if not adatas:
        raise CassiaError("annotate_many needs at least one AnnData.")
    for adata in adatas:
        check_adata("annotate_many", adata)
    if len({id(adata) for adata in adatas}) != len(adatas):
        raise CassiaError(
            "The same AnnData is given twice: each is annotated in place, once; pass a copy "
            "(adata.copy()) to annotate it twice."
        )
    if options.get("dry_run"):
        raise CassiaError(
            "annotate_many always annotates; to see the prompts and their cost first, call "
            "cassia_sc.workflow.run_annotations(adatas, ..., dry_run=True)."
        )
    labels = input_names(names, len(adatas))
    several = len(adatas) > 1
    written = [Key.obs.celltype_harmonised(key_added)] if harmonise_method(harmonise) else []
    groupbys = []
    # Everything that would stop the writes is found now, before a model is paid.
    for adata, name, wanted in zip(
        adatas, labels, per_input(groupby, len(adatas), name="groupby"), strict=True
    ):
        with _naming(name if several else None):
            found = _grouping(adata, wanted, key)
            check_key_added(
                key_added, uns=adata.uns, obs=adata.obs.columns, groupby=found, columns=written
            )
        groupbys.append(found)
    annotated = run_annotations(
        adatas,
        model=model,
        score=score,
        score_model=score_model,
        boost_below=boost_below,
        boost_rounds=boost_rounds,
        harmonise=harmonise,
        tissue=tissue,
        species=species,
        provider=provider,
        key=key,
        groupby=groupbys,
        n_genes=n_genes,
        gene_symbols=gene_symbols,
        max_workers=max_workers,
        **options,
    )
    for adata, name, found, (result, agreement) in zip(
        adatas, labels, groupbys, annotated, strict=True
    ):
        columns = store_result(
            adata, result, groupby=found, key=key, key_added=key_added, uncertainty=agreement
        )
        for column, values in harmonised_columns(
            adata.obs[found], result, key_added=key_added
        ).items():
            adata.obs[column] = values
            columns.append(column)
        logger.info(
            "%s: added\n%s    %r, the annotation's record (adata.uns)",
            name,
            "".join(f"    {column!r}, labels per cell (adata.obs)\n" for column in columns),
            key_added,
        )
        if output_name is not None:
            prefix = input_output_name(output_name, name) if several else output_name
            write_outputs(result, prefix, adata=adata, key=key_added)
    return [result for result, _ in annotated]


def input_names(names: Sequence[str] | None, n_inputs: int) -> list[str]:
    """Return one distinct name per input: those given, or ``"1"``, ``"2"``, ...

    Parameters
    ----------
    names
        The names, or None.
    n_inputs
        How many inputs.

    Returns
    -------
    list of str
        The names.

    Raises
    ------
    CassiaError
        When the names are not one per input, or repeat (their files would collide).

    Examples
    --------
    >>> input_names(None, 3), input_names(["a", "b"], 2)
    (['1', '2', '3'], ['a', 'b'])
    """
    if names is None:
        return [str(number + 1) for number in range(n_inputs)]
    if isinstance(names, str):
        names = [names]
    given = [str(name) for name in names]
    if len(given) != n_inputs:
        raise CassiaError(f"names must give one name per input: {len(given)} for {n_inputs}.")
    repeated = sorted({name for name in given if given.count(name) > 1})
    if repeated or not all(name.strip() for name in given):
        raise CassiaError(
            f"names must be distinct and not empty (their files would collide): {given}."
        )
    return given


def input_output_name(output_name: str | os.PathLike, name: str) -> str:
    """Return the output prefix of one input of several: ``f"{output_name}_{name}"``.

    A ``.csv``, ``.json`` or ``.html`` suffix of ``output_name`` is dropped first, as
    :func:`cassia_sc.export.output_paths` drops it.

    Parameters
    ----------
    output_name
        The run's prefix.
    name
        The input's name (a file's stem on the command line).

    Returns
    -------
    str
        The input's prefix.

    Examples
    --------
    >>> input_output_name("runs/pbmc.csv", "donor1")
    'runs/pbmc_donor1'
    """
    prefix = Path(output_name)
    if prefix.suffix.lower() in _FILE_SUFFIXES:
        prefix = prefix.with_suffix("")
    return f"{prefix}_{name}"


@contextmanager
def _naming(name: str | None) -> Iterator[None]:
    """Say which input a refusal is about, when there are several."""
    try:
        yield
    except (MarkerError, KeyAddedError) as err:
        if name is None:
            raise
        raise type(err)(f"{name}: {err}") from err
