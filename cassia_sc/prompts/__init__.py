"""Prompt templates (Jinja2 text files in this folder) and the one function that renders them."""

from __future__ import annotations

import threading
from functools import cache
from typing import Any

import jinja2

# Held while a template is compiled: clusters starting at once compile it once, not each.
_compiling = threading.Lock()


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("cassia_sc", "prompts"),
        undefined=jinja2.StrictUndefined,  # a missing variable is a bug, never an empty string
        autoescape=False,  # plain text for a model, not HTML
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )


@cache  # the package's files: no look at the file at each render, as jinja2 would
def _template(name: str) -> jinja2.Template:
    with _compiling:
        return _environment().get_template(f"{name}.j2")


def render(name: str, **context: Any) -> str:
    """Render the prompt template ``name`` (without its ``.j2`` suffix).

    Parameters
    ----------
    name
        Template file in :mod:`cassia_sc.prompts`, e.g. ``"annotator_system"``.
    **context
        The template's variables.

    Returns
    -------
    str
        The prompt text, stripped.

    Examples
    --------
    >>> from cassia_sc.prompts import render
    >>> context = {"tissue": "blood", "markers": ["CD3D"], "additional_info": None, "parent": None}
    >>> text = render("annotator_task", species="human", **context)
    >>> text.splitlines()[0]
    'Species: human'
    """
    return _template(name).render(**context).strip()
