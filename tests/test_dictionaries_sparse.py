"""The sparse training kernels (``avec.dictionaries.sparse_codes``) compute what plain autograd computes:
``SAE.losses`` on both routes (sparse, dense) against the dense formulas written out with autograd (the
code ``SAE.losses`` ran before the kernels): every loss term, the reconstruction, the latents and the
gradient of every parameter, for each architecture, with and without AuxK."""

import pytest
import torch

import avec.dictionaries.sparse_codes as sc
from avec.dictionaries.sae import SAE, _JumpReLU, _Step, topk_over_batch, topk_per_row
from avec.dictionaries.sparse_codes import Pattern

D_IN, D_SAE, N = 24, 160, 96


def reference_losses(sae: SAE, x: torch.Tensor, sparsity_scale: float = 1.0, dead=None):
    """``SAE.losses`` as dense autograd: (loss, mse, sparsity, aux, latents [n, d_sae], x_hat [n, d_in])."""
    cfg = sae.cfg
    x_n = x.reshape(-1, sae.d_in).to(sae.W_enc.dtype) * sae.input_scale.to(sae.W_enc.dtype)
    pre = (x_n - sae.b_dec) @ sae.W_enc + sae.b_enc
    zero = pre.new_zeros(())
    dec_norm = sae.W_dec.norm(dim=-1)
    sparsity, aux = zero, zero
    if cfg.arch == "relu":
        z = torch.relu(pre)
        sparsity = (z * dec_norm).sum(-1).mean()
    elif cfg.arch == "jumprelu":
        z = _JumpReLU.apply(pre, sae.threshold, cfg.bandwidth)
        if cfg.sparsity == "l0":
            sparsity = _Step.apply(pre, sae.threshold, cfg.bandwidth).sum(-1).mean()
        else:
            sparsity = torch.tanh(cfg.tanh_scale * z.abs() * dec_norm).sum(-1).mean()
        if cfg.pre_act_coeff > 0:
            aux = cfg.pre_act_coeff * (torch.relu(sae.threshold - pre) * dec_norm).sum(-1).mean()
    elif cfg.arch == "topk":
        z = topk_per_row(pre, cfg.k)
    else:
        z = topk_over_batch(pre, cfg.k)
    x_hat = z @ sae.W_dec + sae.b_dec
    mse = (x_hat - x_n).pow(2).sum(-1).mean()
    if cfg.arch in ("topk", "batchtopk") and dead is not None and bool(dead.any()):
        k_aux = min(cfg.aux_k, int(dead.sum()))
        vals, idx = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1)
        err = (x_n - x_hat).detach()
        err_hat = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals)) @ sae.W_dec
        aux = cfg.aux_coeff * (err_hat - err).pow(2).sum(-1).mean() / (err - err.mean(0)).pow(2).sum(-1).mean()
    loss = mse + cfg.sparsity_coeff * sparsity_scale * sparsity + aux
    return loss, mse, sparsity, aux, z, x_hat


CASES = {
    "relu": dict(arch="relu", sparsity_coeff=0.3),
    "jumprelu_l0": dict(arch="jumprelu", sparsity_coeff=0.1, bandwidth=0.5, init_threshold=0.4),
    "jumprelu_tanh": dict(arch="jumprelu", sparsity="tanh", sparsity_coeff=0.1, bandwidth=0.5, init_threshold=0.4),
    "jumprelu_pre_act": dict(arch="jumprelu", sparsity_coeff=0.1, pre_act_coeff=0.01, bandwidth=0.5,
                             init_threshold=0.4),
    "topk": dict(arch="topk", k=6),
    "topk_aux": dict(arch="topk", k=6, k_aux=12),
    "batchtopk": dict(arch="batchtopk", k=6),
    "batchtopk_aux": dict(arch="batchtopk", k=6),
}


