"""SteeringVector: algebra, application, files (safetensors, GGUF), and bad input - on tiny models."""

import os

import pytest
import torch

from avec import From, Front, UnknownHookPoint
from avec.steering import ModelMismatch, SteeringVector, Term

from _tiny import tiny_lm, tokens


@pytest.fixture(scope="module")
def lm():
    return tiny_lm("llama")


def vec(lm, hook="blocks.1.resid_pre", shape=None, seed=0, positions="all"):
    g = torch.Generator().manual_seed(seed)
    return SteeringVector.make(lm, hook, torch.randn(*(shape or (lm.d_model,)), generator=g), positions=positions)


def logits(lm, steer, x):
    return lm.run(x, interventions=[steer] if steer is not None else []).logits


def test_zero_vector_changes_nothing(lm):
    x = tokens(lm)
    zero = SteeringVector.make(lm, "blocks.1.resid_pre", torch.zeros(lm.d_model), positions="all")
    assert torch.equal(logits(lm, 10 * zero, x), logits(lm, None, x))
    per_pos = SteeringVector.make(lm, 2, torch.zeros(3, lm.d_model))
    assert torch.equal(logits(lm, per_pos, x), logits(lm, None, x))


def test_vector_changes_logits_and_scales_linearly_at_the_hook(lm):
    x = tokens(lm)
    v = vec(lm)
    assert not torch.allclose(logits(lm, v, x), logits(lm, None, x))
    base = lm.run(x, cache=["blocks.1.resid_pre"]).cache["blocks.1.resid_pre"]
    got = lm.run(x, cache=["blocks.1.resid_pre"], interventions=[2.5 * v]).cache["blocks.1.resid_pre"]
    assert torch.allclose(got - base, 2.5 * v["blocks.1.resid_pre"].expand_as(base), atol=1e-5)


def test_algebra(lm):
    x = tokens(lm)
    a, b = vec(lm, seed=0), vec(lm, seed=1)
    s = a + b
    assert len(s.terms) == 1 and torch.allclose(s["blocks.1.resid_pre"], a["blocks.1.resid_pre"] + b["blocks.1.resid_pre"])
    assert len(s.as_interventions()) == 1  # same hook + positions: one addition, not two
    assert torch.allclose(logits(lm, a - a, x), logits(lm, None, x), atol=1e-6)
    assert torch.allclose(logits(lm, 2 * a, x), logits(lm, a + a, x), atol=1e-6)
    assert torch.allclose(logits(lm, a / 2 + a * 0.5, x), logits(lm, a, x), atol=1e-6)
    assert torch.allclose(logits(lm, -a, x), logits(lm, (-1) * a, x))
    # different hook points: a set of additions == applying both
    c = vec(lm, "blocks.2.resid_post", seed=2)
    both = a + c
    assert sorted(both.hooks) == ["blocks.1.resid_pre", "blocks.2.resid_post"]
    expect = lm.run(x, interventions=[a, c]).logits
    assert torch.allclose(logits(lm, both, x), expect, atol=1e-6)
    # same hook, different positions: kept as two terms
    d = vec(lm, seed=3, positions=From(-1))
    assert len((a + d).terms) == 2
    # per-position tensors of different lengths are zero-padded before summing
    p2, p3 = vec(lm, shape=(2, lm.d_model), seed=4, positions="prompt"), vec(lm, shape=(3, lm.d_model), seed=5, positions="prompt")
    t = (p2 + p3)["blocks.1.resid_pre"]
    assert t.shape == (3, lm.d_model)
    assert torch.allclose(t[2], p3["blocks.1.resid_pre"][2]) and torch.allclose(t[:2], p2["blocks.1.resid_pre"] + p3["blocks.1.resid_pre"][:2])


def test_as_interventions_positions_override(lm):
    v = vec(lm, positions="all")
    (iv,) = v.as_interventions(positions=Front(2), coeff=3.0)
    assert iv.positions == Front(2) and iv.coeff == 3.0
    (iv,) = v.with_positions(From(-1)).as_interventions()
    assert iv.positions == From(-1)


