"""Many inputs, one run: one pool, one cache, one budget, and a marker list asked once.

Two samples of pbmc68k_reduced stand for two files: the second has every cluster's ranked
genes reversed but those of the B cells, whose marker list is the same in both. Each
request the local server receives is counted; the second sample's B cells must not be
asked again, through the cache (one worker) or while the first is on its way (workers
for every cluster, no cache). The harmoniser is scripted in a handler around the
ScriptedModel, as the grouper is in test_levels.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import anndata as ad
import pandas as pd
import pytest
from conftest import cli, digest
from llm_server import RecordedRequest, Reply
from scripted_model import ScriptedModel, agent_of, markers_of, signature

import cassia_sc
from cassia_sc.agents.harmoniser import ATTEMPTS, HARMONISED
from cassia_sc.cli import main
from cassia_sc.errors import MarkerError

SHARED = "CD19+ B"  # the cluster whose marker list both samples share
HARMONISER = "You reconcile the cell-type labels"
LABEL_LINE = re.compile(r'^- ("(?:[^"\\]|\\.)*"): ', re.MULTILINE)


def other_sample(adata: ad.AnnData) -> ad.AnnData:
    """A second sample: every cluster's ranked genes reversed, but the shared cluster's."""
    other = adata.copy()
    names = other.uns["rank_genes_groups"]["names"].copy()
    for group in names.dtype.names:
        if group != SHARED:
            names[group] = names[group][::-1].copy()
    other.uns["rank_genes_groups"]["names"] = names
    return other


def is_harmoniser(request: RecordedRequest) -> bool:
    return request.messages[0]["content"].startswith(HARMONISER)


def labels_asked(request: RecordedRequest) -> list[str]:
    """The labels a harmoniser request lists, in order."""
    return [json.loads(found) for found in LABEL_LINE.findall(request.messages[1]["content"])]


def singular_names(request: RecordedRequest) -> Reply:
    """The scripted harmoniser: "B cells" and "B cell" are both "B cell"."""
    return Reply(
        content=json.dumps({label: label.removesuffix("s") for label in labels_asked(request)})
    )


def harmonising(model: ScriptedModel, harmoniser=singular_names):
    """A handler answering the harmoniser with ``harmoniser``, every other agent as ``model``."""

    def handler(request: RecordedRequest, index: int) -> Reply:
        return harmoniser(request) if is_harmoniser(request) else model(request, index)

    return handler


@pytest.fixture
def samples(pbmc):
    """Sample a (pbmc68k_reduced as shipped) and b (the other sample), their answers."""
    a, b = pbmc, other_sample(pbmc)
    markers_a, markers_b = cassia_sc.top_markers(a), cassia_sc.top_markers(b)
    assert markers_a[SHARED] == markers_b[SHARED]
    assert all(markers_a[c] != markers_b[c] for c in markers_a if c != SHARED)
    # a says "... cells", b says "... cell": one type, two spellings.
    answers = {signature(genes): f"{c} cell" for c, genes in markers_b.items()}
    answers |= {signature(genes): f"{c} cells" for c, genes in markers_a.items()}
    distinct = {tuple(g) for g in markers_a.values()} | {tuple(g) for g in markers_b.values()}
    assert len(distinct) == len({signature(list(g)) for g in distinct}) == 19
    return a, b, answers


BASE = {"tissue": "blood", "species": "human"}


# ------------------------------------------------------------------ one pool, asked once


@pytest.mark.parametrize(
    ("cache", "max_workers"),
    [(True, 1), (False, 20)],
    ids=["from-the-cache-one-worker", "in-flight-every-cluster-at-once-no-cache"],
)
def test_a_marker_list_found_in_both_anndatas_is_asked_once(
    samples, scripted_llm, cache, max_workers
):
    a, b, answers = samples
    llm = scripted_llm(answers, delay=0.0 if cache else 0.5)
    results = cassia_sc.annotate_many(
        [a, b], **BASE, **llm.options(cache=cache, max_workers=max_workers)
    )

    # 19 distinct marker lists, an annotator's and a validator's call each: the shared
    # one is not asked for the second sample (it would be 40 requests).
    requests = llm.server.requests
    assert llm.server.request_count == 2 * 19
    assert len({json.dumps(r.messages) for r in requests}) == len(requests)
    asked = [signature(markers_of(r)) for r in requests if agent_of(r) == "annotator"]
    assert asked.count(signature(cassia_sc.top_markers(a)[SHARED])) == 1
    shared_a, shared_b = results[0][SHARED], results[1][SHARED]
    assert shared_b.status == "ok" and shared_b.main_cell_type == "CD19+ B cells"
    # Of the pair, each call sent once, the other served (which one leads is a race).
    assert shared_a.requests + shared_b.requests == 2
    assert shared_a.cached_calls + shared_b.cached_calls == 2
    if cache:  # one worker: the second sample's comes after, from the cache
        assert shared_b.requests == 0 and shared_b.cached_calls == shared_b.calls == 2
    # Labels stored in each AnnData, as tl.annotate stores them.
    for adata, suffix in ((a, "s"), (b, "")):
        labels = adata.obs["cassia_celltype"].astype(str)
        expected = adata.obs["bulk_labels"].astype(str) + " cell" + suffix
        expected[adata.obs["bulk_labels"] == SHARED] = "CD19+ B cells"
        assert (labels == expected).all()
        params = adata.uns["cassia"]["params"]
        assert params["inputs"] == 2 and params["groupby"] == "bulk_labels"
        assert "cassia_celltype_harmonised" not in adata.obs  # not asked for
    assert results[0].usage["requests"] + results[1].usage["requests"] == 2 * 19


def test_two_identical_anndatas_cost_what_one_costs(pbmc, llm):
    results = cassia_sc.annotate_many([pbmc, pbmc.copy()], **BASE, **llm.options())
    assert llm.server.request_count == 2 * 10  # one file alone: 20; two apart: 40
    # Each call was sent for one of the two, served to the other (which one is a race).
    assert sum(result.usage["requests"] for result in results) == 20
    assert sum(result.usage["cached_calls"] for result in results) == 20


def test_run_batches_keeps_each_inputs_clusters_and_refuses_a_bad_input_first(
    samples, scripted_llm
):
    a, b, answers = samples
    llm = scripted_llm(answers)
    broken = b.copy()
    del broken.uns["rank_genes_groups"]
    with pytest.raises(MarkerError, match="Input 2 of 2: "):
        cassia_sc.run_batches([a, broken], **BASE, **llm.options())
    assert llm.server.request_count == 0  # refused before the first call
    first, second = cassia_sc.run_batches([a, b], **BASE, **llm.options())
    assert [c.cluster for c in first.clusters] == list(cassia_sc.top_markers(a))
    assert second["Dendritic"].main_cell_type == "Dendritic cell"
    assert first["Dendritic"].main_cell_type == "Dendritic cells"


def test_a_bad_second_anndata_is_refused_before_any_request(samples, scripted_llm):
    a, b, answers = samples
    llm = scripted_llm(answers)
    del b.uns["rank_genes_groups"]
    with pytest.raises(MarkerError, match=r"^b: adata.uns\['rank_genes_groups'\] not found"):
        cassia_sc.annotate_many([a, b], names=["a", "b"], **BASE, **llm.options())
    assert llm.server.request_count == 0
    assert "cassia" not in a.uns
    with pytest.raises(cassia_sc.CassiaError, match="same AnnData is given twice"):
        cassia_sc.annotate_many([a, a], **BASE, **llm.options())
    with pytest.raises(cassia_sc.CassiaError, match="Repeated runs"):
        cassia_sc.annotate_many([a, other_sample(a)], n_runs=3, **BASE, **llm.options())
    assert llm.server.request_count == 0


# ------------------------------------------------------------------------ harmonisation


def test_harmonised_names_are_recorded_beside_the_labels(samples, scripted_llm, tmp_path):
    a, b, answers = samples
    llm = scripted_llm(handler=harmonising(ScriptedModel(answers)))
    results = cassia_sc.annotate_many(
        [a, b],
        names=["a", "b"],
        harmonise=True,
        output_name=tmp_path / "run",
        **BASE,
        **llm.options(),
    )

    (request,) = [r for r in llm.server.requests if is_harmoniser(r)]
    assert llm.server.request_count == 2 * 19 + 1
    # Every distinct label once (19 = 10 + 10 - the shared one), with its key markers.
    assert sorted(labels_asked(request)) == sorted(
        {c.main_cell_type for r in results for c in r.clusters}
    )
    assert len(labels_asked(request)) == 19
    shared_line = next(
        line for line in request.messages[1]["content"].splitlines() if "CD19+ B cells" in line
    )
    assert "2 clusters in 2 inputs; key markers: " in shared_line
    for adata in (a, b):
        clusters = adata.obs["bulk_labels"].astype(str)
        harmonised = adata.obs["cassia_celltype_harmonised"]
        assert isinstance(harmonised.dtype, pd.CategoricalDtype)
        assert (harmonised.astype(str) == clusters + " cell").all()  # one name in both
        table = adata.uns["cassia"]["results"]
        assert (table["celltype_harmonised"] == table["cluster"] + " cell").all()
        params = adata.uns["cassia"]["params"]
        assert params["harmonised"] and params["harmonise_method"] == "model"
        assert params["harmonise_requests"] == 1
    # The annotator's own labels stay as they were.
    assert (a.obs["cassia_celltype"].astype(str).str.endswith(" cells")).all()
    assert results[1]["Dendritic"].main_cell_type == "Dendritic cell"
    assert results[0]["Dendritic"].get(HARMONISED) == "Dendritic cell"
    # CASSIA's files of each input, named after it, carry the shared name too.
    summary = pd.read_csv(tmp_path / "run_b_summary.csv")
    assert (summary["Harmonised Cell Type"] == summary["Cluster ID"] + " cell").all()
    assert (tmp_path / "run_a_summary.csv").is_file()


def test_a_faulty_reply_is_asked_again_once_then_the_labels_are_kept(samples, scripted_llm, caplog):
    a, b, answers = samples

    def without_dendritic(request: RecordedRequest) -> Reply:
        names = {label: "one name" for label in labels_asked(request)}
        names.pop("Dendritic cells")
        names["Dendritic cell"] = ""
        return Reply(content=json.dumps(names))

    llm = scripted_llm(handler=harmonising(ScriptedModel(answers), without_dendritic))
    cassia_sc.annotate_many([a, b], harmonise=True, **BASE, **llm.options())

    first, second = [r for r in llm.server.requests if is_harmoniser(r)]
    assert len([first, second]) == ATTEMPTS
    reason = 'lacked the label "Dendritic cells"; gave no name for the label "Dendritic cell"'
    assert reason in second.messages[3]["content"]
    assert second.messages[2]["role"] == "assistant"
    for adata in (a, b):
        # No partial mapping: every cell keeps its own label as its harmonised name.
        kept = adata.obs["cassia_celltype_harmonised"].astype(str)
        assert (kept == adata.obs["cassia_celltype"].astype(str)).all()
        params = adata.uns["cassia"]["params"]
        assert not params["harmonised"]
        assert params["harmonise_note"].startswith("labels kept: no complete answer in 2")
    assert "Harmonisation: labels kept" in caplog.text


def test_offline_harmonisation_by_the_cell_ontology(pbmc, scripted_llm):
    a, b = pbmc, other_sample(pbmc)
    spelled_a = {SHARED: "B cells", "CD56+ NK": "NK cells", "Dendritic": "Activated T cells"}
    spelled_b = {"CD56+ NK": "natural killer cell", "Dendritic": "T lymphocyte"}
    answers = {}
    for adata, spelled in ((b, spelled_b), (a, spelled_a)):
        for cluster, genes in cassia_sc.top_markers(adata).items():
            answers[signature(genes)] = spelled.get(cluster, "Unknown")
    llm = scripted_llm(answers)
    cassia_sc.annotate_many([a, b], harmonise="ontology", **BASE, **llm.options())

    assert llm.server.request_count == 2 * 19  # no call to harmonise
    table_a = a.uns["cassia"]["results"].set_index("cluster")["celltype_harmonised"]
    table_b = b.uns["cassia"]["results"].set_index("cluster")["celltype_harmonised"]
    assert table_a[SHARED] == table_b[SHARED] == "B cell"
    assert table_a["CD56+ NK"] == table_b["CD56+ NK"] == "natural killer cell"
    assert table_b["Dendritic"] == "T cell"
    assert table_a["Dendritic"] == "Activated T cells"  # a state: kept as it is
    assert a.uns["cassia"]["params"]["harmonise_method"] == "ontology"


# ------------------------------------------------------------------------- provider batches


def test_the_clusters_of_both_anndatas_share_one_batch_per_round(samples, scripted_llm):
    a, b, answers = samples
    llm = scripted_llm(answers)
    options = llm.options(batch_api="openai", batch_poll_interval=0.02)
    results = cassia_sc.annotate_many([a, b], **BASE, **options)

    assert llm.server.request_count == 0  # nothing sent live
    batches = list(llm.server.batches.values())
    assert len(batches) == 2  # one round of annotators, one of validators
    assert [len(batch.custom_ids) for batch in batches] == [19, 19]
    assert [agent_of(item) for item in llm.server.batch_items].count("annotator") == 19
    assert all(c.status == "ok" for result in results for c in result.clusters)


# ------------------------------------------------------------------------- the command


@pytest.fixture
def files(samples, tmp_path) -> tuple[Path, Path, dict[str, str]]:
    a, b, answers = samples
    first, second = tmp_path / "donor_a.h5ad", tmp_path / "donor_b.h5ad"
    a.write_h5ad(first)
    b.write_h5ad(second)
    return first, second, answers


def test_the_command_annotates_two_files_in_one_run(files, scripted_llm, tmp_path, capsys):
    first, second, answers = files
    llm = scripted_llm(handler=harmonising(ScriptedModel(answers)))
    prefix = tmp_path / "out" / "run"
    args = cli(
        llm, "annotate", str(first), str(second), "--harmonise", "--output-name", str(prefix)
    )
    assert main(args) == 0

    out = capsys.readouterr().out
    assert llm.server.request_count == 2 * 19 + 1
    for path, suffix in ((first, "s"), (second, "")):
        written = ad.read_h5ad(path)
        dendritic = written.obs["bulk_labels"] == "Dendritic"
        assert (written.obs["cassia_celltype"][dendritic] == f"Dendritic cell{suffix}").all()
        assert (written.obs["cassia_celltype_harmonised"][dendritic] == "Dendritic cell").all()
        assert written.uns["cassia"]["params"]["inputs"] == 2
        assert f"to {path}." in out
        assert (tmp_path / "out" / f"run_{path.stem}_summary.csv").is_file()
    # Each file replaced whole: no temporary copy or lock left beside them.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert f"{first}:" in out and f"{second}:" in out
    assert "2 files, one run: 20 of 20 clusters annotated; 39 requests" in out
    assert "Harmonised names (model): 10 of 19 labels renamed" in out


@pytest.mark.parametrize("second", ["missing", "no_rgg"])
def test_the_command_refuses_a_bad_second_file_before_any_request(
    files, second, scripted_llm, tmp_path, capsys
):
    first, other, answers = files
    bad = tmp_path / "missing.h5ad"
    if second == "no_rgg":
        broken = ad.read_h5ad(other)
        del broken.uns["rank_genes_groups"]
        bad = tmp_path / "no_rgg.h5ad"
        broken.write_h5ad(bad)
    before = digest(first)
    llm = scripted_llm(answers)
    assert main(cli(llm, "annotate", str(first), str(bad), "--quiet")) == 2
    err = capsys.readouterr().err
    assert bad.name in err and "Traceback" not in err
    assert llm.server.request_count == 0 and digest(first) == before


def test_options_of_one_input_are_usage_errors_with_two(files, scripted_llm, capsys):
    first, second, answers = files
    llm = scripted_llm(answers)
    for option in (["--output", "x.h5ad"], ["--n-runs", "3"]):
        with pytest.raises(SystemExit) as refused:
            main(cli(llm, "annotate", str(first), str(second), *option))
        assert refused.value.code == 2
        assert f"{option[0]} takes one INPUT, not 2" in capsys.readouterr().err
    # The same file twice: found before any call too.
    assert main(cli(llm, "annotate", str(first), str(first), "--quiet")) == 2
    assert "are the same file" in capsys.readouterr().err
    assert llm.server.request_count == 0


def test_a_failed_cluster_of_the_second_file_gives_exit_status_3(files, scripted_llm, capsys):
    first, second, answers = files
    poisoned = signature(cassia_sc.top_markers(ad.read_h5ad(second))["Dendritic"])

    def annotator(request, genes):
        return Reply(status=400, error_message="refused") if signature(genes) == poisoned else None

    llm = scripted_llm(answers, annotator=annotator)
    assert main(cli(llm, "annotate", str(first), str(second), "--quiet")) == 3
    table = ad.read_h5ad(second).uns["cassia"]["results"].set_index("cluster")
    assert table.loc["Dendritic", "status"] == "failed"
    assert (ad.read_h5ad(first).uns["cassia"]["results"]["status"] == "ok").all()


def test_a_dry_run_of_two_files_plans_each_and_calls_nothing(files, scripted_llm, capsys):
    first, second, answers = files
    llm = scripted_llm(answers)
    before = digest(second)
    assert main(cli(llm, "annotate", str(first), str(second), "--dry-run", "--harmonise")) == 0
    out = capsys.readouterr().out
    assert out.count("Dry run: 10 clusters") == 2
    assert "1 clusters repeat a marker list planned before: it is asked once" in out
    assert "harmoniser  1 call" in out
    assert llm.server.request_count == 0 and digest(second) == before


def test_a_failed_harmonisation_call_keeps_the_labels(samples, scripted_llm):
    a, b, answers = samples

    def refused(request: RecordedRequest) -> Reply:
        return Reply(status=400, error_message="this model cannot do that")

    llm = scripted_llm(handler=harmonising(ScriptedModel(answers), refused))
    cassia_sc.annotate_many([a, b], harmonise=True, **BASE, **llm.options(max_retries=0))
    for adata in (a, b):
        kept = adata.obs["cassia_celltype_harmonised"].astype(str)
        assert (kept == adata.obs["cassia_celltype"].astype(str)).all()
        note = adata.uns["cassia"]["params"]["harmonise_note"]
        assert note.startswith("labels kept: the harmonisation call failed (")
        assert "this model cannot do that" in note
