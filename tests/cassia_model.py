"""A scripted model for CASSIA 1.4.0's own agents, beside ours, that records every exchange.

CASSIA's agents are told apart by a phrase of their first message, and their cluster by
the markers their prompt lists (the signature of :mod:`scripted_model`: the first three):

=============  ==================================================  =======================
agent          CASSIA 1.4.0 function                               reply it needs
=============  ==================================================  =======================
annotator      ``runCASSIA_batch``                                 reasoning, then
                                                                   "FINAL ANNOTATION
                                                                   COMPLETED"
validator      ``runCASSIA_batch``                                 "VALIDATION PASSED"
formatter      ``runCASSIA_batch``                                 a ```json block
scorer         ``runCASSIA_score_batch``                           ``<reasoning>`` and
                                                                   ``<score>NN</score>``
booster        ``runCASSIA_annotationboost``                       ``<check_genes>``, then
                                                                   "FINAL ANNOTATION
                                                                   COMPLETED"
summarizer     its boost, ``conversation_history_mode="final"``    a short summary
reporter       its boost's report                                  CASSIA's report tags
=============  ==================================================  =======================

The annotator of either program writes a *trace* into its reasoning, one sentence unique
to the program and the cluster (:meth:`CassiaModel.trace`), so a test can tell whether a
later prompt (CASSIA's judge reading our files, our judge reading CASSIA's) carried that
cluster's conversation. Our own agents are answered by :class:`scripted_model.ScriptedModel`.

The benchmarks' scripted server (``benchmarks/bench_server.py``) tells CASSIA's agents
apart and answers them with the functions here too.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from llm_server import RecordedRequest, Reply, text_of
from scripted_model import ScriptedModel, agent_of, annotation_reply, markers_of, signature

__all__ = [
    "CASSIA_PHRASES",
    "CassiaModel",
    "Exchange",
    "cassia_agent",
    "cassia_annotation",
    "cassia_boost_conclusion",
    "cassia_boost_report",
    "cassia_formatting",
    "cassia_gene_request",
    "cassia_score",
    "cassia_summary",
    "cassia_validation",
    "split_markers",
]

#: CASSIA 1.4.0's agents, by a phrase of the first message they send (spaces collapsed).
#: The booster has two prompt families (breadth and depth first, with or without an extra
#: task); the reporter has one per report style, both opening the same way.
CASSIA_PHRASES: dict[str, tuple[str, ...]] = {
    "annotator": ("You are a professional computational biologist",),
    "validator": ("validate the final annotation results",),
    "formatter": ("You are a formatting assistant",),
    "scorer": ("Your task is to evaluate and rate single-cell annotation results",),
    "booster": (
        "You are a careful senior computational biologist",
        "You are a careful professional biologist, specializing in single-cell RNA-seq",
    ),
    "summarizer": ("You are a specialized scientific summarization agent",),
    "reporter": ("You are a specialized scientific report generator",),
}

# Where each agent's prompt lists the cluster's markers (the annotator's and validator's
# as the benchmarks have always read them; the scorer's from its <marker> tag; the
# booster's from its breadth-first or its older prompt; \uff1a is CASSIA's full-width colon).
_MARKERS: dict[str, tuple[re.Pattern[str], ...]] = {
    "annotator": (
        re.compile(
            r"based on this ranked marker list:\n"
            r"(.*?)(?: Below is some additional information|\n|$)",
            re.S,
        ),
    ),
    "validator": (re.compile(r"\nMarker List: (.*?)\nAdditional Info:"),),
    "scorer": (re.compile(r"<marker>\n(.*?)\n</marker>", re.S),),
    "booster": (
        re.compile(r"Top ranked markers \(high \u2192 low\)\uff1a\n\s*(.*)"),
        re.compile(r"differentially expressed in this cluster:\n(.*)"),
    ),
}
# The annotator's reply carries its cluster's key, so that the formatter and the
# summarizer, which see only that reply, know the cluster too.
_CLUSTER_KEY = re.compile(r"\[\[CLUSTER_KEY=(.*?)\]\]")
_FINAL_TYPE = re.compile(r"Final cell type: (.+)")
_CHECKED = re.compile(r"<check_genes>(.*?)</check_genes>", re.S)


def split_markers(text: str) -> list[str]:
    """A comma-separated marker list as CASSIA writes it, as a list."""
    return [m.strip() for m in text.split(",") if m.strip()]


def cassia_agent(request: RecordedRequest) -> tuple[str, list[str]] | None:
    """Which of CASSIA 1.4.0's agents sent a request, and the markers it is about.

    Returns ``(agent, markers)``: the cluster's markers as the prompt lists them (for the
    formatter and the summarizer, which see only the annotator's reply, the key that reply
    carries, split at commas; empty when the prompt does not tell); None for a request that
    is not CASSIA's.
    """
    first = request.messages[0].get("content") if request.messages else ""
    opening = " ".join(str(first or "").split())
    agent = next(
        (name for name, phrases in CASSIA_PHRASES.items() if any(p in opening for p in phrases)),
        None,
    )
    if agent is None:
        return None
    text = text_of(request)
    for pattern in _MARKERS.get(agent, ()):
        found = pattern.search(text)
        if found:
            return agent, split_markers(found.group(1))
    found = _CLUSTER_KEY.search(text)
    return agent, split_markers(found.group(1)) if found else []


# -- CASSIA's reply formats ---------------------------------------------------------------


def cassia_annotation(reasoning: str, key: str) -> str:
    """The annotator's reply: reasoning, the cluster's key, CASSIA's closing phrase.

    ``key`` names the cluster for the agents that see only this reply: its first markers,
    comma-separated, or any text without a comma (:func:`cassia_agent` then returns it as
    a one-item list).
    """
    return f"{reasoning}[[CLUSTER_KEY={key}]]\nFINAL ANNOTATION COMPLETED"


def cassia_validation(feedback: str) -> str:
    """The validator's passing verdict."""
    return f"{feedback}\nValidation result: VALIDATION PASSED"


