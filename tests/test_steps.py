"""A new agent is one step: its fields reach every table and file with no further edit.

A toy scorer step is added to a pipeline of its own and run through the local server with
the real client: its score and the cells it counted in the data must appear in the
``uns`` table, the summary CSV, the report, ``pl.review``, the conversations, and come
back from ``uns``. The annotator and validator keep their exact requests.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from dataclasses import replace

import pandas as pd
import pytest
import scanpy as sc
from llm_server import LLMServer, RecordedRequest, Reply
from scripted_model import ScriptedModel, signature

import cassia_sc
from cassia_sc.agents import (
    PIPELINES,
    Annotator,
    ClusterContext,
    ClusterTask,
    Pipeline,
    StepFailed,
    Validator,
    get_pipeline,
    register_pipeline,
)
from cassia_sc.evidence import DataHandle
from cassia_sc.fields import Field, Review
from cassia_sc.providers import resolve_endpoint

SCORER_PROMPT = "You grade a cell-type annotation from 0 to 100. Reply with the number only."


def _grade(row, params):
    return (2 if row["score"] < 50 else 0), str(int(row["score"]))


class Scorer:
    """A toy scoring agent: asks the model for a grade, and counts the cluster's cells."""

    name = "scorer"
    fields = (
        Field(
            "score", "int", "the grade", csv="Score", report="Score", review=Review("score", _grade)
        ),
        Field("n_cells", "int", "cells of the cluster in the data", csv="Cells"),
    )

    def plan(self, task: ClusterTask):
        return [{"role": "system", "content": SCORER_PROMPT}, {"role": "user", "content": "x"}]

    def __call__(self, context: ClusterContext) -> None:
        messages = [
            {"role": "system", "content": SCORER_PROMPT},
            {"role": "user", "content": context.annotation_text or ""},
        ]
        reply = context.ask(self.name, messages)
        number = re.search(r"\d+", reply.content)
        if number is None:
            raise StepFailed("the scorer gave no number", raw_reply=reply.content)
        context.result.set("score", int(number.group()))
        if context.data is not None:
            context.result.set("n_cells", int(context.data.cells_of(context.task.cluster).sum()))


@pytest.fixture
def scored():
    pipeline = Pipeline(
        "scored",
        rounds=(Annotator(), Validator()),
        max_rounds=2,
        after=(Scorer(),),
    )
    register_pipeline(pipeline)
    yield pipeline
    del PIPELINES["scored"]


def scripted_with_scores(adata, key, scores):
    """The scripted model, plus a scorer that grades each cluster by its main cell type."""
    markers = cassia_sc.top_markers(adata, key=key)
    model = ScriptedModel({signature(g): f"type {c}" for c, g in markers.items()})

    def handler(request: RecordedRequest, index: int) -> Reply:
        if request.messages[0]["content"] == SCORER_PROMPT:
            cluster = re.search(r'"main_cell_type": "type (\w+)"', request.messages[1]["content"])
            return Reply(content=f"Grade: {scores.get(cluster.group(1), 90)}")
        return model(request, index)

    return handler


def test_a_new_step_reaches_every_table_and_file(pbmc_wilcoxon, scored, tmp_path):
    scores = {"3": 40}
    with LLMServer(scripted_with_scores(pbmc_wilcoxon, "wilcoxon", scores)) as server:
        cassia_sc.tl.annotate(
            pbmc_wilcoxon,
            tissue="blood",
            species="human",
            model="test-model",
            provider=server.base_url,
            key="wilcoxon",
            validator_involvement="scored",
            cache_dir=tmp_path / "cache",
            output_name=tmp_path / "run",
            progress=False,
        )
        scorer_requests = [r for r in server.requests if r.messages[0]["content"] == SCORER_PROMPT]
    clusters = pbmc_wilcoxon.obs["louvain"].astype(str)
    assert len(scorer_requests) == clusters.nunique()  # one per cluster, after validation

    table = pbmc_wilcoxon.uns["cassia"]["results"]
    assert table.columns[-2:].tolist() == ["score", "n_cells"]
    by_cluster = table.set_index("cluster")
    assert by_cluster.loc["3", "score"] == 40 and by_cluster.loc["0", "score"] == 90
    assert by_cluster["n_cells"].to_dict() == clusters.value_counts().to_dict()

    summary = pd.read_csv(tmp_path / "run_summary.csv", dtype={"Cluster ID": str})
    assert summary.columns[-3:].tolist() == ["Score", "Cells", "Conversation History"]
    assert summary.set_index("Cluster ID").loc["3", "Score"] == 40

    html = (tmp_path / "run_report.html").read_text(encoding="utf-8")
    assert "<dt>Score</dt><dd>40</dd>" in html

    ax = cassia_sc.pl.review(pbmc_wilcoxon, show=False)
    titles = [t.get_text() for t in ax.get_xticklabels()]
    assert titles[-1] == "score"
    severities = ax.images[0].get_array()
    row = table["cluster"].tolist().index("3")
    assert severities[row, -1] == 2 and severities[0, -1] == 0

    back = cassia_sc.get.annotation(pbmc_wilcoxon)
    assert back["3"].score == 40 and back["3"].n_cells == by_cluster.loc["3", "n_cells"]
    conversations = json.loads(pbmc_wilcoxon.uns["cassia"]["conversations"])
    assert [t["content"] for t in conversations[0]["scorer"]][-1] == "Grade: 90"
    assert [t.agent for t in back["0"].conversation][-2:] == ["scorer", "scorer"]


