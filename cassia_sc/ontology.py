"""Map free-text cell-type labels to Cell Ontology (CL) terms, offline.

Labels come from model answers and from users' truth columns: "CD8+ T cells",
"CD14+ Monocyte", "Endothelial cell (lymphatic)". :class:`CellOntology` maps each one to a
single CL term, using the Cell Ontology that ``cellxgene-ontology-guide`` ships (no network),
and tries these steps in order, stopping at the first hit:

1. ``"label"``: the CL label, case-insensitive.
2. ``"synonym"``: an exact synonym of a CL term, case-insensitive. The ontology that
   ``cellxgene-ontology-guide`` ships keeps exact synonyms only; a synonym two terms share
   goes to the more general one (fewer ancestors), then the shorter label, then the
   smaller id.
3. ``"normalised"``: the label rewritten, then looked up among the CL labels and synonyms
   rewritten the same way, first in word order and then as a bag of words (so "Dermis
   fibroblast" finds "fibroblast of dermis"). The rewriting: lower case, accents dropped,
   unicode dashes as "-", hyphens as spaces; surrounding punctuation, cluster suffixes
   ("_1") and notes in parentheses dropped (the note itself is tried too: "Immune
   (B cell)"); "CD14+" as "CD14-positive", "CD25-" as "CD25-negative" and a bare "CD4" as
   "CD4-positive"; "αβ", "alpha/beta", "ab T" as "alpha-beta" (gamma-delta likewise);
   roman numerals as digits; plurals as singulars; :data:`ABBREVIATIONS` expanded; "cell"
   added when missing ("Dendritic"); CD4/CD8 T cells as CL's alpha-beta ones; an
   anatomical lining as its cells ("Glomerular endothelium"); then, less faithful, marker
   lists dropped ("CD19+ B" is a B cell), "progenitor" and "precursor" swapped, a leading
   "mature" dropped. A label "a/b" of two cell types maps to the more specific one when
   they are one lineage and to their nearest common ancestor otherwise, unless that is in
   :data:`TOO_GENERAL`: then the label is an ambiguous mixture and stays unmapped.
4. ``"fuzzy"``: the closest CL label or synonym by :func:`rapidfuzz.fuzz.token_sort_ratio`,
   kept only at or above ``min_score`` and only when it fixes spelling, never a word that
   names another cell type (CD4/CD8, type 1/2, B/T, classical/non-classical, ...).

Nothing else matches: ``"unmapped"``, with ``term_id="unknown"``. Deprecated (obsolete)
terms are never returned, and only CL terms (``CL:`` ids) are.

:meth:`CellOntology.relation` scores two terms for evaluation and agreement: 1 for the same
term, 0.5 for an ancestor or descendant or a close relative (a shared direct parent that is
not in :data:`TOO_GENERAL`), 0 otherwise.

Needs the optional extra: ``pip install "cassia-sc[ontology]"``.
"""

from __future__ import annotations

import itertools
import re
import threading
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd

from .errors import OntologyUnavailable

__all__ = [
    "ABBREVIATIONS",
    "TOO_GENERAL",
    "UNKNOWN",
    "CellOntology",
    "OntologyMatch",
    "OntologyUnavailable",
    "cell_ontology",
]

#: ``term_id`` of a label that maps to no CL term.
UNKNOWN = "unknown"

MatchMethod = Literal["label", "synonym", "normalised", "fuzzy", "unmapped"]

#: Parents too general to make two terms "close relatives" in :meth:`CellOntology.relation`.
#: Chosen from the shipped CL's structure: the root and the groupings by a property that cuts
#: across lineages (nucleate, motile, secretory, contractile, progenitor, phagocyte, ...),
#: plus the broad lineage classes whose children annotators are expected to tell apart
#: (about 150 or more descendants each: leukocyte, lymphocyte, myeloid cell, epithelial cell,
#: neuron, glial cell, ...). "native cell", "animal cell" and "somatic cell" are obsolete in
#: current CL, so they are not here. "mononuclear phagocyte" (monocyte, macrophage, dendritic
#: cell) and "T cell" are deliberately left out: their children count as close relatives.
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
}

