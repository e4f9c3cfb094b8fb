"""Runs, caches, interventions, positions, gradients and errors of the core."""

import pytest
import torch
from torch import nn

from avec import AddVector, Apply, At, From, Front, MeanAblate, Model, Patch, ProjectOut, Scale, UnknownHookPoint, Zero
from avec.core.positions import TokenContext

from _tiny import tiny_lm, tokens


def no_hooks_left(module: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in module.modules())


def test_hooks_removed_after_exception_inside_intervene():
    lm = tiny_lm("llama")
    x = tokens(lm)
    base = lm.run(x).logits
    with pytest.raises(RuntimeError, match="boom"):
        with lm.intervene(AddVector("blocks.1.resid_pre", torch.ones(lm.d_model))):
            steered = lm.hf(x).logits
            assert not torch.equal(steered, base)
            raise RuntimeError("boom")
    assert no_hooks_left(lm.hf)
    assert torch.equal(lm.run(x).logits, base)


def test_hooks_removed_when_an_intervention_fails_mid_forward():
    lm = tiny_lm("llama")
    bad = Apply("blocks.1.resid_pre", fn=lambda v, ctx: v[:, :1])  # wrong shape -> error inside the hook
    with pytest.raises(ValueError, match="must return a tensor of shape"):
        lm.run(tokens(lm), interventions=[bad])
    assert no_hooks_left(lm.hf)


def test_per_row_coefficients_equal_separate_runs():
    lm = tiny_lm("qwen2")
    x = tokens(lm, batch=1)
    vec = torch.randn(lm.d_model)
    coeffs = torch.tensor([0.0, 1.0, -2.5, 4.0])
    batched = lm.run(x.repeat(4, 1), interventions=[AddVector("blocks.1.resid_pre", vec, coeff=coeffs)]).logits
    for i, c in enumerate(coeffs.tolist()):
        single = lm.run(x, interventions=[AddVector("blocks.1.resid_pre", vec, coeff=c)]).logits[0]
        assert torch.allclose(batched[i], single, atol=1e-5)
    assert torch.allclose(batched[0], lm.run(x).logits[0], atol=1e-6)
    with pytest.raises(ValueError, match="3 coefficients .* has 4 rows"):
        lm.run(x.repeat(4, 1), interventions=[AddVector("blocks.1.resid_pre", vec, coeff=torch.ones(3))])


def test_positions_are_prompt_relative_with_padding():
    """With right padding, -1 is each prompt's own last token, and padding is never touched."""
    lm = tiny_lm("llama")
    ids = tokens(lm, batch=2, seq=6)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    vec = torch.randn(lm.d_model)
    inputs = {"input_ids": ids, "attention_mask": mask}
    base = lm.run(inputs, cache=["blocks.0.resid_pre"]).cache["blocks.0.resid_pre"]
    for positions, expected in [
        (-1, [[5], [3]]),
        (At((0, -2)), [[0, 4], [0, 2]]),
        (Front(2), [[0, 1], [0, 1]]),
        (From(-2), [[4, 5], [2, 3]]),  # never the padding; generated tokens count (see test_token_context)
        ("prompt", [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3]]),
    ]:
        got = lm.run(inputs, cache=["blocks.0.resid_pre"],
                     interventions=[AddVector("blocks.0.resid_pre", vec, positions=positions)]).cache["blocks.0.resid_pre"]
        changed = [(got[r] - base[r]).abs().sum(-1).nonzero().flatten().tolist() for r in range(2)]
        assert changed == expected, (positions, changed)
    # a position that one prompt lacks is refused, as caching it is, rather than skipped in that row
    with pytest.raises(ValueError, match=r"positions \[5\] selects no token of prompt\(s\) \[1\] \(prompt lengths \[6, 4\]\)"):
        lm.run(inputs, interventions=[AddVector("blocks.0.resid_pre", vec, positions=5)])


def test_per_position_vector_lands_on_prompt_positions():
    lm = tiny_lm("llama")
    x = tokens(lm, batch=1, seq=6)
    vec = torch.randn(3, lm.d_model)  # ActAdd layout: row i at prompt position start + i
    base = lm.run(x, cache=["blocks.1.resid_pre"]).cache["blocks.1.resid_pre"]
    got = lm.run(x, cache=["blocks.1.resid_pre"],
                 interventions=[AddVector("blocks.1.resid_pre", vec, start=2)]).cache["blocks.1.resid_pre"]
    assert torch.allclose(got[0, 2:5] - base[0, 2:5], vec, atol=1e-6)
    assert torch.equal(got[0, :2], base[0, :2]) and torch.equal(got[0, 5:], base[0, 5:])


