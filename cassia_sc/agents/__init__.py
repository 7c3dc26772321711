"""The agents that annotate a cluster, as steps of named pipelines.

Each agent is a step (:class:`Step`): a name, the fields it adds to a cluster's result,
and a call on the cluster's :class:`ClusterContext`, which can ask the model and reach the
expression data. Pipelines (:class:`Pipeline`) chain steps; ``"v1"`` and ``"v0"`` are
registered here, and :func:`register_pipeline` adds more.
"""

from ..errors import StepFailed
from .annotator import ANNOTATION_SCHEMA, Annotator
from .context import ClusterContext, ClusterTask, Step
from .pipelines import PIPELINES, Pipeline, annotate_cluster, get_pipeline, register_pipeline
from .validator import VERDICT_SCHEMA, Validator

__all__ = [
    "ANNOTATION_SCHEMA",
    "PIPELINES",
    "VERDICT_SCHEMA",
    "Annotator",
    "ClusterContext",
    "ClusterTask",
    "Pipeline",
    "Step",
    "StepFailed",
    "Validator",
    "annotate_cluster",
    "get_pipeline",
    "register_pipeline",
]
