"""Caps on what is written: labels, lists and stored replies, cut where they pass a limit.

A model may answer with megabytes, or a label of a hundred thousand characters; each
copy of it in ``uns``, the CSV files, the JSON and the report would multiply it. Every
writer writes :func:`bounded` results: text past its cap (:class:`~cassia_sc._keys.Limit`)
is cut and ends with a note such as ``… [cut: 4.9 MB more]``; the reply cache keeps the
whole reply.
"""

from __future__ import annotations

from dataclasses import replace

from .._io import format_size
from .._keys import Limit
from ..results import BatchResult, ClusterResult, Turn

#: Text fields that are labels, capped at :attr:`Limit.label` (others at :attr:`Limit.text`).
LABEL_FIELDS = frozenset(
    {"main_cell_type", "initial_cell_type", "ontology_term_id", "ontology_label"}
)
#: Fields written whole: the cluster's name (labels are matched to cells by it) and the
#: markers the model was given (as many as asked for).
WHOLE_FIELDS = frozenset({"cluster", "markers"})
_CACHE_NOTE = "; the reply cache holds it whole, if the run used one"


def cut(text: str, limit: int, *, note: str = "") -> str:
    """Return ``text`` cut to at most ``limit`` characters, ending with what was cut.

    Parameters
    ----------
    text
        The text.
    limit
        Its most characters, the note included.
    note
        Said after the size cut, e.g. where the whole text is kept.

    Returns
    -------
    str
        ``text`` itself when short enough.

    Examples
    --------
    >>> cut("T cell " * 1000, 40)
    'T cell T cell T cell… [cut: 7.0 KB more]'
    """
    if len(text) <= limit:
        return text
    keep = limit
    for _ in range(3):  # the note's length depends on what it says was cut
        tail = f"… [cut: {format_size(len(text[keep:].encode('utf-8')))} more{note}]"
        keep = max(limit - len(tail), 0)
    return text[:keep] + f"… [cut: {format_size(len(text[keep:].encode('utf-8')))} more{note}]"


def cut_list(items: list[str], limit: int = Limit.items) -> list[str]:
    """Return ``items`` with each cut to :attr:`Limit.label` and at most ``limit`` of them.

    Parameters
    ----------
    items
        The list.
    limit
        Its most items; the last says how many more were cut.

    Returns
    -------
    list of str
        The list, cut.

    Examples
    --------
    >>> cut_list([f"gene{i}" for i in range(1000)], 3)
    ['gene0', 'gene1', '… [cut: 998 more]']
    """
    items = [cut(str(item), Limit.label) for item in items]
    if len(items) <= limit:
        return items
    return [*items[: limit - 1], f"… [cut: {len(items) - limit + 1:,} more]"]


def bounded(result: BatchResult) -> BatchResult:
    """Return ``result`` with every written value within its cap (itself when all are).

    Parameters
    ----------
    result
        A batch.

    Returns
    -------
    BatchResult
        A copy whose clusters hold cut labels, lists, texts and messages, or ``result``.
    """
    clusters = [_bounded_cluster(c, result) for c in result.clusters]
    if all(new is old for new, old in zip(clusters, result.clusters, strict=True)):
        return result
    return replace(result, clusters=clusters)


def _bounded_cluster(cluster: ClusterResult, result: BatchResult) -> ClusterResult:
    changes: dict[str, object] = {}
    for field in result.fields:
        if field.name in WHOLE_FIELDS:
            continue
        value = cluster.get(field)
        if field.kind == "text" and isinstance(value, str):
            limit = Limit.label if field.name in LABEL_FIELDS else Limit.text
            capped = cut(value, limit)
        elif field.kind == "list" and value:
            capped = cut_list(list(value))
        else:
            continue
        if capped != value:
            changes[field.key] = capped
    raw_reply = cluster.raw_reply
    if raw_reply is not None and len(raw_reply) > Limit.message:
        changes["raw_reply"] = cut(raw_reply, Limit.message, note=_CACHE_NOTE)
    if any(len(t.content) > Limit.message for t in cluster.conversation):
        changes["conversation"] = [
            replace(t, content=cut(t.content, Limit.message, note=_note(t)))
            for t in cluster.conversation
        ]
    if not changes:
        return cluster
    copy = replace(cluster)
    for name, value in changes.items():
        copy.set(name, value)
    return copy


def _note(turn: Turn) -> str:
    return _CACHE_NOTE if turn.role == "assistant" else ""
