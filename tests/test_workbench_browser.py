"""The workbench in a real browser: Debian's headless Chromium (/usr/bin/chromium, `make chromium`) driven by
Playwright over a live uvicorn server, on the run tests/test_workbench.py builds. The page runs under its own
Content-Security-Policy as served (no bypass), so the XSS checks are the browser's, not a parser's.
Skipped, saying why, where Chromium or Playwright is absent."""
from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import quote

import pytest

from ltr.data.schemas import query_id
from tests.fixtures.serving_world import LiveServer
from tests.test_workbench import TOKEN, XSS, demo_run, make_app

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists() and not shutil.which("chromium"),
                       reason="no /usr/bin/chromium: run `make chromium` (Debian's package)"),
    pytest.mark.timeout(600),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright missing: pip install -e '.[dev]'")
    built = demo_run(tmp_path_factory)
    app, wb, q, pids = make_app(built)
    with LiveServer(app) as srv, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield {"url": srv.url, "browser": browser, "wb": wb, "query": q, "xss": pids, "app": app, **built}
        browser.close()


def open_page(site, query=None, right="challenger", token=TOKEN):
    """A fresh browser context on the page; a dialog (alert) fails the test that opened it."""
    ctx = site["browser"].new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    page.dialogs = []
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    url = f"{site['url']}/workbench?query={quote(query or site['query'])}&right={right}"
    page.goto(url + (f"#token={quote(token)}" if token else ""))
    page.wait_for_selector("body[data-ready=true]")
    return page


def order(page, side="champion"):
    return page.locator(f'ol.results[data-side="{side}"] > li.result').evaluate_all(
        "els => els.map(e => e.dataset.pid)")


def set_blend(page, w):
    page.locator("#wb-blend").fill(str(w))
    page.wait_for_selector(f'body[data-blend="{w:g}"]', state="attached")  # as JS's String(w) writes it


def test_searching_a_query_shows_both_lists(site):
    page = open_page(site, query="hiking boots")
    box = page.locator('input[name="query"]')
    box.fill(site["query"])
    box.press("Enter")
    page.wait_for_selector("body[data-ready=true]")
    assert order(page, "champion") and order(page, "challenger")
    assert sorted(order(page, "champion")) == sorted(order(page, "challenger"))
    assert page.locator(".side h2 .ndcg").count() == 2
    page.context.close()


def test_the_explain_panel_adds_up_to_the_score(site):
    page = open_page(site)
    rows = page.locator("ol.results > li.result").evaluate_all("""els => els.map(e => ({
        score: +e.dataset.score,
        parts: Array.from(e.querySelectorAll('.explain .bar-value')).map(v => +v.dataset.value)}))""")
    assert rows
    for r in rows:
        assert len(r["parts"]) >= 2 and abs(sum(r["parts"]) - r["score"]) < 1e-5  # bias + the bars drawn
    page.context.close()


def _model_order(site, w, side="champion"):
    """The order the slider should give: the model's attributions re-weighted (see the page's note)."""
    d = site["wb"].compare(site["query"], "challenger")
    rows = (d["left"] if side == "champion" else d["right_side"])["results"]

    def score(it):
        if w == 0.5:
            return it["score"]
        e, g = it["explain"], it["explain"]["groups"]
        return e["bias"] + 2 * (1 - w) * g["content"] + 2 * w * g["engagement"] + g["product"]

    return [it["product_id"] for it in sorted(rows, key=lambda it: (-it["phase"], -score(it), it["rank"]))]


def test_moving_the_slider_reorders_the_list_as_the_model_says(site):
    page = open_page(site)
    served = order(page)
    assert served == _model_order(site, 0.5)
    seen = set()
    for w in (0.0, 0.25, 1.0, 0.5):
        set_blend(page, w)
        assert order(page) == _model_order(site, w), w
        assert order(page, "challenger") == _model_order(site, w, "challenger"), w
        seen.add(tuple(order(page)))
    assert order(page) == served and len(seen) > 1  # back at 0.5: the model's own order
    page.wait_for_selector("#wb-pareto[data-drawn=true]")
    assert page.locator("#wb-pareto svg").count() >= 1
    page.context.close()


def test_a_correction_survives_a_reload_and_is_in_the_label_store(site):
    page = open_page(site)
    page.locator("#wb-who").fill("ana")
    li = page.locator('ol.results[data-side="champion"] > li.result').nth(2)
    pid = li.get_attribute("data-pid")
    li.focus()
    page.keyboard.press("1")  # one key
    page.wait_for_selector("body[data-saves='1']")
    assert li.locator(".human-grade").text_content() == "1"
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    li = page.locator(f'ol.results[data-side="champion"] > li.result[data-pid="{pid}"]')
    assert li.locator(".human-grade").text_content() == "1"
    assert "human" in li.locator(".human-source").text_content()
    last = site["wb"].store.history(query_id(site["query"]), pid).iloc[-1]
    assert last["grade"] == 1 and last["who"] == "workbench:ana" and last["replaces_source"] is not None
    page.context.close()


def test_two_browsers_correcting_at_once_both_land(site):
    a, b = open_page(site), open_page(site)
    store = site["wb"].store
    n = store.state()["rows"]
    pa, pb = order(a)[0], order(b)[1]
    # both clicks go out before either answer is awaited
    a.locator(f'ol.results[data-side="champion"] li[data-pid="{pa}"] button[data-grade="3"]').click(no_wait_after=True)
    b.locator(f'ol.results[data-side="champion"] li[data-pid="{pb}"] button[data-grade="0"]').click(no_wait_after=True)
    a.wait_for_selector("body[data-saves='1']")
    b.wait_for_selector("body[data-saves='1']")
    assert store.state()["rows"] == n + 2
    latest = store.latest().set_index(["query_id", "product_id"])
    qid = query_id(site["query"])
    assert int(latest.loc[(qid, pa), "grade"]) == 3 and int(latest.loc[(qid, pb), "grade"]) == 0
    a.context.close()
    b.context.close()


def test_xss_titles_render_as_text(site):
    page = open_page(site)
    titles = page.locator(".title").all_text_contents()
    for s in XSS:
        assert s in titles
    assert page.locator('img[src="x"]').count() == 0
    assert page.evaluate("Array.from(document.scripts).filter(s => s.textContent.includes('alert')).length") == 0
    set_blend(page, 0.0)  # reordering moves the same nodes; nothing is re-parsed
    assert page.locator('img[src="x"]').count() == 0 and page.dialogs == []
    page.context.close()


def test_a_write_without_the_token_is_refused_and_changes_nothing(site):
    page = open_page(site, token=None)
    before = site["wb"].store.state()
    li = page.locator('ol.results[data-side="champion"] > li.result').first
    li.locator('button[data-grade="0"]').click()
    page.wait_for_selector("body[data-errors='1']")
    assert "401" in page.locator("#wb-status").text_content()
    assert li.locator(".saved").text_content() == "not saved"
    assert site["wb"].store.state() == before
    page.context.close()


def test_a_screenshot_of_the_page(site, tmp_path):
    page = open_page(site)
    page.wait_for_selector("#wb-pareto[data-drawn=true]")
    out = tmp_path / "workbench.png"
    page.screenshot(path=str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    page.context.close()
