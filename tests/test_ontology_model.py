"""Help from the model with the Cell Ontology, through the local server (opt-in).

The offline rules stay the default; with ``ontology="model"`` the run's model chooses among
candidate terms for the labels the rules cannot map, and an ID it was not offered is
rejected. ``tl.evaluate(judge_model=...)`` grades with a model the pairs the ontology
cannot relate.
"""

from __future__ import annotations

import json
import re

import pytest
from llm_server import RecordedRequest, Reply
from scripted_model import ScriptedModel, signature

import cassia_sc
from cassia_sc.agents import judge_pairs

pytest.importorskip("cellxgene_ontology_guide")

CHOOSER = "You map cell-type labels"
EXAMPLE = cassia_sc.loadmarker("pbmc68k_processed")


def offered(request: RecordedRequest) -> list[str]:
    return re.findall(r"^- (CL:\d{7}):", request.messages[1]["content"], re.MULTILINE)


def chooser_answering(choice):
    """A scripted model whose cluster 0 is "Goblet-like cells"; ``choice(request)`` answers
    the ontology chooser."""
    markers = cassia_sc.top_markers(EXAMPLE)
    model = ScriptedModel({signature(markers["0"]): "Goblet-like cells"})

    def handler(request: RecordedRequest, index: int) -> Reply:
        if request.messages[0]["content"].startswith(CHOOSER):
            return Reply(content=json.dumps(choice(request)))
        return model(request, index)

    return handler


def run(llm, **options):
    return cassia_sc.workflow.run_annotation(
        EXAMPLE, tissue="lung", species="human", **llm.options(**options)
    )[0]


def test_the_model_chooses_among_the_candidates(scripted_llm):
    def goblet_or_none(request):
        label = re.search(r"^Label: (.+)$", request.messages[1]["content"], re.MULTILINE)[1]
        if label == "Goblet-like cells":
            return {"term_id": "CL:0000160", "broader": False, "reason": "a goblet cell"}
        return {"term_id": "none", "reason": "no candidate fits"}

    llm = scripted_llm(handler=chooser_answering(goblet_or_none))
    offline = run(llm)
    assert offline["0"].ontology_term_id == "unknown"  # the rules alone cannot map it
    asked_before = llm.server.request_count

    helped = run(llm, ontology="model")
    chooser = [
        r
        for r in llm.server.requests[asked_before:]
        if r.messages[0]["content"].startswith(CHOOSER)
    ]
    unmapped = [c for c in offline.clusters if c.main_cell_type and c.ontology_term_id == "unknown"]
    assert len(chooser) == len(unmapped)  # only the labels the rules left unmapped
    first = next(r for r in chooser if "Goblet-like cells" in r.messages[1]["content"])
    assert "CL:0000160" in offered(first) and "Tissue: lung" in first.messages[1]["content"]
    assert helped["0"].ontology_term_id == "CL:0000160"
    assert (
        helped["0"].ontology_label == "goblet cell"
        and helped["0"].extra["ontology_method"] == "model"
    )
    others = [
        c
        for c in helped.clusters
        if c.cluster != "0" and c.cluster in {u.cluster for u in unmapped}
    ]
    assert all(c.ontology_term_id == "unknown" for c in others)


def test_an_id_outside_the_candidates_is_rejected(scripted_llm):
    llm = scripted_llm(
        handler=chooser_answering(lambda r: {"term_id": "CL:0000236", "reason": "B"})
    )
    helped = run(llm, ontology="model")
    assert helped["0"].ontology_term_id == "unknown"  # CL:0000236 was not offered
    assert helped["0"].extra["ontology_method"] == "unmapped"


def test_the_model_judge_grades_pairs_and_says_when_it_cannot(scripted_llm):
    def judge(request, index):
        text = request.messages[1]["content"]
        if "Predicted cell type: Plasma cells" in text:
            return Reply(content='{"score": 80, "reasoning": "B lineage."}')
        return Reply(content="I cannot tell.")

    llm = scripted_llm(handler=judge)
    client = llm.client()
    grades = judge_pairs(
        [("Plasma cells", "B cell"), ("Blob", "T cell"), ("", "NK cell")],
        client,
        tissue="kidney",
        species="human",
    )
    assert [g.score for g in grades] == [80, None, 0.0]
    assert grades[1].reasoning.startswith("Not judged")
    assert llm.server.request_count == 2  # no call for a missing answer
    again = judge_pairs([("Plasma cells", "B cell")], client, tissue="kidney", species="human")
    assert again[0].score == 80 and llm.server.request_count == 2  # cached


def test_tl_evaluate_asks_a_judge_only_for_pairs_the_ontology_cannot_relate(
    pbmc_wilcoxon, scripted_llm
):
    markers = cassia_sc.top_markers(pbmc_wilcoxon, key="wilcoxon")
    model = ScriptedModel({signature(markers["0"]): "T cell"})  # the others: "Unknown"

    def handler(request, index):
        if request.messages[0]["content"].startswith("You grade how well a predicted"):
            return Reply(content='{"score": 5, "reasoning": "No cell type named."}')
        return model(request, index)

    llm = scripted_llm(handler=handler)
    cassia_sc.tl.annotate(
        pbmc_wilcoxon, tissue="blood", species="human", key="wilcoxon", **llm.options()
    )
    cassia_sc.tl.evaluate(pbmc_wilcoxon, "bulk_labels", judge_model="judge-model", **llm.options())
    table = pbmc_wilcoxon.uns["cassia"]["evaluation"]["table"].set_index("cluster")
    judged = [r for r in llm.server.requests if r.model == "judge-model"]
    unrelated = table[~table["related"].astype(bool)]
    pairs = set(zip(unrelated["predicted"], unrelated["truth"], strict=True))
    assert len(judged) == len(pairs) > 0  # one call per distinct pair: the rest is cached
    assert (
        bool(table.loc["0", "related"])
        and table.loc["0", "judge_score"] != table.loc["0", "judge_score"]
    )
    assert (unrelated["judge_score"] == 5).all()
    assert (unrelated["judge_reasoning"] == "No cell type named.").all()


def test_a_boost_of_other_clusters_keeps_the_term_the_model_chose(scripted_llm):
    markers = cassia_sc.top_markers(EXAMPLE)
    doubtful = signature(markers["1"])

    def choose(request):
        label = re.search(r"^Label: (.+)$", request.messages[1]["content"], re.MULTILINE)[1]
        if label == "Goblet-like cells":
            return {"term_id": "CL:0000160", "reason": "a goblet cell"}
        return {"term_id": "none", "reason": "no candidate fits"}

    answer = chooser_answering(choose)

    def handler(request, index):
        if request.messages[0]["content"].startswith("You grade"):
            low = (
                signature(
                    re.findall(r"\((\d+)\):\n(.+)", request.messages[1]["content"])[0][1].split(
                        ", "
                    )
                )
                == doubtful
            )
            return Reply(content=json.dumps({"score": 40 if low else 90, "reasoning": "."}))
        return answer(request, index)

    llm = scripted_llm(handler=handler)
    result = run(llm, ontology="model", score=True, boost_below=75)
    assert result["1"].extra["boosted"]  # a boost ran, and mapped its cluster anew
    assert result["0"].ontology_term_id == "CL:0000160"
    assert result["0"].extra["ontology_method"] == "model"
