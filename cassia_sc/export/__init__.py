"""Everything written: the files of ``runCASSIA_batch``, and the AnnData writers.

The files are CASSIA's four (the summary and full CSV, the conversations JSON and the HTML
report, each in CASSIA's shape so that CASSIA's own functions read them) and our record
(``_record.json``: settings and every turn with its tokens); the AnnData writers are in
:mod:`cassia_sc.export.adata`. Every writer writes the batch cut to its caps
(:mod:`cassia_sc.export.limits`), and CSV cells that a spreadsheet would run as formulas
are made inert (:func:`csv_text`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
from anndata import AnnData

from .._io import atomic_write_text, spreadsheet_safe
from .._keys import Default, Key
from ..cassia_files import cassia_conversations, history_text
from ..results import BatchResult
from .adata import label_columns, store_result, uns_record
from .limits import bounded
from .report import embedding_png, render_report, report

__all__ = [
    "bounded",
    "csv_text",
    "full_table",
    "label_columns",
    "output_paths",
    "render_report",
    "report",
    "store_result",
    "uns_record",
    "write_outputs",
]


def output_paths(output_name: str | os.PathLike) -> dict[str, Path]:
    """Return the files of ``runCASSIA_batch`` for a path prefix, by kind.

    Parameters
    ----------
    output_name
        The prefix; a ``.csv``, ``.json`` or ``.html`` suffix is dropped, as CASSIA users
        often pass a file name.

    Returns
    -------
    dict[str, pathlib.Path]
        ``summary``, ``full``, ``conversations``, ``report`` and ``record``.

    Examples
    --------
    >>> output_paths("runs/pbmc.csv")["summary"].as_posix()
    'runs/pbmc_summary.csv'
    """
    prefix = Path(output_name)
    if prefix.suffix.lower() in {".csv", ".json", ".html"}:
        prefix = prefix.with_suffix("")
    return {kind: Path(f"{prefix}{suffix}") for kind, suffix in Key.files.suffixes.items()}


def write_outputs(
    result: BatchResult,
    output_name: str | os.PathLike,
    *,
    adata: AnnData | None = None,
    key: str = Default.key_added,
    basis: str = Default.basis,
) -> dict[str, Path]:
    """Write the files of ``runCASSIA_batch`` for ``result``, each atomically.

    Parameters
    ----------
    result
        The batch to write.
    output_name
        Path prefix: ``{output_name}_summary.csv`` (the summary table plus the
        ``Conversation History`` column that CASSIA's scorer may read), ``_full.csv``,
        ``_conversations.json``
        (CASSIA's shape: cluster name -> its agents' replies), ``_report.html`` and
        ``_record.json`` (ours: settings and every turn) are written (see
        :func:`output_paths`).
    adata
        The annotated data the batch came from, to show its cells on ``basis`` in the
        report.
    key, basis
        The annotation's ``key_added`` and the embedding, when ``adata`` is given.

    Returns
    -------
    dict[str, pathlib.Path]
        The files written, by kind (``summary``, ``full``, ``conversations``, ``report``,
        ``record``).

    Examples
    --------
    >>> import cassia_sc, tempfile, os
    >>> plan = cassia_sc.run_batch(cassia_sc.loadmarker("pbmc68k_processed"), tissue="blood",
    ...     species="human", model="m", dry_run=True, progress=False)
    >>> paths = write_outputs(plan, os.path.join(tempfile.mkdtemp(), "pbmc"))
    >>> sorted(paths)
    ['conversations', 'full', 'record', 'report', 'summary']
    """
    paths = output_paths(output_name)
    result = bounded(result)
    summary = result.summary()
    # CASSIA's scorer reads a cluster named "0" (falsy once pandas makes it 0) from this
    # column rather than from the conversations JSON: without it, it would score blind.
    summary[Key.csv.conversation] = [history_text(c) for c in result.clusters]
    atomic_write_text(paths["summary"], csv_text(summary))
    atomic_write_text(paths["full"], csv_text(full_table(result)))
    atomic_write_text(paths["conversations"], _json_text(cassia_conversations(result)))
    record = {"settings": result.settings, "clusters": result.conversations()}
    atomic_write_text(paths["record"], _json_text(record))
    image = embedding_png(adata, key=key, basis=basis) if adata is not None else None
    atomic_write_text(paths["report"], render_report(result, embedding_png=image))
    return paths


def full_table(result: BatchResult) -> pd.DataFrame:
    """Return the full CSV's table: the summary plus each cluster's conversation.

    Parameters
    ----------
    result
        The batch.

    Returns
    -------
    pandas.DataFrame
        The summary with ``Validation Feedback``, ``Raw Reply`` and ``Conversation
        History`` (in CASSIA's section format, see
        :func:`cassia_sc.cassia_files.history_text`) columns.
    """
    table = result.summary()
    table[Key.csv.validation_feedback] = [c.validation_feedback for c in result.clusters]
    table[Key.csv.raw_reply] = [c.raw_reply or "" for c in result.clusters]
    table[Key.csv.conversation] = [history_text(c) for c in result.clusters]
    return table


def _json_text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, indent=1)


def csv_text(table: pd.DataFrame) -> str:
    """Return ``table`` as CSV text that no spreadsheet runs as formulas.

    In text columns, a cell beginning with ``=``, ``+``, ``-``, ``@``, a tab or a
    carriage return gets a leading ``'`` (see :func:`cassia_sc._io.spreadsheet_safe`);
    numbers, numeric columns and every other cell are written as they are.

    Parameters
    ----------
    table
        The table; its index is not written.

    Returns
    -------
    str
        The CSV text.

    Examples
    --------
    >>> import pandas as pd
    >>> print(csv_text(pd.DataFrame({"label": ["=1+2", "HLA-A", "-1"], "x": [-1.5, 2, 3]})))
    label,x
    '=1+2,-1.5
    HLA-A,2.0
    -1,3.0
    <BLANKLINE>
    """
    table = table.copy()
    for column in table.columns:
        if table[column].dtype.kind not in "biufcmM":
            table[column] = [
                spreadsheet_safe(value) if isinstance(value, str) else value
                for value in table[column]
            ]
    return table.to_csv(index=False)
