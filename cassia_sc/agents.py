"""One cluster's conversation: annotate, check, validate, revise, and a typed result.

On the happy path a cluster costs two model calls: the annotator (whose reply carries the
JSON answer) and the validator. A formatting call is made only when no JSON can be
recovered from the annotator's reply; a revision round only when the answer is rejected.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Literal

from .errors import FatalLLMError, LLMError
from .llm import CallCancelled, LLMClient, Reply
from .prompts import render
from .replies import Annotation, Verdict, extract_json_object, parse_annotation, parse_verdict
from .replies import unsupported_markers as find_unsupported
from .results import Agent, ClusterResult, Turn

ValidatorInvolvement = Literal["v0", "v1"]


@dataclass(frozen=True)
class ValidatorPolicy:
    """How hard the validator pushes back.

    Attributes
    ----------
    strict
        Use the strict review prompt.
    max_rounds
        Annotation rounds at most (the first one included).
    reject_unsupported
        Reject an answer that cites genes outside the marker list at once, without a
        validator call, and ask for a revision.
    """

    strict: bool
    max_rounds: int
    reject_unsupported: bool


#: ``"v1"``: moderate, the default. ``"v0"``: strict and slower (more rounds).
VALIDATOR_POLICIES: dict[str, ValidatorPolicy] = {
    "v1": ValidatorPolicy(strict=False, max_rounds=2, reject_unsupported=False),
    "v0": ValidatorPolicy(strict=True, max_rounds=3, reject_unsupported=True),
}

_LIST = {"type": "array", "items": {"type": "string"}}
ANNOTATION_SCHEMA = {
    "type": "object",
    "properties": {
        "main_cell_type": {"type": "string"},
        "sub_cell_types": _LIST,
        "possible_mixed_cell_types": _LIST,
        "key_markers": _LIST,
        "possible_tissues": _LIST,
    },
    "required": ["main_cell_type", "sub_cell_types", "possible_mixed_cell_types", "key_markers"],
}
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["pass", "fail"]},
        "feedback": {"type": "string"},
    },
    "required": ["verdict", "feedback"],
}


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
    validator_involvement
        ``"v1"`` or ``"v0"``; see :data:`VALIDATOR_POLICIES`.
    sample
        Which repeated run this is (0 for a single run); see :meth:`LLMClient.complete`.
    """

    cluster: str
    markers: tuple[str, ...]
    species: str
    tissue: str | None = None
    additional_info: str | None = None
    validator_involvement: ValidatorInvolvement = "v1"
    sample: int = 0

    @property
    def tissue_blind(self) -> bool:
        """Whether the tissue is unknown."""
        return not self.tissue

    def validator_messages(self, annotation: str, unsupported: list[str]) -> list[dict[str, str]]:
        """Return the validator's messages for the annotator's reply ``annotation``."""
        policy = VALIDATOR_POLICIES[self.validator_involvement]
        return [
            {"role": "system", "content": render("validator_system", strict=policy.strict)},
            {
                "role": "user",
                "content": render(
                    "validator_task",
                    species=self.species,
                    tissue=self.tissue,
                    additional_info=self.additional_info,
                    markers=self.markers,
                    unsupported=unsupported,
                    annotation=annotation,
                ),
            },
        ]

    def annotator_messages(self) -> list[dict[str, str]]:
        """Return the annotator's opening messages (system and task)."""
        return [
            {
                "role": "system",
                "content": render("annotator_system", tissue_blind=self.tissue_blind),
            },
            {
                "role": "user",
                "content": render(
                    "annotator_task",
                    species=self.species,
                    tissue=self.tissue,
                    markers=self.markers,
                    additional_info=self.additional_info,
                ),
            },
        ]


