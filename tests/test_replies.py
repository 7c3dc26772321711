"""Parsing of model replies: JSON recovery, annotations, verdicts and unsupported markers."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest
from conftest import MARKER100

from cassia_sc.replies import (
    Annotation,
    Verdict,
    extract_json_object,
    parse_annotation,
    parse_gene_request,
    parse_score,
    parse_verdict,
    unsupported_markers,
)

# --------------------------------------------------------------------------- replies

T_CELL = {
    "main_cell_type": "T cell",
    "sub_cell_types": ["Naive CD4+ T cell", "Central memory CD4+ T cell", "Regulatory T cell"],
    "possible_mixed_cell_types": ["NK cell"],
    "key_markers": ["CD3D", "CD3E", "IL7R", "CCR7", "LEF1"],
}
T_CELL_JSON = json.dumps(T_CELL, indent=2)

T_CELL_REASONING = """\
Step 1 - Key functional markers.
CD3D, CD3E and CD2 encode parts of the T-cell receptor complex and are among the most
specific pan-T-cell genes. IL7R (CD127) marks naive and memory T cells, and CCR7 together
with SELL points to cells that still home to lymph nodes.

Step 2 - Cell-type markers and what is absent.
There is no sign of B-cell genes (MS4A1, CD79A) or of myeloid genes (LYZ, CD14, FCGR3A),
and the cytotoxic program (GZMB, PRF1, NKG7) is weak, which argues against NK cells.

Step 3 - Subtypes.
CD8A and CD8B are missing while LEF1, TCF7 and CCR7 are high, so naive CD4+ T cells are
the best fit, followed by central memory CD4+ T cells; FOXP3 is low but not absent.

