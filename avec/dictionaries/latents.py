"""A dictionary's latents over a set of texts, collected once and kept sparse, so that any feature's top
examples, histogram and density are read without running the model again (what a feature browser needs:
one pass over a few hundred contexts, then every feature page at once).

    index = collect_latents(lm, sae, at, texts)          # one pass; only positive latents are kept
    index.examples([12, 40], k=10)                       # TopExamples, as top_examples(...) gives
    prompt_features(lm, sae, at, "The cat sat", k=5)     # PromptFeatures: the strongest latents per position

Memory: 16 bytes per positive latent of a read token plus 4 per token (measured: the shipped TopK SAE, k=32,
over 256 held-out contexts of 64 tokens: 8.3 MB). ``top_examples`` is ``collect_latents(..., features=ids).examples(ids, ...)``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.dictionary import AttachedDictionary, dims
from ..plotting import heatmap
from ..results import Result
from .features import (Example, FeatureExamples, TopExamples, _attached, _batches, _feature_ids, _n_inputs, _read_mask,
                       _skipped_ids, _token_strings)

__all__ = ["LatentIndex", "collect_latents", "PromptFeatures", "prompt_features", "FeatureDensity"]


@dataclass(frozen=True, eq=False)
class LatentIndex:
    """Positive latents of one dictionary point over ``n_texts`` texts (sparse, by feature).

    at:        the point the latents read (``blocks.6.resid_post``; layer ``layer``'s for a cross-layer one)
    tokens:    ``[sum of text lengths]`` int32, each text's real tokens one after another; ``starts``
               ``[n_texts + 1]`` where each text begins
    feature, text, pos, value: ``[m]`` one entry per positive latent of a read token, sorted by feature,
               then text, then position; ``offsets`` ``[n_columns + 1]`` where each column's entries begin
    columns:   the feature ids collected (``None``: every one, column = feature id)
    n_read:    tokens read (real tokens that are not in ``skip_tokens``): the density's denominator
    strings:   token id -> its text, for every token of the texts
    """

    at: str
    d_sae: int
    n_texts: int
    tokens: torch.Tensor
    starts: torch.Tensor
    feature: torch.Tensor
    text: torch.Tensor
    pos: torch.Tensor
    value: torch.Tensor
    offsets: torch.Tensor
    columns: tuple[int, ...] | None
    n_read: int
    strings: dict[int, str] = field(repr=False)

    def _column(self, f: int) -> int:
        if self.columns is None:
            return f
        try:
            return self.columns.index(f)
        except ValueError:
            raise KeyError(f"feature {f} was not collected; collected: {list(self.columns)[:20]}") from None

    def entries(self, f: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(text, pos, value)`` ``[m_f]`` of feature ``f``'s positive latents, in text / position order."""
        (f,) = _feature_ids(f, self.d_sae)
        c = self._column(f)
        lo, hi = int(self.offsets[c]), int(self.offsets[c + 1])
        return self.text[lo:hi], self.pos[lo:hi], self.value[lo:hi]

    def counts(self) -> torch.Tensor:
        """``[d_sae]`` on how many read tokens each feature is active (0 for features not collected)."""
        out = torch.zeros(self.d_sae, dtype=torch.long)
        n = (self.offsets[1:] - self.offsets[:-1]).long()
        out[torch.arange(self.d_sae) if self.columns is None else torch.tensor(self.columns, dtype=torch.long)] = n
        return out

    def max_values(self) -> torch.Tensor:
        """``[d_sae]`` each feature's largest activation (0 when never active)."""
        return torch.zeros(self.d_sae).scatter_reduce_(0, self.feature.long(), self.value, "amax")

    def density(self, dense_threshold: float = 0.1) -> "FeatureDensity":
        """Every feature's firing frequency over the read tokens (``FeatureDensity``; needs every feature
        collected)."""
        if self.columns is not None:
            raise ValueError("this index collected only some features (features=...); the density of every feature "
                             "needs collect_latents(..., features=None)")
        return FeatureDensity(self.at, self.n_read, self.counts(), self.max_values(), float(dense_threshold))

    def text_tokens(self, t: int) -> list[int]:
        return self.tokens[int(self.starts[t]):int(self.starts[t + 1])].tolist()

    def examples(self, feature_ids: Any, k: int = 10, context: tuple[int, int] | int = (8, 4),
                 bins: int = 30) -> TopExamples:
        """``top_examples`` read from the index: per feature its ``k`` largest activations (ties: the earlier
        text and position first) with ``context`` = (tokens before, tokens after) around each, the histogram
        of its positive activations (``bins`` bins) and its density over the read tokens."""
        before, after = (context, context) if isinstance(context, int) else tuple(context)
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in (before, after)):
            raise ValueError(f"context={context!r}; give tokens (before, after) as two ints >= 0, or one int")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k={k!r}; it must be a positive int")
        out = {}
        for f in _feature_ids(feature_ids, self.d_sae):
            texts, pos, vals = self.entries(f)
            best = torch.sort(-vals, stable=True).indices[:k].tolist()
            found = []
            for j in best:
                t, p = int(texts[j]), int(pos[j])
                length = int(self.starts[t + 1] - self.starts[t])
                lo, hi = max(0, p - before), min(length, p + after + 1)
                acts = [0.0] * (hi - lo)  # the feature's value on each token of the window (0: not active / not read)
                here = (texts == t) & (pos >= lo) & (pos < hi)
                for q, v in zip(pos[here].tolist(), vals[here].tolist()):
                    acts[q - lo] = v
                ids = self.text_tokens(t)[lo:hi]
                found.append(Example(t, p, float(vals[j]), tuple(self.strings[i] for i in ids), tuple(acts), p - lo))
            v = vals.numpy()
            if v.size:
                counts, edges = np.histogram(v, bins=bins, range=(0.0, float(v.max())))
            else:
                counts, edges = np.zeros(0, dtype=int), np.zeros(0)
            out[f] = FeatureExamples(f, tuple(found), tuple(int(c) for c in counts), tuple(float(e) for e in edges),
                                     int(v.size), self.n_read, float(v.max()) if v.size else 0.0)
        return TopExamples(out, self.at, self.n_texts)

    def describe(self) -> dict:
        """Sizes, as JSON data."""
        return {"at": self.at, "d_sae": self.d_sae, "n_texts": self.n_texts, "n_tokens": int(self.tokens.numel()),
                "n_read": self.n_read, "n_entries": int(self.value.numel()),
                "bytes": int(sum(t.numel() * t.element_size() for t in (self.tokens, self.starts, self.feature,
                                                                          self.text, self.pos, self.value)))}


