"""The harmoniser: one name for one cell type across the inputs of a run, in one call.

Annotated apart, two datasets (or two clusters of one) may call one type "T cells",
"T cell" and "T lymphocyte". After a run over several inputs, the harmoniser sends every
distinct main cell type once, with the key markers the answers cited for it (and its Cell
Ontology term, when one was found offline), and asks for a JSON object keyed by the label
itself: each label mapped to the name it shares with the labels of the same type. A reply
is read by key only; one that leaves a label out, or gives it an empty name, is told what
is wrong and asked once more. When the second reply is faulty too (or the call fails),
every label keeps its own name, and the run says so: a partial mapping is never used.

The shared name is recorded beside the annotator's label (:data:`HARMONISED`), which it
never replaces. :func:`ontology_harmonised` is the offline alternative: labels that map
exactly to one Cell Ontology term share that term's label.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

import pandas as pd

from .._keys import Key
from ..fields import Field
from ..levels import cell_values, is_answered
from ..llm import LLMClient, Reply, reply_totals
from ..ontology import UNKNOWN
from ..prompts import render
from ..replies import extract_json_object
from ..results import BatchResult
from .context import Messages
from .keyed import ask_for_names

logger = logging.getLogger("cassia_sc")

#: Replies asked for at most: the first, then one more when it is faulty.
ATTEMPTS: Final = 2
#: Key markers shown per label.
MARKERS_SHOWN: Final = 5
#: How an offline match may reach a term for :func:`ontology_harmonised` to use its label:
#: the term's own label, a synonym, or the label cleaned of spelling; never a fuzzy guess.
EXACT_METHODS: Final = frozenset({"label", "synonym", "normalised", "model"})

HARMONISED = Field(
    "celltype_harmonised",
    "text",
    "the main cell type's name shared by the labels of one type across the inputs of a "
    "run (``harmonise=``); the annotator's own stays in ``main_cell_type``",
    csv="Harmonised Cell Type",
    report="Harmonised name",
    default="",
)


@dataclass(frozen=True)
class LabelEvidence:
    """One distinct main cell type of a run, as the harmoniser is shown it.

    Attributes
    ----------
    label
        The label, as the annotator wrote it.
    key_markers
        The markers cited most often for it, most often first.
    clusters
        How many clusters carry it.
    inputs
        In how many inputs.
    term
        Its Cell Ontology term found offline, ``"label (CL:...)"``; "" when none.
    """

    label: str
    key_markers: tuple[str, ...]
    clusters: int
    inputs: int
    term: str = ""


def label_evidence(batches: Sequence[BatchResult]) -> list[LabelEvidence]:
    """Return each distinct main cell type of the answered clusters, in order of appearance.

    Parameters
    ----------
    batches
        The inputs' annotations.

    Returns
    -------
    list of LabelEvidence
        One per label; the key markers are those the answers cited (the cluster's first
        ranked markers when an answer cited none).

    Examples
    --------
    >>> from cassia_sc.results import ClusterResult
    >>> a = BatchResult([ClusterResult("0", ["CD3D"], "ok", main_cell_type="T cells",
    ...                                key_markers=["CD3E", "CD3D"])])
    >>> b = BatchResult([ClusterResult("4", ["CD3D"], "ok", main_cell_type="T cells",
    ...                                key_markers=["CD3D"])])
    >>> label_evidence([a, b])[0]
    LabelEvidence(label='T cells', key_markers=('CD3D', 'CD3E'), clusters=2, inputs=2, term='')
    """
    markers: dict[str, Counter[str]] = {}
    clusters: Counter[str] = Counter()
    inputs: dict[str, set[int]] = {}
    terms: dict[str, str] = {}
    for number, batch in enumerate(batches):
        for cluster in batch.clusters:
            if not is_answered(cluster):
                continue
            label = str(cluster.main_cell_type)
            cited = cluster.key_markers or cluster.markers[:MARKERS_SHOWN]
            markers.setdefault(label, Counter()).update(dict.fromkeys(cited, 1))
            clusters[label] += 1
            inputs.setdefault(label, set()).add(number)
            term = cluster.ontology_term_id
            if term and term != UNKNOWN and label not in terms:
                terms[label] = f"{cluster.ontology_label} ({term})"
    return [
        LabelEvidence(
            label,
            tuple(gene for gene, _ in counted.most_common(MARKERS_SHOWN)),
            clusters[label],
            len(inputs[label]),
            terms.get(label, ""),
        )
        for label, counted in markers.items()
    ]


@dataclass(frozen=True)
class Harmonisation:
    """The shared name of each label, or why the labels were kept.

    Attributes
    ----------
    names
        Label -> its shared name, for every label sent (its own when kept).
    harmonised
        Whether the names are the harmoniser's; False when every label kept its own.
    method
        ``"model"`` or ``"ontology"``.
    note
        What happened, in words for the user.
    replies
        Every reply, in order (a faulty one included), for the usage.
    problems
        What was wrong with each faulty reply, in order.
    """

    names: dict[str, str]
    harmonised: bool
    method: str
    note: str
    replies: tuple[Reply, ...] = ()
    problems: tuple[str, ...] = ()

    def usage(self) -> dict[str, int]:
        """Return the totals of the replies: calls, cached calls, requests and tokens."""
        return reply_totals(self.replies)


class Harmoniser:
    """Give the labels of one type one name, with one structured call (asked again once).

    Parameters
    ----------
    attempts
        Replies asked for at most.

    Examples
    --------
    >>> labels = [LabelEvidence("T cells", ("CD3D",), 2, 2), LabelEvidence("T cell", (), 1, 1)]
    >>> messages = Harmoniser().messages(labels, species="human", tissue="blood")
    >>> [m["role"] for m in messages]
    ['system', 'user']
    """

    name = "harmoniser"
    #: Completion tokens of a usual reply, for a dry run's estimate (a JSON object).
    reply_tokens = 300
    fields = (HARMONISED,)

    def __init__(self, *, attempts: int = ATTEMPTS) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be 1 or more, not {attempts!r}.")
        self.attempts = attempts

    def messages(
        self,
        labels: Sequence[LabelEvidence],
        *,
        species: str | None = None,
        tissue: str | None = None,
        additional_info: str | None = None,
    ) -> Messages:
        """Return the messages asking for every label's shared name."""
        shown = [
            {
                "key": _quoted(entry.label),
                "markers": ", ".join(entry.key_markers),
                "clusters": entry.clusters,
                "inputs": entry.inputs,
                "term": entry.term,
            }
            for entry in labels
        ]
        task = render(
            "harmoniser_task",
            labels=shown,
            keys=", ".join(entry["key"] for entry in shown),
            species=species,
            tissue=tissue,
            additional_info=additional_info,
        )
        return [
            {"role": "system", "content": render("harmoniser_system")},
            {"role": "user", "content": task},
        ]

    def harmonise(
        self,
        labels: Sequence[LabelEvidence],
        client: LLMClient,
        *,
        species: str | None = None,
        tissue: str | None = None,
        additional_info: str | None = None,
        stop: threading.Event | None = None,
    ) -> Harmonisation:
        """Ask the model for each label's shared name, keyed by the label.

        Parameters
        ----------
        labels
            The distinct labels (see :func:`label_evidence`).
        client
            The model client (cached, retried, counted, within the run's budget).
        species, tissue, additional_info
            What the model is told of the samples.
        stop
            Set to cancel.

        Returns
        -------
        Harmonisation
            The names; every label keeps its own when no reply named them all, or the
            call failed (a refused key included: the annotation is kept either way).
        """
        names = [entry.label for entry in labels]
        if len(set(names)) != len(names):
            raise ValueError(f"Labels repeat: {names}; each must be sent once.")
        kept = {label: label for label in names}
        if not names:
            return Harmonisation({}, False, "model", "no answered cluster to harmonise")
        messages = self.messages(
            labels, species=species, tissue=tissue, additional_info=additional_info
        )
        keys = [_quoted(label) for label in names]
        answer = ask_for_names(
            client,
            messages,
            names,
            read=read_mapping,
            retry=lambda problem: render("harmoniser_retry", problem=problem, keys=keys),
            attempts=self.attempts,
            stop=stop,
        )
        asked = (answer.replies, answer.problems)
        if answer.failed is not None:
            note = f"labels kept: the harmonisation call failed ({answer.failed})"
            return Harmonisation(kept, False, "model", note, *asked)
        if answer.complete:
            changed = sum(answer.named[label] != label for label in names)
            note = f"{changed} of {len(names)} labels renamed"
            return Harmonisation(answer.named, True, "model", note, *asked)
        note = (
            f"labels kept: no complete answer in {len(answer.replies)} replies "
            f"({answer.problems[-1]})"
        )
        return Harmonisation(kept, False, "model", note, *asked)


