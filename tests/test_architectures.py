"""Hook point identities on every supported architecture (tiny random configs)."""

import pytest
import torch

from avec import AddVector, Patch, Zero
from avec.models.architectures import UnsupportedArchitecture, architecture_for

from _tiny import tiny_lm, tokens

ALL_POINTS = ["embed", "blocks.*.resid_pre", "blocks.*.attn.z", "blocks.*.attn_out", "blocks.*.resid_mid",
              "blocks.*.mlp.post", "blocks.*.mlp_out", "blocks.*.resid_post", "final_norm", "logits"]


def close(a, b, rel=1e-5):
    scale = max(a.abs().max().item(), b.abs().max().item(), 1e-6)
    return (a - b).abs().max().item() <= rel * scale


def test_residual_stream_decomposes_exactly(arch_lm):
    lm = arch_lm
    run = lm.run(tokens(lm), cache=ALL_POINTS)
    c = run.cache
    assert torch.equal(c["embed"], c["blocks.0.resid_pre"])
    total = c["embed"].clone()
    for l in range(lm.n_layers):
        pre, mid, post = c[f"blocks.{l}.resid_pre"], c[f"blocks.{l}.resid_mid"], c[f"blocks.{l}.resid_post"]
        assert close(mid, pre + c[f"blocks.{l}.attn_out"])
        assert close(post, pre + c[f"blocks.{l}.attn_out"] + c[f"blocks.{l}.mlp_out"])
        if l + 1 < lm.n_layers:
            assert torch.equal(post, c[f"blocks.{l + 1}.resid_pre"])
        total = total + c[f"blocks.{l}.attn_out"] + c[f"blocks.{l}.mlp_out"]
    assert close(total, c[f"blocks.{lm.n_layers - 1}.resid_post"])
    # the final norm of the last residual gives the logits through the unembedding
    assert close(c["logits"], c["final_norm"] @ lm.W_U + (getattr(lm.get_module("lm_head"), "bias", None) or 0))
    if lm.arch.family != "gemma" or lm.config.model_type == "gemma3_text":
        assert close(c["logits"], run.logits)


def test_attn_out_is_z_through_output_projection(arch_lm):
    """attn.z is each head's output; o_proj(z) is attention's output (pre post-norm for Gemma)."""
    lm = arch_lm
    if lm.arch.family == "gemma":
        pytest.skip("Gemma's attn_out is after the post-attention norm")
    run = lm.run(tokens(lm), cache=["blocks.1.attn.z", "blocks.1.attn_out"])
    z = run.cache["blocks.1.attn.z"]
    assert z.shape[-2:] == (lm.n_heads, lm.d_head)
    o_proj = lm.get_module(f"{lm.arch.layers}.1.{lm.arch.attn_o}")
    assert close(o_proj(z.flatten(-2)), run.cache["blocks.1.attn_out"])


def test_zero_vector_and_self_patch_change_nothing(arch_lm):
    lm = arch_lm
    x = tokens(lm)
    base = lm.run(x, cache=ALL_POINTS)
    zero = lm.run(x, interventions=[AddVector(f"blocks.{l}.{p}", torch.zeros(lm.d_model))
                                    for l in range(lm.n_layers) for p in ("resid_pre", "resid_mid", "attn_out", "mlp_out")])
    assert torch.equal(zero.logits, base.logits)
    names = lm.resolve(ALL_POINTS)
    patched = lm.run(x, interventions=[Patch(n, source=base) for n in names])
    assert torch.equal(patched.logits, base.logits)


