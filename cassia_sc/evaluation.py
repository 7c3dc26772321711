"""Score predicted cell types against known labels with the Cell Ontology's hierarchy.

Each cluster scores 1 when the prediction and the truth map to the same Cell Ontology
term (synonyms included), 0.5 when one term is an ancestor of the other or they are close
relatives (see :meth:`cassia_sc.ontology.CellOntology.relation`), and 0 otherwise: the
full / partial / wrong scoring of the GPTCelltype and CASSIA papers. When either label has
no term, the two count as the same only if their normalised text is the same.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .ontology import cell_ontology
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
]
_GRADES = {1.0: "full", 0.5: "partial", 0.0: "wrong"}


def score_labels(
    predicted: Sequence[str | None],
    truth: Sequence[str],
    *,
    clusters: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Score each predicted label against its true label.

    Parameters
    ----------
    predicted
        Predicted cell types (None or "" for a cluster without an answer, which scores 0).
    truth
        The known cell types, in the same order.
    clusters
        Names of the rows; by default ``"0"``, ``"1"``, ...

    Returns
    -------
    pandas.DataFrame
        The columns of :data:`EVALUATION_COLUMNS`: the labels, the Cell Ontology term and
        label each mapped to (``"unknown"`` when none fits), ``score`` (1, 0.5 or 0) and
        ``grade`` (``full``, ``partial`` or ``wrong``).

    Raises
    ------
    OntologyUnavailable
        Without the ``cassia-sc[ontology]`` extra.

    Examples
    --------
    >>> from cassia_sc.evaluation import score_labels
    >>> table = score_labels(["B cells", "T cell"], ["B cell", "CD8+ T cell"])  # doctest: +SKIP
    >>> table["score"].tolist()  # doctest: +SKIP
    [1.0, 0.5]
    """
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions for {len(truth)} true labels.")
    ontology = cell_ontology()
    given = [p or "" for p in predicted]
    predicted_terms = ontology.match_many([p or "unannotated" for p in given])
    truth_terms = ontology.match_many(list(truth))
    rows = []
    for index, (said, known, p, t) in enumerate(
        zip(given, truth, predicted_terms, truth_terms, strict=True)
    ):
        if not said:
            score = 0.0
        elif p.term_id != "unknown" and t.term_id != "unknown":
            score = float(ontology.relation(p.term_id, t.term_id))
        else:
            score = float(same_text(said, known))
        rows.append(
            {
                "cluster": str(clusters[index]) if clusters is not None else str(index),
                "truth": known,
                "predicted": said,
                "truth_term_id": t.term_id,
                "truth_term_label": t.term_label,
                "predicted_term_id": p.term_id if said else "",
                "predicted_term_label": p.term_label if said else "",
                "score": score,
                "grade": _GRADES[score],
            }
        )
    return pd.DataFrame(rows, columns=EVALUATION_COLUMNS)


def summarize(table: pd.DataFrame) -> dict[str, Any]:
    """Return the mean score and the number of full, partial and wrong calls.

    Parameters
    ----------
    table
        From :func:`score_labels`.

    Returns
    -------
    dict
        ``mean``, ``n``, ``full``, ``partial``, ``wrong``.

    Examples
    --------
    >>> import pandas as pd
    >>> summarize(pd.DataFrame({"score": [1.0, 0.5, 0.0, 1.0]}))
    {'mean': 0.625, 'n': 4, 'full': 2, 'partial': 1, 'wrong': 1}
    """
    scores = table["score"].to_numpy(dtype=float)
    return {
        "mean": float(scores.mean()) if scores.size else float("nan"),
        "n": int(scores.size),
        "full": int(np.sum(scores == 1.0)),
        "partial": int(np.sum(scores == 0.5)),
        "wrong": int(np.sum(scores == 0.0)),
    }


def evaluate_frame(
    frame: pd.DataFrame,
    *,
    truth_column: str,
    predicted_column: str = "Predicted General Cell Type",
    cluster_column: str | None = "Cluster ID",
) -> pd.DataFrame:
    """Score a table with a predicted and a true cell type per row.

    For example a ``runCASSIA_batch`` summary joined to the marker table's truth column,
    as for the CASSIA benchmark's ``marker100.csv``.

    Parameters
    ----------
    frame
        One row per cluster.
    truth_column
        The known cell type.
    predicted_column
        The predicted cell type.
    cluster_column
        Names of the rows, or None.

    Returns
    -------
    pandas.DataFrame
        :func:`score_labels`'s table.

    Examples
    --------
    >>> import cassia_sc
    >>> summary = cassia_sc.runCASSIA_batch(markers, "run", model, None, "human")  # doctest: +SKIP
    >>> summary["True Cell Type"] = markers["True Cell Type"].to_numpy()  # doctest: +SKIP
    >>> table = cassia_sc.evaluate_frame(summary, truth_column="True Cell Type")  # doctest: +SKIP
    """
    for column in (truth_column, predicted_column, *([cluster_column] if cluster_column else [])):
        if column not in frame.columns:
            raise KeyError(f"{column!r} is not a column; the table has {list(frame.columns)}.")
    predicted = frame[predicted_column].fillna("").astype(str).tolist()
    clusters = frame[cluster_column].astype(str).tolist() if cluster_column else None
    return score_labels(predicted, frame[truth_column].astype(str).tolist(), clusters=clusters)


def evaluation_record(table: pd.DataFrame) -> dict[str, Any]:
    """Return what ``tl.evaluate`` stores in ``uns``: the table, the mean and the counts.

    Parameters
    ----------
    table
        From :func:`score_labels`.

    Returns
    -------
    dict
        ``table`` (safe for ``write_h5ad``), ``mean``, ``n``, ``full``, ``partial``, ``wrong``.

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
