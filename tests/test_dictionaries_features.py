"""SAELens files, feature interventions, logit effects, feature filters, top examples, dashboards and
probes over feature activations. Tiny random models where no tokenizer is needed; SmolLM2 for text."""

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from _tiny import tiny_lm, tokens
from avec import AddVector, Patch
from avec.dictionaries import features as F
from avec.dictionaries.dashboard import dashboard, write_dashboard
from avec.dictionaries.sae import SAE
from avec.dictionaries.saelens_io import SAELensFormatError, load_saelens, read_config, save_saelens

AT = "blocks.1.resid_post"
D, W = 64, 96


def random_sae(arch="relu", d_in=D, d_sae=W, seed=0, hook=AT, k=None):
    """An avec SAE with random weights, biased so that features fire."""
    sae = SAE(arch=arch, d_in=d_in, d_sae=d_sae, hook=hook, normalise="none",
              k=k if k is not None else (8 if "topk" in arch else None))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) / d_in ** 0.5)
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=g) / d_sae ** 0.5)
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.1 + 0.05)
        sae.b_dec.copy_(torch.randn(d_in, generator=g) * 0.1)
        if arch == "jumprelu":
            sae.threshold.copy_(torch.rand(d_sae, generator=g) * 0.2)
        if arch == "batchtopk":
            sae.threshold.fill_(0.05)
    return sae


@pytest.fixture(scope="module")
def lm():
    return tiny_lm("llama")


# ============================================================================ SAELens files
@pytest.mark.parametrize("arch, saved_as", [("relu", "standard"), ("jumprelu", "jumprelu"), ("topk", "topk"),
                                            ("batchtopk", "jumprelu")])
def test_saelens_round_trip_keeps_encode_and_decode(tmp_path, arch, saved_as):
    sae = random_sae(arch)
    with torch.no_grad():
        sae.input_scale.fill_(1.7)  # folded into the written weights
    folder = save_saelens(sae, tmp_path / "sae", model_name="tiny-llama")
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == saved_as and cfg["d_in"] == D and cfg["d_sae"] == W
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post" and cfg["metadata"]["model_name"] == "tiny-llama"
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    back = load_saelens(folder)
    assert back.cfg.hook == AT and back.cfg.arch == ("jumprelu" if arch == "batchtopk" else arch)
    x = torch.randn(50, D) * 2
    with torch.no_grad():
        z, zb = sae.encode(x), back.encode(x)
        assert (z > 0).any() and torch.equal(z > 0, zb > 0)
        assert torch.allclose(z, zb, atol=1e-5) and torch.allclose(sae(x), back(x), atol=1e-5)


def _saelens_reference(t, cfg, x):
    """SAELens's own forward, written out from its source (encode then decode)."""
    sae_in = x - t["b_dec"] * cfg.get("apply_b_dec_to_input", True)
    pre = sae_in @ t["W_enc"] + t["b_enc"]
    if cfg["architecture"] == "jumprelu":
        z = torch.relu(pre) * (pre > t["threshold"])
    elif cfg["architecture"] == "topk":
        if cfg.get("rescale_acts_by_decoder_norm"):
            pre = pre * t["W_dec"].norm(dim=-1)
        v, i = pre.topk(cfg["k"], dim=-1)
        z = torch.zeros_like(pre).scatter(-1, i, torch.relu(v))
    else:
        z = torch.relu(pre)
    W_dec = t["W_dec"] / t["W_dec"].norm(dim=-1, keepdim=True) if cfg.get("rescale_acts_by_decoder_norm") else t["W_dec"]
    return z, z @ W_dec + t["b_dec"]


def _write_folder(folder, cfg, tensors):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "sae_weights.safetensors"))
    return folder