@contextmanager
def attached_layer(lm: Any, sae: Any, at: str | None, layer: int = 0) -> Iterator[tuple[AttachedDictionary, str]]:
    """``(attached dictionary, its latents point for encoder ``layer``)`` for the block: an
    AttachedDictionary as it is; a cross-layer or multi-layer transcoder set attached at its own points
    (``at`` is then not used); anything else as ``features`` attaches it."""
    if isinstance(sae, AttachedDictionary):
        yield sae, sae.point("latents", layer)
        return
    reads = getattr(sae, "reads", None)
    if at is None and isinstance(reads, (list, tuple)):
        with lm.dictionary(sae) as d:
            yield d, d.point("latents", layer)
        return
    with _attached(lm, sae, at) as d:
        yield d, d.point("latents", layer)


def collect_latents(lm: Any, sae: Any, at: str | None, texts: Any, *, layer: int = 0, features: Any = None,
                    batch_size: int = 8, skip_tokens: Any = "special",
                    progress: bool | Callable[[int, int], Any] = False) -> LatentIndex:
    """Run ``texts`` (strings, or token ids ``[n, pos]``) through ``lm`` with the dictionary attached and keep
    every positive latent of every read token (``features``: only those feature ids). ``layer``: which
    encoder of a cross-layer / multi-layer transcoder. ``skip_tokens`` as in ``top_examples`` (special
    tokens are not read: no entries, not counted). ``progress``: True for a tqdm bar, or a function
    ``progress(texts done, n_texts)``."""
    n_texts = _n_inputs(texts)
    bar = tqdm(total=n_texts, desc="latents", unit="text", disable=progress is not True)
    report = progress if callable(progress) else None
    skip = _skipped_ids(lm, skip_tokens)
    toks, lens, parts = [], [], []
    n_read = 0
    with attached_layer(lm, sae, at, layer) as (d, point):
        d_sae = dims(d.module)[1]
        cols = None if features is None else _feature_ids(features, d_sae)
        idx = None if cols is None else torch.tensor(cols)
        done = 0
        for start, batch in _batches(texts, batch_size):
            with torch.no_grad():  # the layers after the latents' point are not run
                run = lm.run(batch, cache=[point], stop_early=True)
            lat = run.cache[point]
            lat = (lat if idx is None else lat[..., idx.to(lat.device)]).float().cpu()  # [b, pos, F]
            ids = run.tokens.cpu()
            real = run.attention_mask.cpu().bool() if run.attention_mask is not None else torch.ones(ids.shape, dtype=torch.bool)
            mask = _read_mask(run, skip)
            n_read += int(mask.sum())
            for r in range(ids.shape[0]):  # right padding: a text's real tokens come first
                n = int(real[r].sum())
                toks.append(ids[r, :n].to(torch.int32))
                lens.append(n)
            on = (lat > 0) & mask[..., None]
            row, p, c = on.nonzero(as_tuple=True)  # row-major: by text, position, column
            parts.append((c.to(torch.int32), (row + start).to(torch.int32), p.to(torch.int32), lat[row, p, c]))
            done += ids.shape[0]
            bar.update(ids.shape[0])
            if report is not None:
                report(done, n_texts)
        at_point = point.rsplit(".", 2)[0]
    bar.close()
    col, text, pos, value = (torch.cat([q[i] for q in parts]) for i in range(4))
    order = torch.sort(col, stable=True).indices  # by column; within one, still by text and position
    col, text, pos, value = col[order], text[order], pos[order], value[order]
    n_cols = d_sae if cols is None else len(cols)
    offsets = torch.zeros(n_cols + 1, dtype=torch.long)
    offsets[1:] = torch.bincount(col.long(), minlength=n_cols).cumsum(0)
    feature = col if cols is None else torch.tensor(cols, dtype=torch.int32)[col.long()]
    tokens = torch.cat(toks) if toks else torch.zeros(0, dtype=torch.int32)
    starts = torch.zeros(len(lens) + 1, dtype=torch.long)
    starts[1:] = torch.tensor(lens, dtype=torch.long).cumsum(0)
    unique = torch.unique(tokens).tolist()
    strings = dict(zip(unique, _token_strings(lm, unique)))
    return LatentIndex(at_point, d_sae, n_texts, tokens, starts, feature, text, pos, value, offsets, cols, n_read, strings)


