"""The HTML report in a real headless Chromium: offline, searchable, and inert to hostile text."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import ScriptedLLMFactory
from llm_server import Reply
from scripted_model import annotation_reply, signature, verdict_reply

import cassia_sc
from cassia_sc.agents import Booster, Scorer
from cassia_sc.fields import CORE_FIELDS
from cassia_sc.results import BatchResult, ClusterResult, Turn

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
IMG_ATTACK = "<img src=x onerror=alert(1)>"
SCRIPT_ATTACK = '</script><script>window.__pwned = 1; alert("pwned")</script>'
EXAMPLE = cassia_sc.loadmarker("pbmc68k_processed")
SIGNATURES = {row.cluster: signature(row.markers.split(", ")) for row in EXAMPLE.itertuples()}


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CASSIA_SC_REQUIRE_BROWSER"):
            pytest.fail(f"Chromium not found at {CHROMIUM}; .ci/run installs it with apt-get.")
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


class Page:
    """A report opened in the browser, with everything it tried to do recorded."""

    def __init__(self, browser, path: Path):
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.url = path.resolve().as_uri()
        self.page.goto(self.url)
        self.page.wait_for_load_state("load")

    def count_after_typing(self, text: str) -> str:
        """Type into the search box and wait out its debounce (the page's CSP forbids
        Playwright's own wait_for_function, which evaluates strings)."""
        before = self.page.text_content("#count")
        self.page.fill("#search", text)
        for _ in range(50):
            self.page.wait_for_timeout(20)
            if self.page.text_content("#count") != before:
                break
        self.page.wait_for_timeout(150)
        return self.page.text_content("#count")

    def visible_clusters(self) -> list[str]:
        return self.page.eval_on_selector_all(
            ".card:not([hidden])", "cards => cards.map(c => c.dataset.cluster)"
        )

    def close(self):
        self.context.close()


@pytest.fixture(scope="module")
def report_path(tmp_path_factory) -> Path:
    """The example batch with a failed cluster, a rejected one and two hostile answers."""
    folder = tmp_path_factory.mktemp("report")

    def annotator(request, markers):
        if signature(markers) == SIGNATURES["6"]:
            return Reply(status=400, error_message="refused <b>here</b>")
        main = {SIGNATURES["2"]: IMG_ATTACK, SIGNATURES["3"]: "NK cell"}.get(
            signature(markers), "B cell"
        )
        subtypes = (SCRIPT_ATTACK,) if signature(markers) == SIGNATURES["2"] else ("naive B cell",)
        return Reply(
            content=annotation_reply(main, subtypes=subtypes, key_markers=(markers[0], "NOTINLIST"))
        )

    def validator(request, markers):
        if signature(markers) == SIGNATURES["7"]:
            return Reply(content=verdict_reply(False, f"Rejected {IMG_ATTACK}"))
        return None

    # Module-scoped, so it cannot use the scripted_llm fixture: the same factory, closed here.
    with ScriptedLLMFactory(tmp_path_factory) as scripted_llm:
        llm = scripted_llm(annotator=annotator, validator=validator)
        cassia_sc.runCASSIA_batch(
            EXAMPLE,
            str(folder / "run"),
            model="test-model",
            tissue="blood",
            species="human",
            client=llm.client(),
            progress=False,
        )
    return folder / "run_report.html"


@pytest.fixture
def page(browser, report_path):
    opened = Page(browser, report_path)
    yield opened
    opened.close()


def test_loads_offline_with_no_console_error(page, report_path, tmp_path):
    assert page.errors == []
    assert page.requests == [page.url]  # the page itself, nothing else
    assert page.page.text_content("#count") == "11 of 11 clusters"
    assert "10 ok, 1 failed" in page.page.text_content("#totals")
    page.page.screenshot(path=str(tmp_path / "report.png"), full_page=False)


def test_search_narrows_the_cards(page):
    assert page.count_after_typing("nk cell") == "1 of 11 clusters"
    assert page.visible_clusters() == ["3"]
    marker = SIGNATURES["5"].split(", ")[1]  # a marker of cluster 5, in another case
    page.count_after_typing(marker.lower())
    assert "5" in page.visible_clusters() and len(page.visible_clusters()) < 11
    assert page.count_after_typing("no such thing") == "0 of 11 clusters"
    assert page.visible_clusters() == [] and page.page.is_visible("#empty")


def test_filters_show_only_failed_or_rejected_clusters(page):
    page.page.select_option("#status", "failed")
    assert page.visible_clusters() == ["6"]
    assert "refused <b>here</b>" in page.page.text_content(".card[data-cluster='6'] .error")
    page.page.select_option("#status", "all")
    page.page.select_option("#validation", "failed")
    assert page.visible_clusters() == ["7"]


def test_sort_by_cell_type(page):
    page.page.select_option("#sort", "type")
    order = page.page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.type)")
    named = [t for t in order if t]
    assert named == sorted(named, key=str.lower) and order[-1] == ""  # no type last
    page.page.select_option("#sort", "order")
    assert page.page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.cluster)") == [
        str(i) for i in range(11)
    ]