def _tensors(arch, d_in=D, d_sae=W, seed=3):
    g = torch.Generator().manual_seed(seed)
    t = {"W_enc": torch.randn(d_in, d_sae, generator=g) / 8, "b_enc": torch.randn(d_sae, generator=g) * 0.1,
         "W_dec": torch.randn(d_sae, d_in, generator=g) * (torch.rand(d_sae, 1, generator=g) + 0.5) / 8,
         "b_dec": torch.randn(d_in, generator=g) * 0.1}
    if arch == "jumprelu":
        t["threshold"] = torch.rand(d_sae, generator=g) * 0.2
    return t


# cfg.json as SAELens 6.x writes it (layout copied from a file SAE.save_model wrote), and a pre-6 one
V6 = {"d_in": D, "d_sae": W, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": False,
      "normalize_activations": "none", "reshape_activations": "none",
      "metadata": {"sae_lens_version": "6.54.12", "sae_lens_training_version": "6.54.12",
                   "hook_name": "blocks.1.hook_resid_post", "model_name": "tiny"}}
PRE6_TOPK = {"architecture": "standard", "d_in": D, "d_sae": W, "dtype": "torch.float32", "model_name": "tiny",
             "hook_point": "blocks.1.hook_resid_post", "hook_point_layer": 1, "activation_fn_str": "topk",
             "activation_fn_kwargs": {"k": 5}, "normalize_activations": False, "apply_b_dec_to_input": True,
             "sae_lens_training_version": "3.13.0"}


@pytest.mark.parametrize("cfg", [
    dict(V6, architecture="standard"),
    dict(V6, architecture="jumprelu"),
    dict(V6, architecture="topk", k=7, rescale_acts_by_decoder_norm=True, apply_b_dec_to_input=True),
    PRE6_TOPK,
], ids=["v6-standard-no-bdec-in", "v6-jumprelu", "v6-topk-rescaled", "pre6-topk"])
def test_handwritten_saelens_folders_load_and_compute_what_saelens_computes(tmp_path, cfg):
    arch = "topk" if cfg is PRE6_TOPK else cfg["architecture"]
    t = _tensors(arch)
    folder = _write_folder(tmp_path / "sl", cfg, t)
    sae = load_saelens(folder)
    assert sae.cfg.hook == AT and sae.cfg.arch == {"standard": "relu"}.get(arch, arch)
    x = torch.randn(40, D)
    want_z, want_x = _saelens_reference(t, dict(cfg, architecture=arch, k=cfg.get("k", 5)), x)
    with torch.no_grad():
        z = sae.encode(x)
        assert torch.equal(z > 0, want_z > 0) and (z > 0).any()
        # the decoder-norm rescaling is folded: latents differ by ||W_dec_i|| only then
        assert torch.allclose(z, want_z, atol=1e-5)
        assert torch.allclose(sae.decode(z), want_x, atol=1e-5)
    assert sae.saelens_config == cfg


def test_expected_average_normalisation_needs_its_factor(tmp_path):
    t = _tensors("standard")
    folder = _write_folder(tmp_path / "sl", dict(V6, architecture="standard", apply_b_dec_to_input=True,
                                                  normalize_activations="expected_average_only_in"), t)
    with pytest.raises(SAELensFormatError, match="norm_scaling_factor"):
        load_saelens(folder)
    sae = load_saelens(folder, norm_scaling_factor=2.0)
    x = torch.randn(10, D)
    want_z, want_x = _saelens_reference(t, dict(V6, architecture="standard", apply_b_dec_to_input=True), 2.0 * x)
    with torch.no_grad():
        assert torch.allclose(sae.encode(x), want_z, atol=1e-5)
        assert torch.allclose(sae(x), want_x / 2.0, atol=1e-5)


