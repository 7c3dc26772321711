"""Map free-text cell-type labels to Cell Ontology (CL) terms, offline, and compare terms.

Labels come from model answers and from users' truth columns: "CD8+ T cells", "Activated
Neutrophils", "Proximal Tubule Cells (S1 Segment)", "Î±-Intercalated Cell". :class:`CellOntology`
maps each one to a single CL term, using the Cell Ontology that ``cellxgene-ontology-guide``
ships (no network). A label names an identity (the cell type) and often a state (activated,
cycling, fetal, tissue-resident, where it sits); the identity goes to the term, the state
to :attr:`OntologyMatch.state`. The steps, in order, stopping at the first hit:

1. ``"label"``: the CL label, case-insensitive.
2. ``"synonym"``: an exact synonym of a CL term, case-insensitive. A synonym two terms share
   goes to the more general one (fewer ancestors), then the shorter label, then the
   smaller id.
3. ``"normalised"``: the label rewritten, then looked up among the CL labels and synonyms
   rewritten the same way, in word order and as a bag of words (see the guide's list of
   rules). When that finds nothing, the label is reduced, and each reduction looked up:
   notes in parentheses are mapped on their own and reconciled with the rest; "a/b" labels
   are read as alternatives; state words (:data:`STATE_WORDS`) are taken off; then places
   (:data:`ORGANS`, segments); then a word that is a synonym of a longer name is spelled
   out ("Ventricular Cardiomyocytes").
4. ``"fuzzy"``: the closest CL label or synonym by :func:`rapidfuzz.fuzz.token_sort_ratio`,
   kept only at or above ``min_score`` and only when it fixes spelling, never a word that
   names another cell type (CD4/CD8, type 1/2, B/T, fibroblast/fibroblastic, ...).
5. Broader: leading qualifiers are dropped one at a time ("Interstitial Fibroblasts" in the
   skin is a fibroblast) until a term fits; the match is flagged :attr:`OntologyMatch.broader`.
   Never to "cell", never across "non-", "pre-", "pro-".

Terms that differ by organ only ("kidney interstitial fibroblast", "pulmonary interstitial
fibroblast") are chosen with the run's ``tissue``; without a tissue that names an organ,
such a term is taken only when it is the only one and the label's own words name no
broader cell type. Nothing else matches: ``"unmapped"``, with ``term_id="unknown"``.
Following the CELLxGENE schema, only live CL terms are returned: never a deprecated one,
nor :data:`FORBIDDEN` (eukaryotic cell, Eumycetozoan cell, animal cell).

:meth:`CellOntology.similarity` scores a predicted term against a true one from 0 to 100
(the same term 100, a more specific answer 90, a broader one 80 down to 50, close relatives
and :data:`LINEAGE_LINKS` 80 down to 50, unrelated 0); :meth:`CellOntology.relation` is its
1 / 0.5 / 0 form.

Needs the optional ``ontology`` extra: ``pip install -e ".[ontology]"`` in the cassia_sc clone.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import re
import threading
import unicodedata
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from .errors import OntologyUnavailable

__all__ = [
    "ABBREVIATIONS",
    "ANATOMY_ADJECTIVES",
    "FORBIDDEN",
    "LINEAGE_LINKS",
    "ORGANS",
    "STATE_WORDS",
    "TOO_GENERAL",
    "UNKNOWN",
    "CellOntology",
    "OntologyMatch",
    "OntologyUnavailable",
    "cell_ontology",
    "load_in_background",
    "state_kinds",
]

#: ``term_id`` of a label that maps to no CL term.
UNKNOWN = "unknown"

MatchMethod = Literal["label", "synonym", "normalised", "fuzzy", "candidate", "unmapped"]

#: How a predicted term relates to a true one (:meth:`CellOntology.relation_kind`).
RelationKind = Literal[
    "same term", "more specific", "broader", "relative", "lineage", "overlap", "unrelated",
    "unmapped",
]  # fmt: skip

#: Terms the CELLxGENE schema forbids as a cell type: never returned by a match.
FORBIDDEN: dict[str, str] = {
    "CL:0000255": "eukaryotic cell",
    "CL:0000257": "Eumycetozoan cell",
    "CL:0000548": "animal cell",
}

#: Terms that say nothing of a cell's type: related to nothing but themselves.
_ROOT_LIKE = frozenset({"CL:0000000", "CL:0000255", "CL:0000257", "CL:0000548", "CL:0002242"})
_CELL = "CL:0000000"

#: Parents too general to make two terms "close relatives" in :meth:`CellOntology.relation`.
#: Chosen from the shipped CL's structure: the root and the groupings by a property that cuts
#: across lineages (nucleate, motile, secretory, contractile, progenitor, phagocyte, ...),
#: plus the broad lineage classes whose children annotators are expected to tell apart
#: (about 150 or more descendants each: leukocyte, lymphocyte, myeloid cell, epithelial cell,
#: neuron, glial cell, ...), "extraembryonic cell" (a grouping by origin: trophoblast,
#: decidua, yolk sac), and the groupings whose members fall under two or more of those
#: lineages (found by walking the shipped CL: endocrine cell, ciliated cell, bone cell, ...).
#: "native cell", "animal cell" and "somatic cell" are obsolete in
#: current CL, so they are not here. "mononuclear phagocyte" (monocyte, macrophage, dendritic
#: cell) and "T cell" are deliberately left out: their children count as close relatives.
#: Groupings by place ("kidney epithelial cell", "intestinal epithelial cell": one of these
#: classes plus organ or segment words) count as too general as well; they are found in the
#: shipped CL when it loads.
TOO_GENERAL: dict[str, str] = {
    "CL:0000000": "cell",
    "CL:0000255": "eukaryotic cell",
    "CL:0002242": "nucleate cell",
    "CL:0000226": "single nucleate cell",
    "CL:0000219": "motile cell",
    "CL:0000151": "secretory cell",
    "CL:0000325": "stuff accumulating cell",
    "CL:0000211": "electrically active cell",
    "CL:0000393": "electrically responsive cell",
    "CL:0000404": "electrically signaling cell",
    "CL:0000183": "contractile cell",
    "CL:0000630": "supporting cell",
    "CL:0011115": "precursor cell",
    "CL:0011026": "progenitor cell",
    "CL:0000034": "stem cell",
    "CL:0000723": "somatic stem cell",
    "CL:0000145": "professional antigen presenting cell",
    "CL:0000234": "phagocyte",
    "CL:0000518": "phagocyte (sensu Vertebrata)",
    "CL:0000988": "hematopoietic cell",
    "CL:0000081": "blood cell",
    "CL:0000738": "leukocyte",
    "CL:0000842": "mononuclear leukocyte",
    "CL:0000542": "lymphocyte",
    "CL:0000763": "myeloid cell",
    "CL:0000766": "myeloid leukocyte",
    "CL:0000066": "epithelial cell",
    "CL:0002076": "endo-epithelial cell",
    "CL:0002077": "ecto-epithelial cell",
    "CL:0002078": "meso-epithelial cell",
    "CL:0000075": "columnar/cuboidal epithelial cell",
    "CL:1100001": "secretory epithelial cell",
    "CL:0002320": "connective tissue cell",
    "CL:0000499": "stromal cell",
    "CL:0002319": "neural cell",
    "CL:0000540": "neuron",
    "CL:0000095": "neuron associated cell",
    "CL:0000125": "glial cell",
    "CL:0000187": "muscle cell",
    "CL:1000497": "kidney cell",
    "CL:0000349": "extraembryonic cell",
    # groupings by a property or a place whose members belong to two or more of the
    # lineages above (epithelial, hematopoietic, neural, connective tissue, muscle, ...)
    "CL:0000197": "sensory receptor cell",
    "CL:0000206": "chemoreceptor cell",
    "CL:0000163": "endocrine cell",
    "CL:0000154": "protein secreting cell",
    "CL:0000167": "peptide hormone secreting cell",
    "CL:0000174": "steroid hormone secreting cell",
    "CL:0000457": "biogenic amine secreting cell",
    "CL:0000458": "serotonin secreting cell",
    "CL:0002274": "histamine secreting cell",
    "CL:0000048": "multi fate stem cell",
    "CL:0000064": "ciliated cell",
    "CL:0000147": "pigment cell",
    "CL:0000228": "multinucleate cell",
    "CL:4052002": "syncytial cell",
    "CL:0001035": "bone cell",
    "CL:4030031": "interstitial cell",
    "CL:0002494": "cardiocyte",
    "CL:0002559": "hair follicle cell",
    "CL:1000854": "kidney blood vessel cell",
    "CL:1000600": "lower urinary tract cell",
}

#: Abbreviations and common names expanded in step 3, as whole words, case-insensitive. A
#: "cell" right after an abbreviation that already names a cell is absorbed ("MAIT cells" is
#: not "... cell cell"). Left out on purpose: "EC" (endothelial or enterochromaffin), "PC"
#: (plasma or principal cell), "MK", "CAF", "TAM", "MDSC", "MMC" (no single CL term).
#: "HSC" means hematopoietic stem cell; write the liver's hepatic stellate cells out in full.
#: "Tcm" and "Tem" find a term only with CD4 or CD8 ("CD4 TCM"): CL has no central or
#: effector memory T cell in general.
ABBREVIATIONS: dict[str, str] = {
    "NK": "natural killer",
    "NKT": "mature NK T cell",
    "NK T": "mature NK T cell",
    "natural killer T": "mature NK T cell",
    "Treg": "regulatory T cell",
    "T reg": "regulatory T cell",
    "CTL": "cytotoxic T cell",
    "MAIT": "mucosal-associated invariant T cell",
    "TRM": "tissue-resident memory T cell",
    "ab T": "alpha-beta T",
    "gd T": "gamma-delta T",
    "gdT": "gamma-delta T cell",
    "Tcm": "central memory T cell",
    "Tem": "effector memory T cell",
    "pre-B": "precursor B cell",
    "pro-B": "pro-B cell",
    "GC B": "germinal center B cell",
    "DC": "dendritic cell",
    "cDC": "conventional dendritic cell",
    "pDC": "plasmacytoid dendritic cell",
    "moDC": "monocyte-derived dendritic cell",
    "cDC1": "CD141-positive myeloid dendritic cell",
    "DC1": "CD141-positive myeloid dendritic cell",
    "cDC2": "CD1c-positive myeloid dendritic cell",
    "DC2": "CD1c-positive myeloid dendritic cell",
    "MNP": "mononuclear phagocyte",
    "mono": "monocyte",
    "HSC": "hematopoietic stem cell",
    "HSPC": "hematopoietic multipotent progenitor cell",
    "ILC": "innate lymphoid cell",
    "OPC": "oligodendrocyte precursor cell",
    "SMC": "smooth muscle cell",
    "MSC": "mesenchymal stem cell",
    "AT1": "pulmonary alveolar type 1 cell",
    "AT I": "pulmonary alveolar type 1 cell",
    "ATI": "pulmonary alveolar type 1 cell",
    "AT2": "pulmonary alveolar type 2 cell",
    "AT II": "pulmonary alveolar type 2 cell",
    "ATII": "pulmonary alveolar type 2 cell",
    "TAL": "thick ascending limb",
    "PTEC": "proximal tubule epithelial cell",
    "LSEC": "liver sinusoidal endothelial cell",
    "ISC": "intestinal crypt stem cell",
    "intestinal stem cell": "intestinal crypt stem cell",
    "crypt base columnar cell": "intestinal crypt stem cell",
    "EEC": "enteroendocrine cell",
    "TA cell": "transit amplifying cell",
    "cone photoreceptor": "retinal cone cell",
    "rod photoreceptor": "retinal rod cell",
    "tissue macrophage": "tissue-resident macrophage",
    "immune cell": "leukocyte",
    "erythroid cell": "erythroid lineage cell",
    "3T3 cell": "fibroblast",  # the mouse embryo fibroblast line (Todaro and Green, 1963)
    "alpha cell": "pancreatic A cell",
    "beta cell": "type B pancreatic cell",
    "delta cell": "pancreatic D cell",
    "epsilon cell": "pancreatic epsilon cell",
}

#: Whole labels (after step 3's rewriting) that name a population by one marker alone.
#: "CD34+" is how sorted hematopoietic progenitors are labelled (pbmc68k's bulk_labels).
_WHOLE_LABELS: dict[str, str] = {
    "CD34+": "hematopoietic multipotent progenitor cell",
    "CD34+ cell": "hematopoietic multipotent progenitor cell",
}

#: Exact synonyms that today's usage contradicts: "DC1"/"DC2" now mean cDC1/cDC2 (CL keeps
#: them for any conventional and for plasmacytoid dendritic cells), and "alpha cell" means
#: the pancreatic islet cell (CL gives it to a mouse retinal ganglion cell).
_IGNORED_SYNONYMS = frozenset({"dc1", "dc2", "alpha cell"})


# ---------------------------------------------------------------------------------------
# The word tables in cassia_sc/data (their sources: cassia_sc/data/README.md).


def _read_table(name: str) -> list[dict[str, str]]:
    with (Path(__file__).with_name("data") / name).open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


_WORD_ROWS = _read_table("cl_words.csv")

#: Anatomical adjectives read as their nouns, in labels and CL names alike: "Dermal
#: Fibroblasts" is a "fibroblast of dermis", "renal" is "kidney", "pulmonary" is "lung".
ANATOMY_ADJECTIVES: dict[str, str] = {
    row["word"]: row["means"] for row in _WORD_ROWS if row["kind"] == "adjective"
}

#: Words of state, not identity, with their kind (activation, maturity, cycling, ...): taken
#: off a label that finds no term with them ("Activated Neutrophils" is a neutrophil).
STATE_WORDS: dict[str, str] = {
    row["word"]: row["means"] for row in _WORD_ROWS if row["kind"] == "state"
}

_LOCATION_WORDS = frozenset(row["word"] for row in _WORD_ROWS if row["kind"] == "location")
_EPITHELIAL_STRUCTURES = frozenset(
    row["word"] for row in _WORD_ROWS if row["kind"] == "epithelial_structure"
)
# "Epithelial progenitor cell" is an epithelial cell: CL files epithelial, neural and
# hematopoietic progenitors under these classes (basal and club cells, neural stem cells,
# hematopoietic precursors), unlike muscle or endothelial ones.
_PROGENITOR_CLASSES = {
    row["word"]: row["means"] for row in _WORD_ROWS if row["kind"] == "progenitor_class"
}


def _read_organs() -> dict[str, tuple[str, tuple[str, ...]]]:
    organs = {}
    for row in _read_table("cl_organs.csv"):
        names = tuple(name.strip() for name in row["names"].split(";") if name.strip())
        organs[row["organ"]] = (row["part_of"], names)
    return organs


#: Organs, each with the organ it is part of and the names that say it in a label or a
#: tissue ("largeintestine", "Fetal Skin", "PBMC"): used to choose between terms that
#: differ by organ, and to take places off a label.
ORGANS: dict[str, tuple[str, tuple[str, ...]]] = _read_organs()


def _read_links() -> tuple[tuple[str, str, str], ...]:
    return tuple(
        (row["from_id"], row["to_id"], row["source"]) for row in _read_table("cl_lineage_links.csv")
    )


#: Lineage links CL does not draw as is_a: (term, the lineage it belongs to, the source).
#: :meth:`CellOntology.similarity` counts each link as one step between close relatives:
#: a plasma cell for a B cell scores 80.
LINEAGE_LINKS: tuple[tuple[str, str, str], ...] = _read_links()

# ---------------------------------------------------------------------------------------
# Text rewriting, the same for input labels and for CL labels and synonyms.

#: Words left out of the bag-of-words keys: "fibroblast of dermis" is "dermis fibroblast",
#: "connective tissue type mast cell" is "connective tissue mast cell".
_STOPWORDS = frozenset({"of", "the", "in", "from", "to"})

#: Words that change a term's meaning with a small edit; a fuzzy match must keep them all.
_CONTRAST_WORDS = frozenset(
    {
        "non", "pre", "pro", "immature", "mature", "positive", "negative", "high", "low",
        "bright", "dim", "naive", "memory", "effector", "central", "alpha", "beta", "gamma",
        "delta", "kappa", "lambda", "inner", "outer", "ascending", "descending", "afferent",
        "efferent", "male", "female", "fetal", "embryonic", "adult", "human", "mouse",
        "progenitor", "precursor", "stem", "type", "classical", "conventional",
        "plasmacytoid", "myeloid", "lymphoid", "proximal", "distal", "anterior", "posterior",
        "dorsal", "ventral", "medial", "lateral", "superficial", "deep", "upper", "lower",
        "small", "large", "cortical", "medullary", "excitatory", "inhibitory", "activated",
        "resting", "cycling", "arterial", "venous", "capillary", "lymphatic", "helper",
        "cytotoxic", "regulatory", "invariant", "intermediate", "terminal",
    }
)  # fmt: skip

#: Endings that make a noun into an adjective of another meaning: a "fibroblastic reticular
#: cell" is not a fibroblast. A fuzzy match may not pair a word with its derived form.
_DERIVED_ENDINGS = ("ic", "al", "ar", "ous", "oid", "ive", "like")

#: Word endings that name a cell already ("monocyte", "myoblast", "macrophage", ...).
_CELL_NOUN_ENDINGS = (
    "cell", "cyte", "blast", "phage", "phil", "clast", "neuron", "glia", "platelet",
    "fiber", "fibre", "gonium", "tid", "zoon", "zoa",
)  # fmt: skip

#: A word a broader match may not be cut after: "non-classical" is not "classical".
_NEGATORS = frozenset({"non", "pre", "pro", "post", "anti", "pseudo", "un", "de", "double"})

#: Words that say how a cell is made or what it makes, dropped late: "IgA-secreting".
_PRODUCT_WORDS = frozenset({"secreting", "producing", "expressing"})

_DASHES = re.compile("[\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d]")
# Greek letters as their names: alpha-beta and gamma-delta T cells, alpha-intercalated cells.
_GREEK = {
    "\u03b1": " alpha ",
    "\u03b2": " beta ",
    "\u03b3": " gamma ",
    "\u03b4": " delta ",
    "\u03b5": " epsilon ",
    "\u03ba": " kappa ",
}
# UTF-8 read as Latin-1 or cp1252 (a Greek alpha shown as a capital I with circumflex and
# a plus-minus sign): a lead byte of a two- to four-byte sequence shown as its Latin-1
# letter, then continuation bytes shown as Latin-1 or cp1252 characters.
_MOJIBAKE = re.compile(
    "[\u00c2-\u00f4][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192"
    "\u02c6\u02dc\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac"
    "\u2122]{1,3}"
)
_PROGENITOR_SWAP = {"progenitor": "precursor", "precursor": "progenitor"}
_WORD_MAP = {"i": "1", "ii": "2", "iii": "3", "iv": "4", "hi": "high", "lo": "low"}
# A marker such as CD25 or FOXP3 followed by "-" (and not by a word): CD25-negative.
_NEGATIVE_MARKER = re.compile(r"\b([a-z]+\d+[a-z0-9]*)\s*-(?=[\s/,;)]|$|cd\d)")
_MARKER_LEVEL = re.compile(r"\b(cd\d+[a-z]?)(bright|dim|high|hi|low|lo)\b")
_BARE_MARKER = re.compile(r"^cd\d+[a-z]*$")
_NUMBERED_CELL = re.compile(r"\b(cells?)(\d+)\b")  # "Erythroid cell1"
_POLARITY = frozenset({"positive", "negative", "high", "low", "bright", "dim"})
# "B cell_1", "MNP_a", and "B cell (2)" as cassia_sc numbers a repeated cluster name.
_CLUSTER_SUFFIX = re.compile(r"(_(\d+|[a-z])|\s*\(\d+\))$", re.IGNORECASE)
_WORD_SIMILARITY = 75  # rapidfuzz ratio of two words that differ by a typo
_PARENTHESES = re.compile(r"\(([^()]*)\)|\[([^\[\]]*)\]")


def _decode(match: re.Match[str]) -> str:
    text = match.group(0)
    for encoding in ("cp1252", "latin-1"):
        try:
            return text.encode(encoding).decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            continue
    return text


def _repair(text: str) -> str:
    """Undo UTF-8 text that was read as Latin-1 or cp1252 (a Greek alpha shown as two letters)."""
    return _MOJIBAKE.sub(_decode, text) if any("\u00c2" <= c <= "\u00f4" for c in text) else text


def _strip_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(char for char in decomposed if not unicodedata.combining(char))


def _singular(word: str) -> str:
    # Applied to both sides, so a rare wrong singular ("Langerhans") still matches itself.
    if len(word) < 3 or not word.endswith("s") or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes")):
        return word[:-2]
    return word[:-1]


def _tokens(text: str) -> tuple[str, ...]:
    """Rewrite ``text`` into words, the same way for a label and for a CL name (step 3)."""
    if not text.isascii():  # most names are ASCII: the unicode steps only when needed
        text = unicodedata.normalize("NFKC", _repair(text))
        for letter, name in _GREEK.items():
            text = text.replace(letter, name)
        text = _DASHES.sub("-", _strip_accents(text))
    text = text.casefold()
    text = _NUMBERED_CELL.sub(r"\1 \2", text)
    text = _MARKER_LEVEL.sub(r"\1 \2", text)
    text = _NEGATIVE_MARKER.sub(r"\1 negative ", text)
    text = text.replace("+", " positive ")
    text = re.sub(r"alpha\s*[/-]?\s*beta", "alpha beta", text)
    text = re.sub(r"gamma\s*[/-]?\s*delta", "gamma delta", text)
    text = re.sub(r"\b([bt])-?cells?\b", r"\1 cell", text)
    words = re.sub(r"[^0-9a-z]+", " ", text).split()
    out: list[str] = []
    for index, word in enumerate(words):
        word = _singular(_WORD_MAP.get(word, word))
        word = ANATOMY_ADJECTIVES.get(word, word)
        if word == "derived" and out and out[-1] == "thymus":
            out.pop()  # CL's "naive thymus-derived CD4-positive ..." is everyone's naive CD4 T
            continue
        if out and word == out[-1] == "positive":
            continue
        out.append(word)
        # A bare CD marker is a positive one: "CD4 T cell", "CD4+/CD25 T Reg".
        following = words[index + 1] if index + 1 < len(words) else ""
        if _BARE_MARKER.match(word) and _WORD_MAP.get(following, following) not in _POLARITY:
            out.append("positive")
    return tuple(out)


def _bag(words: tuple[str, ...]) -> str:
    # "type" is left out before a word or letter ("connective tissue type mast cell", "type
    # L enteroendocrine cell"), kept before a number: "type 2" alone is no cell type.
    following = (*words[1:], "")
    return " ".join(
        sorted(
            word
            for word, after in zip(words, following, strict=True)
            if word not in _STOPWORDS and not (word == "type" and not after.isdigit())
        )
    )


def _has_cell_noun(words: tuple[str, ...]) -> bool:
    return any(word.endswith(_CELL_NOUN_ENDINGS) for word in words)


def _phrase_table(phrases: Iterable[tuple[str, ...]]) -> dict[str, list[tuple[str, ...]]]:
    """Index phrases (word tuples) by their first word, longest first."""
    table: dict[str, list[tuple[str, ...]]] = {}
    for phrase in sorted(set(phrases), key=len, reverse=True):
        if phrase:
            table.setdefault(phrase[0], []).append(phrase)
    return table


_ABBREVIATION_WORDS = {_tokens(short): _tokens(long) for short, long in ABBREVIATIONS.items()}
_LONGEST_ABBREVIATION = max(len(key) for key in _ABBREVIATION_WORDS)
_STATE_KIND = {_tokens(phrase): kind for phrase, kind in STATE_WORDS.items()}
_STATE_PHRASES = _phrase_table(_STATE_KIND)
_ORGAN_OF_PHRASE = {
    _tokens(name): organ for organ, (_, names) in ORGANS.items() for name in (organ, *names)
}
_ORGAN_PHRASES = _phrase_table(_ORGAN_OF_PHRASE)


def _containers(organ: str) -> frozenset[str]:
    found: set[str] = set()
    while organ in ORGANS and ORGANS[organ][0] and ORGANS[organ][0] not in found:
        organ = ORGANS[organ][0]
        found.add(organ)
    return frozenset(found)


_CONTAINERS = {organ: _containers(organ) for organ in ORGANS}
_COMPACT_ORGAN_NAMES = sorted(
    (("".join(name), organ) for name, organ in _ORGAN_OF_PHRASE.items()),
    key=lambda item: -len(item[0]),
)


def _expand(words: tuple[str, ...]) -> tuple[str, ...]:
    out: list[str] = []
    index = 0
    while index < len(words):
        for size in range(min(_LONGEST_ABBREVIATION, len(words) - index), 0, -1):
            long = _ABBREVIATION_WORDS.get(words[index : index + size])
            if long is not None:
                out.extend(long)
                index += size
                if long[-1] == "cell" and index < len(words) and words[index] == "cell":
                    index += 1
                break
        else:
            out.append(words[index])
            index += 1
    return tuple(out)


def _spans(
    words: tuple[str, ...], table: dict[str, list[tuple[str, ...]]]
) -> list[tuple[int, int]]:
    """Where the phrases of ``table`` occur in ``words``, longest first, left to right."""
    found = []
    index = 0
    while index < len(words):
        for phrase in table.get(words[index], ()):
            if words[index : index + len(phrase)] == phrase:
                found.append((index, index + len(phrase)))
                index += len(phrase)
                break
        else:
            index += 1
    return found


def _organs_in(words: tuple[str, ...]) -> frozenset[str]:
    return frozenset(
        _ORGAN_OF_PHRASE[words[start:end]] for start, end in _spans(words, _ORGAN_PHRASES)
    )


def _cut(
    words: tuple[str, ...], spans: list[tuple[int, int]]
) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Remove ``spans`` from ``words``, with the "of the" that led to them."""
    if not spans:
        return words, []
    removed = [words[start:end] for start, end in spans]
    gone = {i for start, end in spans for i in range(start, end)}
    for i in range(len(words) - 2, -1, -1):  # right to left, so "of the kidney" goes whole
        if words[i] in _STOPWORDS and i + 1 in gone:
            gone.add(i)
    out = [word for i, word in enumerate(words) if i not in gone]
    while out and out[0] in _STOPWORDS:
        out.pop(0)
    while out and out[-1] in _STOPWORDS:
        out.pop()
    return tuple(out), removed


