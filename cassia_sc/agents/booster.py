"""The annotation boost: a doubtful call is settled by looking genes up in the data.

A cluster is boosted when its score is below a threshold, its validation failed, or (after
repeated runs) too few runs agree. In a bounded loop the model states hypotheses and asks
for genes, and sees the evidence about THAT cluster: from the expression data (mean,
fraction expressing, fold change, marker rank, the most similar clusters, genes measured
but not expressed, symbols not measured), or from the cluster's own rows of a marker
table. It ends with an answer in the annotator's contract, which replaces the label; the
first label is kept. A boost that fails keeps the first label and says why.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._keys import Default
from ..errors import CassiaError, FatalLLMError, LLMError
from ..fields import Field, Grade, Review
from ..prompts import render
from ..replies import (
    Annotation,
    extract_json_object,
    parse_annotation,
    parse_gene_request,
    unsupported_markers,
)
from .context import ClusterContext, ClusterTask, Messages
from .scorer import SCORE, SCORE_REASONING, Scorer

#: Statuses of a looked-up gene that the data speak for, present or absent in the cluster.
_SEEN_IN_THE_DATA = ("expressed", "not expressed", "among the markers")
# A plan cannot know the reviews a boost reads; a typical length of them, in characters.
_TYPICAL_REVIEW_CHARS = 600


def _grade_boost(row: Mapping[str, Any], params: Mapping[str, Any]) -> Grade:
    if row.get("boost_error"):
        return 2, "failed"
    if row["boosted"]:
        changed = row.get("initial_cell_type") not in ("", row["main_cell_type"])
        return 1, "changed" if changed else "kept"
    return 0, "—"


BOOSTED = Field(
    "boosted",
    "bool",
    "whether the annotation boost gave the final answer",
    csv="Boosted",
    default=False,
    review=Review("boost", _grade_boost),
)
BOOST_REASON = Field("boost_reason", "text", "why the cluster was boosted", csv="Boost Reason")
INITIAL_CELL_TYPE = Field(
    "initial_cell_type",
    "text",
    "the main cell type before the boost",
    csv="Initial Cell Type",
    report="First call",
)
INITIAL_SCORE = Field("initial_score", "float", "the score before the boost")
BOOST_ROUNDS = Field("boost_rounds", "int", "rounds of the boost", default=0)
BOOST_GENES = Field(
    "boost_genes",
    "list",
    "the genes the boost looked up",
    csv="Boost Genes",
    report="Genes looked up",
    default=[],
)
BOOST_ERROR = Field(
    "boost_error", "text", "why a boost failed (the first label is kept)", report="Boost failed"
)


class Booster:
    """Settle a doubtful cluster with evidence from the data, then have it scored again.

    Parameters
    ----------
    below
        Boost clusters scored below this; None: the score does not decide.
    agreement_threshold
        Boost clusters whose share of agreeing repeated runs is below this.
    rounds
        Rounds at most, the final answer included.
    max_genes
        Genes looked up per round at most; more are cut and the model is told.
    rescore
        The scorer that grades the new answer; None: no new score.
    always
        Boost every answered cluster it is given, doubtful or not (a user's request).

    Examples
    --------
    >>> from cassia_sc.agents import Booster
    >>> from cassia_sc.results import ClusterResult
    >>> shaky = ClusterResult("3", ["CD3E"], "ok", main_cell_type="T cell")
    >>> shaky.set("score", 60.0)
    >>> Booster(below=75).reason(shaky)
    'score 60 is below 75'
    """

    name = "booster"
    #: Completion tokens of a usual reply, for a dry run's cost estimate
    #: (one round: hypotheses and genes to look up, or the answer).
    reply_tokens = 600
    fields = (
        BOOSTED,
        BOOST_REASON,
        INITIAL_CELL_TYPE,
        INITIAL_SCORE,
        BOOST_ROUNDS,
        BOOST_GENES,
        BOOST_ERROR,
    )

    def __init__(
        self,
        *,
        below: float | None = Default.boost_below,
        agreement_threshold: float = Default.agreement_threshold,
        rounds: int = Default.boost_rounds,
        max_genes: int = Default.boost_max_genes,
        rescore: Scorer | None = None,
        always: bool = False,
    ) -> None:
        if rounds < 1 or max_genes < 1:
            raise CassiaError(
                f"boost rounds and genes must be positive, not {rounds}, {max_genes}."
            )
        self.below = below
        self.agreement_threshold = agreement_threshold
        self.rounds = rounds
        self.max_genes = max_genes
        self.rescore = rescore
        self.always = always

    def reason(self, result: Any) -> str | None:
        """Return why ``result`` needs a boost, or None when it does not (or has no answer)."""
        if result.status != "ok" or not result.main_cell_type:
            return None
        reasons = []
        score = result.get(SCORE)
        if self.below is not None and score is not None and score < self.below:
            reasons.append(f"score {score:.0f} is below {self.below:.0f}")
        if result.validation_passed is False:
            reasons.append("the validator rejected the answer")
        if result.agreement is not None and result.agreement < self.agreement_threshold:
            reasons.append(
                f"only {result.agreement:.0%} of repeated runs agree "
                f"(threshold {self.agreement_threshold:.0%})"
            )
        if self.always and not reasons:
            reasons.append("asked for by the user")
        return "; ".join(reasons) or None

    def messages(
        self, task: ClusterTask, first: Annotation, *, reason: str, review: str, expression: bool
    ) -> Messages:
        """Return the boost's opening messages for a cluster and its first answer."""
        system = render(
            "booster_system",
            max_genes=self.max_genes,
            rounds=self.rounds,
            expression=expression,
            tissue_blind=task.tissue_blind,
        )
        opening = render(
            "booster_task",
            species=task.species,
            tissue=task.tissue,
            additional_info=task.additional_info,
            parent=task.parent,
            markers=task.markers,
            main_cell_type=first.main_cell_type,
            sub_cell_types=first.sub_cell_types,
            key_markers=first.key_markers,
            reason=reason,
            review=review,
        )
        return [{"role": "system", "content": system}, {"role": "user", "content": opening}]

    def plan(self, task: ClusterTask) -> Messages:
        """Return its opening messages for a typical doubtful cluster (one round)."""
        typical = Annotation("x" * 20, key_markers=task.markers[:5])
        review = "x" * _TYPICAL_REVIEW_CHARS
        return self.messages(task, typical, reason="a low score", review=review, expression=True)

    def __call__(self, context: ClusterContext) -> None:
        """Boost the cluster when it needs it; on success replace its answer and rescore."""
        result = context.result
        reason = self.reason(result)
        if reason is None:
            return
        result.set(BOOST_REASON.name, reason)
        result.set(BOOST_ERROR.name, None)
        evidence = context.evidence
        if evidence is None:
            result.set(BOOST_ERROR.name, "No expression data or marker table to look genes up in.")
            return
        try:
            answer, asked, measured = self._converse(context, reason, evidence)
        except FatalLLMError:
            raise
        except (LLMError, CassiaError, KeyError) as err:
            result.set(BOOST_ERROR.name, f"The boost failed; the first label is kept: {err}")
            return
        if answer is None:
            result.set(
                BOOST_ERROR.name,
                f"No final answer after {self.rounds} rounds; the first label is kept.",
            )
            result.set(BOOST_GENES.name, asked)
            return
        self._replace_answer(context, answer, asked, measured)

    def _converse(
        self, context: ClusterContext, reason: str, evidence: Any
    ) -> tuple[Annotation | None, list[str], set[str]]:
        """Run the rounds; return the final answer (None: none), genes asked, genes found."""
        result = context.result
        first = Annotation(
            result.main_cell_type,
            sub_cell_types=result.sub_cell_types,
            key_markers=result.key_markers,
        )
        review = "\n".join(
            text
            for text in (
                result.validation_feedback if result.validation_passed is False else "",
                result.get(SCORE_REASONING),
            )
            if text
        )
        messages = self.messages(
            context.task, first, reason=reason, review=review, expression=context.data is not None
        )
        asked: list[str] = []
        measured: set[str] = set()
        for round_number in range(1, self.rounds + 1):
            context.result.set(BOOST_ROUNDS.name, round_number)
            reply = context.ask(self.name, messages, continues=round_number > 1)
            found = extract_json_object(reply.content)
            genes = parse_gene_request(found)
            last = round_number == self.rounds
            if genes and not last:
                shown = list(genes[: self.max_genes])
                asked += [g for g in shown if g not in asked]
                table = evidence.lookup(context.task.cluster, shown)
                seen = table["status"].isin(_SEEN_IN_THE_DATA)
                measured |= {str(g).upper() for g in table.loc[seen, "found"]}
                follow_up = render(
                    "booster_evidence",
                    cut=len(genes) > self.max_genes,
                    asked=len(genes),
                    max_genes=self.max_genes,
                    evidence=evidence.describe(context.task.cluster, shown),
                    last=round_number + 1 == self.rounds,
                    rounds_left=self.rounds - round_number,
                )
            else:
                answer = parse_annotation(found)
                if answer is not None:
                    return answer, asked, measured
                follow_up = render("booster_unreadable", last=round_number + 1 == self.rounds)
            messages = [
                *messages,
                {"role": "assistant", "content": reply.content},
                {"role": "user", "content": follow_up},
            ]
        return None, asked, measured

    def _replace_answer(
        self, context: ClusterContext, answer: Annotation, asked: list[str], measured: set[str]
    ) -> None:
        result = context.result
        result.set(INITIAL_CELL_TYPE.name, result.main_cell_type)
        result.set(INITIAL_SCORE.name, result.get(SCORE))
        result.main_cell_type = answer.main_cell_type
        result.sub_cell_types = list(answer.sub_cell_types)
        result.possible_mixed_cell_types = list(answer.possible_mixed_cell_types)
        result.possible_tissues = list(answer.possible_tissues) or result.possible_tissues
        result.key_markers = list(answer.key_markers)
        # A gene the data was asked about supports the call as much as a listed marker.
        cited = [g for g in answer.key_markers if g.upper() not in measured]
        result.unsupported_markers = unsupported_markers(cited, context.task.markers)
        result.set(BOOST_GENES.name, asked)
        result.set(BOOSTED.name, True)
        if self.rescore is not None:
            self.rescore(context)
