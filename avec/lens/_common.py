"""Shared plumbing of the lens modules: getting a run with the right caches, picking token positions."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..core.model import Run
from ..core.positions import TokenContext, column_of
from ..models.lm import LanguageModel


def ensure_run(lm: LanguageModel, inputs: Any, points: Sequence[str]) -> Run:
    """``inputs`` if it is a Run holding every point at all positions, else a fresh run caching them.

    A Run that lacks a point raises an error naming what to add to ``cache=[...]``.
    """
    if isinstance(inputs, Run):
        missing = [p for p in points if p not in inputs.cache]
        if missing:
            more = f" (+{len(missing) - 6} more)" if len(missing) > 6 else ""
            raise KeyError(
                f"the run lacks cached {', '.join(missing[:6])}{more}; run it with cache=[...] including "
                "them, or pass the prompts instead of a run"
            )
        if inputs.cache.positions != "all":
            raise ValueError(f"the run cached only positions {inputs.cache.positions}; cache every position")
        return inputs
    return lm.run(inputs, cache=list(points))


def columns(run: Run, position: int) -> torch.Tensor:
    """``[batch]`` absolute column of a prompt-relative position in each row (whatever the padding)."""
    if run.attention_mask is not None:
        ctx = TokenContext.from_mask(run.attention_mask.cpu())
    else:
        ctx = TokenContext.for_prompts(run.lengths, int(run.tokens.shape[1]))
    return column_of(position, ctx).to(run.logits.device)


def at(t: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """``t[b, col[b]]`` for each row: ``[batch, pos, *rest] -> [batch, *rest]``."""
    return t[torch.arange(t.shape[0], device=t.device), col.to(t.device)]


def token_ids(lm: LanguageModel, tokens: Any, batch: int, what: str) -> torch.Tensor:
    """``[batch]`` ids from one token (str or int) or one per prompt."""
    if isinstance(tokens, (str, int)):
        return torch.full((batch,), lm.token_id(tokens), dtype=torch.long)
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.tolist()
    ids = [lm.token_id(t) for t in tokens]
    if len(ids) != batch:
        raise ValueError(f"{what}: {len(ids)} tokens given for {batch} prompts; give one token or one per prompt")
    return torch.tensor(ids, dtype=torch.long)


def token_label(lm: LanguageModel, tok: int) -> str:
    if lm.tokenizer is None:
        return f"#{tok}"
    return lm.tokenizer.decode([tok])