@pytest.mark.parametrize("point", ["resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"])
def test_addition_changes_nothing_upstream(point):
    lm = tiny_lm("llama")
    x = tokens(lm)
    names = lm.resolve(ALL_POINTS)
    base = lm.run(x, cache=names)
    vec = torch.randn(lm.d_model)
    hook = f"blocks.1.{point}"
    steered = lm.run(x, cache=names, interventions=[AddVector(hook, vec)])
    order = names.index(hook)
    for i, n in enumerate(names):
        same = torch.equal(base.cache[n], steered.cache[n])
        if i < order:
            assert same, f"{n} changed although it is upstream of {hook}"
        elif i > order and n.startswith(("blocks.2", "final_norm", "logits")):
            assert not same, f"{n} did not change although it is downstream of {hook}"
    assert torch.allclose(steered.cache[hook] - base.cache[hook], vec.expand_as(base.cache[hook]), atol=1e-5)


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text", "gpt2"])
def test_resid_mid_edit_reaches_mlp_and_residual(model_type):
    lm = tiny_lm(model_type)
    x = tokens(lm)
    pts = ["blocks.1.resid_mid", "blocks.1.mlp_out", "blocks.1.resid_post"]
    base = lm.run(x, cache=pts)
    vec = torch.randn(lm.d_model)
    new = lm.run(x, cache=pts, interventions=[AddVector("blocks.1.resid_mid", vec)])
    assert not torch.allclose(new.cache["blocks.1.mlp_out"], base.cache["blocks.1.mlp_out"])  # the MLP saw it
    residual = new.cache["blocks.1.resid_post"] - new.cache["blocks.1.mlp_out"]
    assert close(residual, base.cache["blocks.1.resid_mid"] + vec)  # and so did the residual stream
    assert close(new.cache["blocks.1.resid_mid"], base.cache["blocks.1.resid_mid"] + vec)


def test_head_intervention_changes_only_that_head(arch_lm):
    lm = arch_lm
    x = tokens(lm)
    h = 2
    base = lm.run(x, cache=["blocks.1.attn.z", "blocks.1.attn_out"])
    new = lm.run(x, cache=["blocks.1.attn.z", "blocks.1.attn_out"],
                 interventions=[AddVector("blocks.1.attn.z", torch.randn(lm.d_head), heads=h)])
    dz = new.cache["blocks.1.attn.z"] - base.cache["blocks.1.attn.z"]
    others = [i for i in range(lm.n_heads) if i != h]
    assert torch.equal(dz[:, :, others], torch.zeros_like(dz[:, :, others]))
    assert dz[:, :, h].abs().min() > 0
    if lm.arch.family != "gemma":  # what head h writes: its slice of the output projection
        w_o = lm.get_module(f"{lm.arch.layers}.1.{lm.arch.attn_o}").weight
        w_o = w_o.T if lm.arch.family != "gpt2" else w_o  # [n_heads*d_head, d_model]
        sl = slice(h * lm.d_head, (h + 1) * lm.d_head)
        expected = dz[:, :, h] @ w_o[sl]
        assert close(new.cache["blocks.1.attn_out"] - base.cache["blocks.1.attn_out"], expected, rel=1e-4)
    ablated = lm.run(x, cache=["blocks.1.attn.z"], interventions=[Zero("blocks.1.attn.z", heads=[0, 3])])
    z = ablated.cache["blocks.1.attn.z"]
    assert z[:, :, [0, 3]].abs().max() == 0 and torch.equal(z[:, :, 1], base.cache["blocks.1.attn.z"][:, :, 1])


def test_patterns_are_probabilities_and_attention_is_restored(arch_lm):
    lm = arch_lm
    before = lm.config._attn_implementation
    run = lm.run(tokens(lm, seq=5), cache=["blocks.0.attn.pattern", "blocks.0.resid_post"])
    p = run.cache["blocks.0.attn.pattern"]
    assert p.shape == (2, lm.n_heads, 5, 5)
    assert torch.allclose(p.sum(-1), torch.ones(2, lm.n_heads, 5), atol=1e-5)
    assert torch.triu(p, diagonal=1).abs().max() == 0  # causal
    assert lm.config._attn_implementation == before
    plain = lm.run(tokens(lm, seq=5), cache=["blocks.0.resid_post"])
    assert close(plain.cache["blocks.0.resid_post"], run.cache["blocks.0.resid_post"])


