"""Output files of a batch: summary and full CSV, conversations JSON, HTML report."""

from __future__ import annotations

import json
import os
from pathlib import Path

from anndata import AnnData

from .._io import atomic_write_text
from ..results import BatchResult
from .report import embedding_png, render_report, report

__all__ = ["render_report", "report", "write_outputs"]


def write_outputs(
    result: BatchResult,
    output_name: str | os.PathLike,
    *,
    adata: AnnData | None = None,
    key: str = "cassia",
    basis: str = "umap",
) -> dict[str, Path]:
    """Write the four files of ``runCASSIA_batch`` for ``result``, each atomically.

    Parameters
    ----------
    result
        The batch to write.
    output_name
        Path prefix: ``{output_name}_summary.csv``, ``_full.csv``, ``_conversations.json``
        and ``_report.html`` are written.
    adata
        The annotated data the batch came from, to show its cells on ``basis`` in the
        report.
    key, basis
        The annotation's ``key_added`` and the embedding, when ``adata`` is given.

    Returns
    -------
    dict[str, pathlib.Path]
        The files written, by kind (``summary``, ``full``, ``conversations``, ``report``).

    Examples
    --------
    >>> import cassia_sc, tempfile, os
    >>> plan = cassia_sc.run_batch(cassia_sc.loadmarker("processed"), tissue="blood",
    ...     species="human", model="m", dry_run=True, progress=False)
    >>> paths = write_outputs(plan, os.path.join(tempfile.mkdtemp(), "pbmc"))
    >>> sorted(paths)
    ['conversations', 'full', 'report', 'summary']
    """
    prefix = str(output_name)
    paths = {
        "summary": Path(f"{prefix}_summary.csv"),
        "full": Path(f"{prefix}_full.csv"),
        "conversations": Path(f"{prefix}_conversations.json"),
        "report": Path(f"{prefix}_report.html"),
    }
    atomic_write_text(paths["summary"], result.summary().to_csv(index=False))
    atomic_write_text(paths["full"], result.full().to_csv(index=False))
    conversations = {"settings": result.settings, "clusters": result.conversations()}
    atomic_write_text(
        paths["conversations"], json.dumps(conversations, ensure_ascii=False, indent=1)
    )
    image = embedding_png(adata, key=key, basis=basis) if adata is not None else None
    atomic_write_text(paths["report"], render_report(result, embedding_png=image))
    return paths