def test_cache_positions_device_and_dtype():
    lm = tiny_lm("gpt2")
    x = tokens(lm, batch=3, seq=5)
    full = lm.run(x, cache=["blocks.*.resid_post"]).cache
    last = lm.run(x, cache=["blocks.*.resid_post"], positions=-1, cache_dtype=torch.float16).cache
    assert last["blocks.2.resid_post"].shape == (3, 1, lm.d_model)
    assert last["blocks.2.resid_post"].dtype == torch.float16
    assert torch.allclose(last["blocks.2.resid_post"][:, 0].float(), full["blocks.2.resid_post"][:, -1], atol=1e-2)
    assert full.stack("resid_post").shape == (lm.n_layers, 3, 5, lm.d_model)
    assert set(full) == {f"blocks.{l}.resid_post" for l in range(lm.n_layers)}  # only what was asked


def test_gradients_match_finite_differences():
    """grad=True gives d metric / d activation, including both paths out of resid_mid."""
    lm = tiny_lm("gemma3_text", dtype=torch.float64)
    x = tokens(lm, batch=1, seq=5)

    def metric(run):
        return run.logits[0, -1, 3] - run.logits[0, -1, 7]

    points = ["blocks.0.resid_mid", "blocks.1.resid_pre", "blocks.1.attn.z", "blocks.1.mlp.post"]
    run = lm.run(x, cache=points, grad=True, metric=metric)
    for point in points:
        g = run.grads[point]
        assert g.shape == run.cache[point].shape
        direction = torch.randn_like(g[0])  # [pos, *width]
        # HF norms compute in float32: central differences, a step scaled to the activation's size
        eps = 1e-3 * run.cache[point].pow(2).mean().sqrt()
        up = metric(lm.run(x, interventions=[AddVector(point, eps * direction)]))
        down = metric(lm.run(x, interventions=[AddVector(point, -eps * direction)]))
        numeric = (up - down) / (2 * eps)
        analytic = (g[0] * direction).sum()
        assert analytic.abs() > 1e-3, point
        assert torch.isclose(numeric, analytic, rtol=5e-3, atol=1e-5), (point, numeric, analytic)
    assert no_hooks_left(lm.hf)


def test_ablations():
    lm = tiny_lm("llama")
    x = tokens(lm)
    p = "blocks.1.resid_mid"
    base = lm.run(x, cache=[p]).cache[p]
    d = torch.randn(lm.d_model)
    out = lm.run(x, cache=[p], interventions=[ProjectOut(p, d)]).cache[p]
    assert (out @ (d / d.norm())).abs().max() < 1e-4
    assert torch.allclose(out, base - (base @ (d / d.norm()))[..., None] * (d / d.norm()), atol=1e-5)
    mean = base.mean((0, 1))
    out = lm.run(x, cache=[p], interventions=[MeanAblate(p, mean, positions=-1)]).cache[p]
    assert torch.allclose(out[:, -1], mean.expand(2, -1)) and torch.equal(out[:, :-1], base[:, :-1])
    out = lm.run(x, cache=[p], interventions=[Scale(p, factor=2.0)]).cache[p]
    assert torch.allclose(out, 2 * base)
    out = lm.run(x, cache=[p], interventions=[Zero(p, positions=0)]).cache[p]
    assert out[:, 0].abs().max() == 0 and torch.equal(out[:, 1:], base[:, 1:])


def test_patch_from_other_run_moves_the_output_to_the_source():
    lm = tiny_lm("mistral")
    clean, corrupt = tokens(lm, batch=1, seed=1), tokens(lm, batch=1, seed=2)
    clean_run = lm.run(clean, cache=["blocks.2.resid_post"])
    patched = lm.run(corrupt, interventions=[Patch("blocks.2.resid_post", source=clean_run)])
    assert torch.allclose(patched.logits, clean_run.logits, atol=1e-5)  # last block: everything replaced
    partial = lm.run(corrupt, interventions=[Patch("blocks.2.resid_post", source=clean_run, positions=-1)])
    assert torch.allclose(partial.logits[:, -1], clean_run.logits[:, -1], atol=1e-5)
    assert not torch.allclose(partial.logits[:, 0], clean_run.logits[:, 0])


def test_aliases_and_globs():
    lm = tiny_lm("llama")
    assert lm.resolve("blocks.1.hook_resid_pre") == ["blocks.1.resid_pre"]
    assert lm.resolve("blocks.1.attn.hook_z") == ["blocks.1.attn.z"]
    assert lm.resolve("blocks.*.hook_resid_post") == [f"blocks.{l}.resid_post" for l in range(3)]
    assert lm.resolve("hook_embed") == ["embed"]
    run = lm.run(tokens(lm), cache=["blocks.0.hook_mlp_out"])
    assert torch.equal(run.cache["blocks.0.mlp_out"], run.cache["blocks.0.hook_mlp_out"])