def cassia_formatting(main: str, subtypes: Sequence[str], mixed: Sequence[str] = ()) -> str:
    """The formatter's ```json block."""
    block = {
        "main_cell_type": main,
        "sub_cell_types": list(subtypes),
        "possible_mixed_cell_types": list(mixed),
    }
    return "```json\n" + json.dumps(block) + "\n```"


def cassia_score(score: int, reasoning: str) -> str:
    """The judge's reply in the tags CASSIA's ``extract_score_and_reasoning`` reads first."""
    return f"<reasoning>\n{reasoning}\n</reasoning>\n\n<score>{score}</score>"


def cassia_gene_request(genes: Sequence[str], evaluation: str) -> str:
    """The booster's first reply: an evaluation and one ``<check_genes>`` block."""
    return (
        f"Evaluation\n{evaluation}\n\ncelltype to check 1\n\n"
        f"<check_genes>{','.join(genes)}</check_genes>\n\n"
        "<reasoning>\nThese genes tell the leading hypotheses apart.\n</reasoning>"
    )


def cassia_boost_conclusion(cell_type: str, genes: Sequence[str]) -> str:
    """The booster's last reply, with the phrase that ends CASSIA's loop."""
    return (
        "FINAL ANNOTATION COMPLETED\n"
        f"Final cell type: {cell_type}\nConfidence level: high\n"
        f"Key markers: {', '.join(genes)}"
    )


def cassia_summary(cell_type: str, genes: Sequence[str]) -> str:
    """The boost's summary of a first annotation (``conversation_history_mode="final"``)."""
    return (
        f"Previously Identified Cell Type: {cell_type}\n"
        f"Key Supporting Markers: {', '.join(genes)}\n"
        "Remaining Uncertainties: the lineage markers were not checked."
    )


def cassia_boost_report(conversation: str) -> str:
    """The boost's report, in the tags of CASSIA's per-iteration style."""
    final = _FINAL_TYPE.findall(conversation)
    checked = _CHECKED.findall(conversation)
    return (
        "<OVERVIEW>\nOne round of gene checks.\n</OVERVIEW>\n"
        "<INITIAL_ASSESSMENT>\nThe first annotation, checked once.\n</INITIAL_ASSESSMENT>\n"
        "<ITERATION_1>\n<HYPOTHESES>\n1. The first annotation.\n</HYPOTHESES>\n"
        f"<GENES_CHECKED>\n{checked[0] if checked else ''}\n</GENES_CHECKED>\n"
        "<KEY_FINDINGS>\n1. The lineage markers settle it. (Hypothesis_1)\n</KEY_FINDINGS>\n"
        "</ITERATION_1>\n"
        f"<FINAL_ANNOTATION>\n{final[-1] if final else 'Unknown'}\n</FINAL_ANNOTATION>\n"
        f"<MARKER_SUMMARY>\n{checked[0] if checked else ''}\n</MARKER_SUMMARY>\n"
        "<RECOMMENDATIONS>\nNone.\n</RECOMMENDATIONS>"
    )