def read_mapping(text: str, labels: Sequence[str]) -> tuple[dict[str, str], str | None]:
    """Read a reply's shared names by label, and say what is wrong with it, if anything.

    Parameters
    ----------
    text
        The reply.
    labels
        The labels asked for.

    Returns
    -------
    tuple
        The non-empty names given under a label asked for, and None when every label has
        one; else what is wrong, in words for the model. Keys of no label are ignored.

    Examples
    --------
    >>> read_mapping('{"T cells": "T cell", "T cell": "T cell"}', ["T cell", "T cells"])
    ({'T cell': 'T cell', 'T cells': 'T cell'}, None)
    >>> read_mapping('{"T cells": "T cell", "B cell": " "}', ["T cells", "B cell", "NK"])
    ({'T cells': 'T cell'}, 'lacked the label "NK"; gave no name for the label "B cell"')
    """
    answer = extract_json_object(text)
    if answer is None:
        return {}, "held no JSON object"
    named = {
        label: answer[label].strip()
        for label in labels
        if isinstance(answer.get(label), str) and answer[label].strip()
    }
    missing = [label for label in labels if label not in answer]
    empty = [label for label in labels if label in answer and label not in named]
    problems = []
    if missing:
        problems.append(f"lacked {_listed(missing)}")
    if empty:
        problems.append(f"gave no name for {_listed(empty)}")
    return named, "; ".join(problems) or None


