"""Attribution graph bookkeeping on hand-made graphs: the sparse influence, pruning and scores equal the
dense definitions (written out here as circuit-tracer defines them), and the JSON has the frontend's shape."""

import json

import pytest
import torch

from avec.circuits.graph import AttributionGraph


def random_graph(n_layers=3, n_pos=4, feats_per_cell=2, n_logits=3, seed=0, density=0.6):
    """A random acyclic graph: edges only from earlier layers (or tokens) into features / logits."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.tensor([[l, p, int(torch.randint(0, 50, (1,), generator=g))] for l in range(n_layers)
                          for p in range(n_pos) for _ in range(feats_per_cell)])
    n_feat = feats.shape[0]
    graph = AttributionGraph("x", torch.arange(n_pos) + 10, tuple(f"t{p}" for p in range(n_pos)), feats,
                             torch.rand(n_feat, generator=g) + 0.1, n_layers, torch.tensor([1, 2, 3][:n_logits]),
                             tuple("abc"[:n_logits]), torch.tensor([0.5, 0.3, 0.1][:n_logits]),
                             torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0))
    layer_of = {}
    for i in range(n_feat):
        layer_of[i] = (int(feats[i, 0]), int(feats[i, 1]))
    for l in range(n_layers):
        for p in range(n_pos):
            layer_of[graph.error_node(l, p)] = (l, p)
    for p in range(n_pos):
        layer_of[graph.token_node(p)] = (-1, p)
    t, s, w = [], [], []
    targets = list(range(n_feat)) + [graph.logit_node(i) for i in range(n_logits)]
    for tgt in targets:
        tl, tp = layer_of.get(tgt, (n_layers, n_pos - 1))
        for src, (sl, sp) in layer_of.items():
            if sl < tl and sp <= tp and float(torch.rand(1, generator=g)) < density:
                t.append(tgt), s.append(src), w.append(float(torch.randn(1, generator=g)))
    return AttributionGraph(graph.prompt, graph.token_ids, graph.token_strs, feats, graph.activations, n_layers,
                            graph.logit_ids, graph.logit_strs, graph.logit_probs, torch.tensor(t), torch.tensor(s),
                            torch.tensor(w))


def dense(g):
    A = torch.zeros(g.n_nodes, g.n_nodes, dtype=torch.float64)
    A[g.targets, g.sources] = g.weights.double()
    return A


def dense_influence(A, w):
    N = A.abs() / A.abs().sum(1, keepdim=True).clamp_min(1e-10)
    total = torch.zeros(A.shape[0], dtype=torch.float64)
    cur = w.double() @ N
    while cur.any():
        total += cur
        cur = cur @ N
    return total, N


def test_influence_and_scores_equal_the_dense_definitions():
    g = random_graph()
    A = dense(g)
    w = g.logit_weights().double()
    inf, N = dense_influence(A, w)
    assert torch.allclose(g.influence().double(), inf, atol=1e-6)
    # replacement and completeness scores, dense
    o = g.offsets
    tok, err = inf[o["token"]:o["logit"]].sum(), inf[o["error"]:o["token"]].sum()
    non_err = 1 - N[:, o["error"]:o["token"]].sum(1)
    out = inf + w
    rep, comp = g.scores()
    assert rep == pytest.approx(float(tok / (tok + err)), abs=1e-6)
    assert comp == pytest.approx(float((non_err * out).sum() / out.sum()), abs=1e-6)
    # an error-free graph scores 1 on both
    no_err = (g.sources < o["error"]) | (g.sources >= o["token"])
    clean = AttributionGraph(g.prompt, g.token_ids, g.token_strs, g.features, g.activations, g.n_layers, g.logit_ids,
                             g.logit_strs, g.logit_probs, g.targets[no_err], g.sources[no_err], g.weights[no_err])
    assert clean.scores() == pytest.approx((1.0, 1.0))


def test_influence_on_chosen_logits_is_linear_in_them():
    """Influence on one logit = the dense series started at that logit alone (weight 1); the influences on
    each logit, weighted by their probabilities, add up to the whole graph's influence."""
    g = random_graph(seed=3)
    A = dense(g)
    for i in range(g.n_logits):
        start = torch.zeros(g.n_nodes, dtype=torch.float64)
        start[g.logit_node(i)] = 1.0
        assert torch.allclose(g.influence(i).double(), dense_influence(A, start)[0], atol=1e-6)
    both = g.influence([0, 2]).double()
    assert torch.allclose(both, g.influence(0).double() + g.influence(2).double(), atol=1e-6)
    weighted = sum(float(g.logit_probs[i]) * g.influence(i) for i in range(g.n_logits))
    assert torch.allclose(weighted, g.influence(), atol=1e-6)
    for bad in (3, -1, [], True, "a"):
        with pytest.raises(ValueError, match="logit indices in 0..2"):
            g.influence(bad)