@pytest.mark.parametrize("change, match", [
    ({"architecture": "gated"}, r"cfg.json'?: key 'architecture' is 'gated'.*supported: standard, jumprelu, topk"),
    ({"normalize_activations": "layer_norm"}, r"key 'normalize_activations' is 'layer_norm'.*not linear"),
    ({"d_sae": "96"}, r"key 'd_sae' must be a positive int"),
    ({"reshape_activations": "hook_z"}, r"key 'reshape_activations'.*per-head"),
    ({"architecture": "topk"}, r"key 'k' is missing"),
    ({"dtype": "int8"}, r"key 'dtype' is 'int8'; allowed"),
])
def test_bad_saelens_configs_name_the_file_and_key(tmp_path, change, match):
    folder = _write_folder(tmp_path / "sl", {**V6, "architecture": "standard", **change}, _tensors("standard"))
    with pytest.raises(SAELensFormatError, match=match) as e:
        load_saelens(folder)
    assert str(folder / "cfg.json") in str(e.value)


def test_corrupt_missing_and_truncated_saelens_files(tmp_path):
    folder = _write_folder(tmp_path / "sl", dict(V6, architecture="standard"), _tensors("standard"))
    cfg_path = folder / "cfg.json"
    good = cfg_path.read_text()
    cfg_path.write_text(good[:40])
    with pytest.raises(SAELensFormatError, match=re.escape(str(cfg_path)) + ".*not valid JSON"):
        load_saelens(folder)
    cfg_path.write_text(json.dumps({k: v for k, v in json.loads(good).items() if k != "d_in"}))
    with pytest.raises(SAELensFormatError, match=r"key 'd_in' is missing"):
        load_saelens(folder)
    cfg_path.write_text(good)
    weights = folder / "sae_weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(SAELensFormatError, match=re.escape(str(weights)) + ".*truncated or corrupt"):
        load_saelens(folder)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="sae_weights.safetensors"):
        load_saelens(folder)
    with pytest.raises(FileNotFoundError, match="no SAELens folder"):
        load_saelens(tmp_path / "nowhere")


def test_saelens_tensors_must_match_the_config(tmp_path):
    t = _tensors("standard", d_sae=80)
    folder = _write_folder(tmp_path / "sl", dict(V6, architecture="standard"), t)
    with pytest.raises(SAELensFormatError, match=r"W_enc is \[64, 80\], expected \[64, 96\]"):
        load_saelens(folder)
    folder = _write_folder(tmp_path / "sl2", dict(V6, architecture="standard"), _tensors("jumprelu"))
    with pytest.raises(SAELensFormatError, match=r"unexpected \['threshold'\]"):
        load_saelens(folder)
    t = _tensors("jumprelu")
    t["threshold"][3] = -0.1
    folder = _write_folder(tmp_path / "sl3", dict(V6, architecture="jumprelu"), t)
    with pytest.raises(SAELensFormatError, match=r"threshold is negative at latent\(s\) \[3\]"):
        load_saelens(folder)
    assert read_config(tmp_path / "sl")["architecture"] == "standard"


# ============================================================================ feature interventions
def _resid_and_latents(lm, sae, x):
    with lm.dictionary(sae, AT) as d:
        run = lm.run(x, cache=[AT, d.point("latents")])
    return run.cache[AT], run.cache[d.point("latents")]