Final annotation:
"""

B_CELL = {
    "main_cell_type": "B cell",
    "sub_cell_types": ["Naive B cell", "Memory B cell"],
    "possible_mixed_cell_types": [],
    "key_markers": ["MS4A1", "CD79A", "CD79B", "BANK1"],
}

B_CELL_REASONING = """\
Looking at the top of the list, MS4A1 (CD20), CD79A and CD79B form the B-cell receptor
signalling module, and BANK1, FCRLA and BLK are B-lineage restricted.
Plasma-cell genes (JCHAIN, MZB1, XBP1) are not dominant, so this is not a plasma cell
cluster. IGHD and FCER2 suggest naive B cells; CD27 hints at a memory fraction.
"""


def fenced(opening: str, body: str, closing: str) -> str:
    return f"{T_CELL_REASONING}\n{opening}{body}{closing}\n\nLet me know if you need more detail."


# --------------------------------------------------------------------------- extract_json_object


@pytest.mark.parametrize(
    ("opening", "closing"),
    [
        ("```json\n", "\n```"),
        ("```JSON\n", "\n```"),
        ("```Json\n", "\n```"),
        ("```\n", "\n```"),
        ("~~~json\n", "\n~~~"),
        ("~~~\n", "\n~~~"),
        ("```json", "```"),  # no newline after the fence
        ("```", "```"),
        ("```json ", " ```"),
        ("````json\n", "\n````"),
    ],
)
def test_every_fence_variant_yields_the_object(opening, closing):
    assert extract_json_object(fenced(opening, T_CELL_JSON, closing)) == T_CELL
    # The fence is recognised as one: it wins over a later object in the prose.
    later = {"main_cell_type": "CD8+ T cell"}
    reply = (
        fenced(opening, T_CELL_JSON, closing)
        + f"\nHad CD8A been in the list I would have answered {json.dumps(later)}."
    )
    assert extract_json_object(reply) == T_CELL


def test_crlf_reply_with_fence():
    reply = fenced("```json\n", T_CELL_JSON, "\n```").replace("\n", "\r\n")
    assert "\r\n" in reply
    assert extract_json_object(reply) == T_CELL


def test_crlf_reply_without_fence_and_with_repairs():
    reply = (B_CELL_REASONING + json.dumps(B_CELL, indent=2)).replace("]", ",]")
    reply = reply.replace("\n", "\r\n")
    assert extract_json_object(reply) == B_CELL


def test_bare_object():
    assert extract_json_object(T_CELL_JSON) == T_CELL
    assert extract_json_object("  \n" + json.dumps(B_CELL) + "\n\n") == B_CELL


def test_object_inside_prose_before_and_after():
    reply = (
        f"{B_CELL_REASONING}\nMy answer is {json.dumps(B_CELL)} and I am fairly confident, "
        "although a small doublet population cannot be excluded."
    )
    assert extract_json_object(reply) == B_CELL


def test_last_of_several_objects_wins():
    draft = {"main_cell_type": "NK cell", "key_markers": ["NKG7", "GNLY"]}
    reply = (
        f"A first guess from the cytotoxic genes: {json.dumps(draft)}\n\n"
        f"{T_CELL_REASONING}{T_CELL_JSON}\n"
    )
    assert extract_json_object(reply) == T_CELL


def test_last_of_several_fenced_blocks_wins():
    draft = {"main_cell_type": "NK cell"}
    reply = (
        f"Draft:\n```json\n{json.dumps(draft)}\n```\n\n{T_CELL_REASONING}"
        f"```json\n{T_CELL_JSON}\n```\n"
    )
    assert extract_json_object(reply) == T_CELL


def test_fenced_block_preferred_over_later_prose_braces():
    later = {"main_cell_type": "CD8+ T cell"}
    reply = (
        f"{T_CELL_REASONING}```json\n{T_CELL_JSON}\n```\n\n"
        f"Had CD8A been in the list I would instead have answered {json.dumps(later)}."
    )
    assert extract_json_object(reply) == T_CELL


def test_fenced_block_needing_repair_preferred_over_valid_prose_object():
    prose = {"main_cell_type": "Lymphocyte"}
    broken = T_CELL_JSON.replace('"LEF1"', '"LEF1",')
    reply = f"Broadly {json.dumps(prose)}; more precisely:\n```json\n{broken}\n```"
    assert extract_json_object(reply) == T_CELL


def test_nested_object_returns_the_outermost():
    obj = {
        "main_cell_type": "B cell",
        "evidence": {"MS4A1": "strong", "CD79A": {"rank": 3, "specific": True}},
        "key_markers": ["MS4A1", "CD79A"],
    }
    reply = f"{B_CELL_REASONING}\n{json.dumps(obj, indent=2)}\nDone."
    assert extract_json_object(reply) == obj


def test_braces_inside_strings():
    obj = {
        "main_cell_type": "T cell",
        "reasoning": "the set {CD3D, CD3E} is closed by } and opened again by {",
        "key_markers": ["CD3D", "CD3E"],
    }
    reply = f"Markers {{CD3D, CD3E}} say T cell.\n```json\n{json.dumps(obj)}\n```"
    assert extract_json_object(reply) == obj


def test_trailing_commas_are_repaired():
    reply = (
        f"{B_CELL_REASONING}\n"
        "{\n"
        '  "main_cell_type": "B cell",\n'
        '  "sub_cell_types": ["Naive B cell", "Memory B cell",],\n'
        '  "possible_mixed_cell_types": [],\n'
        '  "key_markers": ["MS4A1", "CD79A", "CD79B", "BANK1", ],\n'
        "}\n"
    )
    assert extract_json_object(reply) == B_CELL


def test_trailing_comma_repair_leaves_strings_alone():
    reply = '{"main_cell_type": "T cell", "note": "ends with ,} and ,]", "k": [1, 2,],}'
    assert extract_json_object(reply) == {
        "main_cell_type": "T cell",
        "note": "ends with ,} and ,]",
        "k": [1, 2],
    }


def test_broken_outer_object_beats_its_valid_inner_object():
    # The strict pass only decodes the inner evidence dict; the repaired outer one wins.
    reply = (
        '{"main_cell_type": "B cell", "evidence": {"MS4A1": "strong", "CD79A": "strong"}, '
        '"key_markers": ["MS4A1", "CD79A",],}'
    )
    assert extract_json_object(reply) == {
        "main_cell_type": "B cell",
        "evidence": {"MS4A1": "strong", "CD79A": "strong"},
        "key_markers": ["MS4A1", "CD79A"],
    }


def test_valid_object_not_replaced_by_a_later_broken_unfenced_one():
    reply = f'{T_CELL_JSON}\nP.S. {{"note": "CCR7 is borderline",}}'
    assert extract_json_object(reply) == T_CELL


def test_typographic_quotes_are_repaired():
    reply = (
        "CD14, LYZ and S100A8 are classical monocyte genes.\n"
        "{\u201cmain_cell_type\u201d: \u201cMonocyte\u201d, "
        "\u201ckey_markers\u201d: [\u201cCD14\u201d, \u201cLYZ\u201d, \u201cS100A8\u201d]}"
    )
    assert extract_json_object(reply) == {
        "main_cell_type": "Monocyte",
        "key_markers": ["CD14", "LYZ", "S100A8"],
    }


def test_typographic_quotes_inside_valid_strings_are_kept():
    obj = {"main_cell_type": "T cell", "note": "so-called \u201cnaive\u201d cells"}
    reply = json.dumps(obj, ensure_ascii=False)
    assert "\u201c" in reply
    assert extract_json_object(reply) == obj


def test_typographic_quotes_and_trailing_comma_together():
    reply = (
        "{\u201cmain_cell_type\u201d: \u201cNK cell\u201d, "
        "\u201cmarkers\u201d: [\u201cNKG7\u201d,],}"
    )
    assert extract_json_object(reply) == {"main_cell_type": "NK cell", "markers": ["NKG7"]}


def test_truncated_reply_gets_its_closers():
    reply = (
        f"{T_CELL_REASONING}```json\n"
        '{\n  "main_cell_type": "T cell",\n'
        '  "sub_cell_types": ["Naive CD4+ T cell"],\n'
        '  "key_markers": ["CD3D", "CD3E", "IL7R"'
    )
    assert extract_json_object(reply) == {
        "main_cell_type": "T cell",
        "sub_cell_types": ["Naive CD4+ T cell"],
        "key_markers": ["CD3D", "CD3E", "IL7R"],
    }


def test_truncated_after_a_comma_and_inner_object():
    reply = '{"main_cell_type": "B cell", "evidence": {"MS4A1": "strong"},\n'
    assert extract_json_object(reply) == {
        "main_cell_type": "B cell",
        "evidence": {"MS4A1": "strong"},
    }


def test_missing_brace_before_a_closed_fence():
    reply = '```json\n{"main_cell_type": "T cell", "key_markers": ["CD3D"]\n```\n'
    assert extract_json_object(reply) == {"main_cell_type": "T cell", "key_markers": ["CD3D"]}


@pytest.mark.parametrize(
    "reply",
    [
        '{"main_cell_type": "T cell", "key_markers": ["CD3D", "IL7',  # cut inside a string
        '{"main_cell_type": "T cell", "key_markers":',  # cut after a key
        '{"main_cell_type": "T ce',
    ],
)
def test_truncation_that_cannot_be_closed_cleanly_gives_none(reply):
    assert extract_json_object(reply) is None


@pytest.mark.parametrize(
    "reply",
    [
        "I cannot determine a cell type from these markers; they look like ambient RNA.",
        "The markers {CD3D, CD3E, IL7R} point to T cells.",
        "{not json at all}",
        '{"main_cell_type": "T cell" "key_markers": ["CD3D"]}',  # missing comma
        "[1, 2, 3]",
        "main_cell_type: T cell\nkey_markers: CD3D, CD3E",
        "{" * 100_000,
        '{"a": [' * 20_000,
    ],
)
def test_garbage_gives_none(reply):
    assert extract_json_object(reply) is None


@pytest.mark.parametrize("reply", [None, "", "   ", "\r\n\t \n"])
def test_empty_gives_none(reply):
    assert extract_json_object(reply) is None


def test_only_a_dict_counts():
    assert extract_json_object('The list ["CD3D", "CD3E"] then {"main_cell_type": "T"}') == {
        "main_cell_type": "T"
    }
    assert extract_json_object("{}") == {}


# --------------------------------------------------------------------------- parse_annotation


def test_full_reply_to_annotation():
    annotation = parse_annotation(extract_json_object(fenced("```json\n", T_CELL_JSON, "\n```")))
    assert annotation == Annotation(
        main_cell_type="T cell",
        sub_cell_types=("Naive CD4+ T cell", "Central memory CD4+ T cell", "Regulatory T cell"),
        possible_mixed_cell_types=("NK cell",),
        key_markers=("CD3D", "CD3E", "IL7R", "CCR7", "LEF1"),
        possible_tissues=(),
    )


def test_to_dict_is_json_ready_lists():
    annotation = parse_annotation({**B_CELL, "possible_tissues": ["blood", "spleen"]})
    as_dict = annotation.to_dict()
    assert as_dict == {
        "main_cell_type": "B cell",
        "sub_cell_types": ["Naive B cell", "Memory B cell"],
        "possible_mixed_cell_types": [],
        "key_markers": ["MS4A1", "CD79A", "CD79B", "BANK1"],
        "possible_tissues": ["blood", "spleen"],
    }
    assert json.loads(json.dumps(as_dict)) == as_dict


def test_annotation_is_frozen_and_holds_tuples():
    annotation = Annotation("T cell", ["CD4 T"], [], ["CD3D"], [])
    assert annotation.sub_cell_types == ("CD4 T",)
    assert annotation.key_markers == ("CD3D",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        annotation.main_cell_type = "B cell"


@pytest.mark.parametrize(
    "key",
    [
        "main_cell_type",
        "main_celltype",
        "cell_type",
        "celltype",
        "main_type",
        "general_cell_type",
        "predicted_cell_type",
        "Main Cell Type",
        "MAIN-CELL-TYPE",
        "CellType",
        "Predicted_Cell_Type",
    ],
)
def test_main_cell_type_aliases(key):
    annotation = parse_annotation({key: "Endothelial cell"})
    assert annotation == Annotation("Endothelial cell")


@pytest.mark.parametrize(
    ("key", "field"),
    [
        ("sub_cell_types", "sub_cell_types"),
        ("subtypes", "sub_cell_types"),
        ("sub_types", "sub_cell_types"),
        ("subcell_types", "sub_cell_types"),
        ("detailed_cell_types", "sub_cell_types"),
        ("cell_subtypes", "sub_cell_types"),
        ("Sub Cell Types", "sub_cell_types"),
        ("possible_mixed_cell_types", "possible_mixed_cell_types"),
        ("mixed_cell_types", "possible_mixed_cell_types"),
        ("possible_mixed", "possible_mixed_cell_types"),
        ("mixed", "possible_mixed_cell_types"),
        ("Possible-Mixed-Cell-Types", "possible_mixed_cell_types"),
        ("key_markers", "key_markers"),
        ("markers", "key_markers"),
        ("supporting_markers", "key_markers"),
        ("key_genes", "key_markers"),
        ("KeyMarkers", "key_markers"),
        ("possible_tissues", "possible_tissues"),
        ("tissues", "possible_tissues"),
        ("tissue", "possible_tissues"),
        ("TISSUE", "possible_tissues"),
    ],
)
def test_list_field_aliases(key, field):
    annotation = parse_annotation({"main_cell_type": "Fibroblast", key: ["DCN", "LUM"]})
    expected = {
        "sub_cell_types": (),
        "possible_mixed_cell_types": (),
        "key_markers": (),
        "possible_tissues": (),
        field: ("DCN", "LUM"),
    }
    assert annotation == Annotation("Fibroblast", **expected)


def test_canonical_key_wins_over_alias():
    annotation = parse_annotation(
        {
            "cell_type": "Lymphocyte",
            "main_cell_type": "T cell",
            "markers": ["PTPRC"],
            "key_markers": ["CD3D", "CD3E"],
        }
    )
    assert annotation.main_cell_type == "T cell"
    assert annotation.key_markers == ("CD3D", "CD3E")


def test_empty_canonical_key_falls_back_to_alias():
    annotation = parse_annotation(
        {"main_cell_type": "", "cell_type": "Mast cell", "key_markers": [], "markers": "TPSAB1"}
    )
    assert annotation == Annotation("Mast cell", key_markers=("TPSAB1",))


def test_list_values_are_cleaned():
    annotation = parse_annotation(
        {
            "main_cell_type": "  Monocyte \n",
            "key_markers": [
                " CD14 ",
                "LYZ",
                "",
                None,
                "none",
                "N/A",
                "null",
                "NaN",
                "cd14",
                "S100A8",
                "lyz",
            ],
            "possible_mixed_cell_types": ["None"],
            "possible_tissues": ["blood", 7, "Blood"],
        }
    )
    assert annotation == Annotation(
        main_cell_type="Monocyte",
        key_markers=("CD14", "LYZ", "S100A8"),
        possible_mixed_cell_types=(),
        possible_tissues=("blood", "7"),
    )


def test_nested_lists_are_flattened():
    annotation = parse_annotation(
        {"main_cell_type": "T cell", "key_markers": [["CD3D", "CD3E"], "IL7R", [["cd3d"]]]}
    )
    assert annotation.key_markers == ("CD3D", "CD3E", "IL7R")


def test_strings_are_split_on_commas_and_semicolons_but_main_is_kept_whole():
    annotation = parse_annotation(
        {
            "main_cell_type": "T cell, naive; CD4+",
            "sub_cell_types": "Naive CD4+ T cell; Central memory CD4+ T cell, Treg",
            "key_markers": "CD3D, CD3E;IL7R ,, n/a",
            "possible_mixed_cell_types": "none",
            "tissue": "lymph node",
        }
    )
    assert annotation == Annotation(
        main_cell_type="T cell, naive; CD4+",
        sub_cell_types=("Naive CD4+ T cell", "Central memory CD4+ T cell", "Treg"),
        possible_mixed_cell_types=(),
        key_markers=("CD3D", "CD3E", "IL7R"),
        possible_tissues=("lymph node",),
    )


def test_main_cell_type_list_takes_first_usable_item():
    assert parse_annotation({"main_cell_type": ["NK cell", "T cell"]}).main_cell_type == "NK cell"
    assert parse_annotation({"main_cell_type": ["", None, "NK cell"]}).main_cell_type == "NK cell"


def test_sub_cell_types_truncated_to_three():
    annotation = parse_annotation(
        {
            "main_cell_type": "Epithelial cell",
            "sub_cell_types": ["Proximal tubule", "Loop of Henle", "Collecting duct", "Podocyte"],
        }
    )
    assert annotation.sub_cell_types == ("Proximal tubule", "Loop of Henle", "Collecting duct")


def test_object_items_in_lists_give_their_names():
    annotation = parse_annotation(
        {
            "main_cell_type": {"name": "T cell", "confidence": 0.9},
            "sub_cell_types": [
                {"cell_type": "CD8+ effector memory T cell", "confidence": 0.7},
                {"name": "MAIT cell"},
                {"confidence": 0.1},
            ],
        }
    )
    assert annotation == Annotation(
        "T cell", sub_cell_types=("CD8+ effector memory T cell", "MAIT cell")
    )


def test_unknown_is_a_legitimate_answer():
    annotation = parse_annotation({"main_cell_type": "Unknown", "key_markers": []})
    assert annotation == Annotation("Unknown")


@pytest.mark.parametrize(
    "obj",
    [
        None,
        {},
        ["main_cell_type", "T cell"],
        {"key_markers": ["CD3D"]},
        {"main_cell_type": ""},
        {"main_cell_type": "   "},
        {"main_cell_type": None},
        {"main_cell_type": []},
        {"main_cell_type": "null"},
        {"main_cell_type": "N/A"},
        {"main_cell_type": True},
        {"annotation": {"result": {"main_cell_type": "T cell"}}},  # two levels down
    ],
)
def test_no_usable_main_cell_type_gives_none(obj):
    assert parse_annotation(obj) is None


@pytest.mark.parametrize(
    "wrapper", ["annotation", "result", "final_annotation", "Final Annotation", "cluster_7"]
)
def test_annotation_nested_under_a_single_key(wrapper):
    assert parse_annotation({wrapper: B_CELL}) == Annotation(
        main_cell_type="B cell",
        sub_cell_types=("Naive B cell", "Memory B cell"),
        key_markers=("MS4A1", "CD79A", "CD79B", "BANK1"),
    )


def test_annotation_nested_under_a_wrapper_key_with_siblings():
    obj = {"confidence": "high", "result": {"celltype": "Plasma cell", "markers": "JCHAIN, MZB1"}}
    assert parse_annotation(obj) == Annotation("Plasma cell", key_markers=("JCHAIN", "MZB1"))


def test_nested_reply_end_to_end():
    reply = (
        f"{B_CELL_REASONING}\n```json\n"
        + json.dumps({"final_annotation": B_CELL}, indent=2)
        + "\n```"
    )
    assert parse_annotation(extract_json_object(reply)).main_cell_type == "B cell"


# --------------------------------------------------------------------------- parse_verdict

VALIDATOR_REASONING = """\
The annotation calls this cluster T cells on the basis of CD3D, CD3E and IL7R.
All three are present in the marker list and are canonical T-cell genes. The subtype
ranking (naive CD4+ first) is consistent with CCR7, SELL and LEF1 being high.
"""


@pytest.mark.parametrize("key", ["verdict", "decision", "result", "status", "validation"])
@pytest.mark.parametrize(
    ("value", "passed"),
    [
        ("pass", True),
        ("PASSED", True),
        ("Approve", True),
        ("approved", True),
        ("accept", True),
        ("Accepted", True),
        ("valid", True),
        (True, True),
        ("fail", False),
        ("FAILED", False),
        ("reject", False),
        ("Rejected", False),
        ("invalid", False),
        ("Revise", False),
        (False, False),
    ],
)
def test_json_verdict_words(key, value, passed):
    reply = VALIDATOR_REASONING + json.dumps({key: value, "feedback": "checked"})
    assert parse_verdict(reply) == Verdict(passed, "checked")


@pytest.mark.parametrize("key", ["passed", "pass", "valid", "Passed"])
def test_json_boolean_keys(key):
    reply = VALIDATOR_REASONING + json.dumps({key: False, "comments": "KRT18 is epithelial"})
    assert parse_verdict(reply) == Verdict(False, "KRT18 is epithelial")
    reply = VALIDATOR_REASONING + json.dumps({key: True, "comments": "fine"})
    assert parse_verdict(reply) == Verdict(True, "fine")


@pytest.mark.parametrize(
    "key", ["feedback", "comments", "reason", "reasons", "explanation", "issues"]
)
def test_json_feedback_keys(key):
    reply = json.dumps({"verdict": "fail", key: "  CD8A is cited but not in the list  "})
    assert parse_verdict(reply) == Verdict(False, "CD8A is cited but not in the list")


def test_json_feedback_list_is_joined():
    reply = (
        "Several problems.\n```json\n"
        + json.dumps(
            {
                "decision": "REJECT",
                "issues": [
                    "CD8A is not in the marker list",
                    "",
                    "  ZNF683 suggests tissue-resident",
                ],
            }
        )
        + "\n```"
    )
    assert parse_verdict(reply) == Verdict(
        False, "CD8A is not in the marker list; ZNF683 suggests tissue-resident"
    )


def test_json_feedback_object_is_kept_as_json():
    reply = '{"verdict": "revise", "issues": {"CD8A": "not in the list"}}'
    assert parse_verdict(reply) == Verdict(False, '{"CD8A": "not in the list"}')


def test_json_verdict_words_with_filler():
    reply = '{"result": "Validation: passed", "feedback": "ok"}'
    assert parse_verdict(reply) == Verdict(True, "ok")
    reply = '{"status": "Final verdict - FAIL, wrong lineage", "feedback": "no"}'
    assert parse_verdict(reply) == Verdict(False, "no")
    reply = '{"status": "Passes all checks", "feedback": "ok"}'
    assert parse_verdict(reply) == Verdict(True, "ok")
    reply = '{"status": "not valid", "feedback": "unclear"}'
    assert parse_verdict(reply) == Verdict(None, reply)


def test_json_verdict_without_feedback_keeps_the_whole_reply():
    reply = VALIDATOR_REASONING + '```json\n{"verdict": "pass"}\n```\n'
    assert parse_verdict(reply) == Verdict(True, reply.strip())


def test_json_verdict_one_level_down():
    reply = json.dumps({"validation": {"result": "fail", "reason": "no B-cell genes cited"}})
    assert parse_verdict(reply) == Verdict(False, "no B-cell genes cited")


def test_json_wins_over_keywords():
    reply = 'VALIDATION PASSED was my first thought, but {"verdict": "fail", "reason": "x"}'
    assert parse_verdict(reply) == Verdict(False, "x")


def test_json_without_a_verdict_falls_back_to_keywords():
    reply = VALIDATOR_REASONING + '{"checked_markers": ["CD3D", "CD3E"]}\nVALIDATION PASSED\n'
    assert parse_verdict(reply) == Verdict(True, reply.strip())


def test_unreadable_json_verdict_value_without_keywords_is_none():
    reply = 'Hmm. {"verdict": "maybe"}'
    assert parse_verdict(reply) == Verdict(None, reply)


@pytest.mark.parametrize(
    ("ending", "passed"),
    [
        ("VALIDATION PASSED", True),
        ("VALIDATION FAILED", False),
        ("Validation passed.", True),
        ("**VALIDATION FAILED**", False),
        ("Verdict: PASS", True),
        ("Verdict: FAIL", False),
        ("verdict: pass", True),
        ("**Verdict:** FAIL", False),
        ("## Final verdict - PASSED", True),
        ("Verdict: failed", False),
    ],
)
def test_keyword_verdicts(ending, passed):
    reply = f"\n{VALIDATOR_REASONING}\n{ending}\n\n"
    assert parse_verdict(reply) == Verdict(passed, reply.strip())


@pytest.mark.parametrize(
    ("text", "passed"),
    [
        ("VALIDATION FAILED: CD8A is not listed.\nOn reflection it is.\nVALIDATION PASSED", True),
        ("VALIDATION PASSED at first sight.\nBut KRT18 is epithelial.\nVALIDATION FAILED", False),
        ("Verdict: PASS\nWait, CD3E is missing from the list.\nVALIDATION FAILED", False),
        ("VALIDATION FAILED\nI misread the list.\nVerdict: PASS", True),
    ],
)
def test_last_keyword_wins(text, passed):
    assert parse_verdict(text) == Verdict(passed, text)


def test_keyword_feedback_is_cut_to_2000_characters():
    reply = VALIDATOR_REASONING * 20 + "VALIDATION FAILED\n"
    assert len(reply) > 2000
    verdict = parse_verdict(reply)
    assert verdict == Verdict(False, reply.strip()[:2000])
    assert len(verdict.feedback) == 2000


def test_crlf_keyword_verdict_feedback_has_plain_newlines():
    reply = "Verdict: FAIL\r\nKRT18 is an epithelial gene.\r\n"
    assert parse_verdict(reply) == Verdict(False, "Verdict: FAIL\nKRT18 is an epithelial gene.")


@pytest.mark.parametrize(
    "text",
    [
        "  I need to see the full marker list before deciding.  ",
        "Verdict: the annotation looks reasonable",
        "The validation step is next.",
    ],
)
def test_no_verdict_is_none_with_the_text(text):
    assert parse_verdict(text) == Verdict(None, text.strip())


@pytest.mark.parametrize("text", [None, "", " \n "])
def test_empty_verdict_reply(text):
    assert parse_verdict(text) == Verdict(None, "")


# --------------------------------------------------------------------------- unsupported_markers


def test_unsupported_markers_case_whitespace_order_duplicates():
    cited = ["CD3D", " cd3e ", "KRT18", "GAPDH", "krt18 ", "IL7R", "", "Gapdh"]
    given = ["CD3D", "CD3E", "IL7R", "CCR7"]
    assert unsupported_markers(cited, given) == ["KRT18", "GAPDH"]


def test_unsupported_markers_all_supported_or_none_cited():
    assert unsupported_markers(["ms4a1", "CD79A"], ["MS4A1", " CD79A "]) == []
    assert unsupported_markers([], ["MS4A1"]) == []
    assert unsupported_markers(["MS4A1"], []) == ["MS4A1"]


def test_unsupported_markers_accepts_comma_separated_strings():
    assert unsupported_markers("NKG7, GNLY; CD3D", "GNLY, NKG7, PRF1") == ["CD3D"]


def test_unsupported_markers_on_a_real_marker_list():
    with MARKER100.open(encoding="utf-8-sig", newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["True Cell Type"] == "CD8 T cell")
    reply = (
        "PDCD1, CXCR6 and ZNF683 suggest tissue-resident CD8+ T cells; CD8A and CD3E are "
        "classic T-cell genes.\n"
        '{"main_cell_type": "T cell", "sub_cell_types": ["Tissue-resident memory CD8+ T cell"],'
        ' "key_markers": ["PDCD1", "CXCR6", "ZNF683", "CD8A", "IL7R", "CD3E"]}'
    )
    annotation = parse_annotation(extract_json_object(reply))
    assert unsupported_markers(annotation.key_markers, row["Marker List"]) == ["CD8A", "CD3E"]


# ------------------------------------------------------------------- scores and gene requests


@pytest.mark.parametrize(
    ("text", "score", "reasoning"),
    [
        ('{"score": 85, "reasoning": "Sound."}', 85.0, "Sound."),
        ('```json\n{"Score": "72/100", "Explanation": "Weak."}\n```', 72.0, "Weak."),
        ('{"result": {"rating": "90%", "rationale": "Fine."}}', 90.0, "Fine."),
        ("The call holds.\nScore: 77", 77.0, "The call holds.\nScore: 77"),
        ("Good. <score>64</score>", 64.0, "Good. <score>64</score>"),
        ("**Score:** 88", 88.0, "**Score:** 88"),
    ],
)
def test_scores_are_read_in_every_usual_shape(text, score, reasoning):
    parsed = parse_score(text)
    assert (parsed.score, parsed.reasoning) == (score, reasoning)


@pytest.mark.parametrize(
    "text", ["", None, "No grade today.", '{"score": 140}', '{"score": true}', "score: -3"]
)
def test_no_score_is_made_up(text):
    assert parse_score(text) is None


def test_gene_requests_are_read_once_each_in_order():
    reply = 'Checking.\n```json\n{"hypotheses": ["B"], "genes": "MS4A1; CD79A, ms4a1, none"}\n```'
    assert parse_gene_request(extract_json_object(reply)) == ("MS4A1", "CD79A")
    assert parse_gene_request({"main_cell_type": "B cell"}) == ()
    assert parse_gene_request(None) == ()