def _dense_threshold(scores, share):
    ordered = scores.flatten().sort(descending=True).values
    cum = ordered.cumsum(0) / ordered.sum()
    return ordered[min(int(torch.searchsorted(cum, torch.tensor(share, dtype=cum.dtype))), len(ordered) - 1)]


@pytest.mark.parametrize("seed, nt, et", [(0, 0.8, 0.98), (1, 0.5, 0.9), (2, 0.95, 0.7)])
def test_pruning_equals_the_dense_procedure(seed, nt, et):
    g = random_graph(seed=seed, n_layers=4, n_pos=5)
    A = dense(g)
    w = g.logit_weights().double()
    inf, _ = dense_influence(A, w)
    nodes = inf >= _dense_threshold(inf, nt)
    o = g.offsets
    nodes[o["token"]:] = True
    P = A.clone()
    P[~nodes] = 0
    P[:, ~nodes] = 0
    pinf, PN = dense_influence(P, w)
    scores = PN * (pinf + w)[:, None]
    edges = scores >= _dense_threshold(scores[P != 0], et)
    edges &= P != 0
    while True:
        old = nodes.clone()
        edges[~nodes] = False
        edges[:, ~nodes] = False
        nodes[:o["token"]] &= edges[:, :o["token"]].any(0)
        nodes[:g.n_features] &= edges[:g.n_features].any(1)
        if torch.equal(old, nodes):
            break
    p = g.prune(nt, et)
    assert torch.equal(p.nodes, nodes)
    assert torch.equal(p.edges, edges[g.targets, g.sources])
    assert p.nodes[o["token"]:].all()  # tokens and logits always kept
    kept_src = set(g.sources[p.edges].tolist())
    assert all(n in kept_src for n in p.nodes[:o["token"]].nonzero().flatten().tolist())  # every kept feature/error feeds an edge
    assert p.cumulative.max() == pytest.approx(1.0)


def test_json_has_the_frontend_shape(tmp_path):
    g = random_graph(seed=3)
    d = g.to_dict(0.8, 0.98, slug="demo")
    assert set(d) == {"metadata", "qParams", "nodes", "links"}
    assert d["metadata"]["prompt_tokens"] == list(g.token_strs) and d["metadata"]["slug"] == "demo"
    ids = {n["node_id"] for n in d["nodes"]}
    assert all(link["source"] in ids and link["target"] in ids for link in d["links"])
    kinds = {n["feature_type"] for n in d["nodes"]}
    assert {"embedding", "logit"} <= kinds
    for n in d["nodes"]:
        assert {"node_id", "feature", "layer", "ctx_idx", "feature_type", "influence", "activation", "jsNodeId"} <= set(n)
        if n["feature_type"] == "cross layer transcoder":
            layer, f, pos = map(int, n["node_id"].split("_"))
            assert n["feature"] == (layer + f) * (layer + f + 1) // 2 + f and n["ctx_idx"] == pos
    assert sum(n["is_target_logit"] for n in d["nodes"]) == 1
    path = g.save_json(tmp_path / "demo.json")
    assert json.loads(path.read_text())["links"] == d["links"]
    g.plot()
    assert len(g.nodes_frame()) == int(g.prune().nodes.sum())


def test_bad_thresholds_and_nodes():
    g = random_graph()
    for bad in ({"node_threshold": 1.5}, {"node_threshold": 0.0}, {"edge_threshold": -0.1}, {"edge_threshold": 0}):
        with pytest.raises(ValueError, match="share of the influence, in \\(0, 1\\]"):
            g.prune(**bad)
    with pytest.raises(IndexError, match="out of range"):
        g.describe(g.n_nodes)
    with pytest.raises(KeyError, match="not a node of this graph"):
        g.feature_node(0, 0, 999)
