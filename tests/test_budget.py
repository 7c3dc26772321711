"""A run's budget (max_cost, max_tokens_total): calls that would pass it are not sent, the
clusters left are not run with the reason, the same run with a larger budget goes on from
the cache; and what a run spent, in the result, uns, the command's summary and the report."""

from __future__ import annotations

import pytest
from scripted_model import signature

import cassia_sc
from cassia_sc.budget import Budget
from cassia_sc.cli import main
from cassia_sc.datasets import example_truth
from cassia_sc.errors import BudgetReached, CassiaError

EXAMPLE = cassia_sc.loadmarker("pbmc68k_processed")
N = len(EXAMPLE)
SIGNATURES = {row.cluster: signature(row.markers.split(", ")) for row in EXAMPLE.itertuples()}
TRUTH = dict(zip(example_truth()["cluster"], example_truth()["cell_type"], strict=True))
KNOWN = {SIGNATURES[c]: TRUTH[c] for c in SIGNATURES}
BASE = {"tissue": "blood", "species": "human", "progress": False}
PRICE = (2.0, 8.0)  # dollars per million prompt and completion tokens
PARTS = ("prompt", "completion")


def dollars_of(server) -> float:
    """What the requests the server answered cost, from the usage it reported."""
    usage = [r.usage for r in server.requests if r.usage]
    prompt, completion = (sum(u[f"{kind}_tokens"] for u in usage) for kind in PARTS)
    return (prompt * PRICE[0] + completion * PRICE[1]) / 1e6


def test_a_token_budget_stops_before_it_is_passed_and_a_larger_one_goes_on(scripted_llm):
    llm = scripted_llm(KNOWN)
    full = cassia_sc.run_batch(EXAMPLE, **(BASE | llm.options(cache_dir=llm.cache_dir / "a")))
    needed = full.usage["prompt_tokens"] + full.usage["completion_tokens"]
    llm.server.reset()

    limit = needed // 2
    options = BASE | llm.options(max_workers=1)  # one call at a time: a plain order
    half = cassia_sc.run_batch(EXAMPLE, max_tokens_total=limit, **options)
    spent = half.usage["prompt_tokens"] + half.usage["completion_tokens"]
    assert 0 < spent <= limit
    sent = llm.server.request_count
    assert 0 < sent < 2 * N
    statuses = [c.status for c in half.clusters]
    done = statuses.count("ok")
    assert statuses == ["ok"] * done + ["not_run"] * (N - done)  # in order, one at a time
    refused = half.clusters[done]
    assert "budget of" in refused.error and "not sent" in refused.error
    assert half.settings["max_tokens_total"] == limit

    # Again with room for the rest: the calls made are read from the cache.
    rest = cassia_sc.run_batch(EXAMPLE, max_tokens_total=2 * needed, **options)
    assert all(c.status == "ok" for c in rest.clusters)
    assert llm.server.request_count == 2 * N  # every call once, over the two runs
    assert rest.usage["cached_calls"] == sent


def test_a_dollar_budget_counts_each_models_price_and_is_reported(scripted_llm, tmp_path):
    llm = scripted_llm(KNOWN)
    table = {"test-model": PRICE}
    run = cassia_sc.run_batch(EXAMPLE, prices=table, **(BASE | llm.options()))
    expected = dollars_of(llm.server)
    assert run.settings["cost"] == pytest.approx(expected)

    llm2 = scripted_llm(KNOWN)
    capped = cassia_sc.run_batch(
        EXAMPLE, prices=table, max_cost=expected / 3, **(BASE | llm2.options(max_workers=1))
    )
    assert capped.settings["cost"] <= expected / 3
    assert capped.settings["max_cost"] == pytest.approx(expected / 3)
    assert any(c.status == "not_run" for c in capped.clusters)
    report = cassia_sc.export.render_report(capped)
    assert "<dt>Cost</dt>" in report and "budget" in report


def test_max_cost_without_a_price_is_refused_before_any_call(scripted_llm):
    llm = scripted_llm(KNOWN)
    with pytest.raises(CassiaError, match="max_cost needs the price of 'test-model'"):
        cassia_sc.run_batch(EXAMPLE, max_cost=1.0, **(BASE | llm.options()))
    assert llm.server.request_count == 0


def test_the_budget_spans_the_score_and_the_annotation(scripted_llm, pbmc_wilcoxon):
    llm = scripted_llm(KNOWN)
    table = {"test-model": PRICE}
    adata = pbmc_wilcoxon
    cassia_sc.tl.annotate(adata, key="wilcoxon", score=True, prices=table, **(BASE | llm.options()))
    params = adata.uns["cassia"]["params"]
    calls = llm.server.requests
    assert params["cost"] == pytest.approx(dollars_of(llm.server))  # the judge's calls too
    assert len(calls) == 3 * N  # annotator, validator and judge


def test_batch_rounds_refuse_what_the_budget_cannot_pay(scripted_llm):
    llm = scripted_llm(KNOWN)
    client_budget = Budget(max_tokens_total=5_000)
    client = llm.client(batch_api="openai", batch_poll_interval=0.02, budget=client_budget)
    result = cassia_sc.run_batch(EXAMPLE, **BASE, client=client)
    assert client_budget.spent_tokens <= 5_000
    assert any(c.status == "not_run" and "budget" in c.error for c in result.clusters)
    sent = sum(len(record.custom_ids) for record in llm.server.batches.values())
    assert sent < 2 * N


def test_the_command_line_takes_the_budget_and_prints_the_cost(scripted_llm, tmp_path, capsys):
    llm = scripted_llm(KNOWN)
    markers = tmp_path / "markers.csv"
    EXAMPLE.to_csv(markers, index=False)
    prices = tmp_path / "prices.csv"
    prices.write_text(f"model,prompt,completion\ntest-model,{PRICE[0]},{PRICE[1]}\n")
    args = ["batch", str(markers), "--output-name", str(tmp_path / "run"), "--prices", str(prices)]
    args += ["--tissue", "blood", "--species", "human", "--model", "test-model"]
    args += ["--provider", llm.base_url, "--cache-dir", str(llm.cache_dir), "--quiet"]
    assert main([*args, "--max-tokens-total", "3000"]) == 0
    summary = (tmp_path / "run_summary.csv").read_text()
    assert "not_run" in summary
    args.remove("--quiet")
    assert main([*args, "--max-cost", "5"]) == 0
    printed = capsys.readouterr().out
    assert f"{N} of {N} clusters annotated" in printed and "$0.0" in printed


def test_bad_limits_are_refused():
    with pytest.raises(CassiaError, match="max_cost must be a positive"):
        Budget(max_cost=0)
    with pytest.raises(CassiaError, match="max_tokens_total must be a positive whole number"):
        Budget(max_tokens_total=1.5)
    assert issubclass(BudgetReached, cassia_sc.errors.CallCancelled)
