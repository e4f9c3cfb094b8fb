"""The patching, SAE feature and attribution-graph pages as a person uses them, in headless Chromium against a
server in this process (a tiny random model with SmolLM2's tokenizer, a random SAE and a random cross-layer
transcoder in the data folder): the heatmaps are drawn and answer hovers and clicks, a feature's page shows its
examples and steers with it, a graph node leads to its feature's page. Screenshots go to test-artifacts/."""

import pytest
from _browser import artifacts_dir

from avec.app.server import BackgroundServer, create_app

from _steering_tiny import tiny_lm_with_tokenizer
from test_circuits_attribution import random_clt
from test_dictionaries_features import random_sae
from test_server_browser import _settle


@pytest.fixture(scope="module")
def server(smollm2, tmp_path_factory):
    lm = tiny_lm_with_tokenizer(smollm2.tokenizer)
    folder = tmp_path_factory.mktemp("dictionaries")
    random_sae(d_in=64, d_sae=96, hook="blocks.1.resid_post").save(folder / "sae.safetensors")
    random_clt(lm, reads="resid_mid").save(folder / "clt.safetensors")
    with BackgroundServer(create_app(lm, data_dir=folder, feature_contexts=16)) as s:
        yield s


def _plot(page, div: str, expr: str):
    return page.evaluate(f"(() => {{ const d = document.getElementById('{div}').data[0]; return {expr}; }})()")


def test_patching_heatmaps_hover_and_rerun(page, server):
    page.goto(server.url + "/patching")
    _settle(page, "document.getElementById('plot-mlp_out') && document.getElementById('plot-mlp_out').data !== undefined")
    assert page.locator("#error").is_hidden()
    n = len(_plot(page, "plot-resid_pre", "d.x"))
    for point in ("resid_pre", "attn_out", "mlp_out"):
        assert _plot(page, f"plot-{point}", "[d.z.length, d.z[0].length]") == [3, n]  # layers x positions
    assert "clean" in page.locator("#baseline").inner_text()
    box = page.locator("#plot-resid_pre .nsewdrag").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.9, box["y"] + box["height"] * 0.2)
    page.wait_for_selector("#plot-resid_pre .hoverlayer .hovertext", timeout=10_000)
    assert "logit diff" in page.locator("#plot-resid_pre .hoverlayer").text_content()
    page.screenshot(path=str(artifacts_dir() / "serve-patching.png"), full_page=True)
    stages = page.evaluate("avec.progressLog.filter((p) => p.done !== undefined).map((p) => p.stage)")
    assert {"patching resid_pre (1 of 3)", "patching mlp_out (3 of 3)"} <= set(stages)

    page.uncheck("input.point[value=attn_out]")
    page.uncheck("input.point[value=mlp_out]")
    page.fill("#first-layer", "1")
    page.click("#run")
    _settle(page, "!document.getElementById('plot-mlp_out')")
    assert _plot(page, "plot-resid_pre", "d.y") == ["L1", "L2"]
    page.fill("#corrupted", "The capital of the Federal Republic of Germany is")
    page.click("#run")
    _settle(page, "!document.getElementById('error').hidden")
    assert "same token length" in page.locator("#error").inner_text()
    assert not page.errors  # streamed: the refusal came as an error event, not a failed request