@dataclass
class _Recorder:
    """Collects a cluster's messages and usage while its conversation runs."""

    result: ClusterResult
    client: LLMClient
    stop: threading.Event
    sample: int = 0
    recorded: dict[str, int] = field(default_factory=dict)

    def ask(
        self,
        agent: Agent,
        messages: list[dict[str, str]],
        *,
        schema: dict | None = None,
        continues: bool = False,
    ) -> Reply:
        """Send ``messages``; ``continues`` when they extend the agent's previous call."""
        start = self.recorded.get(agent, 0) if continues else 0
        for message in messages[start:]:
            self.result.conversation.append(Turn(agent, message["role"], message["content"]))
        reply = self.client.complete(messages, schema=schema, stop=self.stop, sample=self.sample)
        self.recorded[agent] = len(messages) + 1
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


def annotate_cluster(
    task: ClusterTask, client: LLMClient, *, stop: threading.Event | None = None
) -> ClusterResult:
    """Annotate one cluster: annotator, deterministic check, validator, bounded revisions.

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
    recorder = _Recorder(result, client, stop or threading.Event(), sample=task.sample)
    policy = VALIDATOR_POLICIES[task.validator_involvement]
    messages = task.annotator_messages()
    try:
        for round_number in range(1, policy.max_rounds + 1):
            result.iterations = round_number
            reply = recorder.ask("annotator", messages, continues=round_number > 1)
            answer = _read_annotation(reply.content, task, recorder)
            if answer is None:
                result.status = "failed"
                result.raw_reply = reply.content
                result.error = (
                    "No annotation could be read from the model's reply, "
                    "even after a formatting call."
                )
                return result
            unsupported = find_unsupported(answer.key_markers, task.markers)
            _store_answer(result, answer, unsupported)
            verdict = _review(task, policy, reply.content, unsupported, recorder)
            result.validation_passed = verdict.passed
            result.validation_feedback = verdict.feedback
            if verdict.passed is not False or round_number == policy.max_rounds:
                break
            messages = [
                *messages,
                {"role": "assistant", "content": reply.content},
                {
                    "role": "user",
                    "content": render(
                        "annotator_revision", feedback=verdict.feedback, unsupported=unsupported
                    ),
                },
            ]
    except (FatalLLMError, CallCancelled):
        raise
    except LLMError as err:
        result.status = "failed"
        result.error = str(err)
        return result
    result.status = "ok"
    return result


def _read_annotation(text: str, task: ClusterTask, recorder: _Recorder) -> Annotation | None:
    """Read the JSON answer from the reply; only when there is none, ask for it formatted."""
    answer = parse_annotation(extract_json_object(text))
    if answer is not None:
        return answer
    formatted = recorder.ask(
        "formatter",
        [
            {
                "role": "system",
                "content": render("formatter_system", tissue_blind=task.tissue_blind),
            },
            {"role": "user", "content": text},
        ],
        schema=ANNOTATION_SCHEMA,
    )
    return parse_annotation(extract_json_object(formatted.content))


def _review(
    task: ClusterTask,
    policy: ValidatorPolicy,
    annotation: str,
    unsupported: list[str],
    recorder: _Recorder,
) -> Verdict:
    if unsupported and policy.reject_unsupported:
        return Verdict(
            passed=False,
            feedback="The answer cites genes that are not in the marker list: "
            + ", ".join(unsupported)
            + ".",
        )
    reply = recorder.ask(
        "validator",
        task.validator_messages(annotation, unsupported),
        schema=VERDICT_SCHEMA,
    )
    verdict = parse_verdict(reply.content)
    if verdict.passed is None:
        return Verdict(
            None, "The validator's reply could not be read as a verdict: " + reply.content[:500]
        )
    return verdict


def _store_answer(result: ClusterResult, answer: Annotation, unsupported: list[str]) -> None:
    result.main_cell_type = answer.main_cell_type
    result.sub_cell_types = list(answer.sub_cell_types)
    result.possible_mixed_cell_types = list(answer.possible_mixed_cell_types)
    result.possible_tissues = list(answer.possible_tissues)
    result.key_markers = list(answer.key_markers)
    result.unsupported_markers = list(unsupported)