def test_a_failing_step_fails_its_cluster_only(pbmc_wilcoxon, scored, scripted_llm):
    handler = scripted_with_scores(pbmc_wilcoxon, "wilcoxon", {})

    def no_grade_for_cluster_5(request, index):
        reply = handler(request, index)
        if request.messages[0]["content"] == SCORER_PROMPT and "type 5" in str(request.messages):
            return Reply(content="I would rather not say.")
        return reply

    llm = scripted_llm(handler=no_grade_for_cluster_5)
    result = cassia_sc.run_batch(
        pbmc_wilcoxon,
        tissue="blood",
        species="human",
        key="wilcoxon",
        **llm.options(validator_involvement="scored"),
    )
    assert result["5"].status == "failed" and result["5"].error == "the scorer gave no number"
    assert result["5"].raw_reply == "I would rather not say."
    assert [c.cluster for c in result.failed] == ["5"]
    assert result["4"].score == 90


def test_the_core_pipelines_and_a_bad_name():
    assert get_pipeline("v1").max_rounds == 2 and get_pipeline("v0").max_rounds == 3
    assert [step.name for step in get_pipeline("v0").steps] == ["annotator", "validator"]
    with pytest.raises(cassia_sc.CassiaError, match=r"one of \['v1', 'v0'"):
        cassia_sc.run_batch(
            cassia_sc.loadmarker("pbmc68k_processed"),
            tissue="blood",
            species="human",
            model="m",
            validator_involvement="v9",
            dry_run=True,
        )
    with pytest.raises(cassia_sc.CassiaError, match="exists"):
        register_pipeline(Pipeline("v1", rounds=(Annotator(),)))
    twice = Pipeline("twice", rounds=(Annotator(),), after=(Scorer(), Scorer()))
    with pytest.raises(cassia_sc.CassiaError, match="declares a field twice"):
        register_pipeline(twice)


def test_a_dry_run_counts_every_step(scored):
    markers = cassia_sc.loadmarker("pbmc68k_processed")
    plain = cassia_sc.plan(markers, tissue="blood", species="human", model="m", progress=False)
    with_scorer = cassia_sc.plan(
        markers,
        tissue="blood",
        species="human",
        model="m",
        validator_involvement="scored",
        progress=False,
    )
    extra = -(-(len(SCORER_PROMPT) + 1) // 4)
    for a, b in zip(plain.clusters, with_scorer.clusters, strict=True):
        assert b.estimated_prompt_tokens - a.estimated_prompt_tokens in (extra - 1, extra)
    assert "Score" in with_scorer.summary().columns and "Score" not in plain.summary().columns


# --------------------------------------------------------------------------- the data handle


def test_the_context_carries_the_data_as_rank_genes_groups_used_it(pbmc_wilcoxon):
    adata = pbmc_wilcoxon
    adata.layers["counts"] = adata.X.copy()
    sc.tl.rank_genes_groups(adata, "louvain", layer="counts", use_raw=False, key_added="layer")
    handle = DataHandle.from_markers(adata, key="layer")
    assert (handle.groupby, handle.layer, handle.use_raw) == ("louvain", "counts", False)
    assert handle.adata is adata  # shared, never copied
    raw = DataHandle.from_markers(adata, key="wilcoxon")  # computed on .raw by default
    assert raw.use_raw is True and raw.layer is None
    assert DataHandle.from_markers(adata[:0], key="wilcoxon") is None  # no cells: no handle


def test_a_marker_table_gives_no_data_handle(scripted_llm):
    seen = []

    class Peek:
        name = "peek"
        fields = ()

        def plan(self, task):
            return []

        def __call__(self, context):
            seen.append(context.data)

    llm = scripted_llm()
    register_pipeline(Pipeline("peek", rounds=(Peek(),)))
    try:
        cassia_sc.run_batch(
            cassia_sc.loadmarker("pbmc68k_processed"),
            tissue="blood",
            species="human",
            **llm.options(validator_involvement="peek"),
        )
    finally:
        del PIPELINES["peek"]
    assert llm.server.request_count == 0  # the step asked nothing
    assert len(seen) == 11 and set(seen) == {None}


# ----------------------------------------------------------------------- conventions and logs


def test_tl_annotate_logs_what_it_added(pbmc_wilcoxon, scripted_llm, caplog):
    markers = cassia_sc.top_markers(pbmc_wilcoxon, key="wilcoxon")
    llm = scripted_llm({signature(g): f"type {c}" for c, g in markers.items()})
    with caplog.at_level(logging.INFO, logger="cassia_sc"):
        cassia_sc.tl.annotate(
            pbmc_wilcoxon,
            tissue="blood",
            species="human",
            key="wilcoxon",
            **llm.options(key_added="llm"),
        )
    added = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("added"))
    assert "'llm_celltype', labels per cell (adata.obs)" in added
    assert "'llm_subtype'" in added and "'llm', the annotation's record (adata.uns)" in added


def test_each_provider_gets_reasoning_its_own_way():
    assert resolve_endpoint("openrouter").reasoning_fields("low") == {
        "reasoning": {"effort": "low"}
    }
    assert resolve_endpoint("openai").reasoning_fields("high") == {"reasoning_effort": "high"}
    assert resolve_endpoint("http://127.0.0.1:1/v1").reasoning_fields("low") == {
        "reasoning_effort": "low"
    }


def test_values_a_step_added_are_read_as_attributes_and_copied_with_the_result():
    first = cassia_sc.ClusterResult("0", ["CD3D"])
    first.set("score", 80)
    first.set("main_cell_type", "T cell")  # a core attribute stays an attribute
    second = replace(first, agreement=0.5)
    second.set("score", 20)
    assert (first.score, second.score, first.main_cell_type) == (80, 20, "T cell")
    assert first.extra == {"score": 80} and pickle.loads(pickle.dumps(second)).score == 20
    with pytest.raises(AttributeError, match="no attribute 'grade'"):
        first.grade  # noqa: B018
