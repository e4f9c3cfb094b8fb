"""Lenses: DLA sums to the logit on every architecture, the logit lens ends at the model's logits,
decomposition adds up, weight norms match explicit products, bad inputs fail clearly."""

import pytest
import torch

from avec.lens import weights as W
from avec.lens.decomposition import decompose
from avec.lens.dla import dla
from avec.lens.logit_lens import logit_lens
from avec.lens.norms import weight_norms

from _tiny import tiny_lm, tokens


def close(a, b, rel=1e-4):
    scale = max(a.abs().max().item(), b.abs().max().item(), 1e-6)
    return (a - b).abs().max().item() <= rel * scale


def test_dla_sums_to_logit_difference_on_every_architecture(arch_lm):
    lm = arch_lm
    ids = tokens(lm)
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])  # right padding: -1 is each prompt's own last token
    run = lm.run({"input_ids": ids, "attention_mask": mask}, cache=["logits"])
    result = dla(lm, {"input_ids": ids, "attention_mask": mask}, target=5, against=[7, 11], heads=True, neurons=True)
    last = run.cache["logits"][torch.arange(2), torch.tensor([6, 4])]  # pre soft-capping (Gemma 2)
    expected = last[:, 5] - last[:, [7, 11]].diagonal()
    assert close(result.total, expected)
    assert close(result.logit, expected)
    if lm.config.model_type != "gemma2":  # no soft-capping: the model's own logits
        assert close(result.logit, run.last_logits()[:, 5] - run.last_logits()[:, [7, 11]].diagonal())
    # heads and neurons split their layer's contribution; the rest is the bias (none here but GPT-2's)
    attn, mlp = result.components[:, 1::2], result.components[:, 2::2]
    assert close(result.heads.sum(-1) + result.head_rest, attn)
    assert close(result.neurons.sum(-1) + result.neuron_rest, mlp)
    if lm.arch.family != "gpt2":
        assert result.head_rest.abs().max() <= 1e-4 * attn.abs().max()
        assert result.neuron_rest.abs().max() <= 1e-4 * mlp.abs().max()
    assert result.heads.abs().max() > 0 and result.neurons.abs().max() > 0
    assert result.frozen_post_norm == (lm.arch.family == "gemma")


def test_dla_single_logit_and_head_matches_explicit_projection():
    lm = tiny_lm("gpt2")
    x = tokens(lm, batch=1)
    res = dla(lm, x, target=9, heads=True)
    run = lm.run(x, cache=["logits", "blocks.1.attn.z", "blocks.2.resid_post"])
    assert close(res.total, run.logits[:, -1, 9])
    # head 2 of layer 1 by hand: z_h @ W_O[h], through the final LayerNorm with its scale frozen
    z = run.cache["blocks.1.attn.z"][0, -1, 2]
    write = z @ W.W_O(lm, 1)[2]
    ln = lm.get_module("transformer.ln_f")
    x_final = run.cache["blocks.2.resid_post"][0, -1]
    sigma = torch.sqrt(x_final.var(unbiased=False) + ln.eps)
    by_hand = ((write - write.mean()) / sigma * ln.weight) @ lm.W_U[:, 9]
    assert torch.isclose(res.heads[0, 1, 2], by_hand, rtol=1e-4, atol=1e-6)
    frame = res.to_frame()
    assert list(frame["component"][:3]) == ["embed", "L0 attn", "L0 mlp"] and len(res.top_heads(3)) == 3


def test_dla_bad_inputs():
    lm = tiny_lm("llama")
    x = tokens(lm)
    with pytest.raises(ValueError, match="3 tokens given for 2 prompts"):
        dla(lm, x, target=[1, 2, 3])
    with pytest.raises(ValueError, match="outside prompt"):
        dla(lm, x, target=1, position=9)
    run = lm.run(x, cache=["embed"])
    with pytest.raises(KeyError, match="lacks cached"):
        dla(lm, run, target=1)