# -- bad input ---------------------------------------------------------------------------------

def test_unknown_hook_point_lists_near_matches():
    lm = tiny_lm("llama")
    with pytest.raises(UnknownHookPoint) as err:
        lm.run(tokens(lm), cache=["blocks.1.resid_psot"])
    msg = str(err.value)
    assert "blocks.1.resid_post" in msg and "Valid hook points" in msg and "blocks.{l}.attn.z" in msg
    with pytest.raises(UnknownHookPoint, match="matches no hook point"):
        lm.resolve("blocks.*.nothing")


def test_layer_out_of_range():
    lm = tiny_lm("llama")
    with pytest.raises(UnknownHookPoint, match=r"layer 7 is out of range .* 3 layers \(0..2\)"):
        lm.run(tokens(lm), interventions=[AddVector("blocks.7.resid_pre", torch.zeros(lm.d_model))])


def test_vector_width_mismatch_names_both_widths():
    lm = tiny_lm("llama")
    with pytest.raises(ValueError, match=r"shape \[65\] but hook point 'blocks.1.resid_pre' has width \[64\]"):
        lm.run(tokens(lm), interventions=[AddVector("blocks.1.resid_pre", torch.zeros(65))])
    with pytest.raises(ValueError, match="direction has width 10 .* width 64"):
        lm.run(tokens(lm), interventions=[ProjectOut("blocks.1.resid_pre", torch.ones(10))])
    with pytest.raises(ValueError, match="zero .*norm"):
        ProjectOut("blocks.1.resid_pre", torch.zeros(64))
    with pytest.raises(ValueError, match="NaN"):
        AddVector("blocks.1.resid_pre", torch.zeros(64), coeff=float("nan"))


def test_empty_input():
    lm = tiny_lm("llama")
    with pytest.raises(ValueError, match="empty input"):
        lm.run(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="empty input"):
        lm.run([])


def test_cache_from_other_model_is_refused():
    a, b = tiny_lm("llama"), tiny_lm("qwen2")
    run = a.run(tokens(a), cache=["blocks.0.resid_pre"])
    with pytest.raises(ValueError, match="cannot be patched across models"):
        b.run(tokens(b), interventions=[Patch("blocks.0.resid_pre", source=run)])
    partial = a.run(tokens(a), cache=["blocks.0.resid_pre"], positions=-1)
    with pytest.raises(ValueError, match="every position"):
        a.run(tokens(a), interventions=[Patch("blocks.0.resid_pre", source=partial)])


def test_bad_heads_and_read_only_points():
    lm = tiny_lm("llama")
    with pytest.raises(ValueError, match=r"head\(s\) \[4\] out of range .* 4 heads"):
        lm.run(tokens(lm), interventions=[Zero("blocks.0.attn.z", heads=4)])
    with pytest.raises(ValueError, match="only at per-head"):
        lm.run(tokens(lm), interventions=[Zero("blocks.0.resid_pre", heads=1)])
    with pytest.raises(ValueError, match="read .* but not edited"):
        lm.run(tokens(lm), interventions=[Zero("blocks.0.attn.pattern")])


def test_grad_needs_a_scalar_or_vector_metric():
    lm = tiny_lm("llama")
    with pytest.raises(ValueError, match="scalar tensor or a vector"):
        lm.run(tokens(lm), cache=["blocks.0.resid_pre"], grad=True, metric=lambda r: r.logits[:, -2:, 0])
    with pytest.raises(ValueError, match="scalar tensor or a vector"):
        lm.run(tokens(lm), cache=["blocks.0.resid_pre"], grad=True, metric=lambda r: 1.0)
    rows = lm.run(tokens(lm), cache=["blocks.0.resid_pre"], grad=True, metric=lambda r: r.logits[:, -1, 0])
    assert rows.grads["blocks.0.resid_pre"].shape[0] == 2  # one gradient row per metric (see test_core_freeze)


def test_one_forward_pass_gives_the_gradients_of_several_metrics():
    """run(grad=True) without a metric keeps the graph: run.gradients(m) equals run(grad=True, metric=m), for
    scalar and vector metrics, as often as asked; a run without the graph says how to get one."""
    lm = tiny_lm("llama", dtype=torch.float64)
    x = tokens(lm, batch=1, seq=5)
    points = ["blocks.0.resid_mid", "blocks.1.resid_pre"]
    first = lambda r: r.logits[0, -1, 3] - r.logits[0, -1, 7]  # noqa: E731
    rows = lambda r: r.logits[0, -1, :4] * r.cache["blocks.1.resid_pre"][0, 2, 0]  # noqa: E731
    live = lm.run(x, cache=points, grad=True)
    assert live.grads is None and not live.logits.requires_grad
    for metric in (first, rows, first):
        got = live.gradients(metric)
        want = lm.run(x, cache=points, grad=True, metric=metric)
        for p in points:
            torch.testing.assert_close(got[p], want.grads[p], rtol=0, atol=0)
        torch.testing.assert_close(torch.as_tensor(live.metric), torch.as_tensor(want.metric))
    assert live.gradients(rows)["blocks.0.resid_mid"].shape[0] == 4
    with pytest.raises(ValueError, match="grad=True and no metric"):
        lm.run(x, cache=points).gradients(first)


