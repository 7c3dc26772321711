"""Help from the model for labels the offline rules cannot map to the Cell Ontology.

Opt-in (``ontology="model"``): for a main cell type left ``"unknown"``, candidate terms are
found offline (labels, synonyms, fuzzy matching) and the run's model chooses one of them,
or none. An ID outside the candidates is rejected; a failed call leaves the label unmapped.
"""

from __future__ import annotations

from ..errors import FatalLLMError, LLMError
from ..fields import Field
from ..ontology import UNKNOWN, CellOntology
from ..prompts import render
from ..replies import extract_json_object
from .context import ClusterContext, ClusterTask, Messages

CHOICE_SCHEMA = {
    "type": "object",
    "properties": {
        "term_id": {"type": "string"},
        "broader": {"type": "boolean"},
        "reason": {"type": "string"},
    },
    "required": ["term_id", "reason"],
}
#: ``ontology_method`` of a term the model chose among the candidates.
MODEL_CHOICE = "model"


class OntologyChooser:
    """Let the model choose a Cell Ontology term among offline candidates, or none.

    Parameters
    ----------
    ontology
        The Cell Ontology.
    n_candidates
        Candidate terms shown at most.

    Examples
    --------
    >>> from cassia_sc.ontology import cell_ontology
    >>> chooser = OntologyChooser(cell_ontology(), n_candidates=5)
    >>> chooser.name
    'ontology'
    """

    name = "ontology"
    #: Completion tokens of a usual reply, for a dry run's cost estimate
    #: (a term id and a line of reasons).
    reply_tokens = 100
    fields: tuple[Field, ...] = ()  # it fills the core ontology fields

    def __init__(self, ontology: CellOntology, *, n_candidates: int = 10) -> None:
        self.ontology = ontology
        self.n_candidates = n_candidates

    def messages(
        self, task: ClusterTask, label: str, markers: list[str], candidates: list[tuple[str, str]]
    ) -> Messages:
        """Return the messages asking the model to choose among ``candidates``."""
        return [
            {"role": "system", "content": render("ontology_chooser_system")},
            {
                "role": "user",
                "content": render(
                    "ontology_chooser_task",
                    label=label,
                    species=task.species,
                    tissue=task.tissue,
                    markers=markers,
                    candidates=candidates,
                ),
            },
        ]

    def plan(self, task: ClusterTask) -> Messages:
        """Return its messages for a label with a full list of candidates."""
        typical = [(f"CL:{i:07d}", "x" * 30) for i in range(self.n_candidates)]
        return self.messages(task, "x" * 30, list(task.markers[:5]), typical)

    def __call__(self, context: ClusterContext) -> None:
        """Map the main cell type when the offline rules left it unmapped."""
        result = context.result
        if not result.main_cell_type or result.ontology_term_id not in (None, UNKNOWN):
            return
        found = self.ontology.candidates(
            result.main_cell_type, n=self.n_candidates, tissue=context.task.tissue
        )
        candidates = {m.term_id: m.term_label for m in found}
        if not candidates:
            return
        messages = self.messages(
            context.task, result.main_cell_type, result.key_markers, list(candidates.items())
        )
        try:
            reply = context.ask(self.name, messages, schema=CHOICE_SCHEMA)
        except FatalLLMError:
            raise
        except LLMError:
            return  # the offline answer, "unknown", stands
        answer = extract_json_object(reply.content) or {}
        chosen = str(answer.get("term_id", "")).strip()
        if chosen not in candidates:  # "none", or an ID it was not offered: rejected
            result.set("ontology_method", "unmapped")
            return
        result.ontology_term_id = chosen
        result.ontology_label = candidates[chosen]
        result.ontology_score = None
        result.set("ontology_method", MODEL_CHOICE)
        result.set("ontology_broader", bool(answer.get("broader", False)))
