"""Making vectors (ActAdd contrast, CAA mean difference, PCA, logistic) and the position rules that
make the CAA reference code's two bugs impossible. Tiny random models with SmolLM2's tokenizer."""

import pytest
import torch

from avec import Apply, From, Front
from avec.steering import (
    ab_pairs, behaviours, contrast, load_ab, logistic_direction, match_norms, mean_difference, pca_direction,
)
from avec.steering.caa import activations

from _steering_tiny import tiny_lm_with_tokenizer


@pytest.fixture(scope="module")
def lm(smollm2):
    return tiny_lm_with_tokenizer(smollm2.tokenizer)


def test_contrast_is_per_position_difference(lm):
    v = contrast(lm, "I love weddings", "I hate weddings", at=[1, "blocks.2.resid_post"])
    a, b = lm.to_tokens("I love weddings"), lm.to_tokens("I hate weddings")
    assert len(a) == len(b)
    run = lm.run(torch.tensor([a, b]), cache=["blocks.1.resid_pre", "blocks.2.resid_post"])
    for h in ["blocks.1.resid_pre", "blocks.2.resid_post"]:
        assert v[h].shape == (len(a), lm.d_model)
        assert torch.allclose(v[h], run.cache[h][0] - run.cache[h][1])
    assert v.recipe["padding"] == "no padding (equal lengths)"


def test_contrast_pads_the_shorter_prompt_and_says_so(lm):
    v = contrast(lm, "Love", "Hate", at=1)  # SmolLM2: 'Love' = 1 token, 'Hate' = 2
    assert v["blocks.1.resid_pre"].shape[0] == 2
    assert "right-padded with 1 x ' '" in v.recipe["padding"]
    assert v.recipe["tokens_plus"] == ["Love", " "]
    dot = contrast(lm, "Love", "Hate", at=1, pad=".")
    assert dot.recipe["tokens_plus"] == ["Love", "."]
    assert not torch.allclose(dot["blocks.1.resid_pre"], v["blocks.1.resid_pre"])
    with_bos = contrast(lm, "Love", "Hate", at=1, bos=True)
    assert with_bos.recipe["bos"] and with_bos.recipe["tokens_plus"][0] == lm.tokenizer.bos_token
    assert with_bos["blocks.1.resid_pre"].shape[0] == 3


def test_contrast_refuses_very_different_lengths(lm):
    with pytest.raises(ValueError, match=r"very different lengths.*1 tokens.*max_pad=4"):
        contrast(lm, "Love", "I really cannot stand you at all, ever", at=1)
    with pytest.raises(ValueError, match="non-empty"):
        contrast(lm, "", "Hate", at=1)
    with pytest.raises(ValueError, match="one token"):
        contrast(lm, "Love", "Hate", at=1, pad="hello world")


def test_actadd_vector_lands_on_front_positions_only(lm):
    v = contrast(lm, "Love", "Hate", at=1)
    x = lm.tokenize(["I hate you because you are"])[0]
    base = lm.run(x, cache=["blocks.1.resid_pre"]).cache["blocks.1.resid_pre"][0]
    got = lm.run(x, cache=["blocks.1.resid_pre"], interventions=[3 * v]).cache["blocks.1.resid_pre"][0]
    changed = (got - base).abs().sum(-1).nonzero().flatten().tolist()
    assert changed == [0, 1]
    assert torch.allclose(got[:2] - base[:2], 3 * v["blocks.1.resid_pre"], atol=1e-4)


def _record(store):
    def fn(value, ctx):
        store.append((ctx.offset, value.detach().clone()))
        return value
    return fn