def ontology_harmonised(batches: Sequence[BatchResult]) -> Harmonisation:
    """Name the labels offline: those mapped exactly to one Cell Ontology term share its label.

    A label counts when its term was found by the term's label, a synonym or the label
    cleaned of spelling (not a fuzzy guess), is no broader than the label, and nothing
    (a state, a place) was taken off the label to find it: "T cells" and "T lymphocyte"
    both become "T cell", while "Activated T cell" and labels without such a term keep
    their own name.

    Parameters
    ----------
    batches
        The inputs' annotations, mapped to the Cell Ontology (the ``ontology`` extra).

    Returns
    -------
    Harmonisation
        The names, every label of :func:`label_evidence` included.
    """
    names: dict[str, str] = {}
    for batch in batches:
        for cluster in batch.clusters:
            if not is_answered(cluster) or cluster.main_cell_type in names:
                continue
            label = str(cluster.main_cell_type)
            exact = (
                cluster.ontology_term_id not in (None, UNKNOWN)
                and cluster.extra.get("ontology_method") in EXACT_METHODS
                and not cluster.extra.get("ontology_broader")
                and not cluster.extra.get("cell_state")
                and bool(cluster.ontology_label)
            )
            names[label] = str(cluster.ontology_label) if exact else label
    changed = sum(name != label for label, name in names.items())
    note = f"{changed} of {len(names)} labels renamed to their Cell Ontology term's label"
    return Harmonisation(names, True, "ontology", note)


