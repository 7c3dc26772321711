"""The grouper: a model names every answered cluster at one level of detail, in one call.

One structured call per level (broad lineage, detailed type, very detailed type) over all
the answered clusters at once, so that the model gives one type one name across clusters.
The reply is a JSON object keyed by cluster name, whose schema requires each cluster's key
and no other. Names reach clusters by key only: a reply that lacks a key, has one too many
or gives an empty name is a fault, told to the model, which is asked again. A cluster the
model still leaves out after the last attempt keeps the level empty, and says why; no name
ever moves to another cluster. Failed clusters are not sent.

CASSIA's ``merge_annotations`` mapped the reply onto rows by position, named clusters in
batches of 20 (one type, several names) and sent failed rows as "nan"; none of that here.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import CallCancelled, CassiaError, FatalLLMError
from ..levels import LEVEL_FIELDS, LEVELS, is_answered, with_levels
from ..llm import LLMClient, Reply, reply_totals
from ..prompts import render
from ..replies import extract_json_object
from ..results import BatchResult, ClusterResult
from .context import Messages
from .keyed import ask_for_names

#: Replies asked for per level at most: the first, then one more per faulty reply.
ATTEMPTS = 3


@dataclass(frozen=True)
class Grouping:
    """The model's names of the clusters at one level.

    Attributes
    ----------
    level
        ``"broad"``, ``"detailed"`` or ``"very_detailed"``.
    names
        Cluster name -> its name at this level, for the clusters the model named.
    notes
        Cluster name -> why it has no name (the call failed, it was left out).
    replies
        Every reply, in order (a faulty one included), for the usage.
    problems
        What was wrong with each faulty reply, in order.
    """

    level: str
    names: dict[str, str]
    notes: dict[str, str]
    replies: tuple[Reply, ...] = ()
    problems: tuple[str, ...] = ()


class Grouper:
    """Name every answered cluster at one level with one call (retried on a faulty reply).

    Parameters
    ----------
    attempts
        Replies asked for at most per level.

    Examples
    --------
    >>> from cassia_sc.results import ClusterResult
    >>> t = ClusterResult("0", ["CD3D"], status="ok", main_cell_type="CD8+ T cell")
    >>> messages = Grouper().messages("broad", [t], species="human", tissue="blood")
    >>> [m["role"] for m in messages]
    ['system', 'user']
    """

    name = "grouper"
    #: Completion tokens of a usual reply, for a dry run's cost estimate
    #: (a JSON object of the labels' levels).
    reply_tokens = 400
    fields = LEVEL_FIELDS

    def __init__(self, *, attempts: int = ATTEMPTS) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be 1 or more, not {attempts!r}.")
        self.attempts = attempts

    def messages(
        self,
        level: str,
        clusters: Sequence[ClusterResult],
        *,
        species: str | None = None,
        tissue: str | None = None,
        additional_info: str | None = None,
    ) -> Messages:
        """Return the messages asking for every cluster's name at ``level``."""
        if level not in LEVELS:
            raise CassiaError(f"level must be one of {list(LEVELS)}, not {level!r}.")
        shown = [
            {
                "key": _key(c.cluster),
                "main": c.main_cell_type,
                "subtypes": c.sub_cell_types,
                "state": c.extra.get("cell_state") or "",
            }
            for c in clusters
        ]
        task = render(
            "grouper_task",
            level=level,
            clusters=shown,
            keys=", ".join(entry["key"] for entry in shown),
            species=species,
            tissue=tissue,
            additional_info=additional_info,
        )
        return [
            {"role": "system", "content": render("grouper_system")},
            {"role": "user", "content": task},
        ]

    def group(
        self,
        level: str,
        clusters: Sequence[ClusterResult],
        client: LLMClient,
        *,
        species: str | None = None,
        tissue: str | None = None,
        additional_info: str | None = None,
        stop: threading.Event | None = None,
    ) -> Grouping:
        """Ask the model for each cluster's name at ``level``, keyed by cluster name.

        Parameters
        ----------
        level
            ``"broad"``, ``"detailed"`` or ``"very_detailed"``.
        clusters
            The clusters (each name once); those without an answer (see
            :func:`cassia_sc.levels.is_answered`) are not sent.
        client
            The model client (cached, retried, counted).
        species, tissue, additional_info
            What the model is told of the sample.
        stop
            Set to cancel.

        Returns
        -------
        Grouping
            The names by cluster; a cluster left out of the last reply, or of a failed
            call, has a note instead.

        Raises
        ------
        FatalLLMError
            When no call can succeed (a bad key, an unknown model).
        """
        clusters = [c for c in clusters if is_answered(c)]  # a failed one is never sent
        names = [c.cluster for c in clusters]
        if len(set(names)) != len(names):
            raise CassiaError(f"Cluster names repeat: {names}; each must be named once.")
        if not names:
            return Grouping(level, {}, {})
        messages = self.messages(
            level, clusters, species=species, tissue=tissue, additional_info=additional_info
        )
        keys = [_key(n) for n in names]
        answer = ask_for_names(
            client,
            messages,
            names,
            read=read_names,
            retry=lambda problem: render("grouper_retry", problem=problem, keys=keys),
            attempts=self.attempts,
            stop=stop,
        )
        if isinstance(answer.failed, FatalLLMError | CallCancelled):
            raise answer.failed
        if answer.complete:
            return Grouping(level, answer.named, {}, answer.replies, answer.problems)
        if not answer.replies:  # the call failed, nothing to keep: every cluster says why
            note = f"{level}: the call failed ({answer.failed})"
            return Grouping(level, {}, dict.fromkeys(names, note), (), ())
        # What the last reply named is kept.
        left_out = [name for name in names if name not in answer.named]
        note = (
            f"{level}: no name from the model in {len(answer.replies)} replies "
            f"({answer.problems[-1]})"
        )
        return Grouping(
            level, answer.named, dict.fromkeys(left_out, note), answer.replies, answer.problems
        )