def test_ablate_clamp_and_steer_equal_the_matching_edit_of_the_hook_point(lm):
    x = tokens(lm, batch=2, seq=6)
    sae = random_sae()
    resid, lat = _resid_and_latents(lm, sae, x)
    i = int(lat[:, -1].sum(0).argmax())
    assert (lat[:, -1, i] > 0).all()
    row = sae.W_dec[i].detach()
    clean = lm.run(x)
    with lm.dictionary(sae, AT) as d:
        ablated = lm.run(x, interventions=[F.ablate(d, i, positions=-1)])
        clamped = lm.run(x, interventions=[F.clamp(d.prefix, i, 4.0, positions=-1)])
        steered = lm.run(x, interventions=[F.steer(d, i, 3.0, positions=-1)])
        both = lm.run(x, interventions=[F.ablate(d, [i, i + 1])])
    with torch.no_grad():
        last = torch.zeros(1, 6, 1)
        last[:, -1] = 1.0
        want = lambda delta: lm.run(x, interventions=[Patch(AT, source=resid + delta)]).logits  # noqa: E731
        assert torch.allclose(ablated.logits, want(-last * lat[..., i:i + 1] * row), atol=1e-5)
        assert torch.allclose(clamped.logits, want(last * (4.0 - lat[..., i:i + 1]) * row), atol=1e-5)
        two = lat[..., i:i + 2] @ sae.W_dec[i:i + 2].detach()
        assert torch.allclose(both.logits, want(-two), atol=1e-5)
    manual = lm.run(x, interventions=[AddVector(AT, 3.0 * row, positions=-1)])
    assert torch.allclose(steered.logits, manual.logits, atol=1e-5)
    # the SAE-module form needs no attached dictionary and adds the same vector
    direct = lm.run(x, interventions=[F.steer(sae, i, 3.0, positions=-1)])
    assert torch.allclose(direct.logits, manual.logits, atol=1e-5)
    # only the last position moves (causal model, edit at the last token), and it does move
    assert torch.equal(ablated.logits[:, :-1], clean.logits[:, :-1])
    assert not torch.allclose(ablated.logits[:, -1], clean.logits[:, -1], atol=1e-4)


def test_steer_takes_one_coefficient_per_batch_row(lm):
    x = tokens(lm, batch=3, seq=5)
    sae = random_sae()
    with lm.dictionary(sae, AT) as d:
        scan = lm.run(x, interventions=[F.steer(d.prefix, 5, torch.tensor([0.0, 1.0, -2.0]))])
    plain = lm.run(x)
    one = lm.run(x, interventions=[F.steer(sae, 5, 1.0)])
    assert torch.allclose(scan.logits[0], plain.logits[0], atol=1e-5)
    assert torch.allclose(scan.logits[1], one.logits[1], atol=1e-5)


def test_bad_feature_indices_and_widths_are_refused(lm):
    sae = random_sae()
    x = tokens(lm)
    with lm.dictionary(sae, AT) as d:
        with pytest.raises(ValueError, match=r"feature index 96 is out of range: the dictionary has d_sae=96 latents, "
                                             r"indices 0..95"):
            F.ablate(d, 96)
        with pytest.raises(ValueError, match=r"index 500 is out of range.*0..95"):
            lm.run(x, interventions=[F.ablate(d.prefix, 500)])  # a prefix string: checked against the hook point
        with pytest.raises(ValueError, match=r"\[-1, 200\] is out of range"):
            F.clamp(d, [3, -1, 200], 1.0)
        with pytest.raises(TypeError, match="a feature index is an int"):
            F.ablate(d, 1.5)
        with pytest.raises(ValueError, match="clamp value must be a finite number"):
            F.clamp(d, 3, float("nan"))
        with pytest.raises(ValueError, match="latents point"):
            lm.run(x, interventions=[F.FeatureEdit(f"{d.prefix}.recon", fn=lambda v, c: v, features=(0,))])
        with pytest.raises(ValueError, match=r"out of range: the dictionary has d_sae=96"):
            F.top_examples(lm, d, None, x, [96])
    with pytest.raises(ValueError, match="d_in=32 but hook point 'blocks.1.resid_post' has width 64"):
        F.top_examples(lm, random_sae(d_in=32), AT, x, [0])
    with pytest.raises(ValueError, match="d_in=96 but the residual stream has d_model=64"):
        F.logit_effects(lm, random_sae(d_in=96, hook="blocks.1.mlp.post"), 0)