def test_logit_lens_last_row_is_the_model(arch_lm):
    lm = arch_lm
    x = tokens(lm)
    run = lm.run(x)
    ll = logit_lens(lm, x, tokens=[3, 9])
    logp = run.logits.float().log_softmax(-1)
    assert ll.probs.shape == (lm.n_layers + 1, 2, 7, 2)
    assert torch.allclose(ll.probs[-1], logp[..., [3, 9]].exp(), atol=1e-6)
    assert ll.kl[-1].abs().max() < 1e-5
    assert torch.equal(ll.top_ids[-1], run.logits.argmax(-1))
    rank = (run.logits > run.logits[..., 3:4]).sum(-1)
    assert torch.equal(ll.ranks[-1, ..., 0], rank)
    # a tracked token that is the final top-1 is first top-1 at the last row or before
    own = logit_lens(lm, x, position=-1)
    assert own.probs.shape == (lm.n_layers + 1, 2, 1, 1)
    first = own.first_layer(1)
    assert ((first >= 0) & (first <= lm.n_layers)).all()


def test_logit_lens_points_and_errors():
    lm = tiny_lm("qwen2")
    x = tokens(lm, batch=1)
    ll = logit_lens(lm, x, points="all", position=-1)
    assert len(ll.point_labels) == 2 * lm.n_layers + 1 and ll.point_labels[-1] == "final"
    post = logit_lens(lm, x, points="resid_post")
    assert post.point_labels[-1] == f"L{lm.n_layers - 1} post" and torch.allclose(post.probs[-1, :, -1], ll.probs[-1, :, 0])
    with pytest.raises(ValueError, match="residual-width"):
        logit_lens(lm, x, points=["blocks.0.mlp.post"])
    with pytest.raises(ValueError, match="tokens is empty"):
        logit_lens(lm, x, tokens=[])
    frame = ll.to_frame()
    assert {"point", "top1", "kl_to_final"} <= set(frame.columns)


def test_decomposition_adds_up_and_projects():
    lm = tiny_lm("gemma3_text")
    x = tokens(lm)
    dec = decompose(lm, x, position=-2)
    assert close(dec.components.sum(1), dec.final, rel=1e-5)
    assert close(dec.accumulated[:, -1], dec.final, rel=1e-5)
    d = torch.randn(lm.d_model)
    proj = dec.project(d)
    assert close(proj.sum(1), dec.final @ (d / d.norm()), rel=1e-4)
    with pytest.raises(ValueError, match="zero norm"):
        dec.project(torch.zeros(lm.d_model))
    with pytest.raises(ValueError, match="width"):
        dec.project(torch.ones(3))


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_weight_norms_match_explicit_ov_products(model_type):
    lm = tiny_lm(model_type)
    wn = weight_norms(lm)
    assert wn.ov.shape == (lm.n_layers, lm.n_heads)
    for l, h in [(0, 0), (2, 3)]:
        ov = W.W_V(lm, l)[h] @ W.W_O(lm, l)[h]  # [d_model, d_model]
        assert torch.isclose(wn.ov[l, h], torch.linalg.matrix_norm(ov), rtol=1e-4)
        assert torch.isclose(wn.mlp_out[l], torch.linalg.matrix_norm(W.W_out(lm, l)), rtol=1e-5)
    if model_type == "llama":  # grouped-query attention: heads 0 and 1 share value head 0
        v = lm.get_module("model.layers.1.self_attn.v_proj").weight  # [n_kv * d_head, d_model]
        assert torch.equal(W.W_V(lm, 1)[1], v[: lm.d_head].T)
    assert len(wn.to_frame()) == lm.n_layers


def test_results_render():
    lm = tiny_lm("llama")
    x = tokens(lm, batch=1)
    for res in (dla(lm, x, target=1, against=2, heads=True), logit_lens(lm, x, tokens=[1]), decompose(lm, x), weight_norms(lm)):
        assert "<img" in res._repr_html_()


