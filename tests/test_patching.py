"""Patching and ablation: batched sweeps equal the one-at-a-time loop, endpoints are 0 and 1,
attribution estimates track real patches, orthogonalized weights equal hook ablation, bad input fails."""

import pytest
import torch

from avec import Zero
from avec.patching import (activation_patching, attribution_patching, directional_ablation, logit_diff,
                           mean_ablation, mean_activation, orthogonalize, orthogonalized, zero_ablation)

from _tiny import tiny_lm, tokens


def pair(lm, batch=2, seq=5):
    return tokens(lm, batch=batch, seq=seq), tokens(lm, batch=batch, seq=seq, seed=5)


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text", "gpt2"])
@pytest.mark.parametrize("point,by", [("resid_pre", "position"), ("resid_mid", "position"), ("attn_out", "position"),
                                      ("mlp_out", "layer"), ("attn.z", "head"), ("attn.z", "head_position")])
def test_batched_sweep_equals_loop_of_single_patches(model_type, point, by):
    lm = tiny_lm(model_type)
    clean, corrupt = pair(lm)
    fast = activation_patching(lm, clean, corrupt, point, by, answer=3, wrong=4, chunk_size=7)
    slow = activation_patching(lm, clean, corrupt, point, by, answer=3, wrong=4, batched=False)
    assert fast.values.shape == slow.values.shape
    assert torch.allclose(fast.raw, slow.raw, atol=1e-5, rtol=1e-5)
    assert fast.values.abs().max() > 0.05  # the grid is not trivially empty


def test_progress_function_hears_every_forward_pass():
    lm = tiny_lm("llama")
    clean, corrupt = pair(lm, batch=1)
    for batched, chunk in ((True, 4), (False, 32)):
        heard = []
        res = activation_patching(lm, clean, corrupt, "resid_pre", answer=3, wrong=4, chunk_size=chunk,
                                  batched=batched, progress=lambda done, total: heard.append((done, total)))
        cells = res.values.numel()  # 3 layers x 5 positions
        step = chunk if batched else 1
        assert heard == [(min(d, cells), cells) for d in range(step, cells + step, step)], heard


def test_normalised_metric_endpoints():
    lm = tiny_lm("qwen2")
    clean, corrupt = pair(lm)
    last = lm.n_layers - 1
    # patching the whole last residual restores the clean run: exactly 1 (denoise) / 0 (noise)
    whole = activation_patching(lm, clean, corrupt, "resid_post", "layer", answer=3, wrong=4)
    assert torch.allclose(whole.values[last], torch.tensor(1.0), atol=1e-5)
    noised = activation_patching(lm, clean, corrupt, "resid_post", "layer", answer=3, wrong=4, direction="noise")
    assert torch.allclose(noised.values[last], torch.tensor(0.0), atol=1e-5)
    # the last layer's residual at an earlier position reaches no logit the metric reads: exactly 0
    grid = activation_patching(lm, clean, corrupt, "resid_post", answer=3, wrong=4)
    assert torch.allclose(grid.values[last, :-1], torch.zeros(4), atol=1e-6)
    assert torch.allclose(grid.values[last, -1], torch.tensor(1.0), atol=1e-5)
    assert whole.clean_metric != whole.corrupted_metric


def test_patching_a_run_with_its_own_activations_changes_nothing():
    lm = tiny_lm("gemma2")
    clean, _ = pair(lm)
    other = tokens(lm, batch=2, seq=5, seed=9)
    metric = logit_diff(lm, 3, 4)
    base = float(metric(lm.run(clean)))
    # noising the clean run with clean activations: every cell keeps the clean metric
    from avec.patching._pairs import prepare
    from avec.patching.activation import _sweep, make_grid
    p = prepare(lm, clean, other, metric)
    grid = make_grid(lm, "resid_mid", "position", p.seq, p.labels)
    src = lm.run(clean, cache=[grid.hook(l) for l in grid.layers] + ["blocks.*.resid_pre"])
    raw = _sweep(lm, grid, p, src, src, p.clean_ids, p.clean_mask, chunk_size=6, progress=False)
    assert torch.allclose(raw, torch.full_like(raw, base), atol=1e-5)


def test_user_metric_and_layers_subset():
    lm = tiny_lm("llama")
    clean, corrupt = pair(lm, batch=1)

    def prob(run):
        return run.last_logits().softmax(-1)[:, 3].mean()

    res = activation_patching(lm, clean, corrupt, "resid_pre", metric=prob, layers=[0, 2])
    assert res.values.shape == (2, 5) and res.labels[0] == ("0", "2")
    frame = res.to_frame()
    assert len(frame) == 10 and {"layer", "position", "score", "metric"} <= set(frame.columns)
    assert "<img" in res._repr_html_()