@pytest.mark.parametrize("positions, expect_prompt_cols", [(From(-1), "last"), (Front(2), "front"), ("all", "all")])
def test_each_position_gets_the_vector_exactly_once_during_cached_generation(lm, positions, expect_prompt_cols):
    """Bug 1 of the CAA reference code (vector added twice) cannot happen: in every forward pass of a
    cached generation, the value after the addition minus the value before it is coeff * v exactly at
    the selected columns and 0 elsewhere. Bug 2 (off by one): From(-1) includes the last prompt token."""
    v = torch.randn(lm.d_model)
    hook = "blocks.1.resid_pre"
    from avec.steering import SteeringVector

    steer = SteeringVector.make(lm, hook, v, positions=positions)
    before, after = [], []
    ids, mask = lm.tokenize(["I hate you because you are", "Hello"], padding_side="left")
    ivs = [Apply(hook, fn=_record(before))] + steer.as_interventions(coeff=2.0) + [Apply(hook, fn=_record(after))]
    with torch.no_grad(), lm.intervene(*ivs):
        lm.hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False, use_cache=True,
                       pad_token_id=lm.tokenizer.pad_token_id)
    assert len(before) == len(after) == 4  # prompt pass + 3 cached steps
    lengths = mask.sum(1)
    pad = mask.shape[1] - lengths
    for (offset, b), (_, a) in zip(before, after):
        delta = a - b  # [batch, seq, d]
        added = delta.abs().sum(-1) > 0
        for row in range(2):
            cols = torch.arange(offset, offset + delta.shape[1]) - pad[row]  # prompt-relative positions
            L = int(lengths[row])
            if expect_prompt_cols == "last":
                want = cols >= L - 1
            elif expect_prompt_cols == "front":
                want = (cols >= 0) & (cols < min(2, L))  # prompt tokens only, never generated ones
            else:
                want = torch.ones_like(cols, dtype=torch.bool)
            assert added[row].tolist() == want.tolist(), (offset, row)
            assert torch.allclose(delta[row, want], (2.0 * v).expand(int(want.sum()), -1), atol=1e-5)


def test_from_minus_one_changes_the_prediction_of_the_first_generated_token(lm):
    v = mean_difference(lm, [("I love it", "I hate it")], at=1)
    assert v.terms[0].positions == From(-1)
    prompts = ["I hate you because"]
    base = lm.run(prompts).logits[0]
    steered = lm.run(prompts, interventions=[20 * v]).logits[0]
    assert not torch.allclose(base[-1], steered[-1])  # the token predicting the first new token
    assert torch.allclose(base[:-1], steered[:-1], atol=1e-5)  # nothing before it


def test_mean_difference_and_norm_matching(lm):
    pairs = [("I love cats", "I hate cats"), ("We adore this", "We despise this"), ("Great job!", "Awful job!")]
    v = mean_difference(lm, pairs, at=[1, 2], read_at=-1)
    pos = activations(lm, [p for p, _ in pairs], ["blocks.1.resid_pre"], read_at=-1)["blocks.1.resid_pre"]
    neg = activations(lm, [n for _, n in pairs], ["blocks.1.resid_pre"], read_at=-1)["blocks.1.resid_pre"]
    assert torch.allclose(v["blocks.1.resid_pre"], (pos - neg).mean(0), atol=1e-5)
    # read_at is prompt-relative per text even with different lengths (right padding)
    single = lm.run("I love cats", cache=["blocks.1.resid_pre"]).cache["blocks.1.resid_pre"][0, -1]
    assert torch.allclose(pos[0], single, atol=1e-5)
    w = mean_difference(lm, pairs[:1], at=[1, 2])
    m = match_norms({"a": v, "b": w})
    for h in ["blocks.1.resid_pre", "blocks.2.resid_pre"]:
        target = (v[h].norm() + w[h].norm()) / 2
        assert torch.allclose(m["a"][h].norm(), target, rtol=1e-4) and torch.allclose(m["b"][h].norm(), target, rtol=1e-4)
        assert torch.allclose(torch.cosine_similarity(m["a"][h], v[h], 0), torch.tensor(1.0), atol=1e-5)


def test_pca_and_logistic_point_from_negative_to_positive(lm):
    pairs = [(f"I love item {i}", f"I hate item {i}") for i in range(8)]
    mean = mean_difference(lm, pairs, at=2)["blocks.2.resid_pre"]
    for make in (pca_direction, logistic_direction):
        d = make(lm, pairs, at=2)["blocks.2.resid_pre"]
        assert float(d @ mean) > 0, make.__name__
    assert pca_direction(lm, pairs, at=2).recipe["explained_variance"]["blocks.2.resid_pre"] > 0.5


