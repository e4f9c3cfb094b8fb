"""Evaluating a steering vector with numbers.

- ``effectiveness``: ActAdd's effectiveness and disruption on texts: the change of log-probability mass
  on a target token set (e.g. wedding words) and the KL divergence of the next-token distribution
  restricted (and renormalised) to the tokens *outside* that set, averaged over positions.
- ``perplexity_ratio``: capability cost: perplexity with / without steering on reference texts; the
  predictions made at injected positions are masked (the vector sits there, so their loss says little
  about the model's downstream capability).
- behaviour metrics on generated text, with real offline tools: ``sentiment`` (VADER lexicon,
  ``pip install vaderSentiment``), ``wedding_rate`` (ActAdd's wedding word list), ``language_rate``
  (``pip install langdetect``, seeded), and ``ab_eval``: CAA's p(matching) / (p(A) + p(B)).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..core.hookpoints import Site
from ..core.positions import TokenContext
from ..results import Result
from .caa import ABItem, ab_prompt

WEDDING_WORDS = ("wedding", "weddings", "wed", "marry", "married", "marriage", "bride", "groom", "honeymoon")


def _interventions(steer: Any, positions: Any = None) -> list:
    if steer is None:
        return []
    if hasattr(steer, "as_interventions"):
        return list(steer.as_interventions(positions=positions)) if positions is not None else list(steer.as_interventions())
    return list(steer) if isinstance(steer, (list, tuple)) else [steer]


def injected_mask(interventions: Sequence[Any], lengths: torch.Tensor, seq: int, lm: Any = None) -> torch.Tensor:
    """[batch, seq] True where any intervention edits a run of right-padded prompts of ``lengths``:
    exactly the columns the hooks edit (``Intervention.selected``). ``lm`` gives each hook point's
    site; without it a hook is taken for a residual point of the vector's width."""
    ctx = TokenContext.for_prompts(lengths, seq)
    out = torch.zeros(ctx.batch, seq, dtype=torch.bool)
    for iv in interventions:
        if lm is not None:
            site = lm.site(iv.hook)
        else:
            tensor = getattr(iv, "vector", getattr(iv, "value", None))
            width = None if not isinstance(tensor, torch.Tensor) else (int(tensor.shape[-1]),)
            site = Site(name=iv.hook, module="", pos_axis=1, width=width)
        sel = iv.selected(ctx, site)
        out |= True if sel is None else sel.cpu()
    return out


# -- effectiveness and disruption (ActAdd) ------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Effect(Result):
    """Per position (flattened over texts): ``logp_target_base/steered`` [n], ``kl_outside`` [n]."""

    logp_target_base: torch.Tensor
    logp_target_steered: torch.Tensor
    kl_outside: torch.Tensor
    targets: tuple[str, ...]

    @property
    def effectiveness(self) -> float:
        """Mean change of log P(target set) (nats); > 0 means the vector raised the target mass."""
        return float((self.logp_target_steered - self.logp_target_base).mean())

    @property
    def disruption(self) -> float:
        """Mean KL(base || steered) over non-target tokens (nats)."""
        return float(self.kl_outside.mean())

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"log P(target) base": self.logp_target_base.numpy(),
                             "log P(target) steered": self.logp_target_steered.numpy(),
                             "KL outside target": self.kl_outside.numpy()})

    def plot(self, ax=None):
        import matplotlib.pyplot as plt

        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(5, 4))
        ax.scatter(self.logp_target_base.numpy(), self.logp_target_steered.numpy(), s=8,
                   c=self.kl_outside.numpy(), cmap="viridis")
        lo = float(min(self.logp_target_base.min(), self.logp_target_steered.min()))
        ax.plot([lo, 0], [lo, 0], color="grey", lw=0.8)
        ax.set(xlabel="log P(target) unsteered", ylabel="log P(target) steered",
               title=f"effectiveness {self.effectiveness:+.2f} nats, disruption {self.disruption:.3f}")
        return fig


def target_ids(lm: Any, words: Sequence[str]) -> list[int]:
    """Token ids of the target words: each word's first token, with and without a leading space
    and capitalised (deduplicated)."""
    ids: set[int] = set()
    for w in words:
        for form in {w, " " + w, w.capitalize(), " " + w.capitalize()}:
            toks = lm.to_tokens(form)
            if toks:
                ids.add(toks[0])
    if not ids:
        raise ValueError("no target tokens")
    return sorted(ids)


