"""What a cluster's result holds, declared once: :class:`Field` and the core fields.

A field names one value of a cluster's result and says how it is stored and shown. The
declarations drive the annotator's JSON schema, the table stored in ``uns`` and its
reading back, the summary CSV, the report and ``pl.review``: the core fields in
:data:`CORE_FIELDS`, and those each further step of a pipeline adds (see
:mod:`cassia_sc.agents`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd

from ._keys import Default, Key

#: How a value is stored: text, a list of names, a whole or real number, a flag, a verdict.
Kind = Literal["text", "list", "int", "float", "bool", "verdict"]
#: A validator's verdict by its name in tables.
VALIDATION_NAMES: dict[bool | None, str] = {True: "passed", False: "failed", None: "unknown"}

#: A review cell: severity (-1 does not apply, 0 fine, 1 worth a look, 2 a problem) and text.
Grade = tuple[int, str]


@dataclass(frozen=True)
class Review:
    """How ``pl.review`` shows a field: a column title and a grading of each answered cluster.

    Attributes
    ----------
    title
        The column's title.
    grade
        ``(row, params) -> (severity, text)``, from the cluster's row of the ``uns`` table
        and the run's parameters.
    always
        Show the column even when no cluster has a value (else only when one has).
    """

    title: str
    grade: Callable[[Mapping[str, Any], Mapping[str, Any]], Grade]
    always: bool = True


@dataclass(frozen=True)
class Field:
    """One value of a cluster's result, declared once for every table and file.

    Attributes
    ----------
    name
        Column of the ``uns`` table (and key in the conversations JSON).
    kind
        How it is stored: ``"text"``, ``"list"`` (joined with ``", "`` in tables, see
        :func:`join_list`),
        ``"int"``, ``"float"`` (NaN when missing), ``"bool"`` or ``"verdict"``
        (True/False/None, named ``passed``/``failed``/``unknown`` in tables).
    doc
        What it holds, for the documentation.
    attribute
        The :class:`ClusterResult` attribute, when it differs from ``name``.
    csv
        Its column in the summary CSV, after CASSIA's own; None to leave it out.
    answer
        Part of the annotator's JSON answer (and so of its schema).
    required
        Required in that schema.
    report
        Label of the value on the report's cluster card, for fields added by steps (the
        core fields have their own places on the card).
    review
        How ``pl.review`` shows it, or None.
    default
        Its value before the step that sets it ran.
    """

    name: str
    kind: Kind
    doc: str
    attribute: str | None = None
    csv: str | None = None
    answer: bool = False
    required: bool = False
    report: str | None = None
    review: Review | None = None
    default: Any = None

    @property
    def key(self) -> str:
        """The attribute of :class:`ClusterResult` that holds the value."""
        return self.attribute or self.name

    def to_table(self, value: Any) -> Any:
        """Return ``value`` as the ``uns`` table stores it: text, a number or NaN.

        A list is ``", "``-joined, or JSON when an item holds a comma (see
        :func:`join_list`), so that :meth:`from_table` gives it back equal.
        """
        if self.kind == "list":
            return join_list(value)
        if self.kind == "verdict":
            return VALIDATION_NAMES[value]
        if self.kind == "int":
            return int(value or 0)
        if self.kind == "bool":
            return bool(value)
        if self.kind == "float":
            return math.nan if value is None else float(value)
        return "" if value is None else str(value)

    def to_csv(self, value: Any) -> Any:
        """Return ``value`` as the summary CSV holds it.

        A verdict stays True/False/None; a list is ``", "``-joined, as CASSIA writes it
        and its tools read it.
        """
        if self.kind == "list":
            return Key.list_separator.join(value or ())
        return value if self.kind == "verdict" else self.to_table(value)

    def from_table(self, value: Any) -> Any:
        """Return the value of a stored cell, as :class:`ClusterResult` holds it."""
        if self.kind == "list":
            return split_list(value)
        if self.kind == "verdict":
            return {name: verdict for verdict, name in VALIDATION_NAMES.items()}.get(value)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return self.default
        if self.kind == "int":
            return int(value)
        if self.kind == "bool":
            return bool(value)
        if self.kind == "float":
            return float(value)
        return str(value) if value != "" else self.default

    def schema(self) -> dict[str, Any]:
        """Return the JSON schema of the value, for structured output."""
        if self.kind == "list":
            return {"type": "array", "items": {"type": "string"}}
        kinds = {"int": "integer", "float": "number", "bool": "boolean"}
        return {"type": kinds.get(self.kind, "string")}


def join_list(items: Iterable[Any] | None) -> str:
    """Return a list as text that :func:`split_list` turns back into the same list.

    Items are joined with ``", "``, as CASSIA writes lists, unless that would not come
    back equal: when an item holds a comma (``"CD4+, CD25+ regulatory T cell"``,
    ``"HLA-A,B"``), is empty, has spaces at either end, or the first begins with ``[``,
    the list is written as a JSON array instead.

    Parameters
    ----------
    items
        The list (None for none).

    Returns
    -------
    str
        The text.

    Examples
    --------
    >>> join_list(["CD3D", "CD3E"])
    'CD3D, CD3E'
    >>> join_list(["CD4+, CD25+ regulatory T cell", "Treg"])
    '["CD4+, CD25+ regulatory T cell", "Treg"]'
    """
    items = [str(item) for item in items or ()]
    if any("," in item or item != item.strip() or not item for item in items) or (
        items and items[0].startswith("[")
    ):
        return json.dumps(items, ensure_ascii=False)
    return Key.list_separator.join(items)


def split_list(text: Any) -> list[str]:
    """Turn a stored list back into its items: the one reader of lists in tables.

    Reads what :func:`join_list` writes: a JSON array of strings, or ``", "``-joined
    text (also written so by older versions, and by CASSIA).

    Parameters
    ----------
    text
        The stored text; None or NaN for none.

    Returns
    -------
    list of str
        The items; from joined text stripped, without empty ones.

    Examples
    --------
    >>> split_list("CD3D, CD3E,")
    ['CD3D', 'CD3E']
    >>> split_list('["HLA-A,B", "CD74"]')
    ['HLA-A,B', 'CD74']
    """
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return []
    text = str(text)
    if text.startswith("[") and text.endswith("]"):
        try:
            items = json.loads(text)
        except ValueError:
            items = None
        if isinstance(items, list) and all(isinstance(item, str) for item in items):
            return items
    return [part.strip() for part in text.split(",") if part.strip()]


def _grade_status(row: Mapping[str, Any], params: Mapping[str, Any]) -> Grade:
    return 0, str(row["status"])


def _grade_validation(row: Mapping[str, Any], params: Mapping[str, Any]) -> Grade:
    return {"passed": 0, "unknown": 1}.get(row["validation"], 2), str(row["validation"])


def _grade_unsupported(row: Mapping[str, Any], params: Mapping[str, Any]) -> Grade:
    unsupported = split_list(row["unsupported_markers"])
    return (2 if unsupported else 0), ", ".join(unsupported) or "none"


def _grade_rounds(row: Mapping[str, Any], params: Mapping[str, Any]) -> Grade:
    return (1 if int(row["iterations"]) > 1 else 0), str(int(row["iterations"]))


def _grade_agreement(row: Mapping[str, Any], params: Mapping[str, Any]) -> Grade:
    agreement = float(row["agreement"])
    threshold = float(params.get("agreement_threshold", Default.agreement_threshold))
    return (2 if agreement < threshold else 0), f"{agreement:.0%}".replace("%", " %")


def _text(name: str, doc: str, **options: Any) -> Field:
    return Field(name, "text", doc, **options)


def _list(name: str, doc: str, **options: Any) -> Field:
    return Field(name, "list", doc, default=[], **options)


def _count(name: str, doc: str, **options: Any) -> Field:
    return Field(name, "int", doc, default=0, **options)


#: The fields every pipeline fills, in the order of the ``uns`` table; those with ``csv``
#: follow CASSIA's columns in the summary CSV, in this order.
CORE_FIELDS: tuple[Field, ...] = (
    _text("cluster", "the cluster's name"),
    _text("main_cell_type", "the main cell type", answer=True, required=True),
    _list("sub_cell_types", "up to three subtypes, most likely first", answer=True, required=True),
    _list(
        "possible_mixed_cell_types",
        "other populations the cluster may contain",
        answer=True,
        required=True,
    ),
    _list("markers", "the ranked markers the model was given"),
    _text(
        "status",
        "``ok``, ``failed``, ``implausible`` (an answer that names no cell type) or ``not_run``",
        csv="Status",
        default="not_run",
        review=Review("status", _grade_status),
    ),
    Field(
        "validation",
        "verdict",
        "``passed``, ``failed`` (still rejected after the last round) or ``unknown``",
        attribute="validation_passed",
        csv="Validation Passed",
        review=Review("validation", _grade_validation),
    ),
    _text("validation_feedback", "the validator's last feedback", default=""),
    _list(
        "key_markers",
        "the markers the answer rests on, as cited",
        csv="Key Markers",
        answer=True,
        required=True,
    ),
    _list(
        "unsupported_markers",
        "cited key markers that are not in the cluster's marker list",
        csv="Unsupported Markers",
        review=Review("unsupported markers", _grade_unsupported),
    ),
    _count("iterations", "annotation rounds", review=Review("rounds", _grade_rounds)),
    _count("prompt_tokens", "prompt tokens of the cluster's calls", csv="Prompt Tokens"),
    _count("completion_tokens", "completion tokens of its calls", csv="Completion Tokens"),
    _count("requests", "HTTP requests sent, retries included (0 when all came from the cache)"),
    _count("calls", "model replies used"),
    _count("cached_calls", "of those, served from the cache"),
    _text("error", "why the cluster failed", csv="Error"),
    _list(
        "possible_tissues",
        "tissues of origin (tissue-blind runs)",
        csv="Possible Tissues",
        answer=True,
    ),
    _text(
        "ontology_term_id", "the Cell Ontology term of the main cell type", csv="Ontology Term ID"
    ),
    _text("ontology_label", "that term's label", csv="Ontology Label"),
    Field("ontology_score", "float", "the match score of that term"),
    _text(
        "ontology_method",
        "how the term was found: label, synonym, normalised, fuzzy, model or unmapped",
    ),
    Field(
        "ontology_broader",
        "bool",
        "the term is broader than the label: the exact type has none",
        default=False,
    ),
    _text(
        "cell_state",
        "the state or qualifier taken off the label to find its identity (activated, "
        "cycling, tissue-resident, a segment or a place)",
        csv="Cell State",
        default="",
    ),
    _list("subtype_ontology_term_ids", "the Cell Ontology term of each subtype, in order"),
    Field(
        "agreement",
        "float",
        "after repeated runs: the share of runs agreeing with the answer",
        csv="Agreement",
        review=Review("agreement", _grade_agreement, always=False),
    ),
)


def keyed_text_schema(keys: Sequence[str]) -> dict[str, Any]:
    """Return the JSON schema of a reply that gives one text for each key, and nothing else.

    Parameters
    ----------
    keys
        The keys the reply must have (cluster names, labels).

    Returns
    -------
    dict
        A JSON schema object.

    Examples
    --------
    >>> keyed_text_schema(["0", "1"])["required"]
    ['0', '1']
    """
    return {
        "type": "object",
        "properties": {key: {"type": "string"} for key in keys},
        "required": list(keys),
        "additionalProperties": False,
    }


def answer_schema(declared: Iterable[Field] = CORE_FIELDS) -> dict[str, Any]:
    """Return the JSON schema of the annotator's answer, from the fields declared part of it.

    Parameters
    ----------
    declared
        The fields; those with ``answer=True`` are in the schema.

    Returns
    -------
    dict
        A JSON schema object.

    Examples
    --------
    >>> answer_schema()["required"]
    ['main_cell_type', 'sub_cell_types', 'possible_mixed_cell_types', 'key_markers']
    """
    answer = [f for f in declared if f.answer]
    return {
        "type": "object",
        "properties": {f.name: f.schema() for f in answer},
        "required": [f.name for f in answer if f.required],
    }


def inferred_field(name: str, column: pd.Series) -> Field:
    """Declare a stored column that no known step declares: a number or text.

    Parameters
    ----------
    name
        The column's name.
    column
        Its values.

    Returns
    -------
    Field
        A ``float`` field for a numeric column, else a ``text`` one.
    """
    kind: Kind = "float" if column.dtype.kind in "biuf" else "text"
    return Field(name, kind, "stored by a step this version does not know")