def _organ_spans(words: tuple[str, ...]) -> list[tuple[int, int]]:
    return _spans(words, _ORGAN_PHRASES)


def _tissue_organs(tissue: str | None) -> frozenset[str]:
    """Return the organs a tissue names, the most specific only.

    "largeintestine" is the large intestine, "Fetal Skin" the skin, "Whole Mouse Atlas" none.
    """
    if not isinstance(tissue, str) or not tissue.strip():
        return frozenset()
    found = set(_organs_in(_tokens(tissue)))
    if not found:
        compact = re.sub("[^a-z]", "", _strip_accents(tissue).casefold())
        for name, organ in _COMPACT_ORGAN_NAMES:
            if len(name) >= 4 and name in compact:
                found.add(organ)
                compact = compact.replace(name, " ")
    contained = {c for organ in found for c in _CONTAINERS.get(organ, ())}
    return frozenset(found - contained)


def _fits(term_organs: frozenset[str], tissue_organs: frozenset[str]) -> int | None:
    """Rank how well a term's organ fits the tissue.

    0 the same organ, 1 an organ that contains the tissue's (the respiratory tract for the
    lung); None when it does not fit, a part of the tissue included: the skin's "dermal" and
    "epidermal" terms are different cells.
    """
    ranks = [
        0 if organ == tissue else 1
        for organ in term_organs
        for tissue in tissue_organs
        if organ == tissue or organ in _CONTAINERS.get(tissue, ())
    ]
    return min(ranks) if ranks else None