# ============================================================================ logit effects
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_logit_effects_predict_the_logit_change_of_steering_at_the_last_layer(arch):
    lm = tiny_lm(arch)
    last = f"blocks.{lm.n_layers - 1}.resid_post"
    sae = random_sae(hook=last)
    eff = F.logit_effects(lm, sae, 7, k=5)
    x = tokens(lm, batch=1, seq=5)
    d = sae.W_dec[7].detach()
    # with the final norm's scale frozen, the derivative of logits . r along the decoder row is
    # (values . r) / s for every r: the effects are the model's own readout, up to that one scale
    ratios = []
    for seed in range(3):
        r = torch.randn(lm.dims.vocab, generator=torch.Generator().manual_seed(seed))
        run = lm.run(x, cache=[last], grad=True, freeze=["norms"], metric=lambda run: run.logits[0, -1] @ r)
        ratios.append(float(run.grads[last][0, -1] @ d) / float(eff.values @ r))
    assert ratios[0] > 0 and ratios == pytest.approx([ratios[0]] * 3, rel=1e-4)
    assert [t for t, _, _ in eff.top] == eff.values.topk(5).indices.tolist()
    assert [t for t, _, _ in eff.bottom] == (-eff.values).topk(5).indices.tolist()
    assert eff.top[0][2] >= eff.top[-1][2] and eff.bottom[0][2] <= eff.bottom[-1][2]
    assert not eff.values.requires_grad and "scale ignored" in eff.norm and ("centring" in eff.norm) == (arch == "gpt2")
    assert len(eff.to_frame()) == 10 and json.dumps(eff.to_dict())
    eff.plot()


# ============================================================================ a feature that reads one token
TOKEN_A = 17


def token_detector(lm, token=TOKEN_A, at="embed"):
    """An SAE whose feature 0 fires on ``token`` only (encoder row = its embedding, bias just below
    its squared norm); the other features are random."""
    sae = random_sae(hook=at)
    E = lm.hf.get_input_embeddings().weight.detach()
    e = E[token]
    others = (E @ e)[torch.arange(E.shape[0]) != token].max()
    with torch.no_grad():
        sae.b_dec.zero_()
        sae.W_enc[:, 0] = e
        sae.b_enc[0] = -(others + (e @ e - others) / 2)
    return sae


def test_filter_features_finds_the_feature_of_a_token(lm):
    sae = token_detector(lm)
    base = tokens(lm, batch=6, seq=6, seed=7)
    base[base == TOKEN_A] = TOKEN_A + 1
    pos = base[:3].clone()
    pos[torch.arange(3), torch.tensor([1, 3, 5])] = TOKEN_A
    neg = base[3:]
    res = F.filter_features(lm, sae, "embed", pos, neg)
    assert 0 in res.features
    assert (res.positive_max[:, 0] > 0).all() and (res.negative_max[:, 0] <= 0).all()
    for f in res.features:  # every selected feature meets the rule, and every other one fails it
        assert (res.positive_max[:, f] > 0).all() and (res.negative_max[:, f] <= 0).all()
    rest = [f for f in range(W) if f not in res.features]
    assert all((res.positive_max[:, f] <= 0).any() or (res.negative_max[:, f] > 0).any() for f in rest)
    assert list(res.to_frame().feature) == list(res.features) and json.dumps(res.to_dict())
    res.plot()
    swapped = F.filter_features(lm, sae, "embed", neg, pos)
    assert 0 not in swapped.features


def test_top_examples_are_the_largest_activations_with_their_context(lm):
    sae = random_sae()
    x = tokens(lm, batch=7, seq=9, seed=3)
    _, lat = _resid_and_latents(lm, sae, x)
    counts = (lat > 0).sum((0, 1))
    feats = counts.argsort(descending=True)[[0, 10, 20]].tolist()  # a dense, a middling and a sparser feature
    assert all(0 < int(counts[f]) for f in feats)
    res = F.top_examples(lm, sae, AT, x, feats, k=4, context=(3, 2), batch_size=3)
    again = F.top_examples(lm, sae, AT, x, feats, k=4, context=(3, 2), batch_size=7)
    assert res.to_dict() == again.to_dict()  # batching does not change the result
    for f in feats:
        fe = res[f]
        flat = lat[..., f].flatten()
        assert [e.value for e in fe.examples] == pytest.approx(flat.topk(4).values.tolist(), abs=1e-5)
        for e in fe.examples:
            assert e.value == pytest.approx(float(lat[e.text, e.position, f]), abs=1e-5)
            assert e.tokens[e.center] == f"<{int(x[e.text, e.position])}>"
            lo = max(0, e.position - 3)
            assert list(e.acts) == pytest.approx(lat[e.text, lo:min(9, e.position + 3), f].tolist(), abs=1e-5)
            assert len(e.tokens) == len(e.acts) <= 6
        active = int((lat[..., f] > 0).sum())
        assert fe.n_active == active == sum(fe.hist_counts) and fe.n_tokens == 63
        assert fe.density == pytest.approx(active / 63)
    df = res.to_frame()
    assert len(df) == 12 and set(df.feature) == set(feats) and json.dumps(res.to_dict())
    res.plot()
    with pytest.raises(KeyError, match="feature 3 was not collected"):
        res[3]


