"""An optional model judge for evaluation: pairs of labels the ontology cannot relate.

CASSIA's benchmark graded each predicted cell type against the truth with a model, from 0
to 100. The ontology does it offline for the labels it maps; for the pairs it cannot relate
(a label without a term), :func:`judge_pairs` asks a model, with a structured reply, each
call cached like every other.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .._keys import Default
from ..errors import FatalLLMError, LLMError
from ..llm import LLMClient
from ..prompts import render
from ..replies import parse_score
from .scorer import SCORE_SCHEMA


@dataclass(frozen=True)
class Judgement:
    """A model's grade of one predicted label against the truth.

    Attributes
    ----------
    score
        0 to 100, or None when no grade could be had.
    reasoning
        Why, or why there is no grade.
    """

    score: float | None
    reasoning: str


def judge_pairs(
    pairs: Sequence[tuple[str, str]],
    client: LLMClient,
    *,
    tissue: str | None = None,
    species: str | None = None,
    max_workers: int = Default.max_workers,
) -> list[Judgement]:
    """Grade each ``(predicted, truth)`` pair with the model, from 0 to 100.

    Parameters
    ----------
    pairs
        Predicted and true labels.
    client
        The judge's client.
    tissue, species
        The context of the labels.
    max_workers
        Pairs graded at the same time.

    Returns
    -------
    list of Judgement
        One per pair, in order; a failed call or an unreadable reply gives ``score=None``
        and says why.

    Raises
    ------
    FatalLLMError
        When no call can succeed (a bad key, an unknown model).
    """
    stop = threading.Event()

    def judge(pair: tuple[str, str]) -> Judgement:
        predicted, truth = pair
        if not predicted:
            return Judgement(0.0, "No predicted cell type.")
        messages = [
            {"role": "system", "content": render("label_judge_system")},
            {
                "role": "user",
                "content": render(
                    "label_judge_task",
                    tissue=tissue,
                    species=species,
                    truth=truth,
                    predicted=predicted,
                ),
            },
        ]
        try:
            reply = client.complete(messages, schema=SCORE_SCHEMA, stop=stop)
        except FatalLLMError:
            stop.set()
            raise
        except LLMError as err:
            return Judgement(None, f"Not judged: the call failed ({err}).")
        score = parse_score(reply.content)
        if score is None:
            return Judgement(None, "Not judged: the reply held no score from 0 to 100.")
        return Judgement(score.score, score.reasoning)

    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="cassia-sc-judge") as pool:
        return list(pool.map(judge, pairs))
