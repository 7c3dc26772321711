"""``tl.import_cassia``: bring a run of CASSIA's into an AnnData, as ``tl.annotate`` stores one."""

from __future__ import annotations

import logging
import os

import pandas as pd
from anndata import AnnData

from .._docs import fill_docs
from .._keys import Default, Key
from ..agents.pipelines import known_fields
from ..cassia_files import read_cassia
from ..errors import CassiaError
from ..export.adata import store_result

logger = logging.getLogger("cassia_sc")

# The cluster columns CASSIA's add_cassia_to_anndata looks for when none is given.
_CASSIA_GROUPBY_GUESSES = ("leiden", "louvain")


@fill_docs
def import_cassia(
    adata: AnnData,
    results: str | os.PathLike | pd.DataFrame | None = None,
    *,
    groupby: str | None = None,
    conversations: str | os.PathLike | None = "auto",
    key_added: str = Default.key_added,
    copy: bool = False,
) -> AnnData | None:
    """Store a run of CASSIA's ``runCASSIA_batch`` as if ``tl.annotate`` had made it.

    Afterwards ``pl``, ``tl.evaluate``, ``tl.score``, ``tl.boost`` and the report work on
    it. The results are joined to the cells by cluster name (never by row position: CASSIA
    sorts its rows); clusters of the results that are not in ``obs[groupby]`` are named in
    a warning, and cells of a cluster without an answer get NaN.

    Parameters
    ----------
    adata
        The data whose clusters CASSIA annotated.
    results
        CASSIA's summary, full or scored CSV (a path or the table); None: the table that
        CASSIA's ``add_cassia_to_anndata`` left in ``adata.uns["CASSIA"]``.
    groupby
        The ``obs`` column of the clusters CASSIA annotated; by default the
        ``rank_genes_groups`` one, else ``leiden`` or ``louvain`` as CASSIA guesses.
    conversations
        CASSIA's conversations JSON; ``"auto"``: the one beside ``results``, else the
        table's ``Conversation History`` column; None: that column only.
    {key_added}
    {copy}

    Returns
    -------
    AnnData or None
        The annotated copy when ``copy=True``, else None. Writes what
        :func:`~cassia_sc.tl.annotate` writes: ``obs[f"{key_added}_celltype"]`` and
        ``_subtype`` (and ``_score`` when CASSIA scored the run), and
        ``uns[key_added]``.

    Raises
    ------
    CassiaError
        No results given nor stored, no ``groupby`` found, or none of the results'
        clusters is among the cells'.

    Examples
    --------
    >>> import cassia_sc
    >>> cassia_sc.tl.import_cassia(adata, "run_summary.csv", groupby="leiden")  # doctest: +SKIP
    >>> cassia_sc.pl.annotation(adata)  # doctest: +SKIP
    """
    if results is None:
        results = adata.uns.get(Key.cassia.uns)
        if not isinstance(results, pd.DataFrame):
            raise CassiaError(
                "Give results= (CASSIA's summary CSV): adata.uns has no table of "
                f"{Key.cassia.uns!r} from CASSIA's add_cassia_to_anndata."
            )
        conversations = None if conversations == "auto" else conversations
    batch = read_cassia(results, conversations=conversations, fields=known_fields())
    groupby = _cassia_groupby(adata, groupby)
    cells = set(adata.obs[groupby].astype(str))
    unknown = [c.cluster for c in batch.clusters if c.cluster not in cells]
    if len(unknown) == len(batch.clusters):
        raise CassiaError(
            f"None of the results' clusters ({[c.cluster for c in batch.clusters][:5]}...) "
            f"is a value of obs[{groupby!r}] ({sorted(cells)[:5]}...): give the groupby "
            "column CASSIA annotated."
        )
    if unknown:
        logger.warning("Clusters of the results not in obs[%r]: %s", groupby, unknown)
    if copy:
        adata = adata.copy()
    batch.settings |= {"groupby": groupby, "imported_from": "CASSIA"}
    store_result(adata, batch, groupby=groupby, key=Key.uns.markers, key_added=key_added)
    return adata if copy else None


def _cassia_groupby(adata: AnnData, groupby: str | None) -> str:
    if groupby is None:
        params = adata.uns.get(Key.uns.markers, {}).get("params", {})
        found = [params.get("groupby"), *_CASSIA_GROUPBY_GUESSES]
        groupby = next((g for g in found if g in adata.obs.columns), None)
        if groupby is None:
            raise CassiaError(
                "Cannot tell which obs column holds the clusters: pass groupby=; "
                f"obs has {list(adata.obs.columns)}."
            )
    elif groupby not in adata.obs.columns:
        raise CassiaError(
            f"groupby={groupby!r} is not a column of adata.obs; it has {list(adata.obs.columns)}."
        )
    return groupby