def read_names(text: str, names: Sequence[str]) -> tuple[dict[str, str], str | None]:
    """Read a reply's names by cluster key, and say what is wrong with it, if anything.

    Parameters
    ----------
    text
        The reply.
    names
        The cluster names asked for.

    Returns
    -------
    tuple
        The non-empty names given under a key of ``names``, and None when the reply has
        exactly those keys, each with a name; else what is wrong, in words for the model.

    Examples
    --------
    >>> read_names('{"1": "B cell", "0": "T cell"}', ["0", "1"])
    ({'0': 'T cell', '1': 'B cell'}, None)
    >>> read_names('{"0": "T cell", "2": "B cell"}', ["0", "1"])
    ({'0': 'T cell'}, 'lacked the key "1"; had the key "2", of no cluster listed')
    """
    answer = extract_json_object(text)
    if answer is None:
        return {}, "held no JSON object"
    asked = set(names)
    named = {
        name: value.strip()
        for name, value in answer.items()
        if name in asked and isinstance(value, str) and value.strip()
    }
    missing = [name for name in names if name not in answer]
    extra = [key for key in answer if key not in asked]
    empty = [name for name in names if name in answer and name not in named]
    problems = []
    if missing:
        problems.append(f"lacked {_keys(missing)}")
    if extra:
        problems.append(f"had {_keys(extra)}, of no cluster listed")
    if empty:
        problems.append(f"gave no name under {_keys(empty)}")
    return {name: named[name] for name in names if name in named}, "; ".join(problems) or None


def _keys(keys: Sequence[str]) -> str:
    """Name some keys for the model: the first ten, and how many more."""
    shown = ", ".join(_key(k) for k in keys[:10])
    more = f" and {len(keys) - 10} more" if len(keys) > 10 else ""
    return f"the key{'s' if len(keys) > 1 else ''} {shown}{more}"


def _key(name: str) -> str:
    """Write a cluster name as the model sees it and must write it back: a JSON string."""
    return json.dumps(name, ensure_ascii=False)


