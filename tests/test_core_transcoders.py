"""Dictionaries that read one hook point and write another (transcoders), and cross-layer ones (CLTs):
latents at the point read, recon / error at the point written; splicing with the error term is exact;
a perfect stand-in spliced alone reproduces the model; latent edits reach exactly the reconstructions
they decode to and nothing upstream; hooks never leak."""

import pytest
import torch
from torch import nn

from _tiny import tiny_lm, tokens
from avec import Patch, SetValue, StopGradient, Zero
from test_core import no_hooks_left

NON_GEMMA = ["llama", "qwen2", "gpt2"]


class RandomTranscoder(nn.Module):
    """A ReLU transcoder with random weights and a skip connection."""

    def __init__(self, d_in=64, d_sae=48, d_out=64, seed=0, skip=True):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.d_in, self.d_sae, self.d_out = d_in, d_sae, d_out
        self.W_enc = nn.Parameter(torch.randn(d_in, d_sae, generator=g) / d_in ** 0.5)
        self.b_enc = nn.Parameter(torch.randn(d_sae, generator=g) * 0.1)
        self.W_dec = nn.Parameter(torch.randn(d_sae, d_out, generator=g) / d_sae ** 0.5)
        self.b_dec = nn.Parameter(torch.randn(d_out, generator=g) * 0.1)
        self.W_skip = nn.Parameter(torch.randn(d_out, d_in, generator=g) * 0.05) if skip else None

    def encode(self, x):
        return torch.relu(x @ self.W_enc + self.b_enc)

    def decode(self, z):
        return z @ self.W_dec + self.b_dec

    def skip(self, x):
        return None if self.W_skip is None else x @ self.W_skip.T


class PerfectTranscoder(nn.Module):
    """The MLP itself as a transcoder: latents are its neurons (read at mlp_in), the decoder its down
    projection. Exact for families without a post-MLP norm."""

    def __init__(self, lm, layer):
        super().__init__()
        mlp = lm.get_module(f"{lm.arch.layers}.{layer}.mlp")
        self.mlp = mlp
        self.d_in = self.d_out = lm.d_model
        self.d_sae = lm.d_mlp
        self.gpt2 = lm.arch.family == "gpt2"

    def encode(self, x):
        if self.gpt2:
            return self.mlp.act(self.mlp.c_fc(x))
        return self.mlp.act_fn(self.mlp.gate_proj(x)) * self.mlp.up_proj(x)

    def decode(self, z):
        return self.mlp.c_proj(z) if self.gpt2 else self.mlp.down_proj(z)


