"""The scripted model both programs talk to in the side-by-side benchmark.

One OpenAI-compatible server (``tests/llm_server.py``) answers cassia_sc's agents in our
reply contract and CASSIA 1.4.0's in its own (its annotator must say "FINAL ANNOTATION
COMPLETED", its validator "VALIDATION PASSED", its formatter return a ```json block). Both
get the same reasoning text and the same answer for a cluster, which the server knows by
the cluster's first three markers. Faults are injected per request from a seeded random
stream, so both programs face the same odds.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from cassia_model import (
    cassia_agent,
    cassia_annotation,
    cassia_formatting,
    cassia_validation,
    split_markers,
)
from llm_server import RecordedRequest, Reply

__all__ = ["BenchModel", "Faults", "request_hash", "signature", "split_markers"]

# The reasoning every annotator reply carries (about 1,200 characters), whoever asks.
REASONING = (
    "Step 1. The first markers are the most specific to the cluster; {m0}, {m1} and {m2} "
    "lead the list and define its lineage, while the ribosomal and housekeeping genes "
    "further down say little about cell type.\n"
    "Step 2. Taken together, the lineage-defining genes agree on one population, and no "
    "marker of a competing lineage appears among the first twenty genes.\n"
    "Step 3. The state genes (cycling, stress, interferon response) are weak here, so the "
    "call rests on identity genes rather than on a transient programme.\n"
    "Step 4. No second population is needed to explain the list: a doublet or contaminating "
    "population would show its own lineage genes high in the ranking, and none does.\n"
    "Conclusion: the most probable cell type is {answer}, with {answer} subtypes ranked by "
    "how well their specific genes are represented.\n"
)
FEEDBACK = "The annotation agrees with the lineage-defining markers; no contradiction found."

_OUR_MARKERS = re.compile(r"Ranked marker genes of the cluster \(\d+\):\n(.+)")


def signature(markers: list[str]) -> str:
    """How the server tells clusters apart: their first three markers."""
    return "|".join(m.strip() for m in markers[:3])


@dataclass
class Faults:
    """Which requests fail: shares of 500s and 429s, and one cluster that always fails."""

    share_500: float = 0.0
    share_429: float = 0.0
    poisoned: str | None = None  # signature of a cluster whose every request fails
    seed: int = 0

    def pick(self, index: int, cluster: str | None) -> Reply | None:
        if self.poisoned is not None and cluster == self.poisoned:
            return Reply(status=500, error_message="upstream failure for this cluster")
        draw = random.Random(self.seed * 1_000_003 + index).random()
        if draw < self.share_500:
            return Reply(status=500, error_message="upstream failure")
        if draw < self.share_500 + self.share_429:
            return Reply(status=429, headers={"Retry-After": "1"}, error_message="slow down")
        return None


@dataclass
class BenchModel:
    """The server's handler: answers, latency, faults, and what it saw."""

    truth: dict[str, str]
    latency: float = 0.2
    faults: Faults = field(default_factory=Faults)

    def __call__(self, request: RecordedRequest, index: int) -> Reply:
        program, agent, key = self.identify(request)
        reply = self.faults.pick(index, key) or self.answer(program, agent, key)
        reply.delay = self.latency
        return reply

    def identify(self, request: RecordedRequest) -> tuple[str, str, str | None]:
        found = cassia_agent(request)  # CASSIA's agents, told apart as the tests do
        if found is not None:
            agent, markers = found
            return "cassia", agent, signature(markers) if markers else None
        system = request.messages[0]["content"] if request.messages else ""
        found = _OUR_MARKERS.search("\n".join(m["content"] for m in request.messages))
        agent = (
            "validator" if system.startswith("You review cell-type annotations") else "annotator"
        )
        return "ours", agent, signature(split_markers(found.group(1))) if found else None

    def answer(self, program: str, agent: str, key: str | None) -> Reply:
        answer = self.truth.get(key or "", "Unknown")
        markers = [*(key or "A|B|C").split("|"), "", "", ""]
        reasoning = REASONING.format(m0=markers[0], m1=markers[1], m2=markers[2], answer=answer)
        subtypes = [f"{answer} subtype {letter}" for letter in "AB"]
        if program == "cassia":
            if agent == "annotator":
                return Reply(content=cassia_annotation(reasoning, key or ""))
            if agent == "validator":
                return Reply(content=cassia_validation(FEEDBACK))
            return Reply(content=cassia_formatting(answer, subtypes))
        if agent == "validator":
            return Reply(content=json.dumps({"verdict": "pass", "feedback": FEEDBACK}))
        block = {
            "main_cell_type": answer,
            "sub_cell_types": subtypes,
            "possible_mixed_cell_types": [],
            "key_markers": markers[:3],
        }
        return Reply(content=f"{reasoning}\n```json\n{json.dumps(block)}\n```")


def request_hash(request: RecordedRequest) -> str:
    body = {"model": request.body.get("model"), "messages": request.messages}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
