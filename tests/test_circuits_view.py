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
