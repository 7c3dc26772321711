"""What a step works on: one cluster's task, its growing result, the model, and the data."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .._keys import Default
from ..errors import LLMError
from ..evidence import DataHandle
from ..fields import Field
from ..llm import LLMClient, Reply
from ..results import Turn

if TYPE_CHECKING:
    from ..evidence import ExpressionEvidence, MarkerTableEvidence

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class ClusterTask:
    """What one cluster's annotation needs to know.

    Attributes
    ----------
    cluster
        The cluster's name (never shown to the model, so renaming reuses the cache).
    markers
        Its ranked marker genes.
    species
        E.g. ``"human"``.
    tissue
        E.g. ``"blood"``; None for a tissue-blind annotation.
    additional_info
        Free text about the sample, or None.
    parent
        The population this cluster is a subcluster of (e.g. ``"T cell"``), whose markers
        were ranked against its sibling subclusters; None for a cluster of the whole data.
    pipeline
        Name of the pipeline of steps that annotates it (``"v1"``, ``"v0"``, ...); see
        :func:`cassia_sc.agents.get_pipeline`.
    sample
        Which repeated run this is (0 for a single run); see :meth:`LLMClient.complete`.
    data
        The expression data the markers came from, when they came from an AnnData.
    table_evidence
        The cluster's rows of the marker table, when the markers came from a table.
    """

    cluster: str
    markers: tuple[str, ...]
    species: str
    tissue: str | None = None
    additional_info: str | None = None
    parent: str | None = None
    pipeline: str = Default.validator_involvement
    sample: int = 0
    data: DataHandle | None = field(default=None, repr=False, compare=False)
    table_evidence: MarkerTableEvidence | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, result: Any, settings: Mapping[str, Any], **context: Any) -> ClusterTask:
        """Return the task of a finished cluster, from its result and its run's settings.

        Parameters
        ----------
        result
            The cluster's :class:`~cassia_sc.ClusterResult`.
        settings
            Its batch's settings (species, tissue, additional_info, parent,
            validator_involvement).
        **context
            ``data`` or ``table_evidence``.

        Returns
        -------
        ClusterTask
            The task its further steps work on.
        """
        return cls(
            cluster=result.cluster,
            markers=tuple(result.markers),
            species=str(settings.get("species", "")),
            tissue=settings.get("tissue") or None,
            additional_info=settings.get("additional_info") or None,
            parent=settings.get("parent") or None,
            pipeline=str(settings.get("validator_involvement", Default.validator_involvement)),
            **context,
        )

    @property
    def tissue_blind(self) -> bool:
        """Whether the tissue is unknown."""
        return not self.tissue


@dataclass
class ClusterContext:
    """One cluster's work in progress, handed to each step of its pipeline in turn.

    Attributes
    ----------
    task
        The cluster and its sample.
    result
        The result the steps fill in.
    client
        The run's model client.
    judge
        The client of the judge model that scores answers (``score_model=``); None: the
        run's model judges.
    stop
        Set by the batch to cancel.
    round
        The annotation round (1, then 2, ... while the validator rejects the answer).
    annotation_text
        The annotator's latest reply, for the steps that review it.
    state
        Anything a step keeps for its own next round, by the step's name.
    implausible
        Why the latest answer is no cell type (see :mod:`cassia_sc.plausibility`), or
        None when it may be one.
    """

    task: ClusterTask
    result: Any
    client: LLMClient
    stop: threading.Event
    judge: LLMClient | None = None
    round: int = 1
    annotation_text: str | None = None
    state: dict[str, Any] = field(default_factory=dict)
    implausible: str | None = None
    _sent: dict[str, int] = field(default_factory=dict)

    @property
    def rejected(self) -> bool:
        """Whether the latest answer goes back to the annotator: no cell type, or refused."""
        return self.implausible is not None or self.result.validation_passed is False

    @property
    def data(self) -> DataHandle | None:
        """The expression data behind the markers, or None (a marker table, a file's markers)."""
        return self.task.data

    @property
    def evidence(self) -> ExpressionEvidence | MarkerTableEvidence | None:
        """Where genes are looked up: the expression data, else the marker table, else None.

        The expression data's per-cluster figures are computed once for the whole run.
        """
        if self.task.data is not None:
            return self.task.data.evidence()
        return self.task.table_evidence

    def ask(
        self,
        agent: str,
        messages: Sequence[Mapping[str, str]],
        *,
        schema: Mapping[str, Any] | None = None,
        continues: bool = False,
        judge: bool = False,
    ) -> Reply:
        """Send ``messages`` to the model as ``agent``, recording the turns and their cost.

        Parameters
        ----------
        agent
            Who speaks: ``"annotator"``, ``"validator"``, ``"formatter"`` or a step's own.
        messages
            The whole conversation to send.
        schema
            JSON schema of the reply, sent as structured output where supported.
        continues
            The messages extend this agent's previous call: only the new ones are recorded.
        judge
            Ask the judge model (:attr:`judge`) rather than the run's model.

        Returns
        -------
        Reply
            The reply, from the cache or the network.
        """
        start = self._sent.get(agent, 0) if continues else 0
        for message in messages[start:]:
            self.result.conversation.append(Turn(agent, message["role"], message["content"]))
        client = self.judge if judge and self.judge is not None else self.client
        try:
            reply = client.complete(
                messages, schema=schema, stop=self.stop, sample=self.task.sample
            )
        except LLMError as failed:  # its requests were sent, and billed, all the same
            self.result.requests += failed.requests
            self.result.prompt_tokens += failed.prompt_tokens
            self.result.completion_tokens += failed.completion_tokens
            raise
        self._sent[agent] = len(messages) + 1
        self.result.conversation.append(
            Turn(
                agent,
                "assistant",
                reply.content,
                reply.cached,
                reply.prompt_tokens,
                reply.completion_tokens,
            )
        )
        self.result.calls += 1
        self.result.cached_calls += reply.cached
        self.result.requests += reply.requests
        self.result.prompt_tokens += reply.prompt_tokens
        self.result.completion_tokens += reply.completion_tokens
        return reply


@runtime_checkable
class Step(Protocol):
    """One agent's work on a cluster: a name, the fields it adds, and a call on the context.

    A new agent is a module of :mod:`cassia_sc.agents` with a class like this, plus its
    prompt templates in :mod:`cassia_sc.prompts`; add it to a pipeline with
    :func:`cassia_sc.agents.register_pipeline`. Its fields then appear in the ``uns``
    table, the summary CSV, the report and ``pl.review`` with no further edit.

    Attributes
    ----------
    name
        The step's name (also how it speaks in the conversation, by convention).
    fields
        The values it adds to each cluster's result (``result.set(name, value)``).
    reply_tokens
        About how many completion tokens one of its replies takes, for a dry run's cost
        estimate (optional: :data:`cassia_sc.costs.DEFAULT_REPLY_TOKENS` when absent).
    """

    name: str
    fields: tuple[Field, ...]
    reply_tokens: int

    def __call__(self, context: ClusterContext) -> None:
        """Do its work on one cluster; raise :class:`~cassia_sc.agents.StepFailed` if it cannot."""

    def plan(self, task: ClusterTask) -> Messages:
        """Return the messages it would send on the happy path, for a dry run's estimate."""