def test_attribution_tracks_activation_patching():
    lm = tiny_lm("gpt2")
    clean, corrupt = pair(lm)
    for point, by in [("attn.z", "head"), ("attn_out", "position"), ("mlp_out", "layer")]:
        real = activation_patching(lm, clean, corrupt, point, by, answer=3, wrong=4)
        est = attribution_patching(lm, clean, corrupt, point, by, answer=3, wrong=4)
        assert est.values.shape == real.values.shape and est.method == "attribution"
        assert real.correlation(est) > 0.9, (point, real.correlation(est))
    # cells with no path to the metric: zero gradient and zero real effect
    est = attribution_patching(lm, clean, corrupt, "resid_post", answer=3, wrong=4)
    assert est.values[-1, :-1].abs().max() < 1e-6


def test_bad_patching_inputs():
    lm = tiny_lm("llama")
    clean, corrupt = pair(lm)
    with pytest.raises(ValueError, match="same token length"):
        activation_patching(lm, clean, corrupt[:, :4], answer=3, wrong=4)
    with pytest.raises(ValueError, match="scalar"):
        activation_patching(lm, clean, corrupt, metric=lambda run: run.last_logits()[:, 3])
    with pytest.raises(ValueError, match="scalar"):
        attribution_patching(lm, clean, corrupt, metric=lambda run: run.last_logits()[:, 3])
    with pytest.raises(ValueError, match="answer= and wrong="):
        activation_patching(lm, clean, corrupt)
    with pytest.raises(ValueError, match="the same on the clean and corrupted"):
        activation_patching(lm, clean, clean, answer=3, wrong=4)
    with pytest.raises(ValueError, match="patchable points"):
        activation_patching(lm, clean, corrupt, "blocks.0.mlp.post", answer=3, wrong=4)
    with pytest.raises(ValueError, match="head or head_position"):
        activation_patching(lm, clean, corrupt, "attn.z", "position", answer=3, wrong=4)


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gpt2"])
def test_weight_orthogonalization_equals_hook_directional_ablation(model_type):
    lm = tiny_lm(model_type)
    x = tokens(lm)
    d = torch.randn(lm.d_model) * 3
    base = lm.run(x).logits
    hooked = lm.run(x, interventions=directional_ablation(lm, d)).logits
    writes = lm.run(x, interventions=directional_ablation(lm, d, where="writes")).logits
    unembed_before = lm.W_U.clone()
    with orthogonalize(lm, d):
        edited = lm.run(x, cache=["blocks.1.resid_mid"])
    assert torch.allclose(edited.logits, hooked, atol=1e-5)
    assert torch.allclose(writes, hooked, atol=1e-5)
    assert not torch.allclose(hooked, base, atol=1e-3)  # the ablation does something
    assert (edited.cache["blocks.1.resid_mid"] @ (d / d.norm())).abs().max() < 1e-4  # no d left
    assert torch.equal(lm.run(x).logits, base)  # reverted, tied unembedding untouched
    assert torch.equal(lm.W_U, unembed_before)
    copy = orthogonalized(lm, d)
    assert torch.allclose(copy.run(x).logits, hooked, atol=1e-5)
    assert torch.equal(lm.run(x).logits, base)


def test_orthogonalization_refuses_gemma_and_bad_directions():
    gemma = tiny_lm("gemma3_text")
    with pytest.raises(NotImplementedError, match="post-norms"):
        with orthogonalize(gemma, torch.ones(gemma.d_model)):
            pass
    lm = tiny_lm("llama")
    with pytest.raises(ValueError, match="width d_model = 64"):
        directional_ablation(lm, torch.ones(10))
    with pytest.raises(ValueError, match="zero"):
        orthogonalized(lm, torch.zeros(lm.d_model))
    with pytest.raises(ValueError, match="zero"):
        directional_ablation(lm, torch.zeros(lm.d_model))


