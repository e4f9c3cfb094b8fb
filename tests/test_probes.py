"""Probes: planted directions are recovered, shuffled labels give chance, CCS finds a linear truth (and a
stronger distractor when one is planted), activations match plain runs, bad input gives clear errors."""

import pytest
import torch

from _tiny import tiny_hf, tiny_lm, tokens
from avec.probes.activations import collect
from avec.probes.ccs import accuracy_up_to_sign, ccs_loss, confound_pairs, contrast_pairs, fit_ccs
from avec.probes.linear import fit_probes, split

N, D, L = 400, 48, 3


def _planted(seed=0, strength=2.5, layer=1):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(D, generator=g)
    u /= u.norm()
    y = torch.randint(0, 2, (N,), generator=g)
    x = torch.randn(L, N, D, generator=g) + 3 * torch.randn(D, generator=g)  # an offset: probes must not care
    x[layer] += (2 * y - 1)[:, None].float() * strength * u
    return x, y, u, g


def test_binary_probe_recovers_a_planted_direction():
    x, y, u, _ = _planted()
    r = fit_probes(x, y)
    assert r.best_layer == 1
    assert r.test_score[1] > 0.85 and (r.test_score[[0, 2]] < 0.65).all()
    assert float(r.direction(1) @ u) > 0.8  # points towards class 1
    assert float(r.direction(1, source="mean_diff") @ u) > 0.9
    assert r.baseline_score[1] > 0.85
    # predictions from the stored (activation-space) weights agree with the reported accuracy on train
    assert (r.predict(x[1], 1) == y).float().mean() > 0.85
    frame = r.to_frame()
    assert list(frame["layer"]) == [0, 1, 2] and frame.shape[1] == 4
    r.plot()


def test_shuffled_labels_give_chance():
    x, y, _, g = _planted()
    r = fit_probes(x, y[torch.randperm(N, generator=g)])
    assert abs(float(r.test_score.mean()) - 0.5) < 0.08 and (r.test_score - 0.5).abs().max() < 0.16, r.test_score
    assert abs(r.chance - 0.5) < 0.05


def test_multiclass_and_continuous_probes():
    g = torch.Generator().manual_seed(1)
    yc = torch.randint(0, 4, (N,), generator=g)
    centres = torch.randn(4, D, generator=g)
    x = torch.randn(2, N, D, generator=g)
    x[0] += centres[yc]
    r = fit_probes(x, yc, kind="multiclass")
    assert r.test_score[0] > 0.9 and r.test_score[1] < 0.45 and r.baseline_score[0] > 0.9
    assert r.weight.shape == (2, 4, D) and r.chance < 0.35

    u = torch.randn(D, generator=g)
    u /= u.norm()
    v = torch.randn(N, generator=g)
    x = torch.randn(2, N, D, generator=g)
    x[1] += 2 * v[:, None] * u
    r = fit_probes(x, v * 10 + 3)  # continuous, inferred; scale and offset of the target do not matter
    assert r.kind == "continuous" and r.best_layer == 1
    assert r.test_score[1] > 0.7 and r.test_score[0] < 0.1
    assert float(r.direction(1) @ u) > 0.8 and r.baseline_score[1] > 0.7


def test_group_split_keeps_subjects_together():
    y = torch.tensor([1, 0] * 50)
    groups = [f"country{i // 2}" for i in range(100)]
    tr, te = split(y, 0.25, seed=0, groups=groups)
    assert set(groups[i] for i in tr).isdisjoint(groups[i] for i in te)
    assert len(tr) + len(te) == 100 and 20 <= len(te) <= 30


def test_probe_errors_are_clear():
    x, y, _, _ = _planted()
    with pytest.raises(ValueError, match="need.* at least two classes"):
        fit_probes(x, torch.ones(N))
    bad = y.float()
    bad[3] = float("nan")
    with pytest.raises(ValueError, match=r"NaN at row\(s\) \[3\]"):
        fit_probes(x, bad)
    with pytest.raises(ValueError, match="400 activations but 10 labels"):
        fit_probes(x, y[:10])
    with pytest.raises(ValueError, match="binary labels take two values, got 3"):
        fit_probes(x, y + (torch.arange(N) % 3 == 0).long(), kind="binary")


# -- CCS --------------------------------------------------------------------------------------------

