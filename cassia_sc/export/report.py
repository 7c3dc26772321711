"""The HTML report of a batch: one self-contained file, every model text escaped."""

from __future__ import annotations

import datetime as dt
import os
from functools import cache
from pathlib import Path

import jinja2

from .._io import atomic_write_text
from ..results import BatchResult


@cache
def _environment() -> jinja2.Environment:
    # Autoescape on: every text in the report came from a model or a file.
    return jinja2.Environment(
        loader=jinja2.PackageLoader("cassia_sc", "export/templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def report(result: BatchResult, path: str | os.PathLike) -> Path:
    """Write the HTML report of ``result`` to ``path``.

    Parameters
    ----------
    result
        The batch to report.
    path
        Where to write the ``.html`` file (atomically).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    html = (
        _environment()
        .get_template("report.html.j2")
        .render(
            result=result,
            settings=result.settings,
            usage=result.usage,
            n_failed=len(result.failed),
            created=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        )
    )
    return atomic_write_text(path, html)
