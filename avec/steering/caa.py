"""CAA: the mean difference of activations over contrast pairs, read at one token position.

A contrast pair is two texts that differ in the behaviour (for A/B questions: the same question
ending in the matching answer letter vs the other letter). Activations are read at a prompt-relative
position (``read_at=-1``: the last token, i.e. the answer letter), averaged over pairs.

Applying: a CAA vector's default positions are ``From(-1)``: every position from the prompt's last
token onward, generated tokens included. ``>=`` is what makes the last prompt token - the one whose
logits predict the first generated token - steered (the reference code's off-by-one missed it), and
each forward pass adds the vector once per column (cached steps see only their new column), so it
can never be added twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..core.positions import At, From, PositionsLike, as_positions, columns, uncovered_rows
from .vector import SteeringVector, Term, resolve_hooks

Pair = tuple[str, str]


def _check_pairs(pairs: Sequence[Pair]) -> list[Pair]:
    pairs = list(pairs)
    if not pairs:
        raise ValueError("empty dataset: mean difference needs at least one (positive, negative) pair")
    for i, p in enumerate(pairs):
        if not (isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(s, str) and s for s in p)):
            raise ValueError(f"pair {i} must be two non-empty strings (positive, negative), got {p!r}")
    return pairs


def activations(lm: Any, texts: Sequence[str], hooks: Sequence[str], read_at: int = -1,
                batch_size: int = 16) -> dict[str, torch.Tensor]:
    """``{hook: [n, d_model]}``: each text's activation at prompt-relative position ``read_at``."""
    texts = list(texts)
    if not texts:
        raise ValueError("empty dataset: no texts to read activations from")
    out: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    for i in range(0, len(texts), batch_size):
        chunk = texts[i:i + batch_size]
        _, mask = lm.tokenize(chunk)  # lengths as the model sees them (special tokens included)
        missing = uncovered_rows(columns(At((read_at,)), mask.sum(1).cpu()))
        if missing:
            raise ValueError(f"read_at={read_at} is outside text {chunk[missing[0]]!r} "
                             f"({int(mask[missing[0]].sum())} tokens); use -1 for each text's last token")
        run = lm.run(chunk, cache=list(hooks), positions=read_at, logits_to_keep=1)  # logits unused
        for h in hooks:
            out[h].append(run.cache[h][:, 0].float().cpu())
    return {h: torch.cat(v) for h, v in out.items()}


def paired_activations(lm: Any, pairs: Sequence[Pair], hooks: Sequence[str], read_at: int = -1,
                       batch_size: int = 16) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(positive, negative) activations ``{hook: [n_pairs, d_model]}``."""
    pairs = _check_pairs(pairs)
    pos = activations(lm, [p for p, _ in pairs], hooks, read_at, batch_size)
    neg = activations(lm, [n for _, n in pairs], hooks, read_at, batch_size)
    return pos, neg


def mean_difference(lm: Any, pairs: Sequence[Pair], at: str | int | Sequence[str | int], *, read_at: int = -1,
                    positions: PositionsLike = From(-1), batch_size: int = 16, name: str = "") -> SteeringVector:
    """The CAA vector: ``mean(act(positive) - act(negative))`` at each hook point, read at ``read_at``.

    Returns one ``[d_model]`` term per hook point, applied by default ``From(-1)`` (see module doc).
    """
    hooks = resolve_hooks(lm, at)
    pos, neg = paired_activations(lm, pairs, hooks, read_at, batch_size)
    terms = tuple(Term(h, (pos[h] - neg[h]).mean(0), as_positions(positions), 0) for h in hooks)
    return SteeringVector(terms, lm.model_id, {"method": "caa", "name": name, "pairs": len(pairs),
                                               "read_at": read_at, "hooks": hooks})


def match_norms(vectors: Mapping[str, SteeringVector]) -> dict[str, SteeringVector]:
    """Rescale several behaviours' vectors so that, at each hook point, every behaviour's vector has
    the mean norm of all of them there (CAA's per-layer normalisation across behaviours)."""
    if not vectors:
        raise ValueError("no vectors to normalise")
    names = list(vectors)
    hooks = {tuple(t.hook for t in v.terms) for v in vectors.values()}
    if len(hooks) != 1:
        raise ValueError(f"norm matching needs every vector at the same hook points, got {sorted(hooks)}")
    ids = {v.model_id for v in vectors.values()}
    if len(ids) != 1:
        raise ValueError(f"vectors come from different models: {sorted(ids)}")
    out_terms: dict[str, list[Term]] = {n: [] for n in names}
    for i in range(len(next(iter(hooks)))):
        norms = torch.stack([vectors[n].terms[i].tensor.norm() for n in names])
        target = norms.mean()
        for n, norm in zip(names, norms):
            t = vectors[n].terms[i]
            if norm < 1e-12:
                raise ValueError(f"vector {n!r} is zero at {t.hook!r}; it cannot be rescaled")
            out_terms[n].append(Term(t.hook, t.tensor * (target / norm), t.positions, t.start))
    return {n: SteeringVector(tuple(out_terms[n]), vectors[n].model_id,
                              {**vectors[n].recipe, "norm_matched_over": names}) for n in names}


# -- A/B datasets -----------------------------------------------------------------------------

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "caa"


@dataclass(frozen=True)
class ABItem:
    """One A/B question: ``question`` lists the options "(A) ..." and "(B) ..."; ``matching`` is the
    letter of the answer that shows the behaviour."""

    question: str
    matching: str
    split: str = "test"

    @property
    def other(self) -> str:
        return "B" if self.matching == "A" else "A"


def behaviours() -> list[str]:
    """Names of the shipped A/B datasets."""
    return sorted(p.stem for p in DATA_DIR.glob("*.jsonl"))


def load_ab(behaviour: str, split: str | None = None) -> list[ABItem]:
    """A shipped A/B dataset (``avec/data/caa/<behaviour>.jsonl``), optionally one split."""
    path = DATA_DIR / f"{behaviour}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no A/B dataset {behaviour!r}; shipped: {behaviours()}")
    items = []
    for line in path.read_text().splitlines():
        if line.strip():
            d = json.loads(line)
            items.append(ABItem(d["question"], d["answer_matching_behavior"].strip("() "), d.get("split", "test")))
    if split is not None:
        items = [i for i in items if i.split == split]
        if not items:
            raise ValueError(f"dataset {behaviour!r} has no items in split {split!r}")
    return items


def ab_prompt(lm: Any, item: ABItem, chat: bool = True) -> str:
    """The question as the model sees it, ending in "(" so the next token is the answer letter."""
    if chat and lm.tokenizer.chat_template:
        text = lm.tokenizer.apply_chat_template([{"role": "user", "content": item.question}],
                                                tokenize=False, add_generation_prompt=True)
        return text + "("
    return f"{item.question}\nAnswer: ("


def ab_pairs(lm: Any, items: Sequence[ABItem], chat: bool = True) -> list[Pair]:
    """Contrast pairs (prompt + matching letter, prompt + other letter); read them at ``read_at=-1``."""
    if not items:
        raise ValueError("empty dataset: no A/B items")
    return [(ab_prompt(lm, i, chat) + i.matching, ab_prompt(lm, i, chat) + i.other) for i in items]