# -- plain modules -----------------------------------------------------------------------------

class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        self.head = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        return self.head(self.block(self.conv(x)).flatten(1))


def test_plain_module_hook_points_are_module_paths():
    torch.manual_seed(0)
    m = Model(TinyCNN(), name="cnn")
    assert m.hook_points == ["conv", "block", "block.0", "block.1", "head"]
    x = torch.randn(3, 3, 8, 8)
    base = m.run(x, cache=["conv_out", "block"])
    assert base.cache["conv"].shape == (3, 4, 8, 8)
    assert torch.equal(m.run(x, interventions=[AddVector("conv_out", torch.zeros(4, 8, 8))]).output, base.output)
    v = torch.randn(4, 8, 8)
    steered = m.run(x, cache=["conv"], interventions=[AddVector("conv", v, coeff=torch.tensor([0.0, 1.0, 2.0]))])
    assert torch.equal(steered.output[0], base.output[0])
    assert torch.allclose(steered.cache["conv"][2] - base.cache["conv"][2], 2 * v, atol=1e-6)
    with pytest.raises(ValueError, match="no token positions"):
        m.run(x, interventions=[AddVector("conv", v, positions=-1)])
    with pytest.raises(ValueError, match=r"shape \[4, 8\] but hook point 'conv'"):
        m.run(x, interventions=[AddVector("conv", torch.zeros(4, 8))])
    assert no_hooks_left(m.module)


def test_token_context_positions():
    ctx = TokenContext(torch.tensor([0, 2]), torch.tensor([4, 2]), offset=0, seq_len=4)
    assert ctx.positions().tolist() == [[0, 1, 2, 3], [-2, -1, 0, 1]]
    step = TokenContext(torch.tensor([0, 2]), torch.tensor([4, 2]), offset=4, seq_len=1)
    assert From(-1).mask(step).tolist() == [[True], [True]]
    assert Front(2).mask(step).tolist() == [[False], [False]]


def test_forward_kwargs_reach_the_model_and_last_logits_follow():
    lm = tiny_lm("llama")
    ids = tokens(lm, batch=2, seq=6)
    mask = torch.tensor([[1] * 6, [1] * 6])
    full = lm.run({"input_ids": ids, "attention_mask": mask})
    kept = lm.run({"input_ids": ids, "attention_mask": mask}, logits_to_keep=1)
    assert kept.logits.shape == (2, 1, lm.dims.vocab)
    assert torch.allclose(kept.last_logits(), full.last_logits(), atol=1e-5)
    ragged = lm.run({"input_ids": ids, "attention_mask": torch.tensor([[1] * 6, [1] * 4 + [0] * 2])}, logits_to_keep=1)
    with pytest.raises(ValueError, match="do not reach every prompt's last token"):
        ragged.last_logits()


def test_cache_position_beyond_a_short_prompt_names_it():
    lm = tiny_lm("llama")
    inputs = {"input_ids": tokens(lm, batch=2, seq=6), "attention_mask": torch.tensor([[1] * 6, [1] * 3 + [0] * 3])}
    with pytest.raises(ValueError, match=r"prompt\(s\) \[1\] are too short \(lengths \[6, 3\]\)"):
        lm.run(inputs, cache=["blocks.0.resid_pre"], positions=4)


def test_stop_early_records_the_same_values_and_skips_the_rest():
    lm = tiny_lm("llama")
    x = tokens(lm, batch=2, seq=5)
    points = ["blocks.0.resid_post", "blocks.1.resid_mid"]
    full = lm.run(x, cache=points)
    last = lm.get_module(f"{lm.arch.layers}.2")

    def boom(*a, **k):
        raise AssertionError("layer 2 ran")

    handle = last.register_forward_pre_hook(boom)
    try:
        early = lm.run(x, cache=points, stop_early=True)
    finally:
        handle.remove()
    for p in points:
        assert torch.equal(early.cache[p], full.cache[p])
    with pytest.raises(AttributeError, match="stop_early"):
        early.logits
    with pytest.raises(ValueError, match="stop_early=True needs cached points"):
        lm.run(x, stop_early=True)
    assert no_hooks_left(lm.module)
