"""``generate_cells``: many steering settings completed in one batched generate call, each cell's
completions equal to the same setting generated on its own (greedy). Tiny random model, SmolLM2's tokenizer."""

import pytest

from avec.steering import contrast, generate_cells

from _steering_tiny import tiny_lm_with_tokenizer

PROMPTS = ["I hate you because", "The weather today is"]


@pytest.fixture(scope="module")
def lm(smollm2):
    return tiny_lm_with_tokenizer(smollm2.tokenizer)


def test_each_cell_equals_its_own_call(lm):
    love = contrast(lm, "Love", "Hate", at=1)
    calm = contrast(lm, "Calm", "Angry", at=2)
    cells = [("none", None, 0.0), ("love 8", love, 8.0), ("love -8", love, -8.0), ("calm 6", calm, 6.0),
             ("both", 8 * love + 6 * calm, 1.0)]
    out = generate_cells(lm, PROMPTS, cells, 8)
    assert list(out) == [k for k, _, _ in cells]
    for key, vector, coeff in cells:
        alone = lm.generate(PROMPTS, 8, steer=None if vector is None else coeff * vector)
        assert out[key] == alone, key
    # the vectors did something: otherwise equality above would hold trivially
    assert len({tuple(v) for v in out.values()}) >= 3


def test_one_prompt_string_and_sampling_is_reproducible(lm):
    love = contrast(lm, "Love", "Hate", at=1)
    cells = [("base", None, 0.0), ("love", love, 6.0)]
    a = generate_cells(lm, "I hate you because", cells, 6, do_sample=True, seed=3)
    b = generate_cells(lm, "I hate you because", cells, 6, do_sample=True, seed=3)
    assert a == b and all(len(v) == 1 for v in a.values())


def test_bad_cells_are_refused(lm):
    love = contrast(lm, "Love", "Hate", at=1)
    with pytest.raises(ValueError, match="cells is empty"):
        generate_cells(lm, PROMPTS, [], 4)
    with pytest.raises(ValueError, match="prompts is empty"):
        generate_cells(lm, [], [("a", None, 0.0)], 4)
    with pytest.raises(ValueError, match="distinct"):
        generate_cells(lm, PROMPTS, [("a", None, 0.0), ("a", love, 1.0)], 4)
    with pytest.raises(ValueError, match="finite"):
        generate_cells(lm, PROMPTS, [("a", love, float("nan"))], 4)
    with pytest.raises(TypeError, match="steering vector"):
        generate_cells(lm, PROMPTS, [("a", "love", 1.0)], 4)
    with pytest.raises(TypeError, match="tuple"):
        generate_cells(lm, PROMPTS, [("a", love)], 4)


def test_generate_reports_each_step_and_changes_nothing(lm):
    seen = []
    out = lm.generate(PROMPTS, 6, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(k, 6) for k in range(1, 7)] and out == lm.generate(PROMPTS, 6)
    love = contrast(lm, "Love", "Hate", at=1)
    seen.clear()
    cells = generate_cells(lm, PROMPTS, [("a", None, 0.0), ("b", love, 5.0)], 4, do_sample=True, top_p=0.5, seed=2,
                           progress=lambda done, total: seen.append(done))
    assert seen == [1, 2, 3, 4]
    assert cells == generate_cells(lm, PROMPTS, [("a", None, 0.0), ("b", love, 5.0)], 4, do_sample=True, top_p=0.5, seed=2)