def group_levels(
    clusters: Sequence[ClusterResult],
    client: LLMClient,
    *,
    levels: Sequence[str] = LEVELS,
    species: str | None = None,
    tissue: str | None = None,
    additional_info: str | None = None,
    grouper: Grouper | None = None,
) -> dict[str, Grouping]:
    """Name the answered clusters at each level: one call per level, the levels at once.

    Parameters
    ----------
    clusters
        The clusters; those without an answer (see :func:`cassia_sc.levels.is_answered`)
        are not sent.
    client
        The model client.
    levels
        The levels to name.
    species, tissue, additional_info
        What the model is told of the sample.
    grouper
        The agent; default :class:`Grouper` ``()``.

    Returns
    -------
    dict
        Level -> its :class:`Grouping`.

    Raises
    ------
    FatalLLMError
        When no call can succeed; the other levels' calls are cancelled.
    """
    grouper = grouper or Grouper()
    unknown = [level for level in levels if level not in LEVELS]
    if unknown:
        raise CassiaError(f"levels must be among {list(LEVELS)}, not {unknown}.")
    answered = [c for c in clusters if is_answered(c)]
    stop = threading.Event()

    def name_level(level: str) -> Grouping:
        try:
            return grouper.group(
                level,
                answered,
                client,
                species=species,
                tissue=tissue,
                additional_info=additional_info,
                stop=stop,
            )
        except FatalLLMError:
            stop.set()  # the same key or model fails every other call too
            raise

    with ThreadPoolExecutor(
        max_workers=max(len(levels), 1), thread_name_prefix="cassia-sc-levels"
    ) as pool:
        futures = {level: pool.submit(name_level, level) for level in levels}
    # The fatal error, not the cancellations it caused in the other levels' calls.
    fatal = [f.exception() for f in futures.values() if isinstance(f.exception(), FatalLLMError)]
    if fatal:
        raise fatal[0]
    return {level: future.result() for level, future in futures.items()}


def model_levels(
    batch: BatchResult,
    client: LLMClient,
    *,
    additional_info: str | None = None,
    grouper: Grouper | None = None,
) -> BatchResult:
    """Name each answered cluster of ``batch`` at the three levels with the model.

    Parameters
    ----------
    batch
        The annotation.
    client
        The model client.
    additional_info
        What the model is told of the sample, besides tissue and species; default the
        annotation's own.
    grouper
        The agent; default :class:`Grouper` ``()``.

    Returns
    -------
    BatchResult
        A copy with the fields of :data:`cassia_sc.levels.LEVEL_FIELDS` on every cluster,
        and in its settings ``levels_method="model"``, ``levels_model`` and the calls'
        usage (``levels_calls``, ``levels_cached_calls``, ``levels_requests``,
        ``levels_prompt_tokens``, ``levels_completion_tokens``).

    Raises
    ------
    FatalLLMError
        When no call can succeed.
    """
    settings = batch.settings
    groupings = group_levels(
        batch.clusters,
        client,
        species=settings.get("species") or None,
        tissue=settings.get("tissue") or None,
        additional_info=additional_info or settings.get("additional_info") or None,
        grouper=grouper,
    )
    names: dict[str, dict[str, str]] = {}
    notes: dict[str, list[str]] = {}
    for level, grouping in groupings.items():
        for cluster, name in grouping.names.items():
            names.setdefault(cluster, {})[level] = name
        for cluster, note in grouping.notes.items():
            notes.setdefault(cluster, []).append(note)
    usage = {f"levels_{name}": total for name, total in grouping_usage(groupings).items()}
    usage |= {"levels_method": "model", "levels_model": client.model}
    joined = {cluster: "; ".join(found) for cluster, found in notes.items()}
    return with_levels(batch, names, notes=joined, settings=usage)


def grouping_usage(groupings: Mapping[str, Grouping]) -> dict[str, int]:
    """Return the totals of the replies of some groupings: calls, requests and tokens.

    Parameters
    ----------
    groupings
        Level -> grouping.

    Returns
    -------
    dict
        ``calls``, ``cached_calls``, ``requests``, ``prompt_tokens``, ``completion_tokens``.
    """
    return reply_totals(reply for grouping in groupings.values() for reply in grouping.replies)
