"""Steering the bundled SmolLM2: generation with/without KV cache, evaluation metrics."""

import pytest
import torch

from avec import From
from avec.steering import SteeringVector, ab_pairs, contrast, load_ab, mean_difference, side_by_side
from avec.steering.evaluate import (
    ab_eval, effectiveness, injected_mask, language_rate, perplexity_ratio, sentiment, wedding_rate,
)

PROMPTS = ["I hate you because", "The weather today is"]


@pytest.fixture(scope="module")
def love(smollm2):
    return contrast(smollm2, "Love", "Hate", at=6)


@pytest.fixture(scope="module")
def caa(smollm2):
    items = load_ab("corrigible", "train")[:6]
    return mean_difference(smollm2, ab_pairs(smollm2, items), at=10)


def test_steered_greedy_generation_same_with_and_without_kv_cache(smollm2, love, caa):
    lm = smollm2
    for steer in (5 * love, 4 * caa):
        with_cache = lm.generate(PROMPTS, max_new_tokens=10, steer=steer)
        without = lm.generate(PROMPTS, max_new_tokens=10, steer=steer, use_cache=False)
        assert with_cache == without, steer
    assert lm.generate(PROMPTS, max_new_tokens=10, steer=5 * love) != lm.generate(PROMPTS, max_new_tokens=10)


def test_zero_vector_and_side_by_side(smollm2, love):
    table = side_by_side(smollm2, PROMPTS, 0 * love, max_new_tokens=8)
    assert table.unsteered == table.steered
    frame = side_by_side(smollm2, PROMPTS[:1], 5 * love, max_new_tokens=8, do_sample=True, seed=3).to_frame()
    assert list(frame.columns) == ["prompt", "unsteered", "steered"]


def test_effectiveness_and_perplexity(smollm2, love):
    texts = ["I went to my friend's party last night and", "The committee met to discuss the budget for"]
    eff = effectiveness(smollm2, texts, 8 * love, ["love", "loved", "loving"])
    assert eff.effectiveness > 0  # the love vector raises the mass on love tokens
    assert eff.disruption >= 0
    none = effectiveness(smollm2, texts, 0 * love, ["love"])
    assert abs(none.effectiveness) < 1e-5 and none.disruption < 1e-6
    ppl = perplexity_ratio(smollm2, texts, 8 * love)
    assert ppl.masked == 2 * 2  # the two front positions of each text, where the vector sits
    assert ppl.ratio > 0 and int(ppl.counted.sum()) > 0
    assert perplexity_ratio(smollm2, texts, 0 * love).ratio == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="mask_injected=False"):
        perplexity_ratio(smollm2, texts, SteeringVector.make(smollm2, 6, love["blocks.6.resid_pre"][0], positions="all"))


def test_injected_mask_rules():
    v = torch.zeros(2, 4)
    from avec import AddVector

    lengths = torch.tensor([5, 3])
    m = injected_mask([AddVector("h", v, positions="all")], lengths, 6)
    assert m.tolist() == [[True, True, False, False, False, False]] * 2
    m = injected_mask([AddVector("h", torch.zeros(4), positions=From(-1))], lengths, 6)
    # from each prompt's last token on; right padding is not a token, so it is never counted as injected
    assert m[0].tolist() == [False] * 4 + [True, False] and m[1].tolist() == [False, False, True, False, False, False]


def test_ab_eval(smollm2, caa):
    items = load_ab("corrigible", "test")[:6]
    base = ab_eval(smollm2, items)
    assert ((base.p_match >= 0) & (base.p_match <= 1)).all()
    assert float((base.p_a + base.p_b).min()) > 0.05  # the model does answer with a letter
    plus = ab_eval(smollm2, items, 8 * caa)
    assert not torch.allclose(plus.p_match, base.p_match)  # the vector reaches the answer position
    assert ab_eval(smollm2, items, 0 * caa).p_match.tolist() == base.p_match.tolist()
    with pytest.raises(ValueError, match="empty dataset"):
        ab_eval(smollm2, [])


def test_text_metrics():
    assert wedding_rate(["The bride and groom married.", "Nothing here."]) == {
        "texts with a wedding word": 0.5, "word rate": 3 / 7}
    pos, neg = sentiment(["I love you, you are wonderful", "I hate this, it is awful"])
    assert pos > 0.5 and neg < -0.5
    assert language_rate(["Je suis très heureux de vous voir aujourd'hui.", "I am very happy to see you today."]) == 0.5


def test_cli_steer_and_scan(smollm2, tmp_path):
    import typer
    from typer.testing import CliRunner

    from avec.app.cli.steering import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    res = runner.invoke(app, ["steer", "--plus", "Love", "--minus", "Hate", "--layer", "6", "--coeff", "5", "-n", "6",
                              "--save", str(tmp_path / "v.safetensors"), "I hate you because"])
    assert res.exit_code == 0, res.output
    assert "unsteered" in res.output and "right-padded" in res.output
    v = SteeringVector.load(tmp_path / "v.safetensors", smollm2)
    assert v.recipe["method"] == "actadd"
    res = runner.invoke(app, ["scan", "--plus", "Love", "--minus", "Hate", "--target", " love", "--against", " hate",
                              "--n", "8", "--csv", str(tmp_path / "s.csv"), "I hate you because"])
    assert res.exit_code == 0, res.output
    assert "max" in res.output and (tmp_path / "s.csv").exists()