def test_features_index_to_a_feature_page_and_steering(page, server):
    page.goto(server.url + "/features")
    _settle(page, "document.getElementById('prompt-plot').data !== undefined")
    assert page.locator("#dictionary option").all_inner_texts() == [
        "clt.safetensors (transcoder, 3 layers)", "sae.safetensors (sae, blocks.1.resid_post)"]
    assert page.locator("#layer-label").is_visible()  # the CLT, first in the list, has layers
    page.select_option("#dictionary", "sae.safetensors")
    assert page.locator("#layer-label").is_hidden()
    page.click("#run")
    _settle(page, "document.getElementById('prompt-plot').layout.title.text.includes('sae.safetensors')")
    rows, cols = _plot(page, "prompt-plot", "[d.z.length, d.z[0].length]")
    assert cols == page.locator("#prompt-table tr").count() and rows >= 5
    assert page.locator("#prompt-table a.feature-link").count() >= 5
    page.screenshot(path=str(artifacts_dir() / "serve-features.png"), full_page=True)
    # a real click on the heatmap's first cell opens that feature's page
    feature = _plot(page, "prompt-plot", "d.customdata[0][0]")
    xy = page.evaluate("""() => {
        const gd = document.getElementById('prompt-plot'), d = gd.data[0];
        const box = gd.querySelector('.nsewdrag').getBoundingClientRect();
        return [box.left + gd._fullLayout.xaxis.d2p(d.x[0]), box.top + gd._fullLayout.yaxis.d2p(d.y[0])];
    }""")
    page.mouse.click(*xy)
    page.wait_for_url("**/feature?*", timeout=10_000)
    _settle(page, "document.getElementById('steered').textContent.length > 0")
    assert page.locator("#feature-title").inner_text() == f"Feature {feature} of sae.safetensors at blocks.1.resid_post"
    assert page.locator("#examples .example").count() == 10
    peak = page.locator("#examples .example").first.locator(".tok.peak")
    assert peak.count() == 1 and peak.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(220, 40, 40)"  # full shade
    assert sum(_plot(page, "hist", "d.y")) > 0 and len(_plot(page, "effects", "d.x")) == 20
    assert "density" in page.locator("#summary").inner_text()
    page.screenshot(path=str(artifacts_dir() / "serve-feature.png"), full_page=True)
    steered = page.locator("#steered").inner_text()
    unsteered = page.locator("#unsteered").inner_text()
    page.evaluate("() => { const s = document.getElementById('coeff'); s.value = s.min; "
                  "s.dispatchEvent(new Event('input', {bubbles: true})); }")
    _settle(page, f"document.getElementById('steered').innerText !== {steered!r}")
    assert page.locator("#unsteered").inner_text() == unsteered
    assert page.locator("#steered-title").inner_text().startswith("steered: -")
    page.screenshot(path=str(artifacts_dir() / "serve-feature-steered.png"), full_page=True)
    # another id typed in: the page follows, the address too
    page.fill("#feature-id", "95")
    page.click("#open")
    _settle(page, "document.getElementById('feature-title').textContent.startsWith('Feature 95 ')")
    assert "id=95" in page.url
    page.fill("#feature-id", "96")
    page.click("#open")
    _settle(page, "!document.getElementById('error').hidden")
    assert "feature must be in 0..95, got 96" in page.locator("#error").inner_text()
    assert all(u.startswith(server.url) for u in page.requests), "nothing is fetched from elsewhere"


def test_graph_page_node_opens_its_feature_page(page, server):
    page.goto(server.url + "/graph")
    _settle(page, "document.getElementById('transcoder').options.length > 0")
    assert page.locator("#transcoder option").all_inner_texts() == ["clt.safetensors (3 layers)"]
    page.fill("#max-feature-nodes", "30")
    page.click("#run")
    _settle(page, "!document.getElementById('graph-view').hidden")
    frame = page.frame_locator("#graph-view")
    frame.locator("#graph .main-svg").first.wait_for(timeout=20_000)
    assert "nodes" in page.locator("#summary").inner_text()
    stages = page.evaluate("avec.progressLog.map((p) => p.stage)")
    assert "attribution" in stages
    inner = next(f for f in page.frames if "/graph/view/" in f.url)
    inner.wait_for_function("document.getElementById('graph').data !== undefined")
    xy = inner.evaluate("""() => {
        const gd = document.getElementById('graph'), t = gd.data.find((t) => t.name === 'nodes');
        const data = JSON.parse(document.getElementById('graph-data').textContent);
        const i = t.customdata.findIndex((n) => data.nodes[String(n)].kind === 'feature');
        const box = gd.querySelector('.nsewdrag').getBoundingClientRect();
        return [box.left + gd._fullLayout.xaxis.d2p(t.x[i]), box.top + gd._fullLayout.yaxis.d2p(t.y[i])];
    }""")
    page.evaluate("document.getElementById('graph-view').scrollIntoView()")  # the whole frame in the viewport
    box = page.locator("#graph-view").bounding_box()
    page.mouse.click(box["x"] + xy[0], box["y"] + xy[1])
    frame.locator("#dashboard-link").wait_for(timeout=10_000)
    title = frame.locator("#node-title").inner_text()  # "L{layer} f{feature} @{pos}"
    layer, feature = title.split()[0][1:], title.split()[1][1:]
    href = frame.locator("#dashboard-link").get_attribute("href")
    assert href == f"/feature?dictionary=clt.safetensors&layer={layer}&id={feature}"
    page.screenshot(path=str(artifacts_dir() / "serve-graph.png"), full_page=True)
    page.goto(server.url + href)
    _settle(page, "document.getElementById('feature-title').textContent.length > 0")
    assert page.locator("#feature-title").inner_text() == \
        f"Feature {feature} of clt.safetensors at blocks.{layer}.resid_mid"
    assert page.locator("#layer").input_value() == layer
    assert not [e for e in page.errors if "400" not in e]
