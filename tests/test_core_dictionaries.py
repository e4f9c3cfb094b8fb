"""Dictionaries attached at a hook point: their latents, reconstruction and error are hook points of
their own; splicing with the error term changes nothing; edits there act like the equivalent edit of
the hook point itself. Gradients can be read there and stopped anywhere."""

import pytest
import torch
from torch import nn

from _tiny import tiny_lm, tokens
from avec import AddVector, Patch, StopGradient, UnknownHookPoint, Zero
from test_core import no_hooks_left

AT = "blocks.1.resid_post"
P = f"{AT}.sae"


class TinySAE(nn.Module):
    """A ReLU SAE with random weights (a dictionary needs encode / decode and d_in / d_sae)."""

    def __init__(self, d_in=64, d_sae=96, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.d_in, self.d_sae = d_in, d_sae
        self.W_enc = nn.Parameter(torch.randn(d_in, d_sae, generator=g) / d_in ** 0.5)
        self.b_enc = nn.Parameter(torch.randn(d_sae, generator=g) * 0.1)
        self.W_dec = nn.Parameter(torch.randn(d_sae, d_in, generator=g) / d_sae ** 0.5)
        self.b_dec = nn.Parameter(torch.randn(d_in, generator=g) * 0.1)

    def encode(self, x):
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def decode(self, z):
        return z @ self.W_dec + self.b_dec


@pytest.fixture()
def lm():
    return tiny_lm("llama")


def test_points_appear_after_the_parent_and_go_away(lm):
    sae = TinySAE()
    before = list(lm.hook_points)
    with lm.dictionary(sae, AT) as d:
        names = lm.hook_points
        i = names.index(AT)
        assert names[i + 1:i + 4] == [f"{P}.latents", f"{P}.recon", f"{P}.error"]
        assert lm.site(f"{P}.latents").width == (96,) and d.prefix == P
        assert lm.resolve(f"{AT}.*.latents") == [f"{P}.latents"]
    assert lm.hook_points == before
    with pytest.raises(UnknownHookPoint):
        lm.run(tokens(lm), cache=[f"{P}.latents"])
    assert no_hooks_left(lm.module)


def test_splicing_with_the_error_term_is_exact_and_caches_are_what_they_say(lm):
    x = tokens(lm, batch=2, seq=6)
    clean = lm.run(x, cache=[AT])
    sae = TinySAE()
    with lm.dictionary(sae, AT):
        run = lm.run(x, cache=[AT, f"{P}.latents", f"{P}.recon", f"{P}.error"])
    assert torch.equal(run.logits, clean.logits)  # bit for bit
    resid = clean.cache[AT]
    with torch.no_grad():
        assert torch.allclose(run.cache[f"{P}.latents"], sae.encode(resid), atol=1e-6)
        assert torch.allclose(run.cache[f"{P}.recon"], sae.decode(sae.encode(resid)), atol=1e-6)
    assert torch.allclose(run.cache[f"{P}.recon"] + run.cache[f"{P}.error"], resid, atol=1e-6)


@pytest.mark.parametrize("at, width", [(AT, 64), ("blocks.1.resid_mid", 64), ("blocks.0.mlp_out", 64),
                                       ("blocks.2.mlp.post", 96), ("embed", 64)])
def test_splicing_the_reconstruction_alone_equals_patching_it_in(lm, at, width):
    x = tokens(lm, batch=2, seq=6)
    sae = TinySAE(d_in=width)
    resid = lm.run(x, cache=[at]).cache[at]
    with torch.no_grad():
        recon = sae.decode(sae.encode(resid))
    patched = lm.run(x, interventions=[Patch(at, source=recon)])
    with lm.dictionary(sae, at, splice="recon"):
        spliced = lm.run(x)
    assert torch.allclose(spliced.logits, patched.logits, atol=1e-5)
    assert not torch.allclose(spliced.logits, lm.run(x).logits, atol=1e-3)  # the SAE is not perfect


def test_latent_edits_equal_the_matching_edit_of_the_hook_point(lm):
    x = tokens(lm, batch=2, seq=6)
    sae = TinySAE()
    with lm.dictionary(sae, AT):
        lat = lm.run(x, cache=[f"{P}.latents"]).cache[f"{P}.latents"]
        i = int(lat[:, -1].sum(0).argmax())  # a latent active at the last position
        ablated = lm.run(x, interventions=[Zero(f"{P}.latents", positions=-1)], cache=[AT, "blocks.0.resid_post"])
        one_hot = torch.zeros(sae.d_sae)
        one_hot[i] = 1.0
        steered = lm.run(x, interventions=[AddVector(f"{P}.latents", one_hot, coeff=3.0, positions=-1)])
        clamped = lm.run(x, interventions=[Zero(f"{P}.latents", positions=-1), Zero(f"{P}.error", positions=-1)])
    with torch.no_grad():
        # zeroing every latent at the last token, error kept: the value there becomes b_dec + error
        delta = torch.zeros(2, 6, lm.d_model)
        delta[:, -1] = -(lat[:, -1] @ sae.W_dec)
        resid = lm.run(x, cache=[AT]).cache[AT]
        want = lm.run(x, interventions=[Patch(AT, source=resid + delta)])
        assert torch.allclose(ablated.logits, want.logits, atol=1e-5)
        # a latent's decoder row, 3 times, added to the hook point at the last token
        manual = lm.run(x, interventions=[AddVector(AT, 3.0 * sae.W_dec[i], positions=-1)])
        assert torch.allclose(steered.logits, manual.logits, atol=1e-5)
        # latents and error both zeroed: only the decoder bias is left
        last_only = torch.arange(6)[None, :, None] == 5
        bias_only = lm.run(x, interventions=[Patch(AT, source=torch.where(last_only, sae.b_dec.expand(2, 6, -1), resid))])
        assert torch.allclose(clamped.logits, bias_only.logits, atol=1e-5)
    # nothing before the dictionary's layer moves
    base = lm.run(x, cache=["blocks.0.resid_post"]).cache["blocks.0.resid_post"]
    assert torch.equal(ablated.cache["blocks.0.resid_post"], base)


def test_latents_patch_from_another_run_and_a_self_patch_changes_nothing(lm):
    x, y = tokens(lm, batch=1, seq=6, seed=1), tokens(lm, batch=1, seq=6, seed=2)
    sae = TinySAE()
    with lm.dictionary(sae, AT):
        own = lm.run(x, cache=[f"{P}.latents"])
        other = lm.run(y, cache=[f"{P}.latents"])
        same = lm.run(x, interventions=[Patch(f"{P}.latents", source=own)])
        swapped = lm.run(x, interventions=[Patch(f"{P}.latents", source=other)], cache=[f"{P}.recon"])
    assert torch.allclose(same.logits, lm.run(x).logits, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(swapped.cache[f"{P}.recon"], sae.decode(other.cache[f"{P}.latents"]), atol=1e-6)


def test_generation_through_a_spliced_dictionary_and_no_leaks(lm):
    ids = tokens(lm, batch=1, seq=5)
    sae = TinySAE()
    plain = lm.hf.generate(input_ids=ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    with lm.dictionary(sae, AT), lm.intervene():
        same = lm.hf.generate(input_ids=ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(plain, same)
    with pytest.raises(RuntimeError, match="boom"):
        with lm.dictionary(sae, AT):
            raise RuntimeError("boom")
    assert lm.dictionaries == [] and no_hooks_left(lm.module)


def test_bad_dictionaries_are_refused(lm):
    with pytest.raises(ValueError, match="d_in=32 but hook point 'blocks.1.resid_post' has width 64"):
        lm.add_dictionary(TinySAE(d_in=32), AT)
    with pytest.raises(TypeError, match="needs methods encode"):
        lm.add_dictionary(nn.Linear(64, 64), AT)
    with pytest.raises(ValueError, match="splice="):
        lm.add_dictionary(TinySAE(), AT, splice="both")
    with pytest.raises(ValueError, match=r"\[batch, pos, d\] value"):
        lm.add_dictionary(TinySAE(d_in=16), "blocks.1.attn.z")
    lm.add_dictionary(TinySAE(), AT)
    with pytest.raises(ValueError, match="already attached"):
        lm.add_dictionary(TinySAE(), AT)
    with pytest.raises(ValueError, match="width"):
        lm.run(tokens(lm), interventions=[AddVector(f"{P}.latents", torch.ones(64))])
    lm.remove_dictionary(P)
    with pytest.raises(KeyError, match="no dictionary"):
        lm.remove_dictionary(P)


def test_gradients_at_dictionary_points_and_stopped_gradients(lm):
    x = tokens(lm, batch=1, seq=6)
    sae = TinySAE()
    last = lambda run: run.logits[0, -1, 3] - run.logits[0, -1, 7]  # noqa: E731
    with lm.dictionary(sae, AT):
        run = lm.run(x, cache=[f"{P}.latents", f"{P}.recon", f"{P}.error"], grad=True, metric=last)
    g = run.grads
    # the output is recon + error, and recon is linear in the latents
    assert torch.allclose(g[f"{P}.recon"], g[f"{P}.error"], atol=1e-6)
    assert torch.allclose(g[f"{P}.latents"], g[f"{P}.recon"] @ sae.W_dec.detach().T, atol=1e-5)
    assert g[f"{P}.recon"].abs().sum() > 0
    plain = lm.run(x, cache=["embed"], grad=True, metric=last)
    assert plain.grads["embed"].abs().sum() > 0
    stopped = lm.run(x, cache=["embed"], grad=True, metric=last, interventions=[StopGradient("blocks.1.resid_pre")])
    assert torch.equal(stopped.logits, plain.logits)  # values untouched
    assert stopped.grads["embed"].abs().sum() == 0  # nothing flows back past layer 1's input
    partial = lm.run(x, cache=["embed"], grad=True, metric=last,
                     interventions=[StopGradient("blocks.1.resid_pre", positions=-1)])
    assert partial.grads["embed"][0, -1].abs().sum() < plain.grads["embed"][0, -1].abs().sum()