class RandomCLT(nn.Module):
    """A ReLU cross-layer transcoder with random weights: layer l's features decode to layers l..L-1."""

    def __init__(self, n_layers=3, d=64, d_sae=32, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.n_layers, self.d_in, self.d_sae, self.d_out = n_layers, d, d_sae, d
        self.W_enc = nn.Parameter(torch.randn(n_layers, d, d_sae, generator=g) / d ** 0.5)
        self.b_enc = nn.Parameter(torch.randn(n_layers, d_sae, generator=g) * 0.1)
        self.W_dec = nn.ParameterList([nn.Parameter(torch.randn(d_sae, n_layers - l, d, generator=g) / d_sae ** 0.5)
                                       for l in range(n_layers)])
        self.b_dec = nn.Parameter(torch.randn(n_layers, d, generator=g) * 0.1)

    def encode_layer(self, x, l):
        return torch.relu(x @ self.W_enc[l] + self.b_enc[l])

    def decode_layer(self, zs, l):
        return sum(z @ self.W_dec[i][:, l - i] for i, z in enumerate(zs)) + self.b_dec[l]


class PerfectCLT(nn.Module):
    """Every layer's MLP as a CLT whose cross-layer decoders are zero (reads mlp_in)."""

    def __init__(self, lm):
        super().__init__()
        self.layers = nn.ModuleList([PerfectTranscoder(lm, l) for l in range(lm.n_layers)])
        self.n_layers, self.d_in, self.d_out, self.d_sae = lm.n_layers, lm.d_model, lm.d_model, lm.d_mlp

    def encode_layer(self, x, l):
        return self.layers[l].encode(x)

    def decode_layer(self, zs, l):
        return self.layers[l].decode(zs[l])


@pytest.fixture()
def lm():
    return tiny_lm("llama")


def test_transcoder_points_live_at_the_points_read_and_written(lm):
    before = list(lm.hook_points)
    with lm.dictionary(RandomTranscoder(), at="blocks.1.resid_mid", writes="blocks.1.mlp_out") as d:
        names = lm.hook_points
        assert d.name == "tc" and d.reads == ("blocks.1.resid_mid",) and d.writes == ("blocks.1.mlp_out",)
        i, j = names.index("blocks.1.resid_mid"), names.index("blocks.1.mlp_out")
        assert names[i + 1] == "blocks.1.resid_mid.tc.latents"
        assert names[j + 1:j + 3] == ["blocks.1.mlp_out.tc.recon", "blocks.1.mlp_out.tc.error"]
        assert lm.site("blocks.1.resid_mid.tc.latents").width == (48,)
    assert lm.hook_points == before


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt2"])
def test_transcoder_splice_with_error_is_exact_and_parts_are_what_they_say(family):
    lm = tiny_lm(family)
    x = tokens(lm, batch=2, seq=6)
    clean = lm.run(x, cache=["blocks.1.resid_mid", "blocks.1.mlp_out"])
    tc = RandomTranscoder(d_in=lm.d_model, d_out=lm.d_model)
    parts = ["blocks.1.resid_mid.tc.latents", "blocks.1.mlp_out.tc.recon", "blocks.1.mlp_out.tc.error"]
    with lm.dictionary(tc, at="blocks.1.resid_mid", writes="blocks.1.mlp_out"):
        run = lm.run(x, cache=parts + ["blocks.2.resid_pre"])
    assert torch.equal(run.logits, clean.logits)  # bit for bit
    with torch.no_grad():
        z = tc.encode(clean.cache["blocks.1.resid_mid"])
        assert torch.allclose(run.cache[parts[0]], z, atol=1e-6)
        assert torch.allclose(run.cache[parts[1]], tc.decode(z) + tc.skip(clean.cache["blocks.1.resid_mid"]), atol=1e-6)
    assert torch.allclose(run.cache[parts[1]] + run.cache[parts[2]], clean.cache["blocks.1.mlp_out"], atol=1e-6)


@pytest.mark.parametrize("family", NON_GEMMA)
def test_a_perfect_transcoder_spliced_alone_reproduces_the_model(family):
    lm = tiny_lm(family)
    x = tokens(lm, batch=2, seq=6)
    clean = lm.run(x)
    with lm.dictionary(PerfectTranscoder(lm, 1), at="blocks.1.mlp_in", writes="blocks.1.mlp_out", splice="recon"):
        spliced = lm.run(x, cache=["blocks.1.mlp_out.tc.error"])
    assert torch.equal(spliced.logits, clean.logits)  # the same operations: bit for bit
    assert spliced.cache["blocks.1.mlp_out.tc.error"].abs().max() < 1e-6
    # and an imperfect one does change the output
    with lm.dictionary(RandomTranscoder(skip=False), at="blocks.1.mlp_in", writes="blocks.1.mlp_out", splice="recon"):
        assert not torch.allclose(lm.run(x).logits, clean.logits, atol=1e-3)


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_clt_splice_with_error_is_exact_and_every_layer_reconstructs(family):
    lm = tiny_lm(family)
    x = tokens(lm, batch=2, seq=6)
    clean = lm.run(x, cache=["blocks.*.resid_mid", "blocks.*.mlp_out"])
    clt = RandomCLT(n_layers=lm.n_layers, d=lm.d_model)
    with lm.dictionary(clt, at="blocks.*.resid_mid", writes="blocks.*.mlp_out") as d:
        assert d.name == "clt" and len(d.points()) == 3 * lm.n_layers
        run = lm.run(x, cache=["blocks.*.resid_mid.clt.latents", "blocks.*.mlp_out.clt.*"])
    assert torch.equal(run.logits, clean.logits)
    with torch.no_grad():
        zs = [clt.encode_layer(clean.cache[f"blocks.{l}.resid_mid"], l) for l in range(lm.n_layers)]
        for l in range(lm.n_layers):
            c = run.cache
            assert torch.allclose(c[f"blocks.{l}.resid_mid.clt.latents"], zs[l], atol=1e-6)
            # target l is decoded from the features of every layer up to l
            assert torch.allclose(c[f"blocks.{l}.mlp_out.clt.recon"], clt.decode_layer(zs[:l + 1], l), atol=1e-5)
            assert torch.allclose(c[f"blocks.{l}.mlp_out.clt.recon"] + c[f"blocks.{l}.mlp_out.clt.error"],
                                  clean.cache[f"blocks.{l}.mlp_out"], atol=1e-5)


@pytest.mark.parametrize("family", NON_GEMMA)
def test_a_perfect_clt_spliced_alone_reproduces_the_model(family):
    lm = tiny_lm(family)
    x = tokens(lm, batch=2, seq=6)
    with lm.dictionary(PerfectCLT(lm), at="blocks.*.mlp_in", writes="blocks.*.mlp_out", splice="recon"):
        spliced = lm.run(x)
    assert torch.equal(spliced.logits, lm.run(x).logits)


def test_zeroing_a_clt_latent_moves_exactly_its_decoder_contributions(lm):
    x = tokens(lm, batch=1, seq=6)
    clt = RandomCLT()
    cached = ["blocks.*.resid_mid", "blocks.*.mlp_out", "blocks.*.resid_post", "blocks.*.resid_mid.clt.latents",
              "blocks.*.mlp_out.clt.recon"]
    with lm.dictionary(clt, at="blocks.*.resid_mid", writes="blocks.*.mlp_out"):
        clean = lm.run(x, cache=cached)
        lat1 = clean.cache["blocks.1.resid_mid.clt.latents"]
        f = int(lat1[0, -1].argmax())  # an active layer-1 feature at the last token
        a = float(lat1[0, -1, f])
        assert a > 0
        mask = torch.zeros(clt.d_sae, dtype=torch.bool)
        mask[f] = True
        off = SetValue("blocks.1.resid_mid.clt.latents", torch.where(mask, 0.0, lat1[0, -1]), positions=-1)
        # later layers' latents held at their clean values isolate the decoder contributions
        held = Patch("blocks.2.resid_mid.clt.latents", source=clean)
        edited = lm.run(x, cache=cached, interventions=[off, held])
    c0, c1 = clean.cache, edited.cache
    # exactly the decoder contribution added by layer 1's MLP output (the MLP read an unchanged input:
    # a write point's own cached value is the model's, before the splice)
    assert torch.equal(c1["blocks.1.mlp_out"], c0["blocks.1.mlp_out"])
    delta = c1["blocks.1.resid_post"] - c0["blocks.1.resid_post"]
    assert torch.allclose(delta[0, -1], -a * clt.W_dec[1][f, 0].detach(), atol=1e-5)
    assert delta[0, :-1].abs().max() == 0
    # and at every later target's reconstruction
    recon_delta = c1["blocks.2.mlp_out.clt.recon"] - c0["blocks.2.mlp_out.clt.recon"]
    assert torch.allclose(recon_delta[0, -1], -a * clt.W_dec[1][f, 1].detach(), atol=1e-5)
    # nothing before the edited layer's output moves
    for name in ("blocks.0.resid_mid", "blocks.0.mlp_out", "blocks.1.resid_mid", "blocks.0.resid_mid.clt.latents",
                 "blocks.0.mlp_out.clt.recon"):
        assert torch.equal(c1[name], c0[name]), name
    # while later values do move (the edit flows downstream)
    assert not torch.equal(c1["blocks.2.resid_mid"], c0["blocks.2.resid_mid"])


def test_transcoder_latent_zeroed_equals_subtracting_its_decoder_row(lm):
    x = tokens(lm, batch=2, seq=6)
    tc = RandomTranscoder()
    with lm.dictionary(tc, at="blocks.1.resid_mid", writes="blocks.1.mlp_out"):
        lat = lm.run(x, cache=["blocks.1.resid_mid.tc.latents"]).cache["blocks.1.resid_mid.tc.latents"]
        ablated = lm.run(x, interventions=[Zero("blocks.1.resid_mid.tc.latents", positions=-1)])
    with torch.no_grad():
        delta = torch.zeros(2, 6, lm.d_model)
        delta[:, -1] = -(lat[:, -1] @ tc.W_dec)
        out = lm.run(x, cache=["blocks.1.mlp_out"]).cache["blocks.1.mlp_out"]
        want = lm.run(x, interventions=[Patch("blocks.1.mlp_out", source=out + delta)])
    assert torch.allclose(ablated.logits, want.logits, atol=1e-5)


def test_gradients_skip_the_replaced_mlp_and_flow_through_the_latents(lm):
    x = tokens(lm, batch=1, seq=6)
    tc = RandomTranscoder()
    metric = lambda run: run.logits[0, -1, 3] - run.logits[0, -1, 7]  # noqa: E731
    names = ["blocks.1.mlp.post", "blocks.1.resid_mid.tc.latents", "blocks.1.mlp_out.tc.recon",
             "blocks.1.mlp_out.tc.error"]
    with lm.dictionary(tc, at="blocks.1.resid_mid", writes="blocks.1.mlp_out"):
        g = lm.run(x, cache=names, grad=True, metric=metric).grads
    assert g["blocks.1.mlp.post"].abs().max() == 0  # the MLP is replaced by the transcoder + a constant
    assert torch.allclose(g["blocks.1.mlp_out.tc.recon"], g["blocks.1.mlp_out.tc.error"], atol=1e-6)
    assert torch.allclose(g["blocks.1.resid_mid.tc.latents"], g["blocks.1.mlp_out.tc.recon"] @ tc.W_dec.detach().T,
                          atol=1e-5)
    assert g["blocks.1.resid_mid.tc.latents"].abs().sum() > 0
    plain = lm.run(x, cache=["blocks.1.mlp.post"], grad=True, metric=metric).grads
    assert plain["blocks.1.mlp.post"].abs().sum() > 0


def test_clt_gradients_reach_latents_through_every_decoder(lm):
    x = tokens(lm, batch=1, seq=5)
    clt = RandomCLT()
    metric = lambda run: run.logits[0, -1].logsumexp(-1)  # noqa: E731
    with lm.dictionary(clt, at="blocks.*.resid_mid", writes="blocks.*.mlp_out"):
        run = lm.run(x, cache=["blocks.0.resid_mid.clt.latents", "blocks.*.mlp_out.clt.recon"], grad=True,
                     metric=metric)
    g = run.grads
    # layer 0's features act on the output only through their decoders, to every target
    assert all(g[f"blocks.{j}.mlp_out.clt.recon"].abs().sum() > 0 for j in range(3))
    want = sum(g[f"blocks.{j}.mlp_out.clt.recon"] @ clt.W_dec[0][:, j].detach().T for j in range(3))
    assert torch.allclose(g["blocks.0.resid_mid.clt.latents"], want, atol=1e-5)


def test_generation_with_a_spliced_clt_and_no_leaks(lm):
    ids = tokens(lm, batch=1, seq=5)
    plain = lm.hf.generate(input_ids=ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    with lm.dictionary(RandomCLT(), at="blocks.*.resid_mid", writes="blocks.*.mlp_out"), \
            lm.intervene(Zero("blocks.0.resid_mid.clt.latents", positions=0)):
        edited = lm.hf.generate(input_ids=ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    with lm.dictionary(RandomCLT(), at="blocks.*.resid_mid", writes="blocks.*.mlp_out"), lm.intervene():
        same = lm.hf.generate(input_ids=ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(plain, same) and edited.shape == plain.shape
    before = list(lm.hook_points)
    with pytest.raises(RuntimeError, match="boom"):
        with lm.dictionary(RandomCLT(), at="blocks.*.resid_mid", writes="blocks.*.mlp_out"):
            raise RuntimeError("boom")
    assert lm.dictionaries == [] and lm.hook_points == before and no_hooks_left(lm.module)


def test_a_run_started_part_way_cannot_reconstruct_from_layers_it_skipped(lm):
    x = tokens(lm, batch=1, seq=5)
    resid = lm.run(x, cache=["blocks.1.resid_pre"]).cache["blocks.1.resid_pre"]
    with lm.dictionary(RandomCLT(), at="blocks.*.resid_mid", writes="blocks.*.mlp_out"):
        ok = lm.run(x, cache=["blocks.2.resid_mid.clt.latents"], start_at_layer=1, start_resid=resid)
        assert ok.cache["blocks.2.resid_mid.clt.latents"].shape == (1, 5, 32)
        with pytest.raises(RuntimeError, match="not compute"):
            lm.run(x, cache=["blocks.2.mlp_out.clt.recon"], start_at_layer=1, start_resid=resid)
    assert no_hooks_left(lm.module)


def test_bad_transcoders_are_refused(lm):
    with pytest.raises(ValueError, match="d_in=32 but hook point 'blocks.1.resid_mid' has width 64"):
        lm.add_dictionary(RandomTranscoder(d_in=32), at="blocks.1.resid_mid", writes="blocks.1.mlp_out")
    with pytest.raises(ValueError, match="writes d_out=32 but hook point 'blocks.1.mlp_out' has width 64"):
        lm.add_dictionary(RandomTranscoder(d_out=32), at="blocks.1.resid_mid", writes="blocks.1.mlp_out")
    with pytest.raises(ValueError, match="comes after 'blocks.0.mlp_out'"):
        lm.add_dictionary(RandomTranscoder(), at="blocks.1.resid_mid", writes="blocks.0.mlp_out")
    with pytest.raises(ValueError, match="reads one hook point and writes one"):
        lm.add_dictionary(RandomTranscoder(), at="blocks.*.resid_mid", writes="blocks.1.mlp_out")
    with pytest.raises(ValueError, match="has 3 layers: give 3 read points"):
        lm.add_dictionary(RandomCLT(), at="blocks.1.resid_mid", writes="blocks.*.mlp_out")
    with pytest.raises(ValueError, match="comes after"):  # layers given out of order: encoder 2 before target 0
        lm.add_dictionary(RandomCLT(), at=["blocks.2.resid_mid", "blocks.1.resid_mid", "blocks.0.resid_mid"],
                          writes="blocks.*.mlp_out")
    with pytest.raises(ValueError, match="at=..."):
        lm.add_dictionary(RandomTranscoder())
    lm.add_dictionary(RandomCLT(), at="blocks.*.resid_mid", writes="blocks.*.mlp_out")
    with pytest.raises(ValueError, match="already attached"):
        lm.add_dictionary(RandomCLT(), at="blocks.*.resid_mid", writes="blocks.*.mlp_out")
    assert [d.name for d in lm.dictionaries] == ["clt"]
    lm.remove_dictionary(lm.dictionaries[0])
    assert not any(".clt." in n for n in lm.hook_points)


def test_stopping_gradients_at_every_latents_point_gives_direct_effects(lm):
    """What attribution graphs build on: with StopGradient at every layer's latents, the gradient at layer
    0's latents is their direct effect, i.e. the gradient when every later layer's features are held at
    their values (patched in as constants); without it, paths through layer 1's features add to it."""
    x = tokens(lm, batch=1, seq=5)
    clt = RandomCLT()
    lat = [f"blocks.{l}.resid_mid.clt.latents" for l in range(3)]

    def metric(run):  # a layer-2 feature's pre-activation, from the live cache
        return (run.cache["blocks.2.resid_mid"][0, -1] @ clt.W_enc[2] + clt.b_enc[2])[5]

    with lm.dictionary(clt, at="blocks.*.resid_mid", writes="blocks.*.mlp_out"):
        clean = lm.run(x, cache=lat)
        common = dict(cache=[lat[0], "blocks.2.resid_mid"], grad=True, metric=metric, freeze=["norms", "attention"])
        stopped = lm.run(x, interventions=[StopGradient(p) for p in lat], **common)
        held = lm.run(x, interventions=[Patch(lat[1], source=clean), Patch(lat[2], source=clean)], **common)
        full = lm.run(x, **common)
    g_stop, g_held, g_full = (r.grads[lat[0]] for r in (stopped, held, full))
    assert torch.allclose(g_stop, g_held, atol=1e-6) and g_stop.abs().sum() > 0
    assert not torch.allclose(g_stop, g_full, atol=1e-6)
    assert torch.equal(stopped.logits, full.logits)


def test_latents_held_by_stop_gradient_are_decoded_once(lm, monkeypatch):
    """StopGradient leaves a latents point's values as they are: the run decodes each source layer once
    (not once for the encoded values and again for the 'edited' ones), and its output and gradients are
    those of a run that decodes twice; a real edit is decoded on its own."""
    from avec.dictionaries.clt import CrossLayerTranscoder, layer_points

    torch.manual_seed(0)
    clt = CrossLayerTranscoder(arch="topk", k=4, d_in=64, d_sae=32, n_layers=3, **layer_points(3, reads="resid_mid"))
    lat = [f"blocks.{l}.resid_mid.clt.latents" for l in range(3)]
    err = [f"blocks.{l}.mlp_out.clt.error" for l in range(3)]
    x = tokens(lm, batch=1, seq=5)
    calls = []
    real = CrossLayerTranscoder.decode_targets
    monkeypatch.setattr(CrossLayerTranscoder, "decode_targets", lambda self, z, i: calls.append(i) or real(self, z, i))
    metric = lambda run: run.logits[0, -1].logsumexp(-1)  # noqa: E731
    common = dict(cache=["blocks.0.resid_pre", *err], grad=True, metric=metric, freeze=["norms", "attention"])
    with lm.dictionary(clt):
        stopped = lm.run(x, interventions=[StopGradient(p) for p in lat], **common)
        assert sorted(calls) == [0, 1, 2]
        calls.clear()
        clean = lm.run(x, cache=lat)  # reading latents runs the encoders only
        assert calls == []
        # the same held values as separate tensors: decoded again, the same result
        copied = lm.run(x, interventions=[StopGradient(p) for p in lat] + [Patch(p, source=clean) for p in lat],
                        **common)
        assert sorted(calls) == [0, 0, 1, 1, 2, 2]  # the encoded values and the copies
    torch.testing.assert_close(stopped.logits, copied.logits, rtol=0, atol=0)
    for p in common["cache"]:
        torch.testing.assert_close(stopped.grads[p], copied.grads[p])
    assert no_hooks_left(lm.module)
