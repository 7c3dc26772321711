"""A dry run's cost in dollars: prices from the user's table or the provider's model list
(served in OpenRouter's shape by the local server), step by step, with the command line."""

from __future__ import annotations

import json
import os
import time

import pytest
from llm_server import LLMServer

import cassia_sc
from cassia_sc.cache import cache_summary
from cassia_sc.cli import main
from cassia_sc.costs import CostEstimate, Price, StepCost, dollars_text
from cassia_sc.errors import CassiaError
from cassia_sc.pricing import PriceBook, read_prices

EXAMPLE = cassia_sc.loadmarker("pbmc68k_processed")
N = len(EXAMPLE)
# Dollars per token, as OpenRouter lists them: $0.15 and $0.60 per million.
LISTED = (0.00000015, 0.0000006)
BASE = {"tissue": "blood", "species": "human", "progress": False}


@pytest.fixture
def online(monkeypatch):
    """Price lists may be asked for (the root conftest forbids it elsewhere)."""
    monkeypatch.delenv("CASSIA_SC_OFFLINE", raising=False)


@pytest.fixture
def priced_server():
    with LLMServer(models=["test-model", "judge"], prices={"test-model": LISTED}) as server:
        yield server


def expected_dollars(estimate: CostEstimate, prompt: float, completion: float) -> float:
    return (estimate.prompt_tokens * prompt + estimate.completion_tokens * completion) / 1e6


def test_the_providers_list_prices_every_step_and_is_asked_once_a_day(
    online, priced_server, tmp_path
):
    options = BASE | {"model": "test-model", "provider": priced_server.base_url}
    preview = cassia_sc.plan(EXAMPLE, cache_dir=tmp_path, **options)

    estimate = preview.estimate
    assert [(s.step, s.calls) for s in estimate.steps] == [("annotator", N), ("validator", N)]
    assert estimate.dollars == pytest.approx(expected_dollars(estimate, 0.15, 0.60), rel=1e-6)
    # The prompt tokens are the prompts' own: the per-cluster figures add up to them
    # (each rounded up on its own).
    assert estimate.prompt_tokens == pytest.approx(
        sum(c.estimated_prompt_tokens for c in preview.clusters), abs=N
    )
    assert any("model list" in note for note in estimate.notes)
    assert priced_server.request_count == 0  # no model was called
    assert [r.path for r in priced_server.get_requests] == ["/v1/models"]

    again = cassia_sc.plan(EXAMPLE, cache_dir=tmp_path, **options)
    assert again.estimate.dollars == estimate.dollars
    assert len(priced_server.get_requests) == 1  # the kept list, not a second request
    assert cache_summary(tmp_path).entries == 0  # a price list is no cached reply


def test_score_and_boost_are_priced_with_their_own_model(online, priced_server, tmp_path):
    options = BASE | {"model": "test-model", "provider": priced_server.base_url}
    table = {"judge": (3.0, 15.0)}
    preview = cassia_sc.plan(
        EXAMPLE,
        cache_dir=tmp_path,
        score=True,
        score_model="judge",
        boost_below=75,
        boost_rounds=2,
        prices=table,
        **options,
    )
    steps = {s.step: s for s in preview.estimate.steps}
    assert list(steps) == ["annotator", "validator", "scorer", "booster"]
    scorer, booster = steps["scorer"], steps["booster"]
    assert scorer.model == "judge" and booster.model == "test-model"
    # A score per cluster, and again for the quarter boosted (two rounds each).
    assert scorer.calls == pytest.approx(N * 1.25)
    assert booster.calls == pytest.approx(N * 0.25 * 2)
    judge_cost = (scorer.prompt_tokens * 3.0 + scorer.completion_tokens * 15.0) / 1e6
    assert scorer.dollars == pytest.approx(judge_cost)
    assert booster.dollars == pytest.approx(
        (booster.prompt_tokens * 0.15 + booster.completion_tokens * 0.60) / 1e6
    )
    assert preview.estimate.dollars == pytest.approx(sum(s.dollars for s in steps.values()))
    assert any("prices of judge from prices=" in note for note in preview.estimate.notes)


def test_several_models_are_each_priced(online, priced_server, tmp_path):
    options = BASE | {"provider": priced_server.base_url, "temperature": 0.7}
    preview = cassia_sc.plan(
        EXAMPLE,
        models=["test-model", "judge"],
        n_runs=2,
        cache_dir=tmp_path,
        prices={"judge": (1.0, 1.0)},
        **options,
    )
    by_model = {(s.step, s.model): s for s in preview.estimate.steps}
    assert set(by_model) == {
        (step, model) for step in ("annotator", "validator") for model in ("test-model", "judge")
    }
    assert by_model["annotator", "judge"].calls == 2 * N
    assert preview.estimate.dollars is not None
    assert "(test-model)" in "\n".join(preview.estimate.lines())