def test_a_conversation_opens(page):
    details = page.page.locator(".card[data-cluster='0'] details.conversation")
    assert not details.evaluate("d => d.open")
    details.locator("summary").click()
    assert details.evaluate("d => d.open")
    text = details.inner_text().lower()  # the labels are upper case by CSS
    assert "annotator · assistant" in text and "validator · assistant" in text
    assert "[system prompt a" in text  # system prompts are shown once, under "Prompts"


def test_key_and_unsupported_markers_are_marked(page):
    card = page.page.locator(".card[data-cluster='0']")
    assert card.locator(".genes li.key").all_inner_texts() == [SIGNATURES["0"].split(", ")[0]]
    assert card.locator("li.unsupported").all_inner_texts() == ["NOTINLIST"]


def test_hostile_answers_stay_text(page):
    assert page.dialogs == []
    assert page.page.evaluate("window.__pwned") is None
    assert (
        page.page.evaluate(
            'document.querySelectorAll(\'img[src="x"], img:not([src^="data:"])\').length'
        )
        == 0
    )
    assert page.page.evaluate("document.scripts.length") == 1  # ours only
    card = page.page.locator(".card[data-cluster='2']")
    assert card.locator("h2").inner_text() == IMG_ATTACK
    assert SCRIPT_ATTACK in card.locator("ol").inner_text()
    assert IMG_ATTACK in page.page.locator(".card[data-cluster='7'] .feedback").inner_text()
    page.page.select_option("#sort", "type")  # moving the cards around runs nothing either
    assert page.count_after_typing("img") == "1 of 11 clusters"
    assert page.dialogs == [] and page.errors == []


def big_batch(n: int) -> BatchResult:
    markers = [f"GENE{i}" for i in range(50)]
    conversation = [
        Turn("annotator", "system", "You are an expert. " * 60),
        Turn("annotator", "user", "Species: human\nTissue: blood\n" + ", ".join(markers)),
        Turn(
            "annotator",
            "assistant",
            "Step 1. " * 150 + annotation_reply("T cell", key_markers=("GENE1",)),
        ),
        Turn("validator", "system", "You review annotations. " * 40),
        Turn("validator", "user", ", ".join(markers) + "\n" + "Step 1. " * 150),
        Turn("validator", "assistant", verdict_reply(True)),
    ]
    clusters = [
        ClusterResult(
            cluster=str(i),
            markers=markers,
            status="failed" if i % 50 == 0 else "ok",
            main_cell_type=None if i % 50 == 0 else f"type {i % 37}",
            sub_cell_types=["a", "b"],
            key_markers=["GENE1", "GENE2"],
            validation_passed=i % 7 != 0,
            iterations=1,
            error="boom" if i % 50 == 0 else None,
            conversation=conversation,
        )
        for i in range(n)
    ]
    return BatchResult(
        clusters=clusters, settings={"model": "m", "provider": "p", "species": "human"}
    )


