"""CASSIA's file shapes, both ways: its conversations JSON, its history sections, its tables.

The writers use :func:`cassia_conversations` and :func:`history_text`, so that CASSIA's
scorer, booster and report generators read our files with the conversation in them;
:func:`read_cassia` brings a run of CASSIA's (or of ours) back into a
:class:`~cassia_sc.BatchResult`, joined by cluster name, never by row position.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ._io import undo_spreadsheet_guard
from ._keys import Key
from .errors import CassiaError
from .fields import CORE_FIELDS, Field, split_list
from .results import BatchResult, ClusterResult, Turn, turns_from_record

# Our agents whose replies go under each key of CASSIA's conversations JSON. The booster's
# final reply is the cluster's latest annotation, which is what CASSIA's booster reads.
_AGENTS_OF_KEY = {
    Key.cassia.annotations: ("annotator", "booster"),
    Key.cassia.validations: ("validator",),
    Key.cassia.formatting: ("formatter",),
    Key.cassia.scoring: ("scorer",),
}
# Columns that name the clusters in CASSIA's tables, newest first (older files, benchmarks).
_CLUSTER_COLUMNS = (
    Key.csv.cluster,
    "True Cell Type",
    "Cluster",
    "cluster_id",
    "ClusterID",
    "Cluster_ID",
    "cluster",
)
# What a results file's name may end with before its suffix; the rest is the run's prefix.
_RESULT_FILE_ENDINGS = ("_summary", "_full", "_scored")


def cassia_conversation(cluster: ClusterResult) -> dict[str, Any]:
    """Return one cluster's replies in the shape of CASSIA's conversations JSON.

    Parameters
    ----------
    cluster
        The cluster.

    Returns
    -------
    dict
        ``annotations`` (every annotator reply, revisions included, then the boost's final
        reply if the cluster was boosted), ``validations`` (every validator reply),
        ``formatting`` (the formatter's reply; without one, the structured answer as JSON)
        and ``scoring`` (the judge's reply, or ``""``).

    Examples
    --------
    >>> from cassia_sc import ClusterResult
    >>> from cassia_sc.results import Turn
    >>> c = ClusterResult("0", ["CD3E"], status="ok", main_cell_type="T cell")
    >>> c.conversation = [Turn("annotator", "assistant", "CD3E: T cell.")]
    >>> cassia_conversation(c)["annotations"]
    ['CD3E: T cell.']
    """
    replies = {
        agent: [
            t.content for t in cluster.conversation if t.agent == agent and t.role == "assistant"
        ]
        for agents in _AGENTS_OF_KEY.values()
        for agent in agents
    }
    formatting = replies["formatter"][-1:] or [_structured_answer(cluster)]
    return {
        Key.cassia.annotations: replies["annotator"] + replies["booster"][-1:],
        Key.cassia.validations: replies["validator"],
        Key.cassia.formatting: formatting[0],
        Key.cassia.scoring: (replies["scorer"][-1:] or [""])[0],
    }


def cassia_conversations(result: BatchResult) -> dict[str, dict[str, Any]]:
    """Return the conversations JSON of CASSIA's ``runCASSIA_batch``: cluster name -> replies.

    Parameters
    ----------
    result
        The batch; its cluster names are unique.

    Returns
    -------
    dict
        :func:`cassia_conversation` of each cluster, in the batch's order (CASSIA sorts
        its own by name: readers look clusters up by name).
    """
    return {c.cluster: cassia_conversation(c) for c in result.clusters}


def history_text(cluster: ClusterResult) -> str:
    """Return the cluster's replies as CASSIA's ``Conversation History`` column holds them.

    Sections ``Final Annotation Agent: ...``, ``Coupling Validator: ...`` (alternating, as
    the rounds went), ``Formatting Agent: ...`` and, once scored, ``Scoring Agent: ...``,
    joined by ``" | "``; when a reply itself contains ``" | "`` (a Markdown table), by
    ``" |||SECTION||| "``, which CASSIA 1.4.0 also reads and no reply splits.

    Parameters
    ----------
    cluster
        The cluster.

    Returns
    -------
    str
        The column's text; ``""`` for a cluster that never reached the model.
    """
    sections = [
        f"{Key.cassia.sections[key]}: {text}"
        for key, text in _in_order(cassia_conversation(cluster))
        if text
    ]
    separator = Key.cassia.section_separator
    if any(separator in section for section in sections):
        separator = Key.cassia.safe_section_separator
    return separator.join(sections)


def turns_from_history(text: str) -> list[Turn]:
    """Rebuild a cluster's replies from a ``Conversation History`` cell (see :func:`history_text`).

    A part that does not begin with a section title belongs to the section before it (a
    reply that contained the separator), so nothing is dropped. Text with no section
    title at all is kept as one annotator reply.

    Parameters
    ----------
    text
        The cell.

    Returns
    -------
    list of Turn
        The replies, in order.

    Examples
    --------
    >>> cell = "Final Annotation Agent: a | b | Coupling Validator: ok"
    >>> [t.agent for t in turns_from_history(cell)]
    ['annotator', 'validator']
    >>> turns_from_history("Final Annotation Agent: a | b")[0].content
    'a | b'
    """
    if not text:
        return []
    separator = Key.cassia.section_separator
    if Key.cassia.safe_section_separator in text:
        separator = Key.cassia.safe_section_separator
    agent_of_title = {title: _AGENTS_OF_KEY[key][0] for key, title in Key.cassia.sections.items()}
    sections: list[list[str]] = []  # [agent, text]
    for part in text.split(separator):
        title, _, rest = part.partition(":")
        if title.strip() in agent_of_title:
            sections.append([agent_of_title[title.strip()], rest.strip()])
        elif sections:
            sections[-1][1] += separator + part
        else:
            sections.append(["annotator", part])
    return [Turn(agent, "assistant", content) for agent, content in sections]


def turns_from_cassia(entry: Mapping[str, Any]) -> list[Turn]:
    """Rebuild a cluster's replies from its entry in CASSIA's conversations JSON.

    Parameters
    ----------
    entry
        ``annotations``, ``validations``, ``formatting`` and ``scoring``.

    Returns
    -------
    list of Turn
        Annotations and validations alternating, then the formatting and scoring replies.
    """
    return [
        Turn(_AGENTS_OF_KEY[key][0], "assistant", text) for key, text in _in_order(entry) if text
    ]


def read_conversations(path: str | os.PathLike) -> dict[str, list[Turn]]:
    """Read each cluster's turns from a conversations file, in any of its shapes.

    Parameters
    ----------
    path
        CASSIA's conversations JSON (cluster name -> replies), our ``_record.json``, or a
        conversations JSON of cassia_sc 0.x (``{"settings", "clusters": [...]}``).

    Returns
    -------
    dict
        Cluster name -> turns.

    Raises
    ------
    CassiaError
        The file is not JSON, or holds neither shape.
    """
    try:
        stored = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CassiaError(f"Cannot read the conversations file {path}: {error}") from error
    if not isinstance(stored, dict):
        raise CassiaError(f"{path} is not a conversations file: expected a JSON object.")
    if isinstance(stored.get("clusters"), list):  # ours: a list cannot be a CASSIA entry
        return {
            str(c["cluster"]): turns_from_record(c)
            for c in stored["clusters"]
            if isinstance(c, dict) and "cluster" in c
        }
    return {
        str(name): turns_from_cassia(entry)
        for name, entry in stored.items()
        if isinstance(entry, Mapping)
    }


def conversations_beside(table_path: str | os.PathLike) -> Path | None:
    """Return the conversations file of the run a results CSV belongs to, if there is one.

    ``run_summary.csv``, ``run_full.csv``, ``run_summary_scored.csv`` and ``run.csv``
    all belong to the run ``run``; its ``run_record.json`` (ours, every turn) is preferred
    to its ``run_conversations.json`` (CASSIA's shape, replies only).

    Parameters
    ----------
    table_path
        The CSV.

    Returns
    -------
    pathlib.Path or None
        The file, or None when neither exists.
    """
    path = Path(table_path)
    prefix = path.with_suffix("").name
    while prefix.endswith(_RESULT_FILE_ENDINGS):
        prefix = prefix.rsplit("_", 1)[0]
    for kind in ("record", "conversations"):
        candidate = path.with_name(prefix + Key.files.suffixes[kind])
        if candidate.is_file():
            return candidate
    return None


def read_cassia(
    results: str | os.PathLike | pd.DataFrame,
    *,
    conversations: str | os.PathLike | None = "auto",
    fields: Iterable[Field] = CORE_FIELDS,
) -> BatchResult:
    """Read a ``runCASSIA_batch`` run (CASSIA's or ours) into a :class:`~cassia_sc.BatchResult`.

    Parameters
    ----------
    results
        The summary, full or scored CSV (a path or the table). The clusters are named by
        ``Cluster ID`` (or, in older CASSIA files, ``True Cell Type`` or ``cluster``).
    conversations
        The conversations file; ``"auto"``: the one beside ``results``
        (:func:`conversations_beside`), else the table's ``Conversation History``
        column; None: that column only.
    fields
        The fields whose columns are read back (with the scorer's, ``Score`` and
        ``Scoring_Reasoning`` too).

    Returns
    -------
    BatchResult
        One cluster per row, in the table's order; a row without a main cell type is
        ``failed``.

    Raises
    ------
    CassiaError
        The table has no cluster column, or names a cluster twice.
    """
    if isinstance(results, pd.DataFrame):
        table, source = results, None
    else:
        source = Path(results)
        table = pd.read_csv(source, dtype=str, keep_default_na=False)
    journal: Path | None = None
    if conversations == "auto":
        journal = conversations_beside(source) if source is not None else None
    elif conversations is not None:
        journal = Path(conversations)
    batch = batch_from_table(table, read_conversations(journal) if journal else {}, fields)
    if source is not None:
        batch.settings["source"] = str(source)
    return batch


def batch_from_table(
    table: pd.DataFrame,
    conversations: Mapping[str, list[Turn]],
    fields: Iterable[Field] = CORE_FIELDS,
) -> BatchResult:
    """Rebuild a batch from a results table and each cluster's turns, joined by name.

    Parameters
    ----------
    table
        A summary, full or scored table of ``runCASSIA_batch`` (CASSIA's or ours).
    conversations
        Cluster name -> turns; a cluster without any takes its ``Conversation History``.
    fields
        The fields whose columns are read back.

    Returns
    -------
    BatchResult
        The batch, in the table's row order.

    Raises
    ------
    CassiaError
        The table has no cluster column, or names a cluster twice.
    """
    cluster_column = next((c for c in _CLUSTER_COLUMNS if c in table.columns), None)
    if cluster_column is None:
        raise CassiaError(
            f"The table has no cluster column ({', '.join(_CLUSTER_COLUMNS)}); "
            f"its columns are {list(table.columns)}."
        )
    names = pd.Series([_cell(name) for name in table[cluster_column]], dtype=object)
    repeated = sorted(set(names[names.duplicated()]))
    if repeated:
        raise CassiaError(f"The table names clusters {repeated[:5]} more than once.")
    declared = [f for f in fields if f.csv]
    clusters = [
        _cluster_from_row({k: _cell(v) for k, v in row.items()}, name, declared, conversations)
        for name, (_, row) in zip(names, table.iterrows(), strict=True)
    ]
    first = {k: _cell(v) for k, v in table.iloc[0].items()} if len(table) else {}
    settings = {
        "model": first.get(Key.csv.model, ""),
        "provider": first.get(Key.csv.provider, ""),
        "tissue": first.get(Key.csv.tissue, "") or None,
        "species": first.get(Key.csv.species, ""),
    }
    kept = list(CORE_FIELDS) + [f for f in declared if f not in CORE_FIELDS]
    return BatchResult(clusters=clusters, settings=settings, fields=kept)


def _cluster_from_row(
    row: Mapping[str, str],
    name: str,
    declared: list[Field],
    conversations: Mapping[str, list[Turn]],
) -> ClusterResult:
    main = row.get(Key.csv.main_cell_type, "")
    result = ClusterResult(
        cluster=name,
        markers=split_list(row.get(Key.csv.markers, "")),
        status="ok" if main else "failed",
        main_cell_type=main or None,
        sub_cell_types=split_list(row.get(Key.csv.sub_cell_types, "")),
        possible_mixed_cell_types=split_list(row.get(Key.csv.possible_mixed_cell_types, "")),
        iterations=int(float(row.get(Key.csv.iterations) or 0)),
    )
    for column in declared:
        value = row.get(column.csv, "")
        if value == "":
            continue
        if column.kind == "verdict":  # the CSV holds True/False, not the verdict's names
            result.set(column.key, {"True": True, "False": False}.get(value))
        else:
            result.set(column.key, column.from_table(value))
    if not main and not result.error:
        result.error = "no main cell type in the results table"
    result.conversation = list(conversations.get(name) or ()) or turns_from_history(
        row.get(Key.csv.conversation, "")
    )
    return result


def _cell(value: Any) -> str:
    """Return a table cell as text: missing values empty, the CSV formula guard taken off."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    return undo_spreadsheet_guard(str(value))


def _in_order(entry: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Annotations and validations alternating, as the rounds went, then the rest."""
    annotations = _texts(entry.get(Key.cassia.annotations))
    validations = _texts(entry.get(Key.cassia.validations))
    rounds: list[tuple[str, str]] = []
    for index in range(max(len(annotations), len(validations))):
        if index < len(annotations):
            rounds.append((Key.cassia.annotations, annotations[index]))
        if index < len(validations):
            rounds.append((Key.cassia.validations, validations[index]))
    return rounds + [
        (key, _last(entry.get(key))) for key in (Key.cassia.formatting, Key.cassia.scoring)
    ]


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [str(v) for v in value if v]
    return []


def _last(value: Any) -> str:
    texts = _texts(value)
    return texts[-1] if texts else ""


def _structured_answer(cluster: ClusterResult) -> str:
    if cluster.main_cell_type is None:
        return ""
    answer = {
        "main_cell_type": cluster.main_cell_type,
        "sub_cell_types": cluster.sub_cell_types,
        "possible_mixed_cell_types": cluster.possible_mixed_cell_types,
        "num_markers": len(cluster.markers),
    }
    return json.dumps(answer, ensure_ascii=False, indent=2)
