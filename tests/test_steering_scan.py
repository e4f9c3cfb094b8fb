"""The injection coefficient scan: exact decomposition, batched == single runs, bad input."""

import pytest
import torch

from avec.steering import SteeringVector, coefficient_scan

from _tiny import tiny_lm, tokens


def _vector(lm, hook="blocks.1.resid_pre", positions="all", shape=None):
    g = torch.Generator().manual_seed(3)
    return SteeringVector.make(lm, hook, torch.randn(*(shape or (lm.d_model,)), generator=g), positions=positions)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3_text"])
def test_components_sum_to_the_metric_from_the_logits(family):
    lm = tiny_lm(family)
    prompt = tokens(lm, batch=1, seq=6)[0]
    r = coefficient_scan(lm, prompt, _vector(lm), (5, 7), n=9)
    assert r.contributions.shape == (9, len(r.names))
    assert torch.allclose(r.contributions.sum(1), r.total)
    scale = float(r.actual.abs().max()) + 1.0
    assert r.max_error < 1e-4 * scale, r.max_error
    assert r.info["decomposition error"] < 1e-4 * scale
    assert r.names[0] == "embed" and "injected" in r.names
    if family == "gpt2":
        assert "final_norm.bias" in r.names  # LayerNorm's bias is its own component
    frame = r.to_frame()
    assert list(frame.columns)[-1] == "total" and len(frame) == 9
    assert len(r.clusters) == len(r.names)
    assert set(r.cluster_frame()["cluster"]) <= set(range(4))


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3_text"])
def test_per_head_components_sum_to_the_attention_output(family):
    lm = tiny_lm(family)  # gemma3_text: attn_out = post_norm(o_proj(z)), its scale frozen per row
    prompt = tokens(lm, batch=1, seq=5)[0]
    v = _vector(lm)
    whole = coefficient_scan(lm, prompt, v, (5, 7), n=5)
    heads = coefficient_scan(lm, prompt, v, (5, 7), n=5, heads=True)
    scale = float(whole.actual.abs().max()) + 1.0
    assert heads.info["heads error"] < 1e-4 * scale  # head terms (+ biases) rebuild each attn_out
    assert heads.info["frozen post-norm"] == (family == "gemma3_text")
    for l in range(lm.n_layers):
        parts = [i for i, n in enumerate(heads.names) if n.startswith(f"L{l}.H") or n.startswith(f"L{l}.attn.")]
        assert len(parts) >= lm.n_heads
        assert torch.allclose(heads.contributions[:, parts].sum(1), whole.contributions[:, whole.names.index(f"L{l}.attn")],
                              atol=1e-4 * scale)
    assert torch.allclose(heads.total, whole.total, atol=1e-4 * scale)
    assert heads.max_error < 1e-4 * scale


def test_gemma_head_terms_are_the_dla_heads_at_coefficient_zero():
    from avec.lens import dla

    lm = tiny_lm("gemma3_text")
    prompt = tokens(lm, batch=1, seq=6)[0]
    scan = coefficient_scan(lm, prompt, _vector(lm), (5, 7), coeffs=[0.0], heads=True)
    ref = dla(lm, prompt[None], 5, 7, heads=True)
    assert ref.frozen_post_norm
    ours = torch.tensor([[float(scan.contributions[0, scan.names.index(f"L{l}.H{h}")]) for h in range(lm.n_heads)]
                         for l in range(lm.n_layers)])
    assert torch.allclose(ours, ref.heads[0], atol=1e-4 * (float(ref.heads.abs().max()) + 1.0))


def test_row_i_of_the_batched_scan_equals_a_single_run():
    lm = tiny_lm("qwen2")
    prompt = tokens(lm, batch=1, seq=6)[0]
    v = _vector(lm, positions="prompt", shape=(3, lm.d_model))  # ActAdd layout, front 3 positions
    coeffs = torch.tensor([-4.0, 0.0, 2.5, 8.0])
    batched = coefficient_scan(lm, prompt, v, (5, 7), coeffs=coeffs)
    for i, c in enumerate(coeffs.tolist()):
        single = coefficient_scan(lm, prompt, v, (5, 7), coeffs=[c])
        assert torch.allclose(batched.contributions[i], single.contributions[0], atol=1e-5)
        logits = lm.run(prompt[None], interventions=v.as_interventions(coeff=c)).logits[0, -1]
        assert torch.allclose(batched.actual[i], logits[5] - logits[7], atol=1e-5)
    # the vector sits on the front positions only, so nothing is injected at the answer position
    assert torch.equal(batched.contributions[:, batched.names.index("injected")], torch.zeros(4))
    zero = batched.contributions[1]
    base = lm.run(prompt[None]).logits[0, -1]
    assert torch.allclose(zero.sum(), base[5] - base[7], atol=1e-5)


def test_injected_component_at_the_answer_position():
    lm = tiny_lm("llama")
    prompt = tokens(lm, batch=1, seq=4)[0]
    v = _vector(lm, hook="blocks.2.resid_post", positions="all")
    r = coefficient_scan(lm, prompt, v, (1, 2), coeffs=[0.0, 1.0, 2.0])
    inj = r.contributions[:, r.names.index("injected")]
    assert inj[0] == 0 and inj[1] != 0
    assert r.max_error < 1e-4 * (float(r.actual.abs().max()) + 1)


def test_vector_target_and_default_coefficients():
    lm = tiny_lm("llama")
    prompt = tokens(lm, batch=1, seq=4)[0]
    d = torch.randn(lm.d_model)
    r = coefficient_scan(lm, prompt, _vector(lm), d)
    assert r.coeffs.shape == (128,) and float(r.coeffs[0]) == -10.0 and float(r.coeffs[-1]) == 10.0
    assert r.max_error < 1e-4 * (float(r.actual.abs().max()) + 1)
    fig = r.plot()
    assert len(fig.axes) == 2


def test_scan_bad_input():
    lm = tiny_lm("llama")
    prompt = tokens(lm, batch=1, seq=4)[0]
    v = _vector(lm)
    with pytest.raises(ValueError, match="NaN or inf"):
        coefficient_scan(lm, prompt, v, (1, 2), coeffs=[1.0, float("nan")])
    with pytest.raises(ValueError, match="no coefficients"):
        coefficient_scan(lm, prompt, v, (1, 2), coeffs=[])
    with pytest.raises(ValueError, match="outside the prompt"):
        coefficient_scan(lm, prompt, v, (1, 2), n=3, position=-9)
    with pytest.raises(TypeError, match="pair of tokens"):
        coefficient_scan(lm, prompt, v, "x", n=3)
    other = tiny_lm("qwen2")
    with pytest.raises(ValueError, match="made on model"):
        coefficient_scan(other, prompt, v, (1, 2), n=3)