def test_500_clusters_stay_small_and_filter(browser, tmp_path):
    path = cassia_sc.export.report(big_batch(500), tmp_path / "big.html")
    assert path.stat().st_size < 5_000_000
    page = Page(browser, path)
    try:
        assert page.page.text_content("#count") == "500 of 500 clusters"
        page.page.select_option("#status", "failed")
        assert page.page.text_content("#count") == "10 of 500 clusters"
        page.page.select_option("#status", "all")
        expected = sum(1 for i in range(500) if i % 50 and i % 37 == 12)
        assert page.count_after_typing("type 12") == f"{expected} of 500 clusters"
        assert all(
            page.page.eval_on_selector_all(
                ".card:not([hidden])", "cs => cs.map(c => c.dataset.type === 'type 12')"
            )
        )
        assert page.errors == []
    finally:
        page.close()


def test_an_annotated_anndata_gets_its_embedding(pbmc, scripted_llm, tmp_path, browser):
    markers = cassia_sc.top_markers(pbmc)
    llm = scripted_llm({signature(g): f"type {c}" for c, g in markers.items()})
    cassia_sc.tl.annotate(pbmc, tissue="blood", species="human", **llm.options())
    path = cassia_sc.export.report(pbmc, tmp_path / "pbmc.html")
    page = Page(browser, path)
    try:
        width = page.page.evaluate("document.querySelector('figure img').naturalWidth")
        assert width > 200 and page.errors == [] and page.requests == [page.url]
        assert page.page.text_content("#count") == "10 of 10 clusters"
        page.page.screenshot(path=str(tmp_path / "pbmc.png"), full_page=False)
    finally:
        page.close()


def test_flagged_clusters_and_ontology_terms_after_repeated_runs(browser, tmp_path):
    clusters = [
        ClusterResult(
            cluster=str(i),
            markers=["MS4A1", "CD79A"],
            status="ok",
            main_cell_type="B cell",
            ontology_term_id="CL:0000236",
            ontology_label="B cell",
            agreement=agreement,
            iterations=1,
            validation_passed=True,
        )
        for i, agreement in enumerate([1.0, 1 / 3, 2 / 3])
    ]
    result = BatchResult(clusters, settings={"model": "m", "species": "human", "runs": 3})
    page = Page(browser, cassia_sc.export.report(result, tmp_path / "runs.html"))
    try:
        assert page.errors == []
        page.page.select_option("#agreement", "flagged")
        assert page.visible_clusters() == ["1"]
        card = page.page.locator(".card[data-cluster='1']").inner_text()
        assert "B cell (CL:0000236)" in card and "33 %" in card and "flagged for review" in card
        assert "3 runs; flagged for review: 1" in page.page.text_content("header")
    finally:
        page.close()


def test_scores_filter_and_sort_and_boosted_cards_show_their_first_call(browser, tmp_path):
    clusters = []
    for i, score in enumerate([88.0, 42.0, None, 61.0]):
        cluster = ClusterResult(
            str(i), ["MS4A1"], "ok", main_cell_type="B cell", iterations=1, validation_passed=True
        )
        cluster.set("score", score)
        cluster.set("score_reasoning", "Not scored: no reply." if score is None else "Sound.")
        clusters.append(cluster)
    clusters[3].set("boosted", True)
    clusters[3].set("initial_cell_type", "T cell")
    fields = CORE_FIELDS + Scorer.fields + Booster.fields
    result = BatchResult(clusters, settings={"model": "m", "species": "human"}, fields=fields)
    page = Page(browser, cassia_sc.export.report(result, tmp_path / "scored.html"))
    try:
        assert page.errors == []
        page.page.select_option("#scored", "low")
        assert page.visible_clusters() == ["1", "3"]
        page.page.select_option("#scored", "none")
        assert page.visible_clusters() == ["2"]
        page.page.select_option("#scored", "all")
        page.page.select_option("#sort", "score")
        assert page.visible_clusters() == ["1", "3", "0", "2"]  # lowest first, unscored last
        card = page.page.locator(".card[data-cluster='3']").inner_text()
        assert "boosted" in card and "score 61" in card and "First call\nT cell" in card
    finally:
        page.close()