#: Abbreviations expanded in step 3, as whole words, case-insensitive. A "cell" right after
#: an abbreviation that already names a cell is absorbed ("MAIT cells" is not "... cell cell").
#: Left out on purpose: "EC" (endothelial or enterochromaffin), "PC" (plasma or principal
#: cell), "MK", "CAF", "TAM", "MDSC" (no single CL term). "HSC" means hematopoietic stem cell;
#: write the liver's hepatic stellate cells out in full. "Tcm" and "Tem" find a term only
#: with CD4 or CD8 ("CD4 TCM"): CL has no central or effector memory T cell in general.
ABBREVIATIONS: dict[str, str] = {
    "NK": "natural killer",
    "NKT": "mature NK T cell",
    "NK T": "mature NK T cell",
    "natural killer T": "mature NK T cell",
    "Treg": "regulatory T cell",
    "T reg": "regulatory T cell",
    "CTL": "cytotoxic T cell",
    "MAIT": "mucosal-associated invariant T cell",
    "ab T": "alpha-beta T",
    "gd T": "gamma-delta T",
    "gdT": "gamma-delta T cell",
    "Tcm": "central memory T cell",
    "Tem": "effector memory T cell",
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
    "tissue macrophage": "tissue-resident macrophage",
    "erythroid cell": "erythroid lineage cell",
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

#: Organ words CL puts in front of labels that people usually leave out ("renal principal
#: cell", "kidney connecting tubule epithelial cell", "pulmonary alveolar type 2 cell").
_ORGAN_PREFIXES = frozenset({"kidney", "renal", "pulmonary"})

#: Words left out of the bag-of-words keys: "fibroblast of dermis" is "dermis fibroblast".
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

#: Word endings that name a cell already ("monocyte", "myoblast", "macrophage", ...).
_CELL_NOUN_ENDINGS = (
    "cell", "cyte", "blast", "phage", "phil", "clast", "neuron", "glia", "platelet",
    "fiber", "fibre", "gonium", "tid", "zoon", "zoa",
)  # fmt: skip

_DASHES = re.compile("[\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d]")
# Greek alpha, beta, gamma, delta, kappa: "αβ T cell", "γδ T cell".
_GREEK = {
    "\u03b1": " alpha ",
    "\u03b2": " beta ",
    "\u03b3": " gamma ",
    "\u03b4": " delta ",
    "\u03ba": " kappa ",
}
_PROGENITOR_SWAP = {"progenitor": "precursor", "precursor": "progenitor"}
_WORD_MAP = {"i": "1", "ii": "2", "iii": "3", "iv": "4", "hi": "high", "lo": "low"}
# A marker such as CD25 or FOXP3 followed by "-" (and not by a word): CD25-negative.
_NEGATIVE_MARKER = re.compile(r"\b([a-z]+\d+[a-z0-9]*)\s*-(?=[\s/,;)]|$|cd\d)")
_MARKER_LEVEL = re.compile(r"\b(cd\d+[a-z]?)(bright|dim|high|hi|low|lo)\b")
_BARE_MARKER = re.compile(r"^cd\d+[a-z]*$")
_POLARITY = frozenset({"positive", "negative", "high", "low", "bright", "dim"})
# "B cell_1", "MNP_a", and "B cell (2)" as cassia_sc numbers a repeated cluster name.
_CLUSTER_SUFFIX = re.compile(r"(_(\d+|[a-z])|\s*\(\d+\))$", re.IGNORECASE)
_WORD_SIMILARITY = 75  # rapidfuzz ratio of two words that differ by a typo
_PARENTHESES = re.compile(r"\(([^()]*)\)|\[([^\[\]]*)\]")


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
        for ``fuzzy`` ones, 0.0 when unknown.
    method
        ``"label"``, ``"synonym"``, ``"normalised"``, ``"fuzzy"`` or ``"unmapped"``.
    """

    label: str
    term_id: str
    term_label: str
    score: float
    method: MatchMethod

    @property
    def mapped(self) -> bool:
        """Whether the label found a CL term."""
        return self.term_id != UNKNOWN


# ---------------------------------------------------------------------------------------
# Text rewriting, the same for input labels and for CL labels and synonyms.


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
    text = unicodedata.normalize("NFKC", text)
    for letter, name in _GREEK.items():
        text = text.replace(letter, name)
    text = _strip_accents(text).casefold()
    text = _DASHES.sub("-", text)
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
    return " ".join(sorted(word for word in words if word not in _STOPWORDS))


def _has_cell_noun(words: tuple[str, ...]) -> bool:
    return any(word.endswith(_CELL_NOUN_ENDINGS) for word in words)


def _abbreviation_table() -> dict[tuple[str, ...], tuple[str, ...]]:
    return {_tokens(short): _tokens(long) for short, long in ABBREVIATIONS.items()}


_ABBREVIATION_WORDS = _abbreviation_table()
_LONGEST_ABBREVIATION = max(len(key) for key in _ABBREVIATION_WORDS)


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
        is_marker = any(char.isdigit() for char in word) and following in _POLARITY
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
        end -= 1
    return words[:end]


def _completions(words: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    yield words
    if words and words[-1] != "cell":
        yield (*words, "cell")  # "Dendritic", "Myofibroblast" (CL: "myofibroblast cell")
    if words and not _has_cell_noun(words):
        if _has_cd4_or_cd8(words):
            yield _alpha_beta((*words, "t", "cell"))  # "CD4+/CD45RO+ Memory"
        yield (*words, "epithelial", "cell")  # "Proximal tubule"


def _stages(text: str) -> Iterator[tuple[str, ...]]:
    """Rewritings of one piece of text, the most faithful first."""
    words = _tissue_to_cell(_tokens(text))
    expanded = _expand(words)
    paired = _alpha_beta(expanded)
    cd_only = _strip_markers(paired, frozenset({"cd4", "cd8"}))
    no_markers = _strip_markers(paired, frozenset())
    for stage in (words, expanded, paired, cd_only, no_markers):
        yield from _completions(stage)
    if "cytotoxic" in cd_only and _has_cd4_or_cd8(cd_only):
        # CL names CD8 T cell subsets without it: "CD8+ naive cytotoxic" is a naive CD8 T
        yield from _completions(tuple(word for word in cd_only if word != "cytotoxic"))
    swapped = tuple(_PROGENITOR_SWAP.get(word, word) for word in no_markers)
    if swapped != no_markers:
        yield from _completions(swapped)  # "oligodendrocyte progenitor cell" is CL's precursor
    for stage in (paired, no_markers):
        if stage and stage[0] == "mature":  # a mature X is an X; "immature" stays
            yield from _completions(stage[1:])
        trimmed = _drop_trailing_code(stage)
        if trimmed != stage:
            yield from _completions(_expand(trimmed))


def _pieces(label: str) -> tuple[list[str], list[str]]:
    """Split off notes in parentheses and cluster suffixes.

    Returns the pieces to try whole, and those whose "/" may separate two cell types.
    """
    label = label.strip().strip(".,;:!?*`\"'").strip()
    label = _CLUSTER_SUFFIX.sub("", label) or label
    inner = [a or b for a, b in _PARENTHESES.findall(label)]
    if inner:
        outside = _PARENTHESES.sub(" ", label).strip()
        inline = _PARENTHESES.sub(lambda m: " " + (m.group(1) or m.group(2)) + " ", label)
        whole, splittable = [inline, *inner, outside], [*inner, outside]
    else:
        whole, splittable = [label], [label]
    if "_" in label:
        head = label.split("_", 1)[0]
        whole.append(head)
        splittable.append(head)
    return [piece for piece in whole if piece.strip()], [p for p in splittable if "/" in p]


# ---------------------------------------------------------------------------------------
# The index, built once per process from the shipped CL.


@dataclass
class _Index:
    version: str
    labels: dict[str, str]
    ancestors: dict[str, frozenset[str]]
    parents: dict[str, frozenset[str]]
    exact_label: dict[str, str]
    exact_synonym: dict[str, str]
    ordered: dict[str, str]
    bags: dict[str, str]
    choices: list[str]
    sorted_choices: list[str]  # each choice's words sorted: token_sort_ratio, precomputed
    choice_ids: list[str]
    whole_labels: dict[tuple[str, ...], str]


_index_lock = threading.Lock()
_shared_index: _Index | None = None


def _build_index(parser: Any) -> _Index:
    schema = parser.cxg_schema
    terms: dict[str, dict[str, Any]] = schema.ontology("CL")
    version = str(schema.supported_ontologies["CL"]["version"])
    labels = {term: str(meta.get("label") or "") for term, meta in terms.items()}
    deprecated = frozenset(term for term, meta in terms.items() if meta.get("deprecated"))
    live = [
        term for term in terms if term.startswith("CL:") and term not in deprecated and labels[term]
    ]
    ancestors: dict[str, frozenset[str]] = {}
    parents: dict[str, frozenset[str]] = {}
    for term, meta in terms.items():
        found = meta.get("ancestors") or {}
        ancestors[term] = frozenset(a for a in found if a.startswith("CL:") and a != term)
        parents[term] = frozenset(a for a, d in found.items() if d == 1 and a.startswith("CL:"))

    def preference(rank: int, term: str) -> tuple[int, int, int, str]:
        # Ties go to the label over a synonym, then to the most general term (fewest
        # ancestors), then the shortest label, then the smallest id: deterministic, and a
        # broader term is the safer claim when a name is ambiguous.
        return (rank, len(ancestors[term]), len(labels[term]), term)

    def offer(table: dict[str, tuple[int, str]], key: str, rank: int, term: str) -> None:
        if key and (key not in table or preference(rank, term) < preference(*table[key])):
            table[key] = (rank, term)

    exact_label: dict[str, tuple[int, str]] = {}
    exact_synonym: dict[str, tuple[int, str]] = {}
    ordered: dict[str, tuple[int, str]] = {}
    bags: dict[str, tuple[int, str]] = {}
    fuzzy: dict[str, tuple[int, str]] = {}
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
            offer(ordered, " ".join(words), rank, term)
            offer(bags, _bag(words), rank, term)
            offer(fuzzy, " ".join(words), rank, term)
            if rank == 0 and len(words) > 2 and words[0] in _ORGAN_PREFIXES:
                offer(ordered, " ".join(words[1:]), 2, term)
                offer(bags, _bag(words[1:]), 2, term)

    by_label = {labels[term]: term for term in live}
    whole_labels = {
        _tokens(text): by_label[target]
        for text, target in _WHOLE_LABELS.items()
        if target in by_label
    }
    choices = sorted(fuzzy)
    return _Index(
        version=version,
        labels=labels,
        ancestors=ancestors,
        parents=parents,
        exact_label={key: term for key, (_, term) in exact_label.items()},
        exact_synonym={key: term for key, (_, term) in exact_synonym.items()},
        ordered={key: term for key, (_, term) in ordered.items()},
        bags={key: term for key, (_, term) in bags.items()},
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


class CellOntology:
    """Map cell-type labels to Cell Ontology terms, and compare terms.

    The ontology is loaded on first use, once per process, and shared by every instance;
    loading is thread-safe. Each instance caches its matches per label.

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
    >>> cl.relation("CL:0000624", "CL:0000625")  # CD4 and CD8 T cells  # doctest: +SKIP
    0.5
    """

    def __init__(self, *, min_score: float = 0.9) -> None:
        if not 0.0 < min_score <= 1.0:
            raise ValueError(f"min_score must be in (0, 1], not {min_score!r}")
        self.min_score = float(min_score)
        self._index: _Index | None = None
        self._lock = threading.Lock()
        self._cache: dict[str, OntologyMatch] = {}

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

    def match(self, label: str) -> OntologyMatch:
        """Map one label to a CL term.

        Parameters
        ----------
        label
            A cell-type name in free text. ``None`` and NaN (empty cells of a table) are
            unmapped.

        Returns
        -------
        OntologyMatch
            The term, or ``term_id="unknown"`` when nothing fits well enough.
        """
        text = label if isinstance(label, str) else "" if pd.isna(label) else str(label)
        cached = self._cache.get(text)
        if cached is None:
            cached = self._match(text)
            with self._lock:
                self._cache[text] = cached
        return cached

    def match_many(self, labels: Iterable[str]) -> list[OntologyMatch]:
        """Map each label, in order; repeated labels are mapped once.

        Parameters
        ----------
        labels
            Cell-type names, e.g. a truth column.

        Returns
        -------
        list of OntologyMatch
            One per label, in the same order.
        """
        return [self.match(label) for label in labels]

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

    def relation(self, a: str, b: str) -> float:
        """How close two CL terms are: 1.0, 0.5 or 0.0.

        1.0 when ``a == b``; 0.5 when one is an ancestor of the other, or when they share a
        direct parent that is not in :data:`TOO_GENERAL` (close relatives, such as CD4 and
        CD8 alpha-beta T cells, or monocyte and macrophage); 0.0 otherwise, and whenever
        either is ``"unknown"``.

        Raises
        ------
        ValueError
            ``a`` or ``b`` is neither ``"unknown"`` nor a term of the shipped CL.
        """
        if UNKNOWN in (a, b):
            return 0.0
        index = self._cl
        a, b = self._check(a), self._check(b)
        if a == b:
            return 1.0
        if a in index.ancestors[b] or b in index.ancestors[a]:
            return 0.5
        shared = (index.parents[a] & index.parents[b]) - TOO_GENERAL.keys()
        return 0.5 if shared else 0.0

    # -- internals -------------------------------------------------------------------

    def _check(self, term_id: str) -> str:
        if term_id not in self._cl.labels:
            raise ValueError(f"{term_id!r} is not a term of the Cell Ontology")
        return term_id

    def _found(
        self, label: str, term: str, method: MatchMethod, score: float = 1.0
    ) -> OntologyMatch:
        return OntologyMatch(label, term, self._cl.labels[term], score, method)

    def _match(self, label: str) -> OntologyMatch:
        index = self._cl
        key = label.strip().casefold()
        if key in index.exact_label:
            return self._found(label, index.exact_label[key], "label")
        if key in index.exact_synonym:
            return self._found(label, index.exact_synonym[key], "synonym")
        whole, splittable = _pieces(label)
        variants = _unique(words for piece in whole for words in _stages(piece))
        term = self._lookup(variants)
        if term is None:
            term, ambiguous = self._mixture(splittable)
            if ambiguous:
                return OntologyMatch(label, UNKNOWN, "", 0.0, "unmapped")
        if term is not None:
            return self._found(label, term, "normalised")
        return self._fuzzy(label, variants)

    def _lookup(self, variants: list[tuple[str, ...]]) -> str | None:
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
        return None

    def _mixture(self, pieces: list[str]) -> tuple[str | None, bool]:
        """Map "a/b" labels: one lineage gives its most specific term, two its common one.

        Returns the term (or None) and whether the pieces were an unresolvable mixture.
        """
        for piece in pieces:
            found = []
            for part in piece.split("/"):
                variants = _unique(_stages(part))
                term = self._lookup(variants) if variants else None
                if term is not None:
                    found.append(term)
            if not found:
                continue
            lineage = {t: {t} | self._cl.ancestors[t] for t in found}
            deepest = max(found, key=lambda t: (len(lineage[t]), t))
            if all(t in lineage[deepest] for t in found):
                return deepest, False  # "MNP-c/dendritic cell": the parts are one lineage
            common = set.intersection(*lineage.values())
            lowest = max(common, key=lambda t: (len(self._cl.ancestors[t]), t), default=None)
            if lowest is None or lowest in TOO_GENERAL:
                return None, True
            return lowest, False
        return None, False

    def _fuzzy(self, label: str, variants: list[tuple[str, ...]]) -> OntologyMatch:
        from rapidfuzz import fuzz, process

        index = self._cl
        cutoff = self.min_score * 100
        best: tuple[float, str] | None = None
        for words in variants[:12]:  # the most faithful rewritings are enough
            if not words:
                continue
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
            return OntologyMatch(label, UNKNOWN, "", 0.0, "unmapped")
        score, term = best
        if score >= 100:  # the same words: a rewriting, not a guess
            return self._found(label, term, "normalised")
        return self._found(label, term, "fuzzy", min(round(score / 100, 4), 0.9999))


def _key_words(words: tuple[str, ...]) -> set[str]:
    return {
        word
        for word in words
        if word in _CONTRAST_WORDS or len(word) <= 2 or any(char.isdigit() for char in word)
    }


def _aligned(query: tuple[str, ...], choice: tuple[str, ...]) -> bool:
    """Whether a fuzzy hit only fixes spelling and word order.

    Each word on either side must have a close partner on the other, and the words where a
    small edit is another cell type must agree exactly: CD4 is not CD8, type 1 not type 2,
    B not T, classical not non-classical, and a paneth cell is not a tuft cell however long
    the rest of the two names.
    """
    from rapidfuzz import fuzz

    if _key_words(query) != _key_words(choice):
        return False
    left = [word for word in query if word not in _STOPWORDS]
    right = [word for word in choice if word not in _STOPWORDS]
    return all(
        any(fuzz.ratio(word, other) >= _WORD_SIMILARITY for other in others)
        for words, others in ((left, right), (right, left))
        for word in words
    )


def _unique(items: Iterable[tuple[str, ...]]) -> list[tuple[str, ...]]:
    return [words for words in dict.fromkeys(items) if words]


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
