"""The attribution graph page in a real browser (headless Chromium): it draws the kept nodes, a click on a
node shows its edges and its dashboard, a selection becomes a supernode; nothing is fetched from the network."""

import json

import pytest
from _browser import artifacts_dir
from test_circuits_graph import random_graph

from avec.circuits.view import graph_page, save_graph_page


@pytest.fixture(scope="module")
def graph():
    return random_graph(seed=5, n_layers=4, n_pos=5)


def test_page_shows_nodes_edges_and_dashboards(page, graph, tmp_path):
    p = graph.prune()
    feature = int(p.nodes[:graph.n_features].nonzero()[0, 0])
    layer, pos, f = graph.features[feature].tolist()
    dashboards = {(layer, f): f"<html><body><h1>Feature {f} page</h1></body></html>"}
    path = save_graph_page(graph, tmp_path / "g.html", dashboards=dashboards)
    page.goto(path.as_uri())
    page.wait_for_function("document.getElementById('graph').data !== undefined")
    n_points = page.evaluate("document.getElementById('graph').data.find(t => t.name === 'nodes').x.length")
    assert n_points == int(p.nodes.sum())
    # a real click on the feature's marker
    xy = page.evaluate("""node => {
        const gd = document.getElementById('graph');
        const t = gd.data.find(t => t.name === 'nodes');
        const i = t.customdata.indexOf(node);
        const box = gd.querySelector('.nsewdrag').getBoundingClientRect();
        return [box.left + gd._fullLayout.xaxis.d2p(t.x[i]), box.top + gd._fullLayout.yaxis.d2p(t.y[i])];
    }""", feature)
    page.mouse.click(*xy)
    page.wait_for_selector("#node-title")
    assert page.inner_text("#node-title") == f"L{layer} f{f} @{pos}"
    incoming = int(((graph.targets == feature) & p.edges).sum())
    assert page.locator("#incoming tr").count() == min(incoming, 12)
    frame = page.frame_locator("#dashboard")
    assert frame.locator("h1").inner_text() == f"Feature {f} page"
    page.screenshot(path=str(artifacts_dir() / "graph-clicked.png"), full_page=True)
    # a selection grouped into a supernode, with the frontends' node ids
    ids = page.evaluate("document.getElementById('graph').data.find(t => t.name === 'nodes').customdata.slice(0, 3)")
    page.evaluate("ids => window.avecGraph.select(ids)", ids)
    page.fill("#sname", "my group")
    page.click("#group")
    assert page.inner_text("#supernodes") == "my group: 3 nodes"
    groups = page.evaluate("window.avecGraph.supernodes")
    data = json.loads(page.inner_text("#graph-data") if False else page.evaluate("document.getElementById('graph-data').textContent"))
    assert groups[0][1:] == [data["nodes"][str(i)]["node_id"] for i in ids]
    assert not page.errors
    assert all(u.startswith("file://") or u.startswith("about:") for u in page.requests)


def test_bad_plotly_mode(graph):
    with pytest.raises(ValueError, match="plotly_js='cdn'"):
        graph_page(graph, plotly_js="cdn")


def test_clicking_a_feature_node_shows_its_top_contexts_and_logit_effects(page, smollm2, tmp_path):
    """Dashboards made by ``graph_dashboards`` from a real graph of a tiny model: a click on a feature node
    shows that feature's top held-out contexts and its logit effects inside the graph page."""
    from _steering_tiny import tiny_lm_with_tokenizer
    from test_circuits_attribution import random_clt

    from avec.circuits import attribute
    from avec.circuits.dashboards import graph_dashboards, graph_features
    from avec.dictionaries.features import logit_effects
    from avec.dictionaries.heldout import heldout_contexts
    from avec.dictionaries.latents import collect_latents

    lm = tiny_lm_with_tokenizer(smollm2.tokenizer)
    clt = random_clt(lm, seed=1, reads="resid_mid")
    g = attribute(lm, clt, "The capital of France is", max_feature_nodes=40)
    texts = heldout_contexts(lm.tokenizer, 8, 32)
    pages = graph_dashboards(lm, clt, g, texts, k=4, n_logits=5)
    wanted = graph_features(g)
    assert set(pages) == {(l, f) for l, fs in wanted.items() for f in fs} and pages
    path = save_graph_page(g, tmp_path / "g.html", dashboards=pages)
    page.goto(path.as_uri())
    page.wait_for_function("document.getElementById('graph').data !== undefined")
    p = g.prune()
    node = int(p.nodes[:g.n_features].nonzero()[0, 0])
    layer, pos, f = g.features[node].tolist()
    xy = page.evaluate("""node => {
        const gd = document.getElementById('graph');
        const t = gd.data.find(t => t.name === 'nodes');
        const i = t.customdata.indexOf(node);
        const box = gd.querySelector('.nsewdrag').getBoundingClientRect();
        return [box.left + gd._fullLayout.xaxis.d2p(t.x[i]), box.top + gd._fullLayout.yaxis.d2p(t.y[i])];
    }""", node)
    page.mouse.click(*xy)
    page.wait_for_selector("#node-title")
    assert page.inner_text("#node-title") == f"L{layer} f{f} @{pos}"
    frame = page.frame_locator("#dashboard")
    assert frame.locator("h1").inner_text() == f"Feature {f} at blocks.{layer}.resid_mid (layer {layer})"
    examples = collect_latents(lm, clt, None, texts, layer=layer, features=[f]).examples([f], k=4)[f]
    assert frame.locator(".ex").count() == len(examples.examples)
    eff = logit_effects(lm, clt, f, k=5, layer=layer)
    shown = frame.locator("td.pos.t").all_inner_texts()
    assert len(shown) == 5 and [s.strip() for s in shown][0] == eff.top[0][1].strip()
    assert "every later MLP output, summed" in frame.locator("body").inner_text()
    assert frame.locator("a", has_text="all features").count() == 0  # no link to an index the graph page lacks
    page.screenshot(path=str(artifacts_dir() / "graph-feature-dashboard.png"), full_page=True)
    assert not page.errors


def test_graph_dashboards_need_the_graphs_transcoders(graph):
    from _tiny import tiny_lm

    from avec.circuits.dashboards import graph_dashboards
    from avec.dictionaries import CrossLayerTranscoder, layer_points

    small = CrossLayerTranscoder(arch="relu", d_in=64, d_sae=60, n_layers=2, **layer_points(2))
    with pytest.raises(ValueError, match="feature nodes at layer 3 but the transcoder has 2 layers"):
        graph_dashboards(tiny_lm("llama"), small, graph, ["some text"])
