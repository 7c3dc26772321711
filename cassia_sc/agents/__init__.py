"""The agents that annotate a cluster, as steps of named pipelines.

Each agent is a step (:class:`Step`): a name, the fields it adds to a cluster's result,
and a call on the cluster's :class:`ClusterContext`, which can ask the model and reach the
expression data. Pipelines (:class:`Pipeline`) chain steps; ``"v1"`` and ``"v0"`` are
registered here, and :func:`register_pipeline` adds more. The :class:`Scorer` and the
:class:`Booster` run after a pipeline, on its answers (see :mod:`cassia_sc.workflow`);
the :class:`Grouper` names every cluster at once at each level (see ``tl.levels``); the
:class:`Harmoniser` gives one type one name across the inputs of a run.
"""

from ..errors import StepFailed
from .annotator import ANNOTATION_SCHEMA, Annotator
from .booster import Booster
from .context import ClusterContext, ClusterTask, Step
from .grouper import Grouper, Grouping, group_levels, model_levels
from .harmoniser import Harmonisation, Harmoniser, harmonise_batches
from .label_judge import Judgement, judge_pairs
from .ontology_chooser import OntologyChooser
from .pipelines import (
    PIPELINES,
    Pipeline,
    annotate_cluster,
    get_pipeline,
    known_fields,
    register_pipeline,
)
from .scorer import Scorer
from .validator import VERDICT_SCHEMA, Validator

__all__ = [
    "ANNOTATION_SCHEMA",
    "PIPELINES",
    "VERDICT_SCHEMA",
    "Annotator",
    "Booster",
    "ClusterContext",
    "ClusterTask",
    "Grouper",
    "Grouping",
    "Harmonisation",
    "Harmoniser",
    "Judgement",
    "OntologyChooser",
    "Pipeline",
    "Scorer",
    "Step",
    "StepFailed",
    "Validator",
    "annotate_cluster",
    "get_pipeline",
    "group_levels",
    "harmonise_batches",
    "judge_pairs",
    "known_fields",
    "model_levels",
    "register_pipeline",
]
