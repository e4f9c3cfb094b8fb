"""The steering tour sections run end to end (quick mode) on tiny models with SmolLM2's tokenizer (a
13-layer llama; a 7-layer Gemma 3 stands in for the sections pinned to Gemma 3 270M): this checks their
code paths, not the behaviour (the real tour runs on SmolLM2 and Gemma 3)."""

import pytest

from avec.app.tour.context import TourContext
from avec.app.report.html import Section
from avec.app.tour.steering import GEMMA, SECTIONS, _layer

from _steering_tiny import tiny_lm_with_tokenizer


@pytest.fixture(scope="module")
def gemma_stand_in(smollm2):
    return tiny_lm_with_tokenizer(smollm2.tokenizer, "gemma3_text", n_layers=7)


@pytest.fixture(scope="module")
def ctx(smollm2, gemma_stand_in):
    return TourContext(model_name="tiny", quick=True,
                       _models={"tiny": tiny_lm_with_tokenizer(smollm2.tokenizer, n_layers=13), GEMMA: gemma_stand_in})


# every section; of the pinned copies (the same functions) only the first, to keep the suite fast
RUN = [(t, f) for t, f in SECTIONS if "Gemma" not in t] + [next((t, f) for t, f in SECTIONS if "Gemma" in t)]


@pytest.mark.parametrize("title, fn", RUN, ids=[t for t, _ in RUN])
def test_section_runs(ctx, title, fn):
    s = Section(title)
    fn(ctx, s)
    assert s.parts and any("<table" in p for p in s.parts)
    if "Gemma" in title:  # pinned sections run on the pinned model, not the tour's
        assert ctx._models[GEMMA].name in s.parts[0] and ctx.lm.name not in s.parts[0]


def test_gemma_sections_do_not_repeat_a_gemma_tour(gemma_stand_in):
    ctx = TourContext(model_name=GEMMA, quick=True, _models={GEMMA: gemma_stand_in})
    pinned = [(t, f) for t, f in SECTIONS if "Gemma" in t]
    assert pinned
    for title, fn in pinned:
        s = Section(title)
        fn(ctx, s)
        assert len(s.parts) == 1 and "already ran" in s.parts[0]


def test_layers_move_to_the_same_relative_depth(smollm2, gemma_stand_in):
    assert [_layer(smollm2, l) for l in (0, 6, 12, 29)] == [0, 6, 12, 29]  # SmolLM2's own layers unchanged
    picked = [_layer(gemma_stand_in, l) for l in range(30)]
    assert picked == sorted(picked) and picked[0] == 0 and picked[-1] == gemma_stand_in.n_layers - 1


def test_wedding_outcome_is_read_from_the_rows_not_the_model():
    from avec.app.tour.steering import _wedding_outcome

    key = "texts with a wedding word"
    rows = [{"vector": "none", "layer": "-", "coeff": 0.0, key: 0.25},
            {"vector": "ActAdd (front)", "layer": 6, "coeff": 4.0, key: 0.0},
            {"vector": "ActAdd (front)", "layer": 6, "coeff": 8.0, key: 0.25},
            {"vector": "mean diff (all positions)", "layer": 8, "coeff": 0.5, key: 0.5},
            {"vector": "mean diff (all positions)", "layer": 8, "coeff": 1.5, key: 0.75}]
    text = _wedding_outcome(rows)
    assert "ActAdd (front): at best 25% (layer 6, coeff 8), not above the unsteered 25%" in text
    assert "mean diff (all positions): at best 75% (layer 8, coeff 1.5), above the unsteered 25%" in text