def test_smollm2_lens_and_dla_on_a_fact(smollm2):
    lm = smollm2
    prompt = "The Eiffel Tower is in the city of"
    ll = logit_lens(lm, prompt, tokens=[" Paris"], position=-1)
    assert ll.ranks[-1, 0, 0, 0] == 0  # the model's answer
    assert ll.ranks[0, 0, 0, 0] > 0  # but not at the embedding
    res = dla(lm, prompt, target=" Paris", against=" Rome", heads=True)
    assert close(res.total, res.logit) and res.logit.item() > 0


def test_tuned_lens_trains_saves_and_beats_the_logit_lens(tmp_path):
    from avec.lens.tuned_lens import TunedLens, compare_lenses, train_tuned_lens

    lm = tiny_lm("llama")
    texts = [row for row in tokens(lm, batch=24, seq=10, seed=4)]
    lens = train_tuned_lens(lm, texts[:16], steps=60, lr=3e-3, batch_tokens=64, progress=False)
    assert all(p.requires_grad for p in lm.hf.parameters())  # the model was only frozen while training
    cmp = compare_lenses(lm, lens, texts[16:])
    assert cmp.tuned_kl.mean() < cmp.logit_kl.mean()
    lens.save(tmp_path / "lens")
    assert not [p for p in (tmp_path / "lens").iterdir() if p.name.startswith(".")]  # no temp files left
    again = TunedLens.load(tmp_path / "lens")
    assert torch.equal(again.A, lens.A) and again.model_id == lm.model_id and again.meta["steps"] == 60
    with pytest.raises(ValueError, match="trained on"):
        compare_lenses(tiny_lm("qwen2"), again, texts[16:])
    with pytest.raises(ValueError, match="non-empty"):
        train_tuned_lens(lm, [], steps=1, progress=False)
    with pytest.raises(FileNotFoundError, match="no tuned lens"):
        TunedLens.load(tmp_path)


def test_ridge_start_recovers_an_affine_map_and_zero_start_is_the_logit_lens():
    from avec.lens.tuned_lens import compare_lenses, ridge_translators, train_tuned_lens

    g = torch.Generator().manual_seed(0)
    h = torch.randn(400, 2, 8, generator=g)
    M, c = torch.randn(8, 8, generator=g) / 3, torch.randn(8, generator=g)
    final = h[:, 1] @ M + c  # layer 1's residual maps affinely onto the final one
    A, b = ridge_translators(h, final, ridge=1e-9)
    assert torch.allclose(h[:, 1] + h[:, 1] @ A[1] + b[1], final, atol=1e-4)
    lm = tiny_lm("llama")
    texts = [row for row in tokens(lm, batch=8, seq=10, seed=4)]
    zero = train_tuned_lens(lm, texts, steps=0, init="zero", progress=False)
    cmp = compare_lenses(lm, zero, texts)
    assert torch.allclose(cmp.tuned_kl, cmp.logit_kl)
    with pytest.raises(ValueError, match="init must be"):
        train_tuned_lens(lm, texts, init="random", progress=False)


def test_tuned_lens_command_trains_saves_and_scores(tmp_path, smollm2):
    from typer.testing import CliRunner

    from avec.app.cli import app
    from avec.lens.tuned_lens import TunedLens

    text = tmp_path / "corpus.txt"
    text.write_text("The cat sat on the mat and looked at the door.\n\nIt rained all day, so we stayed inside.\n\n"
                    "Water boils at one hundred degrees at sea level.\n\nThe train left the station at nine.")
    result = CliRunner().invoke(app, ["tuned-lens", str(tmp_path / "lens"), "--text", str(text), "--steps", "0",
                                      "--score-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert "logit_lens_kl" in result.output and "tuned_lens_kl" in result.output
    lens = TunedLens.load(tmp_path / "lens")
    assert lens.model_id == smollm2.model_id and lens.A.shape == (smollm2.n_layers, smollm2.d_model, smollm2.d_model)
    bad = CliRunner().invoke(app, ["tuned-lens", str(tmp_path / "x"), "--text", str(tmp_path / "lens" / "tuned_lens.json")])
    assert bad.exit_code != 0 and "two paragraphs" in bad.output
