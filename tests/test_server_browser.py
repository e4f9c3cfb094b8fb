"""The web app as a person uses it: pages opened in headless Chromium against a server running in this
process (a tiny random model with SmolLM2's tokenizer), the coefficient slider moved, the steered text and
the scan plot checked to follow it, a bad input shown on the page while the server goes on answering.
Screenshots go to test-artifacts/."""

import pytest
from _browser import artifacts_dir

from avec.app.server import BackgroundServer, create_app
from avec.steering import contrast

from _steering_tiny import tiny_lm_with_tokenizer

IDLE = "document.body.dataset.pending === '0'"


@pytest.fixture(scope="module")
def server(smollm2, tmp_path_factory):
    lm = tiny_lm_with_tokenizer(smollm2.tokenizer)
    folder = tmp_path_factory.mktemp("vectors")
    (2 * contrast(lm, "Calm", "Angry", at=2)).save(folder / "calm.safetensors")
    with BackgroundServer(create_app(lm, data_dir=folder)) as s:
        yield s


def _settle(page, after: str | None = None):
    """Wait until no request is in flight (and, if given, until ``after`` holds)."""
    if after:
        page.wait_for_function(after, timeout=30_000)
    page.wait_for_function(IDLE, timeout=30_000)


def _slide(page, value: float):
    page.evaluate("v => { const s = document.getElementById('coeff'); s.value = v; "
                  "s.dispatchEvent(new Event('input', {bubbles: true})); }", value)


def _marker(page) -> float:
    return page.evaluate("document.getElementById('scan-plot').layout.shapes[0].x0")


def test_steering_slider_moves_the_text_and_the_plot(page, server):
    page.goto(server.url + "/steering")
    _settle(page, "document.getElementById('scan-plot').data !== undefined && "
                  "document.getElementById('steered').textContent.length > 0")
    assert page.locator("#error").is_hidden()
    # the scan plot: the total, the run's own metric, and the top components, over 41 coefficients
    n_traces = page.evaluate("document.getElementById('scan-plot').data.length")
    assert n_traces == 2 + 6 and page.evaluate("document.getElementById('scan-plot').data[0].x.length") == 41
    assert page.locator("#scan-plot .main-svg").count() > 0
    unsteered, steered = page.locator("#unsteered").inner_text(), page.locator("#steered").inner_text()
    assert _marker(page) == 5 and "5 x (Love - Hate) @ layer 2" in page.locator("#steered-title").inner_text()
    page.screenshot(path=str(artifacts_dir() / "serve-steering.png"), full_page=True)

    _slide(page, -15)
    _settle(page, f"document.getElementById('steered').innerText !== {steered!r}")
    assert _marker(page) == -15 and page.locator("#coeff-value").inner_text() == "-15"
    assert page.locator("#unsteered").inner_text() == unsteered  # 0 x v: the same plain completion
    assert "-15 x (Love - Hate)" in page.locator("#steered-title").inner_text()
    # the answer streamed: queued, running, then one progress event per generated token
    stages = page.evaluate("avec.progressLog.map((p) => p.stage)")
    assert stages[:2] == ["queued", "running"] and stages.count("generating") % 24 == 0 and "generating" in stages
    assert page.locator("#status").inner_text() == ""  # cleared once the answer came
    page.screenshot(path=str(artifacts_dir() / "serve-steering-slid.png"), full_page=True)
    assert not page.errors
    assert all(u.startswith(server.url) for u in page.requests), "nothing is fetched from elsewhere"


def test_steering_bad_input_is_shown_and_the_server_goes_on(page, server):
    page.goto(server.url + "/steering")
    _settle(page, "document.getElementById('steered').textContent.length > 0")
    page.fill("#layer", "99")
    page.click("#generate")
    _settle(page, "!document.getElementById('error').hidden")
    assert "layer must be in 0..2, got 99" in page.locator("#error").inner_text()
    page.screenshot(path=str(artifacts_dir() / "serve-steering-error.png"), full_page=True)
    before = page.locator("#steered").inner_text()
    page.fill("#layer", "1")
    _slide(page, 12)
    page.click("#generate")
    _settle(page, "document.getElementById('error').hidden")
    assert page.locator("#steered").inner_text() != before
    assert "(Love - Hate) @ layer 1" in page.locator("#steered-title").inner_text()


def test_steering_with_a_saved_vector(page, server):
    page.goto(server.url + "/steering")
    _settle(page, "document.getElementById('steered').textContent.length > 0")
    assert page.locator("#vector option").all_inner_texts() == ["calm.safetensors"]
    page.check("#source-file")
    assert page.locator("#pair-fields").is_hidden() and page.locator("#file-fields").is_visible()
    page.click("#generate")
    _settle(page, "document.getElementById('steered-title').textContent.includes('calm.safetensors')")
    assert page.locator("#error").is_hidden()


def test_lens_page_heatmaps_hover_and_errors(page, server):
    page.goto(server.url + "/lens")
    _settle(page, "document.getElementById('heads-plot').data !== undefined")
    lens = page.evaluate("(() => { const d = document.getElementById('lens-plot').data[0];"
                         " return {rows: d.z.length, cols: d.z[0].length, y: d.y, x: d.x}; })()")
    assert lens["rows"] == 4 and lens["y"][-1] == "final"  # 3 blocks' resid_pre + the final residual
    assert lens["cols"] == len(lens["x"]) and lens["x"][0].startswith("0:")
    heads = page.evaluate("document.getElementById('heads-plot').data[0].z")
    assert len(heads) == 3 and len(heads[0]) == 4
    box = page.locator("#lens-plot .nsewdrag").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    page.wait_for_selector("#lens-plot .hoverlayer .hovertext", timeout=10_000)
    assert "lens top-1" in page.locator("#lens-plot .hoverlayer").text_content()
    page.screenshot(path=str(artifacts_dir() / "serve-lens.png"), full_page=True)
    assert not page.errors

    page.fill("#target", " Paris is")
    page.click("#run")
    _settle(page, "!document.getElementById('error').hidden")
    assert "not one; pick a single-token string" in page.locator("#error").inner_text()
    page.fill("#target", "")
    page.fill("#prompt", "The capital of France is")
    page.click("#run")
    _settle(page, "document.getElementById('error').hidden")
    assert page.evaluate("document.getElementById('lens-plot').data[0].x[0]") == "0:The"
    assert page.errors and all("400 (Bad Request)" in e for e in page.errors)  # the refused request, only


def test_maze_explorer_arrows_follow_the_coefficient(page, server):
    page.goto(server.url + "/maze")
    _settle(page, "document.getElementById('field-diff').data !== undefined")
    assert page.locator("#policy option").all_inner_texts() == ["region15", "region5"]
    diff = "document.getElementById('field-diff').data[1].x.filter((v) => v !== null)"
    before = page.evaluate(diff)
    assert page.evaluate("document.getElementById('field-original').data[1].x.length") > 30
    assert page.evaluate("document.getElementById('field-steered').layout.title.text") == "-1 x cheese"
    page.screenshot(path=str(artifacts_dir() / "serve-maze.png"), full_page=True)
    page.evaluate("() => { const s = document.getElementById('cheese'); s.value = -3; "
                  "s.dispatchEvent(new Event('input', {bubbles: true})); }")
    _settle(page, "document.getElementById('field-steered').layout.title.text.startsWith('-3 x cheese')")
    assert page.evaluate(diff) != before
    assert page.locator("#decision").inner_text().startswith("At the decision square")
    page.fill("#size", "12")
    page.click("#run")
    _settle(page, "!document.getElementById('error').hidden")
    assert "size must be odd" in page.locator("#error").inner_text()