def test_unsupported_architecture_names_supported_ones():
    from transformers import AutoConfig

    config = AutoConfig.for_model("opt", hidden_size=32, num_hidden_layers=1, ffn_dim=64, num_attention_heads=2)
    with pytest.raises(UnsupportedArchitecture) as err:
        architecture_for(config)
    msg = str(err.value)
    assert "'opt'" in msg and "llama" in msg and "gpt2" in msg and "register_architecture" in msg


def test_start_at_layer_equals_full_run_with_that_residual(arch_lm):
    lm = arch_lm
    ids = tokens(lm)
    full = lm.run(ids, cache="blocks.*.resid_pre")
    layer = lm.n_layers - 1
    # unchanged residual: the same logits as the full run, and the skipped layers really are skipped
    same = lm.run(ids, start_at_layer=layer, start_resid=full.cache[f"blocks.{layer}.resid_pre"])
    assert torch.allclose(same.logits, full.logits, atol=1e-5)
    # an edited residual: the same as a full run with that residual patched in at blocks.layer.resid_pre
    edited = full.cache[f"blocks.{layer}.resid_pre"] + torch.randn_like(full.cache[f"blocks.{layer}.resid_pre"])
    patched = lm.run(ids, interventions=[Patch(f"blocks.{layer}.resid_pre", source=edited)], cache="blocks.*.resid_post")
    started = lm.run(ids, start_at_layer=layer, start_resid=edited, cache=f"blocks.{layer}.resid_post")
    assert not torch.allclose(patched.logits, full.logits, atol=1e-3)
    assert torch.allclose(started.logits, patched.logits, atol=1e-5)
    assert torch.allclose(started.cache[f"blocks.{layer}.resid_post"], patched.cache[f"blocks.{layer}.resid_post"], atol=1e-5)
    # the layers are restored afterwards
    assert torch.equal(lm.run(ids).logits, full.logits)


def test_start_at_layer_skips_computation_and_refuses_earlier_points():
    lm = tiny_lm("llama")
    ids = tokens(lm)
    full = lm.run(ids, cache="blocks.1.resid_pre")
    calls = []
    handle = lm.get_module(f"{lm.arch.layers}.0").register_forward_hook(lambda *a: calls.append(1))
    try:
        lm.run(ids, start_at_layer=1, start_resid=full.cache["blocks.1.resid_pre"])
        assert calls == []
        lm.run(ids)
        assert calls == [1]
    finally:
        handle.remove()
    start = full.cache["blocks.1.resid_pre"]
    with pytest.raises(ValueError, match=r"blocks\.0\.attn_out.*come before blocks\.1\.resid_pre"):
        lm.run(ids, cache="blocks.0.attn_out", start_at_layer=1, start_resid=start)
    with pytest.raises(ValueError, match="come before"):
        lm.run(ids, interventions=Zero("embed"), start_at_layer=1, start_resid=start)
    with pytest.raises(ValueError, match=r"start_resid has shape \[.*\]; the run needs"):
        lm.run(ids, start_at_layer=1, start_resid=start[:, :-1])
    with pytest.raises(ValueError, match="out of range"):
        lm.run(ids, start_at_layer=lm.n_layers, start_resid=start)
    with pytest.raises(ValueError, match="give start_at_layer too"):
        lm.run(ids, start_resid=start)


def test_z_is_the_pattern_applied_to_v_with_grouped_query_heads(arch_lm):
    lm = arch_lm
    if lm.arch.attn_v is None:  # GPT-2: fused qkv, no separate v point
        assert "blocks.0.attn.v" not in lm.hook_points
        return
    c = lm.run(tokens(lm), cache=["blocks.*.attn.v", "blocks.*.attn.z", "blocks.*.attn.pattern", "blocks.*.attn.k"]).cache
    group = lm.n_heads // lm.dims.kv_heads
    assert group > 1  # the tiny configs use grouped-query attention, the case other libraries get wrong
    for l in range(lm.n_layers):
        v = c[f"blocks.{l}.attn.v"].repeat_interleave(group, dim=2)  # [batch, key, head, d_head]
        z = torch.einsum("bhqk,bkhd->bqhd", c[f"blocks.{l}.attn.pattern"], v)
        assert close(z, c[f"blocks.{l}.attn.z"])
        assert c[f"blocks.{l}.attn.k"].shape[2] == lm.dims.kv_heads