def _pairs(seed=0, distractor=0.0):
    """Pairs whose normalised sides differ along u by truth (layer 0); layer 1 is noise."""
    g = torch.Generator().manual_seed(seed)
    n, d = 300, 32
    u = torch.randn(d, generator=g)
    u /= u.norm()
    w = torch.randn(d, generator=g)
    w -= (w @ u) * u
    w /= w.norm()
    y = torch.randint(0, 2, (n,), generator=g)
    z = torch.randint(0, 2, (n,), generator=g)
    s, t = (2 * y - 1).float()[:, None], (2 * z - 1).float()[:, None]
    base = torch.randn(n, d, generator=g)  # the statement itself, shared by both sides
    xp = torch.stack([base + 0.5 * torch.randn(n, d, generator=g) + 2 * s * u + distractor * t * w + 3,
                      torch.randn(n, d, generator=g)])
    xn = torch.stack([base + 0.5 * torch.randn(n, d, generator=g) - 2 * s * u - distractor * t * w - 1,
                      torch.randn(n, d, generator=g)])
    return xp, xn, y, z, u


def test_ccs_loss_behaves():
    p = torch.tensor([0.9, 0.2, 0.6])
    cons, conf = ccs_loss(p, 1 - p)
    assert float(cons) == pytest.approx(0, abs=1e-12)  # perfectly consistent
    cons, conf = ccs_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert float(cons) == 0 and float(conf) == 0
    cons, conf = ccs_loss(torch.full((4,), 0.5), torch.full((4,), 0.5))
    assert float(cons) == 0 and float(conf) == pytest.approx(0.25)  # the degenerate 0.5 answer is penalised
    cons, _ = ccs_loss(torch.tensor([0.9]), torch.tensor([0.9]))
    assert float(cons) == pytest.approx(0.64)  # "yes" and "no" both likely: inconsistent
    a, b = torch.rand(10), torch.rand(10)
    assert torch.allclose(ccs_loss(a, b)[0], ccs_loss(1 - a, 1 - b)[0])  # consistency ignores the probe's sign
    assert torch.allclose(torch.stack(ccs_loss(a, 1 - a)), torch.stack(ccs_loss(1 - a, a)))  # so does all of it, once consistent
    assert float(accuracy_up_to_sign(torch.tensor([0.1, 0.9]), torch.tensor([1, 0]))) == 1.0


def test_ccs_finds_linear_truth_up_to_sign():
    xp, xn, y, _, u = _pairs()
    r = fit_ccs(xp, xn, y, epochs=300, n_restarts=4)
    assert r.ccs_accuracy[0] > 0.95 and r.supervised_accuracy[0] > 0.95
    assert r.ccs_accuracy[1] < 0.65  # noise layer: near chance
    assert abs(float(r.direction[0] @ u)) > 0.8
    assert r.loss[0] < r.loss[1]
    assert r.to_frame().shape == (2, 6)
    mlp = fit_ccs(xp, xn, y, hidden=8, epochs=300, n_restarts=3)
    assert mlp.ccs_accuracy[0] > 0.95 and mlp.direction is None


def test_ccs_follows_a_stronger_distractor():
    xp, xn, y, z, _ = _pairs(distractor=4.0)
    r = fit_ccs(xp, xn, y, other_labels={"distractor": z}, epochs=300, n_restarts=4)
    assert r.other_accuracy["distractor"][0] > 0.95  # the surface feature is what CCS finds
    assert r.ccs_accuracy[0] < 0.7
    assert r.supervised_accuracy[0] > 0.95  # labels still pick truth
    assert "CCS accuracy vs distractor" in r.to_frame()


def test_contrast_and_confound_pairs():
    pos, neg = contrast_pairs(["A is B."], template="{statement} {answer}", answers=(" Yes", " No"))
    assert pos == ["A is B.  Yes"] and neg == ["A is B.  No"]
    pos, neg, z = confound_pairs(["s1", "s2", "s3", "s4"], seed=1)
    for p, q, zi in zip(pos, neg, z.tolist()):
        assert p.endswith(" Banana" if zi else " Shed") and q.endswith(" Shed" if zi else " Banana")
    with pytest.raises(ValueError, match="differ"):
        fit_ccs(torch.randn(10, 4), torch.randn(9, 4), torch.tensor([0, 1] * 5))
    with pytest.raises(ValueError, match="needs both"):
        contrast_pairs(["x"], template="{statement}")


