"""Freezing for gradients: outputs stay bit for bit, gradients are those of the model with its norm
scales (and attention patterns) held at this run's values, checked against hand-made frozen models."""

import types

import pytest
import torch

from _tiny import tiny_lm, tokens
from avec.core.norms import ElementwiseNorm


def _metric(run):
    return run.logits[0, -1, 3] - run.logits[0, -1, 7]


def _manual_grad(lm, x, norms: bool, attention: bool):
    """d metric / d embed with frozen parts built by hand: norm forwards replaced by their frozen-scale
    maps, q/k projections detached."""
    saved = []
    if norms:
        for path in lm.norm_modules():
            m = lm.get_module(path)
            n = ElementwiseNorm(m)

            def fwd(self, h, n=n):
                s = n.scale(h).detach()
                return (n.frozen(h, s) + (n.bias if n.bias is not None else 0)).to(h.dtype)

            saved.append((m, m.forward))
            m.forward = types.MethodType(fwd, m)
    if attention:
        for l in range(lm.n_layers):
            for proj in ("q_proj", "k_proj"):
                m = lm.get_module(f"{lm.arch.layers}.{l}.self_attn.{proj}")
                saved.append((m, m.forward))
                m.forward = types.MethodType(lambda self, h, f=m.forward: f(h).detach(), m)
    try:
        run = lm.run(x, cache=["embed"], grad=True, metric=_metric)
    finally:
        for m, f in saved:
            m.forward = f
    return run


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "qwen3"])
@pytest.mark.parametrize("freeze", [("norms",), ("attention",), ("norms", "attention")])
def test_frozen_gradients_equal_a_hand_frozen_model(arch, freeze):
    lm = tiny_lm(arch)
    x = tokens(lm, batch=1, seq=6)
    plain = lm.run(x, cache=["embed"], grad=True, metric=_metric)
    frozen = lm.run(x, cache=["embed"], grad=True, metric=_metric, freeze=freeze)
    assert torch.equal(frozen.logits, plain.logits)  # values untouched
    manual = _manual_grad(lm, x, "norms" in freeze, "attention" in freeze)
    assert torch.allclose(frozen.grads["embed"], manual.grads["embed"], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(frozen.grads["embed"], plain.grads["embed"], atol=1e-4)  # freezing matters


def test_frozen_final_norm_reads_out_linearly():
    lm = tiny_lm("llama")
    x = tokens(lm, batch=1, seq=5)
    last = f"blocks.{lm.n_layers - 1}.resid_post"
    run = lm.run(x, cache=[last], grad=True, metric=_metric, freeze="norms")
    norm = ElementwiseNorm(lm.get_module(lm.arch.final_norm))
    resid = run.cache[last][0, -1]
    d = lm.W_U[:, 3] - lm.W_U[:, 7]
    want = norm.readout(d.detach(), norm.scale(resid))
    assert torch.allclose(run.grads[last][0, -1], want, atol=1e-5)
    assert run.grads[last][0, :-1].abs().max() == 0


def test_freeze_errors():
    lm = tiny_lm("gpt2")
    with pytest.raises(ValueError, match="fused qkv"):
        lm.run(tokens(lm), grad=True, cache=["embed"], metric=_metric, freeze="attention")
    with pytest.raises(ValueError, match=r"cannot freeze \['mlps'\]"):
        lm.run(tokens(lm), freeze=["mlps"])
    lm.run(tokens(lm), grad=True, cache=["embed"], metric=_metric, freeze="norms")  # GPT-2's LayerNorms


def test_a_vector_metric_gives_one_gradient_row_per_metric():
    from _tiny import tiny_lm, tokens

    lm = tiny_lm("llama")
    ids = tokens(lm, batch=2, seq=5, seed=4)
    points = ["embed", "blocks.1.resid_post"]
    picks = [3, 5, 7]

    def vector(run):
        return run.logits[0, -1, picks] - run.logits[1, 2, picks].mean()

    rows = lm.run(ids, cache=points, grad=True, metric=vector, freeze=["norms"])
    assert rows.metric.shape == (3,)
    for k, t in enumerate(picks):
        one = lm.run(ids, cache=points, grad=True, freeze=["norms"],
                     metric=lambda run, t=t: run.logits[0, -1, t] - run.logits[1, 2, picks].mean())
        for p in points:
            assert rows.grads[p].shape == (3, *one.grads[p].shape)
            assert torch.allclose(rows.grads[p][k], one.grads[p], atol=1e-5)
        assert float(rows.metric[k]) == pytest.approx(one.metric, abs=1e-5)
    sel = lm.run(ids, cache=points, grad=True, metric=vector, positions=-1)
    assert sel.grads["embed"].shape == (3, 2, 1, lm.d_model)
    assert torch.allclose(sel.grads["embed"][:, :, 0], lm.run(ids, cache=points, grad=True, metric=vector).grads["embed"][:, :, -1])
    with pytest.raises(ValueError, match="scalar tensor or a vector"):
        lm.run(ids, cache=points, grad=True, metric=lambda run: run.logits[0, :, :2])


def test_gradient_runs_take_weights_as_constants_and_give_them_back():
    """Gradients are with respect to activations: while a gradient run's forward pass is recorded no weight
    requires grad (nothing of theirs on the tape), and afterwards each has its flag back, also on an exception."""
    lm = tiny_lm("llama")
    ids = tokens(lm, batch=1, seq=5)
    before = {n: p.requires_grad for n, p in lm.module.named_parameters()}
    assert any(before.values())
    seen = []
    first = lm.module.model.layers[0]
    handle = first.register_forward_hook(lambda *_: seen.append([p.requires_grad for p in lm.module.parameters()]))
    try:
        run = lm.run(ids, cache=["blocks.0.resid_post"], grad=True, metric=lambda r: r.logits[0, -1, 3])
        kept = lm.run(ids, cache=["blocks.0.resid_post"], grad=True)
    finally:
        handle.remove()
    assert seen and not any(any(flags) for flags in seen)
    assert {n: p.requires_grad for n, p in lm.module.named_parameters()} == before
    assert run.grads["blocks.0.resid_post"].abs().sum() > 0
    again = kept.gradients(lambda r: r.logits[0, -1, 3])  # the kept graph still reaches the cached point
    torch.testing.assert_close(again["blocks.0.resid_post"], run.grads["blocks.0.resid_post"])
    assert all(p.grad is None for p in lm.module.parameters())

    def boom(*_):
        raise RuntimeError("boom")

    handle = first.register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            lm.run(ids, cache=["blocks.0.resid_post"], grad=True, metric=lambda r: r.logits[0, -1, 3])
    finally:
        handle.remove()
    assert {n: p.requires_grad for n, p in lm.module.named_parameters()} == before
