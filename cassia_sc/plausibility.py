"""Whether a model's main cell type is an answer at all, checked without a model.

Small models fill the contract's fields with words that are no cell type: the tissue or
the species ("human kidney"), a field's own name ("main_cell_type"), a letter left by a
reply cut off after a comma and closed by the JSON repair ("A"), or words that name no
cell ("species", "doublet"). :func:`implausibility` says why such a label is not an
answer; the annotator then gets one revision with the reason, and a cluster whose answer
stays implausible gets the status ``"implausible"``, never ``"ok"``.

"Names no cell" needs the Cell Ontology (the ``ontology`` extra): a single plain word with no
CL term and no word of a cell (``cell``, ``-cyte``, ``-blast``, ``neuron``, ...) names none
("doublet", "debris", "cycling"). Labels of several words are left alone: a name the
ontology lacks may still be a cell type ("CD8 subtype 2"). Without the extra, that rule
is skipped. An explicit "Unknown" is an honest answer, not an implausible one.
"""

from __future__ import annotations

import re

from .errors import OntologyUnavailable
from .ontology import ABBREVIATIONS, UNKNOWN, cell_ontology

#: The names of the reply contract's fields, and other words that stand for a field.
FIELD_NAMES = frozenset(
    {
        "main_cell_type",
        "main cell type",
        "sub_cell_types",
        "sub cell types",
        "possible_mixed_cell_types",
        "key_markers",
        "key markers",
        "possible_tissues",
        "cell_type",
        "cell type",
        "celltype",
        "species",
        "tissue",
        "organ",
        "markers",
        "json",
        "null",
        "none",
        "string",
    }
)
#: Answers that say the markers were not enough: honest, and kept as they are.
UNDECIDED = frozenset({"unknown", "unclear", "undetermined", "unknown cell type"})
# Words that make a label name a cell, whole or as an ending (erythrocyte, myoblast).
_CELL_WORD = re.compile(
    r"\b(cells?|[a-z]*(?:cytes?|blasts?|clasts?|phils?|phages?|neurons?|glia|gliocytes?)"
    r"|platelets?|fibres?|fibers?|myotubes?)\b"
)
_SPACES = re.compile(r"[\s_\-]+")
# One word of letters, as long as words are: the only labels the ontology rule judges.
_PLAIN_WORD = re.compile(r"[a-z]{3,40}")
_QUOTED = 60  # characters of a label quoted in a reason
# Names of cell types two letters long (NK, DC), which are answers all the same.
_SHORT_NAMES = frozenset(a.lower() for a in ABBREVIATIONS if len(a) <= 2)


def implausibility(label: str, *, tissue: str | None, species: str | None) -> str | None:
    """Return why ``label`` is not a cell type, or None when it may be one.

    Parameters
    ----------
    label
        The model's main cell type.
    tissue, species
        The run's, which a label must not merely repeat.

    Returns
    -------
    str or None
        The reason, written to be sent back to the model and shown to the user.

    Examples
    --------
    >>> implausibility("human kidney", tissue="kidney", species="human")
    '"human kidney" names the species and the tissue, not a cell type.'
    >>> implausibility("A", tissue="kidney", species="human") is not None
    True
    >>> implausibility("Proximal tubule cell", tissue="kidney", species="human") is None
    True
    """
    words = _SPACES.sub(" ", label.strip().lower()).strip(" .,:;\"'`*()[]{}")
    label = label if len(label) <= _QUOTED else label[:_QUOTED] + "..."  # a reason stays short
    if not words:
        return "The main cell type is empty."
    if words in UNDECIDED:
        return None
    if words in FIELD_NAMES or words.replace(" ", "_") in FIELD_NAMES:
        return f'"{label}" is the name of a field of the answer, not a cell type.'
    given = {"the species": species, "the tissue": tissue}
    named = [part for part, value in given.items() if value and _said(words, value)]
    both = [value for value in given.values() if value]
    if not named and len(both) == 2 and words in {" ".join(p) for p in _pairs(both)}:
        named = list(given)
    if named:
        return f'"{label}" names {" and ".join(named)}, not a cell type.'
    if " " not in words and len(words) <= 2 and words not in _SHORT_NAMES:
        return f'"{label}" is too short to name a cell type.'
    if not _PLAIN_WORD.fullmatch(words) or _CELL_WORD.search(words):
        return None  # several words, or signs: a name the ontology may lack ("CD8+ subset 2")
    try:
        term = cell_ontology().match(label, tissue=tissue).term_id
    except OntologyUnavailable:
        return None  # without the ontology, a label with no cell word is given the benefit
    if term == UNKNOWN:
        return (
            f'"{label}" names no cell type: no Cell Ontology term fits it, and it is no word '
            "of a cell. Answer with the cell type the markers point to."
        )
    return None


def _said(words: str, value: str) -> bool:
    """Whether ``words`` (normalised) merely repeat ``value``."""
    return words == _SPACES.sub(" ", value.lower()).strip()


def _pairs(words: list[str]) -> list[tuple[str, str]]:
    """Both orders of species and tissue ("human kidney", "kidney human"), in lower case."""
    lowered = [_SPACES.sub(" ", w.lower()) for w in words]
    return [(a, b) for a in lowered for b in lowered if a != b]
