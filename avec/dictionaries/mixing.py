"""A token-level mixing buffer: activations of many contexts shuffled together.

Consecutive tokens of one context are strongly correlated; a dictionary trained on them in order
sees batches from a handful of documents. The buffer holds ``buffer_tokens`` tokens, shuffles them,
hands out the half it can spare in batches and refills that half from the stream, so each batch
mixes tokens from the last ~``buffer_tokens / context`` contexts.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch

Acts = dict[str, torch.Tensor]  # hook point -> [n_tokens, d], the same n_tokens for every hook point


def _cat(parts: list[Acts]) -> Acts:
    return {k: torch.cat([p[k] for p in parts]) if len(parts) > 1 else parts[0][k] for k in parts[0]}


def _take(acts: Acts, idx: torch.Tensor) -> Acts:
    return {k: v.index_select(0, idx) for k, v in acts.items()}


def _n(acts: Acts) -> int:
    return int(next(iter(acts.values())).shape[0])


def mix(chunks: Iterable[Acts], buffer_tokens: int, batch_tokens: int, seed: int = 0,
        drop_last: bool = False) -> Iterator[Acts]:
    """Batches ``{hook: [batch_tokens, d]}`` of the tokens of ``chunks``, shuffled within a buffer of
    ``buffer_tokens`` (refilled half at a time; ``seed`` fixes the order). Every token is yielded
    once; the last batch is smaller unless ``drop_last``."""
    if batch_tokens < 1 or buffer_tokens < 2 * batch_tokens:
        raise ValueError(f"buffer_tokens ({buffer_tokens}) must be at least twice batch_tokens ({batch_tokens}) "
                         "and batch_tokens >= 1: the buffer hands out half of itself at a time")
    gen = torch.Generator().manual_seed(seed)
    keep = buffer_tokens // 2  # tokens that stay in the buffer to mix with the next refill
    held: list[Acts] = []
    n_held = 0
    for chunk in chunks:
        if _n(chunk) == 0:
            continue
        held.append(chunk)
        n_held += _n(chunk)
        if n_held < buffer_tokens:
            continue
        buf = _take(_cat(held), torch.randperm(n_held, generator=gen))
        n_out = (n_held - keep) // batch_tokens * batch_tokens
        for start in range(0, n_out, batch_tokens):
            yield {k: v[start:start + batch_tokens] for k, v in buf.items()}
        held = [{k: v[n_out:] for k, v in buf.items()}]
        n_held -= n_out
    if not held:
        return
    buf = _take(_cat(held), torch.randperm(n_held, generator=gen))
    for start in range(0, n_held, batch_tokens):
        if drop_last and start + batch_tokens > n_held:
            break
        yield {k: v[start:start + batch_tokens] for k, v in buf.items()}
