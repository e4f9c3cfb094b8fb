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