def _sae(case: str, dtype: str) -> tuple[SAE, torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(N, D_IN, generator=g, dtype=torch.float64) + 1
    sae = SAE(d_in=D_IN, d_sae=D_SAE, dtype=dtype, **CASES[case])
    sae.reset_parameters(g)
    sae.init_from_sample(x)
    with torch.no_grad():  # away from the tied init, thresholds spread around the pre-activations
        for p in (sae.W_enc, sae.b_enc, sae.W_dec):
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
        if sae.cfg.arch == "jumprelu":
            sae.threshold.copy_(0.2 + torch.rand(D_SAE, generator=g, dtype=torch.float64))
    dead = None
    if case.endswith("_aux"):
        dead = torch.zeros(D_SAE, dtype=torch.bool)
        dead[torch.randperm(D_SAE, generator=g)[:40]] = True
    return sae, x, dead


def _run(fn, sae):
    sae.zero_grad(set_to_none=True)
    out = fn()
    (out[0] if isinstance(out, tuple) else out.loss).backward()
    return out, {k: p.grad.clone() for k, p in sae.named_parameters()}


@pytest.mark.parametrize("route", ["sparse", "dense"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_losses_and_gradients_equal_dense_autograd(case, route, dtype, monkeypatch):
    # route: every pattern taken as sparse (even dense ones) or as dense
    monkeypatch.setattr(sc, "SPARSE_MAX_DENSITY", 1.0 if route == "sparse" else 0.0)
    sae, x, dead = _sae(case, dtype)
    sae.train()
    (want, want_grads) = _run(lambda: reference_losses(sae, x, 0.7, dead), sae)
    got_out, got_grads = _run(lambda: sae.losses(x, sparsity_scale=0.7, dead=dead), sae)
    got = (got_out.loss, got_out.mse, got_out.sparsity, got_out.aux, got_out.latents, got_out.x_hat)
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == "float64" else dict(rtol=2e-5, atol=2e-5)
    for name, a, b in zip(("loss", "mse", "sparsity", "aux", "latents", "x_hat"), got, want):
        torch.testing.assert_close(a.detach(), b.detach(), **tol, msg=lambda m: f"{case} {route} {name}: {m}")
    if case.endswith("_aux") or CASES[case].get("pre_act_coeff"):
        assert float(want[3].detach()) > 0  # the auxiliary term is there to be compared
    for k, g in want_grads.items():
        assert g.abs().max() > 0, f"{case}: {k} gets no gradient, nothing compared"
        torch.testing.assert_close(got_grads[k], g, **tol, msg=lambda m: f"{case} {route} grad {k}: {m}")
    assert got_out.codes.fired().tolist() == (want[4] != 0).any(0).tolist()
    assert int(got_out.codes.active()) == int((want[4] != 0).sum())


def test_an_input_that_needs_its_gradient_gets_it():
    sae, x, dead = _sae("topk_aux", "float64")
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    reference_losses(sae, x1, 1.0, dead)[0].backward()
    sae.losses(x2, dead=dead).loss.backward()
    torch.testing.assert_close(x2.grad, x1.grad)


def test_the_real_density_picks_the_route(monkeypatch):
    """k just above the shipped density limit takes the dense route, below a higher limit the sparse one;
    both train the same step."""
    calls = {"sparse": 0}
    real = sc._Gather.apply

    def counting(*a):
        calls["sparse"] += 1
        return real(*a)

    monkeypatch.setattr(sc._Gather, "apply", counting)
    k = int(D_SAE * sc.SPARSE_MAX_DENSITY) + 2
    sae, x, _ = _sae("topk", "float64")
    sae = SAE(sae.cfg, k=k).init_from_sample(x)
    assert Pattern.per_row(sae.encode(x).topk(k).indices, D_SAE).density == pytest.approx(k / D_SAE)
    dense = sae.losses(x).loss
    assert calls["sparse"] == 0
    monkeypatch.setattr(sc, "SPARSE_MAX_DENSITY", (k + 1) / D_SAE)
    sparse = sae.losses(x).loss
    assert calls["sparse"] == 1
    torch.testing.assert_close(sparse, dense)


def test_patterns_are_row_major_with_sorted_columns():
    idx = torch.tensor([[5, 1, 3], [0, 9, 2]])
    p = Pattern.per_row(idx, 10)
    assert p.rows.tolist() == [0, 0, 0, 1, 1, 1] and p.cols.tolist() == [1, 3, 5, 0, 2, 9]
    assert p.crow.tolist() == [0, 3, 6] and p.density == pytest.approx(6 / 20)
    f = Pattern.flat(torch.tensor([13, 2, 10, 7]), 3, 5)  # rows 2, 0, 2, 1
    assert (f.rows.tolist(), f.cols.tolist(), f.crow.tolist()) == ([0, 1, 2, 2], [2, 2, 0, 3], [0, 1, 2, 4])
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[0, 3] = mask[2, 0] = mask[2, 1] = True
    w = Pattern.where(mask)
    assert (w.rows.tolist(), w.cols.tolist(), w.crow.tolist()) == ([0, 2, 2], [3, 0, 1], [0, 1, 1, 3])


def test_the_trainers_fused_adam_takes_the_steps_plain_adam_takes():
    from avec.dictionaries.train import TrainConfig, adam

    cfg = TrainConfig(steps=5, lr=1e-2)
    sae, x, dead = _sae("topk_aux", "float64")
    twin = SAE(sae.cfg)
    twin.load_state_dict(sae.state_dict())
    fused, plain = adam(sae, cfg), torch.optim.Adam(twin.parameters(), lr=cfg.lr, betas=cfg.betas, foreach=False)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    start = {k: v.clone() for k, v in sae.state_dict().items()}
    for step in range(cfg.steps):
        for model, opt in ((sae, fused), (twin, plain)):
            opt.zero_grad(set_to_none=True)
            model.losses(x[step::2], dead=dead).loss.backward()
            opt.step()
    for k, p in sae.named_parameters():
        assert (p - start[k]).abs().max() > 1e-4  # it moved
        torch.testing.assert_close(p, dict(twin.named_parameters())[k], rtol=1e-12, atol=1e-12)