def test_mlp_neurons_are_the_activation_of_the_pre_activation(arch_lm):
    lm = arch_lm
    c = lm.run(tokens(lm), cache=["blocks.*.mlp.*"]).cache
    for l in range(lm.n_layers):
        mlp = lm.get_module(f"{lm.arch.layers}.{l}.mlp")
        act = getattr(mlp, "act_fn", None) or mlp.act
        expected = act(c[f"blocks.{l}.mlp.pre"])
        if lm.arch.mlp_pre_linear is not None:
            expected = expected * c[f"blocks.{l}.mlp.pre_linear"]
        assert close(expected, c[f"blocks.{l}.mlp.post"])


def test_patching_one_value_head_moves_exactly_its_query_group():
    lm = tiny_lm("llama")
    a, b = tokens(lm, seed=1), tokens(lm, seed=2)
    src = lm.run(a, cache="blocks.1.attn.v")
    base = lm.run(b, cache="blocks.1.attn.z")
    patched = lm.run(b, interventions=Patch("blocks.1.attn.v", source=src, heads=(1,)), cache="blocks.1.attn.z")
    moved = (patched.cache["blocks.1.attn.z"] - base.cache["blocks.1.attn.z"]).abs().amax(dim=(0, 1, 3))
    group = lm.n_heads // lm.dims.kv_heads
    owners = [h for h in range(lm.n_heads) if h // group == 1]
    assert all(moved[h] > 0 for h in owners) and all(moved[h] == 0 for h in range(lm.n_heads) if h not in owners)
    with pytest.raises(ValueError, match=r"out of range.*2 heads"):
        lm.run(b, interventions=Patch("blocks.1.attn.v", source=src, heads=(3,)))
    assert lm.resolve("blocks.1.attn.hook_v") == ["blocks.1.attn.v"] and lm.resolve("blocks.1.mlp.hook_pre") == ["blocks.1.mlp.pre"]


def test_mlp_in_is_the_pre_mlp_norm_output_and_feeds_the_mlp_only(arch_lm):
    """blocks.{l}.mlp_in = the pre-MLP norm of resid_mid; the MLP (and Gemma's post-norm) of it is mlp_out;
    an edit there reaches the MLP but not the residual that flows on."""
    lm = arch_lm
    x = tokens(lm)
    c = lm.run(x, cache=["blocks.*.resid_mid", "blocks.*.mlp_in", "blocks.*.mlp_out", "blocks.*.resid_post"]).cache
    block = lambda l, path: lm.get_module(f"{lm.arch.layers}.{l}.{path}")  # noqa: E731
    with torch.no_grad():
        for l in range(lm.n_layers):
            assert torch.equal(c[f"blocks.{l}.mlp_in"], block(l, lm.arch.mlp_in)(c[f"blocks.{l}.resid_mid"]))
            out = block(l, "mlp")(c[f"blocks.{l}.mlp_in"])
            if lm.arch.mlp_out != "mlp":  # Gemma: mlp_out is after the post-feedforward norm
                out = block(l, lm.arch.mlp_out)(out)
            assert close(out, c[f"blocks.{l}.mlp_out"])
    vec = torch.randn(lm.d_model)
    e = lm.run(x, cache=["blocks.1.resid_mid", "blocks.1.mlp_in", "blocks.1.mlp_out", "blocks.1.resid_post"],
               interventions=[AddVector("blocks.1.mlp_in", vec)]).cache
    assert torch.equal(e["blocks.1.resid_mid"], c["blocks.1.resid_mid"])
    assert close(e["blocks.1.mlp_in"] - c["blocks.1.mlp_in"], vec.expand_as(c["blocks.1.mlp_in"]))
    assert not close(e["blocks.1.mlp_out"], c["blocks.1.mlp_out"])
    assert close(e["blocks.1.resid_post"], e["blocks.1.resid_mid"] + e["blocks.1.mlp_out"])
