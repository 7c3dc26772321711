"""Annotate single-cell clusters with large language models, inside Scanpy and AnnData."""

from __future__ import annotations

from . import pl, tl
from .datasets import loadmarker
from .errors import CassiaError, MarkerError
from .markers import read_markers, select_markers, top_markers

__version__ = "0.1.0"

__all__ = [
    "CassiaError",
    "MarkerError",
    "__version__",
    "loadmarker",
    "pl",
    "read_markers",
    "select_markers",
    "tl",
    "top_markers",
]
