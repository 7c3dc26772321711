"""The scorer: a judge model grades each final answer from 0 to 100, with its reasons.

The judge reads the cluster's ranked markers and the whole exchange that produced the
answer (annotator, validator, revisions, a boost). A score that cannot be had (the call
failed, the reply holds no score) leaves the label as it was, with the score missing and
the reason said; it never fails the cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._keys import Default
from ..errors import FatalLLMError, LLMError
from ..fields import Field, Grade, Review
from ..prompts import render
from ..replies import parse_score
from ..results import Turn
from .context import ClusterContext, ClusterTask, Messages

SCORE_SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "integer"}, "reasoning": {"type": "string"}},
    "required": ["score", "reasoning"],
}
# A dry run cannot know the exchange the judge reads; this is a typical length of one
# (the annotator's reasoning and answer, the validator's verdict), in characters.
_TYPICAL_EXCHANGE_CHARS = 3000


def _grade_score(row: Mapping[str, Any], params: Mapping[str, Any]) -> Grade:
    score = row["score"]
    if score != score:  # NaN: the judge gave none
        return 1, "none"
    below = float(params.get("boost_below", Default.boost_below))
    return (2 if score < below else 1 if score < 90 else 0), str(round(score))


SCORE = Field(
    "score",
    "float",
    "the judge's grade of the final answer, 0 to 100 (NaN when none could be had)",
    csv="Score",
    review=Review("score", _grade_score, always=False),
)
SCORE_REASONING = Field(
    "score_reasoning",
    "text",
    "the judge's reasons, or why there is no score",
    csv="Scoring_Reasoning",
    default="",
)


class Scorer:
    """Grade a cluster's final answer with the judge model (the run's model by default).

    Examples
    --------
    >>> from cassia_sc.agents import ClusterTask, Scorer
    >>> task = ClusterTask("0", ("CD3D", "CD3E"), species="human", tissue="blood")
    >>> [m["role"] for m in Scorer().plan(task)]
    ['system', 'user']
    """

    name = "scorer"
    #: Completion tokens of a usual reply, for a dry run's cost estimate
    #: (a score with its reasons).
    reply_tokens = 350
    fields = (SCORE, SCORE_REASONING)

    def messages(self, task: ClusterTask, exchange: list[Turn]) -> Messages:
        """Return the judge's messages for a cluster and the exchange to grade."""
        return [
            {"role": "system", "content": render("scorer_system")},
            {
                "role": "user",
                "content": render(
                    "scorer_task",
                    species=task.species,
                    tissue=task.tissue,
                    additional_info=task.additional_info,
                    parent=task.parent,
                    markers=task.markers,
                    exchange=exchange,
                ),
            },
        ]

    def plan(self, task: ClusterTask) -> Messages:
        """Return its messages for an exchange of typical length."""
        typical = Turn("annotator", "assistant", "x" * _TYPICAL_EXCHANGE_CHARS)
        return self.messages(task, [typical])

    def __call__(self, context: ClusterContext) -> None:
        """Grade the answer and store ``score`` and ``score_reasoning`` on the result."""
        result = context.result
        if not result.main_cell_type:
            return  # nothing to grade
        exchange = [t for t in result.conversation if t.role != "system" and t.agent != self.name]
        messages = self.messages(context.task, exchange)
        try:
            reply = context.ask(self.name, messages, schema=SCORE_SCHEMA, judge=True)
        except FatalLLMError:
            raise  # a bad key or an unknown judge model: every call would fail the same way
        except LLMError as err:
            _unscored(context, f"Not scored: the judge's call failed ({err}).")
            return
        score = parse_score(reply.content)
        if score is None:
            _unscored(context, "Not scored: the judge's reply held no score from 0 to 100.")
            return
        result.set(SCORE.name, score.score)
        result.set(SCORE_REASONING.name, score.reasoning)


def _unscored(context: ClusterContext, reason: str) -> None:
    context.result.set(SCORE.name, None)
    context.result.set(SCORE_REASONING.name, reason)