def test_probe_over_feature_activations_reads_the_last_token(lm):
    from avec.probes import fit_probes

    sae = random_sae()
    x = tokens(lm, batch=60, seq=6, seed=11)
    labels = torch.arange(60) % 2 == 0
    x[:, -1] = torch.where(labels, torch.tensor(TOKEN_A), torch.tensor(TOKEN_A + 20))
    acts = F.feature_activations(lm, sae, AT, x, position=-1, batch_size=16)
    assert acts.shape == (60, W) and (acts >= 0).all()
    _, lat = _resid_and_latents(lm, sae, x[:5])
    assert torch.allclose(acts[:5], lat[:, -1], atol=1e-6)
    res = fit_probes(acts, labels.tolist(), seed=0)
    assert float(res.test_score[0]) >= 0.95
    shuffled = fit_probes(acts, labels[torch.randperm(60, generator=torch.Generator().manual_seed(0))].tolist(),
                          seed=0)
    assert float(shuffled.test_score[0]) < float(res.test_score[0])


# ============================================================================ dashboards
def test_dashboard_pages_escape_tokens_and_need_no_network(tmp_path, lm):
    sae = random_sae()
    x = tokens(lm, batch=4, seq=8, seed=5)
    _, lat = _resid_and_latents(lm, sae, x)
    on = (lat > 0).any(0).any(0)
    live, dead = int(on.nonzero()[0]), int((~on).nonzero()[0])  # a feature that fires and one that never does
    res = F.top_examples(lm, sae, AT, x, [live, dead], k=3)
    fe = res[live]
    evil = F.Example(0, 0, fe.max_value, ("<script>alert(1)</script>", " & ", '"q"'), (fe.max_value, 0.0, 0.1), 0)
    res.features[live] = F.FeatureExamples(live, (evil,) + fe.examples, fe.hist_counts, fe.hist_edges, fe.n_active,
                                           fe.n_tokens, fe.max_value)
    effects = {live: F.logit_effects(lm, sae, live, k=3)}
    index = write_dashboard(tmp_path / "dash", res, effects)
    files = sorted(p.name for p in (tmp_path / "dash").iterdir())
    assert files == sorted([f"feature_{live}.html", f"feature_{dead}.html", "index.html"]) and index.name == "index.html"
    page = (tmp_path / "dash" / f"feature_{live}.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&amp;" in page
    assert "<svg" in page and "top tokens" in page and "density" in page
    assert page.count('class="ex"') == 4 and "rgba(220,40,40,1.00)" in page  # the peak token fully shaded
    assert "never active" in (tmp_path / "dash" / f"feature_{dead}.html").read_text()
    for p in (tmp_path / "dash").iterdir():
        text = p.read_text()
        assert not re.search(r"(src|href)=\"(https?:)?//", text) and "<link" not in text and "@import" not in text
    assert f'href="feature_{dead}.html"' in index.read_text()
    with pytest.raises(ValueError, match="is an existing file"):
        write_dashboard(index, res)


def test_smollm2_text_examples_and_dashboard(smollm2, tmp_path):
    lm = smollm2
    at = "blocks.3.resid_post"
    sae = random_sae(d_in=lm.d_model, d_sae=200, hook=at)
    texts = ["The cat sat on the mat.", "Paris is the capital of France, <b>bold</b> claims.", "One two."]
    res = F.top_examples(lm, sae, at, texts, [0, 5], k=3, context=(4, 2), batch_size=2)
    with lm.dictionary(sae, at) as d:
        runs = [lm.run(t, cache=[d.point("latents")]) for t in texts]
    for f in (0, 5):
        for e in res[f].examples:
            lat = runs[e.text].cache[d.point("latents")][0, :, f]
            assert e.value == pytest.approx(float(lat[e.position]), abs=1e-4)
            assert e.position < len(runs[e.text].tokens[0])  # never a padding token
            assert e.tokens[e.center] == lm.to_str_tokens(runs[e.text].tokens[0])[e.position]
        assert res[f].n_tokens == sum(r.tokens.shape[1] for r in runs)
    index = dashboard(lm, sae, at, texts, [0, 5], tmp_path / "d", k=3, n_logits=5)
    page = (tmp_path / "d" / "feature_0.html").read_text()
    assert "logit effects" in page.lower() and "RMSNorm" in page
    short, long = "Hi.", "A much longer sentence about cats and dogs and birds."
    ff = F.filter_features(lm, sae, at, [short], [long])
    with lm.dictionary(sae, at) as d:
        own = lm.run(short, cache=[d.point("latents")]).cache[d.point("latents")][0].max(0).values
    assert torch.allclose(ff.positive_max[0], own, atol=1e-4)  # padding never counted
    assert index.exists()


def test_special_tokens_are_not_read_unless_asked(smollm2):
    """SmolLM2 puts an attention-sink activation (norm ~25000) on a context's first token; the shipped SAE
    answers it with huge latents. Examples, histograms, densities and filters leave such tokens out."""
    from avec.dictionaries.shipped import load_shipped

    lm, sae = smollm2, load_shipped("smollm2-blocks.12.resid_post-topk-4608")
    bos = lm.tokenizer.bos_token_id
    texts = torch.tensor([[bos] + lm.tokenizer(t, add_special_tokens=False)["input_ids"][:10]
                          for t in ("The cat sat on the warm mat by the door.", "Rain fell on the quiet town all night long.")])
    with lm.dictionary(sae, at=sae.cfg.hook) as d:
        lat = lm.run(texts, cache=[d.point("latents")]).cache[d.point("latents")]
    f = int(lat[:, 0].amax(0).argmax())  # the feature strongest on the BOS tokens
    assert float(lat[:, 0, f].max()) > float(lat[:, 1:, f].max())
    every = F.top_examples(lm, sae, sae.cfg.hook, texts, [f], k=3, skip_tokens=None)
    read = F.top_examples(lm, sae, sae.cfg.hook, texts, [f], k=3)
    assert every[f].examples[0].position == 0
    assert all(e.position > 0 for e in read[f].examples)
    assert every[f].n_tokens == texts.numel() and read[f].n_tokens == texts.numel() - 2
    assert read[f].n_active == int((lat[:, 1:, f] > 0).sum())
    assert F.top_examples(lm, sae, sae.cfg.hook, texts, [f], k=3, skip_tokens=[bos])[f].to_dict() == read[f].to_dict()
    ff = F.filter_features(lm, sae, sae.cfg.hook, texts[:1], texts[1:])
    assert torch.allclose(ff.positive_max[0], lat[0, 1:].amax(0), atol=1e-4)
    with pytest.raises(ValueError, match="allowed: 'special', token ids, or None"):
        F.top_examples(lm, sae, sae.cfg.hook, texts, [f], skip_tokens="bos")
    with pytest.raises(ValueError, match="no token left to read"):
        F.filter_features(lm, sae, sae.cfg.hook, texts[:1, :1], texts[1:])