# ----------------------------------------------------------------------------- feature density
@dataclass(frozen=True)
class FeatureDensity(Result):
    """How often each feature fires over a set of read tokens (``LatentIndex.density``).

    counts:  ``[d_sae]`` int, on how many of the ``n_read`` tokens each feature is positive
    max:     ``[d_sae]`` each feature's largest activation (0 when it never fires)
    dense_threshold: a feature firing on more than this share of tokens counts as dense
    """

    at: str
    n_read: int
    counts: torch.Tensor
    max: torch.Tensor
    dense_threshold: float = 0.1

    def __post_init__(self):
        if not 0 < self.dense_threshold < 1:
            raise ValueError(f"dense_threshold={self.dense_threshold!r}; allowed: a share of tokens in (0, 1)")

    @property
    def density(self) -> torch.Tensor:
        """``[d_sae]`` float64 firing frequency: counts / n_read."""
        return self.counts.double() / max(self.n_read, 1)

    @property
    def dead(self) -> torch.Tensor:
        """``[n_dead]`` ids of the features that never fired."""
        return (self.counts == 0).nonzero().flatten()

    @property
    def dense(self) -> torch.Tensor:
        """``[n_dense]`` ids of the features firing on more than ``dense_threshold`` of the tokens."""
        return (self.density > self.dense_threshold).nonzero().flatten()

    def select(self, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
        """Ids of the features whose density lies in ``[lo, hi]``, densest first."""
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f"density range [{lo}, {hi}]; allowed: 0 <= lo <= hi <= 1")
        d = self.density
        ids = ((d >= lo) & (d <= hi)).nonzero().flatten()
        return ids[d[ids].argsort(descending=True, stable=True)]

    def to_frame(self):
        """One row per feature, densest first."""
        import pandas as pd

        order = self.density.argsort(descending=True, stable=True)
        return pd.DataFrame({"feature": order.numpy(), "density": self.density[order].numpy(),
                             "n_active": self.counts[order].numpy(), "max": self.max[order].float().numpy()})

    def to_dict(self) -> dict:
        """Every field, ``density`` (``[d_sae]``) and the dead / dense counts."""
        from ..results import jsonable

        return {**super().to_dict(), "density": jsonable(self.density), "n_dead": int(self.dead.numel()),
                "n_dense": int(self.dense.numel())}

    def plot(self, ax=None):
        """Histogram of log10 density of the features that fired (the dead ones counted in the title)."""
        from ..plotting import log_density_histogram

        d = self.density
        counts, edges = np.histogram(d[d > 0].log10().numpy(), bins=40)
        return log_density_histogram(counts, edges, self.dense_threshold, ax=ax,
                                     title=f"feature density at {self.at} over {self.n_read} tokens; "
                                           f"{int(self.dead.numel())} dead, {int(self.dense.numel())} dense")