# -- activations on tiny models ------------------------------------------------------------------------

def _tiny_with_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from avec.models import LanguageModel

    vocab = {f"w{i}": i for i in range(100)}
    vocab["[UNK]"] = 100
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="w0", eos_token="w1")
    return LanguageModel(tiny_hf("llama"), fast, name="tiny-llama-tok")


def test_collect_matches_single_runs_with_padding_and_sorting():
    lm = _tiny_with_tokenizer()
    texts = ["w5 w6 w7 w8", "w9", "w3 w4", "w10 w11 w12 w13 w14 w15", "w20 w21 w22"]
    acts = collect(lm, texts, batch_size=2)
    assert acts.x.shape == (3, 5, 64) and acts.layers == (0, 1, 2)
    for i, t in enumerate(texts):
        run = lm.run(t, cache=["blocks.*.resid_post"])
        expected = run.cache.stack("resid_post")[:, 0, -1]
        assert torch.allclose(acts.x[:, i], expected, atol=1e-5), t
    first = collect(lm, texts, layers=[2], position=0)
    assert torch.allclose(first.x[0, 1], lm.run("w9", cache=["blocks.2.resid_post"]).cache["blocks.2.resid_post"][0, 0], atol=1e-5)
    with pytest.raises(ValueError, match=r"position 2 is beyond prompt 1 \('w9'\), which has 1 tokens"):
        collect(lm, texts, position=2)
    with pytest.raises(ValueError, match=r"position -3 is beyond prompt 1"):
        collect(lm, texts, position=-3)
    with pytest.raises(ValueError, match="out of range"):
        collect(lm, texts, layers=[5])


def test_collect_on_token_ids_and_probe_to_steering_vector():
    lm = tiny_lm("llama")
    ids = tokens(lm, batch=40, seq=6)
    acts = collect(lm, ids, batch_size=16)
    run = lm.run(ids[:3], cache=["blocks.1.resid_post"])
    assert torch.allclose(acts.at(1)[:3], run.cache["blocks.1.resid_post"][:, -1], atol=1e-5)
    with pytest.raises(ValueError, match="position 6 is beyond row 0"):
        collect(lm, ids, position=6)
    y = (acts.at(2)[:, 0] > acts.at(2)[:, 0].median()).long()  # a label the model's own features carry
    r = fit_probes(acts, y, test_size=0.3)
    vec = r.to_steering_vector(lm, layer=2)
    assert vec.hooks == ["blocks.2.resid_post"]
    d = vec["blocks.2.resid_post"]
    assert torch.allclose(d / d.norm(), r.direction(2), atol=1e-5)
    plain = lm.run(ids[:2], cache=["blocks.2.resid_post"]).cache["blocks.2.resid_post"]
    steered = lm.run(ids[:2], cache=["blocks.2.resid_post"], interventions=vec).cache["blocks.2.resid_post"]
    assert torch.allclose(steered - plain, d.expand(2, 6, -1), atol=1e-4)  # added once, at every position


# -- SmolLM2 (session fixture; kept short) ------------------------------------------------------------

def test_smollm2_sentiment_probe(smollm2):
    from avec.data.labelled import load
    from avec.probes.linear import probe

    data = load("sentiment").sample(80, seed=1)
    r = probe(smollm2, data, layers=[2, 10, 16, 24])
    assert float(r.test_score.max()) > 0.8, r.to_frame()
    assert r.best_layer in (10, 16, 24)
    vec = r.to_steering_vector(smollm2)
    assert vec.hooks == [f"blocks.{r.best_layer}.resid_post"]


def test_cli_registers_and_tour_sections_are_listed():
    import typer
    from typer.testing import CliRunner

    from avec.app.cli import probes as cli
    from avec.app.tour import probes as tour_sections

    app = typer.Typer()
    cli.register(app)
    out = CliRunner().invoke(app, ["probe", "--help"])
    assert out.exit_code == 0 and "best layer" in out.output
    assert CliRunner().invoke(app, ["ccs", "--help"]).exit_code == 0
    assert cli._layers("0:30:3", 12) == [0, 3, 6, 9] and cli._layers("1,4", 12) == [1, 4] and cli._layers(None, 12) is None
    assert all(isinstance(t, str) and callable(f) for t, f in tour_sections.SECTIONS) and len(tour_sections.SECTIONS) == 3
