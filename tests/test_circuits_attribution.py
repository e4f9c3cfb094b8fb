"""Attribution graphs on tiny random models with random cross-layer transcoders: edges are exact direct
effects in the local replacement model.

* the incoming edges of a node plus its bias are its pre-activation (a logit: logit minus mean logit);
* each edge equals the effect, in the frozen model (norm scales and attention patterns fixed at their clean
  values, every feature and error node held, by hooks written here independently of the library), of
  doubling its source;
* batching, the feature budget and bad input."""

import pytest
import torch

from _tiny import tiny_lm, tokens
from avec import Patch
from avec.circuits.attribution import attribute, logit_targets
from avec.core.norms import ElementwiseNorm
from avec.dictionaries.clt import CrossLayerTranscoder, layer_points

BIAS_FREE = ["llama", "gemma3_text", "qwen3"]  # no linear biases: a node's constant is its encoder bias alone


def random_clt(lm, d_sae=24, seed=0, reads="mlp_in", cross_layer=True, b_dec=False, skip=False):
    L, d = lm.n_layers, lm.d_model
    clt = CrossLayerTranscoder(arch="jumprelu", d_in=d, d_sae=d_sae, n_layers=L, cross_layer=cross_layer, skip=skip,
                               **layer_points(L, reads=reads))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in clt.W_dec:
            w.copy_(torch.randn(w.shape, generator=g) * 0.2)
        clt.b_enc.copy_(torch.randn(clt.b_enc.shape, generator=g) * 0.1)
        clt.threshold.fill_(0.05)
        if b_dec:
            clt.b_dec.copy_(torch.randn(clt.b_dec.shape, generator=g) * 0.1)
        if skip:
            clt.W_skip.copy_(torch.randn(clt.W_skip.shape, generator=g) * 0.05)
    return clt


@pytest.mark.parametrize("arch", BIAS_FREE)
@pytest.mark.parametrize("reads, cross_layer", [("mlp_in", True), ("resid_mid", True), ("mlp_in", False)])
def test_incoming_edges_plus_bias_are_the_pre_activation(arch, reads, cross_layer):
    lm = tiny_lm(arch)
    clt = random_clt(lm, reads=reads, cross_layer=cross_layer)
    ids = tokens(lm, batch=1, seq=6, seed=2)[0]
    g = attribute(lm, clt, ids, batch_size=7, progress=False)
    assert g.n_features > 20 and g.n_logits >= 1
    with lm.dictionary(clt) as d, torch.no_grad():
        run = lm.run(ids[None], cache=[*d.reads, "final_norm"])
    with torch.no_grad():  # the dictionary's weights require grad; the checks read values only
        for node in range(g.n_features):
            l, p, f = g.features[node].tolist()
            pre = clt.pre_activations(run.cache[d.reads[l]][0, p], l)[f]
            assert float(pre) > 0.05  # an active JumpReLU feature
            assert float(g.incoming(node).sum() + clt.b_enc[l, f]) == pytest.approx(float(pre), abs=2e-4)
        resid = run.cache["final_norm"][0, -1].float()
        for i in range(g.n_logits):
            direction = lm.W_U[:, g.logit_ids[i]].float() - lm.W_U.float().mean(-1)
            assert float(g.incoming(g.logit_node(i)).sum()) == pytest.approx(float(resid @ direction), abs=2e-4)


def _frozen_run(lm, d, ids, clean, extra=()):
    """The local replacement model run by hand: every norm's scale and every attention pattern (through
    clean queries and keys) fixed at their clean values; features (latents) and errors held at ``clean``'s
    unless ``extra`` patches them. Returns the run (read points and final_norm cached)."""
    L = lm.n_layers
    handles = []
    for path in lm.norm_modules():
        module = lm.get_module(path)
        norm = ElementwiseNorm(module)
        scale = clean["scales"][path]

        def hook(mod, inputs, output, norm=norm, scale=scale):
            out = norm.frozen(inputs[0], scale)
            return (out + (norm.bias if norm.bias is not None else 0)).to(output.dtype)

        handles.append(module.register_forward_hook(hook))
    try:
        held = [Patch(f"blocks.{l}.attn.{x}", clean["run"].cache[f"blocks.{l}.attn.{x}"]) for l in range(L) for x in "qk"]
        values = {d.point(part, l): clean["run"].cache[d.point(part, l)].clone() for l in range(L)
                  for part in ("latents", "error")}
        values["embed"] = clean["run"].cache["embed"].clone()
        for point, fn in extra:
            values[point] = fn(values[point])
        held += [Patch(p, v) for p, v in values.items()]
        with torch.no_grad():
            return lm.run(ids[None], cache=[*d.reads, "final_norm"], interventions=held)
    finally:
        for h in handles:
            h.remove()