def test_zero_and_mean_ablation_of_heads_and_neurons():
    lm = tiny_lm("llama")
    x = tokens(lm)
    ref = tokens(lm, batch=3, seq=6, seed=3)
    run = lm.run(x, cache=["blocks.1.mlp.post", "blocks.1.attn.z"],
                 interventions=[zero_ablation(lm, "blocks.1.mlp.post", neurons=[2, 5]),
                                zero_ablation(lm, "blocks.1.attn.z", heads=[1])])
    post, z = run.cache["blocks.1.mlp.post"], run.cache["blocks.1.attn.z"]
    assert post[..., [2, 5]].abs().max() == 0 and post[..., 3].abs().min() > 0
    assert z[:, :, 1].abs().max() == 0 and z[:, :, 0].abs().min() > 0
    mean = mean_activation(lm, ref, "blocks.0.mlp_out")
    full = lm.run(ref, cache=["blocks.0.mlp_out"]).cache["blocks.0.mlp_out"]
    assert torch.allclose(mean, full.mean((0, 1)), atol=1e-6)
    per_pos = mean_activation(lm, ref, "blocks.0.mlp_out", per_position=True)
    assert per_pos.shape == (6, lm.d_model) and torch.allclose(per_pos, full.mean(0), atol=1e-6)
    ablated = lm.run(x, cache=["blocks.0.mlp_out"], interventions=[mean_ablation(lm, "blocks.0.mlp_out", ref)])
    assert torch.allclose(ablated.cache["blocks.0.mlp_out"], mean.expand(2, 7, -1))
    heads = lm.run(x, cache=["blocks.2.attn.z"], interventions=[mean_ablation(lm, "blocks.2.attn.z", ref, heads=[0])])
    zmean = mean_activation(lm, ref, "blocks.2.attn.z")
    assert torch.allclose(heads.cache["blocks.2.attn.z"][:, :, 0], zmean[0].expand(2, 7, -1))
    neur = lm.run(x, cache=["blocks.0.mlp.post"],
                  interventions=[mean_ablation(lm, "blocks.0.mlp.post", ref, neurons=[4], per_position=True)])
    pmean = mean_activation(lm, ref, "blocks.0.mlp.post", per_position=True)
    assert torch.allclose(neur.cache["blocks.0.mlp.post"][0, :6, 4], pmean[:, 4], atol=1e-6)
    with pytest.raises(ValueError, match="reference set for mean ablation is empty"):
        mean_ablation(lm, "blocks.0.mlp_out", [])
    with pytest.raises(ValueError, match="out of range"):
        zero_ablation(lm, "blocks.0.mlp.post", neurons=[1000])
    assert isinstance(zero_ablation(lm, "blocks.0.attn_out"), Zero)


def test_smollm2_country_patching_and_attribution(smollm2):
    lm = smollm2
    clean, corrupt = "The capital of France is", "The capital of Germany is"
    res = activation_patching(lm, clean, corrupt, "resid_pre", answer=" Paris", wrong=" Berlin", layers=[0, 10, 29])
    labels = res.labels[1]
    country = [i for i, t in enumerate(labels) if "France" in t][0]
    assert res.values[0, country] > 0.9  # early on, the country token carries everything
    assert res.values[2, -1] > 0.9  # late, the last position does
    est = attribution_patching(lm, clean, corrupt, "attn_out", "position", answer=" Paris", wrong=" Berlin")
    assert est.values.shape == (30, len(labels))


def test_cli_registrars_add_commands():
    import typer
    from typer.testing import CliRunner

    from avec.app.cli.lens import register as register_lens
    from avec.app.cli.patching import register as register_patching

    app = typer.Typer()
    register_lens(app)
    register_patching(app)
    runner = CliRunner()
    for cmd in ("lens", "dla", "norms", "patch"):
        result = runner.invoke(app, [cmd, "--help"])
        assert result.exit_code == 0, result.output
    assert "--answer" in runner.invoke(app, ["patch", "--help"]).output


def test_tour_sections_are_listed():
    from avec.app.tour.lens import SECTIONS as LENS
    from avec.app.tour.patching import SECTIONS as PATCH

    for title, fn in LENS + PATCH:
        assert isinstance(title, str) and callable(fn)


@pytest.mark.parametrize("point,by", [("attn.v", "head"), ("attn.k", "head_position"), ("attn.q", "head")])
def test_query_key_value_heads_patch_like_the_loop_with_grouped_query_heads(point, by):
    lm = tiny_lm("qwen3")  # grouped-query attention and q/k norms after the projections
    clean, corrupt = pair(lm)
    fast = activation_patching(lm, clean, corrupt, point, by, answer=3, wrong=4, chunk_size=5)
    slow = activation_patching(lm, clean, corrupt, point, by, answer=3, wrong=4, batched=False)
    heads = lm.dims.kv_heads if point in ("attn.k", "attn.v") else lm.n_heads
    assert fast.values.shape[:2] == (lm.n_layers, heads)
    if point != "attn.q":
        assert heads < lm.n_heads  # one cell per key-value head, not per query head
    assert torch.allclose(fast.raw, slow.raw, atol=1e-5, rtol=1e-5)
    est = attribution_patching(lm, clean, corrupt, point, by, answer=3, wrong=4)
    assert est.values.shape == fast.values.shape
    gpt2 = tiny_lm("gpt2")
    with pytest.raises(ValueError, match="no attn.v hook point"):
        activation_patching(gpt2, *pair(gpt2), "attn.v", answer=3, wrong=4)
