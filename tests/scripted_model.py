"""A scripted stand-in for a language model, served by ``llm_server.LLMServer``.

It reads each request the way a model would (which agent is asking, which markers the
cluster has) and answers in the reply contract: step-by-step prose ending with a fenced
JSON answer for the annotator, a JSON verdict for the validator, JSON for the formatter.
Tests override single behaviours to inject faults.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping

from llm_server import RecordedRequest, Reply

MARKER_LINE = re.compile(r"Ranked marker genes of the cluster \(\d+\):\n(.+)")


def agent_of(request: RecordedRequest) -> str:
    """Which of our agents sent the request, from its system prompt."""
    system = request.messages[0]["content"] if request.messages else ""
    if system.startswith("You review cell-type annotations"):
        return "validator"
    if system.startswith("You turn a cell-type annotation"):
        return "formatter"
    if system.startswith("You grade cell-type annotations"):
        return "scorer"
    if "settle a doubtful cell-type annotation" in system:
        return "booster"
    if system.startswith("You name the cell types of single-cell clusters at one level"):
        return "grouper"
    return "annotator"


# A cluster line of a grouper request: its name as a JSON string, then its main cell type.
GROUPING_LINE = re.compile(
    r'^- ("(?:[^"\\]|\\.)*"): main cell type: (.*?)(?:; subtypes: |; state: |$)'
)
GROUPING_LEVELS = {
    "broad lineage": "broad",
    "detailed type": "detailed",
    "very detailed type": "very_detailed",
}


def grouping_request(request: RecordedRequest) -> tuple[str, dict[str, str]]:
    """The level a grouper request asks for, and each cluster it lists with its main type."""
    task = request.messages[1]["content"]
    level = re.search(r"^Level: ([a-z ]+)\.", task, re.MULTILINE)
    clusters = {
        json.loads(found.group(1)): found.group(2)
        for found in map(GROUPING_LINE.match, task.splitlines())
        if found
    }
    return GROUPING_LEVELS[level.group(1)] if level else "", clusters


def markers_of(request: RecordedRequest) -> list[str]:
    """The ranked markers in the request's first user message."""
    for message in request.messages:
        if message["role"] == "user":
            found = MARKER_LINE.search(message["content"])
            if found:
                return [g.strip() for g in found.group(1).split(",")]
    return []


def signature(markers: list[str]) -> str:
    """How the scripted model tells clusters apart: their first three markers."""
    return ", ".join(markers[:3])


def is_revision(request: RecordedRequest) -> bool:
    return agent_of(request) == "annotator" and len(request.messages) > 2


def annotation_reply(
    main: str,
    *,
    subtypes: tuple[str, ...] = (),
    mixed: tuple[str, ...] = (),
    key_markers: tuple[str, ...] = (),
    tissues: tuple[str, ...] | None = None,
    fence: str = "```json",
    newline: str = "\n",
) -> str:
    answer = {
        "main_cell_type": main,
        "sub_cell_types": list(subtypes),
        "possible_mixed_cell_types": list(mixed),
        "key_markers": list(key_markers),
    }
    if tissues is not None:
        answer["possible_tissues"] = list(tissues)
    prose = [
        f"Step 1. The top markers {', '.join(key_markers) or 'listed'} are lineage-defining.",
        f"Step 2. Together they point to {main}.",
        "Step 3. Nothing in the list contradicts this call.",
        "",
        fence,
        json.dumps(answer, indent=2),
        "```",
    ]
    return newline.join(prose)


def verdict_reply(passed: bool, feedback: str = "The call is supported by the markers.") -> str:
    return json.dumps({"verdict": "pass" if passed else "fail", "feedback": feedback})


def score_reply(score: float, reasoning: str = "Several lineage markers agree.") -> str:
    return f"```json\n{json.dumps({'score': score, 'reasoning': reasoning})}\n```"


def gene_request_reply(genes: list[str], hypotheses: tuple[str, ...] = ("T cell", "B cell")) -> str:
    body = json.dumps({"hypotheses": list(hypotheses), "genes": genes})
    return f"I weigh {' against '.join(hypotheses)}.\n```json\n{body}\n```"


def first_annotation(request: RecordedRequest) -> str:
    """The main cell type a boost request says was called first."""
    found = re.search(r"The first annotation: ([^\n(]+)", request.messages[1]["content"])
    return found.group(1).strip() if found else "Unknown"


class ScriptedModel:
    """Answers every agent; ``cell_types`` maps a cluster's signature to its answer.

    Parameters
    ----------
    cell_types
        :func:`signature` of a cluster -> main cell type; others get "Unknown".
    annotator, validator, formatter, scorer, booster, grouper
        Optional overrides ``(request, markers) -> Reply | None``; None falls back to
        the default behaviour (the scorer gives 90; the booster keeps the first answer;
        the grouper names each cluster after its main cell type, at every level).
    """

    def __init__(
        self,
        cell_types: Mapping[str, str] | None = None,
        *,
        annotator: Callable[[RecordedRequest, list[str]], Reply | None] | None = None,
        validator: Callable[[RecordedRequest, list[str]], Reply | None] | None = None,
        formatter: Callable[[RecordedRequest, list[str]], Reply | None] | None = None,
        scorer: Callable[[RecordedRequest, list[str]], Reply | None] | None = None,
        booster: Callable[[RecordedRequest, list[str]], Reply | None] | None = None,
        grouper: Callable[[RecordedRequest, list[str]], Reply | None] | None = None,
        delay: float = 0.0,
    ) -> None:
        self.cell_types = dict(cell_types or {})
        self.overrides = {
            "annotator": annotator,
            "validator": validator,
            "formatter": formatter,
            "scorer": scorer,
            "booster": booster,
            "grouper": grouper,
        }
        self.delay = delay

    def answer_for(self, markers: list[str]) -> str:
        return self.cell_types.get(signature(markers), "Unknown")

    def __call__(self, request: RecordedRequest, index: int) -> Reply:
        agent = agent_of(request)
        markers = markers_of(request)
        override = self.overrides[agent]
        reply = override(request, markers) if override else None
        if reply is None:
            reply = self._default(agent, request, markers)
        if self.delay and not reply.delay:
            reply.delay = self.delay
        return reply

    def _default(self, agent: str, request: RecordedRequest, markers: list[str]) -> Reply:
        if agent == "validator":
            return Reply(content=verdict_reply(True))
        if agent == "scorer":
            return Reply(content=score_reply(90))
        if agent == "grouper":
            return Reply(content=json.dumps(grouping_request(request)[1]))
        if agent == "booster":
            return Reply(
                content=annotation_reply(first_annotation(request), key_markers=tuple(markers[:2]))
            )
        main = self.answer_for(markers)
        if agent == "formatter":
            return Reply(content=json.dumps({"main_cell_type": main, "key_markers": markers[:2]}))
        blind = "Tissue: unknown" in request.messages[1]["content"]
        return Reply(
            content=annotation_reply(
                main,
                subtypes=(f"{main} subtype A", f"{main} subtype B"),
                key_markers=tuple(markers[:3]),
                tissues=("blood", "spleen") if blind else None,
            )
        )
