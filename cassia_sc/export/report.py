"""The HTML report of a batch: one self-contained file that makes no network request.

Every text in it came from a model or a file, so the template escapes everything, the
page's script only toggles attributes and moves nodes (never parses text as HTML), and a
Content-Security-Policy lets nothing load and no script run but our own.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import os
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from anndata import AnnData

from .._io import atomic_write_text
from .._keys import Default, Key
from ..costs import dollars_text
from ..fields import CORE_FIELDS, VALIDATION_NAMES, Field
from ..get import annotation
from ..pl import annotations
from ..results import BatchResult, ClusterResult
from .limits import bounded


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("cassia_sc", "export/templates"),
        autoescape=True,  # every text in the report came from a model or a file
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@cache
def _script() -> tuple[str, str]:
    """Return the page's script and its CSP hash."""
    text = resources.files("cassia_sc.export").joinpath("templates/report.js").read_text("utf-8")
    digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()
    return text, f"sha256-{digest}"


def report(
    source: BatchResult | AnnData,
    path: str | os.PathLike,
    *,
    key: str = Default.key_added,
    basis: str = Default.basis,
) -> Path:
    """Write the HTML report of an annotation run.

    Parameters
    ----------
    source
        A :class:`~cassia_sc.BatchResult`, or an AnnData annotated by
        :func:`cassia_sc.tl.annotate` (then the cells on ``basis``, coloured by their
        main cell type, are embedded as an image when ``obsm[f"X_{basis}"]`` exists).
    path
        The ``.html`` file to write (atomically).
    key
        For an AnnData: the ``key_added`` of the annotation.
    basis
        For an AnnData: the embedding to show.

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> import cassia_sc
    >>> cassia_sc.export.report(adata, "pbmc_report.html")  # doctest: +SKIP
    """
    if isinstance(source, AnnData):
        result = annotation(source, key)
        html = render_report(result, embedding_png=embedding_png(source, key=key, basis=basis))
    else:
        html = render_report(source)
    return atomic_write_text(path, html)


def embedding_png(
    adata: AnnData, *, key: str = Default.key_added, basis: str = Default.basis
) -> bytes | None:
    """Draw the cells on ``basis`` coloured by main cell type, as PNG bytes.

    Parameters
    ----------
    adata
        Annotated data.
    key
        The ``key_added`` of the annotation.
    basis
        The embedding.

    Returns
    -------
    bytes or None
        The image, or None when there is no such embedding or annotation.
    """
    if Key.obsm.basis(basis) not in adata.obsm or Key.obs.celltype(key) not in adata.obs:
        return None
    import matplotlib.pyplot as plt  # only when drawing: the command line never plots

    figure = annotations(adata, basis=basis, key=key, return_fig=True, show=False)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def render_report(result: BatchResult, *, embedding_png: bytes | None = None) -> str:
    """Return the report's HTML.

    Parameters
    ----------
    result
        The batch.
    embedding_png
        An image of the cells to show under the header.

    Returns
    -------
    str
        One self-contained HTML document.

    Examples
    --------
    >>> import cassia_sc
    >>> plan = cassia_sc.run_batch(cassia_sc.loadmarker("pbmc68k_processed"), tissue="blood",
    ...     species="human", model="any-model", dry_run=True, progress=False)
    >>> cassia_sc.export.render_report(plan).startswith("<!DOCTYPE html>")
    True
    """
    result = bounded(result)  # a 100 KB label or a 5 MB reply would make a page no one opens
    prompts: dict[str, str] = {}  # system prompt text -> its label, shown once
    threshold = float(result.settings.get("agreement_threshold", Default.agreement_threshold))
    boost_below = float(result.settings.get("boost_below", Default.boost_below))
    added = [f for f in result.fields if f.report and f not in CORE_FIELDS]
    clusters = [_card(c, prompts, threshold, boost_below, added) for c in result.clusters]
    statuses = [c.status for c in result.clusters]
    script, script_hash = _script()
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            result=result,
            settings=result.settings,
            usage=result.usage,
            clusters=clusters,
            repeated=any(c["agreement"] is not None for c in clusters),
            scored=any(f.name == "score" for f in result.fields),
            boost_below=boost_below,
            counts={
                "ok": statuses.count("ok"),
                "failed": statuses.count("failed"),
                "not_run": statuses.count("not_run"),
                "implausible": statuses.count("implausible"),
                "passed": sum(c.validation_passed is True for c in result.clusters),
                "flagged": sum(c["flagged"] for c in clusters),
            },
            prompts=[{"id": label, "text": text} for text, label in prompts.items()],
            cost=_cost_text(result.settings),
            embedding=base64.b64encode(embedding_png).decode() if embedding_png else None,
            created=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            script=script,
            script_hash=script_hash,
        )
    )


def _card(
    cluster: ClusterResult,
    prompts: dict[str, str],
    threshold: float,
    boost_below: float,
    added: list[Field],
) -> dict[str, Any]:
    """Return what the template shows of a cluster; system prompts get a label, once."""
    key = {g.upper() for g in cluster.key_markers}
    score = cluster.extra.get("score")
    turns = []
    for turn in cluster.conversation:
        prompt_id = None
        if turn.role == "system":
            prompt_id = prompts.setdefault(turn.content, chr(ord("A") + len(prompts)))
        turns.append({**vars(turn), "prompt_id": prompt_id})
    words = [
        cluster.cluster,
        cluster.main_cell_type or "",
        *cluster.sub_cell_types,
        *cluster.possible_mixed_cell_types,
        *cluster.possible_tissues,
        *cluster.markers,
        cluster.status,
    ]
    return {
        "cluster": cluster.cluster,
        "main_cell_type": cluster.main_cell_type,
        "sub_cell_types": cluster.sub_cell_types,
        "possible_mixed_cell_types": cluster.possible_mixed_cell_types,
        "possible_tissues": cluster.possible_tissues,
        "unsupported_markers": cluster.unsupported_markers,
        "markers": [{"name": g, "key": g.upper() in key} for g in cluster.markers],
        "status": cluster.status,
        "validation": VALIDATION_NAMES[cluster.validation_passed],
        "validation_feedback": cluster.validation_feedback,
        "iterations": cluster.iterations,
        "ontology": (
            f"{cluster.ontology_label} ({cluster.ontology_term_id})"
            if cluster.ontology_term_id not in (None, "unknown")
            else cluster.ontology_term_id
        ),
        "agreement": cluster.agreement,
        "flagged": cluster.agreement is not None and cluster.agreement < threshold,
        "error": cluster.error,
        "raw_reply": cluster.raw_reply,
        "turns": turns,
        "added": [(f.report, _shown(f, cluster.get(f))) for f in added if cluster.get(f)],
        "score": score,
        "score_band": "none" if score is None else "low" if score < boost_below else "high",
        "score_reasoning": cluster.extra.get("score_reasoning", ""),
        "boosted": bool(cluster.extra.get("boosted")),
        "search": " ".join(words).lower(),
    }


def _shown(declared: Field, value: Any) -> Any:
    """Return a step's value as the card shows it: a list ", "-joined, else as in the table."""
    return declared.to_csv(value) if declared.kind == "list" else declared.to_table(value)


def _cost_text(settings: dict) -> str | None:
    """Return what the run spent, and its budget, for the header (None: no price known)."""
    if "cost" not in settings:
        return None
    text = dollars_text(float(settings["cost"]))
    if "max_cost" in settings:
        text += f" of a {dollars_text(float(settings['max_cost']))} budget"
    return text
