"""Score predicted cell types against known labels with the Cell Ontology's hierarchy.

Each cluster gets two scores from the same comparison of Cell Ontology terms
(:meth:`cassia_sc.ontology.CellOntology.similarity`, the predicted term against the true
one):

- ``score_100``, from 0 to 100, comparable to the CASSIA paper's judge: the same term 100,
  a correct and more specific answer 90, a broader but right one 80 down to 50, a close
  relative or a lineage link (a plasma cell for a B cell) 80 down to 50, unrelated 0;
- ``score``, 1 / 0.5 / 0 (``grade`` full / partial / wrong), the GPTCelltype and CASSIA
  papers' scoring: 1 for the same term, 0.5 for ``score_100`` of 50 or more, else 0.

Labels are mapped with the run's tissue. A truth such as "Pericyte/SMC" that maps to no
term as a whole (a mixture) is scored by its best part. When either label has no term, the
two count as the same only if their normalised text is the same. Rows the ontology could
not relate (``related`` is False: ``relation`` is ``"unmapped"`` or ``"unrelated"``) are
where a reader, or a model judge, has the last word.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ._keys import Key
from .ontology import CellOntology, OntologyMatch, cell_ontology, state_kinds
from .results import h5_safe_frame

EVALUATION_COLUMNS = [
    "cluster",
    "truth",
    "predicted",
    "truth_term_id",
    "truth_term_label",
    "predicted_term_id",
    "predicted_term_label",
    "score",
    "grade",
    "score_100",
    "relation",
    "related",
    "truth_state",
    "predicted_state",
    "truth_broader",
    "predicted_broader",
]
_GRADES = {1.0: "full", 0.5: "partial", 0.0: "wrong"}
_CELL = "CL:0000000"  # "cell": what a label of state only maps to


def score_labels(
    predicted: Sequence[str | None],
    truth: Sequence[str],
    *,
    clusters: Sequence[str] | None = None,
    tissue: str | Sequence[str | None] | None = None,
) -> pd.DataFrame:
    """Score each predicted label against its true label, row by row.

    Parameters
    ----------
    predicted
        Predicted cell types (None or "" for a cluster without an answer, which scores 0).
    truth
        The known cell types, in the same order.
    clusters
        Names of the rows; by default ``"0"``, ``"1"``, ...
    tissue
        The tissue, one for all rows or one per row: chooses between Cell Ontology terms
        that differ by organ ("Interstitial fibroblast" in the kidney).

    Returns
    -------
    pandas.DataFrame
        The columns of :data:`EVALUATION_COLUMNS`: the labels, the Cell Ontology term and
        label each mapped to (``"unknown"`` when none fits), ``score`` (1, 0.5 or 0),
        ``grade`` (``full``, ``partial`` or ``wrong``), ``score_100`` (0 to 100),
        ``relation`` (how the predicted term relates to the true one: ``same term``,
        ``more specific``, ``broader``, ``relative``, ``lineage``, ``overlap``,
        ``unrelated``, ``same text``, ``unmapped`` or ``no answer``), ``related`` (whether
        the ontology or the text found them related), each label's state (``"Activated"``,
        see :attr:`cassia_sc.ontology.OntologyMatch.state`) and whether its term is broader
        than it says.

    Raises
    ------
    OntologyUnavailable
        Without the ``cassia-sc[ontology]`` extra.

    Examples
    --------
    >>> from cassia_sc.evaluation import score_labels
    >>> table = score_labels(["B cells", "Plasma cells"], ["B cell", "B cell"])  # doctest: +SKIP
    >>> table[["score", "score_100", "relation"]].values.tolist()  # doctest: +SKIP
    [[1.0, 100.0, 'same term'], [0.5, 80.0, 'lineage']]
    """
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions for {len(truth)} true labels.")
    tissues = _per_row(tissue, len(truth))
    ontology = cell_ontology()
    rows = []
    for index, (answer, known, where) in enumerate(zip(predicted, truth, tissues, strict=True)):
        said = _text(answer)
        known = _text(known)
        t = ontology.match(known, tissue=where)
        p = ontology.match(said, tissue=where) if said else None
        score_100, relation = _compare(ontology, said, known, p, t, where)
        score = 1.0 if score_100 == 100 else 0.5 if score_100 >= 50 else 0.0
        rows.append(
            {
                "cluster": str(clusters[index]) if clusters is not None else str(index),
                "truth": known,
                "predicted": said,
                "truth_term_id": t.term_id,
                "truth_term_label": t.term_label,
                "predicted_term_id": p.term_id if p else "",
                "predicted_term_label": p.term_label if p else "",
                "score": score,
                "grade": _GRADES[score],
                "score_100": score_100,
                "relation": relation,
                "related": score_100 > 0,
                "truth_state": t.state,
                "predicted_state": p.state if p else "",
                "truth_broader": t.broader,
                "predicted_broader": p.broader if p else False,
            }
        )
    return pd.DataFrame(rows, columns=EVALUATION_COLUMNS)


def _compare(
    ontology: CellOntology,
    said: str,
    known: str,
    predicted: OntologyMatch | None,
    truth: OntologyMatch,
    tissue: str | None,
) -> tuple[float, str]:
    """``score_100`` and ``relation`` of one row."""
    if predicted is None:
        return 0.0, "no answer"
    truths = [truth] if truth.mapped else []
    if not truths and "/" in known:  # a mixture: the best of its parts
        parts = (ontology.match(part, tissue=tissue) for part in known.split("/"))
        truths = [part for part in parts if part.mapped]
    if predicted.mapped and truth.term_id == _CELL and truth.state:
        # "Cycling cell": a state and no type. An answer that names the same state with a
        # type ("Cycling B cells") is right and more specific.
        wanted = state_kinds(truth.state)
        named = state_kinds(predicted.state) | state_kinds(predicted.term_label)
        if predicted.term_id != _CELL and wanted & named:
            return 90.0, "more specific"
    if predicted.mapped and truths:
        scored = [(ontology.similarity(t.term_id, predicted.term_id), t.term_id) for t in truths]
        score, term = max(scored)
        return score, ontology.relation_kind(term, predicted.term_id)
    if same_text(said, known):
        return 100.0, "same text"
    return 0.0, "unmapped"


def summarize(table: pd.DataFrame) -> dict[str, Any]:
    """Return the mean scores and the number of full, partial and wrong calls.

    Parameters
    ----------
    table
        From :func:`score_labels`.

    Returns
    -------
    dict
        ``mean`` (of ``score``), ``mean_100`` (of ``score_100``, when the table has it),
        ``n``, ``full``, ``partial``, ``wrong``.

    Examples
    --------
    >>> import pandas as pd
    >>> summarize(pd.DataFrame({"score": [1.0, 0.5, 0.0, 1.0]}))
    {'mean': 0.625, 'n': 4, 'full': 2, 'partial': 1, 'wrong': 1}
    >>> summarize(pd.DataFrame({"score": [1.0, 0.5], "score_100": [100.0, 80.0]}))["mean_100"]
    90.0
    """
    scores = table["score"].to_numpy(dtype=float)
    summary: dict[str, Any] = {"mean": float(scores.mean()) if scores.size else float("nan")}
    if "score_100" in table.columns:
        hundred = table["score_100"].to_numpy(dtype=float)
        summary["mean_100"] = float(hundred.mean()) if hundred.size else float("nan")
    return summary | {
        "n": int(scores.size),
        "full": int(np.sum(scores == 1.0)),
        "partial": int(np.sum(scores == 0.5)),
        "wrong": int(np.sum(scores == 0.0)),
    }


def evaluate_frame(
    frame: pd.DataFrame,
    *,
    truth_column: str | None = None,
    predicted_column: str = Key.csv.main_cell_type,
    cluster_column: str | None = Key.csv.cluster,
    truth: Mapping[str, str] | pd.Series | pd.DataFrame | None = None,
    tissue: str | None = None,
    tissue_column: str | None = Key.csv.tissue,
) -> pd.DataFrame:
    """Score a table with a predicted cell type per row against the truth.

    For example a ``runCASSIA_batch`` summary against the marker table's truth column, as
    for the CASSIA benchmark's ``marker100.csv``. The truth is either a column of ``frame``
    itself (each row's own), or ``truth``, joined to the rows by cluster name: never by
    position, so the rows may come in any order.

    Parameters
    ----------
    frame
        One row per cluster.
    truth_column
        The known cell type: a column of ``frame`` when ``truth`` is None, else the column
        of the ``truth`` table.
    predicted_column
        The predicted cell type.
    cluster_column
        Names of the rows (and the column ``truth`` is joined on), or None.
    truth
        The known cell type of each cluster by name: a mapping or Series (cluster name to
        cell type), or a table with ``cluster_column`` (or its index) and ``truth_column``.
    tissue
        The tissue of rows whose ``tissue_column`` is missing or empty.
    tissue_column
        The tissue of each row (the summary's ``Tissue``), when ``frame`` has it.

    Returns
    -------
    pandas.DataFrame
        :func:`score_labels`'s table, in ``frame``'s row order.

    Raises
    ------
    KeyError
        A column is missing, or a cluster has no truth.
    ValueError
        ``truth`` gives one cluster two different labels.

    Examples
    --------
    >>> import cassia_sc
    >>> summary = cassia_sc.runCASSIA_batch(  # doctest: +SKIP
    ...     markers, "run", model=model, tissue=None
    ... )
    >>> known = {"0": "B cell", "1": "CD8 T cell"}  # cluster name -> true cell type
    >>> table = cassia_sc.evaluate_frame(summary, truth=known)  # doctest: +SKIP
    """
    needed = [predicted_column, *([cluster_column] if cluster_column else [])]
    if truth is None:
        if truth_column is None:
            raise KeyError("Give truth_column (a column of the table) or truth (by cluster).")
        needed.append(truth_column)
    for column in needed:
        if column not in frame.columns:
            raise KeyError(f"{column!r} is not a column; the table has {list(frame.columns)}.")
    predicted = [_text(value) for value in frame[predicted_column]]
    clusters = frame[cluster_column].astype(str).tolist() if cluster_column else None
    if truth is None:
        known = [_text(value) for value in frame[truth_column]]
    else:
        if clusters is None:
            raise KeyError("Joining the truth by cluster needs cluster_column.")
        by_name = _truth_by_name(truth, truth_column, cluster_column)
        missing = [c for c in dict.fromkeys(clusters) if c not in by_name]
        if missing:
            raise KeyError(f"No truth for clusters {missing[:10]}.")
        known = [by_name[c] for c in clusters]
    tissues: list[str | None] = [tissue] * len(frame)
    if tissue_column and tissue_column in frame.columns:
        tissues = [_text(value) or tissue for value in frame[tissue_column]]
    return score_labels(predicted, known, clusters=clusters, tissue=tissues)


def _truth_by_name(
    truth: Mapping[str, str] | pd.Series | pd.DataFrame, column: str | None, cluster: str
) -> dict[str, str]:
    if isinstance(truth, pd.DataFrame):
        if column is None or column not in truth.columns:
            raise KeyError(f"truth_column {column!r} is not a column of the truth table.")
        names = truth[cluster] if cluster in truth.columns else truth.index.to_series()
        pairs = zip(names.astype(str), truth[column], strict=True)
    else:
        items = truth.items()
        pairs = ((str(name), label) for name, label in items)
    by_name: dict[str, str] = {}
    for name, label in pairs:
        label = _text(label)
        if by_name.setdefault(name, label) != label:
            raise ValueError(f"Cluster {name!r} has two true labels: {by_name[name]!r}, {label!r}.")
    return by_name


def evaluation_record(table: pd.DataFrame) -> dict[str, Any]:
    """Return what ``tl.evaluate`` stores in ``uns``: the table, the means and the counts.

    Parameters
    ----------
    table
        From :func:`score_labels`.

    Returns
    -------
    dict
        ``table`` (safe for ``write_h5ad``), ``mean``, ``mean_100`` (when the table has
        ``score_100``), ``n``, ``full``, ``partial``, ``wrong``.

    Examples
    --------
    >>> import pandas as pd
    >>> evaluation_record(pd.DataFrame({"score": [1.0, 0.0]}))["mean"]
    0.5
    """
    return {"table": h5_safe_frame(table), **summarize(table)}


def same_text(a: str, b: str) -> bool:
    """Tell whether two labels read the same, ignoring case, punctuation and plural -s.

    Parameters
    ----------
    a, b
        The labels.

    Returns
    -------
    bool
        Whether they are the same once normalised.

    Examples
    --------
    >>> same_text("T cells", "t-cell")
    True
    """
    return _normalised(a) == _normalised(b)


def _normalised(label: str) -> str:
    words = re.sub(r"[^a-z0-9+]+", " ", str(label).lower()).split()
    return " ".join(w[:-1] if len(w) > 3 and w.endswith("s") else w for w in words)


def _text(value: object) -> str:
    """Return a label as text: None and NaN (empty table cells) as ""."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    return str(value)


def _per_row(tissue: str | Sequence[str | None] | None, n: int) -> list[str | None]:
    if tissue is None or isinstance(tissue, str):
        return [tissue] * n
    tissues = [_text(value) or None for value in tissue]
    if len(tissues) != n:
        raise ValueError(f"{len(tissues)} tissues for {n} rows.")
    return tissues