def test_centred_pca_is_scikit_learns_first_component_of_the_differences(lm):
    from sklearn.decomposition import PCA

    pairs = [(f"I love item {i}", f"I hate thing {i}") for i in range(6)]
    pos = activations(lm, [p for p, _ in pairs], ["blocks.2.resid_pre"])["blocks.2.resid_pre"]
    neg = activations(lm, [n for _, n in pairs], ["blocks.2.resid_pre"])["blocks.2.resid_pre"]
    diffs = (pos - neg).double()
    ref = torch.tensor(PCA(n_components=1).fit(diffs.numpy()).components_[0])
    d = pca_direction(lm, pairs, at=2, center=True)["blocks.2.resid_pre"].double()
    assert torch.isclose(torch.cosine_similarity(d, ref, 0).abs(), torch.tensor(1.0, dtype=torch.double), atol=1e-5)
    assert float(d @ diffs.mean(0)) >= 0  # our sign convention: the mean difference projects positively
    with pytest.raises(ValueError, match="at least 2 pairs"):
        pca_direction(lm, pairs[:1], at=2, center=True)


def test_empty_dataset_errors(lm):
    with pytest.raises(ValueError, match="empty dataset"):
        mean_difference(lm, [], at=1)
    with pytest.raises(ValueError, match="empty dataset"):
        pca_direction(lm, [], at=1)
    with pytest.raises(ValueError, match="two non-empty strings"):
        mean_difference(lm, [("only one",)], at=1)
    with pytest.raises(ValueError, match="empty dataset"):
        ab_pairs(lm, [])


def test_shipped_ab_datasets():
    names = behaviours()
    assert len(names) >= 2
    for name in names:
        test = load_ab(name, "test")
        train = load_ab(name, "train")
        assert len(test) >= 50 and len(train) >= 10
        letters = [i.matching for i in test]
        assert 0.4 < letters.count("A") / len(letters) < 0.6  # no letter bias to exploit
        assert not {i.question for i in test} & {i.question for i in train}
        for i in test:
            assert "(A)" in i.question and "(B)" in i.question
    with pytest.raises(FileNotFoundError, match="shipped"):
        load_ab("no-such-behaviour")


def test_ab_pairs_end_in_the_answer_letter(lm):
    items = load_ab(behaviours()[0], "train")[:3]
    for (p, n), it in zip(ab_pairs(lm, items), items):
        assert lm.to_str_tokens(p)[-2:] == ["(", it.matching]
        assert lm.to_str_tokens(n)[-2:] == ["(", it.other]


def test_per_row_coefficients_in_generation_equal_separate_calls(lm):
    """The tour runs a layer's coefficient grid as one generate call: row i with coefficient c_i."""
    v = contrast(lm, "Love", "Hate", at=1)
    prompts = ["I hate you because", "The weather is"]
    coeffs = [0.0, 30.0, -30.0]
    rows = [p for _ in coeffs for p in prompts]
    per_row = torch.tensor([c for c in coeffs for _ in prompts])
    batched = lm.generate(rows, 6, interventions=v.as_interventions(coeff=per_row))
    for i, c in enumerate(coeffs):
        assert batched[2 * i:2 * i + 2] == lm.generate(prompts, 6, steer=c * v), c
    assert batched[0:2] != batched[2:4] != batched[4:6]  # the coefficients do change the text
    a = lm.generate(prompts, 6, steer=3 * v, do_sample=True, seed=5)
    assert a == lm.generate(prompts, 6, steer=3 * v, do_sample=True, seed=5)  # seeded sampling reproduces


def test_ab_eval_reads_each_prompts_own_last_token(lm):
    from avec.steering import ab_prompt
    from avec.steering.evaluate import ab_eval

    items = load_ab("corrigible", "test")[:5]  # prompts of different lengths, batched (right padding)
    scores = ab_eval(lm, items, batch_size=5)
    a, b = lm.to_tokens("(A")[-1], lm.to_tokens("(B")[-1]
    for i, it in enumerate(items):
        p = torch.softmax(lm.run(ab_prompt(lm, it, True)).logits[0, -1].float(), -1)
        assert torch.allclose(scores.p_a[i], p[a], atol=1e-5) and torch.allclose(scores.p_b[i], p[b], atol=1e-5)
