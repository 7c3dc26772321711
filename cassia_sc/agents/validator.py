"""The validator: reviews the annotator's answer against the markers and passes or rejects it."""

from __future__ import annotations

from ..errors import FatalLLMError, LLMError
from ..fields import Field
from ..prompts import render
from ..replies import Verdict, parse_verdict
from .context import ClusterContext, ClusterTask, Messages

VERDICT_SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["pass", "fail"]},
        "feedback": {"type": "string"},
    },
    "required": ["verdict", "feedback"],
}
# A dry run cannot know the annotator's reply, which the validator reads; this is a
# typical length of one (reasoning plus the JSON answer), in characters.
_TYPICAL_ANNOTATION_CHARS = 2500


class Validator:
    """Review the latest answer; a rejection sends it back to the annotator.

    Parameters
    ----------
    strict
        Use the strict review prompt.
    reject_unsupported
        Reject an answer that cites genes outside the marker list at once, without a
        validator call, and ask for a revision.

    Examples
    --------
    >>> from cassia_sc.agents import ClusterTask, Validator
    >>> task = ClusterTask("0", ("CD3D", "CD3E"), species="human", tissue="blood")
    >>> [m["role"] for m in Validator().plan(task)]
    ['system', 'user']
    """

    name = "validator"
    #: Completion tokens of a usual reply, for a dry run's cost estimate
    #: (a verdict with its reasons).
    reply_tokens = 250
    fields: tuple[Field, ...] = ()  # its verdict and feedback are core fields

    def __init__(self, *, strict: bool = False, reject_unsupported: bool = False) -> None:
        self.strict = strict
        self.reject_unsupported = reject_unsupported

    def messages(self, task: ClusterTask, annotation: str, unsupported: list[str]) -> Messages:
        """Return the validator's messages for the annotator's reply ``annotation``."""
        return [
            {
                "role": "system",
                "content": render("validator_system", strict=self.strict, parent=task.parent),
            },
            {
                "role": "user",
                "content": render(
                    "validator_task",
                    species=task.species,
                    tissue=task.tissue,
                    additional_info=task.additional_info,
                    parent=task.parent,
                    markers=task.markers,
                    unsupported=unsupported,
                    annotation=annotation,
                ),
            },
        ]

    def plan(self, task: ClusterTask) -> Messages:
        """Return its messages for an annotation of typical length."""
        return self.messages(task, "x" * _TYPICAL_ANNOTATION_CHARS, [])

    def __call__(self, context: ClusterContext) -> None:
        """Review the answer and store the verdict and feedback on the result."""
        verdict = self._review(context)
        context.result.validation_passed = verdict.passed
        context.result.validation_feedback = verdict.feedback

    def _review(self, context: ClusterContext) -> Verdict:
        unsupported = context.result.unsupported_markers
        if unsupported and self.reject_unsupported:
            return Verdict(
                passed=False,
                feedback="The answer cites genes that are not in the marker list: "
                + ", ".join(unsupported)
                + ".",
            )
        messages = self.messages(context.task, context.annotation_text or "", unsupported)
        try:
            reply = context.ask(self.name, messages, schema=VERDICT_SCHEMA)
        except FatalLLMError:
            raise
        except LLMError as err:  # the answer stands, unreviewed: not a failed cluster
            return Verdict(None, f"The validator could not be asked: {err}")
        verdict = parse_verdict(reply.content)
        if verdict.passed is None:
            return Verdict(
                None, "The validator's reply could not be read as a verdict: " + reply.content[:500]
            )
        return verdict
