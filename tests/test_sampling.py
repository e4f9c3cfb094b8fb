"""The fast nucleus filter keeps what transformers' temperature -> top-k -> top-p chain keeps."""

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from avec.models.sampling import NucleusFilter


@pytest.mark.parametrize("vocab,k,scale", [(1000, 64, 3.0), (5000, 64, 0.3), (5000, 2048, 2.0)])
@pytest.mark.parametrize("top_p,temperature,top_k", [(0.1, 1.0, 0), (0.9, 0.7, 0), (0.95, 1.3, 50), (0.999, 1.0, 200)])
def test_matches_the_transformers_chain(vocab, k, scale, top_p, temperature, top_k):
    scores = torch.randn(6, vocab, generator=torch.Generator().manual_seed(vocab)) * scale
    ref = TemperatureLogitsWarper(temperature)(None, scores.clone())
    if top_k:
        ref = TopKLogitsWarper(top_k)(None, ref)
    ref = TopPLogitsWarper(top_p)(None, ref)
    ours = NucleusFilter(top_p, temperature=temperature, top_k=top_k, k=k)(None, scores.clone())
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))  # the same kept set (k=64 rows spill: full sort)
    assert torch.allclose(ours[~torch.isinf(ours)], ref[~torch.isinf(ref)])  # the same tempered scores


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="top_p must be in"):
        NucleusFilter(0.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        NucleusFilter(0.9, temperature=0.0)
