"""Pipelines of steps, by name, and the loop that runs one on a cluster.

A pipeline repeats its ``rounds`` steps while the validator rejects the answer (up to
``max_rounds``), then runs its ``after`` steps once on the final answer (a scorer, a
boost, ...). ``"v1"`` and ``"v0"`` are CASSIA's two validator involvements.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from ..errors import CallCancelled, CassiaError, FatalLLMError, LLMError, StepFailed
from ..fields import CORE_FIELDS, Field
from ..llm import LLMClient
from ..results import ClusterResult
from .annotator import Annotator
from .booster import Booster
from .context import ClusterContext, ClusterTask, Messages, Step
from .grouper import Grouper
from .harmoniser import Harmoniser
from .scorer import Scorer
from .validator import Validator


@dataclass(frozen=True)
class Pipeline:
    """The steps that annotate a cluster.

    Attributes
    ----------
    name
        How users choose it (``validator_involvement=``).
    rounds
        Steps repeated while the validator rejects the answer.
    max_rounds
        Rounds at most, the first one included.
    after
        Steps run once on the final answer of a cluster that has one.
    description
        One line for the documentation.
    """

    name: str
    rounds: tuple[Step, ...]
    max_rounds: int = 1
    after: tuple[Step, ...] = ()
    description: str = ""

    @property
    def steps(self) -> tuple[Step, ...]:
        """Every step, in the order they first run."""
        return self.rounds + self.after

    @property
    def fields(self) -> tuple[Field, ...]:
        """The core fields, then those the steps add."""
        added = tuple(f for step in self.steps for f in step.fields)
        names = [f.name for f in CORE_FIELDS + added]
        if len(names) != len(set(names)):
            raise CassiaError(f"Pipeline {self.name!r} declares a field twice: {names}.")
        return CORE_FIELDS + added

    def plan(self, task: ClusterTask) -> list[tuple[str, Messages]]:
        """Return each step's messages on the happy path (one round), for a dry run."""
        return [(step.name, step.plan(task)) for step in self.steps]

    def run(self, context: ClusterContext) -> None:
        """Run the steps on one cluster, filling ``context.result``.

        Raises
        ------
        StepFailed, LLMError
            When a step cannot finish; the caller marks the cluster failed.
        """
        result = context.result
        for round_number in range(1, self.max_rounds + 1):
            context.round = round_number
            result.iterations = round_number
            for step in self.rounds:
                step(context)
                if context.rejected:
                    break  # the round's other steps would review a dead answer
            if not context.rejected:
                break
        if context.implausible is not None:
            return  # no cell type to score or boost: the cluster is marked so
        for step in self.after:
            step(context)


PIPELINES: dict[str, Pipeline] = {}


def register_pipeline(pipeline: Pipeline, *, replace: bool = False) -> Pipeline:
    """Make ``pipeline`` available under its name (``validator_involvement=name``).

    Parameters
    ----------
    pipeline
        The pipeline.
    replace
        Replace a pipeline of the same name instead of refusing.

    Returns
    -------
    Pipeline
        ``pipeline``.

    Examples
    --------
    >>> from cassia_sc.agents import Annotator, Pipeline, Validator, register_pipeline
    >>> register_pipeline(Pipeline("single", rounds=(Annotator(), Validator())))  # doctest: +SKIP
    """
    if pipeline.name in PIPELINES and not replace:
        raise CassiaError(f"A pipeline named {pipeline.name!r} exists; pass replace=True.")
    pipeline.fields  # noqa: B018 - refuses a field declared twice, now rather than mid-run
    PIPELINES[pipeline.name] = pipeline
    return pipeline


def get_pipeline(name: str) -> Pipeline:
    """Return the pipeline called ``name``.

    Parameters
    ----------
    name
        E.g. ``"v1"``.

    Returns
    -------
    Pipeline
        The pipeline.

    Raises
    ------
    CassiaError
        When there is none of that name; the message lists them.
    """
    try:
        return PIPELINES[name]
    except (KeyError, TypeError):
        raise CassiaError(
            f"validator_involvement must be one of {list(PIPELINES)}, not {name!r}."
        ) from None


register_pipeline(
    Pipeline(
        "v1",
        rounds=(Annotator(), Validator(strict=False, reject_unsupported=False)),
        max_rounds=2,
        description="moderate review, up to 2 rounds (the default)",
    )
)
register_pipeline(
    Pipeline(
        "v0",
        rounds=(Annotator(), Validator(strict=True, reject_unsupported=True)),
        max_rounds=3,
        description="strict review; unlisted cited genes are sent back at once; up to 3 rounds",
    )
)


def known_fields() -> tuple[Field, ...]:
    """Return every field a result may hold: the core ones, then those of known steps.

    Returns
    -------
    tuple of Field
        The core fields, those of the steps of every registered pipeline, and those of
        the :class:`Scorer`, :class:`Booster`, :class:`Grouper` and :class:`Harmoniser`, each
        name once.
    """
    found = {f.name: f for f in CORE_FIELDS}
    for pipeline in PIPELINES.values():
        found |= {f.name: f for f in pipeline.fields if f.name not in found}
    for step in (Scorer, Booster, Grouper, Harmoniser):
        found |= {f.name: f for f in step.fields if f.name not in found}
    return tuple(found.values())


def annotate_cluster(
    task: ClusterTask, client: LLMClient, *, stop: threading.Event | None = None
) -> ClusterResult:
    """Annotate one cluster with the steps of its pipeline.

    Parameters
    ----------
    task
        The cluster and its context.
    client
        The run's model client.
    stop
        Set by the batch to cancel.

    Returns
    -------
    ClusterResult
        Status ``"ok"`` with the answer, or ``"failed"`` with the error and any raw text.

    Raises
    ------
    FatalLLMError
        When no call of the run can succeed (bad key, unknown model).
    CallCancelled
        When ``stop`` was set.
    """
    result = ClusterResult(cluster=task.cluster, markers=list(task.markers))
    context = ClusterContext(task, result, client, stop or threading.Event())
    try:
        get_pipeline(task.pipeline).run(context)
    except (FatalLLMError, CallCancelled):
        raise
    except StepFailed as failure:
        return _failed(result, str(failure), raw_reply=failure.raw_reply)
    except LLMError as err:
        return _failed(result, str(err))
    if context.implausible is not None:  # still no cell type after its revision
        result.status = "implausible"
        result.error = context.implausible
        return result
    result.status = "ok"
    return result


def _failed(result: ClusterResult, error: str, **details: Any) -> ClusterResult:
    result.status = "failed"
    result.error = error
    for name, value in details.items():
        if value is not None:
            setattr(result, name, value)
    return result