# ----------------------------------------------------------------------------- one prompt
@dataclass(frozen=True)
class PromptFeatures(Result):
    """The strongest latents at each position of one prompt.

    tokens:     ``[pos]`` the prompt's tokens as text; ``read`` ``[pos]`` whether each was read (special
                tokens are not: no latents listed there)
    top_ids:    ``[pos, k]`` feature ids, strongest first (-1 where fewer than k are active)
    top_values: ``[pos, k]`` their activations (0 where -1)
    features:   the features in any position's top k, strongest (largest max) first
    values:     ``[pos, len(features)]`` each of those features' activation at each position (0: not active)
    """

    at: str
    tokens: tuple[str, ...]
    read: torch.Tensor
    top_ids: torch.Tensor
    top_values: torch.Tensor
    features: tuple[int, ...]
    values: torch.Tensor

    def to_frame(self):
        import pandas as pd

        rows = [dict(position=p, token=self.tokens[p], rank=r, feature=int(f), value=float(v))
                for p in range(len(self.tokens)) for r, (f, v) in enumerate(zip(self.top_ids[p], self.top_values[p]))
                if int(f) >= 0]
        return pd.DataFrame(rows, columns=["position", "token", "rank", "feature", "value"])

    def plot(self, ax=None):
        return heatmap(self.values.T.numpy(), [f"f{f}" for f in self.features],
                       [f"{i}:{t!r}" for i, t in enumerate(self.tokens)], f"strongest latents at {self.at}", ax=ax,
                       cmap="Reds", center=False, xlabel="position", ylabel="feature", cbar="activation")


def prompt_features(lm: Any, sae: Any, at: str | None, prompt: Any, k: int = 5, *, layer: int = 0,
                    skip_tokens: Any = "special") -> PromptFeatures:
    """The ``k`` most active latents at each position of ``prompt`` (a string or token ids ``[pos]``)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r}; it must be a positive int")
    if isinstance(prompt, torch.Tensor) and prompt.dim() == 1:
        prompt = prompt[None]
    if not isinstance(prompt, (str, torch.Tensor)) or (isinstance(prompt, torch.Tensor) and prompt.shape[0] != 1):
        raise ValueError("give one prompt: a string or token ids [pos]")
    index = collect_latents(lm, sae, at, prompt, layer=layer, skip_tokens=skip_tokens)
    n = int(index.starts[1])
    dense = torch.zeros(n, index.d_sae)
    dense[index.pos.long(), index.feature.long()] = index.value
    kk = min(k, index.d_sae)
    top_v, top_i = dense.topk(kk, dim=-1)
    top_i = torch.where(top_v > 0, top_i, torch.full_like(top_i, -1))
    chosen = top_i[top_i >= 0].unique()
    order = dense[:, chosen].amax(0).argsort(descending=True, stable=True) if chosen.numel() else chosen
    feats = chosen[order]
    read = torch.zeros(n, dtype=torch.bool)
    if skip_tokens is None:
        read[:] = True
    else:
        ids = torch.tensor(index.text_tokens(0))
        read = ~torch.isin(ids, _skipped_ids(lm, skip_tokens))
    strings = tuple(index.strings[i] for i in index.text_tokens(0))
    return PromptFeatures(index.at, strings, read, top_i, top_v, tuple(feats.tolist()), dense[:, feats])
