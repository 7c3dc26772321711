"""Annotate single-cell clusters with large language models, inside Scanpy and AnnData."""

from __future__ import annotations

from . import export, pl, tl
from .batch import run_batch, runCASSIA_batch
from .datasets import loadmarker
from .errors import (
    AuthenticationFailed,
    BatchInterrupted,
    CassiaError,
    FatalLLMError,
    LLMError,
    MarkerError,
    MissingAPIKeyError,
    ModelNotFound,
)
from .evaluation import evaluate_frame
from .llm import LLMClient
from .markers import read_markers, select_markers, top_markers
from .results import BatchResult, ClusterResult
from .uncertainty import consensus, run_repeated

__version__ = "0.1.0"

__all__ = [
    "AuthenticationFailed",
    "BatchInterrupted",
    "BatchResult",
    "CassiaError",
    "ClusterResult",
    "FatalLLMError",
    "LLMClient",
    "LLMError",
    "MarkerError",
    "MissingAPIKeyError",
    "ModelNotFound",
    "__version__",
    "consensus",
    "evaluate_frame",
    "export",
    "loadmarker",
    "pl",
    "read_markers",
    "runCASSIA_batch",
    "run_batch",
    "run_repeated",
    "select_markers",
    "tl",
    "top_markers",
]
