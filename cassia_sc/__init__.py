"""Annotate single-cell clusters with large language models, inside Scanpy and AnnData."""

from __future__ import annotations

from . import agents, export, get, pl, tl, workflow
from ._version import __version__
from .api_keys import clear_validation_cache, set_api_key, validate_api_keys
from .batch import run_batch, run_batches
from .cassia_files import read_cassia
from .compat import (
    merge_annotations,
    merge_annotations_all,
    runCASSIA_annotationboost,
    runCASSIA_batch,
    runCASSIA_batch_n_times,
    runCASSIA_generate_score_report,
    runCASSIA_n_subcluster,
    runCASSIA_pipeline,
    runCASSIA_score_batch,
    runCASSIA_similarity_score_batch,
    runCASSIA_subclusters,
)
from .datasets import list_available_markers, loadmarker
from .errors import (
    AuthenticationFailed,
    BatchInterrupted,
    CassiaError,
    FatalLLMError,
    LLMError,
    MarkerError,
    MissingAPIKeyError,
    ModelNotFound,
    OntologyUnavailable,
    ProviderUnreachable,
    UnknownProvider,
)
from .evaluation import evaluate_frame
from .llm import LLMClient
from .many import annotate_many
from .markers import read_markers, select_markers, top_markers
from .results import BatchResult, ClusterResult
from .uncertainty import consensus, run_repeated
from .workflow import plan

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
    "OntologyUnavailable",
    "ProviderUnreachable",
    "UnknownProvider",
    "__version__",
    "agents",
    "annotate_many",
    "clear_validation_cache",
    "consensus",
    "evaluate_frame",
    "export",
    "get",
    "list_available_markers",
    "loadmarker",
    "merge_annotations",
    "merge_annotations_all",
    "pl",
    "plan",
    "read_cassia",
    "read_markers",
    "runCASSIA_annotationboost",
    "runCASSIA_batch",
    "runCASSIA_batch_n_times",
    "runCASSIA_generate_score_report",
    "runCASSIA_n_subcluster",
    "runCASSIA_pipeline",
    "runCASSIA_score_batch",
    "runCASSIA_similarity_score_batch",
    "runCASSIA_subclusters",
    "run_batch",
    "run_batches",
    "run_repeated",
    "select_markers",
    "set_api_key",
    "tl",
    "top_markers",
    "validate_api_keys",
    "workflow",
]
