"""Cell-type levels: each cluster's broad lineage, detailed type and very detailed type.

Three names per answered cluster, at three levels of detail, as CASSIA's users group their
labels (its ``merge_annotations`` writes them as ``Merged_Grouping_1`` to ``_3``):

``broad``
    The lineage: T cell, B cell, myeloid cell, endothelial cell, epithelial cell, ...
``detailed``
    The cluster's own type.
``very_detailed``
    Its most likely subtype with its state.

Offline (:func:`ontology_levels`), the broad lineage is read from the Cell Ontology: the
cluster's term is walked up to the curated broad classes of ``data/cl_broad_classes.csv``,
the most specific class first. With a model (:mod:`cassia_sc.agents.grouper`), one call per
level names every answered cluster at once. Both fill the fields declared here, which reach
the ``uns`` table, the summary CSV, the report and ``obs``.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any, Final

import pandas as pd

from ._keys import Key
from .fields import Field
from .ontology import UNKNOWN, CellOntology, cell_ontology
from .results import BatchResult, ClusterResult

#: The levels, broadest first.
LEVELS: Final = ("broad", "detailed", "very_detailed")
#: The root of the Cell Ontology: a label mapped there says no more than "cell".
ROOT_TERM: Final = "CL:0000000"

BROAD = Field(
    "celltype_broad",
    "text",
    "the broad lineage (T cell, myeloid cell, epithelial cell, ...), from ``tl.levels``",
    csv=Key.csv.levels["broad"],
    report="Broad lineage",
    default="",
)
DETAILED = Field(
    "celltype_detailed",
    "text",
    "the cluster's own type, one name for one type across clusters, from ``tl.levels``",
    csv=Key.csv.levels["detailed"],
    report="Detailed type",
    default="",
)
VERY_DETAILED = Field(
    "celltype_very_detailed",
    "text",
    "the most likely subtype with the cell state, from ``tl.levels``",
    csv=Key.csv.levels["very_detailed"],
    report="Very detailed type",
    default="",
)
BROAD_TERM = Field(
    "celltype_broad_term_id",
    "text",
    "the Cell Ontology term of the broad class the cluster's term is under (offline method)",
    default="",
)
LEVELS_NOTE = Field(
    "levels_note",
    "text",
    "why a level is empty: no answer, no Cell Ontology term, or no name from the model",
    csv="Levels Note",
    report="Levels",
    default="",
)
#: The fields of the levels, in the order of the ``uns`` table.
LEVEL_FIELDS: Final = (BROAD, DETAILED, VERY_DETAILED, BROAD_TERM, LEVELS_NOTE)
#: The field of each level.
LEVEL_FIELD: Final = {"broad": BROAD, "detailed": DETAILED, "very_detailed": VERY_DETAILED}
#: The ``obs`` column of each level, by ``key_added``.
LEVEL_COLUMN: Final = {
    "broad": Key.obs.celltype_broad,
    "detailed": Key.obs.celltype_detailed,
    "very_detailed": Key.obs.celltype_very_detailed,
}


@dataclass(frozen=True)
class BroadClass:
    """One row of the curated broad classes: a Cell Ontology term and the class it stands for.

    Attributes
    ----------
    name
        The broad class, as the ``broad`` level says it (``"T cell"``, ``"myeloid cell"``).
    term_id
        A CL term; it and every term under it belong to the class, unless a row before
        this one claims them.
    term_label
        That term's CL label.
    why
        What the row covers, and why it stands where it does.
    """

    name: str
    term_id: str
    term_label: str
    why: str


@cache
def broad_classes() -> tuple[BroadClass, ...]:
    """Return the curated broad classes, in their order of precedence.

    A term under several rows belongs to the first: the most specific class comes first
    (NK cell before innate lymphoid cell before lymphocyte), and a lineage before the
    generic groupings (stem cell, connective tissue cell) that CL also files it under.

    Returns
    -------
    tuple of BroadClass
        The rows of ``cassia_sc/data/cl_broad_classes.csv``, in order.

    Examples
    --------
    >>> [c.name for c in broad_classes()[:3]]
    ['NK cell', 'innate lymphoid cell', 'T cell']
    """
    path = Path(__file__).with_name("data") / "cl_broad_classes.csv"
    with path.open(encoding="utf-8", newline="") as handle:
        return tuple(
            BroadClass(row["broad_class"], row["term_id"], row["term_label"], row["why"])
            for row in csv.DictReader(handle)
        )


def broad_class(term_id: str, ontology: CellOntology) -> BroadClass | None:
    """Return the broad class of a Cell Ontology term: the first row it is (under) a term of.

    Parameters
    ----------
    term_id
        A CL id, e.g. ``"CL:0000625"``.
    ontology
        The Cell Ontology.

    Returns
    -------
    BroadClass or None
        The class; None when the term is under none of them (``"cell"`` itself, a term
        filed only under generic groupings) or is ``"unknown"``.

    Raises
    ------
    ValueError
        ``term_id`` is not a term of the shipped Cell Ontology.

    Examples
    --------
    >>> from cassia_sc.ontology import cell_ontology
    >>> broad_class("CL:0000625", cell_ontology()).name  # CD8+ T cell  # doctest: +SKIP
    'T cell'
    """
    if term_id == UNKNOWN:
        return None
    lineage = ontology.ancestors(term_id) | {term_id}
    return next((row for row in broad_classes() if row.term_id in lineage), None)


def is_answered(cluster: ClusterResult) -> bool:
    """Tell whether a cluster has an answer to name at each level (failed ones have none).

    Parameters
    ----------
    cluster
        The cluster.

    Returns
    -------
    bool
        True when its status is ``"ok"`` and it has a main cell type.
    """
    return cluster.status == "ok" and bool(cluster.main_cell_type)


def unanswered_note(cluster: ClusterResult) -> str:
    """Return why a cluster that :func:`is_answered` refuses has no levels.

    Parameters
    ----------
    cluster
        The cluster.

    Returns
    -------
    str
        E.g. ``"no levels: the annotation failed (HTTP 400 ...)"``.
    """
    if cluster.status == "failed":
        return f"no levels: the annotation failed ({cluster.error or 'no reason given'})"
    if cluster.status == "not_run":
        return "no levels: the cluster was not annotated (not run)"
    return "no levels: the answer has no main cell type"


def very_detailed_name(subtype: str, state: str | None) -> str:
    """Return a subtype with the cell state added, unless the subtype says it already.

    Parameters
    ----------
    subtype
        The most likely subtype (or the main cell type when there is none).
    state
        The state taken off the label to find its term; several are joined by ``"; "``.

    Returns
    -------
    str
        ``"subtype (state)"``, with only the parts of the state the subtype lacks.

    Examples
    --------
    >>> very_detailed_name("Effector memory CD8+ T cell", "Activated")
    'Effector memory CD8+ T cell (Activated)'
    >>> very_detailed_name("Activated CD8+ T cell", "Activated")
    'Activated CD8+ T cell'
    """
    parts = [part.strip() for part in (state or "").split(";") if part.strip()]
    missing = [part for part in parts if part.lower() not in subtype.lower()]
    return f"{subtype} ({'; '.join(missing)})" if missing else subtype


def ontology_levels(batch: BatchResult, *, ontology: CellOntology | None = None) -> BatchResult:
    """Name each answered cluster at the three levels, offline, with the Cell Ontology.

    ``broad``
        The broad class (:func:`broad_class`) of the cluster's Cell Ontology term: the
        ``ontology_term_id`` ``tl.annotate`` stored, or, for a cluster never mapped, the
        term its main cell type maps to now (with the run's tissue). A cluster without a
        term, or whose term is under no class, keeps it empty and says why: never a guess.
    ``detailed``
        The term's CL label when the main cell type is mapped (to a term more specific
        than "cell"); else the main cell type as the model wrote it.
    ``very_detailed``
        The most likely subtype (the first of ``sub_cell_types``; the main cell type when
        there is none), with the cell state in parentheses when there is one that the
        subtype does not already say (see :func:`very_detailed_name`).

    Parameters
    ----------
    batch
        The annotation.
    ontology
        The Cell Ontology; default :func:`cassia_sc.ontology.cell_ontology`.

    Returns
    -------
    BatchResult
        A copy with the fields of :data:`LEVEL_FIELDS` set on every cluster, and
        ``levels_method="ontology"`` with the CL version in its settings.

    Raises
    ------
    OntologyUnavailable
        Without the ``cassia-sc[ontology]`` extra.
    """
    ontology = ontology or cell_ontology()
    tissue = batch.settings.get("tissue") or None
    names: dict[str, dict[str, str]] = {}
    terms: dict[str, str] = {}
    notes: dict[str, str] = {}
    for cluster in batch.clusters:
        if not is_answered(cluster):
            continue
        main = str(cluster.main_cell_type)
        term, label = cluster.ontology_term_id, cluster.ontology_label or ""
        state = str(cluster.extra.get("cell_state") or "")
        if not term:  # never mapped (no ontology at annotation time, a CASSIA file)
            match = ontology.match(main, tissue=tissue)
            term, label, state = match.term_id, match.term_label, state or match.state
        known = _shipped(term, ontology)
        found = broad_class(term, ontology) if known else None
        if known and not label:
            label = ontology.label(term)
        subtype = cluster.sub_cell_types[0] if cluster.sub_cell_types else main
        names[cluster.cluster] = {
            "broad": found.name if found else "",
            "detailed": label if label and term != ROOT_TERM else main,
            "very_detailed": very_detailed_name(subtype, state),
        }
        if found is not None:
            terms[cluster.cluster] = found.term_id
        else:
            notes[cluster.cluster] = f"broad: {_no_broad_class(term, main, known, ontology)}"
    settings = {"levels_method": "ontology", "levels_cl_version": ontology.cl_version}
    result = with_levels(batch, names, notes=notes, settings=settings)
    for cluster in result.clusters:
        cluster.set(BROAD_TERM.name, terms.get(cluster.cluster, ""))
    return result


def _shipped(term: str, ontology: CellOntology) -> bool:
    """Whether ``term`` is a term of the shipped Cell Ontology ("unknown" is not)."""
    if term == UNKNOWN:
        return False
    try:
        ontology.label(term)
    except ValueError:  # a term of another CL version, or a stray value
        return False
    return True


def _no_broad_class(term: str, main: str, known: bool, ontology: CellOntology) -> str:
    """Why a cluster has no broad class."""
    if term == UNKNOWN:
        return f"no Cell Ontology term for {main!r}"
    if not known:
        return f"{term} is not a term of the shipped Cell Ontology ({ontology.cl_version})"
    return f"its Cell Ontology term, {ontology.label(term)} ({term}), is under no broad class"


def with_levels(
    batch: BatchResult,
    names: Mapping[str, Mapping[str, str]],
    *,
    notes: Mapping[str, str] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> BatchResult:
    """Return a copy of ``batch`` whose clusters hold the names given, by cluster name.

    Every level of every cluster is set: to its name in ``names``, else empty. A cluster
    without an answer gets :func:`unanswered_note`; another with an empty level the note
    given in ``notes``. Names are joined to clusters by name only, never by position.

    Parameters
    ----------
    batch
        The annotation.
    names
        Cluster name -> level -> name.
    notes
        Cluster name -> why one of its levels is empty.
    settings
        Added to the batch's settings (the method, its model, its usage).

    Returns
    -------
    BatchResult
        The copy, with :data:`LEVEL_FIELDS` declared after the batch's own fields.
    """
    notes = notes or {}
    clusters = []
    for original in batch.clusters:
        cluster = replace(original)  # its own ``extra``: the batch given stays as it was
        given = names.get(cluster.cluster, {})
        for level, declared in LEVEL_FIELD.items():
            cluster.set(declared.name, str(given.get(level) or "").strip())
        cluster.set(BROAD_TERM.name, "")
        note = notes.get(cluster.cluster, "")
        cluster.set(LEVELS_NOTE.name, note if is_answered(cluster) else unanswered_note(cluster))
        clusters.append(cluster)
    declared = tuple(f for f in batch.fields if f.name not in {g.name for g in LEVEL_FIELDS})
    return replace(
        batch,
        clusters=clusters,
        fields=declared + LEVEL_FIELDS,
        settings=dict(batch.settings) | dict(settings or {}),
    )


def level_columns(
    clusters: pd.Series, result: BatchResult, *, key_added: str
) -> dict[str, pd.Categorical]:
    """Return the ``obs`` columns of the levels: each cell's name at each level.

    Parameters
    ----------
    clusters
        Each cell's cluster (the ``groupby`` column).
    result
        The annotation with its levels (:func:`ontology_levels` or the model's).
    key_added
        Prefix of the column names.

    Returns
    -------
    dict[str, pandas.Categorical]
        ``{key_added}_celltype_broad``, ``_detailed`` and ``_very_detailed``; NaN for the
        cells of a cluster whose level is empty. Categories in cluster order.
    """
    return {
        LEVEL_COLUMN[level](key_added): cell_values(clusters, result, declared)
        for level, declared in LEVEL_FIELD.items()
    }


def cell_values(clusters: pd.Series, result: BatchResult, declared: Field) -> pd.Categorical:
    """Return each cell's value of a cluster's field: its cluster's, NaN when it has none.

    Parameters
    ----------
    clusters
        Each cell's cluster (the ``groupby`` column).
    result
        The annotation.
    declared
        The field, a text of each cluster.

    Returns
    -------
    pandas.Categorical
        The values, with the categories in cluster order.
    """
    named = {c.cluster: c.get(declared) for c in result.clusters if c.get(declared)}
    values = pd.Series(clusters).astype(str).map(named).to_numpy(dtype=object)
    present = pd.Index(list(dict.fromkeys(named.values())), dtype=object)
    return pd.Categorical(values, categories=present)


def level_column_names(key_added: str) -> list[str]:
    """Return the ``obs`` columns the levels of an annotation under ``key_added`` go to.

    Parameters
    ----------
    key_added
        The prefix.

    Returns
    -------
    list of str
        Broadest first.

    Examples
    --------
    >>> level_column_names("cassia")
    ['cassia_celltype_broad', 'cassia_celltype_detailed', 'cassia_celltype_very_detailed']
    """
    return [LEVEL_COLUMN[level](key_added) for level in LEVELS]
