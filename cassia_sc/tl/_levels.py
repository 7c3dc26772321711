"""``tl.levels``: name each cluster of an annotation at three levels, lineage to subtype."""

from __future__ import annotations

import logging
from typing import Any, Literal

from anndata import AnnData

from .._docs import fill_docs
from .._keys import Default, Key
from ..agents import model_levels
from ..batch import connection_options
from ..errors import CassiaError
from ..export.adata import check_key_added, restricted_columns
from ..get import annotation, annotation_record
from ..levels import BROAD, level_columns, ontology_levels
from ..llm import LLMClient
from ._annotate import accepted_options, check_adata, check_options
from ._refine import population_of, store_back

logger = logging.getLogger("cassia_sc")

Method = Literal["ontology", "model"]


@fill_docs
def levels(
    adata: AnnData,
    *,
    key: str = Default.key_added,
    method: Method = "ontology",
    model: str | None = None,
    provider: str | None = None,
    additional_info: str | None = None,
    copy: bool = False,
    **options: Any,
) -> AnnData | None:
    """Name each cluster at three levels: broad lineage, detailed type, very detailed type.

    ``method="ontology"`` (offline, no key, the default) reads the levels from the Cell
    Ontology: ``broad`` is the curated broad class the cluster's term is under (see
    :func:`cassia_sc.levels.ontology_levels` and the levels guide for the classes and
    their order), ``detailed`` the term's label, ``very_detailed`` the most likely subtype
    with the cell state. A cluster without a term keeps ``broad`` empty and says why: it
    is never guessed.

    ``method="model"`` makes one structured call per level over all the answered
    clusters at once, keyed by cluster name, so that one type gets one name across
    clusters; a reply that lacks a cluster's key, or has a key too many, is asked for
    again, and a name never moves to another cluster (see
    :class:`~cassia_sc.agents.Grouper`). Each call is cached like every other.

    Clusters whose annotation failed get no levels, with the reason. Run it again after
    :func:`~cassia_sc.tl.boost` or a new annotation: the levels are of the labels they
    were made from.

    Parameters
    ----------
    {annotated}
    {key_read}
    method
        ``"ontology"`` or ``"model"``.
    model
        With ``method="model"``: the model that names the levels; by default the
        annotation's.
    provider
        With ``method="model"``: its provider; by default the annotation's.
    additional_info
        With ``method="model"``: free text about the sample for the model; by default the
        annotation's.
    {copy}
    **options
        With ``method="model"``: options of the calls (``api_key``, ``temperature``,
        ``reasoning``, ``cache_dir``, ``timeout``, ``max_retries``, ...).

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``, else None. Writes ``adata.obs`` columns
        ``f"{key}_celltype_broad"``, ``f"{key}_celltype_detailed"`` and
        ``f"{key}_celltype_very_detailed"`` (categorical; NaN where a level is empty),
        and to ``adata.uns[key]["results"]`` the columns ``celltype_broad``,
        ``celltype_detailed``, ``celltype_very_detailed`` (CASSIA's ``Merged_Grouping_1``
        to ``_3`` in the summary CSV), ``celltype_broad_term_id`` (the broad class's CL
        term, offline) and ``levels_note`` (why a level is empty); in
        ``adata.uns[key]["params"]``, ``levels_method`` and, offline,
        ``levels_cl_version``, or with a model ``levels_model`` and the calls' usage
        (``levels_calls``, ``levels_requests``, ``levels_prompt_tokens``, ...).

    Raises
    ------
    OntologyUnavailable
        With ``method="ontology"``, without the ``cassia-sc[ontology]`` extra.
    FatalLLMError
        With ``method="model"``, when no call can succeed (a bad key, an unknown model).

    Examples
    --------
    >>> cassia_sc.tl.levels(adata)  # doctest: +SKIP
    >>> adata.obs["cassia_celltype_broad"].value_counts()  # doctest: +SKIP
    >>> cassia_sc.tl.levels(adata, method="model", model="openai/gpt-4o")  # doctest: +SKIP
    """
    check_adata("tl.levels", adata)
    # With a model, the client's options: those of run_batch that build it.
    check_options(
        "tl.levels",
        options,
        accepted_options(levels, connection_options) | {"api_key", "temperature", "reasoning"},
    )
    if method not in ("ontology", "model"):
        raise CassiaError(f"method must be 'ontology' or 'model', not {method!r}.")
    asked = {"model": model, "provider": provider, "additional_info": additional_info}
    if method == "ontology" and (options or any(asked.values())):
        given = sorted([*options, *(name for name, value in asked.items() if value)])
        raise CassiaError(f"{given} are options of method='model'; the ontology needs none.")
    if copy:
        adata = adata.copy()
    record = annotation_record(adata, key)
    params = record[Key.uns.params]
    groupby = str(params["groupby"])
    batch = annotation(adata, key)
    if method == "ontology":
        result = ontology_levels(batch)
    else:
        client = LLMClient(
            model=model or str(params.get("model") or ""),
            provider=provider or str(params.get("provider") or Default.provider),
            api_key=options.get("api_key"),
            temperature=options.get("temperature", params.get("temperature")),
            reasoning=options.get("reasoning", params.get("reasoning")),
            **connection_options(**options),
        )
        with client:
            result = model_levels(batch, client, additional_info=additional_info)
    # A subcluster annotation's levels go to its population's cells only, NaN outside.
    found = population_of(adata, params)
    clusters = adata.obs[groupby] if found is None else adata.obs[groupby][found.cells]
    columns = level_columns(clusters, result, key_added=key)
    if found is not None:
        columns = restricted_columns(columns, found.cells)
    # Refused before anything is written: a column of the same name that is not ours.
    check_key_added(key, uns=adata.uns, obs=adata.obs.columns, groupby=groupby, columns=columns)
    store_back(adata, result, key=key, record=record, found=found)
    for name, values in columns.items():
        adata.obs[name] = values
    named = sum(bool(c.get(BROAD)) for c in result.clusters)
    logger.info(
        "levels (%s): a broad lineage for %d of %d clusters; added\n%s",
        method,
        named,
        len(result.clusters),
        "".join(f"    {name!r} (adata.obs)\n" for name in columns),
    )
    return adata if copy else None
