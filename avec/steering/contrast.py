"""ActAdd: the activations of prompt A minus those of prompt B, position by position.

Both prompts are tokenized as the model expects them (the tokenizer's own special tokens, so a BOS
where the model uses one; ``bos=True/False`` forces it). The shorter prompt is right-padded (with the
space token by default) to the longer one's length, so the vector keeps its per-position shape
``[k, d_model]`` and is added at the steered prompt's positions ``0..k-1`` (the ActAdd "front").
What padding did is recorded in ``vector.recipe["padding"]``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..core.positions import PositionsLike, as_positions
from .vector import SteeringVector, Term, resolve_hooks


def prompt_tokens(lm: Any, prompt: str, bos: bool | None = None) -> list[int]:
    """Token ids of one prompt with the tokenizer's special tokens; ``bos`` forces a BOS on/off."""
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"a contrast prompt must be a non-empty string, got {prompt!r}")
    if lm.tokenizer is None:
        raise ValueError("this model has no tokenizer; contrast() needs one to read prompts")
    ids = list(lm.tokenizer(prompt, add_special_tokens=True)["input_ids"])
    bos_id = lm.tokenizer.bos_token_id
    if bos is True:
        if bos_id is None:
            raise ValueError("bos=True but this tokenizer has no BOS token")
        if not ids or ids[0] != bos_id:
            ids = [bos_id] + ids
    elif bos is False and ids and bos_id is not None and ids[0] == bos_id:
        ids = ids[1:]
    return ids


def pad_id(lm: Any, pad: str | int) -> int:
    if isinstance(pad, int):
        if not 0 <= pad < lm.dims.vocab:
            raise ValueError(f"pad token id {pad} is outside the vocabulary 0..{lm.dims.vocab - 1}")
        return pad
    try:
        return lm.token_id(pad)
    except ValueError as e:
        raise ValueError(f"the padding must be one token: {e}") from None


def contrast(
    lm: Any,
    plus: str,
    minus: str,
    at: str | int | Sequence[str | int] = 6,
    *,
    pad: str | int = " ",
    bos: bool | None = None,
    max_pad: int = 4,
    positions: PositionsLike = "prompt",
) -> SteeringVector:
    """The ActAdd steering vector ``act(plus) - act(minus)`` at hook point(s) ``at``.

    at:        hook point name(s), globs, or layer numbers (``6`` = ``blocks.6.resid_pre``)
    pad:       token (string of exactly one token, or id) that right-pads the shorter prompt
    bos:       None = as the tokenizer does; True/False forces a leading BOS on/off
    max_pad:   refuse pairs whose token lengths differ by more than this (the padded tail would
               dominate the vector); raise it deliberately if that is what you want
    positions: where the per-position vector applies (default: the prompt; it never reaches
               generated tokens because row i goes to prompt position i)

    Returns a SteeringVector with one ``[k, d_model]`` term per hook point, k = the longer length.
    """
    hooks = resolve_hooks(lm, at)
    a, b = prompt_tokens(lm, plus, bos), prompt_tokens(lm, minus, bos)
    pid = pad_id(lm, pad)
    diff = abs(len(a) - len(b))
    if diff > max_pad:
        show = lambda ids: [lm.tokenizer.decode([i]) for i in ids]  # noqa: E731
        raise ValueError(
            f"the prompts tokenize to very different lengths: {plus!r} is {len(a)} tokens {show(a)}, {minus!r} is "
            f"{len(b)} tokens {show(b)}; padding the shorter with {diff} x {lm.tokenizer.decode([pid])!r} would "
            f"exceed max_pad={max_pad}. Rephrase the prompts to similar lengths or pass a larger max_pad."
        )
    k = max(len(a), len(b))
    shorter = "plus" if len(a) < len(b) else "minus"
    note = ("no padding (equal lengths)" if diff == 0 else
            f"{shorter} prompt {plus if shorter == 'plus' else minus!r} right-padded with {diff} x "
            f"{lm.tokenizer.decode([pid])!r} (id {pid}) to {k} tokens")
    a, b = a + [pid] * (k - len(a)), b + [pid] * (k - len(b))
    ids = torch.tensor([a, b], device=lm.device)
    run = lm.run(ids, cache=hooks)
    terms = tuple(Term(h, (run.cache[h][0] - run.cache[h][1]).float().cpu(), as_positions(positions), 0) for h in hooks)
    recipe = {
        "method": "actadd", "plus": plus, "minus": minus, "hooks": hooks, "padding": note,
        "tokens_plus": [lm.tokenizer.decode([i]) for i in a], "tokens_minus": [lm.tokenizer.decode([i]) for i in b],
        "bos": bool(lm.tokenizer.bos_token_id is not None and a[0] == lm.tokenizer.bos_token_id),
    }
    return SteeringVector(terms, lm.model_id, recipe)