# -- the model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exchange:
    """One request the model answered: who sent it, for which cluster, what it said."""

    program: str  # "ours" or "cassia"
    agent: str
    key: str | None  # the cluster's signature
    model: str | None  # the model the request named: tests give each step its own
    prompt: str  # every message of the request, joined
    reply: str


class CassiaModel:
    """Answers CASSIA 1.4.0's agents and ours, and records every exchange.

    Parameters
    ----------
    cell_types
        A cluster's :func:`scripted_model.signature` -> its main cell type (others get
        "Unknown"), for both programs.
    delay
        Seconds before each reply.

    Attributes
    ----------
    exchanges
        Every request answered, in arrival order.
    """

    def __init__(self, cell_types: Mapping[str, str] | None = None, *, delay: float = 0.0):
        self.cell_types = dict(cell_types or {})
        self.delay = delay
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self._ours = ScriptedModel(self.cell_types, annotator=self._our_annotation)

    # -- what a test asks -------------------------------------------------------------------

    @staticmethod
    def trace(program: str, key: str | None) -> str:
        """The sentence the annotator of ``program`` writes for a cluster, unique to both.

        Letters, digits and spaces only, so that every report shows it as it is.
        """
        digest = hashlib.sha256(f"{program}\n{key}".encode()).hexdigest()[:12].upper()
        return f"Trace {program} {digest} ties this reasoning to its cluster."

    @staticmethod
    def score(key: str | None) -> int:
        """The score CASSIA's judge gets for a cluster: 60 to 94, fixed by its markers."""
        return 60 + int(hashlib.sha256(str(key).encode()).hexdigest(), 16) % 35

    @staticmethod
    def score_reasoning(key: str | None) -> str:
        """The reasoning CASSIA's judge gets for a cluster."""
        return f"The call agrees with the first markers {key}."

    def sent(
        self, program: str, agent: str, *, key: str | None = None, model: str | None = None
    ) -> list[Exchange]:
        """The exchanges of one agent of one program, of one cluster and model if given."""
        with self._lock:
            return [
                e
                for e in self.exchanges
                if (e.program, e.agent) == (program, agent)
                and key in (None, e.key)
                and model in (None, e.model)
            ]

    # -- the handler --------------------------------------------------------------------------

    def __call__(self, request: RecordedRequest, index: int) -> Reply:
        found = cassia_agent(request)
        if found is None:
            program, key = "ours", signature(markers_of(request)) or None
            reply = self._ours(request, index)
            agent = agent_of(request)
        else:
            program, (agent, markers) = "cassia", found
            key = signature(markers) or None
            reply = self._cassia(agent, key, request)
        with self._lock:
            self.exchanges.append(
                Exchange(program, agent, key, request.model, text_of(request), reply.content or "")
            )
        if self.delay and not reply.delay:
            reply.delay = self.delay
        return reply

    def _our_annotation(self, request: RecordedRequest, markers: list[str]) -> Reply | None:
        """Our annotator's default answer, with the trace as its first line of reasoning."""
        main = self._ours.answer_for(markers)
        text = annotation_reply(
            main, subtypes=(f"{main} subtype A",), key_markers=tuple(markers[:3])
        )
        return Reply(content=f"{self.trace('ours', signature(markers))}\n{text}")

    def _cassia(self, agent: str, key: str | None, request: RecordedRequest) -> Reply:
        answer = self.cell_types.get(key or "", "Unknown")
        genes = (key or "").split(", ")[:3]
        if agent == "annotator":
            reasoning = (
                f"{self.trace('cassia', key)}\n"
                f"Step 1. The first markers {', '.join(genes)} define the lineage.\n"
                f"Step 2. Together they point to {answer}.\n"
            )
            return Reply(content=cassia_annotation(reasoning, ", ".join(genes)))
        if agent == "validator":
            return Reply(content=cassia_validation("The markers support the annotation."))
        if agent == "formatter":
            return Reply(content=cassia_formatting(answer, [f"{answer} subtype A"]))
        if agent == "scorer":
            return Reply(content=cassia_score(self.score(key), self.score_reasoning(key)))
        if agent == "summarizer":
            return Reply(content=cassia_summary(answer, genes))
        if agent == "reporter":
            return Reply(content=cassia_boost_report(text_of(request)))
        # The booster: genes once, then its conclusion.
        if not any(m.get("role") == "assistant" for m in request.messages):
            return Reply(content=cassia_gene_request(genes, "The first call rests on few markers."))
        return Reply(content=cassia_boost_conclusion(answer, genes))
