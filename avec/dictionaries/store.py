"""The activation store: a language model's activations over a corpus, as shuffled token batches
for training a dictionary.

    store = ActivationStore(lm, "blocks.12.resid_post", documents, context=128, max_tokens=2_000_000,
                            cache_dir="acts/smollm2-l12", corpus="fineweb-sample v1")
    for batch in store:            # {hook point: [batch_tokens, d]}
        ...

* documents -> fixed-length contexts by ``contexts.ContextRule`` (BOS first if the tokenizer adds
  one, documents joined by EOS, no padding);
* one forward per batch of contexts through the core (``lm.run``), caching every asked hook point
  in that one pass, ``logits_to_keep=1`` (the logits are not used);
* the positions holding special tokens (BOS, EOS, pad, the tokenizer's ``all_special_ids``, the
  separator; ``store.dropped_ids``) are dropped: their activations are outliers (the BOS residual
  is often 10-100x the norm of others) that would dominate a dictionary's reconstruction loss;
* tokens are shuffled in a mixing buffer (``mixing.mix``);
* with ``cache_dir`` the activations are also written as shards (``shards.ShardCache``); a later
  store with the same settings reads them instead of running the model, an interrupted one resumes.

The forward runs through every layer even when the last asked hook point is early (the core has no
way to stop a run part-way; see ``benchmarks/store_speed.py`` for what that costs).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from .contexts import ContextRule, batch_contexts, context_rule, iter_contexts, special_ids
from .mixing import Acts, mix
from .shards import ShardCache, tokens_hash


class ActivationStore:
    """Shuffled batches ``{hook point: [batch_tokens, d]}`` of ``lm``'s activations over ``documents``.

    lm:              a ``LanguageModel``
    hooks:           one hook point name, or several (names, aliases or globs), read in one pass;
                     each must have a position axis (``attn.z`` is flattened to ``n_heads * d_head``)
    documents:       an iterable of strings (read once per iteration of the store); may be None
                     when ``cache_dir`` holds a complete cache
    context:         tokens per context (at most the model's context length)
    batch_contexts:  contexts per forward pass
    batch_tokens, buffer_tokens: tokens per yielded batch, and the mixing buffer's size
    dtype:           dtype of the yielded (and cached) activations
    max_tokens:      stop after this many context tokens (rounded up to whole contexts; specials
                     included); None: the whole corpus
    seed:            the mixing buffer's shuffle (rank is added, so ranks shuffle differently)
    cache_dir:       folder of the on-disk cache (None: no cache); needs ``corpus``
    corpus:          a description of the documents, recorded in and checked against the cache
    tokens_per_shard: context tokens per cache shard (rounded to whole forward batches)
    rank, world_size: this process reads shards (or, without a cache, contexts) ``i`` with
                     ``i % world_size == rank``
    prepend_bos, separator, drop_ids: override the context rule (``contexts.context_rule``) and add
                     token ids to drop
    tokenizer:       defaults to ``lm.tokenizer``
    """

    def __init__(self, lm: Any, hooks: str | Iterable[str], documents: Iterable[str] | None = None, *,
                 context: int = 128, batch_contexts: int = 8, batch_tokens: int = 4096,
                 buffer_tokens: int = 2 ** 16, dtype: torch.dtype = torch.float32, max_tokens: int | None = None,
                 seed: int = 0, cache_dir: str | Path | None = None, corpus: str | None = None,
                 tokens_per_shard: int = 2 ** 16, rank: int = 0, world_size: int = 1,
                 prepend_bos: bool | None = None, separator: int | None | str = "eos",
                 drop_ids: Iterable[int] = (), tokenizer: Any = None, drop_last: bool = False,
                 progress: bool = True):
        self.lm = lm
        self.hooks = lm.resolve(hooks)  # unknown names: the core's error, listing close matches
        if not self.hooks:
            raise ValueError("no hook points given")
        for name in self.hooks:
            if lm.site(name).pos_axis != 1:
                raise ValueError(f"hook point {name!r} has layout {lm.site(name).layout}: the store reads points "
                                 "with one value per token ([batch, pos, ...])")
        self.tokenizer = tokenizer if tokenizer is not None else lm.tokenizer
        self.rule: ContextRule = context_rule(self.tokenizer, context, prepend_bos=prepend_bos, separator=separator)
        lm.check_context(context, what=f"context={context}")
        self.dropped_ids = special_ids(self.tokenizer, self.rule, drop_ids)
        self.documents = documents
        for name, value in (("batch_contexts", batch_contexts), ("batch_tokens", batch_tokens),
                            ("buffer_tokens", buffer_tokens), ("tokens_per_shard", tokens_per_shard)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
            raise ValueError(f"max_tokens must be a whole number >= 1 or None, got {max_tokens!r}")
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"rank must lie in 0..world_size-1 and world_size >= 1; got rank={rank!r}, "
                             f"world_size={world_size!r}")
        if batch_tokens * 2 > buffer_tokens:
            raise ValueError(f"buffer_tokens ({buffer_tokens}) must be at least twice batch_tokens ({batch_tokens})")
        self.batch_contexts = batch_contexts
        self.batch_tokens, self.buffer_tokens = batch_tokens, buffer_tokens
        self.dtype = dtype
        self.max_contexts = None if max_tokens is None else math.ceil(max_tokens / context)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.drop_last, self.progress = drop_last, progress
        # whole forward batches per shard, so cached and uncached runs batch contexts alike
        self.contexts_per_shard = max(1, tokens_per_shard // context // batch_contexts) * batch_contexts
        self.cache: ShardCache | None = None
        if cache_dir is not None:
            corpus = corpus if corpus is not None else getattr(documents, "description", None)
            if not isinstance(corpus, str) or not corpus:
                raise ValueError("cache_dir needs corpus='...': a description of the documents (name, version, "
                                 "split), recorded in the cache so that it is never reused for another corpus")
            self.cache = ShardCache(cache_dir, self.settings(corpus))
            if not self.cache.complete and world_size > 1:
                raise ValueError(f"cache_dir {str(cache_dir)!r} is not complete: build it first in one process "
                                 "(world_size=1), then read it with rank/world_size")
        if documents is None and (self.cache is None or not self.cache.complete):
            raise ValueError("no documents given" + ("" if self.cache is None else
                                                     f" and cache_dir {str(cache_dir)!r} is not complete"))

    def settings(self, corpus: str) -> dict[str, Any]:
        """What a cache must have been built with to be reused (JSON)."""
        return {"model_id": self.lm.model_id, "hooks": self.hooks, **self.rule.describe(),
                "dropped_ids": self.dropped_ids, "corpus": corpus, "max_contexts": self.max_contexts,
                "contexts_per_shard": self.contexts_per_shard, "dtype": str(self.dtype).removeprefix("torch.")}

    # -- one forward ---------------------------------------------------------------------------
    def activations(self, ids: torch.Tensor) -> Acts:
        """``{hook: [n_kept, d]}`` for contexts ``ids`` ``[batch, context]``: one forward, the positions
        of ``dropped_ids`` removed, tokens in (context, position) order."""
        # stop_early: the layers after the last point read are not run (their output is not needed)
        run = self.lm.run(ids, cache=self.hooks, cache_device="cpu", cache_dtype=self.dtype, stop_early=True)
        keep = ~torch.isin(ids.cpu(), torch.tensor(self.dropped_ids, dtype=ids.dtype))
        n = int(keep.sum())
        return {h: run.cache[h][keep].reshape(n, -1) for h in self.hooks}

    # -- streams -------------------------------------------------------------------------------
    def _contexts(self) -> Iterator[torch.Tensor]:
        ctxs = iter_contexts(self.documents, self.tokenizer, self.rule)
        return itertools.islice(ctxs, self.max_contexts) if self.max_contexts is not None else ctxs

    def _bar(self):
        from tqdm.auto import tqdm

        return tqdm(total=self.max_contexts, unit="ctx", desc="activations", disable=not self.progress)

    def chunks(self) -> Iterator[Acts]:
        """The activations in corpus order, before mixing: one chunk per forward batch (or per cached
        shard)."""
        if self.cache is not None and self.cache.complete:
            yield from self.cache.read(self.rank, self.world_size)
        elif self.cache is not None:
            yield from self._build_cache()
        else:
            with self._bar() as bar:
                ctxs = (c for i, c in enumerate(self._contexts()) if i % self.world_size == self.rank)
                for ids in batch_contexts(ctxs, self.batch_contexts):
                    yield self.activations(ids.to(self.lm.device))
                    bar.update(ids.shape[0])

    def _build_cache(self) -> Iterator[Acts]:
        """Run the model shard by shard, writing each; shards already written (an interrupted run) are
        read back instead, after checking that the corpus still gives the same tokens."""
        cache = self.cache
        done = cache.shards
        with self._bar() as bar:
            for i, group in enumerate(batch_contexts(self._contexts(), self.contexts_per_shard)):
                if i < len(done):
                    if tokens_hash(group) != done[i]["tokens_sha1"]:
                        raise ValueError(f"cache_dir {str(cache.folder)!r}: shard {i} was built from other tokens "
                                         "than this corpus gives; the documents changed under the same corpus "
                                         "description - delete the folder or describe the corpus differently")
                    yield cache.load(i)
                else:
                    parts = [self.activations(ids.to(self.lm.device)) for ids in group.split(self.batch_contexts)]
                    cache.write_shard(i, {h: torch.cat([p[h] for p in parts]) for h in self.hooks}, group)
                    yield from parts
                bar.update(group.shape[0])
        cache.finish()

    def __iter__(self) -> Iterator[Acts]:
        return mix(self.chunks(), self.buffer_tokens, self.batch_tokens, seed=self.seed + self.rank,
                   drop_last=self.drop_last)

    def __repr__(self) -> str:
        where = f", cache {str(self.cache.folder)!r}" if self.cache is not None else ""
        return (f"ActivationStore({self.lm.name!r}, {self.hooks}, context={self.rule.context}, "
                f"batch_tokens={self.batch_tokens}{where})")