def effectiveness(lm: Any, texts: Sequence[str], steer: Any, targets: Sequence[str] | Sequence[int], *,
                  positions: Any = None, exclude_injected: bool = False) -> Effect:
    """ActAdd's effectiveness / disruption of ``steer`` on ``texts`` at every real position."""
    texts = list(texts)
    if not texts:
        raise ValueError("empty dataset: no texts to evaluate on")
    ids = sorted(set(targets)) if all(isinstance(t, int) for t in targets) else target_ids(lm, list(targets))
    ivs = _interventions(steer, positions)
    with torch.no_grad():
        base = lm.run(texts)
        steered = lm.run(texts, interventions=ivs)
    keep = base.attention_mask.bool().cpu()
    if exclude_injected:
        keep &= ~injected_mask(ivs, base.lengths.cpu(), keep.shape[1], lm)
    lb = torch.log_softmax(base.logits.float().cpu(), -1)[keep]  # [n, V]
    ls = torch.log_softmax(steered.logits.float().cpu(), -1)[keep]
    in_t = torch.zeros(lb.shape[-1], dtype=torch.bool)
    in_t[ids] = True
    lpt_b, lpt_s = lb[:, in_t].logsumexp(-1), ls[:, in_t].logsumexp(-1)
    qb = lb[:, ~in_t] - lb[:, ~in_t].logsumexp(-1, keepdim=True)
    qs = ls[:, ~in_t] - ls[:, ~in_t].logsumexp(-1, keepdim=True)
    kl = (qb.exp() * (qb - qs)).sum(-1)
    names = tuple(lm.tokenizer.decode([i]) for i in ids) if lm.tokenizer else tuple(map(str, ids))
    return Effect(lpt_b, lpt_s, kl, names)


# -- perplexity -------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Perplexity(Result):
    """Per text: mean NLL (nats/token) without and with steering, over the unmasked predictions."""

    nll_base: torch.Tensor
    nll_steered: torch.Tensor
    counted: torch.Tensor
    masked: int

    @property
    def ratio(self) -> float:
        """Perplexity(steered) / perplexity(base), token-weighted over all texts."""
        w = self.counted.float()
        return float(torch.exp(((self.nll_steered - self.nll_base) * w).sum() / w.sum()))

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"ppl base": self.nll_base.exp().numpy(), "ppl steered": self.nll_steered.exp().numpy(),
                             "tokens counted": self.counted.numpy()})

    def plot(self, ax=None):
        import matplotlib.pyplot as plt

        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(5, 4))
        ax.scatter(self.nll_base.exp().numpy(), self.nll_steered.exp().numpy(), s=12)
        hi = float(max(self.nll_base.exp().max(), self.nll_steered.exp().max()))
        ax.plot([0, hi], [0, hi], color="grey", lw=0.8)
        ax.set(xlabel="perplexity unsteered", ylabel="perplexity steered", title=f"ratio {self.ratio:.3f}")
        return fig


def perplexity_ratio(lm: Any, texts: Sequence[str], steer: Any, *, positions: Any = None,
                     mask_injected: bool = True) -> Perplexity:
    """Perplexity of ``texts`` with / without ``steer``; predictions made at injected positions are masked."""
    texts = list(texts)
    if not texts:
        raise ValueError("empty dataset: no reference texts")
    ivs = _interventions(steer, positions)
    with torch.no_grad():
        base = lm.run(texts)
        steered = lm.run(texts, interventions=ivs)
    tok = base.tokens.cpu()
    keep = base.attention_mask.bool().cpu()[:, 1:].clone()  # prediction at i of token i+1
    injected = injected_mask(ivs, base.lengths.cpu(), tok.shape[1], lm)[:, :-1]
    masked = int((keep & injected).sum()) if mask_injected else 0
    if mask_injected:
        keep &= ~injected
    if not keep.any():
        raise ValueError("every prediction is at an injected position (a vector applied at all positions?); "
                         "pass mask_injected=False to measure it anyway")

    def nll(run):
        lp = torch.log_softmax(run.logits.float().cpu()[:, :-1], -1)
        return -lp.gather(-1, tok[:, 1:, None])[..., 0]  # [batch, seq-1]

    nb, ns = nll(base), nll(steered)
    counted = keep.sum(1)
    mean = lambda x: (x * keep).sum(1) / counted.clamp_min(1)  # noqa: E731
    return Perplexity(mean(nb), mean(ns), counted, masked)