def _clean(lm, d, ids):
    L = lm.n_layers
    scales, handles = {}, []
    for path in lm.norm_modules():
        module = lm.get_module(path)
        norm = ElementwiseNorm(module)
        handles.append(module.register_forward_hook(
            lambda mod, inputs, output, path=path, norm=norm: scales.__setitem__(path, norm.scale(inputs[0]))))
    try:
        points = ["embed", "final_norm", *[f"blocks.{l}.attn.{x}" for l in range(L) for x in "qk"],
                  *[d.point(p, l) for l in range(L) for p in ("latents", "error")]]
        with torch.no_grad():
            run = lm.run(ids[None], cache=points)
    finally:
        for h in handles:
            h.remove()
    return {"run": run, "scales": scales}


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_each_edge_is_the_effect_of_doubling_its_source_in_the_frozen_model(arch):
    lm = tiny_lm(arch)
    clt = random_clt(lm, b_dec=True, skip=True, seed=3)
    ids = tokens(lm, batch=1, seq=6, seed=5)[0]
    g = attribute(lm, clt, ids, batch_size=16, progress=False)
    W_U = lm.W_U.float()

    @torch.no_grad()  # the dictionary's and model's weights require grad; a value is read only
    def value(run, node):
        k = g.describe(node)
        if k["kind"] == "feature":
            return float(clt.pre_activations(run.cache[d.reads[k["layer"]]][0, k["pos"]], k["layer"])[k["feature"]])
        direction = W_U[:, k["token_id"]] - W_U.mean(-1)
        return float(run.cache["final_norm"][0, -1].float() @ direction)

    with lm.dictionary(clt) as d:
        clean = _clean(lm, d, ids)
        base = _frozen_run(lm, d, ids, clean)
        # the frozen run reproduces the real one (nothing was changed yet)
        assert torch.allclose(base.cache["final_norm"], clean["run"].cache["final_norm"], atol=5e-3)  # float32 rounding, amplified by random layers
        o = g.offsets
        checked = {"feature": 0, "error": 0, "token": 0}
        # for a few targets (the first logit and the deepest features), every kind of source
        deep = sorted(range(g.n_features), key=lambda n: -int(g.features[n, 0]))[:3]
        for target in [g.logit_node(0), *deep]:
            m = g.targets == target
            srcs, ws = g.sources[m], g.weights[m]
            picks = []
            for kind in ("feature", "error", "token"):
                lo, hi = o[kind], {"feature": o["error"], "error": o["token"], "token": o["logit"]}[kind]
                inside = (srcs >= lo) & (srcs < hi)
                if bool(inside.any()):
                    j = int(ws.abs().masked_fill(~inside, -1).argmax())
                    picks.append((int(srcs[j]), float(ws[j])))
            for src, w in picks:
                s = g.describe(src)
                if s["kind"] == "feature":
                    point, p, f = d.point("latents", s["layer"]), s["pos"], s["feature"]

                    def fn(v, p=p, f=f):
                        v = v.clone()
                        v[0, p, f] *= 2
                        return v
                elif s["kind"] == "error":
                    point, p = d.point("error", s["layer"]), s["pos"]

                    def fn(v, p=p):
                        v = v.clone()
                        v[0, p] *= 2
                        return v
                else:
                    point, p = "embed", s["pos"]

                    def fn(v, p=p):
                        v = v.clone()
                        v[0, p] *= 2
                        return v
                doubled = _frozen_run(lm, d, ids, clean, extra=[(point, fn)])
                effect = value(doubled, target) - value(base, target)
                assert effect == pytest.approx(w, rel=2e-3, abs=2e-5), (s, g.describe(target))
                checked[s["kind"]] += 1
    assert all(v > 0 for v in checked.values()), checked