def test_an_unreachable_provider_leaves_the_price_unknown_and_says_why(online, tmp_path):
    server = LLMServer()
    url = server.base_url
    server.close()
    preview = cassia_sc.plan(EXAMPLE, model="m", provider=url, cache_dir=tmp_path, **BASE)
    assert preview.estimate.dollars is None
    assert preview.estimate.prompt_tokens > 0
    assert any(
        "could not get" in note and "cannot connect" in note for note in preview.estimate.notes
    )
    assert "price unknown" in "\n".join(preview.estimate.lines())


def test_a_list_older_than_a_day_is_used_when_it_cannot_be_refreshed(
    online, priced_server, tmp_path
):
    options = BASE | {"model": "test-model", "cache_dir": tmp_path}
    first = cassia_sc.plan(EXAMPLE, provider=priced_server.base_url, **options)
    (kept,) = (tmp_path / "prices").glob("*.json")
    record = json.loads(kept.read_text())
    record["fetched"] = time.time() - 3 * 24 * 3600
    kept.write_text(json.dumps(record))

    priced_server.close()  # a later refresh fails
    later = cassia_sc.plan(EXAMPLE, provider=priced_server.base_url, **options)
    assert later.estimate.dollars == first.estimate.dollars
    assert any("could not refresh" in note for note in later.estimate.notes)


def test_offline_asks_nothing(priced_server, tmp_path):
    assert os.environ["CASSIA_SC_OFFLINE"] == "1"  # as the whole suite runs
    preview = cassia_sc.plan(
        EXAMPLE, model="test-model", provider=priced_server.base_url, cache_dir=tmp_path, **BASE
    )
    assert priced_server.get_requests == []
    assert preview.estimate.dollars is None
    assert any("CASSIA_SC_OFFLINE" in note for note in preview.estimate.notes)


def test_openai_needs_a_table_and_is_never_asked(online, tmp_path):
    book = PriceBook(cache_dir=tmp_path)
    assert book.price("gpt-4o-mini", "openai") is None
    assert book.notes == [
        "openai publishes no prices in its model list; give them with prices= (--prices FILE)"
    ]
    assert not (tmp_path / "prices").exists()


def test_price_tables_in_each_shape(tmp_path):
    csv = tmp_path / "prices.csv"
    csv.write_text("model,prompt,completion\nopenai/gpt-4o-mini,0.15,0.6\n")
    table = tmp_path / "prices.json"
    table.write_text(json.dumps({"m": {"prompt": 1, "completion": 2}}))
    assert read_prices(csv)["openai/gpt-4o-mini"] == Price(0.15, 0.6, "prices.csv")
    assert read_prices(table)["m"] == Price(1.0, 2.0, "prices.json")
    assert read_prices({"m": [1, 2]})["m"].completion == 2.0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("model,input,output\nm,1,2\n", "needs the columns model, prompt and completion"),
        ("", "cannot be read as CSV"),
        ("model,prompt,completion\nm,-1,2\n", "two numbers of at least 0"),
        ("model,prompt,completion\nm,free,2\n", "two numbers of at least 0"),
    ],
)
def test_a_bad_price_file_says_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "prices.csv"
    path.write_text(content)
    with pytest.raises(CassiaError, match=message):
        read_prices(path)
    with pytest.raises(CassiaError, match="not found"):
        read_prices(tmp_path / "missing.csv")


def test_estimate_lines_and_partial_totals():
    steps = (
        StepCost("annotator", "m", "p", 10, 10_000, 6_000, 0.5),
        StepCost("scorer", "j", "p", 2.5, 1_000, 500, None),
    )
    lines = CostEstimate(steps, ("a note",)).lines()
    assert lines[0] == "  annotator  10 calls (m): 10,000 prompt + ~6,000 completion tokens, $0.500"
    assert "~2.5 calls" in lines[1] and "price unknown" in lines[1]
    assert lines[2] == "  total: at least $0.500 (a price is unknown)"
    assert lines[3] == "  (a note)"
    assert [dollars_text(d) for d in (0, 0.0042, 0.42, 12.5)] == [
        "$0.00",
        "$0.0042",
        "$0.420",
        "$12.50",
    ]


def test_the_command_line_prints_each_step_and_the_total(online, priced_server, tmp_path, capsys):
    markers = tmp_path / "markers.csv"
    EXAMPLE.to_csv(markers, index=False)
    prices = tmp_path / "prices.csv"
    prices.write_text("model,prompt,completion\nother,1,1\n")
    args = ["batch", str(markers), "--output-name", str(tmp_path / "run"), "--dry-run"]
    args += ["--tissue", "blood", "--species", "human", "--model", "test-model"]
    args += ["--provider", priced_server.base_url, "--prices", str(prices)]
    assert main([*args, "--cache-dir", str(tmp_path / "cache")]) == 0
    printed = capsys.readouterr().out
    assert f"Dry run: {N} clusters" in printed
    assert f"annotator  {N} calls" in printed and f"validator  {N} calls" in printed
    assert "total: about $0.0" in printed
    assert "prices from" in printed and "model list" in printed
    assert not list(tmp_path.glob("run_*"))
