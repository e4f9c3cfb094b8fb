"""SAEs: each architecture recovers a known sparse dictionary; saving folds the normalisation and
turns BatchTopK into JumpReLU without changing latents; training resumes exactly; metrics match
their formulas; bad input is refused clearly."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from _tiny import tiny_lm, tokens
from avec.dictionaries.evaluate import ReconstructionStats, evaluate
from avec.dictionaries.sae import SAE, SAEConfig, geometric_median
from avec.dictionaries.train import TrainConfig, lr_at, sparsity_scale_at, train

D_IN, N_FEAT, K_TRUE, D_SAE = 32, 64, 3, 128
AT = "blocks.1.resid_post"


def _dictionary():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(N_FEAT, D_IN, generator=g)
    return d / d.norm(dim=-1, keepdim=True), torch.randn(D_IN, generator=g)


DICT, OFFSET = _dictionary()


def synthetic(n: int, seed: int) -> torch.Tensor:
    """x = codes @ DICT + offset, exactly K_TRUE active features per token, magnitudes in [1, 2] (scaled
    by 3 so that the input normalisation has something to do). [n, D_IN]"""
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(n, N_FEAT, generator=g).argsort(-1)[:, :K_TRUE]
    codes = torch.zeros(n, N_FEAT).scatter(-1, idx, 1 + torch.rand(n, K_TRUE, generator=g))
    return 3 * (codes @ DICT + 0.5 * OFFSET)


def stream(start: int = 0, n: int = 256):
    i = start
    while True:
        yield synthetic(n, 1000 + i)
        i += 1


HELD_OUT = synthetic(4096, 7)
RECIPES = {
    "relu": dict(sparsity_coeff=0.7),
    "jumprelu": dict(sparsity_coeff=1.0, bandwidth=0.05, init_threshold=0.1),
    "topk": dict(k=K_TRUE),
    "batchtopk": dict(k=K_TRUE),
}
TRAIN = TrainConfig(steps=400, lr=3e-3, warmup_steps=20, sparsity_warmup_steps=50, dead_tokens=256 * 20)


def fvu(sae, x):
    with torch.no_grad():
        return float((sae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


@pytest.fixture(params=list(RECIPES))
def trained(request):
    arch = request.param
    torch.manual_seed(0)
    sae = SAE(arch=arch, d_in=D_IN, d_sae=D_SAE, hook=AT, **RECIPES[arch])
    untrained = fvu(SAE(sae.cfg).init_from_sample(HELD_OUT[:1024]), HELD_OUT)
    result = train(sae, stream, TRAIN, progress=False)
    return arch, sae, untrained, result


# ----------------------------------------------------------------------------- architectures
def test_each_arch_recovers_a_known_sparse_dictionary(trained, tmp_path):
    arch, sae, untrained, result = trained
    with torch.no_grad():
        z = sae.encode(HELD_OUT)
    active = (z != 0).sum(-1).float()
    assert untrained > 0.5  # training is what brings FVU down
    assert fvu(sae, HELD_OUT) < 0.2, arch  # 0.04-0.13 over init seeds at 400 steps
    if arch == "topk":
        assert bool((active == K_TRUE).all())  # exactly k per token
    elif arch == "batchtopk":
        assert abs(active.mean() - K_TRUE) < 0.5  # k on average, via the learned threshold
    elif arch == "jumprelu":
        assert K_TRUE / 2 < active.mean() < 2 * K_TRUE
    else:  # L1 shrinks and spreads: sparse, but less so
        assert active.mean() < 4 * K_TRUE
    assert result.steps == TRAIN.steps and result.to_frame()["step"].max() == TRAIN.steps
    if sae.cfg.uses_unit_decoder:
        assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(D_SAE), atol=1e-5)
    if arch == "batchtopk":
        _check_batchtopk_saves_as_jumprelu_with_its_inference_threshold(sae, tmp_path)


def _check_batchtopk_saves_as_jumprelu_with_its_inference_threshold(sae, tmp_path):
    loaded = SAE.load(sae.save(tmp_path / "b.safetensors"))
    assert loaded.cfg.arch == "jumprelu" and loaded.cfg.trained_as == "batchtopk"
    assert float(sae.threshold) > 0 and bool((loaded.threshold == sae.threshold).all())
    with torch.no_grad():
        want = sae.encode(HELD_OUT)
        # inference = JumpReLU at the threshold, not the batch top-k
        pre = sae.pre_activations(HELD_OUT)
        assert torch.equal(want, pre * (pre > sae.threshold))
        got = loaded.encode(HELD_OUT)
        assert ((got != 0) == (want != 0)).float().mean() > 0.999
        assert torch.allclose(got, want, atol=1e-4)
        # with no scale to fold, the saved JumpReLU is bit for bit the BatchTopK at inference
        unscaled = SAE(sae.cfg)
        unscaled.load_state_dict(sae.state_dict())
        unscaled.input_scale.fill_(1.0)
        again = SAE.load(unscaled.save(tmp_path / "c.safetensors"))
        assert torch.equal(again.encode(HELD_OUT), unscaled.encode(HELD_OUT))


@pytest.mark.parametrize("arch", list(RECIPES))
def test_saving_folds_the_normalisation_so_raw_inputs_give_the_same_reconstruction(arch, tmp_path):
    torch.manual_seed(1)
    sae = SAE(arch=arch, d_in=D_IN, d_sae=D_SAE, **RECIPES[arch]).init_from_sample(HELD_OUT[:512])
    assert abs(float(sae.input_scale) - 1) > 0.3  # there is a scale to fold
    with torch.no_grad():
        for p in (sae.b_enc, sae.W_enc):
            p.add_(0.05 * torch.randn_like(p))
        if arch == "batchtopk":
            sae.threshold.fill_(0.05)
    path = sae.save(tmp_path / f"{arch}.safetensors")
    loaded = SAE.load(path)
    assert float(loaded.input_scale) == 1.0 and loaded.cfg.folded_scale == pytest.approx(float(sae.input_scale))
    assert not torch.allclose(loaded.W_enc, sae.W_enc)  # the weights did change
    with torch.no_grad():
        assert torch.allclose(loaded(HELD_OUT), sae(HELD_OUT), atol=1e-4, rtol=1e-4)
        assert torch.allclose(loaded.encode(HELD_OUT), sae.encode(HELD_OUT), atol=1e-4)


def test_geometric_median_is_robust_and_minimises_distance():
    g = torch.Generator().manual_seed(0)
    pts = torch.cat([torch.randn(200, 3, generator=g), torch.full((20, 3), 1e3)])  # 10% far outliers
    med = geometric_median(pts)
    assert med.norm() < 0.5 < pts.mean(0).norm()
    cost = lambda y: (pts - y).norm(dim=-1).sum()  # noqa: E731
    for _ in range(5):
        assert cost(med) <= cost(med + 0.01 * torch.randn(3, generator=g))


def test_sae_spliced_with_its_error_term_leaves_the_model_exact():
    lm = tiny_lm("llama")
    x = tokens(lm, batch=2, seq=6)
    clean = lm.run(x, cache=[AT])
    sae = SAE(arch="topk", d_in=64, d_sae=96, k=8, hook=AT).init_from_sample(clean.cache[AT].reshape(-1, 64))
    with lm.dictionary(sae, AT):
        assert torch.equal(lm.run(x).logits, clean.logits)
    with lm.dictionary(sae, AT, splice="recon"):
        assert not torch.allclose(lm.run(x).logits, clean.logits, atol=1e-3)


# ----------------------------------------------------------------------------- training
def _pair():
    torch.manual_seed(3)
    return {"a_topk": SAE(arch="topk", d_in=D_IN, d_sae=64, k=K_TRUE, hook="h.a"),
            "b_jump": SAE(arch="jumprelu", d_in=D_IN, d_sae=64, hook="h.b", sparsity="tanh", pre_act_coeff=1e-3,
                          bandwidth=0.05, init_threshold=0.1)}


def _dict_stream(start: int, fail_at: int | None = None):
    for i, x in enumerate(stream(start, n=64), start=start):
        if i == fail_at:
            raise RuntimeError("killed")
        yield {"h.a": x, "h.b": x.flip(-1)}


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path):
    cfg = TrainConfig(steps=60, lr=3e-3, warmup_steps=5, sparsity_warmup_steps=10, checkpoint_every=20,
                      dead_tokens=64 * 3, log_every=5)
    full = train(_pair(), _dict_stream, cfg, out=tmp_path / "full", progress=False)
    with pytest.raises(RuntimeError, match="killed"):
        train(_pair(), lambda start: _dict_stream(start, fail_at=47), cfg, out=tmp_path / "cut", progress=False)
    assert not (tmp_path / "cut" / "a_topk.safetensors").exists()
    resumed = train(_pair(), _dict_stream, cfg, out=tmp_path / "cut", progress=False)
    for name, sae in full.saes.items():
        for (k, v), (k2, v2) in zip(sae.state_dict().items(), resumed.saes[name].state_dict().items()):
            assert k == k2 and torch.equal(v, v2), (name, k)
    lines = lambda d: (tmp_path / d / "metrics.jsonl").read_text().splitlines()  # noqa: E731
    assert lines("full") == lines("cut") and len(lines("full")) == 2 * 60 // 5
    assert full.to_frame().equals(resumed.to_frame())
    assert full.plot() is not None
    a, b = SAE.load(tmp_path / "full" / "a_topk.safetensors"), SAE.load(tmp_path / "cut" / "a_topk.safetensors")
    assert torch.equal(a.W_enc, b.W_enc)


def test_schedules():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, decay="linear", decay_start=0.5, sparsity_warmup_steps=20)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == 1.0 and lr_at(49, cfg) == 1.0
    assert lr_at(75, cfg) == pytest.approx(0.5) and lr_at(99, cfg) == pytest.approx(0.02)
    cos = replace(cfg, decay="cosine")
    assert lr_at(75, cos) == pytest.approx(0.5) and lr_at(60, cos) > lr_at(60, cfg)
    assert sparsity_scale_at(4, cfg) == pytest.approx(0.25) and sparsity_scale_at(50, cfg) == 1.0


# ----------------------------------------------------------------------------- evaluation
def test_streaming_fvu_equals_the_one_shot_formula():
    g = torch.Generator().manual_seed(0)
    xs = [1e3 + torch.randn(n, 8, generator=g) for n in (1, 7, 300, 64)]  # a large mean: no cancellation allowed
    hats = [x + 0.1 * torch.randn(x.shape, generator=g) for x in xs]
    stats = ReconstructionStats(8, 8)
    for x, h in zip(xs, hats):
        stats.update(x, h, h)
    x, h = torch.cat(xs).double(), torch.cat(hats).double()
    one_shot = float((x - h).pow(2).sum(-1).mean() / (x - x.mean(0)).pow(2).sum(-1).mean())
    assert stats.fvu == pytest.approx(one_shot, rel=1e-10)
    assert stats.mse == pytest.approx(float((x - h).pow(2).mean()), rel=1e-12)


def _identity_relu(d=4):
    sae = SAE(arch="relu", d_in=d, d_sae=d, normalise="none")
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
    return sae  # encode = decode = ReLU(x)


def test_sparsity_metrics_follow_their_definitions():
    g = torch.Generator().manual_seed(0)
    n = 2000
    x = torch.stack([torch.rand(n, generator=g) + 0.1,                         # always fires: dense
                     torch.where(torch.rand(n, generator=g) < 0.05, 1.0, -1.0),  # ~5%: not dense
                     -torch.rand(n, generator=g) - 0.1,                        # never: dead
                     torch.randn(n, generator=g)], -1)                         # ~50%: dense
    res = evaluate(_identity_relu(), [x[:700], x[700:]])
    on = (x > 0).double()
    assert res.n_tokens == n and res.l0 == pytest.approx(float(on.sum(-1).mean()))
    assert torch.allclose(res.density, on.mean(0))
    assert res.dead_fraction == 0.25 and res.dense_fraction == 0.5
    r = torch.relu(x).double()
    assert res.mse == pytest.approx(float((x - r).pow(2).mean()))
    assert res.cosine == pytest.approx(float(F.cosine_similarity(x.double(), r, dim=-1, eps=1e-12).mean()))
    assert res.norm_ratio == pytest.approx(float((r.norm(dim=-1) / x.double().norm(dim=-1)).mean()))
    assert len(res.log10_density) == 3 and res.to_frame().shape[1] == 2 and "kl" in res.to_dict()
    assert res.plot() is not None


class _Exact(torch.nn.Module):
    """A perfect (or, with zero=True, useless) dictionary: latents are the input itself."""

    def __init__(self, d, zero=False):
        super().__init__()
        self.d_in = self.d_sae = d
        self.zero = zero

    def encode(self, x):
        return x

    def decode(self, z):
        return torch.zeros_like(z) if self.zero else z


def test_model_metrics_ce_recovered_delta_loss_and_kl():
    lm = tiny_lm("llama")
    ids = tokens(lm, batch=3, seq=8)
    logits = lm.run(ids).logits
    ce = float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)))
    perfect = evaluate(_Exact(64), lm=lm, tokens=ids, at=AT)
    assert perfect.ce_clean == pytest.approx(ce, rel=1e-5)
    assert perfect.ce_loss_recovered == pytest.approx(1.0, abs=1e-5) and abs(perfect.kl) < 1e-6
    assert perfect.fvu < 1e-10 and perfect.n_tokens == 24
    useless = evaluate(_Exact(64, zero=True), lm=lm, tokens=ids, at=AT)
    assert useless.ce_loss_recovered == pytest.approx(0.0, abs=1e-6) and useless.kl > 0
    acts = lm.run(ids, cache=[AT]).cache[AT].reshape(-1, 64)
    sae = SAE(arch="topk", d_in=64, d_sae=96, k=8, hook=AT).init_from_sample(acts)
    res = evaluate(sae, lm=lm, tokens=[ids[:2], ids[2:]])
    assert res.delta_lm_loss == pytest.approx(res.ce_spliced - res.ce_clean)
    assert res.ce_loss_recovered == pytest.approx((res.ce_zero_ablation - res.ce_spliced) /
                                                  (res.ce_zero_ablation - res.ce_clean))
    assert res.ce_spliced != res.ce_clean and res.kl > 0


# ----------------------------------------------------------------------------- bad input
def test_bad_configs_and_inputs_are_refused():
    with pytest.raises(ValueError, match="arch='gated' is unknown; allowed: relu, jumprelu, topk, batchtopk"):
        SAE(arch="gated", d_in=8, d_sae=16)
    with pytest.raises(ValueError, match=r"k=17; allowed: an int with 1 <= k <= d_sae=16"):
        SAE(arch="topk", d_in=8, d_sae=16, k=17)
    with pytest.raises(ValueError, match=r"k=0"):
        SAE(arch="batchtopk", d_in=8, d_sae=16, k=0)
    with pytest.raises(ValueError, match="needs k"):
        SAE(arch="topk", d_in=8, d_sae=16)
    sae = SAE(arch="relu", d_in=8, d_sae=16)
    with pytest.raises(ValueError, match=r"d_in=8\] activations, got shape \(4, 9\)"):
        sae.encode(torch.zeros(4, 9))
    with pytest.raises(ValueError, match=r"d_sae=16\] latents"):
        sae.decode(torch.zeros(4, 8))
    with pytest.raises(KeyError, match="reads hook 'h.x', not in this batch"):
        train(SAE(arch="relu", d_in=8, d_sae=16, hook="h.x"), [{"h.y": torch.zeros(4, 8)}],
              TrainConfig(steps=1), progress=False)
    with pytest.raises(ValueError, match="decay='exp'; allowed: cosine, linear, none"):
        TrainConfig(steps=1, decay="exp")
    with pytest.raises(ValueError, match="dead_tokens=0"):
        TrainConfig(steps=1, dead_tokens=0)


def test_bad_files_are_refused_by_name_and_failed_saves_overwrite_nothing(tmp_path, monkeypatch):
    sae = SAE(arch="jumprelu", d_in=8, d_sae=16)
    path = sae.save(tmp_path / "s.safetensors")
    good = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="cut.safetensors.*truncated or corrupt"):
        SAE.load(cut)
    # a config that does not match the tensors
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={**meta, "config": json.dumps({**json.loads(meta["config"]), "d_sae": 32})})
    with pytest.raises(ValueError, match="bad.safetensors.*do not match its config"):
        SAE.load(bad)
    save_file(tensors, str(bad), metadata={**meta, "config": json.dumps({**json.loads(meta["config"]), "arch": "x"})})
    with pytest.raises(ValueError, match="bad.safetensors.*allowed: relu"):
        SAE.load(bad)
    with pytest.raises(ValueError, match=r"\.safetensors"):
        sae.save(tmp_path / "s.pt")

    def boom(tensors, tmp, metadata=None):
        Path(tmp).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        SAE(arch="relu", d_in=8, d_sae=16).save(path)
    assert path.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == \
        ["bad.safetensors", "cut.safetensors", "s.safetensors"]
