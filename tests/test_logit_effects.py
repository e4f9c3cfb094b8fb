"""Logit effects of transcoder and cross-layer transcoder features: the tokens a feature's direct write to the
residual stream promotes and suppresses through the final norm's gain and the unembedding."""

import pytest
import torch

from _tiny import tiny_lm
from avec.core.norms import ElementwiseNorm
from avec.dictionaries import CrossLayerTranscoder, Transcoder, layer_points
from avec.dictionaries.features import logit_effects, residual_direction


@pytest.fixture(scope="module", params=["llama", "gpt2", "gemma3_text"])
def lm(request):
    return tiny_lm(request.param)


def _gain_and_center(lm):
    norm = ElementwiseNorm(lm.get_module(lm.arch.final_norm))
    return norm.gain.detach().float(), norm.center


def _hand(lm, d):
    """(gain * center?(d)) @ W_U by hand."""
    gain, center = _gain_and_center(lm)
    if center:
        d = d - d.mean()
    return (d * gain) @ lm.W_U.detach().float()


def _plt(lm, seed=0):
    """A random per-layer transcoder set (each feature writes its own layer's MLP output)."""
    L = lm.n_layers
    tc = CrossLayerTranscoder(arch="relu", d_in=lm.d_model, d_sae=12, n_layers=L, cross_layer=False,
                              **layer_points(L))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in tc.W_dec:
            w.copy_(torch.randn(w.shape, generator=g) * 0.2)
    return tc


def test_a_decoder_set_to_a_tokens_unembedding_promotes_that_token(lm):
    tc = _plt(lm)
    W_U = lm.W_U.detach().float()
    gain, center = _gain_and_center(lm)
    tok, other = 42, 7
    u = W_U[:, tok] / gain  # through the final norm's gain this is the token's unembedding direction
    if center:  # LayerNorm: a centred direction (the mean is removed before the gain)
        u = u - u.mean()
    with torch.no_grad():
        tc.W_dec[1][5, 0] = u
        tc.W_dec[2][3, 0] = -W_U[:, other] / gain
    eff = logit_effects(lm, tc, 5, k=3, layer=1)
    assert eff.top[0][0] == tok and eff.layer == 1
    assert eff.bottom[0][0] != tok
    down = logit_effects(lm, tc, 3, k=3, layer=2)
    assert down.bottom[0][0] == other  # the most suppressed token
    # the values are the hand computation, for every token
    assert torch.allclose(eff.values, _hand(lm, u), atol=1e-4)
    # a one-layer Transcoder: no layer needed
    one = Transcoder(arch="relu", d_in=lm.d_model, d_sae=8, reads="blocks.1.mlp_in", writes="blocks.1.mlp_out")
    with torch.no_grad():
        one.W_dec[0][2, 0] = u
    assert logit_effects(lm, one, 2, k=1).top[0][0] == tok


def test_a_clt_features_effect_is_its_decoders_to_every_later_layer_summed(lm):
    L = lm.n_layers
    clt = CrossLayerTranscoder(arch="relu", d_in=lm.d_model, d_sae=10, n_layers=L, **layer_points(L))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for w in clt.W_dec:
            w.copy_(torch.randn(w.shape, generator=g) * 0.2)
        clt.out_scale.copy_(torch.tensor([0.5, 2.0, 4.0][:L]))  # decoders are read in the raw space
    f = 4
    for layer in range(L):
        by_hand = sum(clt.W_dec[layer][f, t - layer].float() / clt.out_scale[t] for t in range(layer, L))
        assert torch.allclose(residual_direction(lm, clt, f, layer), by_hand, atol=1e-6)
        eff = logit_effects(lm, clt, f, k=5, layer=layer)
        expect = _hand(lm, by_hand)
        assert torch.allclose(eff.values, expect, atol=1e-4)
        assert [t for t, _, _ in eff.top] == expect.topk(5).indices.tolist()
        assert [t for t, _, _ in eff.bottom] == (-expect).topk(5).indices.tolist()
    # layer 0's feature: not its own decoder alone
    own = logit_effects(lm, clt, f, k=5, layer=0).values
    assert not torch.allclose(own, _hand(lm, clt.W_dec[0][f, 0].float() / clt.out_scale[0]), atol=1e-3)


def test_logit_effects_bad_input():
    lm = tiny_lm("llama")
    clt = CrossLayerTranscoder(arch="relu", d_in=64, d_sae=10, n_layers=3, **layer_points(3))
    with pytest.raises(ValueError, match=r"has 3 layers; give layer= \(0..2\)"):
        logit_effects(lm, clt, 1)
    with pytest.raises(ValueError, match=r"layer=3; allowed: an int in 0..2"):
        logit_effects(lm, clt, 1, layer=3)
    with pytest.raises(ValueError, match="feature"):
        logit_effects(lm, clt, 10, layer=0)
    odd = CrossLayerTranscoder(arch="relu", d_in=64, d_sae=10, n_layers=3, reads=[f"blocks.{l}.mlp_in" for l in range(3)],
                               writes=[f"blocks.{l}.mlp.post" for l in range(3)], d_out=64)
    with pytest.raises(ValueError, match="which the residual stream does not add as they are"):
        logit_effects(lm, odd, 1, layer=0)
    wide = CrossLayerTranscoder(arch="relu", d_in=64, d_sae=10, n_layers=3, d_out=96,
                                reads=[f"blocks.{l}.mlp_in" for l in range(3)],
                                writes=[f"blocks.{l}.mlp.post" for l in range(3)])
    with pytest.raises(ValueError, match="writes d_out=96 but the residual stream has d_model=64"):
        logit_effects(lm, wide, 1, layer=0)


def test_clt_dashboard_pages_show_the_layers_examples_and_logit_effects(tmp_path):
    import html

    from _tiny import tokens
    from avec.dictionaries import dashboard
    from avec.dictionaries.latents import collect_latents
    from test_circuits_attribution import random_clt

    lm = tiny_lm("llama")
    clt = random_clt(lm, d_sae=16, reads="resid_mid")
    x = tokens(lm, batch=4, seq=9, seed=3)
    index = collect_latents(lm, clt, None, x, layer=1)
    ids = index.counts().topk(2).indices.tolist()
    path = dashboard(lm, clt, None, x, ids, tmp_path / "d", k=3, n_logits=4, layer=1)
    assert path.name == "index.html" and "blocks.1.resid_mid" in path.read_text()
    for f in ids:
        page = (tmp_path / "d" / f"feature_{f}.html").read_text()
        want = logit_effects(lm, clt, f, k=4, layer=1)
        for _, s, v in want.top + want.bottom:
            assert f"{v:+.3f}" in page
        assert "every later MLP output, summed" in html.unescape(page)
        fe = index.examples([f], k=3)[f]
        assert f"{fe.density:.3%}" in page and page.count('class="ex"') == len(fe.examples)
    with pytest.raises(ValueError, match="an SAE has one layer"):
        from test_dictionaries_features import random_sae

        dashboard(lm, random_sae(), "blocks.1.resid_post", x, [0], tmp_path / "e", layer=1)