def _has_cd4_or_cd8(words: tuple[str, ...]) -> bool:
    return any(
        word in ("cd4", "cd8") and following == "positive"
        for word, following in itertools.pairwise(words)
    )


def _alpha_beta(words: tuple[str, ...]) -> tuple[str, ...]:
    # CL files CD4 and CD8 T cells under "alpha-beta T cell"; people rarely say so.
    if "t" not in words or not _has_cd4_or_cd8(words):
        return words
    if {"alpha", "gamma", "nk", "natural"} & set(words):
        return words
    at = words.index("t")
    return (*words[:at], "alpha", "beta", *words[at:])


def _strip_markers(words: tuple[str, ...], keep: frozenset[str]) -> tuple[str, ...]:
    out: list[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        following = words[index + 1] if index + 1 < len(words) else ""
        # CD4+, FOXP3-, CD56bright; a gene without digits only with + or -: PDGFRA+
        is_marker = following in ("positive", "negative") or (
            any(char.isdigit() for char in word) and following in _POLARITY
        )
        if is_marker and word not in keep:
            index += 2
            continue
        out.append(word)
        index += 1
    return tuple(out)


def _tissue_to_cell(words: tuple[str, ...]) -> tuple[str, ...]:
    # "Glomerular endothelium" names the cells of that lining.
    linings = {"endothelium": "endothelial", "epithelium": "epithelial"}
    linings |= {"urothelium": "urothelial", "mesothelium": "mesothelial"}
    if words and words[-1] in linings:
        return (*words[:-1], linings[words[-1]], "cell")
    return words


def _drop_trailing_code(words: tuple[str, ...]) -> tuple[str, ...]:
    # Cluster numbers and letters: "B cell 2", "MNP-a".
    end = len(words)
    while end > 1 and (words[end - 1].isdigit() or len(words[end - 1]) == 1):
        if words[end - 2] == "type":  # "type 1" is no cluster number
            break
        end -= 1
    return words[:end]


def _completions(words: tuple[str, ...], *, full: bool = True) -> Iterator[tuple[str, ...]]:
    yield words
    if words and words[-1] != "cell":
        yield (*words, "cell")  # "Dendritic", "Myofibroblast" (CL: "myofibroblast cell")
    if not full:
        return
    if words and not _has_cell_noun(words):
        if _has_cd4_or_cd8(words):
            yield _alpha_beta((*words, "t", "cell"))  # "CD4+/CD45RO+ Memory"
        yield (*words, "epithelial", "cell")  # "Proximal tubule"
    if (
        len(words) > 1
        and words[-1] == "cell"
        and "epithelial" not in words
        and _EPITHELIAL_STRUCTURES.intersection(words)
    ):
        yield (*words[:-1], "epithelial", "cell")  # "Multiciliated Cells", "TAL cells"


def _variants(
    words: tuple[str, ...], *, full: bool = True, dedupe: bool = False
) -> list[tuple[str, ...]]:
    """Rewritings of a label's words, the most faithful first."""
    return _unique(_stages(words, full=full, dedupe=dedupe))


def _stages(words: tuple[str, ...], *, full: bool, dedupe: bool) -> Iterator[tuple[str, ...]]:
    if dedupe:
        words = tuple(dict.fromkeys(words))  # "Cytotoxic T Cells (CD8+ T Cells)"
    words = _tissue_to_cell(words)
    expanded = _expand(words)
    if dedupe:
        expanded = tuple(dict.fromkeys(expanded))  # "Thick Ascending Limb (TAL) Cells"
    paired = _alpha_beta(expanded)
    cd_only = _strip_markers(paired, frozenset({"cd4", "cd8"}))
    no_markers = _strip_markers(paired, frozenset())
    for stage in (words, expanded, paired, cd_only, no_markers):
        yield from _completions(stage, full=full)
    if "cytotoxic" in cd_only and _has_cd4_or_cd8(cd_only):
        # CL names CD8 T cell subsets without it: "CD8+ naive cytotoxic" is a naive CD8 T
        yield from _completions(tuple(w for w in cd_only if w != "cytotoxic"), full=full)
    swapped = tuple(_PROGENITOR_SWAP.get(word, word) for word in no_markers)
    if swapped != no_markers:
        yield from _completions(swapped, full=full)  # CL's "oligodendrocyte precursor cell"
    joined = _join_prefixes(no_markers)
    if joined != no_markers:
        yield from _completions(joined, full=full)  # "Pre-osteoblasts" is CL's preosteoblast
    products = tuple(word for word in no_markers if word not in _PRODUCT_WORDS)
    if products != no_markers:
        yield from _completions(products, full=full)  # "IgA-secreting Plasma Cells"
    for stage in (paired, no_markers):
        if dedupe:  # "immune cell t", from "Immune cells (T cells)": "t" is no cluster code
            break
        trimmed = _drop_trailing_code(stage)
        if trimmed != stage:
            yield from _completions(_expand(trimmed), full=full)


def state_kinds(text: str) -> frozenset[str]:
    """Return the kinds of state a text names (see :data:`STATE_WORDS`).

    Parameters
    ----------
    text
        A label, or an :attr:`OntologyMatch.state`.

    Returns
    -------
    frozenset of str
        ``"cycling"``, ``"activation"``, ``"maturity"``, ...; empty when it names none.

    Examples
    --------
    >>> sorted(state_kinds("Proliferating Cells (G2/M Phase)"))
    ['cycling']
    >>> sorted(state_kinds("cycling B cell"))
    ['cycling']
    """
    words = _tokens(text) if isinstance(text, str) else ()
    return frozenset(_STATE_KIND[words[start:end]] for start, end in _spans(words, _STATE_PHRASES))


def _join_prefixes(words: tuple[str, ...]) -> tuple[str, ...]:
    out: list[str] = []
    for word in words:
        if out and out[-1] in ("pre", "pro", "post") and len(word) > 2:
            out[-1] += word
        else:
            out.append(word)
    return tuple(out)


def _remove_state(words: tuple[str, ...]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Take state words off: "activated", "tissue resident", "with ... phenotype", ..."""
    spans = _spans(words, _STATE_PHRASES)
    for opener, closer, reach in (("with", "phenotype", 6), ("in", "state", 5)):
        for start, word in enumerate(words):
            if word == opener and closer in words[start + 1 : start + reach + 1]:
                end = words.index(closer, start + 1) + 1
                spans = [s for s in spans if s[1] <= start or s[0] >= end] + [(start, end)]
    spans.sort()
    return _cut(words, spans)


def _remove_places(words: tuple[str, ...]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Take places off: organs ("Intestinal", "of the large intestine") and segments."""
    spans = _organ_spans(words)
    taken = {i for start, end in spans for i in range(start, end)}
    spans += [(i, i + 1) for i, w in enumerate(words) if w in _LOCATION_WORDS and i not in taken]
    return _cut(words, sorted(spans))


def _in_label(text: str, words: tuple[str, ...]) -> str:
    """Return the part of ``text`` that ``words`` came from, else the words themselves."""
    reverse = _REVERSE_ADJECTIVES
    parts = []
    for word in words:
        forms = [word, *reverse.get(word, ())]
        stems = [re.escape(f[:-1] if len(f) > 4 else f) for f in forms]
        parts.append(r"(?:" + "|".join(stems) + r")\w*")
    pattern = r"\b" + r"[\s\-\u2010-\u2015/_,+]*".join(parts)
    found = re.search(pattern, _strip_accents(text), flags=re.IGNORECASE)
    return found.group(0).strip() if found else " ".join(words)


_REVERSE_ADJECTIVES: dict[str, list[str]] = {}
for _adjective, _noun in ANATOMY_ADJECTIVES.items():
    _REVERSE_ADJECTIVES.setdefault(_noun, []).append(_adjective)


def _notes(label: str) -> tuple[str, list[str]]:
    """Split a cleaned label into its main text and its notes: parentheses, "_" suffixes."""
    notes = [a or b for a, b in _PARENTHESES.findall(label)]
    outside = _PARENTHESES.sub(" ", label)
    if "_" in outside:
        head, _, tail = outside.partition("_")
        outside, notes = head, [tail.replace("_", " "), *notes]
    outside = re.sub(r"\s+", " ", outside).strip(" ,;:-")
    return outside, [note.strip() for note in notes if note.strip()]


def _clean(label: str) -> str:
    label = _repair(label).strip().strip(".,;:!?*`\"'").strip()
    return (_CLUSTER_SUFFIX.sub("", label) or label).strip()


def _is_acronym(note: str, text: str) -> bool:
    """Whether ``note`` abbreviates ``text``: "(TAL)" of "Thick Ascending Limb Cells"."""
    short = re.sub(r"\s+cells?$", "", note.strip(), flags=re.IGNORECASE)
    letters = re.sub("[^a-z0-9]", "", short.casefold())
    if letters.endswith("s") and len(letters) > 2:
        letters = letters[:-1]
    if " " in short or not 2 <= len(letters) <= 6:
        return False
    initials = iter(part[0] for part in re.split(r"[\s\-\u2010-\u2015/]+", text.casefold()) if part)
    return all(letter in initials for letter in letters)


def _unique(items: Iterable[tuple[str, ...]]) -> list[tuple[str, ...]]:
    return [words for words in dict.fromkeys(items) if words]


# ---------------------------------------------------------------------------------------
# The index, built once per process from the shipped CL.

#: Words that, with organ words, make a grouping by place: "kidney cortex tubule cell".
_GROUPING_WORDS = _LOCATION_WORDS | {
    "cortex", "cortical", "medulla", "medullary", "interstitial", "region", "zone", "tubule",
}  # fmt: skip
#: The classes a grouping by place narrows: "kidney epithelial cell", "cerebral cortex neuron".
_GROUPED_CLASSES = frozenset(
    {"cell", "epithelial cell", "stromal cell", "neuron", "glial cell", "secretory cell",
     "lymphocyte", "leukocyte", "hematopoietic cell"}
)  # fmt: skip


#: Words that say little of which organ's term a label means: "principal cell" and
#: "transitional cell" need the tissue, "connecting tubule epithelial cell" does not.
_PLACE_FILLERS = _STOPWORDS | {"cell", "epithelial"}


@dataclass
class _Index:
    version: str
    labels: dict[str, str]
    ancestors: dict[str, frozenset[str]]
    parents: dict[str, frozenset[str]]
    children: dict[str, tuple[str, ...]]
    exact_label: dict[str, str]
    exact_synonym: dict[str, str]
    ordered: dict[str, str]
    bags: dict[str, str]
    # names with their organ words taken off: key -> (term, the organs it named), best first
    organ_ordered: dict[str, tuple[tuple[str, frozenset[str]], ...]]
    organ_bags: dict[str, tuple[tuple[str, frozenset[str]], ...]]
    term_organs: dict[str, frozenset[str]]
    label_words: dict[str, tuple[str, ...]]
    single: dict[str, str]  # one-word names ("cardiomyocyte") -> term
    general: frozenset[str]
    links: tuple[tuple[str, str], ...]
    choices: list[str]
    sorted_choices: list[str]  # each choice's words sorted: token_sort_ratio, precomputed
    choice_ids: list[str]
    whole_labels: dict[tuple[str, ...], str]
    up: dict[str, dict[str, int]] = field(default_factory=dict)  # filled on use
    down: dict[str, dict[str, int]] = field(default_factory=dict)
    postings: Any = None  # for candidates(), built on first use


_index_lock = threading.Lock()
_shared_index: _Index | None = None


def _build_index(parser: Any) -> _Index:
    schema = parser.cxg_schema
    terms: dict[str, dict[str, Any]] = schema.ontology("CL")
    version = str(schema.supported_ontologies["CL"]["version"])
    labels = {term: str(meta.get("label") or "") for term, meta in terms.items()}
    deprecated = frozenset(term for term, meta in terms.items() if meta.get("deprecated"))
    live = [
        term
        for term in terms
        if term.startswith("CL:") and term not in deprecated and labels[term]
        if term not in FORBIDDEN
    ]
    ancestors: dict[str, frozenset[str]] = {}
    parents: dict[str, frozenset[str]] = {}
    for term, meta in terms.items():
        found = meta.get("ancestors") or {}
        ancestors[term] = frozenset(a for a in found if a.startswith("CL:") and a != term)
        parents[term] = frozenset(a for a, d in found.items() if d == 1 and a.startswith("CL:"))
    children: dict[str, list[str]] = {}
    for term in live:
        for parent in parents[term]:
            children.setdefault(parent, []).append(term)

    def preference(rank: int, term: str) -> tuple[int, int, int, str]:
        # Ties go to the label over a synonym, then to the most general term (fewest
        # ancestors), then the shortest label, then the smallest id: deterministic, and a
        # broader term is the safer claim when a name is ambiguous.
        return (rank, len(ancestors[term]), len(labels[term]), term)

    def offer(table: dict[str, tuple[int, str]], key: str, rank: int, term: str) -> None:
        if key and (key not in table or preference(rank, term) < preference(*table[key])):
            table[key] = (rank, term)

    def offer_place(
        table: dict[str, dict[str, tuple[int, frozenset[str]]]],
        key: str,
        rank: int,
        term: str,
        organs: frozenset[str],
    ) -> None:
        entries = table.setdefault(key, {})
        old_rank, old_organs = entries.get(term, (rank, frozenset()))
        entries[term] = (min(rank, old_rank), old_organs | organs)

    exact_label: dict[str, tuple[int, str]] = {}
    exact_synonym: dict[str, tuple[int, str]] = {}
    ordered: dict[str, tuple[int, str]] = {}
    bags: dict[str, tuple[int, str]] = {}
    fuzzy: dict[str, tuple[int, str]] = {}
    organ_ordered: dict[str, dict[str, tuple[int, frozenset[str]]]] = {}
    organ_bags: dict[str, dict[str, tuple[int, frozenset[str]]]] = {}
    label_words: dict[str, tuple[str, ...]] = {}
    for term in live:
        names = [(0, labels[term])]
        names += [
            (1, str(s))
            for s in terms[term].get("synonyms") or ()
            if str(s).casefold() not in _IGNORED_SYNONYMS
        ]
        for rank, name in names:
            offer(exact_label if rank == 0 else exact_synonym, name.casefold(), 0, term)
            words = _tokens(name)
            if rank == 0:
                label_words[term] = words
            offer(ordered, " ".join(words), rank, term)
            offer(bags, _bag(words), rank, term)
            offer(fuzzy, " ".join(words), rank, term)
            spans = _organ_spans(words)
            organs = frozenset(_ORGAN_OF_PHRASE[words[start:end]] for start, end in spans)
            # Without all its organ words, and without each one ("kidney loop of Henle
            # thick ascending limb epithelial cell" is a "thick ascending limb of loop of
            # Henle" cell); an organ's urothelium is its epithelium ("pelvic epithelium").
            for cut in {tuple(spans), *((span,) for span in spans)} if spans else ():
                rest, _ = _cut(words, list(cut))
                forms = [rest]
                if "urothelial" in rest:
                    forms.append(tuple("epithelial" if w == "urothelial" else w for w in rest))
                for form in forms:
                    if form and form != ("cell",):
                        offer_place(organ_ordered, " ".join(form), rank, term, organs)
                        offer_place(organ_bags, _bag(form), rank, term, organs)

    def ranked(
        table: dict[str, dict[str, tuple[int, frozenset[str]]]],
    ) -> dict[str, tuple[tuple[str, frozenset[str]], ...]]:
        return {
            key: tuple(
                (term, organs)
                for term, (_, organs) in sorted(
                    entries.items(), key=lambda item: preference(item[1][0], item[0])
                )
            )
            for key, entries in table.items()
        }

    term_organs = {term: _organs_in(label_words[term]) for term in live}
    groupings = set()
    for term in live:
        words = label_words[term]
        spans = _organ_spans(words)
        if not spans:
            continue
        taken = {i for start, end in spans for i in range(start, end)}
        spans += [(i, i + 1) for i, w in enumerate(words) if w in _GROUPING_WORDS if i not in taken]
        rest, _ = _cut(words, sorted(spans))
        if " ".join(rest) in _GROUPED_CLASSES:
            groupings.add(term)  # "kidney epithelial cell", "epithelial cell of large intestine"
    live_set = set(live)
    links = tuple(
        (source, target)
        for source, target, _ in LINEAGE_LINKS
        if source in live_set and target in live_set
    )
    by_label = {labels[term]: term for term in live}
    whole_labels = {
        _tokens(text): by_label[target]
        for text, target in _WHOLE_LABELS.items()
        if target in by_label
    }
    choices = sorted(fuzzy)
    ordered_terms = {key: term for key, (_, term) in ordered.items()}
    return _Index(
        version=version,
        labels=labels,
        ancestors=ancestors,
        parents=parents,
        children={parent: tuple(kids) for parent, kids in children.items()},
        exact_label={key: term for key, (_, term) in exact_label.items()},
        exact_synonym={key: term for key, (_, term) in exact_synonym.items()},
        ordered=ordered_terms,
        bags={key: term for key, (_, term) in bags.items()},
        organ_ordered=ranked(organ_ordered),
        organ_bags=ranked(organ_bags),
        term_organs=term_organs,
        label_words=label_words,
        single={key: term for key, term in ordered_terms.items() if " " not in key},
        general=frozenset(TOO_GENERAL) | _ROOT_LIKE | groupings,
        links=links,
        choices=choices,
        sorted_choices=[" ".join(sorted(choice.split())) for choice in choices],
        choice_ids=[fuzzy[choice][1] for choice in choices],
        whole_labels=whole_labels,
    )


def _load_index() -> _Index:
    """Import the optional packages (every call, so a missing one is always reported)."""
    global _shared_index
    try:
        # Import the package itself first: a None left in sys.modules means "absent".
        from cellxgene_ontology_guide import ontology_parser
    except ImportError as error:
        raise OntologyUnavailable("cellxgene-ontology-guide") from error
    try:
        import rapidfuzz  # noqa: F401
    except ImportError as error:
        raise OntologyUnavailable("rapidfuzz") from error
    with _index_lock:
        if _shared_index is None:
            _shared_index = _build_index(ontology_parser.OntologyParser())
        return _shared_index


# ---------------------------------------------------------------------------------------
# The public class.


@dataclass(frozen=True)
class OntologyMatch:
    """One label mapped to a CL term.

    Attributes
    ----------
    label
        The input label, as given.
    term_id
        The CL id, e.g. ``"CL:0000236"``, or ``"unknown"`` when nothing fits.
    term_label
        The CL label, e.g. ``"B cell"``; ``""`` when unknown.
    score
        1.0 for ``label``, ``synonym`` and ``normalised`` matches, the fuzzy score in (0, 1)
        for ``fuzzy`` ones and the similarity for ``candidate`` ones, 0.0 when unknown.
    method
        ``"label"``, ``"synonym"``, ``"normalised"``, ``"fuzzy"``, ``"candidate"`` (from
        :meth:`CellOntology.candidates`) or ``"unmapped"``.
    state
        What the label says besides the identity, in its own words, taken off to find the
        term: ``"Activated"`` for "Activated Neutrophils", ``"S1 Segment"`` for "Proximal
        Tubule Cells (S1 Segment)", ``"Interstitial"`` for "Interstitial Fibroblasts" in the
        skin; several are joined by ``"; "``. ``""`` when nothing was taken off.
    broader
        Whether the term is broader than the label says: CL has no term for the exact type,
        so the nearest broader one that is certainly right was taken ("Interstitial
        Fibroblasts" in the skin is a "fibroblast"). States and places taken off do not make
        a match broader.
    """

    label: str
    term_id: str
    term_label: str
    score: float
    method: MatchMethod
    state: str = ""
    broader: bool = False

    @property
    def mapped(self) -> bool:
        """Whether the label found a CL term."""
        return self.term_id != UNKNOWN


@dataclass(frozen=True)
class _Found:
    term: str
    state: tuple[str, ...] = ()  # states and places taken off
    broader: bool = False
    method: MatchMethod = "normalised"
    score: float = 1.0
    dropped: tuple[str, ...] = ()  # qualifiers dropped for a broader term


_AMBIGUOUS = _Found("ambiguous")  # a mixture of lineages: unmapped, nothing else tried
_TISSUE_CACHE: dict[str | None, frozenset[str]] = {}


def _organs_of(tissue: str | None) -> frozenset[str]:
    key = tissue if isinstance(tissue, str) else None
    found = _TISSUE_CACHE.get(key)
    if found is None:
        found = _TISSUE_CACHE[key] = _tissue_organs(key)
    return found


def _ladder(steps: int) -> float:
    """80 for one step, 10 less for each further one."""
    return float(max(0, 80 - 10 * (steps - 1)))


class CellOntology:
    """Map cell-type labels to Cell Ontology terms, and compare terms.

    The ontology is loaded on first use, once per process, and shared by every instance;
    loading is thread-safe. Each instance caches its matches per label and tissue.

    Parameters
    ----------
    min_score
        The fuzzy threshold, in (0, 1]: a fuzzy match below it is ``unmapped``.

    Examples
    --------
    >>> from cassia_sc.ontology import CellOntology
    >>> cl = CellOntology()
    >>> cl.match("CD8+ T cells").term_label  # doctest: +SKIP
    'CD8-positive, alpha-beta T cell'
    >>> m = cl.match("Interstitial Fibroblasts", tissue="kidney")  # doctest: +SKIP
    >>> m.term_label, m.broader  # doctest: +SKIP
    ('kidney interstitial fibroblast', False)
    >>> cl.similarity("CL:0000236", "CL:0000786")  # B cell, answered plasma cell  # doctest: +SKIP
    80.0
    """

    def __init__(self, *, min_score: float = 0.9) -> None:
        if not 0.0 < min_score <= 1.0:
            raise ValueError(f"min_score must be in (0, 1], not {min_score!r}")
        self.min_score = float(min_score)
        self._index: _Index | None = None
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, frozenset[str]], OntologyMatch] = {}

    def __repr__(self) -> str:
        return f"CellOntology(min_score={self.min_score})"

    @property
    def _cl(self) -> _Index:
        if self._index is None:
            with self._lock:
                if self._index is None:
                    self._index = _load_index()
        return self._index

    @property
    def cl_version(self) -> str:
        """The version of the shipped Cell Ontology in use, e.g. ``"v2026-03-26"``."""
        return self._cl.version

    def match(self, label: str, *, tissue: str | None = None) -> OntologyMatch:
        """Map one label to a CL term.

        Parameters
        ----------
        label
            A cell-type name in free text. ``None`` and NaN (empty cells of a table) are
            unmapped.
        tissue
            The tissue the cells come from, as the run names it ("kidney", "Fetal Skin",
            "largeintestine"): chooses between terms that differ by organ. A tissue that
            names no organ ("Whole Mouse Atlas") is as none.

        Returns
        -------
        OntologyMatch
            The term, or ``term_id="unknown"`` when nothing fits well enough.
        """
        text = label if isinstance(label, str) else "" if pd.isna(label) else str(label)
        key = (text, _organs_of(tissue))
        cached = self._cache.get(key)
        if cached is None:
            cached = self._match(text, key[1])
            with self._lock:
                self._cache[key] = cached
        return cached

    def match_many(
        self, labels: Iterable[str], *, tissue: str | Sequence[str | None] | None = None
    ) -> list[OntologyMatch]:
        """Map each label, in order; repeated labels are mapped once.

        Parameters
        ----------
        labels
            Cell-type names, e.g. a truth column.
        tissue
            One tissue for all labels, or one per label (see :meth:`match`).

        Returns
        -------
        list of OntologyMatch
            One per label, in the same order.
        """
        labels = list(labels)
        if tissue is None or isinstance(tissue, str):
            return [self.match(label, tissue=tissue) for label in labels]
        tissues = list(tissue)
        if len(tissues) != len(labels):
            raise ValueError(f"{len(tissues)} tissues for {len(labels)} labels.")
        return [self.match(lab, tissue=t) for lab, t in zip(labels, tissues, strict=True)]

    def candidates(
        self, label: str, *, n: int = 10, tissue: str | None = None
    ) -> list[OntologyMatch]:
        """Return plausible CL terms for a label, best first, for a reader or a model to pick.

        The rules' own match comes first when there is one. Then the CL labels and synonyms
        that share the most words with the label (or with its state-free and place-free
        forms; words compared with :func:`rapidfuzz.fuzz.ratio`, so a typo or a plural still
        counts), then, to fill up, the names nearest as whole strings. Terms of another
        organ than ``tissue`` are ranked lower. Forbidden, deprecated and root terms are
        never offered.

        Parameters
        ----------
        label
            A cell-type name in free text.
        n
            At most this many terms.
        tissue
            The tissue the cells come from (see :meth:`match`).

        Returns
        -------
        list of OntologyMatch
            Distinct terms; ``method="candidate"`` and ``score`` their closeness in (0, 1],
            except the rules' match, which keeps its own.

        Examples
        --------
        >>> found = cell_ontology().candidates("Pericyte/SMC", n=2)  # doctest: +SKIP
        >>> [m.term_label for m in found]  # doctest: +SKIP
        ['pericyte', 'smooth muscle cell']
        """
        from rapidfuzz import fuzz, process

        index = self._cl
        organs = _organs_of(tissue)
        found = self.match(label, tissue=tissue)
        text = _clean(_repair(label)) if isinstance(label, str) else ""
        outside, notes = _notes(text)
        # each query with a weight: the label's own words count most
        queries: dict[tuple[str, ...], float] = {}
        for piece in (outside, *notes):
            for part, weight in ((piece, 1.0), *((p, 0.95) for p in piece.split("/")[1:])):
                words = _tokens(part)
                rest, _ = _remove_state(_expand(words))
                for form, factor in ((words, 1.0), (_expand(words), 1.0), (rest, 0.95)):
                    queries.setdefault(form, weight * factor)
                queries.setdefault(_remove_places(rest)[0], 0.9 * weight)
        if "/" in outside:  # "Pericyte/SMC": each part on its own
            for part in outside.split("/"):
                queries.setdefault(_tokens(part), 1.0)
        words_of, vocabulary, postings = self._word_index()
        scores: dict[str, float] = {}

        def offer(term: str, score: float) -> None:
            if term in _ROOT_LIKE or term == found.term_id:
                return
            term_organs = index.term_organs.get(term, frozenset())
            if organs and term_organs and _fits(term_organs, organs) is None:
                score -= 0.15  # another organ's term
            scores[term] = max(scores.get(term, 0.0), score)

        for words, weight in queries.items():
            content = [w for w in words if w not in _STOPWORDS and w != "cell"]
            if not content:
                continue
            similar = []
            for word in content:
                near = {word: 1.0}
                for other, score, _ in process.extract(
                    word, vocabulary, scorer=fuzz.ratio, score_cutoff=85, limit=5
                ):
                    near[other] = max(near.get(other, 0.0), score / 100)
                similar.append(near)
            positions = {p for near in similar for word in near for p in postings.get(word, ())}
            for position in positions:
                name = words_of[position]
                hit = sum(max((near.get(w, 0.0) for w in name), default=0.0) for near in similar)
                coverage = hit / len(content)
                precision = min(hit / max(len(name), 1), 1.0)
                offer(index.choice_ids[position], weight * (0.7 * coverage + 0.3 * precision))
        if len(scores) < n:  # whole names, for labels that share no word with CL
            for words in _unique(queries)[:4]:
                for _, score, position in process.extract(
                    " ".join(words), index.choices, scorer=fuzz.token_sort_ratio, limit=n
                ):
                    offer(index.choice_ids[position], 0.8 * score / 100)
        ranked = sorted(scores.items(), key=lambda item: (-item[1], len(index.labels[item[0]])))
        out = [found] if found.mapped else []
        out += [
            OntologyMatch(label, term, index.labels[term], round(score, 4), "candidate")
            for term, score in ranked
            if score > 0
        ]
        return out[:n]

    def _word_index(self) -> tuple[list[tuple[str, ...]], list[str], dict[str, list[int]]]:
        """Each CL name's content words, the vocabulary, and where each word occurs."""
        index = self._cl
        if index.postings is None:
            words_of = [
                tuple(w for w in choice.split() if w not in _STOPWORDS and w != "cell")
                for choice in index.choices
            ]
            postings: dict[str, list[int]] = {}
            for position, words in enumerate(words_of):
                for word in set(words):
                    postings.setdefault(word, []).append(position)
            index.postings = (words_of, sorted(postings), postings)
        return index.postings

    def label(self, term_id: str) -> str:
        """Return the CL label of ``term_id``; ``""`` for ``"unknown"``.

        Raises
        ------
        ValueError
            ``term_id`` is not a term of the shipped CL.
        """
        if term_id == UNKNOWN:
            return ""
        return self._cl.labels[self._check(term_id)]

    def ancestors(self, term_id: str) -> set[str]:
        """Return the CL ancestors of ``term_id``, without the term itself.

        These are the is_a ancestors the shipped ontology records (it also follows the rare
        part_of link from one CL term to another), restricted to CL ids. ``"unknown"`` has
        none.

        Raises
        ------
        ValueError
            ``term_id`` is not a term of the shipped CL.
        """
        if term_id == UNKNOWN:
            return set()
        return set(self._cl.ancestors[self._check(term_id)])

    def similarity(self, a: str, b: str) -> float:
        """Score term ``b`` (a prediction) against term ``a`` (the truth), from 0 to 100.

        ========  ==================================================================
        score     when
        ========  ==================================================================
        100       the same term
        90        ``b`` is a descendant of ``a``: right, and more specific
        80 .. 50  ``b`` is an ancestor of ``a``: right, but broader; 80 one is_a step
                  up, 10 less for each further step, never below 50
        80 .. 50  close relatives, ``80 - 10 * (steps - 1)`` with the is_a steps from
                  each term to their nearest common ancestor (siblings 70) when that
                  ancestor is not too general (:data:`TOO_GENERAL`, or a grouping by
                  place); a lineage link of :data:`LINEAGE_LINKS` counts as one step
                  (a plasma cell for a B cell: 80); two terms with a common descendant
                  (overlapping classes) count the steps down to it; more than 4 steps: 0
        0         anything else, a root term ("cell") against another term, and
                  ``"unknown"`` on either side
        ========  ==================================================================

        Raises
        ------
        ValueError
            ``a`` or ``b`` is neither ``"unknown"`` nor a term of the shipped CL.
        """
        return self._compare(a, b)[0]

    def relation_kind(self, a: str, b: str) -> RelationKind:
        """Name how term ``b`` (a prediction) relates to term ``a`` (the truth).

        Returns
        -------
        str
            ``"same term"``, ``"more specific"``, ``"broader"``, ``"relative"``,
            ``"lineage"``, ``"overlap"`` (see :meth:`similarity`), ``"unrelated"``, or
            ``"unmapped"`` when either is ``"unknown"``.
        """
        return self._compare(a, b)[1]

    def relation(self, a: str, b: str) -> float:
        """How close two CL terms are: 1.0, 0.5 or 0.0, symmetric.

        1.0 when ``a == b``; 0.5 when :meth:`similarity` is 50 or more (one is an ancestor
        or descendant of the other, or they are close relatives); 0.0 otherwise, and
        whenever either is ``"unknown"``.

        Raises
        ------
        ValueError
            ``a`` or ``b`` is neither ``"unknown"`` nor a term of the shipped CL.
        """
        score = self.similarity(a, b)
        return 1.0 if score == 100 else 0.5 if score >= 50 else 0.0

    # -- comparing terms --------------------------------------------------------------

    def _check(self, term_id: str) -> str:
        if term_id not in self._cl.labels:
            raise ValueError(f"{term_id!r} is not a term of the Cell Ontology")
        return term_id

    def _up(self, term: str) -> dict[str, int]:
        """Each ancestor with the fewest is_a steps to it."""
        index = self._cl
        found = index.up.get(term)
        if found is None:
            found = self._walk(term, index.parents, 99)
            index.up[term] = found
        return found

    def _down(self, term: str) -> dict[str, int]:
        """Descendants at most two steps down."""
        index = self._cl
        found = index.down.get(term)
        if found is None:
            found = self._walk(term, index.children, 2)
            index.down[term] = found
        return found

    @staticmethod
    def _walk(term: str, edges: dict[str, Any], limit: int) -> dict[str, int]:
        steps: dict[str, int] = {}
        queue = deque([(term, 0)])
        while queue:
            current, depth = queue.popleft()
            if depth >= limit:
                continue
            for following in edges.get(current, ()):
                if following not in steps and following != term:
                    steps[following] = depth + 1
                    queue.append((following, depth + 1))
        return steps

    def _compare(self, truth: str, predicted: str) -> tuple[float, RelationKind]:
        if UNKNOWN in (truth, predicted):
            for term in (truth, predicted):
                if term != UNKNOWN:
                    self._check(term)
            return 0.0, "unmapped"
        index = self._cl
        truth, predicted = self._check(truth), self._check(predicted)
        if truth == predicted:
            return 100.0, "same term"
        if truth in _ROOT_LIKE or predicted in _ROOT_LIKE:
            return 0.0, "unrelated"
        up_truth, up_predicted = self._up(truth), self._up(predicted)
        if truth in up_predicted:
            return 90.0, "more specific"
        if predicted in up_truth:
            return max(_ladder(up_truth[predicted]), 50.0), "broader"
        best: tuple[float, RelationKind] = (0.0, "unrelated")
        shared = [
            up_truth[common] + up_predicted[common]
            for common in up_truth.keys() & up_predicted.keys()
            if common not in index.general
        ]
        if shared and min(shared) <= 4:
            best = (_ladder(min(shared)), "relative")
        for source, target in index.links:
            for mine, theirs in ((source, target), (target, source)):
                below_mine = 0 if predicted == mine else self._down_steps(mine, predicted)
                below_theirs = 0 if truth == theirs else self._down_steps(theirs, truth)
                if below_mine is not None and below_theirs is not None:
                    steps = below_mine + below_theirs + 1
                    if steps <= 4 and _ladder(steps) > best[0]:
                        best = (_ladder(steps), "lineage")
        if best[0] < 70 and not {truth, predicted} & index.general:
            down_truth, down_predicted = self._down(truth), self._down(predicted)
            overlap = [
                down_truth[common] + down_predicted[common]
                for common in down_truth.keys() & down_predicted.keys()
            ]
            if overlap and _ladder(min(overlap)) > best[0]:
                best = (_ladder(min(overlap)), "overlap")
        return best

    def _down_steps(self, ancestor: str, term: str) -> int | None:
        """Is_a steps from ``term`` up to ``ancestor``, or None when it is not one."""
        return self._up(term).get(ancestor)

    # -- mapping labels ---------------------------------------------------------------

    def _matched(self, label: str, found: _Found) -> OntologyMatch:
        parts: dict[tuple[str, ...], str] = {}
        for part in (*found.state, *found.dropped):
            parts.setdefault(_tokens(part), part)  # "Tissue-Resident" once, not twice
        state = "; ".join(part for words, part in parts.items() if words)
        return OntologyMatch(
            label,
            found.term,
            self._cl.labels[found.term],
            found.score,
            found.method,
            state,
            found.broader,
        )

    def _match(self, label: str, organs: frozenset[str]) -> OntologyMatch:
        index = self._cl
        text = _repair(label)
        key = text.strip().casefold()
        if key in index.exact_label:
            return self._matched(label, _Found(index.exact_label[key], method="label"))
        if key in index.exact_synonym:
            return self._matched(label, _Found(index.exact_synonym[key], method="synonym"))
        found = self._resolve(_clean(text), organs)
        if found is None:
            return OntologyMatch(label, UNKNOWN, "", 0.0, "unmapped")
        return self._matched(label, found)

    def _resolve(self, text: str, organs: frozenset[str]) -> _Found | None:
        """Map a label that may carry notes: "Club Cells (Clara Cells)", "Fibroblast_X"."""
        outside, notes = _notes(text)
        if not notes:
            return self._find(outside, organs, main=True)
        inline = _tokens(re.sub(r"[()\[\]_]", " ", text))
        variants = _unique([*_variants(inline), *_variants(inline, dedupe=True)])
        term = self._lookup(variants, organs) if inline else None
        if term is not None:
            return _Found(term)
        pieces = [(outside, True)] if outside else []
        pieces += [(note, False) for note in notes]
        # The pieces that name a term as they are come first ("Classical type 1 Dendritic
        # Cell (cDC1)" is a cDC1), then the pieces reduced.
        exact = {}
        for piece, _ in pieces:
            words = _tokens(piece)
            term = self._lookup(_variants(words), organs) if words else None
            if term is not None:
                exact[piece] = _Found(term)
        found = dict(exact)
        for piece, main in pieces:
            if piece in exact or (exact and not main):
                continue
            hit = self._find(piece, organs, main=main)
            if hit is None:
                continue
            if exact and self._merge([*exact.values(), hit], common=False) is None:
                continue  # the name reduced disagrees with a note as it is: the note wins
            found[piece] = hit  # with its state: "(PTEC) in inflammatory state"
        if not found:
            return None
        merged = self._merge(list(found.values()), common=False)
        if merged is None:  # the pieces disagree: the name outside the notes wins
            if outside not in found:
                return None
            merged, found = found[outside], {outside: found[outside]}
        state = [
            note for note in notes if note not in found and not _is_acronym(note, outside)
        ]  # "(S1 Segment)", "(inaccurate annotation)"
        return _Found(
            merged.term,
            (*merged.state, *state),
            merged.broader,
            merged.method,
            merged.score,
            merged.dropped,
        )

    def _merge(self, hits: list[_Found], *, common: bool) -> _Found | None:
        """Reconcile several readings of a label into one term.

        The deepest when they are one lineage, else (``common``) their nearest common
        ancestor unless it is too general.
        """
        index = self._cl
        state = tuple(part for hit in hits for part in hit.state)
        specific = [hit for hit in hits if hit.term not in index.general] or hits
        terms = list(dict.fromkeys(hit.term for hit in specific))
        lineage = {term: {term} | index.ancestors[term] for term in terms}
        deepest = max(terms, key=lambda term: (len(index.ancestors[term]), term))
        if all(term in lineage[deepest] for term in terms):
            chosen = [hit for hit in specific if hit.term == deepest]
            best = min(chosen, key=lambda hit: hit.broader)
            return _Found(deepest, state, best.broader, best.method, best.score, best.dropped)
        if not common:
            return None
        shared = set.intersection(*lineage.values())
        lowest = max(shared, key=lambda term: (len(index.ancestors[term]), term), default=None)
        if lowest is None or lowest in index.general:
            return None
        return _Found(lowest, state)

    def _find(self, text: str, organs: frozenset[str], *, main: bool) -> _Found | None:
        """Map one piece of a label (no notes), reducing it step by step."""
        words = _tokens(text)
        if not words:
            return None
        term = self._lookup(_variants(words), organs)
        if term is not None:
            return _Found(term)
        if "/" in text:
            mixed = self._mixture(text, organs)
            if mixed is _AMBIGUOUS:
                return None
            if mixed is not None:
                return mixed
        if "resident" in words and "tissue" in words:  # "Tissue-Resident Kidney Macrophage"
            at = words.index("resident")  # is CL's "kidney resident macrophage"
            if at and words[at - 1] == "tissue":
                term = self._lookup(_variants((*words[: at - 1], *words[at:])), organs)
                if term is not None:
                    return _Found(term)
        placeless, places = _remove_places(words)
        if places and placeless and placeless != ("cell",):  # places off, states kept:
            term = self._lookup(_variants(placeless), organs)  # "Intestinal Tissue-Resident
            if term is not None:  # Macrophage" is a tissue-resident macrophage
                return _Found(term, tuple(_in_label(text, phrase) for phrase in places))
        rest, removed = _remove_state(words)
        if not removed:  # an abbreviation that says a state: "TRM cells"
            expanded, removed = _remove_state(_expand(words))
            rest = expanded if removed else rest
        state = [_in_label(text, phrase) for phrase in removed]
        if removed:
            if not rest or rest == ("cell",):  # "Cycling cells": a cell, cycling
                return _Found(_CELL, tuple(state)) if main else None
            term = self._lookup(_variants(rest), organs)
            if term is not None:
                return _Found(term, tuple(state))
        placeless, places = _remove_places(rest)
        place_state = [_in_label(text, phrase) for phrase in places]
        if places and placeless and placeless != ("cell",):
            # the label's own organ chooses first: "Mammary Luminal Epithelial Cells"
            own = _organs_in(rest) or organs
            term = self._lookup(_variants(placeless), own)
            if term is not None:
                named = self._cl.term_organs.get(term, frozenset())
                kept = [
                    said
                    for said, phrase in zip(place_state, places, strict=True)
                    if _ORGAN_OF_PHRASE.get(phrase) not in named
                ]
                return _Found(term, (*state, *kept))
        for reduced, extra in ((rest, []), (placeless, place_state)):
            term = self._spelled_out(reduced, organs)
            if term is not None:
                return _Found(term, (*state, *extra))
        fuzzy = self._fuzzy(_variants(words))
        if fuzzy is None and placeless not in (words, ("cell",)):
            fuzzy = self._fuzzy(_variants(placeless))
        if fuzzy is not None and fuzzy[0] not in _ROOT_LIKE:
            term, score = fuzzy
            if score >= 100:  # the same words: a rewriting, not a guess
                return _Found(term, tuple(state))
            return _Found(
                term, tuple(state), method="fuzzy", score=min(round(score / 100, 4), 0.9999)
            )
        wider = self._broader(rest, organs)
        if wider is not None:
            term, dropped = wider
            return _Found(term, tuple(state), True, dropped=(_in_label(text, dropped),))
        return None

    def _mixture(self, text: str, organs: frozenset[str]) -> _Found | None:
        """Read "a/b" as alternatives: "CD8+ Memory/Effector T cell", "Pericyte/SMC"."""
        chunks = text.split()
        slashed = [i for i, chunk in enumerate(chunks) if "/" in chunk.strip("/")]
        if len(slashed) == 1:  # one word has alternatives: the rest is shared
            at = slashed[0]
            options = [option for option in chunks[at].split("/") if option]
            readings = [" ".join([*chunks[:at], option, *chunks[at + 1 :]]) for option in options]
            hits = [self._find(reading, organs, main=False) for reading in readings]
            if all(hit is not None for hit in hits):
                merged = self._merge([hit for hit in hits if hit is not None], common=True)
                if merged is not None:
                    return merged
        hits, leftover = [], []
        for part in (part.strip() for part in text.split("/")):
            if part:
                hit = self._find(part, organs, main=False)
                (hits.append(hit) if hit is not None else leftover.append(part))
        if not hits:
            return None
        merged = self._merge(hits, common=True)
        if merged is None:
            return _AMBIGUOUS
        return _Found(
            merged.term,
            (*leftover, *merged.state),
            merged.broader,
            merged.method,
            merged.score,
            merged.dropped,
        )

    def _lookup(
        self, variants: list[tuple[str, ...]], organs: frozenset[str], *, places: bool = True
    ) -> str | None:
        """Return the first variant's term.

        Among CL names as they are, then (``places``) among CL names without their organ
        words.
        """
        index = self._cl
        for words in variants:
            if words in index.whole_labels:
                return index.whole_labels[words]
            text = " ".join(words)
            if text in index.ordered:
                return index.ordered[text]
            bag = _bag(words)
            if bag in index.bags:
                return index.bags[bag]
        if not places:
            return None
        for words in variants:  # a term that adds an organ only when none fits as it is
            text, bag = " ".join(words), _bag(words)
            placed = index.organ_ordered.get(text) or index.organ_bags.get(bag)
            if placed:
                term = self._place(placed, words, organs)
                if term is not None:
                    return term
        return None

    def _place(
        self,
        placed: tuple[tuple[str, frozenset[str]], ...],
        words: tuple[str, ...],
        organs: frozenset[str],
    ) -> str | None:
        """Choose among terms that add an organ to the label's words.

        "interstitial fibroblast" has a kidney and a lung term: the tissue's organ, else the
        only one.
        """
        index = self._cl
        if organs:
            fitting = [
                (rank, position, term)
                for position, (term, term_organs) in enumerate(placed)
                if (rank := _fits(term_organs, organs)) is not None
            ]
            return min(fitting)[2] if fitting else None
        if len({term for term, _ in placed}) != 1:
            return None
        if len([w for w in words if w not in _PLACE_FILLERS]) < 2:
            return None  # "transitional cell" is not the parathyroid's: too little said
        head = self._head(words)
        if head is not None and head not in index.general and not index.term_organs.get(head):
            return None  # the label's own words name a cell type of any organ: broader wins
        return placed[0][0]

    def _head(self, words: tuple[str, ...]) -> str | None:
        """Return the term the label's last words name alone, if any.

        "fibroblast" of "interstitial fibroblast".
        """
        index = self._cl
        for start in range(1, len(words)):
            suffix = words[start:]
            term = index.ordered.get(" ".join(suffix)) or index.bags.get(_bag(suffix))
            if term is not None:
                return term
        return None

    def _spelled_out(self, words: tuple[str, ...], organs: frozenset[str]) -> str | None:
        """Spell out a last word that is a synonym.

        "Ventricular Cardiomyocytes" is a "ventricular cardiac muscle cell".
        """
        index = self._cl
        if len(words) < 2 or words[-1] not in index.single:
            return None
        spelled = index.label_words[index.single[words[-1]]]
        if len(spelled) < 2:
            return None
        return self._lookup(_variants((*words[:-1], *spelled), full=False), organs)

    def _broader(
        self, words: tuple[str, ...], organs: frozenset[str]
    ) -> tuple[str, tuple[str, ...]] | None:
        """Return the nearest broader term: leading qualifiers dropped one at a time."""
        index = self._cl
        at = words.index("of") if "of" in words[1:-1] else 0
        if at and words[at - 1].endswith(_CELL_NOUN_ENDINGS):
            # "fibroblasts of the papillary dermis" as "papillary dermis fibroblasts"
            place = tuple(word for word in words[at + 1 :] if word not in _STOPWORDS)
            words = (*place, *words[:at])
        if (
            len(words) == 3
            and words[0] in _PROGENITOR_CLASSES
            and words[1] in ("progenitor", "precursor", "stem")
            and words[2] == "cell"
        ):
            term = index.exact_label.get(_PROGENITOR_CLASSES[words[0]])
            if term is not None:
                return term, words[1:2]
        nouns = [i for i, word in enumerate(words) if word.endswith(_CELL_NOUN_ENDINGS)]
        head = nouns[-1] if nouns else len(words)
        for start in range(1, min(head + 1, len(words))):
            rest = words[start:]
            if words[start - 1] in _NEGATORS or rest[0] in _STOPWORDS:
                continue
            if rest[0] == "cell" or (start == head and len(rest) > 1):
                break  # no further than the head noun: "cell type 2" is nothing
            # CL names as they are: a broader term gets no organ from the tissue
            term = self._lookup(_variants(rest, full=False), organs, places=False)
            if term is not None and term not in _ROOT_LIKE:
                return term, words[:start]
        return None

    def _fuzzy(self, variants: list[tuple[str, ...]]) -> tuple[str, float] | None:
        from rapidfuzz import fuzz, process

        index = self._cl
        cutoff = self.min_score * 100
        best: tuple[float, str] | None = None
        for words in variants[:12]:  # the most faithful rewritings are enough
            # ratio of sorted words is token_sort_ratio, with the choices sorted once.
            hits = process.extract(
                " ".join(sorted(words)), index.sorted_choices, scorer=fuzz.ratio,
                score_cutoff=cutoff, limit=8,
            )  # fmt: skip
            for _, score, position in hits:
                if _aligned(words, tuple(index.choices[position].split())):
                    if best is None or score > best[0]:
                        best = (score, index.choice_ids[position])
                    break
        if best is None:
            return None
        return best[1], best[0]