def test_save_load_round_trip_exact(lm, tmp_path):
    v = vec(lm, shape=(3, lm.d_model), positions=Front(3)) + vec(lm, "blocks.2.attn_out", seed=7, positions=From(-1))
    path = v.save(tmp_path / "v.safetensors")
    assert os.listdir(tmp_path) == ["v.safetensors"]  # the temp file was renamed, not left behind
    w = SteeringVector.load(path, lm)
    assert w.model_id == v.model_id and dict(w.recipe) == dict(v.recipe)
    assert len(w.terms) == len(v.terms)
    for s, t in zip(v.terms, w.terms):
        assert s.hook == t.hook and s.positions == t.positions and s.start == t.start
        assert torch.equal(s.tensor, t.tensor)
    x = tokens(lm)
    assert torch.equal(logits(lm, w, x), logits(lm, v, x))


def test_load_rejects_other_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(3)}, tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="not an avec steering vector"):
        SteeringVector.load(tmp_path / "plain.safetensors")
    with pytest.raises(FileNotFoundError):
        SteeringVector.load(tmp_path / "missing.safetensors")


def test_gguf_round_trip(lm, tmp_path):
    import gguf

    v = vec(lm, "blocks.1.resid_post", seed=1, positions="all") + vec(lm, "blocks.2.resid_pre", seed=2, positions="all")
    path = v.to_gguf(tmp_path / "cv.gguf")
    reader = gguf.GGUFReader(str(path))
    names = sorted(t.name for t in reader.tensors)
    assert names == ["direction.1"]  # blocks.2.resid_pre == blocks.1.resid_post: one layer, summed
    f = reader.fields["controlvector.layer_count"]
    assert int(f.parts[f.data[0]][0]) == 1
    w = SteeringVector.from_gguf(path, lm)
    assert w.hooks == ["blocks.1.resid_post"]
    assert torch.allclose(w["blocks.1.resid_post"], v["blocks.1.resid_post"] + v["blocks.2.resid_pre"])
    x = tokens(lm)
    assert torch.allclose(logits(lm, w, x), logits(lm, v, x), atol=1e-5)
    with pytest.raises(ValueError, match="per position"):
        vec(lm, "blocks.1.resid_post", shape=(2, lm.d_model)).to_gguf(tmp_path / "bad.gguf")
    with pytest.raises(ValueError, match="residual-stream"):
        vec(lm, "blocks.1.mlp_out").to_gguf(tmp_path / "bad.gguf")
    with pytest.raises(ValueError, match="layer 0"):
        vec(lm, "blocks.0.resid_post").to_gguf(tmp_path / "bad.gguf")
    other = tiny_lm("qwen2")  # same width, different model: loads (GGUF has no model id) but width is checked
    assert SteeringVector.from_gguf(path, other).model_id == other.model_id


def test_bad_input_errors(lm):
    v = vec(lm)
    other = tiny_lm("qwen2")  # same width 64, another model
    with pytest.raises(ModelMismatch, match="made on model"):
        other.run(tokens(other), interventions=[v])
    with pytest.raises(ModelMismatch):
        v + vec(other)
    with pytest.raises(ValueError, match="width"):
        SteeringVector.make(lm, "blocks.1.resid_pre", torch.randn(lm.d_model + 1))
    with pytest.raises(UnknownHookPoint, match="out of range"):
        SteeringVector.make(lm, "blocks.7.resid_pre", torch.randn(lm.d_model))
    with pytest.raises(UnknownHookPoint, match="unknown hook point"):
        SteeringVector.make(lm, "blocks.1.resid_pree", torch.randn(lm.d_model))
    with pytest.raises(ValueError, match="out of range"):
        SteeringVector.make(lm, 9, torch.randn(lm.d_model))
    # a vector whose hook point the model lacks (e.g. loaded from a deeper model's file)
    deep = SteeringVector((Term("blocks.9.resid_pre", torch.randn(lm.d_model)),), lm.model_id)
    with pytest.raises(UnknownHookPoint, match="layer 9 is out of range"):
        lm.run(tokens(lm), interventions=[deep])
    with pytest.raises(ValueError, match="finite"):
        float("nan") * v
    with pytest.raises(ValueError, match="NaN"):
        v.as_interventions(coeff=torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="NaN"):
        SteeringVector.make(lm, 1, torch.full((lm.d_model,), float("nan")))
    with pytest.raises(ValueError, match="can be read"):
        SteeringVector.make(lm, "blocks.1.attn.pattern", torch.randn(lm.d_model))
    with pytest.raises(TypeError):
        v + 1.0
