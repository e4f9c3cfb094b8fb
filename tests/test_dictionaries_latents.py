"""The sparse latent index (one pass, then any feature's examples) and the strongest latents per position of
a prompt: each equals the dense latents of the same runs, read by hand."""

import json

import pytest
import torch

from _tiny import tiny_lm, tokens
from avec.dictionaries import features as F
from avec.dictionaries.latents import collect_latents, prompt_features
from test_circuits_attribution import random_clt
from test_dictionaries_features import AT, W, random_sae


@pytest.fixture(scope="module")
def lm():
    return tiny_lm("llama")


def _dense(lm, sae, x):
    with lm.dictionary(sae, AT) as d:
        return lm.run(x, cache=[d.point("latents")]).cache[d.point("latents")].float()


def test_index_holds_every_positive_latent_and_reads_examples_like_top_examples(lm):
    sae = random_sae()
    x = tokens(lm, batch=6, seq=7, seed=4)
    lat = _dense(lm, sae, x)
    heard = []
    index = collect_latents(lm, sae, AT, x, batch_size=4, progress=lambda d, n: heard.append((d, n)))
    assert heard == [(4, 6), (6, 6)] and index.at == AT and index.n_read == 42 and index.columns is None
    back = torch.zeros_like(lat)
    back[index.text.long(), index.pos.long(), index.feature.long()] = index.value
    assert torch.equal(back, lat.clamp_min(0))  # every positive latent, nothing else
    assert torch.equal(index.counts(), (lat > 0).sum((0, 1)))
    assert torch.allclose(index.max_values(), lat.clamp_min(0).amax((0, 1)))
    assert index.text_tokens(2) == x[2].tolist() and index.describe()["n_entries"] == int((lat > 0).sum())
    feats = index.counts().argsort(descending=True)[[0, 5, 30]].tolist()
    got = index.examples(feats, k=3, context=(2, 1))
    assert got.to_dict() == F.top_examples(lm, sae, AT, x, feats, k=3, context=(2, 1)).to_dict()
    for f in feats:
        fe = got[f]
        assert [e.value for e in fe.examples] == pytest.approx(lat[..., f].flatten().topk(3).values.tolist())
        e = fe.examples[0]
        lo = max(0, e.position - 2)
        assert list(e.acts) == pytest.approx(lat[e.text, lo:e.position + 2, f].clamp_min(0).tolist())
    only = collect_latents(lm, sae, AT, x, features=[feats[1], 3])
    assert only.examples([feats[1]], k=3).to_dict() == index.examples([feats[1]], k=3).to_dict()
    with pytest.raises(KeyError, match="feature 4 was not collected"):
        only.examples([4])
    with pytest.raises(ValueError, match=f"d_sae={W} latents"):
        index.examples([W])


def test_cross_layer_transcoder_layers(lm):
    clt = random_clt(lm, reads="resid_mid")
    x = tokens(lm, batch=3, seq=6, seed=1)
    with lm.dictionary(clt) as d:
        run = lm.run(x, cache=[d.point("latents", 2)])
        want = run.cache[d.point("latents", 2)].float()
    index = collect_latents(lm, clt, None, x, layer=2)
    assert index.at == "blocks.2.resid_mid" and index.d_sae == 24
    back = torch.zeros_like(want)
    back[index.text.long(), index.pos.long(), index.feature.long()] = index.value
    assert torch.equal(back, want.clamp_min(0)) and index.value.numel() > 0
    assert not lm.dictionaries  # attached for the pass only
    with pytest.raises(ValueError, match="layer 5 is out of range"):
        collect_latents(lm, clt, None, x, layer=5)


def test_prompt_features_are_the_strongest_latents_per_position(lm):
    sae = random_sae()
    x = tokens(lm, batch=1, seq=8, seed=2)[0]
    lat = _dense(lm, sae, x[None])[0]
    r = prompt_features(lm, sae, AT, x, k=4)
    assert r.top_ids.shape == (8, 4) and r.read.all()
    assert torch.allclose(r.top_values, lat.topk(4, dim=-1).values.clamp_min(0))
    assert torch.equal(r.top_ids, lat.topk(4, dim=-1).indices)  # random latents: no ties, all positive
    assert set(r.features) == set(r.top_ids.flatten().tolist())
    assert torch.allclose(r.values, lat[:, list(r.features)])
    maxes = r.values.amax(0)
    assert torch.equal(maxes, maxes.sort(descending=True).values)
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d["type"] == "PromptFeatures" and d["features"] == list(r.features) and d["tokens"] == list(r.tokens)
    assert len(r.to_frame()) == 32 and r.plot() is not None
    with pytest.raises(ValueError, match="give one prompt"):
        prompt_features(lm, sae, AT, x[None].repeat(2, 1))
