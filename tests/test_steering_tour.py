"""The steering tour sections run end to end (quick mode) on a tiny 13-layer model with SmolLM2's
tokenizer: this checks their code paths, not the behaviour (the real tour runs on SmolLM2)."""

from types import SimpleNamespace

import pytest

from avec.report.html import Section
from avec.steering.tour_sections import SECTIONS

from _steering_tiny import tiny_lm_with_tokenizer


@pytest.fixture(scope="module")
def ctx(smollm2):
    return SimpleNamespace(lm=tiny_lm_with_tokenizer(smollm2.tokenizer, n_layers=13), quick=True)


@pytest.mark.parametrize("title, fn", SECTIONS, ids=[t for t, _ in SECTIONS])
def test_section_runs(ctx, title, fn):
    s = Section(title)
    fn(ctx, s)
    assert s.parts and any("<table" in p for p in s.parts)