def _key_words(words: tuple[str, ...]) -> set[str]:
    return {
        word
        for word in words
        if word in _CONTRAST_WORDS or len(word) <= 2 or any(char.isdigit() for char in word)
    }


def _derived(word: str, other: str) -> bool:
    short, long = sorted((word, other), key=len)
    return long != short and long.startswith(short) and long[len(short) :] in _DERIVED_ENDINGS


def _aligned(query: tuple[str, ...], choice: tuple[str, ...]) -> bool:
    """Whether a fuzzy hit only fixes spelling and word order.

    Each word on either side must have a close partner on the other, and the words where a
    small edit is another cell type must agree exactly: CD4 is not CD8, type 1 not type 2,
    B not T, classical not non-classical, a fibroblast not "fibroblastic", and a paneth cell
    is not a tuft cell however long the rest of the two names.
    """
    from rapidfuzz import fuzz

    if _key_words(query) != _key_words(choice):
        return False
    left = [word for word in query if word not in _STOPWORDS]
    right = [word for word in choice if word not in _STOPWORDS]
    return all(
        any(
            fuzz.ratio(word, other) >= _WORD_SIMILARITY and not _derived(word, other)
            for other in others
        )
        for words, others in ((left, right), (right, left))
        for word in words
    )


_shared_lock = threading.Lock()
_shared: dict[float, CellOntology] = {}


def cell_ontology(min_score: float = 0.9) -> CellOntology:
    """Return the shared :class:`CellOntology` for ``min_score``, created on first use.

    Parameters
    ----------
    min_score
        The fuzzy threshold, in (0, 1].

    Returns
    -------
    CellOntology
        The same instance on every call with the same ``min_score``, so its cache is shared.
    """
    key = float(min_score)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = CellOntology(min_score=key)
        return _shared[key]


def load_in_background() -> threading.Thread:
    """Start loading the Cell Ontology index in a daemon thread, and return the thread.

    A run calls this before its model calls, so that the index (about 0.4 s to build) is
    ready when the answers need their terms, instead of adding to the run's wall time.
    Loading twice is impossible (the index is built under a lock); a missing extra is
    reported later by whoever needs the terms, not here.

    Returns
    -------
    threading.Thread
        The loading thread, already started.
    """

    def load() -> None:
        # A missing extra: map_to_ontology says so, or raises when the terms were required.
        with contextlib.suppress(OntologyUnavailable):
            _load_index()

    thread = threading.Thread(target=load, name="cassia-sc-ontology", daemon=True)
    thread.start()
    return thread