def with_harmonised(
    batches: Sequence[BatchResult],
    harmonisation: Harmonisation,
    *,
    settings: Mapping[str, Any] | None = None,
) -> list[BatchResult]:
    """Return copies of ``batches`` whose answered clusters hold their shared name.

    Parameters
    ----------
    batches
        The inputs' annotations.
    harmonisation
        The names, by label.
    settings
        Added to every batch's settings (the model, the usage).

    Returns
    -------
    list of BatchResult
        The copies, with :data:`HARMONISED` declared after each batch's own fields and
        ``harmonise_method``, ``harmonised`` (whether the names are the harmoniser's) and
        ``harmonise_note`` in their settings; a cluster without an answer gets "".
    """
    added = {
        "harmonise_method": harmonisation.method,
        "harmonised": harmonisation.harmonised,
        "harmonise_note": harmonisation.note,
    } | dict(settings or {})
    copies = []
    for batch in batches:
        clusters = []
        for original in batch.clusters:
            cluster = replace(original)  # its own ``extra``: the batch given stays as it was
            label = cluster.main_cell_type if is_answered(cluster) else None
            cluster.set(HARMONISED.name, harmonisation.names.get(label, label or "") or "")
            clusters.append(cluster)
        declared = tuple(f for f in batch.fields if f.name != HARMONISED.name)
        copies.append(
            replace(
                batch,
                clusters=clusters,
                fields=(*declared, HARMONISED),
                settings=dict(batch.settings) | added,
            )
        )
    return copies


def harmonise_batches(
    batches: Sequence[BatchResult],
    client: LLMClient,
    *,
    harmoniser: Harmoniser | None = None,
) -> list[BatchResult]:
    """Give the labels of one type one name across ``batches``, with the model.

    Parameters
    ----------
    batches
        The inputs' annotations (one run's: they share tissue and species).
    client
        The model client.
    harmoniser
        The agent; default :class:`Harmoniser` ``()``.

    Returns
    -------
    list of BatchResult
        Copies with :data:`HARMONISED` on every cluster (see :func:`with_harmonised`),
        and in their settings ``harmonise_model`` and the call's usage
        (``harmonise_calls``, ``harmonise_cached_calls``, ``harmonise_requests``,
        ``harmonise_prompt_tokens``, ``harmonise_completion_tokens``).
    """
    harmoniser = harmoniser or Harmoniser()
    settings = batches[0].settings if batches else {}
    harmonisation = harmoniser.harmonise(
        label_evidence(batches),
        client,
        species=settings.get("species") or None,
        tissue=settings.get("tissue") or None,
        additional_info=settings.get("additional_info") or None,
    )
    if not harmonisation.harmonised:
        logger.warning("Harmonisation: %s.", harmonisation.note)
    else:
        logger.info("Harmonisation: %s.", harmonisation.note)
    usage = {f"harmonise_{name}": total for name, total in harmonisation.usage().items()}
    return with_harmonised(
        batches, harmonisation, settings=usage | {"harmonise_model": client.model}
    )


def harmonised_columns(
    clusters: pd.Series, result: BatchResult, *, key_added: str
) -> dict[str, pd.Categorical]:
    """Return the ``obs`` column of each cell's shared name, when the batch has them.

    Parameters
    ----------
    clusters
        Each cell's cluster (the ``groupby`` column).
    result
        The batch, harmonised by :func:`with_harmonised`.
    key_added
        Prefix of the column's name.

    Returns
    -------
    dict
        :meth:`Key.obs.celltype_harmonised <cassia_sc._keys.Key.obs.celltype_harmonised>`
        -> categorical names (NaN for the cells of a cluster without one); empty when the
        batch was not harmonised.
    """
    if HARMONISED.name not in {f.name for f in result.fields}:
        return {}
    return {Key.obs.celltype_harmonised(key_added): cell_values(clusters, result, HARMONISED)}


def _listed(labels: Sequence[str]) -> str:
    """Name some labels for the model: the first ten, and how many more."""
    shown = ", ".join(_quoted(label) for label in labels[:10])
    more = f" and {len(labels) - 10} more" if len(labels) > 10 else ""
    return f"the label{'s' if len(labels) > 1 else ''} {shown}{more}"


def _quoted(label: str) -> str:
    """Write a label as the model sees it and must write it back: a JSON string."""
    return json.dumps(label, ensure_ascii=False)