# -- behaviour metrics on text ----------------------------------------------------------------

def sentiment(texts: Sequence[str]) -> list[float]:
    """VADER compound sentiment of each text, in [-1, 1]."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise ImportError("sentiment needs the VADER lexicon: pip install vaderSentiment") from None
    analyzer = SentimentIntensityAnalyzer()
    return [analyzer.polarity_scores(t)["compound"] for t in texts]


_WORD = re.compile(r"[A-Za-z']+")


def wedding_rate(texts: Sequence[str], words: Sequence[str] = WEDDING_WORDS) -> dict[str, float]:
    """{"texts with a wedding word": fraction of texts, "word rate": wedding words / all words}."""
    texts = list(texts)
    if not texts:
        raise ValueError("no texts")
    vocab = {w.lower() for w in words}
    hits = [[w for w in _WORD.findall(t.lower()) if w in vocab] for t in texts]
    n_words = sum(len(_WORD.findall(t)) for t in texts)
    return {"texts with a wedding word": sum(bool(h) for h in hits) / len(texts),
            "word rate": sum(len(h) for h in hits) / max(n_words, 1)}


def language_rate(texts: Sequence[str], lang: str = "fr") -> float:
    """Fraction of texts identified as ``lang`` by langdetect (seeded; empty texts count as not)."""
    try:
        from langdetect import DetectorFactory, detect
        from langdetect.lang_detect_exception import LangDetectException
    except ImportError:
        raise ImportError("language_rate needs langdetect: pip install langdetect") from None
    DetectorFactory.seed = 0
    texts = list(texts)
    if not texts:
        raise ValueError("no texts")
    hits = 0
    for t in texts:
        try:
            hits += detect(t) == lang if _WORD.search(t) else 0
        except LangDetectException:
            pass
    return hits / len(texts)


# -- CAA A/B ----------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class ABScores(Result):
    """Per item: p(A), p(B) at the answer position, and p(matching) / (p(A) + p(B))."""

    p_a: torch.Tensor
    p_b: torch.Tensor
    matching: tuple[str, ...]
    info: dict = field(default_factory=dict)

    @property
    def p_match(self) -> torch.Tensor:
        m = torch.tensor([x == "A" for x in self.matching])
        return torch.where(m, self.p_a, self.p_b) / (self.p_a + self.p_b)

    @property
    def score(self) -> float:
        return float(self.p_match.mean())

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"p(A)": self.p_a.numpy(), "p(B)": self.p_b.numpy(), "matching": self.matching,
                             "p(match)/(p(A)+p(B))": self.p_match.numpy()})

    def plot(self, ax=None):
        import matplotlib.pyplot as plt

        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(5, 3.5))
        ax.hist(self.p_match.numpy(), bins=20, range=(0, 1))
        ax.set(xlabel="p(match)/(p(A)+p(B))", ylabel="items", title=f"mean {self.score:.3f}")
        return fig


def ab_eval(lm: Any, items: Sequence[ABItem], steer: Any = None, *, positions: Any = None, chat: bool = True,
            batch_size: int = 16) -> ABScores:
    """p(A), p(B) of the answer letter after "(" for each item, optionally steered."""
    items = list(items)
    if not items:
        raise ValueError("empty dataset: no A/B items")
    a, b = lm.to_tokens("(A")[-1], lm.to_tokens("(B")[-1]
    ivs = _interventions(steer, positions)
    pa, pb = [], []
    with torch.no_grad():
        for i in range(0, len(items), batch_size):
            prompts = [ab_prompt(lm, it, chat) for it in items[i:i + batch_size]]
            lengths = torch.tensor([len(lm.to_tokens(t)) for t in prompts])
            keep = int(lengths.max() - lengths.min()) + 1  # reaches every prompt's last token (right padding)
            run = lm.run(prompts, interventions=ivs, logits_to_keep=keep)  # not the whole [batch, pos, vocab]
            p = torch.softmax(run.last_logits().float().cpu(), -1)
            pa.append(p[:, a])
            pb.append(p[:, b])
    return ABScores(torch.cat(pa), torch.cat(pb), tuple(it.matching for it in items),
                    {"steer": repr(steer), "chat": chat})