def test_batch_size_order_and_decoder_cache_do_not_change_the_edges(monkeypatch):
    """Batches of 1 (one forward per position prefix), of 64 (one forward in all), and decoder vectors
    read for each batch rather than kept: the same graph."""
    import avec.circuits.attribution as attribution

    lm = tiny_lm("llama")
    clt = random_clt(lm, seed=1)
    ids = tokens(lm, batch=1, seq=5, seed=3)[0]
    a = attribute(lm, clt, ids, batch_size=1, progress=False)
    b = attribute(lm, clt, ids, batch_size=64, progress=False)
    monkeypatch.setattr(attribution, "DECODER_CACHE_BYTES", 0)
    c = attribute(lm, clt, ids, batch_size=3, progress=False)
    heard = []
    d = attribute(lm, clt, ids, batch_size=4, progress=lambda done, total: heard.append((done, total)))
    n_nodes = d.n_features + d.n_logits
    assert heard[0] == (d.n_logits, n_nodes) and heard[-1] == (n_nodes, n_nodes)
    assert [h[0] for h in heard] == sorted(h[0] for h in heard) and len(heard) == 1 + -(-d.n_features // 4)
    A, B, C = (g.adjacency().to_dense() for g in (a, b, c))
    assert A.abs().sum() > 0
    assert torch.allclose(A, B, atol=1e-5) and torch.allclose(A, C, atol=1e-5)


def test_a_feature_budget_keeps_the_most_influential_features():
    lm = tiny_lm("llama")
    clt = random_clt(lm, seed=4)
    ids = tokens(lm, batch=1, seq=6, seed=1)[0]
    full = attribute(lm, clt, ids, batch_size=8, progress=False)
    part = attribute(lm, clt, ids, batch_size=8, max_feature_nodes=20, progress=False)
    assert part.n_features == 20 and part.meta["n_active_features"] == full.n_features
    # the features chosen first include the strongest direct contributor to the top logit
    top_logit = full.incoming(full.logit_node(0))[:full.n_features].abs()
    strongest = tuple(full.features[int(top_logit.argmax())].tolist())
    assert strongest in {tuple(r) for r in part.features.tolist()}
    # the edges among the chosen ones are the full graph's edges
    for node in range(part.n_features):
        l, p, f = part.features[node].tolist()
        same = full.feature_node(l, p, f)
        mine = part.incoming(node)
        theirs = full.incoming(same)
        assert float(mine[part.offsets["error"]:].sub(theirs[full.offsets["error"]:]).abs().max()) < 1e-5


def test_partial_influence_in_one_pass_equals_iterating_the_normalised_matrix():
    """The ranking of features to attribute next: one top-down pass over the layered rows gives the sum over
    all paths that iterating circuit-tracer's normalised matrix to convergence gives."""
    from avec.circuits.attribution import _partial_influence

    g = torch.Generator().manual_seed(0)
    n_active, n_other, L = 60, 7, 5
    layers = torch.randint(0, L, (n_active,), generator=g)
    visited = torch.randperm(n_active, generator=g)[:40].tolist()
    probs = torch.tensor([0.6, 0.3])
    M = torch.zeros(len(visited) + 2, n_active + n_other)
    for r, f in enumerate(visited):  # a feature's edges come from lower layers' features, errors and tokens
        lower = (layers < layers[f]).float() * (torch.rand(n_active, generator=g) < 0.5)
        M[r, :n_active] = torch.randn(n_active, generator=g) * lower
        M[r, n_active:] = torch.randn(n_other, generator=g)
    M[-2:] = torch.randn(2, n_active + n_other, generator=g)
    got = _partial_influence(M, visited, layers, probs, L, rows_per_chunk=3)

    A = M.abs() / M.abs().sum(1, keepdim=True)
    row_of = {f: r for r, f in enumerate(visited)}
    cur = torch.zeros(M.shape[0])
    cur[-2:] = probs
    want = torch.zeros(M.shape[1])
    for _ in range(L + 2):
        arriving = cur @ A
        want += arriving
        cur = torch.zeros(M.shape[0])
        for f, r in row_of.items():
            cur[r] = arriving[f]
    assert not bool(cur.any())  # converged: no path is longer than the layers
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert float(got[n_active:].sum()) > 0 and (got[[f for f in range(n_active) if f not in row_of]] >= 0).all()


def test_logit_targets_and_bad_input():
    lm = tiny_lm("llama")
    logits = torch.tensor([5.0, 4.0, 1.0, 0.0] + [-10.0] * 97)
    ids, probs, dirs = logit_targets(lm, logits, max_n_logits=3, desired_logit_prob=0.9)
    assert ids.tolist() == [0, 1] and float(probs.sum()) >= 0.9 and dirs.shape == (2, lm.d_model)
    assert logit_targets(lm, logits, max_n_logits=1)[0].tolist() == [0]
    with pytest.raises(ValueError, match="max_n_logits"):
        logit_targets(lm, logits, max_n_logits=0)
    half = CrossLayerTranscoder(arch="relu", d_in=lm.d_model, d_sae=8, n_layers=2, **layer_points(2, reads="mlp_in"))
    with pytest.raises(ValueError, match="needs every MLP replaced"):
        attribute(lm, half, tokens(lm, batch=1, seq=4)[0], progress=False)
    assert not lm._dictionaries  # detached again after the error
    with lm.dictionary(random_clt(lm), splice="recon") as d, pytest.raises(ValueError, match="splice='error'"):
        attribute(lm, d, tokens(lm, batch=1, seq=4)[0], progress=False)
    with pytest.raises(ValueError, match="one prompt"):
        attribute(lm, random_clt(lm), tokens(lm, batch=2, seq=4), progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        attribute(lm, random_clt(lm), tokens(lm, batch=1, seq=4)[0], batch_size=0, progress=False)
    # a prompt whose edges would not fit the memory budget: refused before any backward pass, with what fits
    with pytest.raises(ValueError, match=r"max_memory_gb=1e-06: attribute fewer features \(max_feature_nodes <= 0"):
        attribute(lm, random_clt(lm), tokens(lm, batch=1, seq=4)[0], max_memory_gb=1e-6, progress=False)
    with pytest.raises(ValueError, match="max_memory_gb"):
        attribute(lm, random_clt(lm), tokens(lm, batch=1, seq=4)[0], max_memory_gb=0, progress=False)
    assert not lm._dictionaries


def test_feature_interventions_through_the_core():
    from avec.circuits.interventions import intervene

    lm = tiny_lm("llama")
    clt = random_clt(lm, seed=6)
    ids = tokens(lm, batch=1, seq=6, seed=8)[0]
    g = attribute(lm, clt, ids, batch_size=16, progress=False)
    l, p, f = g.features[0].tolist()
    same = intervene(lm, clt, ids, [(l, p, f, 1.0)], scale=True)  # set to its own activation: nothing changes
    assert same.activations[0] == pytest.approx(float(g.activations[0]), abs=1e-5)
    assert torch.equal(same.clean_logits, same.edited_logits) and same.kl == 0.0
    # turning off the feature with the largest direct effect on the top logit lowers that logit's share
    direct = g.incoming(g.logit_node(0))[:g.n_features]
    strongest = int(direct.argmax())
    l, p, f = g.features[strongest].tolist()
    off = intervene(lm, clt, ids, [(l, p, f, 0.0)])
    assert off.kl > 0 and off.edits[0][3] == 0.0
    top = int(g.logit_ids[0])
    assert float(off.edited_logits[top] - off.edited_logits.mean()) < float(off.clean_logits[top] - off.clean_logits.mean())
    frame = off.to_frame()
    assert {"token", "p clean", "p edited", "logit change"} <= set(frame.columns)
    off.plot()
    with pytest.raises(ValueError, match="layer 9 is out of range"):
        intervene(lm, clt, ids, [(9, 0, 0, 0.0)])
    with pytest.raises(ValueError, match="position 6 is out of range"):
        intervene(lm, clt, ids, [(0, 6, 0, 0.0)])
    assert not lm._dictionaries


def test_a_dictionary_trained_after_a_bos_gets_it_before_the_prompt():
    """A transcoder whose config records the BOS its training contexts began with: attribute and intervene put
    it first (unless already there, or prepend_bos=False); the graph equals the one of the prompt given with it."""
    from dataclasses import replace

    from avec.circuits.interventions import intervene
    from avec.dictionaries.transcoder import build

    lm = tiny_lm("llama")
    plain = random_clt(lm, seed=3)
    bos = 7
    marked = build(replace(plain.cfg, bos=bos))
    marked.load_state_dict(plain.state_dict())
    ids = tokens(lm, batch=1, seq=5, seed=4)[0]
    ids[0] = 3  # not the BOS
    with_bos = torch.cat([torch.tensor([bos]), ids])
    g = attribute(lm, marked, ids, progress=False)
    ref = attribute(lm, plain, with_bos, progress=False, first_position_nodes=False)
    assert g.token_ids.tolist() == with_bos.tolist() and g.n_pos == 6
    assert not g.meta["first_position_nodes"] and bool((g.features[:, 1] > 0).all())  # the BOS: constants
    assert torch.equal(g.features, ref.features) and torch.equal(g.targets, ref.targets)
    assert torch.allclose(g.weights, ref.weights, atol=1e-6)
    again = attribute(lm, marked, with_bos, progress=False)  # already there: not doubled
    assert again.token_ids.tolist() == with_bos.tolist()
    assert attribute(lm, marked, ids, progress=False, prepend_bos=False).token_ids.tolist() == ids.tolist()
    assert attribute(lm, plain, ids, progress=False).token_ids.tolist() == ids.tolist()  # none recorded: as given
    # interventions count positions as the graph does (after the BOS)
    l, p, f = g.features[-1].tolist()
    a = intervene(lm, marked, ids, [(l, p, f, 0.0)])
    b = intervene(lm, plain, with_bos, [(l, p, f, 0.0)])
    assert torch.equal(a.activations, b.activations) and torch.allclose(a.edited_logits, b.edited_logits)
    with pytest.raises(ValueError, match="bos=-1"):
        replace(plain.cfg, bos=-1)
    assert not lm._dictionaries


def test_first_position_as_constants_keeps_every_other_edge():
    """circuit-tracer's convention (first_position_nodes=False): position 0's features are not nodes and its error
    nodes have no edges; every other edge is the same as in the full graph (nothing later reaches position 0)."""
    lm = tiny_lm("llama")
    clt = random_clt(lm, seed=9)
    ids = tokens(lm, batch=1, seq=6, seed=2)[0]
    full = attribute(lm, clt, ids, progress=False)
    part = attribute(lm, clt, ids, progress=False, first_position_nodes=False)
    assert full.meta["first_position_nodes"] and not part.meta["first_position_nodes"]
    first = full.features[:, 1] == 0
    assert bool(first.any()) and torch.equal(part.features, full.features[~first])
    assert torch.equal(part.activations, full.activations[~first])
    # map the partial graph's nodes to the full graph's: features shift, errors / tokens / logits follow them
    shift = int(first.sum())
    def to_full(idx):
        return torch.where(idx < part.n_features, (~first).nonzero()[:, 0][idx.clamp(max=part.n_features - 1)],
                           idx + shift)
    A = full.adjacency().to_dense()
    B = torch.zeros_like(A)
    B[to_full(part.targets), to_full(part.sources)] = part.weights
    keep = torch.ones(full.n_nodes, dtype=torch.bool)
    keep[:full.n_features][first] = False
    errors0 = [full.error_node(l, 0) for l in range(full.n_layers)]
    keep_src = keep.clone()
    keep_src[errors0] = False
    # float32 sums over other batches of targets: equal to 1e-6 of the largest weight
    assert torch.allclose(B[keep][:, keep_src], A[keep][:, keep_src], atol=1e-6 * float(A.abs().max()), rtol=1e-4)
    assert B[:, errors0].abs().sum() == 0 and A[:, errors0].abs().sum() > 0
    part.prune()  # influence and pruning run on what is left
    for bad in ({"first_position_nodes": "no"}, {"prepend_bos": 1}):
        with pytest.raises(ValueError, match="give True, False or None"):
            attribute(lm, clt, ids, progress=False, **bad)
    assert not lm._dictionaries


def test_a_trainable_set_gives_the_same_graph_and_keeps_its_flags(monkeypatch):
    """A set just trained (its parameters require grad) and its frozen copy give the same edges; the graph
    holds plain numbers (no autograd history tying batches together: that chain held every batch's decoders) and
    the set's parameters still require grad afterwards, without a .grad."""
    import copy

    import avec.circuits.attribution as attribution

    monkeypatch.setattr(attribution, "DECODER_CACHE_BYTES", 0)  # the decoders read for each batch
    lm = tiny_lm("llama")
    clt = random_clt(lm)
    frozen = copy.deepcopy(clt).requires_grad_(False)
    ids = tokens(lm, batch=1, seq=6, seed=2)[0]
    g = attribute(lm, clt, ids, batch_size=5, progress=False)
    ref = attribute(lm, frozen, ids, batch_size=5, progress=False)
    assert not g.weights.requires_grad and g.weights.grad_fn is None
    torch.testing.assert_close(g.weights, ref.weights)
    assert torch.equal(g.targets, ref.targets) and torch.equal(g.sources, ref.sources)
    assert all(p.requires_grad and p.grad is None for p in clt.parameters())
