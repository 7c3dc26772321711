"""Turn untrusted LLM reply text into typed answers, without any network or model call.

A model reply is free text: step-by-step reasoning that should end with one JSON object
(the annotation), or a validator's verdict. Nothing here evaluates the text; JSON is read
with :mod:`json` only, and every repair is tried on a copy and kept only when it parses.

Public API
----------
:func:`extract_json_object`
    Recover one JSON object from a reply (fenced, bare, in prose, lightly broken).
:class:`Annotation`, :func:`parse_annotation`
    Normalise a recovered object to the annotation contract.
:class:`Verdict`, :func:`parse_verdict`
    Read a validator's pass/fail verdict and its feedback.
:func:`unsupported_markers`
    Cited key markers that are absent from the cluster's marker list.
:class:`Score`, :func:`parse_score`
    Read a judge's 0-100 grade and its reasoning.
:func:`parse_gene_request`
    The genes a reply asks to look up in the data.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Annotation",
    "Score",
    "Verdict",
    "extract_json_object",
    "parse_annotation",
    "parse_gene_request",
    "parse_score",
    "parse_verdict",
    "unsupported_markers",
]

# --------------------------------------------------------------------------- JSON recovery

#: A fenced block: ``` or ~~~ (three or more), an optional info word such as "json" in any
#: case, an optional newline, then the body up to the same fence. The info word cannot
#: swallow a "{", so ```{...}``` and ```json{...}``` both work.
_FENCE = re.compile(
    r"(?P<fence>`{3,}|~{3,})[ \t]*[A-Za-z0-9_+.-]*[ \t]*\n?(?P<body>.*?)(?P=fence)",
    re.DOTALL,
)
#: A closing fence left at the very end, after an object whose closers are missing.
_TRAILING_FENCE = re.compile(r"\s*(?:`{3,}|~{3,})\s*\Z")
#: A whole JSON string (the "closed" group is empty when the text ends inside it), or a
#: bracket. Walking these tokens steps over strings at C speed.
_BRACKET_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?P<closed>"?)|[{}\[\]]', re.DOTALL)
#: A whole JSON string (kept as is), or a comma right before a closer (a trailing comma).
_TRAILING_COMMA = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|,(?=\s*[}\]])', re.DOTALL)
#: Typographic double quotes a model may use as JSON quotes; one char each, so a repaired
#: copy keeps every offset of the original.
_SMART_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"'})
#: Where an object can start: "{" then a key's quote (typographic ones too, for the repair
#: pass) or "}". Prose braces such as "{CD3D, CD3E}" are passed over without a decode.
_OBJECT_START = re.compile(r'\{\s*["}\u201c\u201d\u201e\u201f]')
#: Each failed decode costs up to the length of the reply (json counts lines for its error
#: message), and each repair a walk to the end; these bound a degenerate reply's cost.
_MAX_FAILED_STARTS = 1000
_REPAIR_BUDGET = 300_000

_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class _Found:
    """One outermost JSON object found in the reply, with its span in the reply."""

    start: int
    end: int
    obj: dict
    repaired: bool


@dataclass(frozen=True)
class _Brackets:
    """Result of a string-aware bracket walk that starts at a "{"."""

    end: int | None  # one past the matching "}", or None when the text ends first
    closers: tuple[str, ...]  # closers still owed when the text ended, innermost last
    in_string: bool  # the text ended inside a string
    broken: bool  # a closer did not match its opener


def extract_json_object(text: str | None) -> dict | None:
    """Recover one JSON object from a model reply.

    A strict pass decodes the outermost objects of the reply as they stand. The object
    returned is the last one inside a fenced block (three or more backticks or tildes,
    with or without an info word such as ``json`` in any case, with or without a newline
    after it) when there is one, otherwise the last one anywhere: models end with their
    final answer. Line endings may be CRLF.

    Only when the strict pass leaves something unread are repairs tried, on a copy:
    trailing commas before ``}`` or ``]``, typographic double quotes used as JSON quotes,
    and closers missing at the very end of a truncated reply. A repaired object replaces
    the strict choice only when it encloses it (the strict pass found an inner object of
    a broken outer one), or when it is fenced and the strict choice is not.

    Parameters
    ----------
    text
        The raw reply. ``None``, empty and whitespace-only replies are accepted.

    Returns
    -------
    dict or None
        The recovered object, or ``None`` when no object can be recovered.
    """
    if not isinstance(text, str) or not text.strip():
        return None
    text = _normalise_newlines(text)
    fences = [match.span("body") for match in _FENCE.finditer(text)]

    strict, unread = _strict_scan(text)
    if not strict:
        return _pick(_repair_scan(text), fences)
    chosen = _choose(strict, fences)
    if not unread:
        return chosen.obj
    repaired = [found for found in _repair_scan(text) if found.repaired]
    # A broken outer object whose repair encloses the strict choice: the strict pass
    # only saw one of its inner objects.
    for found in repaired:
        if found.start < chosen.start and found.end >= chosen.end:
            return found.obj
    if not _in_fence(chosen, fences):
        fenced = [found for found in repaired if _in_fence(found, fences)]
        if fenced:
            return fenced[-1].obj
    return chosen.obj


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _in_fence(found: _Found, fences: list[tuple[int, int]]) -> bool:
    return any(start <= found.start < end for start, end in fences)


def _choose(found: list[_Found], fences: list[tuple[int, int]]) -> _Found:
    fenced = [item for item in found if _in_fence(item, fences)]
    return (fenced or found)[-1]


def _pick(found: list[_Found], fences: list[tuple[int, int]]) -> dict | None:
    return _choose(found, fences).obj if found else None


def _strict_scan(text: str) -> tuple[list[_Found], bool]:
    """Outermost objects that decode as they stand, and whether any opener did not."""
    found: list[_Found] = []
    unread = False
    failures = 0
    start = _OBJECT_START.search(text)
    while start is not None and failures < _MAX_FAILED_STARTS:
        hit = _decode_at(text, start.start())
        if hit is None:
            unread = True
            failures += 1
            start = _OBJECT_START.search(text, start.start() + 1)
        else:
            found.append(hit)
            # Skip what the object covers, so inner objects are never reported.
            start = _OBJECT_START.search(text, hit.end)
    return found, unread


def _decode_at(text: str, start: int) -> _Found | None:
    try:
        obj, end = _DECODER.raw_decode(text, start)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        return None
    return _Found(start, end, obj, repaired=False) if isinstance(obj, dict) else None


def _repair_scan(text: str) -> list[_Found]:
    """Outermost objects, decoded as they stand where possible, repaired where not."""
    variants = [text]
    smart = text.translate(_SMART_QUOTES)
    if smart != text:
        variants.append(smart)
    budget = _Budget(_REPAIR_BUDGET)
    found: list[_Found] = []
    attempts = 0
    start = _OBJECT_START.search(text)
    # Every start counts here, as each repaired one also paid for a failed decode first.
    while start is not None and attempts < _MAX_FAILED_STARTS and budget.left > 0:
        attempts += 1
        hit = _decode_at(text, start.start()) or _repair_at(variants, start.start(), budget)
        if hit is None:
            start = _OBJECT_START.search(text, start.start() + 1)
        else:
            found.append(hit)
            start = _OBJECT_START.search(text, hit.end)
    return found


class _Budget:
    """Bracket tokens the repair pass may still walk.

    A degenerate reply (``{{{{...``) would otherwise cost a walk to its end from each of
    its openers.
    """

    def __init__(self, tokens: int) -> None:
        self.left = tokens


def _repair_at(variants: list[str], start: int, budget: _Budget) -> _Found | None:
    walks = [_walk_brackets(variant, start, budget) for variant in variants]
    # Complete objects first: closing a truncated reply is the last resort.
    for variant, walk in zip(variants, walks, strict=True):
        if walk.end is not None:
            obj = _loads_dict(_drop_trailing_commas(variant[start : walk.end]))
            if obj is not None:
                return _Found(start, walk.end, obj, repaired=True)
    for variant, walk in zip(variants, walks, strict=True):
        # Closers cannot end a cut-off string (and must not: a cut value would pass for a
        # whole one), so a reply cut inside a string is not tried.
        if walk.end is None and walk.closers and not walk.broken and not walk.in_string:
            # A model that lost its last brace may still have closed its fence.
            tail = _TRAILING_FENCE.sub("", variant[start:])
            obj = _loads_dict(_drop_trailing_commas(tail + "".join(reversed(walk.closers))))
            if obj is not None:
                return _Found(start, len(variant), obj, repaired=True)
    return None


def _walk_brackets(text: str, start: int, budget: _Budget) -> _Brackets:
    """Follow brackets from the "{" at ``start``, stepping over whole strings."""
    owed: list[str] = []
    for token in _BRACKET_TOKEN.finditer(text, start):
        budget.left -= 1
        if budget.left < 0:
            return _Brackets(None, (), False, broken=True)
        char = token.group()
        if char[0] == '"':
            if not token.group("closed"):
                return _Brackets(None, tuple(owed), True, broken=False)
        elif char in "{[":
            owed.append("}" if char == "{" else "]")
        else:
            if not owed or owed.pop() != char:
                return _Brackets(None, tuple(owed), False, broken=True)
            if not owed:
                return _Brackets(token.end(), (), False, broken=False)
    return _Brackets(None, tuple(owed), False, broken=False)


def _drop_trailing_commas(span: str) -> str:
    """Blank out the commas that sit right before a closer, outside strings."""
    return _TRAILING_COMMA.sub(lambda m: m.group() if m.group()[0] == '"' else " ", span)


def _loads_dict(candidate: str) -> dict | None:
    try:
        obj = json.loads(candidate)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


# --------------------------------------------------------------------------- annotations

#: Canonical field -> accepted keys, in priority order (the canonical name first).
_ANNOTATION_ALIASES: dict[str, tuple[str, ...]] = {
    "main_cell_type": (
        "main_cell_type",
        "main_celltype",
        "cell_type",
        "celltype",
        "main_type",
        "general_cell_type",
        "predicted_cell_type",
    ),
    "sub_cell_types": (
        "sub_cell_types",
        "subtypes",
        "sub_types",
        "subcell_types",
        "detailed_cell_types",
        "cell_subtypes",
    ),
    "possible_mixed_cell_types": (
        "possible_mixed_cell_types",
        "mixed_cell_types",
        "possible_mixed",
        "mixed",
    ),
    "key_markers": ("key_markers", "markers", "supporting_markers", "key_genes"),
    "possible_tissues": ("possible_tissues", "tissues", "tissue"),
}
#: Keys under which a model may wrap the whole annotation when it is not the only key.
_WRAPPER_KEYS = (
    "annotation",
    "final_annotation",
    "result",
    "final_result",
    "final_answer",
    "answer",
    "output",
    "prediction",
    "cell_annotation",
)
#: A list item inside a list field may itself be an object; these keys name its type.
_ITEM_NAME_KEYS = (*_ANNOTATION_ALIASES["main_cell_type"], "name", "type", "label")
#: Values that say "nothing" rather than name something.
_PLACEHOLDERS = frozenset({"none", "n/a", "null", "nan"})
_LIST_SPLIT = re.compile(r"[,;]")
_KEY_NOISE = re.compile(r"[\s_\-]+")
MAX_SUB_CELL_TYPES = 3


@dataclass(frozen=True)
class Annotation:
    """One cluster's annotation, as the annotator's JSON gives it.

    Attributes
    ----------
    main_cell_type
        The general cell type; ``"Unknown"`` is a legitimate honest answer.
    sub_cell_types
        Ranked subtypes, most likely first, at most three.
    possible_mixed_cell_types
        Cell types that may be mixed into the cluster.
    key_markers
        The markers the model says it relied on.
    possible_tissues
        Tissues the model suggests; empty unless given.
    """

    main_cell_type: str
    sub_cell_types: tuple[str, ...] = ()
    possible_mixed_cell_types: tuple[str, ...] = ()
    key_markers: tuple[str, ...] = ()
    possible_tissues: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Lists passed by a caller become tuples, so the frozen instance is truly immutable.
        for field in (
            "sub_cell_types",
            "possible_mixed_cell_types",
            "key_markers",
            "possible_tissues",
        ):
            object.__setattr__(self, field, tuple(getattr(self, field)))

    def to_dict(self) -> dict:
        """Return the annotation as a JSON-ready dict, with lists for the list fields.

        Returns
        -------
        dict
            The five fields under their canonical names.
        """
        return {
            "main_cell_type": self.main_cell_type,
            "sub_cell_types": list(self.sub_cell_types),
            "possible_mixed_cell_types": list(self.possible_mixed_cell_types),
            "key_markers": list(self.key_markers),
            "possible_tissues": list(self.possible_tissues),
        }


def parse_annotation(obj: dict | None) -> Annotation | None:
    """Normalise a recovered JSON object to an :class:`Annotation`.

    Keys match case-insensitively, ignoring spaces, hyphens and underscores, and each
    field has aliases (``cell_type`` for ``main_cell_type``, ``markers`` for
    ``key_markers``, ...); the canonical name wins when several are present. List fields
    accept a list or a string split on commas and semicolons; items are stripped, and
    empty items, placeholders (``none``, ``n/a``, ``null``, ``nan``) and case-insensitive
    duplicates are dropped. ``main_cell_type`` keeps a string whole and takes the first
    usable item of a list. An object whose only key holds the annotation, or that wraps
    it under a key such as ``annotation``, ``result`` or ``final_annotation``, is read
    one level down.

    Parameters
    ----------
    obj
        The object :func:`extract_json_object` recovered, or ``None``.

    Returns
    -------
    Annotation or None
        ``None`` when there is no usable ``main_cell_type`` (missing, empty or a
        placeholder); ``"Unknown"`` is kept as an answer.
    """
    if not isinstance(obj, dict):
        return None
    annotation = _annotation_from(obj)
    if annotation is not None:
        return annotation
    for inner in _wrapped(obj):
        annotation = _annotation_from(inner)
        if annotation is not None:
            return annotation
    return None


def _norm_key(key: object) -> str:
    return _KEY_NOISE.sub("", str(key)).lower()


def _index(obj: dict) -> dict[str, Any]:
    index: dict[str, Any] = {}
    for key, value in obj.items():
        index.setdefault(_norm_key(key), value)  # two spellings of one key: first wins
    return index


def _wrapped(obj: dict) -> list[dict]:
    """Objects one level down that may hold the annotation, most likely first."""
    if len(obj) == 1:
        (value,) = obj.values()
        return [value] if isinstance(value, dict) else []
    index = _index(obj)
    return [
        index[_norm_key(key)]
        for key in _WRAPPER_KEYS
        if isinstance(index.get(_norm_key(key)), dict)
    ]


def _annotation_from(obj: dict) -> Annotation | None:
    index = _index(obj)
    main = None
    for alias in _ANNOTATION_ALIASES["main_cell_type"]:
        if _norm_key(alias) in index:
            main = _as_name(index[_norm_key(alias)])
            if main is not None:
                break
    if main is None:
        return None
    lists = {
        field: _first_list(index, aliases)
        for field, aliases in _ANNOTATION_ALIASES.items()
        if field != "main_cell_type"
    }
    return Annotation(
        main_cell_type=main,
        sub_cell_types=lists["sub_cell_types"][:MAX_SUB_CELL_TYPES],
        possible_mixed_cell_types=lists["possible_mixed_cell_types"],
        key_markers=lists["key_markers"],
        possible_tissues=lists["possible_tissues"],
    )


def _first_list(index: dict[str, Any], aliases: tuple[str, ...]) -> tuple[str, ...]:
    for alias in aliases:
        key = _norm_key(alias)
        if key in index:
            items = _as_list(index[key])
            if items:
                return items
    return ()


def _as_name(value: Any) -> str | None:
    """One usable name from a scalar, a list (its first usable item) or an object."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, dict):
        index = _index(value)
        for key in _ITEM_NAME_KEYS:
            name = index.get(_norm_key(key))
            if isinstance(name, str | int | float) and not isinstance(name, bool):
                return _as_name(name)
        return None
    if isinstance(value, list | tuple):
        for item in value:
            name = _as_name(item)
            if name is not None:
                return name
        return None
    name = str(value).strip()
    return None if not name or name.lower() in _PLACEHOLDERS else name


def _flatten(items: Iterable[Any]) -> Iterable[Any]:
    # [["CD3D", "CD3E"], "IL7R"]: a model grouping its markers still cited each one.
    for item in items:
        if isinstance(item, list | tuple):
            yield from _flatten(item)
        else:
            yield item


def _as_list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        raw: Iterable[Any] = _LIST_SPLIT.split(value)
    elif isinstance(value, list | tuple):
        raw = value
    else:
        raw = [value]
    items: list[str] = []
    seen: set[str] = set()
    for item in _flatten(raw):
        name = _as_name(item)
        if name is not None and name.casefold() not in seen:
            seen.add(name.casefold())
            items.append(name)
    return tuple(items)


# --------------------------------------------------------------------------- verdicts

#: Keys whose value is a verdict word, then keys whose value is a boolean, by priority.
_VERDICT_KEYS = ("verdict", "decision", "result", "status", "validation")
_BOOLEAN_KEYS = ("passed", "pass", "valid")
_FEEDBACK_KEYS = ("feedback", "comments", "reason", "reasons", "explanation", "issues")
_VERDICT_WORDS = {
    **dict.fromkeys(
        ("pass", "passed", "passes", "approve", "approved", "accept", "accepted", "valid", "true"),
        True,
    ),
    **dict.fromkeys(
        ("fail", "failed", "fails", "reject", "rejected", "invalid", "revise", "false"), False
    ),
}
#: Words a model may put before the verdict word itself ("Validation: passed").
_VERDICT_FILLER = frozenset({"validation", "verdict", "result", "status", "final", "decision"})
_WORD = re.compile(r"[a-z]+")
#: Keyword verdicts in free text: "VALIDATION PASSED" anywhere, or a "Verdict: FAIL" line
#: (markdown emphasis and headings around the words are allowed).
_KEYWORD_VERDICT = re.compile(
    r"\bvalidation[^\w\n]*(?P<phrase>passed|failed)\b"
    r"|^[^\w\n]*(?:final[ \t]+)?verdict[^\w\n]*[:\-][^\w\n]*(?P<line>pass(?:ed)?|fail(?:ed)?)\b",
    re.IGNORECASE | re.MULTILINE,
)
MAX_FEEDBACK_CHARS = 2000


@dataclass(frozen=True)
class Verdict:
    """A validator's verdict.

    Attributes
    ----------
    passed
        ``True`` for pass, ``False`` for fail, ``None`` when the reply was unreadable.
    feedback
        What the validator said, for the annotator's revision and for the record.
    """

    passed: bool | None
    feedback: str


def parse_verdict(text: str | None) -> Verdict:
    """Read a validator's reply into a :class:`Verdict`.

    A JSON verdict is read first: a verdict word under ``verdict``, ``decision``,
    ``result``, ``status`` or ``validation`` (pass, passed, approve(d), accept(ed), valid,
    true; fail, failed, reject(ed), invalid, revise, false; any case), or a boolean
    under ``passed``, ``pass`` or ``valid``; also one level down. Its feedback comes from
    ``feedback``, ``comments``, ``reason(s)``, ``explanation`` or ``issues`` (a list is
    joined with ``"; "``), or, when none is given, from the whole reply. Without a JSON
    verdict, "VALIDATION PASSED"/"VALIDATION FAILED" or a "Verdict: PASS"/"Verdict: FAIL"
    line decides, the last one in the text winning, and the whole reply is the feedback.

    Parameters
    ----------
    text
        The raw validator reply, or ``None``.

    Returns
    -------
    Verdict
        With ``passed=None`` and the stripped reply as feedback when no verdict is found.
        Feedback taken from the whole reply is cut to 2000 characters.
    """
    if not isinstance(text, str) or not text.strip():
        return Verdict(None, "")
    text = _normalise_newlines(text).strip()
    whole = text[:MAX_FEEDBACK_CHARS]

    obj = extract_json_object(text)
    if obj is not None:
        found = _json_verdict(obj, nested=True)
        if found is not None:
            passed, feedback = found
            return Verdict(passed, feedback or whole)

    matches = list(_KEYWORD_VERDICT.finditer(text))
    if matches:
        word = matches[-1].group("phrase") or matches[-1].group("line")
        return Verdict(word.lower().startswith("pass"), whole)
    return Verdict(None, text)


def _json_verdict(obj: dict, *, nested: bool) -> tuple[bool, str] | None:
    index = _index(obj)
    passed = None
    for key in _VERDICT_KEYS + _BOOLEAN_KEYS:
        passed = _as_passed(index.get(key))
        if passed is not None:
            break
    if passed is None:
        if not nested:
            return None
        # {"validation": {"result": "fail", ...}}: one level down, feedback from either.
        for value in obj.values():
            if isinstance(value, dict):
                found = _json_verdict(value, nested=False)
                if found is not None:
                    return found[0], found[1] or _feedback(index)
        return None
    return passed, _feedback(index)


def _as_passed(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if not isinstance(value, str):
        return None
    words = [word for word in _WORD.findall(value.lower()) if word not in _VERDICT_FILLER]
    return _VERDICT_WORDS.get(words[0]) if words else None


def _feedback(index: dict[str, Any]) -> str:
    for key in _FEEDBACK_KEYS:
        value = index.get(key)
        if isinstance(value, list | tuple):
            text = "; ".join(str(item).strip() for item in value if str(item).strip())
        elif value is None:
            text = ""
        elif isinstance(value, dict):  # JSON, not a Python repr, for whoever reads it next
            text = json.dumps(value, ensure_ascii=False)
        else:
            text = str(value).strip()
        if text:
            return text
    return ""


# --------------------------------------------------------------------------- markers


def unsupported_markers(
    key_markers: Iterable[str] | str, marker_list: Iterable[str] | str
) -> list[str]:
    """Return the cited key markers that are not in the cluster's marker list.

    Parameters
    ----------
    key_markers
        Markers the model cited; a string is split on commas and semicolons.
    marker_list
        The markers the model was given; a string is split the same way.

    Returns
    -------
    list of str
        Cited markers absent from ``marker_list``, compared case-insensitively and
        ignoring surrounding whitespace; stripped, in citation order, each once.
    """
    given = {marker.casefold() for marker in _marker_names(marker_list)}
    missing: list[str] = []
    seen: set[str] = set()
    for marker in _marker_names(key_markers):
        folded = marker.casefold()
        if folded not in given and folded not in seen:
            seen.add(folded)
            missing.append(marker)
    return missing


def _marker_names(markers: Iterable[str] | str) -> list[str]:
    # A bare string would otherwise be iterated character by character.
    raw = _LIST_SPLIT.split(markers) if isinstance(markers, str) else markers
    return [str(marker).strip() for marker in raw if marker is not None and str(marker).strip()]


# --------------------------------------------------------------------------- scores

_SCORE_KEYS = ("score", "quality_score", "rating", "grade", "final_score")
_REASONING_KEYS = ("reasoning", "reason", "rationale", "explanation", "justification", "feedback")
#: "Score: 85", "score = 85/100", "<score>85</score>": the last one in the text wins.
_SCORE_IN_TEXT = re.compile(
    r"(?:<score>\s*(?P<tag>\d+(?:\.\d+)?)\s*</score>"
    r"|\bscore\b\s*(?:[:=]|is)\s*\**\s*(?P<line>\d+(?:\.\d+)?)\s*(?:/\s*100\b|%)?)",
    re.IGNORECASE,
)
_LEADING_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*100\b|%|$)")


@dataclass(frozen=True)
class Score:
    """A judge's grade of one annotation.

    Attributes
    ----------
    score
        From 0 to 100.
    reasoning
        Why, in the judge's words.
    """

    score: float
    reasoning: str


def parse_score(text: str | None) -> Score | None:
    """Read a judge's reply into a :class:`Score`.

    A JSON object is read first: a number (or text such as ``"85/100"``) under ``score``,
    ``quality_score``, ``rating``, ``grade`` or ``final_score``, and the reasoning under
    ``reasoning``, ``reason``, ``rationale``, ``explanation``, ``justification`` or
    ``feedback``; also one level down. Without JSON, a ``Score: 85`` line or a
    ``<score>85</score>`` tag, the last one in the text winning, with the whole reply as
    the reasoning.

    Parameters
    ----------
    text
        The raw reply, or ``None``.

    Returns
    -------
    Score or None
        None when no score from 0 to 100 is found.

    Examples
    --------
    >>> parse_score('{"score": "85/100", "reasoning": "Sound."}')
    Score(score=85.0, reasoning='Sound.')
    >>> parse_score("Solid call. Score: 92").score
    92.0
    """
    if not isinstance(text, str) or not text.strip():
        return None
    text = _normalise_newlines(text).strip()
    obj = extract_json_object(text)
    if obj is not None:
        for candidate in (obj, *_wrapped(obj)):
            index = _index(candidate)
            value = next((index[k] for k in map(_norm_key, _SCORE_KEYS) if k in index), None)
            number = _as_score(value)
            if number is not None:
                reasons = (index.get(_norm_key(k)) for k in _REASONING_KEYS)
                reasoning = next((str(r).strip() for r in reasons if r), "")
                return Score(number, reasoning[:MAX_FEEDBACK_CHARS] or text[:MAX_FEEDBACK_CHARS])
    matches = list(_SCORE_IN_TEXT.finditer(text))
    if matches:
        number = _as_score(matches[-1].group("tag") or matches[-1].group("line"))
        if number is not None:
            return Score(number, text[:MAX_FEEDBACK_CHARS])
    return None


def _as_score(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        number = float(value)
    else:
        found = _LEADING_NUMBER.match(str(value))
        if found is None:
            return None
        number = float(found.group(1))
    return number if 0 <= number <= 100 else None


# --------------------------------------------------------------------------- gene requests

_GENE_KEYS = ("genes", "gene_list", "genes_to_check", "requested_genes", "check_genes")


def parse_gene_request(obj: dict | None) -> tuple[str, ...]:
    """Return the genes a reply's JSON object asks to look up, in order, once each.

    Parameters
    ----------
    obj
        The object :func:`extract_json_object` recovered, or ``None``.

    Returns
    -------
    tuple of str
        The symbols under ``genes`` (or ``gene_list``, ``genes_to_check``,
        ``requested_genes``, ``check_genes``), a list or a comma-separated string; empty
        when there are none.

    Examples
    --------
    >>> parse_gene_request({"hypotheses": ["B cell"], "genes": ["MS4A1", "CD79A", "ms4a1"]})
    ('MS4A1', 'CD79A')
    """
    if not isinstance(obj, dict):
        return ()
    index = _index(obj)
    return _first_list(index, _GENE_KEYS)
