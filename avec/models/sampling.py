"""Nucleus (top-p) filtering that does not sort the whole vocabulary.

transformers' ``TopPLogitsWarper`` sorts every row's full logits at every decoding step; with Gemma's
262k-token vocabulary that sort costs more than the forward pass on a CPU (2.35 s a step for 88 rows,
against ~0.34 s for the model). The nucleus is almost always a few hundred tokens, so this filter takes
the ``k`` most likely tokens, finds the nucleus among them, and sorts a row in full only when its
nucleus is larger than ``k``. The kept set is the one ``TopPLogitsWarper`` keeps: token ``i`` (in
descending order) stays iff the probability of the tokens ranked above it is below ``top_p``, and
the most likely token always stays.
"""

from __future__ import annotations

import torch


class NucleusFilter:
    """A transformers logits processor: ``scores [batch, vocab] -> scores / temperature`` with tokens
    outside the top-k and then outside the top-p nucleus set to ``-inf``.

    It does temperature and top-k too because transformers runs user processors *before* its own
    warpers; doing all three here, in transformers' order (temperature, top-k, top-p), keeps the
    sampling distribution the one ``generate(temperature=, top_k=, top_p=)`` defines. Pass
    ``temperature=1.0, top_k=0, top_p=1.0`` to ``generate`` beside it so nothing is applied twice.
    """

    def __init__(self, top_p: float, temperature: float = 1.0, top_k: int | None = None, k: int = 1024):
        if not 0.0 < float(top_p) <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if not float(temperature) > 0.0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.top_p, self.temperature, self.top_k, self.k = float(top_p), float(temperature), top_k or 0, int(k)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.temperature != 1.0:
            scores = scores / self.temperature
        if 0 < self.top_k < scores.shape[-1]:  # as TopKLogitsWarper: ties with the k-th score stay
            kth = scores.topk(self.top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p >= 1.0:
            return scores
        probs = scores.float().softmax(-1)
        k = min(self.k, scores.shape[-1])
        top, idx = probs.topk(k, dim=-1)  # descending
        before = top.cumsum(-1) - top  # mass ranked above each token
        keep_top = before < self.top_p
        keep_top[:, 0] = True
        keep = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, idx, keep_top)
        spill = keep_top[:, -1]  # the nucleus may go beyond the k-th token: decide those rows in full
        if spill.any():
            rows = spill.nonzero().squeeze(1)
            p_sorted, order = probs[rows].sort(-1, descending=True)
            keep_rows = (p_sorted.cumsum(-1) - p_sorted) < self.top_p
            keep_rows[:, 0] = True
            keep[rows] = torch.zeros_like(keep_rows).scatter_(-1, order, keep_rows)
        return scores.masked_fill(~keep, float("-inf"))
